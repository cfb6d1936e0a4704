"""Decoder (VAE) training: KL + reconstruction of geometry, texture and the rendered image.

Checkpoints (``checkpoint.pt``) hold state_dicts plus the configs as plain dicts
and resume an interrupted run (the loop, its limits and Ctrl-C handling are
:class:`avcore.training.TrainingLoop`); the finished model directory is written by
:func:`decoder.export.save_model`.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import DecoderConfig, TrainConfig


@dataclass
class TrainResult:
    steps: int
    elapsed_s: float
    final_losses: dict
    loss_history: list
    model_dir: Path


def init_from_data(model, data: dict, *, encoder: bool = True) -> None:
    """PCA geometry basis (decoder) and projection (encoder, unless ``encoder`` is False: a frozen one), and the
    mean texture, from training data."""
    import torch

    cfg = model.cfg
    X = data["vertices"].reshape(len(data["vertices"]), -1).astype(np.float64)
    mean = X.mean(0)
    _, S, Vt = np.linalg.svd(X - mean, full_matrices=False)
    K = min(cfg.geometry_basis, len(S))  # tiny data sets: the rest of the basis starts at zero
    # A component without (numerical) variance must not blow up the encoder's projection (float16 on export):
    # its scale is floored at 1/1000 of the largest.
    std = np.maximum(S[:K], 1e-3 * S[0]) / math.sqrt(len(X)) + 1e-8
    with torch.no_grad():
        g = model.decoder.geometry
        g.mean.copy_(torch.from_numpy(mean).float())
        g.basis.zero_()
        g.basis[:K] = torch.from_numpy(Vt[:K] * std[:, None]).float()
        if encoder:
            e = model.encoder
            e.geo_mean.copy_(torch.from_numpy(mean).float())
            e.geo_proj.zero_()
            e.geo_proj[:, :K] = torch.from_numpy(Vt[:K].T / std[None]).float()
        tex = data["texture"].reshape(-1, *data["texture"].shape[-3:])[::7].astype(np.float32).mean(0) / 255.0
        model.decoder.texture.mean.copy_(torch.from_numpy(tex).permute(2, 0, 1)[None].float())
    fill_uncovered_texels(model, data["coverage"])


#: Learning-rate multipliers: the PCA-initialised geometry (mean, basis; decimetre-scale values)
#: and the mean texture must move far more slowly than the network weights.
LR_SCALES = {"decoder.geometry.mean": 0.01, "decoder.geometry.basis": 0.01, "decoder.texture.mean": 0.1}


def param_groups(model) -> list[dict]:
    special = {n: [] for n in LR_SCALES}
    rest = []
    for name, p in model.named_parameters():
        if p.requires_grad:  # a frozen encoder (``latent_from``) is not optimised
            (special[name] if name in special else rest).append(p)
    groups = [{"params": rest, "lr_scale": 1.0}]
    groups += [{"params": ps, "lr_scale": LR_SCALES[n]} for n, ps in special.items() if ps]
    return groups


def fill_uncovered_texels(model, coverage: np.ndarray, iterations: int = 6) -> None:
    """Fill the mean texture's texels outside ``coverage`` (T, T) from covered neighbours (in place).

    The texture losses never see those texels, but bilinear sampling at chart borders does:
    left dark they show up as seams in renders.
    """
    import cv2
    import torch

    mean = model.decoder.texture.mean
    tex = mean.detach()[0].permute(1, 2, 0).numpy().astype(np.float32).copy()
    known = coverage.astype(np.float32)
    for _ in range(iterations):
        num = cv2.blur(tex * known[..., None], (3, 3), borderType=cv2.BORDER_REPLICATE)
        den = cv2.blur(known, (3, 3), borderType=cv2.BORDER_REPLICATE)
        grow = (known == 0) & (den > 0)
        tex[grow] = num[grow] / den[grow][:, None]
        known = np.maximum(known, grow.astype(np.float32))
    with torch.no_grad():
        mean.copy_(torch.from_numpy(tex).permute(2, 0, 1)[None])


def batch_tensors(data: dict, pose_idx: np.ndarray, view_idx: np.ndarray):
    """Numpy cache -> float tensors: vertices (B,V,3), enc_tex (B,3,t,t), view (B,3), tex (B,3,T,T),
    image (B,3,S,S), uv (B,S,S,2), mask (B,1,S,S)."""
    import torch

    f = lambda a: torch.from_numpy(np.ascontiguousarray(a))
    verts = f(data["vertices"][pose_idx])
    enc = f(data["enc_texture"][pose_idx]).permute(0, 3, 1, 2).float() / 255.0
    view = f(data["view_direction"][pose_idx, view_idx])
    tex = f(data["texture"][pose_idx, view_idx]).permute(0, 3, 1, 2).float() / 255.0
    img = f(data["image"][pose_idx, view_idx]).permute(0, 3, 1, 2).float() / 255.0
    uvm = f(data["uv_map"][pose_idx, view_idx].astype(np.float32))
    return verts, enc, view, tex, img, uvm[..., :2], (uvm[..., 2:] > 0.5).permute(0, 3, 1, 2).float()


def vae_losses(model, batch, coverage, tcfg: TrainConfig, sample: bool = True) -> dict:
    """All loss terms (tensors) for one batch; ``total`` is their weighted sum."""
    verts, enc, view = batch[:3]
    pv, pt, mu, log_std = model(verts, enc, view, sample=sample)
    return _reconstruction_losses(pv, pt, mu, log_std, batch, coverage, tcfg)


def _reconstruction_losses(pv, pt, mu, log_std, batch, coverage, tcfg: TrainConfig) -> dict:
    """The loss terms of decoded vertices ``pv`` and texture ``pt`` from codes of posterior (``mu``, ``log_std``)."""
    from torch.nn import functional as F

    from .model import kl_divergence

    verts, enc, view, tex, img, uv, mask = batch
    geo = (pv - verts).abs().mean()
    texl = ((pt - tex).abs() * coverage).sum() / (coverage.sum() * 3 * len(pt))
    seen = F.grid_sample(pt, uv * 2 - 1, mode="bilinear", padding_mode="border", align_corners=False)
    iml = ((seen.clamp(0, 1) - img).abs() * mask).sum() / (mask.sum() * 3 + 1)
    kl = kl_divergence(mu, log_std)
    kl_weight = 0.0 if tcfg.latent_from else tcfg.kl_weight  # a frozen latent space: nothing to regularise
    total = tcfg.geometry_weight * geo + tcfg.texture_weight * texl + tcfg.image_weight * iml + kl_weight * kl
    return {"total": total, "geometry": geo, "texture": texl, "image": iml, "kl": kl}


def _flag(tcfg: TrainConfig) -> str:
    return "--teacher" if tcfg.teacher and tcfg.latent_from == tcfg.teacher else "--latent-from"


def _teacher(model_dir: str, model, dcfg: DecoderConfig):
    """(frozen teacher decoder, feature projector) for distilling into ``model``'s decoder."""
    import torch

    from avcore.errors import UsageError

    from .distill import FeatureProjector
    from .export import load_torch_decoder

    if not (Path(model_dir) / "weights.pt").is_file():
        raise UsageError(f"--teacher {model_dir}: no weights.pt there (a decoder model directory)")
    teacher = load_torch_decoder(Path(model_dir)).requires_grad_(False)
    if teacher.cfg.latent_dim != dcfg.latent_dim or teacher.cfg.num_vertices != dcfg.num_vertices:
        raise UsageError(f"--teacher {model_dir}: latent {teacher.cfg.latent_dim} / {teacher.cfg.num_vertices} vertices, "
                         f"this decoder {dcfg.latent_dim} / {dcfg.num_vertices}")
    z, v = torch.zeros(1, dcfg.latent_dim), torch.tensor([[0.0, 0.0, 1.0]])
    with torch.no_grad():
        projector = FeatureProjector(teacher(z, v, features=True)[2], model.decoder(z, v, features=True)[2])
    return teacher, projector


def _teacher_targets(teacher, encoder, data: dict, tcfg: TrainConfig, out_dir: Path, progress: bool):
    """The teacher's outputs on every training sample (:class:`decoder.distill.TeacherTargets`), beside the data
    cache (shared by the students of one teacher and data set) or in ``out_dir``."""
    import hashlib

    import torch

    from .distill import TeacherTargets

    def digest(*parts) -> str:
        h = hashlib.sha1()
        for part in parts:
            h.update(part if isinstance(part, bytes) else np.ascontiguousarray(part).tobytes())
        return h.hexdigest()[:16]

    weights = digest(*(t.detach().numpy() for t in teacher.state_dict().values()),
                     *(t.detach().numpy() for t in encoder.state_dict().values()))
    key = f"{weights}|{digest(data['view_direction'], data['vertices'], data['enc_texture'])}"
    where = (Path(tcfg.cache).with_name(f"{Path(tcfg.cache).stem}.teacher-{weights[:8]}") if tcfg.cache
             else out_dir / "teacher_targets")

    def inputs(pi, vi):
        verts, enc, view = batch_tensors(data, pi, vi)[:3]
        return encoder(verts, enc)[0], view

    with torch.no_grad():
        return TeacherTargets.open(where, key, teacher, inputs, data["view_direction"].shape[:2], progress=progress)


def _distillation_losses(model, targets, index, projector, batch, coverage, tcfg: TrainConfig) -> dict:
    """:func:`vae_losses` of a student (its frozen encoder's means as codes) plus ``distill_kl`` and
    ``distill_feature`` against the teacher's outputs for the batch (``targets.lookup(*index)``, index = (poses,
    views)), weighted into ``total``; the student decodes each batch once."""
    import torch

    from .distill import distillation_losses

    verts, enc, view = batch[:3]
    with torch.no_grad():
        mu, log_std = model.encoder(verts, enc)  # frozen: the latent space both decode
    t_out = targets.lookup(*index)
    s_out = model.decoder(mu, view, features=True)
    out = _reconstruction_losses(s_out[0], s_out[1], mu, log_std, batch, coverage, tcfg)
    d = distillation_losses(t_out, s_out, projector if tcfg.distill_feature_weight > 0 else None,
                            temperature=tcfg.distill_temperature, geometry_spread=tcfg.distill_geometry_spread)
    out["distill_kl"] = d["kl"]
    out["total"] = out["total"] + tcfg.distill_kl_weight * d["kl"]
    if "feature" in d:
        out["distill_feature"] = d["feature"]
        out["total"] = out["total"] + tcfg.distill_feature_weight * d["feature"]
    return out


def _frozen_encoder(model_dir: str, dcfg: DecoderConfig, flag: str = "--latent-from"):
    """The encoder of ``model_dir`` (``encoder.pt``), frozen, checked to fit ``dcfg`` (latent size, encoder input)."""
    from avcore.errors import UsageError

    from .export import load_torch_encoder

    enc = load_torch_encoder(Path(model_dir))
    if enc is None:
        raise UsageError(f"{flag} {model_dir}: no encoder.pt there (a decoder model directory from "
                         "'avcall train decoder' has one)")
    for field in ("latent_dim", "encoder_texture_size", "num_vertices"):
        if getattr(enc.cfg, field) != getattr(dcfg, field):
            raise UsageError(f"{flag} {model_dir}: its {field} is {getattr(enc.cfg, field)}, this decoder's "
                             f"{getattr(dcfg, field)}")
    return enc.eval().requires_grad_(False)


def train_decoder(out_dir: Path, dcfg: DecoderConfig, tcfg: TrainConfig, *, resume: bool = True, progress: bool = True,
                  export: bool = True, data: dict | None = None) -> TrainResult:
    """Train the VAE for ``dcfg.identity``; resume from ``out_dir/checkpoint.pt`` if present.

    On resume the architecture, data and loss settings come from the checkpoint; ``steps``,
    ``time_budget_s`` (total, counting the time already trained), ``checkpoint_every_s`` and
    ``threads`` come from ``tcfg``, so a finished run can be extended.
    """
    import torch

    from avcore.training import TrainingLoop, open_run, resumed_config

    from .data import load_or_build
    from .model import CodecAvatarVAE

    torch.set_num_threads(tcfg.threads)
    out_dir, ckpt_path, ckpt = open_run(out_dir, resume)
    if ckpt is not None:
        dcfg = DecoderConfig.from_dict(ckpt["decoder_config"])
        tcfg = resumed_config(TrainConfig, ckpt["train_config"], tcfg)
    if tcfg.teacher and not tcfg.latent_from:
        tcfg.latent_from = tcfg.teacher  # a student decodes its teacher's latent space
    if tcfg.latent_from and not (Path(tcfg.latent_from) / "encoder.pt").is_file():
        _frozen_encoder(tcfg.latent_from, dcfg, _flag(tcfg))  # says what is missing, before any data is rendered
    if data is None:
        cache = Path(tcfg.cache) if tcfg.cache else out_dir / "dataset.npz"
        data = load_or_build(cache, dcfg.identity, tcfg.num_train_poses, tcfg.train_seed, dcfg, tcfg)
    dcfg.num_vertices = data["vertices"].shape[1]
    seed = tcfg.train_seed if tcfg.init_seed < 0 else tcfg.init_seed
    torch.manual_seed(seed)
    model = CodecAvatarVAE(dcfg)
    frozen = _frozen_encoder(tcfg.latent_from, dcfg, _flag(tcfg)) if tcfg.latent_from else None
    if frozen is not None:
        model.encoder = frozen
    teacher, projector = (_teacher(tcfg.teacher, model, dcfg) if tcfg.teacher else (None, None))
    targets = None  # a student with both distillation weights 0 (from scratch) only takes the teacher's latent space
    if teacher is not None and (tcfg.distill_kl_weight > 0 or tcfg.distill_feature_weight > 0):
        targets = _teacher_targets(teacher, model.encoder, data, tcfg, out_dir, progress)
    groups = param_groups(model)
    if projector is not None:
        groups[0]["params"] = [*groups[0]["params"], *projector.parameters()]
    opt = torch.optim.Adam(groups, lr=tcfg.lr)
    step, elapsed0, history = 0, 0.0, []
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        if projector is not None:
            projector.load_state_dict(ckpt["projector"])
        opt.load_state_dict(ckpt["optimizer"])
        step, elapsed0, history = ckpt["step"], ckpt["elapsed_s"], list(ckpt["loss_history"])
    else:
        init_from_data(model, data, encoder=frozen is None)
    (out_dir / "train_config.json").write_text(json.dumps({"decoder": dcfg.to_dict(), "train": tcfg.to_dict()}, indent=2))
    coverage = torch.from_numpy(data["coverage"].astype(np.float32))[None, None]
    N, K = data["view_direction"].shape[:2]
    rng = np.random.default_rng(seed + step)
    running: dict[str, float] = {}
    loop = TrainingLoop(
        ckpt_path, lambda: {"model": model.state_dict(), "optimizer": opt.state_dict(), "decoder_config": dcfg.to_dict(),
                            "encoder_config": model.encoder.cfg.to_dict(),
                            "train_config": tcfg.to_dict(), "loss_history": history,
                            **({"projector": projector.state_dict()} if projector is not None else {})},
        steps=tcfg.steps, time_budget_s=tcfg.time_budget_s, checkpoint_every_s=tcfg.checkpoint_every_s, step=step,
        elapsed_s=elapsed0, desc=f"train decoder {dcfg.identity}", progress=progress)
    model.train()
    if frozen is not None:
        frozen.eval()
    for step, frac in loop:
        lr = tcfg.lr_final + 0.5 * (tcfg.lr - tcfg.lr_final) * (1 + math.cos(math.pi * frac))
        for g in opt.param_groups:
            g["lr"] = lr * g["lr_scale"]
        pi = rng.integers(0, N, tcfg.batch_size)
        vi = rng.integers(0, K, tcfg.batch_size)
        batch = batch_tensors(data, pi, vi)
        if targets is not None:
            losses = _distillation_losses(model, targets, (pi, vi), projector, batch, coverage, tcfg)
        else:
            losses = vae_losses(model, batch, coverage, tcfg, sample=frozen is None)
        opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        vals = {k: float(v.detach()) for k, v in losses.items()}
        running = {k: (0.95 * running.get(k, v) + 0.05 * v) for k, v in vals.items()}
        if step % 25 == 0 or step == 1:
            history.append({"step": step, **vals})
        loop.report({k: f"{v:.4g}" for k, v in running.items()})
    step, elapsed = loop.step, loop.elapsed_s
    if export:
        from .export import save_model

        fill_uncovered_texels(model, data["coverage"])
        save_model(model.decoder, out_dir, studio_identity=dcfg.identity, encoder=model.encoder,
                   train_info={"steps": step, "elapsed_s": elapsed, "train_config": tcfg.to_dict()})
    return TrainResult(step, elapsed, running, history, out_dir)
