"""The sender pipeline: HMC source -> encoder (per-view encoders + fusion) -> PUB.

One frame message per HMC frame (flagged KEYFRAME when the encoder ran, EXTRAPOLATED
when the LATEX gate skipped it and the code was extrapolated), stamped with its capture time, the time its
latent code was ready (stage mark ``enc``) and its send time, all on
:func:`transport.clock.now_ns`. A clock server answers the receiver's offset
requests on a background thread.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import Callable

import numpy as np

from transport import EXTRAPOLATED, KEYFRAME, ClockServer, CurveConfig, FrameMessage, FramePublisher, encode_frame, now_ns

from .config import SenderConfig, clock_endpoint_for
from .models import ensure_encoder_dir, load_encoder
from .sources import open_source
from .telemetry import percentiles, write_json

log = logging.getLogger(__name__)

_DTYPES = {"<f2": np.float16, "<f4": np.float32}


def fit_views(views: np.ndarray, size: int) -> np.ndarray:
    """(3, S, S) uint8 views resized to the encoder's input side ``size`` (unchanged when equal or 0)."""
    if not size or views.shape[-1] == size:
        return views
    import cv2

    return np.stack([cv2.resize(v, (size, size), interpolation=cv2.INTER_AREA) for v in views])


def _curve(cfg: SenderConfig) -> CurveConfig | None:
    if not cfg.secure.enabled:
        return None
    if not cfg.secure.server_key:
        raise ValueError("--secure sender needs the receiver's public key (--server-key)")
    return CurveConfig.client(cfg.secure.secret_key, cfg.secure.server_key)


def run_sender(cfg: SenderConfig, should_stop: Callable[[], bool] = lambda: False) -> dict:
    """Run until ``cfg.seconds`` pass, the source ends or ``should_stop()``; returns the sender report."""
    if cfg.latent_dtype not in _DTYPES:
        raise ValueError(f"latent_dtype must be one of {sorted(_DTYPES)}")
    wire_dtype = _DTYPES[cfg.latent_dtype]
    encoder = load_encoder(ensure_encoder_dir(cfg.encoder_dir), threads=cfg.threads)
    if cfg.latex:
        encoder = _latex_encoder(encoder, cfg)
    curve = _curve(cfg)
    pub = FramePublisher(cfg.endpoint, bind=cfg.bind, curve=curve)
    clock = None
    tap = None
    source = None
    encode_ms: list[float] = []
    compute_ms: list[float] = []
    frames = keyframes = 0
    t_start = time.monotonic()
    try:
        clock = ClockServer(cfg.clock_endpoint or clock_endpoint_for(cfg.endpoint), bind=cfg.bind, curve=curve)
        clock.start()
        source = open_source(cfg.source)
        if cfg.tap_path:
            from capture.recording import HmcWriter

            tap = HmcWriter(cfg.tap_path, fps=cfg.source.fps, size=(cfg.source.size, cfg.source.size),
                            meta={"stream_id": cfg.stream_id, "note": "frame index = sequence number"})
        status_due = 0.0
        log.info("sender %s: %s %s, clock %s", cfg.stream_id, "bound" if cfg.bind else "connected to", pub.endpoint,
                 clock.endpoint)
        input_size = int(getattr(encoder, "input_size", 0) or 0)
        side = input_size or cfg.source.size
        encoder.encode(np.zeros((3, side, side), np.uint8))  # first ONNX runs allocate: not on a real frame
        if cfg.latex:
            encoder.reset()
        for cap in source:
            tc = cap.capture_ts_ns
            t0 = time.perf_counter()
            result = encoder.encode(fit_views(cap.views, input_size))
            t_enc = now_ns()
            compute_ms.append((time.perf_counter() - t0) * 1e3)
            key = bool(getattr(result, "keyframe", True))
            keyframes += key
            msg = FrameMessage(
                stream_id=cfg.stream_id,
                seq=frames,
                capture_ts_ns=tc,
                send_ts_ns=now_ns(),
                z=np.asarray(result.z).astype(wire_dtype),
                gaze=np.asarray(result.gaze, np.float32).reshape(2, 2).astype(wire_dtype),
                flags=int(KEYFRAME if key else EXTRAPOLATED),
                stage_ts_ns={"enc": t_enc},
            )
            pub.send_encoded(encode_frame(msg))
            encode_ms.append((t_enc - tc) / 1e6)
            if len(encode_ms) > 100_000:
                del encode_ms[:50_000], compute_ms[:50_000]
            if tap is not None:
                tap.append(cap.views, tc)
            frames += 1
            now = time.monotonic()
            if cfg.status_path and now >= status_due:
                status_due = now + 0.5
                write_json(cfg.status_path, _status(cfg, pub, clock, frames, source, keyframes))
            if should_stop() or (cfg.seconds and now - t_start >= cfg.seconds):
                break
    finally:
        elapsed = time.monotonic() - t_start
        report = {
            "stream_id": cfg.stream_id,
            "frames_sent": frames,
            "elapsed_s": elapsed,
            "fps": frames / elapsed if elapsed > 0 else 0.0,
            "source_dropped": int(getattr(source, "dropped", 0)) if source is not None else 0,
            "encode_ms": percentiles(encode_ms),
            "encoder_compute_ms": {**percentiles(compute_ms), "mean": float(np.mean(compute_ms)) if compute_ms else 0.0},
            "latex": bool(cfg.latex),
            "keyframes": keyframes,
            "skip_ratio": 1.0 - keyframes / frames if frames else 0.0,
            "bytes_sent": pub.stats.bytes_sent,
            "kbit_per_s": pub.stats.bytes_sent * 8 / 1000 / elapsed if elapsed > 0 else 0.0,
            "events": dict(pub.stats.events),
            "clock_served": clock.served if clock is not None else 0,
        }
        if cfg.status_path:
            write_json(cfg.status_path, {**_status(cfg, pub, clock, frames, source, keyframes), "done": True})
        if tap is not None:
            tap.close()
        if source is not None:
            source.close()
        if clock is not None:
            clock.close()
        pub.close()
    if cfg.report_path:
        write_json(cfg.report_path, report)
    return report


def _latex_encoder(encoder, cfg: SenderConfig):
    """Wrap ``encoder`` in the LATEX gate of its model directory (a clear error when it has none)."""
    from encoder.latex import LatexConfig, LatexEncoder

    if not hasattr(encoder, "encode_view"):
        raise ValueError("--latex needs a per-view encoder directory (arch.json, early.onnx, latex.json)")
    lcfg = LatexConfig(history=cfg.latex_history, max_skips=cfg.latex_max_skips,
                       threshold=cfg.latex_threshold if cfg.latex_threshold >= 0 else None,
                       skip_ratio=None if cfg.latex_threshold >= 0 else cfg.latex_skip_ratio)
    gated = LatexEncoder(encoder, lcfg, threads=cfg.threads)
    log.info("LATEX: T=%d, max %d skips in a row, threshold %.4f", lcfg.history, lcfg.max_skips, gated.threshold)
    return gated


def _status(cfg, pub, clock, frames, source, keyframes=0) -> dict:
    return {
        "pid": os.getpid(),
        "role": "sender",
        "torch_loaded": "torch" in sys.modules,  # the runtime path must never import torch
        "stream_id": cfg.stream_id,
        "endpoint": pub.endpoint,
        "clock_endpoint": clock.endpoint if clock is not None else "",
        "frames_sent": frames,
        "skip_ratio": 1.0 - keyframes / frames if frames else 0.0,
        "source_dropped": int(getattr(source, "dropped", 0)),
        "events": dict(pub.stats.events),
    }
