"""The receiver pipeline: SUB -> validate -> decode -> rasterize -> present.

The main loop takes the newest valid frame off the socket (every queued
message is validated and counted; older valid ones are dropped as stale), so a
receiver that renders slower than the sender sends shows the latest face and
never builds a backlog. The avatar is decoded and rendered for the viewer's
direction of that moment (a scripted orbit by default), then handed to the
presenters. Every presented frame's stage times go into the telemetry.

That is ``render = "raster"``: one frame per arriving code. The display-clock modes (``neural``, ``warp``,
``warp2x``) take codes off the socket the same way (newest wins; through the jitter buffer when it is on) but
only hand the newest one to a :mod:`renderer.scheduler` scheduler, which renders a frame on every display tick
for the view of that tick (G on a new code, the warp network from G's cache otherwise) and presents it. The loop
then waits on the socket, the scheduler's worker pipes and the next tick together.
"""
from __future__ import annotations

import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from avcore.errors import UsageError
from transport import ClockClient, CurveConfig, FrameSubscriber, WireLimits, now_ns
from transport.clock import clock_request_gap_s
from transport.sockets import UNNAMED_MODEL

from renderer.scheduler import DISPLAY_MODES, Code, DisplayFrame, Scheduler, open_scheduler

from .config import ReceiverConfig, ViewerConfig, check_clock_endpoint, clock_endpoint_for
from .models import codecs_for, ensure_avatar_dir, ensure_render_models, load_avatar, model_id
from .playout import PlayoutBuffer, PlayoutFrame, predictor_from_codecs
from .presenters import PngPresenter, Presenter, VideoPresenter, WindowPresenter
from .telemetry import (APPROXIMATE, CONCEALED, FRAME_COLUMNS, GENERATED, NEW_CODE, PARALLEL, WARPED, FrameRecord,
                        Telemetry, format_summary, latency_histogram, write_json)

log = logging.getLogger(__name__)


def viewer_direction(cfg: ViewerConfig, t_s: float) -> np.ndarray:
    """Unit vector head -> viewer at ``t_s`` seconds into the call (yaw orbit, +z = in front of the face)."""
    yaw = math.radians(cfg.yaw_deg) * math.sin(2 * math.pi * t_s / cfg.period_s) if cfg.period_s > 0 else 0.0
    pitch = math.radians(cfg.pitch_deg)
    return np.array([math.sin(yaw) * math.cos(pitch), math.sin(pitch), math.cos(yaw) * math.cos(pitch)], np.float32)


def _curve(cfg: ReceiverConfig) -> CurveConfig | None:
    if not cfg.secure.enabled:
        return None
    if not cfg.secure.allowed_dir:
        raise ValueError("--secure receiver needs a directory of allowed sender keys (--allow DIR)")
    return CurveConfig.server(cfg.secure.secret_key, cfg.secure.allowed_dir)


BRIDGE_FRAMES = 3
"""With concealment on, a coded frame is decoded across up to this many lost reference frames (flagged approximate,
an intra frame requested) rather than dropped until the next intra frame."""
INTRA_REQUEST_GAP_S = 0.1
"""A receiver asks for an intra frame at most this often (``docs/protocol.md`` 8.2)."""


class ClockThread:
    """Runs the clock exchange on its own thread, which alone uses the DEALER socket.

    Replies are stamped (``t3``) as soon as they arrive instead of when the
    render loop gets around to them; a late ``t3`` inflates the sample's delay
    and makes the offset asymmetric. Starts with a quick burst so the offset is
    good from the first frames; the schedule is the protocol's
    (:func:`transport.clock.clock_request_gap_s`, documented in ``docs/protocol.md``).
    """

    def __init__(self, client: ClockClient) -> None:
        import threading

        self.client = client
        self.offset_ns: int | None = None
        """Sender clock - receiver clock from the best recent sample (None before the first)."""
        self.uncertainty_ns: int | None = None
        self.samples = 0
        self.intra_requests = 0
        """Intra requests sent (``docs/protocol.md`` 8.2)."""
        self._intra = threading.Event()
        self._last_intra = -1e9
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="avcall-clock-client", daemon=True)
        self._thread.start()

    def request_intra(self) -> bool:
        """Ask the sender for an intra frame on the next clock request, sent at once; at most one every
        :data:`INTRA_REQUEST_GAP_S` (an intra frame takes a round trip to come). False if rate-limited."""
        t = time.monotonic()
        if t - self._last_intra < INTRA_REQUEST_GAP_S:
            return False
        self._last_intra = t
        self._intra.set()
        return True

    def _run(self) -> None:
        import zmq

        try:
            sent = 0
            while not self._stop.is_set():
                intra = self._intra.is_set()
                self._intra.clear()
                if self.client.request(intra=intra):
                    sent += 1
                    self.intra_requests += intra
                wait = clock_request_gap_s(sent)
                deadline = time.monotonic() + wait
                while not self._stop.is_set() and not self._intra.is_set():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    # short slices: an intra request goes out within ~10 ms of being asked for
                    if self.client.poll(timeout_ms=max(1, min(10, int(remaining * 1000)))):
                        est = self.client.estimator  # read here only: the deque is not shared across threads
                        self.offset_ns, self.uncertainty_ns, self.samples = est.offset_ns, est.uncertainty_ns, len(est)
        except zmq.ZMQError as exc:  # pragma: no cover - teardown races
            log.debug("clock thread stopping: %s", exc)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.client.close()


def display_engine_module(cfg: ReceiverConfig):
    """The module with the display engine (``EngineSpec``, ``open_engine``) of ``cfg.render``, after checking that
    the avatar directory has the files that mode needs; one clear line if not."""
    import importlib

    avatar_dir = ensure_avatar_dir(cfg.avatar_dir)
    ensure_render_models(avatar_dir, cfg.render)
    try:
        module = importlib.import_module(cfg.engine_module)
    except ImportError as exc:
        raise UsageError(f"--render {cfg.render} needs the display engine module {cfg.engine_module}, which does not "
                         f"import here ({exc})") from None
    if not all(hasattr(module, name) for name in ("EngineSpec", "open_engine")):
        raise UsageError(f"{cfg.engine_module} has no EngineSpec/open_engine: not a display engine module")
    return module


@dataclass
class CodeOrigin:
    """Where a code handed to the display scheduler came from: its message's times on the receiver clock."""

    stream_id: str
    capture: int
    enc: int
    send: int
    recv: int
    flags: int


def _presenters(cfg: ReceiverConfig) -> list[Presenter]:
    out: list[Presenter] = []
    if cfg.video_path:
        out.append(VideoPresenter(cfg.video_path, cfg.video_fps))
    if cfg.png_dir:
        out.append(PngPresenter(cfg.png_dir))
    if cfg.window:
        out.append(WindowPresenter(f"avcall {cfg.stream_id or 'receiver'}"))
    return out


class Receiver:
    """Owns the sockets, the avatar and the presenters of one receiver process."""

    def __init__(self, cfg: ReceiverConfig) -> None:
        self.cfg = cfg
        self.t0_s = time.monotonic()
        """Start of the call on the monotonic clock: the viewer's scripted orbit is timed from here."""
        self.scheduler: Scheduler | None = None
        """The display scheduler (display-clock modes only)."""
        self.engine = None
        """The display engine the sequential modes drive in this process (``warp2x``: each worker has its own)."""
        engine_module = display_engine_module(cfg) if cfg.render in DISPLAY_MODES else None  # before anything loads
        self.avatar = load_avatar(cfg.avatar_dir, size=cfg.size, threads=cfg.threads)
        if engine_module is None:
            self.avatar.warm_up()  # GL context, shaders, ONNX first run: before any frame is waiting
        latent_dim = cfg.latent_dim or self.avatar.latent_dim
        if latent_dim != self.avatar.latent_dim:
            self.avatar.close()
            raise UsageError(f"latent_dim {latent_dim} does not match the decoder's {self.avatar.latent_dim}")
        self.model = model_id(self.avatar.decoder.identity, latent_dim)
        """The latent space this receiver decodes; frames of another model are refused."""
        self._mismatch: str | None = None
        """The first refused model, as reported (later frames of it may not repeat their model id)."""
        curve = _curve(cfg)
        self.clock: ClockThread | None = None
        self.clock_client: ClockClient | None = None
        self.clock_endpoint = ""
        self.presenters: list[Presenter] = []
        try:
            self.sub = FrameSubscriber(cfg.endpoint, bind=cfg.bind, curve=curve,
                                       limits=WireLimits(latent_dim=latent_dim, **self.avatar.code_limits()),
                                       stream_id=cfg.stream_id or None, expected_model=self.model,
                                       codecs=codecs_for(self.model, cfg.codec_dir),
                                       bridge=BRIDGE_FRAMES if cfg.playout.conceal else 0)
        except BaseException:
            self.avatar.close()
            raise
        try:
            # A CURVE server owns a private context per socket (its ZAP allowlist is per context).
            clock_ep = cfg.clock_endpoint or clock_endpoint_for(cfg.endpoint)
            check_clock_endpoint(cfg.endpoint, clock_ep)
            self.clock_client = ClockClient(clock_ep, bind=cfg.bind, curve=curve)
            self.clock_endpoint = self.clock_client.endpoint
            self.clock = ClockThread(self.clock_client)
            self.presenters = _presenters(cfg)
            if engine_module is not None:
                self._open_display(engine_module)
        except BaseException:
            self.close()
            raise
        self.telemetry = Telemetry()
        self.playout = PlayoutBuffer(cfg.playout, predictor_from_codecs(self.sub.codecs)) if cfg.playout.enabled else None
        """Jitter buffer + concealment (None: show the newest frame that arrived)."""
        self._playout_offset: int | None = None
        self._stream = cfg.stream_id or ""  # stream id of the last frame into the buffer (rows of concealed frames)
        self.presented = 0
        self.codes_presented = 0
        """Display-clock modes: codes shown (the first display frame of each code)."""
        self.first_frame_s: float | None = None
        self.last_frame_s: float | None = None

    def _open_display(self, engine_module) -> None:
        """Open the display engine (in this process, or in ``warp2x``'s two workers) and its scheduler."""
        import zmq

        cfg = self.cfg
        spec = engine_module.EngineSpec(avatar_dir=str(ensure_avatar_dir(cfg.avatar_dir)), size=cfg.size,
                                        threads=1 if cfg.render == "warp2x" else cfg.threads)
        self.scheduler, self.engine = open_scheduler(
            cfg.render, spec, cfg.display_hz, lambda t_s: viewer_direction(cfg.viewer, t_s - self.t0_s),
            self._present_display, opener=f"{cfg.engine_module}:open_engine")
        self._poller = zmq.Poller()
        self._poller.register(self.sub.socket, zmq.POLLIN)
        for handle in self.scheduler.wait_handles():
            self._poller.register(handle, zmq.POLLIN)

    # ------------------------------------------------------------------ loop

    def step(self, t_call_s: float, timeout_ms: int = 20) -> bool:
        """Wait up to ``timeout_ms`` for a frame; decode, render and present the newest (with the jitter buffer:
        the frame or concealment due now). True if one was presented."""
        self.sub.set_clock_offset(self.clock.offset_ns)  # timestamps are range-checked once the offset is known
        if self.scheduler is not None:
            return self._step_display(timeout_ms)
        if self.playout is not None:
            return self._step_playout(t_call_s, timeout_ms)
        frame = self.sub.recv_latest(timeout_ms=timeout_ms)
        self._report_model_mismatch()
        self._ask_for_intra()
        if frame is None:
            return False
        t_recv = now_ns()
        offset = self.clock.offset_ns or 0  # sender clock - receiver clock (0 until the first exchange)
        view = viewer_direction(self.cfg.viewer, t_call_s)
        vertices, texture = self.avatar.decode(frame.z.astype(np.float32), view)
        t_dec = now_ns()
        image = self.avatar.render(vertices, texture, frame.gaze.astype(np.float32), view)
        t_ren = now_ns()
        for p in self.presenters:
            p.present(image, t_ren, frame.seq)
        t_pres = now_ns()
        enc = frame.stage_ts_ns.get("enc", frame.capture_ts_ns)
        self.telemetry.add(FrameRecord(
            stream_id=frame.stream_id, seq=frame.seq, capture=frame.capture_ts_ns - offset, enc=enc - offset,
            send=frame.send_ts_ns - offset, recv=t_recv, dec=t_dec, ren=t_ren, pres=t_pres,
            flags=frame.flags | (APPROXIMATE if frame.approximate else 0)))
        self.presented += 1
        return True

    def _ask_for_intra(self) -> None:
        """A coded frame could not be decoded (its reference was lost): ask the sender for an intra frame."""
        if self.sub.needs_intra:
            self.sub.needs_intra = False
            self.clock.request_intra()

    def _step_playout(self, t_call_s: float, timeout_ms: int) -> bool:
        """Frames into the jitter buffer as they arrive; present what is due (a frame, or its concealment)."""
        pb = self.playout
        offset = self.clock.offset_ns or 0  # sender clock - receiver clock (0 until the first exchange)
        if self._playout_offset is not None and abs(offset - self._playout_offset) > 1_000_000:
            pb.rebase()  # transit times measured on the old offset are on another scale
        self._playout_offset = offset
        # a coded frame may wait for a reference that arrives out of order until its own slot: that costs nothing
        self.sub.set_reorder_deadline(lambda tc, _o=offset: pb.slot_ns(tc - _o))
        due = pb.next_due_ns()
        wait_ms = timeout_ms if due is None else max(0, min(timeout_ms, (due - now_ns() + 999_999) // 1_000_000))
        frames = self.sub.recv_all(timeout_ms=wait_ms)
        self._report_model_mismatch()
        self._ask_for_intra()
        t_arr = now_ns()
        for f in frames:
            pb.push(f.seq, f.capture_ts_ns - offset, t_arr, f.z, f.gaze, frame=f)
            self._stream = f.stream_id
        out = pb.pop(now_ns())
        if out is None:
            return False
        self._present(out, t_call_s, offset)
        return True

    def _present(self, out: PlayoutFrame, t_call_s: float, offset: int) -> None:
        """Decode, render and present one jitter-buffer output; its telemetry row (flagged CONCEALED if so)."""
        t_play = now_ns()
        view = viewer_direction(self.cfg.viewer, t_call_s)
        vertices, texture = self.avatar.decode(out.z, view)
        t_dec = now_ns()
        image = self.avatar.render(vertices, texture, out.gaze, view)
        t_ren = now_ns()
        for p in self.presenters:
            p.present(image, t_ren, out.seq)
        t_pres = now_ns()
        f = out.frame
        if f is None:  # concealed: no message, its capture time is the slot's estimate
            c = out.capture_ns
            rec = FrameRecord(stream_id=self._stream, seq=out.seq, capture=c, enc=c, send=c, recv=c,
                              dec=t_dec, ren=t_ren, pres=t_pres, flags=CONCEALED, play=t_play)
        else:
            enc = f.stage_ts_ns.get("enc", f.capture_ts_ns)
            rec = FrameRecord(stream_id=f.stream_id, seq=f.seq, capture=out.capture_ns, enc=enc - offset,
                              send=f.send_ts_ns - offset, recv=out.arrival_ns, dec=t_dec, ren=t_ren, pres=t_pres,
                              flags=f.flags | (APPROXIMATE if f.approximate else 0), play=t_play)
        self.telemetry.add(rec)
        self.presented += 1

    # ------------------------------------------------------------ display clock

    def _step_display(self, timeout_ms: int) -> bool:
        """Wait for a frame, a worker's result, the next display tick or jitter-buffer slot (whichever comes first);
        hand the newest code to the scheduler; let it render and present what is due. True if a display frame showed
        a new code (a raster frame always does)."""
        sched, pb = self.scheduler, self.playout
        offset = self.clock.offset_ns or 0  # sender clock - receiver clock (0 until the first exchange)
        if pb is not None:
            if self._playout_offset is not None and abs(offset - self._playout_offset) > 1_000_000:
                pb.rebase()
            self._playout_offset = offset
            self.sub.set_reorder_deadline(lambda tc, _o=offset: pb.slot_ns(tc - _o))
        dues = [d for d in (sched.next_due_ns(), pb.next_due_ns() if pb is not None else None,
                            self.sub.next_held_ns()) if d is not None]
        wait_ms = timeout_ms if not dues else max(0, min(timeout_ms, (min(dues) - now_ns() + 999_999) // 1_000_000))
        if wait_ms > 0:
            self._poller.poll(wait_ms)
        if pb is None:
            frame = self.sub.recv_latest(timeout_ms=0)
            t_recv = now_ns()
            if frame is not None:
                self._submit(frame, frame.seq, frame.capture_ts_ns - offset, t_recv, offset, frame.z, frame.gaze)
        else:
            frames = self.sub.recv_all(timeout_ms=0)
            t_arr = now_ns()
            for f in frames:
                pb.push(f.seq, f.capture_ts_ns - offset, t_arr, f.z, f.gaze, frame=f)
                self._stream = f.stream_id
            out = pb.pop(now_ns())
            if out is not None:
                self._submit(out.frame, out.seq, out.capture_ns, out.arrival_ns, offset, out.z, out.gaze)
        self._report_model_mismatch()
        self._ask_for_intra()
        shown = sched.poll()
        self.telemetry.missed_ticks = sched.missed
        for f in shown:
            self.telemetry.add(self._display_record(f))
        self.presented += len(shown)
        new = sum(f.new_code for f in shown)
        self.codes_presented += new
        return new > 0

    def _submit(self, f, seq: int, capture: int, recv: int, offset: int, z: np.ndarray, gaze: np.ndarray) -> None:
        """The newest code (a message ``f``, or a concealed one when ``f`` is None) to the display scheduler."""
        if f is None:
            origin = CodeOrigin(self._stream, capture, capture, capture, capture, CONCEALED)
        else:
            enc = f.stage_ts_ns.get("enc", f.capture_ts_ns)
            origin = CodeOrigin(f.stream_id, capture, enc - offset, f.send_ts_ns - offset, recv,
                                f.flags | (APPROXIMATE if f.approximate else 0))
        self.scheduler.submit(Code(np.asarray(z, np.float32).reshape(-1), np.asarray(gaze, np.float32).reshape(2, 2),
                                   seq=int(seq), capture_ns=capture, meta=origin))

    def _present_display(self, image: np.ndarray, frame: DisplayFrame) -> None:
        t = now_ns()
        for p in self.presenters:
            p.present(image, t, frame.code.seq)

    @staticmethod
    def _display_record(f: DisplayFrame) -> FrameRecord:
        """A display frame's telemetry row (``runtime.telemetry``: ``play`` = ``dec`` = its engine call's start)."""
        o: CodeOrigin = f.code.meta
        flags = (o.flags | (GENERATED if f.generated else WARPED) | (NEW_CODE if f.new_code else 0)
                 | (PARALLEL if f.parallel else 0))
        return FrameRecord(stream_id=o.stream_id, seq=f.code.seq, capture=o.capture, enc=o.enc, send=o.send,
                           recv=o.recv, dec=f.start_ns, ren=f.end_ns, pres=f.pres_ns, flags=flags, play=f.start_ns,
                           tick=f.tick, view=f.view_ns)

    def _report_model_mismatch(self) -> None:
        """Say once, in words, that a sender streams codes of another model (they are refused, counted); once
        more if the first refused frames were predicted ones, which do not name their model, and an intra frame
        names it later (the first intra frame can be lost while a subscription starts)."""
        other = self.sub.stats.last_model_mismatch
        unnamed = lambda m: m is not None and m.startswith(UNNAMED_MODEL + " ")  # noqa: E731
        if other is not None and (self._mismatch is None or (unnamed(self._mismatch) and not unnamed(other))):
            self._mismatch = other
            msg = (f"receiver: refusing frames of model {other}: this receiver decodes {self.model} "
                   f"(avatar {self.avatar.model_dir}); start it with that sender's avatar (--avatar DIR)")
            log.warning("%s", msg)
            print(msg, file=sys.stderr, flush=True)

    def window_closed(self) -> bool:
        return any(getattr(p, "closed", False) for p in self.presenters)

    def status(self) -> dict:
        return {
            "pid": os.getpid(),
            "role": "receiver",
            "torch_loaded": "torch" in sys.modules,  # the runtime path must never import torch
            "endpoint": self.sub.endpoint,
            "clock_endpoint": self.clock_endpoint,
            "presented": self.presented,
            "clock_offset_ns": self.clock.offset_ns if self.clock is not None else None,
            "transport": self.sub.stats.snapshot(),
            **({"render": self.cfg.render, "codes_presented": self.codes_presented,
                "missed_ticks": self.scheduler.missed} if self.scheduler is not None else {}),
        }

    def report(self) -> dict:
        """The receiver's telemetry: per-stage percentiles, drops by reason, bandwidth per stream."""
        s = self.telemetry.summary()
        tstats = self.sub.stats.snapshot()
        streams = {}
        for sid, st in tstats["streams"].items():
            recs = [r for r in self.telemetry.records if r.stream_id == sid]
            span = (recs[-1].recv - recs[0].recv) / 1e9 if len(recs) > 1 else 0.0
            total = self.sub.stats.stream_bytes(sid)  # bytes of this stream's valid frames since the start
            streams[sid] = {
                "frames_received": st["frames"],
                "bytes": total,
                "kbit_per_s": total * 8 / 1000 / span if span else None,
                "kbit_per_s_window": st["kbit_per_s"],
            }
        presenter_drops = sum(p.dropped for p in self.presenters)
        pc = self.playout.counts if self.playout is not None else {}
        stale = tstats["dropped_stale"] + pc.get("stale", 0)  # superseded on the socket, or due while rendering
        refused = None
        if not self.presented:
            refused = (f"frames of another model ({self._mismatch}) were refused" if self._mismatch
                       else self.sub.last_refusal)
        return {
            "presented": self.presented,
            "model": self.model,
            "refused": refused,
            "latency": s,
            "dropped": {
                "stale": stale,
                "lost_in_network": tstats["lost"],
                "late": pc.get("late", 0),
                "bad_messages": tstats["bad"],
                "presenter": presenter_drops,
            },
            "dropped_total": stale + tstats["lost"] + presenter_drops,
            "playout": self.playout.report() if self.playout is not None else {"enabled": False},
            "streams": streams,
            "transport": tstats,
            "clock": {
                "offset_ns": self.clock.offset_ns if self.clock else None,
                "uncertainty_ns": self.clock.uncertainty_ns if self.clock else None,
                "samples": self.clock.samples if self.clock else 0,
                "intra_requests": self.clock.intra_requests if self.clock else 0,
            },
            "frames": [r.row() for r in self.telemetry.records],
            "frames_columns": list(FRAME_COLUMNS),
            **({"render": self.cfg.render, "display": self.scheduler.stats()} if self.scheduler is not None else {}),
        }

    def close(self) -> None:
        for p in self.presenters:
            p.close()
        try:
            if self.scheduler is not None:
                self.scheduler.close()  # workers stopped (terminated if they do not stop in time)
        finally:
            if self.engine is not None:
                self.engine.close()
                self.engine = None
        if self.clock is not None:
            self.clock.close()
        elif self.clock_client is not None:
            self.clock_client.close()
        self.sub.close()
        self.avatar.close()


def run_receiver(cfg: ReceiverConfig, should_stop: Callable[[], bool] = lambda: False) -> dict:
    """Run until ``cfg.seconds``, idle timeout, window closed or ``should_stop()``; writes and returns the report."""
    rx = Receiver(cfg)
    shown = "" if rx.scheduler is None else f", render {cfg.render} at {cfg.display_hz:g} Hz"
    print(f"receiver: frames {'bound on' if cfg.bind else 'connecting to'} {rx.sub.endpoint}, clock "
          f"{rx.clock_endpoint}, model {rx.model}{shown}; waiting for a sender ...", file=sys.stderr, flush=True)
    t0 = rx.t0_s = time.monotonic()
    status_due = 0.0
    try:
        while not should_stop():
            now = time.monotonic()
            if rx.step(now - t0):
                rx.last_frame_s = now
                if rx.first_frame_s is None:
                    rx.first_frame_s = now
                    print("receiver: stream started", file=sys.stderr, flush=True)
            if cfg.status_path and now >= status_due:
                status_due = now + 0.25
                write_json(cfg.status_path, rx.status())
            if cfg.seconds and now - t0 >= cfg.seconds:
                break
            if cfg.stop_after_idle_s and rx.last_frame_s is not None and now - rx.last_frame_s > cfg.stop_after_idle_s:
                break
            if rx.window_closed():
                break
    finally:
        for p in rx.presenters:
            p.close()
        report = rx.report()
        for p in rx.presenters:  # a file is reported only when it was really written
            if isinstance(p, VideoPresenter):
                r = p.result()
                if r["ok"]:
                    report["video"] = {"path": r["path"], "fps": p.fps, "frame_seqs": p.frame_seqs,
                                       "frames": r["frames_written"], "codec": r["codec"]}
                elif r["error"]:
                    report["video_error"] = r["error"]
            elif isinstance(p, PngPresenter):
                r = p.result()
                if r["ok"]:
                    report["png"] = {"path": r["path"], "frames": r["frames_written"]}
                elif r["error"]:
                    report["png_error"] = r["error"]
        if cfg.status_path:
            write_json(cfg.status_path, {**rx.status(), "done": True})
        rx.presenters = []
        rx.close()
    if cfg.report_path:
        write_json(cfg.report_path, report)
    if cfg.histogram_path and rx.telemetry.records:
        latency_histogram({cfg.stream_id or "stream": rx.telemetry.stage_table()}, cfg.histogram_path)
    log.info("%s", format_summary(cfg.stream_id or "receiver", report["latency"]))
    return report
