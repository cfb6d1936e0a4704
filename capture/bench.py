"""Capture-studio throughput: HMC frames (three views + ground truth) and dome colour renders per second."""
from __future__ import annotations

import time

import numpy as np

from .performance import generate_performance
from .studio import Studio


def _percentiles(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)), "p99": float(np.percentile(a, 99))}


def bench_capture(identity: str = "S1", frames: int = 300, dome_frames: int = 60, warmup: int = 20) -> dict:
    """Time HMC frames (with ground truth, 192x192 x3) and 512x512 colour renders over a performance."""
    for name, n in (("frames", frames), ("dome_frames", dome_frames)):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"{name} must be a positive integer, got {n!r}")
    studio = Studio(identity, dome_size=512)
    perf = generate_performance(1, (frames + warmup) / 90.0)
    n = len(perf)

    def hmc(i):
        k = i % n
        studio.hmc_frame(perf.expression[k], perf.gaze[k], t=float(perf.t[k]), frame_index=i)

    def dome(i):
        k = i % n
        studio.render_view(perf.expression[k], perf.gaze[k], "front")

    out = {"identity": identity, "hmc_size": studio.rig_config.size, "dome_size": 512, "look": studio.look.key()}
    for name, fn, count in (("hmc", hmc, frames), ("dome", dome, dome_frames)):
        for i in range(warmup):
            fn(i)
        times = []
        t_all = time.perf_counter()
        for i in range(count):
            t = time.perf_counter()
            fn(warmup + i)
            times.append((time.perf_counter() - t) * 1000)
        out[f"{name}_fps"] = count / (time.perf_counter() - t_all)
        out[f"{name}_ms"] = _percentiles(times)
        out[f"{name}_frames"] = count
    studio.release()
    return out
