"""The sender pipeline: HMC source -> encoder (per-view encoders + fusion, LATEX-gated or not) -> coder -> PUB.

By default the code and gaze go out as coded frames (quantised, predicted from the receiver's decoded
frames, range-coded with the codec tables next to the encoder; ``docs/protocol.md`` 3.7): an intra frame
every ``codec.intra_interval`` frames, first, whenever a new receiver asks for the clock, and when a receiver
asks for one (an intra request on the clock channel: it lost a frame). With
``codec.latex_skip`` the frames the LATEX gate extrapolated are not sent at all. ``codec.coded = False``
(``--plain``) sends today's plain float frames.

One frame message per HMC frame (flagged KEYFRAME when the encoder ran, EXTRAPOLATED
when the LATEX gate skipped it and the code was extrapolated), stamped with its capture time, the time its
latent code was ready (stage mark ``enc``) and its send time, all on
:func:`transport.clock.now_ns`, and with the model id of the encoder's latent
space. A clock server answers the receiver's offset requests on a background
thread; its first answered request is how the sender knows a receiver is there
(ZeroMQ PUB cannot tell), so the report says how many frames went out while one was.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from avcore.errors import UsageError
from transport import (EXTRAPOLATED, KEYFRAME, ClockServer, CurveConfig, FrameMessage, FramePublisher, LatentStreamEncoder,
                       encode_frame, load_codec, now_ns)
from transport.latent_codec import CODEC_JSON

from .config import SenderConfig, check_clock_endpoint, clock_endpoint_for
from .models import ensure_encoder_dir, load_encoder, model_id
from .sources import open_source
from .telemetry import percentiles, write_json

log = logging.getLogger(__name__)

_DTYPES = {"<f2": np.float16, "<f4": np.float32}
REJOIN_INTRA_FRAMES = 4
"""Intra frames sent in a row when a receiver (re)joins (its subscription can lag its connection by a few frames)."""
MODEL_ID_INTERVAL_NS = 1_000_000_000
"""How often a frame declares the model id (the receiver keeps the last declared one per stream), so the id
costs a few bytes a second instead of a few bytes a frame."""


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
        raise UsageError("--secure sender needs the receiver's public key (--server-key)")
    return CurveConfig.client(cfg.secure.secret_key, cfg.secure.server_key)


def check_sender(cfg: SenderConfig) -> None:
    """What can be checked before anything starts: the encoder exists, was trained for the face it will see,
    has a LATEX early model when asked to gate, and a replayed recording opens. One clear error otherwise."""
    from encoder.runtime import read_encoder_identity

    d = ensure_encoder_dir(cfg.encoder_dir)
    trained_for = read_encoder_identity(d)
    face = cfg.source.identity if cfg.source.kind == "synthetic" else _recording_identity(cfg.source.path)
    if trained_for and face and face != trained_for:
        raise UsageError(f"the encoder at {d} was trained for {trained_for}, not {face}: its codes would draw the wrong "
                         f"face. Train one for {face} ('avcall train encoder --identity {face}') or pass --encoder DIR")
    if cfg.latex is not None:
        from encoder.latex import EARLY_FILE, LATEX_FILE

        missing = [f for f in (EARLY_FILE, LATEX_FILE) if not (d / f).is_file()]
        if missing:
            raise UsageError(f"--latex needs {' and '.join(missing)} in {d}; make them with "
                             f"'avcall train latex --model-dir {d}'")


def _recording_identity(path: str) -> str:
    """The identity a recording says it holds ("" when it does not say); a clear error if it cannot be read."""
    from capture.recording import HmcReader

    try:
        with HmcReader(path) as r:
            if len(r) == 0:
                raise UsageError(f"{path} holds no frames")
            return str((r.meta or {}).get("identity", ""))
    except UsageError:
        raise
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot replay {path}: {exc}") from None


def run_sender(cfg: SenderConfig, should_stop: Callable[[], bool] = lambda: False) -> dict:
    """Run until ``cfg.seconds`` pass, the source ends or ``should_stop()``; returns the sender report."""
    check_sender(cfg)
    wire_dtype = _DTYPES[cfg.latent_dtype]
    clock_ep = cfg.clock_endpoint or clock_endpoint_for(cfg.endpoint)
    check_clock_endpoint(cfg.endpoint, clock_ep)
    encoder = load_encoder(cfg.encoder_dir, threads=cfg.threads, latex=cfg.latex)
    model = model_id(encoder.identity, encoder.latent_dim)
    curve = _curve(cfg)
    coder = None
    if cfg.codec.coded and (Path(encoder.model_dir) / CODEC_JSON).is_file():
        coder = LatentStreamEncoder(load_codec(encoder.model_dir), cfg.stream_id, cfg.codec)
    elif cfg.codec.coded:  # a freshly trained encoder: plain frames until its codec is fitted
        msg = (f"sender {cfg.stream_id}: no codec tables in {encoder.model_dir} ({CODEC_JSON}); sending plain float16 "
               f"frames (~147 kbit/s). Fit them with 'avcall train codec --model-dir {encoder.model_dir}'")
        log.warning("%s", msg)
        print(msg, file=sys.stderr, flush=True)
    clients_seen = frame_peers = intra_repeats = intra_asked = 0
    pub = FramePublisher(cfg.endpoint, bind=cfg.bind, curve=curve)
    impair = _impairment(cfg, pub)
    transmit = impair.send if impair is not None else pub.send_encoded
    clock = None
    tap = None
    source = None
    encode_ms: list[float] = []
    compute_ms: list[float] = []
    frames = keyframes = 0
    frames_to_receiver = 0  # sent after a receiver first asked for the time
    t_start = time.monotonic()  # replaced by the first frame's time: ``seconds`` counts streaming, not start-up
    try:
        clock = ClockServer(clock_ep, bind=cfg.bind, curve=curve)
        clock.start()
        source = open_source(cfg.source)
        if cfg.tap_path:
            from capture.recording import HmcWriter

            tap = HmcWriter(cfg.tap_path, fps=source.fps or cfg.source.fps, size=(cfg.source.size, cfg.source.size),
                            clock=source.clock, meta={"stream_id": cfg.stream_id, "note": "frame index = sequence number"})
        status_due = 0.0
        log.info("sender %s: frames %s %s, clock %s, model %s", cfg.stream_id, "bound on" if cfg.bind else "connecting to",
                 pub.endpoint, clock.endpoint, model)
        print(f"sender {cfg.stream_id}: waiting for a receiver at {pub.endpoint} ...", file=sys.stderr, flush=True)
        encoder.encode(np.zeros((3, encoder.input_size, encoder.input_size), np.uint8))  # first ONNX runs allocate
        encoder.reset()
        receiver_seen = False
        model_due = 0
        t_start = time.monotonic()
        for cap in source:
            tc = cap.capture_ts_ns
            if frames == 0:
                t_start = time.monotonic()
            t0 = time.perf_counter()
            result = encoder.encode(fit_views(cap.views, encoder.input_size))
            t_enc = now_ns()
            compute_ms.append((time.perf_counter() - t0) * 1e3)
            keyframes += result.keyframe
            if coder is not None:
                peers = pub.peers
                if clock.clients_seen > clients_seen or peers > frame_peers:
                    # A receiver (re)joined: let it decode from the next frames. Its subscription may reach this
                    # PUB a little after its clock request or connection, and frames sent before are filtered
                    # out, so the intra frame is repeated over the next few frames.
                    intra_repeats = REJOIN_INTRA_FRAMES
                clients_seen, frame_peers = clock.clients_seen, peers
                if intra_repeats > 0:
                    intra_repeats -= 1
                    coder.request_intra()
                if clock.intra_requests > intra_asked:  # a receiver lost a frame and cannot decode the next ones
                    intra_asked = clock.intra_requests
                    coder.request_intra()
                data = coder.encode(frames, tc, now_ns(), result.z, result.gaze,
                                    flags=int(KEYFRAME if result.keyframe else EXTRAPOLATED), enc_ts_ns=t_enc,
                                    model=model if tc >= model_due else None,
                                    skip=cfg.codec.latex_skip and not result.keyframe)
                if coder.last_intra and tc >= model_due:  # the model id travels on intra frames, about once a second
                    model_due = tc + MODEL_ID_INTERVAL_NS
                if data is not None:
                    transmit(data)
            else:
                msg = FrameMessage(
                    stream_id=cfg.stream_id,
                    seq=frames,
                    capture_ts_ns=tc,
                    send_ts_ns=now_ns(),
                    z=np.asarray(result.z).astype(wire_dtype),
                    gaze=np.asarray(result.gaze, np.float32).reshape(2, 2).astype(wire_dtype),
                    flags=int(KEYFRAME if result.keyframe else EXTRAPOLATED),
                    stage_ts_ns={"enc": t_enc},
                    model=model if tc >= model_due else None,  # declared on the first frame, then once a second
                )
                if tc >= model_due:
                    model_due = tc + MODEL_ID_INTERVAL_NS
                transmit(encode_frame(msg))
            if not receiver_seen and clock.served > 0:
                receiver_seen = True
                print(f"sender {cfg.stream_id}: receiver connected", file=sys.stderr, flush=True)
            frames_to_receiver += receiver_seen
            encode_ms.append((t_enc - tc) / 1e6)
            if len(encode_ms) > 100_000:
                del encode_ms[:50_000], compute_ms[:50_000]
            if tap is not None:
                tap.append(cap.views, tc)
            frames += 1
            now = time.monotonic()
            if cfg.status_path and now >= status_due:
                status_due = now + 0.5
                write_json(cfg.status_path, _status(cfg, pub, clock, frames, source, keyframes, frames_to_receiver))
            if should_stop() or (cfg.seconds and now - t_start >= cfg.seconds):
                break
    finally:
        elapsed = time.monotonic() - t_start
        report = {
            "stream_id": cfg.stream_id,
            "model": model,
            "frames_sent": frames,
            "frames_to_receiver": frames_to_receiver,
            "receiver_seen": frames_to_receiver > 0,
            "refused": pub.last_refusal if frames_to_receiver == 0 else None,
            "elapsed_s": elapsed,
            "fps": frames / elapsed if elapsed > 0 else 0.0,
            "source_dropped": int(source.dropped) if source is not None else 0,
            "encode_ms": percentiles(encode_ms),
            "encoder_compute_ms": {**percentiles(compute_ms), "mean": float(np.mean(compute_ms)) if compute_ms else 0.0},
            "latex": cfg.latex.to_dict() if cfg.latex is not None else None,
            "keyframes": keyframes,
            "skip_ratio": 1.0 - keyframes / frames if frames else 0.0,
            "bytes_sent": pub.stats.bytes_sent,
            "kbit_per_s": pub.stats.bytes_sent * 8 / 1000 / elapsed if elapsed > 0 else 0.0,
            "events": dict(pub.stats.events),
            "clock_served": clock.served if clock is not None else 0,
            "codec": None if coder is None else {
                "codec_id": coder.tables.codec_id, "coder": cfg.codec.coder, "intra_interval": cfg.codec.intra_interval,
                "latex_skip": cfg.codec.latex_skip, "intra_frames": coder.intra_frames,
                "intra_requests": clock.intra_requests if clock is not None else 0,
                "predicted_frames": coder.predicted_frames, "skipped_frames": coder.skipped_frames,
                "escapes": coder.escapes},
        }
        if impair is not None:
            impair.close()  # before the socket it sends on; what is still in flight is lost
            report["impairment"] = impair.report()
        if cfg.status_path:
            write_json(cfg.status_path, {**_status(cfg, pub, clock, frames, source, keyframes, frames_to_receiver),
                                         "done": True})
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


def _impairment(cfg: SenderConfig, pub):
    """The in-process impairment of the transmit path (``--impair``), a delay line that alone sends on
    ``pub`` from then on; None without one."""
    from transport.impair import DelayLine, parse_impairment

    spec = parse_impairment(cfg.impair)
    if not spec.active:
        return None
    log.info("sender %s: impairing the transmit path: %s", cfg.stream_id, spec.describe())
    return DelayLine(spec, pub.send_encoded)


def _status(cfg, pub, clock, frames, source, keyframes=0, frames_to_receiver=0) -> dict:
    return {
        "pid": os.getpid(),
        "role": "sender",
        "torch_loaded": "torch" in sys.modules,  # the runtime path must never import torch
        "stream_id": cfg.stream_id,
        "endpoint": pub.endpoint,
        "clock_endpoint": clock.endpoint if clock is not None else "",
        "frames_sent": frames,
        "frames_to_receiver": frames_to_receiver,
        "skip_ratio": 1.0 - keyframes / frames if frames else 0.0,
        "source_dropped": int(source.dropped) if source is not None else 0,
        "events": dict(pub.stats.events),
    }
