"""``avcall train renderer``: train the neural renderer G and the implicit warp W end to end on the studio's truth,
export both, and check that G earns its place (on held-out clips it must beat the plain rasterized decoder output,
face-pixel PSNR and SSIM) and that W keeps G's quality.

One step takes a batch of clips (:mod:`renderer.data`): G renders frame t from its buffers; W renders frames
t + 1 .. t + K from G's cache of frame t (gradients flow through the cache into G). Loss per image: L1 +
``ssim_weight`` · (1 − SSIM) (:func:`renderer.neural.ssim_loss`: the structure term stands in for a perceptual
network, which cannot be downloaded here), over the whole frame; total = G's loss + ``warp_weight`` · mean of W's.
With a frozen G (``--warp-only --from DIR``: the ablations and the explicit-warp baseline) only W learns.

Distillation (``avcall distill renderer``, ``RendererTrainConfig.teacher``): a smaller G learns against a trained
teacher G (frozen) with the decoder students' two extra terms (:mod:`decoder.distill`), added to G's loss:
``distill_kl_weight`` · L_kl, the channel-wise KL between the teacher's and the student's output logits (per sample
and colour channel, a softmax over the pixels at temperature ``distill_temperature``), and
``distill_feature_weight`` · (1 − cosine) between the teacher's and the student's three cache maps (S/4, S/2, S),
each through a learned 1x1 projection to the teacher's width. W trains with the student as usual, so a student's
directory is a complete renderer.

Adam with a cosine learning rate; checkpoints (``checkpoint.pt``) resume an interrupted run. Output:
``renderer.onnx`` (inputs ``raster``, ``uv``, ``view``; outputs ``image`` and the cache ``f0``, ``f1``, ``f2``,
coarsest (S/4) first), ``warp.onnx`` (:mod:`renderer.warp`) and ``renderer.json`` (configs, the held-out comparison).
"""
from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avcore.config import ConfigDict

from .engine import RENDERER_FILES  # what a run directory holds and ``--install`` copies


@dataclass
class RendererTrainConfig(ConfigDict):
    steps: int = 3000
    batch_size: int = 4
    """Clips per step (each: frame t for G and its ``future`` frames for W)."""
    lr: float = 2e-3
    ssim_weight: float = 0.5
    warp_weight: float = 1.0
    time_budget_s: float = 1800.0
    checkpoint_every_s: float = 120.0
    threads: int = 2
    seed: int = 0
    code_every: int = 2
    """Codes reach the receiver every ``code_every`` display ticks (a 30 fps sender, a 60 Hz display): W's code and
    gaze inputs for frame k are the newest code's by then, frame k − (k mod ``code_every``), as in the receiver
    (the UV maps keep each frame's own gaze). 1 gives W every frame's own code (runs made before this setting)."""
    teacher: str = ""
    """A trained G's run directory to distil from (empty: no distillation)."""
    distill_kl_weight: float = 1.0
    """Weight of L_kl (with a teacher)."""
    distill_feature_weight: float = 1.0
    """Weight of the feature-consistency loss (with a teacher)."""
    distill_temperature: float = 1.0
    """Temperature of L_kl's spatial softmax."""


def image_loss(img, target, ssim_weight: float):
    from .neural import ssim_loss

    return (img - target).abs().mean() + ssim_weight * ssim_loss(img, target)


def cache_channels(gcfg) -> tuple[int, int, int]:
    """(C0, C1, C2) of G's cache: its feature maps at S/4, S/2 and S (needs a U-Net of at least three levels)."""
    w = tuple(gcfg.widths)
    if len(w) < 3:
        raise ValueError("neural caching needs a U-Net of at least three levels (features at S/4, S/2, S)")
    return w[2], w[1], w[0]


def warp_inputs(out: dict, b: dict, k: int, code_every: int = 1) -> tuple:
    """W's arguments for frame k of the clips ``b`` (:func:`renderer.data.clip_tensors`) from G's output ``out`` for
    frame 0, with the code and gaze that have arrived by frame k when codes come every ``code_every`` frames."""
    c = k - k % code_every
    return (*out["features"], out["image"], b["uv"][:, 0], b["view"][:, 0], b["z"][:, 0], b["gaze"][:, 0],
            b["uv"][:, k], b["view"][:, k], b["z"][:, c], b["gaze"][:, c])


def g_on_clips(g, b: dict) -> dict:
    """G's output for frame t of the clips ``b`` (:func:`renderer.data.clip_tensors`): its buffers, view and code (a
    plain G ignores the code, a modulated one needs it)."""
    return g(b["raster"], b["uv"][:, 0], b["view"][:, 0], z=b["z"][:, 0])


def _to_uint8(x) -> np.ndarray:
    return (x.permute(0, 2, 3, 1).numpy() * 255).round().clip(0, 255).astype(np.uint8)


def heldout_comparison(g, w, data: dict, *, batch: int = 8, code_every: int = 1) -> dict:
    """On held-out clips: :func:`renderer.evaluate.summarise` (PSNR, SSIM, L1, whole frame and face pixels) against
    the truth of G and of the raster alone (frame t), and of W and of reusing G's frame t (naive) for every later
    frame of the clip."""
    import torch

    from .data import clip_tensors
    from .evaluate import frame_metrics, summarise

    g.eval()
    if w is not None:
        w.eval()
    K = data["uv"].shape[1] - 1
    names = ["G", "raster"] + ([f"warp_t+{k}" for k in range(1, K + 1)] + [f"naive_t+{k}" for k in range(1, K + 1)]
                               if w is not None else [])
    acc = {k: ([], []) for k in names}  # name -> (images, truths)

    def add(name, pred, gt):
        acc[name][0].append(pred)
        acc[name][1].append(gt)

    with torch.no_grad():
        for a in range(0, len(data["raster"]), batch):
            idx = np.arange(a, min(a + batch, len(data["raster"])))
            b = clip_tensors(data, idx)
            out = g_on_clips(g, b)
            img = _to_uint8(out["image"])
            warped = ({k: _to_uint8(w(*warp_inputs(out, b, k, code_every))) for k in range(1, K + 1)}
                      if w is not None else {})
            for j, i in enumerate(idx):
                add("G", img[j], data["target"][i, 0])
                add("raster", data["raster"][i], data["target"][i, 0])
                for k, wk in warped.items():
                    add(f"warp_t+{k}", wk[j], data["target"][i, k])
                    add(f"naive_t+{k}", img[j], data["target"][i, k])
    return {name: summarise(frame_metrics(np.stack(p), np.stack(t))) for name, (p, t) in acc.items()}


def export_renderer(g, path: Path, size: int) -> None:
    """ONNX export of G (opset 17; the neural texture sampled outside, saved beside it as
    ``neural_texture.npy`` (T, T, C) float32; a modulated G also takes ``z``) with a parity check against torch's G
    (image and cache features)."""
    import onnxruntime as ort
    import torch

    from .neural import FlatOutputs

    g.eval()
    gen = torch.Generator().manual_seed(0)
    raster, uv = torch.rand(1, 3, size, size, generator=gen), torch.rand(1, 3, size, size, generator=gen)
    view = torch.tensor([[0.2, 0.1, 0.97]])
    z = torch.randn(1, g.cfg.latent_dim, generator=gen) if g.cfg.modulated else None
    with torch.no_grad():
        out = g(raster, uv, view, z=z)
        sampled = g.texture(uv[:, :2])
        texture = g.texture.full()[0].permute(1, 2, 0).contiguous().numpy()
    refs = [out["image"].numpy()] + [f.numpy() for f in out["features"]]
    names = ["image"] + [f"f{i}" for i in range(len(out["features"]))]
    inputs = {"raster": raster, "uv": uv, "view": view, "features": sampled} | ({"z": z} if z is not None else {})
    torch.onnx.export(FlatOutputs(g), tuple(inputs.values()), str(path), input_names=list(inputs), output_names=names,
                      opset_version=17, dynamo=False)
    np.save(Path(path).with_name("neural_texture.npy"), texture.astype(np.float32))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(names, {k: v.numpy() for k, v in inputs.items()})
    for name, a, b in zip(names, got, refs):
        if not np.allclose(a, b, atol=1e-3 * max(1.0, float(np.abs(b).max()))):
            raise RuntimeError(f"renderer ONNX parity failed on {name}: max |diff| {np.abs(a - b).max():.2e}")


def _warp_example(g, data: dict) -> dict:
    import torch

    from .data import clip_tensors
    from .warp import WARP_INPUTS

    b = clip_tensors(data, [0])
    with torch.no_grad():
        out = g_on_clips(g, b)
    return dict(zip(WARP_INPUTS, warp_inputs(out, b, 1)))


def load_generator(run_dir: str | Path):
    """The trained G of a renderer run directory (its ``checkpoint.pt``), in eval mode, frozen."""
    from avcore.training import load_checkpoint

    from .neural import NeuralRenderer, NeuralRendererConfig

    src = load_checkpoint(Path(run_dir) / "checkpoint.pt")
    if src is None:
        raise FileNotFoundError(f"no trained renderer checkpoint in {run_dir}")
    g = NeuralRenderer(NeuralRendererConfig.from_dict(src["renderer_config"]))
    g.load_state_dict(src["model"])
    return g.eval().requires_grad_(False)


class RendererDistillation:
    """The distillation terms of a student G against a frozen teacher G (module docstring): ``losses(batch, out)``
    runs the teacher on the batch and returns ``{"kl", "feature"}``; the 1x1 projections are trained with the
    student (``projector``)."""

    def __init__(self, teacher, student, example: dict, tcfg: RendererTrainConfig) -> None:
        import torch

        from decoder.distill import FeatureProjector

        self.teacher, self.tcfg = teacher, tcfg
        with torch.no_grad():
            t, s = g_on_clips(teacher, example), g_on_clips(student, example)
        self.projector = FeatureProjector({"cache": t["features"]}, {"cache": s["features"]},
                                          pairs=[("cache", k, k) for k in range(len(t["features"]))])

    def losses(self, b: dict, out: dict) -> dict:
        import torch

        from decoder.distill import channel_kl

        with torch.no_grad():
            t = g_on_clips(self.teacher, b)
        return {"kl": channel_kl(t["logits"], out["logits"], self.tcfg.distill_temperature),
                "feature": self.projector({"cache": t["features"]}, {"cache": out["features"]})}


def train_renderer(out_dir: str | Path, train: dict, test: dict, gcfg=None, tcfg: RendererTrainConfig | None = None,
                   *, wcfg=None, frozen_g: str | Path | None = None, resume: bool = True, progress: bool = True,
                   info: dict | None = None) -> dict:
    """Train G and W on ``train`` clips (or W alone on a frozen G from the run directory ``frozen_g``; or G distilled
    from the teacher G of ``tcfg.teacher``), compare on ``test`` clips, export both. Returns what ``renderer.json``
    holds."""
    import torch

    from avcore.training import TrainingLoop, open_run, resumed_config

    from .config import WarpConfig
    from .data import clip_tensors
    from .neural import NeuralRenderer, NeuralRendererConfig
    from .warp import ImplicitWarp, export_warp

    tcfg = tcfg or RendererTrainConfig()
    out_dir, ckpt_path, ckpt = open_run(out_dir, resume)
    if ckpt is not None:
        tcfg = resumed_config(RendererTrainConfig, {"code_every": 1, **ckpt["train_config"]}, tcfg)
        gcfg = NeuralRendererConfig.from_dict(ckpt["renderer_config"])
        wcfg = WarpConfig.from_dict(ckpt["warp_config"])
    g_state = None
    if frozen_g is not None:
        frozen = load_generator(frozen_g)
        gcfg, g_state = frozen.cfg, frozen.state_dict()
    gcfg, wcfg = gcfg or NeuralRendererConfig(), wcfg or WarpConfig()
    torch.set_num_threads(tcfg.threads)
    torch.manual_seed(tcfg.seed)
    g = NeuralRenderer(gcfg)
    w = ImplicitWarp(cache_channels(gcfg), int(train["z"].shape[-1]), wcfg)
    if g_state is not None:
        g.load_state_dict(g_state)
        g.requires_grad_(False)
    if tcfg.teacher and frozen_g is not None:
        raise ValueError("a frozen G is not distilled: train W alone or distil G, not both")
    distill = (RendererDistillation(load_generator(tcfg.teacher), g, clip_tensors(train, [0, 1]), tcfg)
               if tcfg.teacher else None)
    params = list(w.parameters()) + ([] if frozen_g is not None else list(g.parameters()))
    if distill is not None:
        params += list(distill.projector.parameters())
    opt = torch.optim.Adam(params, lr=tcfg.lr)
    step, elapsed = 0, 0.0
    last = {"G": None, "W": None}  # the latest step's losses (a rerun of a finished run keeps its own)
    if ckpt is not None:
        g.load_state_dict(ckpt["model"])
        w.load_state_dict(ckpt["warp"])
        opt.load_state_dict(ckpt["opt"])
        step, elapsed = ckpt["step"], ckpt["elapsed_s"]
        last = ckpt.get("last_loss", last)
        if distill is not None:
            distill.projector.load_state_dict(ckpt["projector"])
    rng = np.random.default_rng(tcfg.seed * 7919 + step)
    loop = TrainingLoop(ckpt_path, lambda: {"model": g.state_dict(), "warp": w.state_dict(), "opt": opt.state_dict(),
                                            "train_config": tcfg.to_dict(), "renderer_config": gcfg.to_dict(),
                                            "warp_config": wcfg.to_dict(), "last_loss": last,
                                            **({"projector": distill.projector.state_dict()} if distill else {})},
                        steps=tcfg.steps, time_budget_s=tcfg.time_budget_s, checkpoint_every_s=tcfg.checkpoint_every_s,
                        step=step, elapsed_s=elapsed, desc="train renderer" if frozen_g is None else "train warp",
                        progress=progress)
    K = train["uv"].shape[1] - 1
    g.train(frozen_g is None)
    w.train()
    for _, frac in loop:
        for group in opt.param_groups:
            group["lr"] = tcfg.lr * 0.5 * (1 + math.cos(math.pi * frac))
        b = clip_tensors(train, rng.choice(len(train["raster"]), tcfg.batch_size))
        with torch.set_grad_enabled(frozen_g is None):
            out = g_on_clips(g, b)
            loss_g = image_loss(out["image"], b["target"][:, 0], tcfg.ssim_weight)
            if distill is not None:
                d = distill.losses(b, out)
                loss_g = loss_g + tcfg.distill_kl_weight * d["kl"] + tcfg.distill_feature_weight * d["feature"]
        loss_w = sum(image_loss(w(*warp_inputs(out, b, k, tcfg.code_every)), b["target"][:, k], tcfg.ssim_weight)
                     for k in range(1, K + 1)) / max(K, 1)
        loss = tcfg.warp_weight * loss_w + (loss_g if frozen_g is None else 0.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        last = {"G": float(loss_g.detach()), "W": float(loss_w.detach())}
        loop.report({"G": f"{last['G']:.4f}", "W": f"{last['W']:.4f}"})
    comparison = heldout_comparison(g, w, test, code_every=tcfg.code_every)
    size = int(train["raster"].shape[1])
    if frozen_g is not None:
        for name in ("renderer.onnx", "neural_texture.npy"):
            shutil.copyfile(Path(frozen_g) / name, out_dir / name)
    else:
        export_renderer(g, out_dir / "renderer.onnx", size)
    export_warp(w, out_dir / "warp.onnx", _warp_example(g, test))
    meta = {"renderer": gcfg.to_dict(), "warp": wcfg.to_dict(), "size": size, "latent_dim": int(train["z"].shape[-1]),
            "generator_from": str(frozen_g) if frozen_g is not None else None,
            "train": {**tcfg.to_dict(), "steps_done": loop.step, "elapsed_s": round(loop.elapsed_s, 1),
                      "final_loss_g": last["G"], "final_loss_w": last["W"], **(info or {})},
            "heldout": comparison}
    (out_dir / "renderer.json").write_text(json.dumps(meta, indent=2))
    return meta


def install_renderer(run_dir: str | Path, avatar_dir: str | Path) -> list[Path]:
    """Copy a trained renderer's :data:`RENDERER_FILES` into an avatar (decoder) directory; checks that the code
    size matches the decoder's."""
    run_dir, avatar_dir = Path(run_dir), Path(avatar_dir)
    meta = json.loads((run_dir / "renderer.json").read_text())
    dec = json.loads((avatar_dir / "config.json").read_text())
    z = int(dec["decoder"]["latent_dim"])
    if z != int(meta["latent_dim"]):
        raise ValueError(f"renderer in {run_dir} takes {meta['latent_dim']}-d codes, the avatar {avatar_dir} has {z}")
    out = []
    for name in RENDERER_FILES:
        shutil.copyfile(run_dir / name, avatar_dir / name)
        out.append(avatar_dir / name)
    return out
