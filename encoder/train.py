"""Encoder training with the Auto-CARD objective (see :mod:`encoder.losses`).

The decoder is frozen; the encoder regresses its ground-truth codes, gaze and
keypoints from HMC frames, with online HMC augmentation (headset slip as a small
random similarity warp per view, exposure as random gain and gamma) on top of
the many rendered headset sessions in the data.

``checkpoint.pt`` in the output directory (state_dicts + the architecture and
config as plain dicts, never pickled objects) resumes an interrupted run; the
loop, its limits, checkpoints and Ctrl-C handling are :class:`avcore.training.TrainingLoop`.
The finished model directory is written by :func:`encoder.export.save_model`.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from avcore.config import ConfigDict

from . import codec as _codec
from .arch import EncoderArch
from .losses import LossWeights


@dataclass
class EncoderTrainConfig(ConfigDict):
    """Optimisation, augmentation and re-weighting settings of one encoder training run."""

    identity: str = "S1"
    batch_size: int = 16
    lr: float = 1e-3
    lr_final: float = 3e-5
    """Cosine decay target."""
    weight_decay: float = 1e-5
    steps: int = 4000
    time_budget_s: float = 1800.0
    """Wall-clock budget; the schedule runs to whichever of steps / budget comes first."""
    reweight: bool = True
    """Extreme-expression-aware re-weighting exp(||g - g_bar|| / tau) (off for the ablation)."""
    tau: float = 0.25
    """Temperature of the re-weighting (radians of gaze)."""
    momentum: float = 0.99
    """EMA momentum of the mean gaze g_bar (per step)."""
    augment: bool = True
    """Online HMC augmentation (slip warp, exposure gain/gamma)."""
    slip_rotation_deg: float = 3.0
    slip_translation: float = 0.04
    """Max random shift, fraction of the view size."""
    slip_scale: float = 0.05
    exposure_gain: tuple[float, float] = (0.7, 1.4)
    exposure_gamma: tuple[float, float] = (0.8, 1.25)
    weights: dict = field(default_factory=lambda: LossWeights().to_dict())
    """Loss weights (see :class:`encoder.losses.LossWeights`)."""
    threads: int = 2
    bf16: bool = False
    """Run the encoder forward in bfloat16 autocast (losses and the frozen decoder stay float32):
    about 1.4x faster steps on CPUs with AVX512-BF16, where oneDNN has bf16 convolutions."""
    checkpoint_every_s: float = 120.0
    seed: int = 0



@dataclass
class TrainResult:
    steps: int
    elapsed_s: float
    final_losses: dict
    loss_history: list
    model_dir: Path
    meta: dict


def augment_hmc(views, keypoints, gen, cfg: EncoderTrainConfig):
    """views (B, 3, S, S) float 0..255, keypoints (B, 3, K, 2) px -> augmented copies.

    Slip: per view a random similarity (rotation, scale, shift) applied to the image and
    its keypoints. Exposure: per view a random gain and gamma.
    """
    import torch
    from torch.nn import functional as F

    B, V, S, _ = views.shape
    n = B * V
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(n, generator=gen)
    ang = torch.deg2rad(u(-cfg.slip_rotation_deg, cfg.slip_rotation_deg))
    sc = u(1 - cfg.slip_scale, 1 + cfg.slip_scale)
    tx, ty = u(-cfg.slip_translation, cfg.slip_translation) * 2, u(-cfg.slip_translation, cfg.slip_translation) * 2
    # Output -> input normalised coords: p_in = A p_out + b (grid_sample convention).
    cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
    A = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)  # (n, 2, 2)
    b = torch.stack([tx, ty], 1)
    theta = torch.cat([A, b[:, :, None]], 2)
    x = views.reshape(n, 1, S, S)
    grid = F.affine_grid(theta, (n, 1, S, S), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    gain = u(*cfg.exposure_gain).view(n, 1, 1, 1)
    gamma = u(*cfg.exposure_gamma).view(n, 1, 1, 1)
    x = (255.0 * (x.clamp(0, 255) / 255.0).pow(gamma) * gain).clamp(0, 255)
    K = keypoints.shape[2]
    p = keypoints.reshape(n, K, 2) * (2.0 / S) - 1.0
    p_out = torch.linalg.solve(A, (p - b[:, None, :]).transpose(1, 2)).transpose(1, 2)
    kp = ((p_out + 1.0) * (S / 2.0)).reshape(B, V, K, 2)
    return x.reshape(B, V, S, S), kp


def batch_tensors(data: dict, idx: np.ndarray) -> dict:
    """Numpy arrays of the HMC data (with ``z_gt``) -> float tensors for :func:`encoder.losses.autocard_loss`."""
    import torch

    f = lambda a: torch.from_numpy(np.ascontiguousarray(a))
    return {
        "views": f(data["views"][idx]).float(),
        "z_gt": f(data["z_gt"][idx]),
        "gaze": f(data["gaze"][idx]),
        "keypoints": f(data["keypoints"][idx]),
        "keypoints_visible": f(data["keypoints_visible"][idx]),
        "vertices": f(data["vertices"][idx]).float(),
        "view_direction": f(data["view_direction"][idx]),
        "texture": f(data["texture"][idx]).permute(0, 3, 1, 2).float() / 255.0,
        "image": f(data["image"][idx]).permute(0, 3, 1, 2).float() / 255.0,
        "uv_map": f(data["uv_map"][idx]).float(),
    }


# ``attach_codes`` lives beside ``ground_truth_codes`` in :mod:`encoder.codec`; this name is kept for older imports.
attach_codes = _codec.attach_codes


def train_encoder(out_dir: str | Path, arch: EncoderArch, tcfg: EncoderTrainConfig, *, data: dict, vae, resume: bool = True,
                  progress: bool = True, export: bool = True, test_data: dict | None = None,
                  data_info: dict | None = None) -> TrainResult:
    """Train ``arch`` on ``data`` (HMC arrays, see :mod:`encoder.data`) against the frozen ``vae``.

    Resumes from ``out_dir/checkpoint.pt`` when present (its arch and config win).
    """
    import torch

    from avcore.errors import UsageError
    from avcore.training import CHECKPOINT_FILE, TrainingLoop, load_checkpoint

    from .losses import GazeReweighting, autocard_loss
    from .model import build_encoder

    torch.set_num_threads(tcfg.threads)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / CHECKPOINT_FILE
    ckpt = load_checkpoint(ckpt_path) if resume else None
    if ckpt is not None:
        arch = EncoderArch.from_dict(ckpt["arch"])
        tcfg = EncoderTrainConfig.from_dict(ckpt["train_config"])
    _codec.attach_codes(data, vae)
    if not np.isfinite(data["z_gt"]).all():
        raise UsageError("the decoder's VAE encoder gives non-finite ground-truth codes on these frames; "
                         "check the decoder (a degenerate geometry basis?) before training an encoder on it")
    z_std = np.maximum(data["z_gt"].std(0), 1e-2).astype(np.float32) if ckpt is None else ckpt["z_std"].numpy()
    torch.manual_seed(tcfg.seed)
    model = build_encoder(arch).to(memory_format=torch.channels_last)  # ~1.5x faster convs on CPU
    opt = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    reweight = GazeReweighting(tcfg.tau, tcfg.momentum, tcfg.reweight)
    step, elapsed0, history = 0, 0.0, []
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        reweight.load_state_dict(ckpt["reweighting"])
        step, elapsed0, history = ckpt["step"], ckpt["elapsed_s"], list(ckpt["loss_history"])
    (out_dir / "train_config.json").write_text(json.dumps({"arch": arch.to_dict(), "train": tcfg.to_dict()}, indent=2))
    decoder = vae.decoder
    weights = LossWeights(**tcfg.weights)
    zs = torch.from_numpy(z_std)
    coverage = torch.from_numpy(data["coverage"])
    N = len(data["views"])
    S = float(arch.input_size)
    rng = np.random.default_rng(tcfg.seed * 7919 + step)
    gen = torch.Generator().manual_seed(tcfg.seed * 104729 + step)
    running: dict[str, float] = {}
    loop = TrainingLoop(
        ckpt_path, lambda: {"model": model.state_dict(), "optimizer": opt.state_dict(), "reweighting": reweight.state_dict(),
                            "arch": arch.to_dict(), "train_config": tcfg.to_dict(), "loss_history": history,
                            "z_std": torch.from_numpy(z_std)},
        steps=tcfg.steps, time_budget_s=tcfg.time_budget_s, checkpoint_every_s=tcfg.checkpoint_every_s, step=step,
        elapsed_s=elapsed0, desc=f"train encoder {arch.name} {tcfg.identity}", progress=progress)
    model.train()
    for step, frac in loop:
        lr = tcfg.lr_final + 0.5 * (tcfg.lr - tcfg.lr_final) * (1 + math.cos(math.pi * frac))
        for g in opt.param_groups:
            g["lr"] = lr
        b = batch_tensors(data, rng.integers(0, N, tcfg.batch_size))
        if tcfg.augment:
            b["views"], b["keypoints"] = augment_hmc(b["views"], b["keypoints"], gen, tcfg)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=tcfg.bf16):
            out = model(b["views"])
        out = {k: v.float() for k, v in out.items()}
        sw = reweight(b["gaze"])
        losses = autocard_loss(out, b, decoder, zs, coverage, S, weights, sw)
        opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        vals = {k: float(v.detach()) for k, v in losses.items()}
        running = {k: (0.95 * running.get(k, v) + 0.05 * v) for k, v in vals.items()}
        if step % 20 == 0 or step == 1:
            history.append({"step": step, "lr": lr, **vals})
        loop.report({k: f"{running[k]:.4g}" for k in ("total", "latent", "gaze", "rendering")})
    step, elapsed = loop.step, loop.elapsed_s
    (out_dir / "loss_history.json").write_text(json.dumps(history))
    info = {"steps": step, "elapsed_s": round(elapsed, 1), "train_frames": N, "final_losses": running,
            "config": tcfg.to_dict()}
    if data_info is not None:
        info["data"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in data_info.items()}
    if test_data is not None:
        from .evaluate import code_errors

        model.eval()
        _codec.attach_codes(test_data, vae)
        sel = np.linspace(0, len(test_data["views"]) - 1, min(96, len(test_data["views"]))).astype(int)
        info["test"] = code_errors(model, {k: v[sel] if k != "coverage" else v for k, v in test_data.items()}, z_std)
    meta = {}
    if export:
        from .export import save_model

        meta = save_model(model, out_dir, identity=tcfg.identity, train_info=info)
    return TrainResult(step, elapsed, running, history, out_dir, meta)


# ---------------------------------------------------------------------------- the `avcall train encoder` job
RUNS_ROOT = Path("runs") / "encoder"
"""Default root of encoder runs and data caches (git-ignored)."""
ABLATION_SUFFIX = "-noRW"
"""Model-name suffix of a run trained without the extreme-expression-aware re-weighting."""


def model_name(arch: str, reweight: bool) -> str:
    return arch if reweight else arch + ABLATION_SUFFIX


def parse_model_name(name: str) -> tuple[str, bool]:
    """"EEM-noRW" -> ("EEM", False); "EEM" -> ("EEM", True)."""
    if name.endswith(ABLATION_SUFFIX):
        return name[: -len(ABLATION_SUFFIX)], False
    return name, True


def default_data_path(identity: str, root: Path = RUNS_ROOT) -> Path:
    return Path(root) / f"data_{identity}.npz"


def rom_data_path(identity: str, root: Path = RUNS_ROOT) -> Path:
    """Cache of the range-of-motion dataset (:func:`encoder.data.rom_data_config`)."""
    return Path(root) / f"rom_{identity}.npz"


ROM_TAG = "rom"
"""Tag of the cached evaluations (:func:`encoder.evaluate.cached_evaluation`) on the range-of-motion test split."""


def load_rom_data(identity: str, *, root: Path = RUNS_ROOT, workers: int = 1, progress: bool = True,
                  splits=("train", "test")) -> tuple[dict | None, dict | None]:
    """(train, test) of the identity's range-of-motion dataset, rendered on first use and cached."""
    from .data import load_or_build_hmc_data, rom_data_config

    return load_or_build_hmc_data(rom_data_path(identity, root), rom_data_config(identity), workers=workers,
                                  progress=progress, splits=splits)


def default_run_dir(identity: str, name: str, root: Path = RUNS_ROOT) -> Path:
    return Path(root) / identity / name


def load_identity_data(identity: str, data_path: str | Path | None = None, *, workers: int = 1, progress: bool = True,
                       data_cfg=None):
    """(train, test) HMC data of ``identity`` (``data_cfg``: an :class:`encoder.data.HmcDataConfig`, default
    settings if None), rendered on first use and cached. The test frames depend only on the test settings,
    so every training-data variant is evaluated on the same held-out frames."""
    from .data import HmcDataConfig, load_or_build_hmc_data

    path = Path(data_path) if data_path else default_data_path(identity)
    cfg = data_cfg or HmcDataConfig(identity=identity)
    return load_or_build_hmc_data(path, cfg, workers=workers, progress=progress)


def load_test_data(identity: str, *, path: str | Path | None = None, root: str | Path = RUNS_ROOT, workers: int = 1,
                   progress: bool = True) -> dict:
    """The held-out test frames of ``identity``.

    With ``path``: the test split of that HMC data cache, as it is (tests and small evaluations bring their own).
    Otherwise every training-data variant shares them, so they come from the default cache (``root/data_IDENTITY.npz``)
    when it exists, else from a test-only cache (``root/test_IDENTITY.npz``) rendered once."""
    from .data import HmcDataConfig, load_or_build_hmc_data, read_hmc_cache, read_test_split

    if path is not None:
        return read_test_split(path)
    cfg = HmcDataConfig(identity=identity)
    cached = read_hmc_cache(default_data_path(identity, Path(root)), cfg)
    if cached is not None and cached[1] is not None:
        return cached[1]
    return load_or_build_hmc_data(Path(root) / f"test_{identity}.npz", cfg, workers=workers, progress=progress,
                                  splits=("test",))[1]


def training_data_of(model_dir: str | Path) -> tuple[Path | None, object]:
    """(cache path, :class:`encoder.data.HmcDataConfig`) of the data the encoder in ``model_dir`` was trained on,
    as its ``meta.json`` records it (the default dataset when it records none)."""
    import dataclasses

    from .data import HmcDataConfig

    meta = json.loads((Path(model_dir) / "meta.json").read_text())
    data = (meta.get("train") or {}).get("data")
    if not data:
        return None, HmcDataConfig(identity=meta.get("identity") or (meta.get("train") or {}).get("identity", "S1"))
    names = {f.name for f in dataclasses.fields(HmcDataConfig)}
    cfg = HmcDataConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in names})
    return (Path(data["path"]) if data.get("path") else None), cfg


def install_embedded(run_dir: str | Path, identity: str, arch: str, *, make_default: bool = False) -> Path:
    """Re-save a finished run as a compact model (float16 weights, parity-checked ONNX) in
    ``encoder/models/<identity>/<arch>/``; ``make_default``: the one the sender loads for ``identity``
    (``encoder/models/defaults.json``)."""
    from .export import load_model, save_model
    from .runtime import default_model_dir

    model, meta = load_model(run_dir)
    dst = default_model_dir(identity, arch)
    save_model(model, dst, identity=identity, train_info=meta.get("train"), compact=True)
    if make_default:
        from .runtime import set_default_arch

        set_default_arch(identity, arch)
    return dst


def run_training(identity: str, arch_name: str, *, out_dir: str | Path | None = None, data_path: str | Path | None = None,
                 tcfg: EncoderTrainConfig | None = None, resume: bool = True, progress: bool = True, workers: int = 1,
                 decoder_dir: str | Path | None = None, data_cfg=None) -> TrainResult:
    """Load (or render) the identity's data and its trained VAE, then :func:`train_encoder`."""
    from decoder.export import load_vae

    from .arch import get_arch

    tcfg = tcfg or EncoderTrainConfig()
    tcfg.identity = identity
    out_dir = Path(out_dir) if out_dir else default_run_dir(identity, model_name(arch_name, tcfg.reweight))
    vae = load_vae(identity, decoder_dir)
    train, test = load_identity_data(identity, data_path, workers=workers, progress=progress, data_cfg=data_cfg)
    return train_encoder(out_dir, get_arch(arch_name), tcfg, data=train, vae=vae, resume=resume, progress=progress,
                         test_data=test, data_info=None if data_cfg is None else data_cfg.__dict__ | {"path": str(data_path or "")})
