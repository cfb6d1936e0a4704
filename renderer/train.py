"""``avcall train renderer``: train the neural renderer G on the studio's truth, export it, and check it earns its
place: on held-out poses it must beat the plain rasterized decoder output (face-pixel PSNR and SSIM).

Loss: L1 + ``ssim_weight`` · (1 − SSIM) (:func:`renderer.neural.ssim_loss`; the structure term stands in for a
perceptual network, which cannot be downloaded here), over the whole frame. Adam with a cosine learning rate;
checkpoints (``checkpoint.pt``) resume an interrupted run. Output: ``renderer.onnx`` (inputs ``raster``, ``uv``,
``view``; outputs ``image`` and the cache features ``f0``, ``f1``, ``f2``: bottleneck first) and ``renderer.json`` (configs, the held-out
comparison).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avcore.config import ConfigDict


@dataclass
class RendererTrainConfig(ConfigDict):
    steps: int = 3000
    batch_size: int = 8
    lr: float = 2e-3
    ssim_weight: float = 0.5
    time_budget_s: float = 1800.0
    checkpoint_every_s: float = 120.0
    threads: int = 2
    seed: int = 0


def heldout_comparison(g, data: dict, *, batch: int = 8) -> dict:
    """Face-pixel and whole-frame PSNR / SSIM of G's images and of the raster alone against the truth."""
    import torch

    from avcore.metrics import face_and_frame_mse, face_mask, psnr_from_mse, ssim

    from .data import to_tensors

    g.eval()
    acc = {k: {"face_mse": [], "mse": [], "ssim_face": []} for k in ("G", "raster")}
    with torch.no_grad():
        for a in range(0, len(data["view"]), batch):
            idx = np.arange(a, min(a + batch, len(data["view"])))
            raster, uv, view, _ = to_tensors(data, idx)
            img = (g(raster, uv, view)["image"].permute(0, 2, 3, 1).numpy() * 255).round().clip(0, 255).astype(np.uint8)
            for k, i in enumerate(idx):
                gt = data["target"][i]
                for name, pred in (("G", img[k]), ("raster", data["raster"][i])):
                    f, w = face_and_frame_mse(pred, gt)
                    acc[name]["face_mse"].append(f)
                    acc[name]["mse"].append(w)
                    acc[name]["ssim_face"].append(ssim(pred, gt, mask=face_mask(gt)))
    return {name: {"psnr_face": psnr_from_mse(float(np.mean(v["face_mse"]))), "psnr": psnr_from_mse(float(np.mean(v["mse"]))),
                   "ssim_face": float(np.mean(v["ssim_face"]))} for name, v in acc.items()}


def export_renderer(g, path: Path, size: int) -> None:
    """ONNX export (opset 17) with a parity check against torch."""
    import onnxruntime as ort
    import torch

    from .neural import FlatOutputs

    g.eval()
    gen = torch.Generator().manual_seed(0)
    raster, uv = torch.rand(1, 3, size, size, generator=gen), torch.rand(1, 3, size, size, generator=gen)
    view = torch.tensor([[0.2, 0.1, 0.97]])
    with torch.no_grad():
        out = g(raster, uv, view)
    ref = out["image"].numpy()
    names = ["image"] + [f"f{i}" for i in range(len(out["features"]))]
    torch.onnx.export(FlatOutputs(g), (raster, uv, view), str(path), input_names=["raster", "uv", "view"],
                      output_names=names, opset_version=17, dynamo=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(["image"], {"raster": raster.numpy(), "uv": uv.numpy(), "view": view.numpy()})[0]
    if not np.allclose(got, ref, atol=1e-3):
        raise RuntimeError(f"renderer ONNX parity failed: max |diff| {np.abs(got - ref).max():.2e}")


def train_renderer(out_dir: str | Path, train: dict, test: dict, gcfg=None, tcfg: RendererTrainConfig | None = None,
                   *, resume: bool = True, progress: bool = True, info: dict | None = None) -> dict:
    """Train G on ``train`` (:mod:`renderer.data` arrays), compare with the raster on ``test``, export."""
    import torch

    from avcore.training import TrainingLoop, open_run, resumed_config

    from .data import to_tensors
    from .neural import NeuralRenderer, NeuralRendererConfig, ssim_loss

    tcfg = tcfg or RendererTrainConfig()
    out_dir, ckpt_path, ckpt = open_run(out_dir, resume)
    if ckpt is not None:
        tcfg = resumed_config(RendererTrainConfig, ckpt["train_config"], tcfg)
        gcfg = NeuralRendererConfig.from_dict(ckpt["renderer_config"])
    gcfg = gcfg or NeuralRendererConfig()
    torch.set_num_threads(tcfg.threads)
    torch.manual_seed(tcfg.seed)
    g = NeuralRenderer(gcfg)
    opt = torch.optim.Adam(g.parameters(), lr=tcfg.lr)
    step, elapsed = 0, 0.0
    if ckpt is not None:
        g.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        step, elapsed = ckpt["step"], ckpt["elapsed_s"]
    rng = np.random.default_rng(tcfg.seed * 7919 + step)
    loop = TrainingLoop(ckpt_path, lambda: {"model": g.state_dict(), "opt": opt.state_dict(),
                                            "train_config": tcfg.to_dict(), "renderer_config": gcfg.to_dict()},
                        steps=tcfg.steps, time_budget_s=tcfg.time_budget_s, checkpoint_every_s=tcfg.checkpoint_every_s,
                        step=step, elapsed_s=elapsed, desc="train renderer", progress=progress)
    g.train()
    last = float("nan")
    for _, frac in loop:
        for group in opt.param_groups:
            group["lr"] = tcfg.lr * 0.5 * (1 + math.cos(math.pi * frac))
        raster, uv, view, target = to_tensors(train, rng.choice(len(train["view"]), tcfg.batch_size))
        img = g(raster, uv, view)["image"]
        loss = (img - target).abs().mean() + tcfg.ssim_weight * ssim_loss(img, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        last = float(loss.detach())
        loop.report({"loss": f"{last:.4f}"})
    comparison = heldout_comparison(g, test)
    size = int(train["raster"].shape[1])
    export_renderer(g, out_dir / "renderer.onnx", size)
    meta = {"renderer": gcfg.to_dict(), "train": {**tcfg.to_dict(), "steps_done": loop.step,
                                                  "elapsed_s": round(loop.elapsed_s, 1), "final_loss": last,
                                                  **(info or {})},
            "size": size, "heldout": comparison}
    (out_dir / "renderer.json").write_text(json.dumps(meta, indent=2))
    return meta
