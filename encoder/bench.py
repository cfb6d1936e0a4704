"""Latency of the exported encoder models in onnxruntime on this CPU (torch-free once exported).

Each model (three views + fusion) runs in its own session with one intra-op
thread, is warmed up, then timed over many runs on real-looking input; the
median (p50) is the figure quoted in tables.
"""
from __future__ import annotations

import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from .runtime import VIEW_NAMES, HmcEncoder


def _percentiles(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)), "p99": float(np.percentile(a, 99)),
            "mean": float(a.mean())}


def machine_description() -> str:
    import os

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime

    return f"{cpu}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}, onnxruntime {onnxruntime.__version__}"


def bench_model_dir(model_dir: str | Path, *, runs: int = 200, warmup: int = 20, threads: int = 1, seed: int = 0) -> dict:
    """Time every model of an exported encoder. Returns per-stage percentiles (ms) and their sum."""
    enc = HmcEncoder(model_dir, threads=threads)
    rng = np.random.default_rng(seed)
    S = enc.input_size
    views = rng.integers(0, 120, (3, S, S), dtype=np.uint8)
    feats = [enc.encode_view(v, views[i])["feature"] for i, v in enumerate(VIEW_NAMES)]
    features = np.concatenate(feats).astype(np.float32)
    stages = {}
    for i, v in enumerate(VIEW_NAMES):
        for _ in range(warmup):
            enc.encode_view(v, views[i])
        ms = []
        for _ in range(runs):
            t0 = time.perf_counter()
            enc.encode_view(v, views[i])
            ms.append((time.perf_counter() - t0) * 1e3)
        stages[v] = _percentiles(ms)
    for _ in range(warmup):
        enc.fuse(features)
    ms = []
    for _ in range(runs):
        t0 = time.perf_counter()
        enc.fuse(features)
        ms.append((time.perf_counter() - t0) * 1e3)
    stages["fusion"] = _percentiles(ms)
    total = sum(s["p50"] for s in stages.values())
    return {
        "arch": enc.name,
        "model_dir": str(model_dir),
        "threads": threads,
        "runs": runs,
        "warmup": warmup,
        "encode_ms_p50": {k: s["p50"] for k, s in stages.items()} | {"total": total},
        "stages_ms": stages,
        "machine": machine_description(),
    }


def bench_arch(arch_name: str, *, runs: int = 200, warmup: int = 20, threads: int = 1) -> dict:
    """Latency of a registered architecture with random weights (latency does not depend on them)."""
    import torch

    from .export import export_onnx
    from .model import build_encoder

    torch.manual_seed(0)
    model = build_encoder(arch_name)
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "arch.json").write_text(model.arch.to_json())
        export_onnx(model, d)
        return bench_model_dir(d, runs=runs, warmup=warmup, threads=threads)
