"""Latency lookup table (LUT) of encoder building blocks, measured with onnxruntime on this machine.

An encoder's latency (three view models + fusion, one intra-op thread, the sender's setting) is predicted
without building or timing it: each view is cut into **entries** — the input step (normalise, pool or resize
to the view's resolution), the stem, every layer (operator, kernel, stride, expansion, input channels, output
channels, input side), the 1x1 head, and the output step (pooling or flattening + the feature, gaze and
keypoint layers) — and the fusion MLP is one more. Each entry is built from the same torch modules the encoder
uses (:mod:`encoder.model`), exported to ONNX on its own, and timed in its own onnxruntime session (one
thread, warm-up, median of many runs). The table is filled lazily and cached in a JSON file; its key is the
entry's description, so a cached value is reused by every architecture that has that entry.

Prediction: a model run has a fixed cost (the session call, input and output copies) that every entry's own
measurement includes once; the table therefore also measures an empty model's run (``overhead_ms``) and
predicts ``sum over entries of (entry - overhead) + overhead per model`` (four models: three views, fusion).
:func:`check_lut` compares predictions with full models' measurements for random architectures of the search
space (``avcall search lut``, ``docs/results/ave_lut.json``).
"""
from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from avcore.progress import progress as progress_bar

from .arch import VIEW_NAMES, EncoderArch, ViewArch

MODELS_PER_ENCODER = len(VIEW_NAMES) + 1
"""Sessions an encoder runs per frame: one per view and the fusion."""


def input_key(input_size: int, resolution: int) -> str:
    return f"input:{input_size}>{resolution}"


def stem_key(resolution: int, channels: int) -> str:
    return f"stem:r{resolution}_c{channels}"


def block_key(op: str, kernel: int, stride: int, expansion: int, cin: int, cout: int, hw: int) -> str:
    """One layer (``op`` a block op of :mod:`encoder.arch`; ``hw`` the side of its input)."""
    return f"block:{op}_k{kernel}_s{stride}_e{expansion}_i{cin}_o{cout}_hw{hw}"


def head_key(cin: int, cout: int, hw: int) -> str:
    return f"head:i{cin}_o{cout}_hw{hw}"


def out_key(pool: str, channels: int, hw: int, feature_dim: int, gaze: bool, keypoints: int) -> str:
    return f"out:{pool}_c{channels}_hw{hw}_f{feature_dim}_g{int(gaze)}_k{keypoints}"


def fusion_key(in_dim: int, hidden: tuple[int, ...], latent_dim: int) -> str:
    return "fusion:" + "_".join(str(d) for d in (in_dim, *hidden, latent_dim))


def view_entries(view: ViewArch, input_size: int, feature_dim: int, num_keypoints: int) -> list[str]:
    """The LUT keys of one per-view encoder, in order."""
    out = [input_key(input_size, view.resolution)]
    hw = (view.resolution + 1) // 2
    out.append(stem_key(view.resolution, view.stem))
    c = view.stem
    for b in view.decoded():
        for r in range(b.repeats):
            if b.op == "skip":
                continue
            s = b.stride if r == 0 else 1
            e = b.expansion if b.op in ("fmb", "mb") else 1
            out.append(block_key(b.op, b.kernel, s, e, c, b.channels, hw))
            c, hw = b.channels, (hw + s - 1) // s
    if view.head:
        out.append(head_key(c, view.head, hw))
        c = view.head
    out.append(out_key(view.pool, c, hw, feature_dim, view.gaze, num_keypoints if view.keypoints else 0))
    return out


def fusion_entry(arch: EncoderArch) -> str:
    return fusion_key(3 * arch.feature_dim, arch.fusion_hidden, arch.latent_dim)


def arch_entries(arch: EncoderArch) -> dict[str, list[str]]:
    """{view: keys, ..., "fusion": [key]}."""
    out = {v: view_entries(arch.views[v], arch.input_size, arch.feature_dim, arch.num_keypoints) for v in VIEW_NAMES}
    out["fusion"] = [fusion_entry(arch)]
    return out


# --------------------------------------------------------------------------- entry -> module


def entry_module(key: str):
    """(torch module in eval mode, example input) for a LUT key."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    from .arch import BlockSpec
    from .model import PIXEL_MEAN, PIXEL_STD, FusionHead, conv_bn_act, make_block

    kind, rest = key.split(":", 1)
    if kind == "input":
        size, res = (int(x) for x in rest.split(">"))

        class Input(nn.Module):
            def forward(self, image):
                x = (image.float() - PIXEL_MEAN) / PIXEL_STD
                if size % res == 0 and size // res > 1:
                    x = F.avg_pool2d(x, size // res)
                elif size % res:
                    x = F.interpolate(x, size=(res, res), mode="bilinear", align_corners=False)
                return x

        return Input().eval(), torch.zeros(1, 1, size, size, dtype=torch.uint8)
    f = {t[0]: t[1:] for t in rest.split("_") if t}
    if kind == "stem":
        r, c = int(f["r"]), int(f["c"])
        return conv_bn_act(1, c, 3, 2).eval(), torch.zeros(1, 1, r, r)
    if kind == "block":
        op = rest.split("_")[0]
        vals = {t[0]: int(t[1:]) for t in rest.split("_")[1:] if t[0] in "kseio"}
        hw = int(rest.split("_hw")[1])
        b = BlockSpec(op, kernel=vals["k"], stride=vals["s"], expansion=vals["e"], channels=vals["o"])
        m, _ = make_block(b, vals["i"], vals["s"])
        return m.eval(), torch.zeros(1, vals["i"], hw, hw)
    if kind == "head":
        i, o = int(f["i"]), int(f["o"])
        hw = int(rest.split("_hw")[1])
        return conv_bn_act(i, o, 1, 1).eval(), torch.zeros(1, i, hw, hw)
    if kind == "out":
        pool = rest.split("_")[0]
        c = int(rest.split("_c")[1].split("_")[0])
        hw = int(rest.split("_hw")[1].split("_")[0])
        feat = int(rest.split("_f")[1].split("_")[0])
        gaze = rest.split("_g")[1].split("_")[0] == "1"
        kp = int(rest.split("_k")[1])

        class Out(nn.Module):
            def __init__(self):
                super().__init__()
                self.feature = nn.Linear(c * (hw * hw if pool == "flatten" else 1), feat)
                self.gaze = nn.Linear(feat, 2) if gaze else None
                self.keypoints = nn.Linear(feat, 2 * kp) if kp else None

            def forward(self, x):
                x = x.flatten(1) if pool == "flatten" else x.mean((2, 3))
                f = self.feature(x)
                h = F.relu(f)
                outs = [f]
                if self.gaze is not None:
                    outs.append(self.gaze(h))
                if self.keypoints is not None:
                    outs.append(self.keypoints(h))
                return tuple(outs)

        return Out().eval(), torch.zeros(1, c, hw, hw)
    if kind == "fusion":
        dims = [int(x) for x in rest.split("_")]
        return FusionHead(dims[0], tuple(dims[1:-1]), dims[-1]).eval(), torch.zeros(1, dims[0])
    if kind == "empty":

        class Empty(nn.Module):
            def forward(self, x):
                return x + 1.0

        return Empty().eval(), torch.zeros(1, 1)
    raise ValueError(f"unknown LUT entry {key!r}")


# --------------------------------------------------------------------------- timing


def time_session(session, feeds: dict, *, runs: int, warmup: int) -> float:
    """Median wall time (ms) of ``session.run`` on ``feeds``."""
    for _ in range(warmup):
        session.run(None, feeds)
    ms = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(None, feeds)
        ms.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(ms))


def time_entry(key: str, *, runs: int = 40, warmup: int = 8, threads: int = 1) -> float:
    """Export one entry on its own and time it (median ms, ``threads`` intra-op threads)."""
    import torch

    from avcore.export import export_onnx_model
    from avcore.onnx import inference_session

    module, example = entry_module(key)
    with torch.no_grad():
        out = module(example)
    n_out = len(out) if isinstance(out, tuple) else 1
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "entry.onnx"
        with torch.no_grad():
            export_onnx_model(module, (example,), path, ["x"], [f"y{i}" for i in range(n_out)])
        sess = inference_session(path, threads=threads)
        feeds = {"x": example.numpy()}
        return time_session(sess, feeds, runs=runs, warmup=warmup)


class LatencyTable:
    """Measured entry latencies (ms), cached in ``path`` (JSON), filled on demand."""

    def __init__(self, path: str | Path | None = None, *, runs: int = 40, warmup: int = 8, threads: int = 1):
        self.path = Path(path) if path else None
        self.runs, self.warmup, self.threads = runs, warmup, threads
        self.entries: dict[str, float] = {}
        self.machine = ""
        if self.path is not None and self.path.is_file():
            doc = json.loads(self.path.read_text())
            if doc.get("threads") == threads:
                self.entries = {k: float(v) for k, v in doc.get("entries", {}).items()}
                self.machine = doc.get("machine", "")

    @property
    def overhead_ms(self) -> float:
        """One run of an empty model: the per-session-call cost every entry's measurement includes once."""
        return self.get("empty:")

    def get(self, key: str) -> float:
        if key not in self.entries:
            self.entries[key] = time_entry(key, runs=self.runs, warmup=self.warmup, threads=self.threads)
        return self.entries[key]

    def fill(self, keys, *, progress: bool = True) -> None:
        """Measure every missing key (with a progress bar), then save."""
        missing = sorted({k for k in keys if k not in self.entries})
        for k in progress_bar(missing, desc="latency table entries", unit="entry", disable=not progress or not missing):
            self.get(k)
        self.save()

    def remeasure(self, *, progress: bool = True) -> None:
        """Measure every entry again in one sitting and save (entries measured while the machine was busy
        drift; a table is most consistent measured at once, on an idle machine)."""
        keys = list(self.entries)
        self.entries = {}
        self.fill(keys, progress=progress)

    def save(self) -> None:
        if self.path is None:
            return
        from .bench import machine_description

        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"threads": self.threads, "runs": self.runs, "machine": machine_description(),
                                   "entries": dict(sorted(self.entries.items()))}, indent=1))
        os.replace(tmp, self.path)

    def predict(self, arch: EncoderArch) -> dict[str, float]:
        """Predicted ms per model ({view: ms, "fusion": ms, "total": ms})."""
        ov = self.overhead_ms
        out = {}
        for model, keys in arch_entries(arch).items():
            out[model] = sum(max(self.get(k) - ov, 0.0) for k in keys) + ov
        out["total"] = sum(out.values())
        return out


def measure_arch(arch: EncoderArch, *, runs: int = 60, warmup: int = 10, threads: int = 1) -> dict[str, float]:
    """Measured ms per model of the whole architecture (random weights, exported as the runtime loads it)."""
    import torch

    from .bench import bench_model_dir
    from .export import export_onnx
    from .model import build_encoder

    torch.manual_seed(0)
    model = build_encoder(arch).eval()
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "arch.json").write_text(arch.to_json())
        export_onnx(model, d)
        r = bench_model_dir(d, runs=runs, warmup=warmup, threads=threads)
    return dict(r["encode_ms_p50"])


BASELINES: tuple[str, ...] = ("EEM", "EEM-ch50", "EEM-res50", "EEM-flat")
"""The hand-designed encoders every latency-table check measures."""


def check_lut(n: int = 24, *, seed: int = 0, table: LatencyTable, progress: bool = True, command: str = "",
              include: tuple[str, ...] = BASELINES, space=None,
              runs: int = 60) -> dict:
    """Predicted vs measured latency for ``n`` random architectures of the search space (default:
    :class:`encoder.search_space.SearchSpace`) plus the registered ``include``."""
    from .arch import get_arch
    from .bench import machine_description
    from .search_space import SearchSpace, sample_choice, to_arch

    space = space or SearchSpace()
    rng = np.random.default_rng(seed)
    archs = [to_arch(space, sample_choice(space, rng, name=f"random-{i}")) for i in range(n)]
    archs += [get_arch(name) for name in include]
    table.fill([k for a in archs for keys in arch_entries(a).values() for k in keys] + ["empty:"], progress=progress)
    points = []
    for a in progress_bar(archs, desc="measure whole architectures", unit="arch", disable=not progress):
        pred = table.predict(a)
        meas = measure_arch(a, threads=table.threads, runs=runs, warmup=max(1, runs // 6))
        points.append({"arch": a.name, "predicted_ms": pred["total"], "measured_ms": meas["total"],
                       "predicted": pred, "measured": meas, "arch_json": a.to_dict()})
    p = np.array([x["predicted_ms"] for x in points])
    m = np.array([x["measured_ms"] for x in points])
    r = float(np.corrcoef(p, m)[0, 1])
    return {"n": len(points), "random": n, "baselines": list(include), "pearson_r": r,
            "mean_abs_pct_error": float(np.mean(np.abs(p - m) / m) * 100), "overhead_ms": table.overhead_ms,
            "entries": len(table.entries), "threads": table.threads, "seed": seed, "points": points,
            "machine": machine_description(), "python": platform.python_version(), "command": command}


def plot_lut(r: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    rand = [x for x in r["points"] if x["arch"].startswith("random-")]
    base = [x for x in r["points"] if not x["arch"].startswith("random-")]
    ax.scatter([x["measured_ms"] for x in rand], [x["predicted_ms"] for x in rand], s=18, label="random architectures")
    ax.scatter([x["measured_ms"] for x in base], [x["predicted_ms"] for x in base], s=30, marker="s", color="C3",
               label="EEM baselines")
    for i, x in enumerate(sorted(base, key=lambda x: x["measured_ms"])):  # alternate sides: baselines lie close
        ax.annotate(x["arch"], (x["measured_ms"], x["predicted_ms"]), fontsize=7,
                    xytext=(6, -10) if i % 2 else (-6, 6), ha="left" if i % 2 else "right", textcoords="offset points")
    hi = max(max(x["measured_ms"], x["predicted_ms"]) for x in r["points"]) * 1.05
    ax.plot([0, hi], [0, hi], color="gray", lw=0.8, ls=":")
    ax.set_xlim(0, hi)
    ax.set_ylim(0, hi)
    ax.set_xlabel("measured encoder latency (ms, 1 thread, 3 views + fusion)")
    ax.set_ylabel("LUT-predicted latency (ms)")
    ax.set_title(f"latency table: r = {r['pearson_r']:.3f}, mean |error| {r['mean_abs_pct_error']:.1f}%", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
