"""LATEX early-prediction model: the encoder's stems plus a tiny head, trained on a frozen encoder.

For each view the early model reuses the (frozen) stem convolution of that view
encoder, average-pools its output to a ``grid`` x ``grid`` map, and runs a small
head (3x3 stride-2 conv to ``channels``, then a linear layer to ``hidden``); the
three view vectors are concatenated and one linear layer estimates the code and
the gaze of both eyes. Only the heads are trained, on a frozen encoder: their
targets are the full encoder's own outputs (code and gaze) on the same frames,
because the gate must notice when the *sent* code would change, not re-learn
the ground truth. Stem features are computed once and cached, so training takes
seconds to minutes on a CPU.

Exported as ``early.onnx`` (views (B, 3, S, S) uint8 -> z (B, Z), gaze (B, 2, 2))
next to the encoder, with ``latex.json`` holding the standardisation scales of
the gate distance and thresholds calibrated on training sequences for a range of
skip ratios (see :mod:`encoder.latex`).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from avcore.config import ConfigDict
from avcore.progress import progress as progress_bar

from .arch import VIEW_NAMES
from .latex import (CALIBRATION_RATIOS, CALIBRATION_SETTINGS, EARLY_FILE, LATEX_FILE, LatexConfig, calibrate_threshold,
                    calibration_key, gate_distances, sequence_starts)
from .model import PIXEL_MEAN, PIXEL_STD, HmcEncoderNet, layer_plan


@dataclass
class EarlyConfig(ConfigDict):
    grid: int = 12
    """Side of the pooled stem map the head sees."""
    channels: int = 16
    hidden: int = 64
    steps: int = 3000
    batch_size: int = 128
    lr: float = 2e-3
    augmented_copies: int = 1
    """Slip/exposure-augmented copies of the training frames added to the cache."""
    seed: int = 0


class EarlyHead(nn.Module):
    """Pooled stem features (B, C, grid, grid) -> (B, hidden)."""

    def __init__(self, cin: int, grid: int, channels: int, hidden: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, channels, 3, 2, 1)
        side = (grid + 1) // 2
        self.fc = nn.Linear(channels * side * side, hidden)

    def forward(self, x):
        return F.relu(self.fc(F.relu(self.conv(x)).flatten(1)))


class EarlyModel(nn.Module):
    """views (B, 3, S, S) uint8 -> {"z": (B, Z), "gaze": (B, 2, 2)}; stems are copies of the encoder's."""

    def __init__(self, encoder: HmcEncoderNet, cfg: EarlyConfig):
        super().__init__()
        import copy

        arch = encoder.arch
        self.cfg, self.latent_dim, self.input_size = cfg, arch.latent_dim, arch.input_size
        self.pools = {v: arch.input_size // arch.views[v].resolution for v in VIEW_NAMES}
        self.stems = nn.ModuleDict({v: copy.deepcopy(encoder.views[v].features[0]) for v in VIEW_NAMES})
        self.stems.requires_grad_(False)
        self.heads = nn.ModuleDict({
            v: EarlyHead(arch.views[v].stem, cfg.grid, cfg.channels, cfg.hidden) for v in VIEW_NAMES
        })
        self.out = nn.Linear(3 * cfg.hidden, arch.latent_dim + 4)

    def pooled_stem(self, views: torch.Tensor) -> list[torch.Tensor]:
        """views (B, 3, S, S) -> per view (B, C, grid, grid) pooled stem features."""
        outs = []
        for i, v in enumerate(VIEW_NAMES):
            x = (views[:, i : i + 1].float() - PIXEL_MEAN) / PIXEL_STD
            if self.pools[v] > 1:
                x = F.avg_pool2d(x, self.pools[v])
            x = self.stems[v](x)
            k = x.shape[-1] // self.cfg.grid
            outs.append(F.avg_pool2d(x, k) if k > 1 else x)
        return outs

    def head(self, pooled: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        h = torch.cat([self.heads[v](p) for v, p in zip(VIEW_NAMES, pooled)], 1)
        o = self.out(h)
        return {"z": o[:, : self.latent_dim], "gaze": o[:, self.latent_dim :].reshape(-1, 2, 2)}

    def forward(self, views: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.head(self.pooled_stem(views))


def early_flops(model: EarlyModel, encoder: HmcEncoderNet) -> dict[str, int]:
    """Analytic FLOPs (2 x MACs of convs and linears) of the early model: its stems, its head, total."""
    arch = encoder.arch
    stem = sum(2 * p["cin"] * p["cout"] * p["k"] ** 2 * p["out_hw"] ** 2
               for p in (layer_plan(arch.views[v], arch.input_size, arch.feature_dim, arch.num_keypoints)[0]
                         for v in VIEW_NAMES))
    cfg = model.cfg
    side = (cfg.grid + 1) // 2
    head = 0
    for v in VIEW_NAMES:
        c = arch.views[v].stem
        head += 2 * c * cfg.channels * 9 * side * side + 2 * cfg.channels * side * side * cfg.hidden
    head += 2 * 3 * cfg.hidden * (arch.latent_dim + 4)
    return {"stems": stem, "head": head, "total": stem + head}


def counted_early_flops(model: EarlyModel) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    S = model.input_size
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(torch.zeros(1, 3, S, S, dtype=torch.uint8))
    return int(fc.get_total_flops())


# ---------------------------------------------------------------------------- training
def _batched(fn, n: int, batch: int):
    outs = []
    for a in range(0, n, batch):
        outs.append(fn(slice(a, min(n, a + batch))))
    return outs


def build_cache(encoder: HmcEncoderNet, early: EarlyModel, views: np.ndarray, keypoints: np.ndarray, cfg: EarlyConfig,
                progress: bool = True) -> dict:
    """Pooled stem features and the encoder's own outputs (the head's targets) on the training frames
    and ``cfg.augmented_copies`` slip/exposure-augmented copies of them."""
    from .train import EncoderTrainConfig, augment_hmc

    gen = torch.Generator().manual_seed(cfg.seed)
    tcfg = EncoderTrainConfig()
    feats, zs, gs = [[] for _ in VIEW_NAMES], [], []
    n = len(views)
    total = n * (1 + cfg.augmented_copies)
    bar = progress_bar(total=total, desc="early-head cache", unit="frame", disable=not progress, mininterval=5.0)
    with torch.no_grad():
        for copy in range(1 + cfg.augmented_copies):
            for a in range(0, n, 32):
                v = torch.from_numpy(views[a : a + 32]).float()
                if copy:
                    v, _ = augment_hmc(v, torch.from_numpy(keypoints[a : a + 32]), gen, tcfg)
                    v = v.round()
                o = encoder(v)
                zs.append(o["z"].numpy())
                gs.append(o["gaze"].numpy())
                for i, p in enumerate(early.pooled_stem(v)):
                    feats[i].append(p.numpy().astype(np.float16))
                bar.update(len(v))
    bar.close()
    return {"features": [np.concatenate(f) for f in feats], "z": np.concatenate(zs), "gaze": np.concatenate(gs)}


def train_head(early: EarlyModel, cache: dict, cfg: EarlyConfig, z_scale: np.ndarray, gaze_scale: np.ndarray,
               progress: bool = True) -> list[dict]:
    """Fit the heads to the cached targets (standardised MSE on z, on gaze). Returns the loss history."""
    torch.manual_seed(cfg.seed)
    params = [p for n, p in early.named_parameters() if not n.startswith("stems.")]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps, eta_min=cfg.lr * 0.02)
    feats = [torch.from_numpy(f) for f in cache["features"]]
    zt = torch.from_numpy(cache["z"] / z_scale)
    gt = torch.from_numpy(cache["gaze"].reshape(len(zt), -1) / gaze_scale.reshape(-1))
    rng = np.random.default_rng(cfg.seed)
    history, run = [], None
    early.train()
    for step in progress_bar(range(1, cfg.steps + 1), desc="train early head", unit="step", disable=not progress,
                             mininterval=5.0):
        idx = torch.from_numpy(rng.integers(0, len(zt), cfg.batch_size))
        o = early.head([f[idx].float() for f in feats])
        lz = ((o["z"] / torch.from_numpy(z_scale) - zt[idx]) ** 2).mean()
        lg = ((o["gaze"].reshape(len(idx), -1) / torch.from_numpy(gaze_scale.reshape(-1)) - gt[idx]) ** 2).mean()
        loss = lz + lg
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        lv = float(loss.detach())
        run = lv if run is None else 0.98 * run + 0.02 * lv
        if step % 100 == 0 or step == 1:
            history.append({"step": step, "loss": run, "z": float(lz.detach()), "gaze": float(lg.detach())})
    early.eval()
    return history


def export_early(early: EarlyModel, out_dir: Path) -> float:
    """Write ``early.onnx`` and check it against torch; returns the max relative error."""
    from avcore.export import check_parity, export_onnx_model

    from .export import ONNX_OPSET, PARITY_ATOL

    S = early.input_size
    x = torch.randint(0, 256, (2, 3, S, S), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))

    class W(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, views):
            o = self.m(views)
            return o["z"], o["gaze"]

    w = W(early).eval()
    path = Path(out_dir) / EARLY_FILE
    with torch.no_grad():
        export_onnx_model(w, (x,), path, ["views"], ["z", "gaze"], opset=ONNX_OPSET)
        expected = dict(zip(("z", "gaze"), (t.numpy() for t in w(x))))
    errors = check_parity(path, {"views": x.numpy()}, expected, PARITY_ATOL, relative=True, threads=1)
    return max(errors.values(), default=0.0)


def early_outputs(early: EarlyModel, views: np.ndarray, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        outs = _batched(lambda s: early(torch.from_numpy(views[s])), len(views), batch)
    return np.concatenate([o["z"].numpy() for o in outs]), np.concatenate([o["gaze"].numpy() for o in outs])


def train_latex(model_dir: str | Path, data: dict, cfg: EarlyConfig | None = None, *, progress: bool = True) -> dict:
    """Train the early head of the encoder in ``model_dir`` on ``data`` (the HMC training arrays),
    export ``early.onnx``, calibrate the gate on the training sequences and write ``latex.json``."""
    from .export import load_model

    cfg = cfg or EarlyConfig()
    model_dir = Path(model_dir)
    t0 = time.perf_counter()
    encoder, _ = load_model(model_dir)
    encoder.eval().requires_grad_(False)
    early = EarlyModel(encoder, cfg)
    cache = build_cache(encoder, early, data["views"], data["keypoints"], cfg, progress=progress)
    n = len(data["views"])
    z_scale = np.maximum(cache["z"][:n].std(0), 1e-3).astype(np.float32)
    gaze_scale = np.maximum(cache["gaze"][:n].reshape(n, -1).std(0), 1e-3).astype(np.float32)
    history = train_head(early, cache, cfg, z_scale, gaze_scale, progress=progress)
    parity = export_early(early, model_dir)
    flops = early_flops(early, encoder)
    from .flops import analytic_flops

    enc_total = analytic_flops(encoder.arch)["total"]
    # Calibration: the gate on the (unaugmented) training sequences, with the exported model's numbers.
    ze, ge = early_outputs(early, data["views"])
    starts = sequence_starts(data["session"], data["frame"])
    d = gate_distances(ze, ge, z_scale, gaze_scale, starts)
    calibration = {}
    for T, m in CALIBRATION_SETTINGS:
        thr = {f"{r:g}": calibrate_threshold(d, r, T, m, starts) for r in CALIBRATION_RATIOS}
        calibration[calibration_key(T, m)] = {r: t for r, t in thr.items() if t is not None}
    # How well the head tracks the encoder (held in the cache: unaugmented frames).
    fit = {
        "z_rmse_std": float(np.sqrt((((ze - cache["z"][:n]) / z_scale) ** 2).mean())),
        "gaze_mae_deg": float(np.degrees(np.abs(ge - cache["gaze"][:n])).mean()),
    }
    settings = {
        "encoder": encoder.arch.name,
        "early": cfg.to_dict(),
        "defaults": LatexConfig().to_dict(),
        "z_scale": z_scale.tolist(),
        "gaze_scale": gaze_scale.tolist(),
        "flops": {**flops, "encoder_total": enc_total, "share": flops["total"] / enc_total,
                  "head_share": flops["head"] / enc_total},
        "calibration": calibration,
        "train": {"frames": int(n), "cached_frames": int(len(cache["z"])), "elapsed_s": round(time.perf_counter() - t0, 1),
                  "final_loss": history[-1]["loss"], "fit": fit, "onnx_parity_max_rel_err": parity},
    }
    (model_dir / LATEX_FILE).write_text(json.dumps(settings, indent=2))
    (model_dir / "latex_loss_history.json").write_text(json.dumps(history))
    return settings
