"""The display clock and the neural-caching schedulers: which engine call makes each display frame, and when.

The viewer (a VR headset) needs a frame every display tick (``display_hz``, 60 by default) for the view
direction of that moment, while codes arrive at the sender's rate (30 fps or less). The neural-caching
design (WACV 2023) fills the gap with two networks behind one :class:`DisplayEngine`:

* ``generate`` (decode + rasterize + the deep neural renderer G) makes an image and refreshes the engine's
  *neural cache* (G's last feature maps);
* ``warp`` (the shallow implicit-warp network W) turns the newest cache and a new view direction into the
  next display frame at a fraction of G's cost.

A :class:`DisplayClock` ticks on the monotonic clock. Each tick's view direction is sampled from
``view_at(t_s)`` *at that tick's time*, independently of when codes arrive (:meth:`Scheduler.submit` hands
over the newest code; the newest wins). Two schedulers:

* :class:`SequentialScheduler` (modes ``warp`` and ``neural``; one worker, the calling process): at a tick,
  ``generate`` if a code arrived since the cache was made or :data:`MAX_WARPS` frames were already warped from
  it (``neural``: on every tick), else ``warp``. Ticks
  that come due while a frame is being rendered are *missed* (counted), never queued into a backlog: the
  next frame is the newest due tick.
* :class:`ParallelScheduler` (mode ``warp2x``; the paper's Fig. 4, bottom): two worker processes (spawn
  context), each with its own engine (own GL context, single-threaded onnxruntime sessions), alternate G
  and W. Ticks are dealt in pairs: worker A gets ticks 0 (generate) and 1 (warp from the cache it just
  made), worker B ticks 2 and 3, A ticks 4 and 5, ... The main process samples each tick's view at its
  tick time, sends the job, collects results (they may finish out of order) and presents them strictly in
  tick order. A tick whose worker still has work beyond its current pair is missed (counted) instead of
  queued, so at most one pair is in flight per worker. Images come back through shared memory (two slots
  per worker); the time from a worker finishing a frame to the main process presenting it is the
  *synchronisation overhead* (:attr:`DisplayFrame.sync_ms`).

Every presented display frame is a :class:`DisplayFrame` record (tick, view-sample time, generated or
warped, compute ms, the code's capture time, present time). Nothing here imports torch or the transport;
the engine is opened from a picklable spec by ``open_engine(spec)`` (``renderer.engine.open_engine``
unless another opener is given, e.g. a test's fake).
"""
from __future__ import annotations

import importlib
import logging
import math
import os
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np

from avcore.errors import UsageError

log = logging.getLogger(__name__)

RENDER_MODES = ("raster", "neural", "warp", "warp2x")
"""How a receiver makes its frames: ``raster`` (one frame per arriving code: decode -> rasterize -> present,
no display clock) and the display-clock modes :data:`DISPLAY_MODES`."""
DISPLAY_MODES = ("neural", "warp", "warp2x")
"""Render modes run by a display clock: ``neural`` (G on every tick), ``warp`` (G on a new code, else W; one
process), ``warp2x`` (two worker processes alternating G and W)."""
GENERATE, WARP = "generate", "warp"
"""What made a display frame."""
DEFAULT_OPENER = "renderer.engine:open_engine"
"""The engine factory the schedulers use unless told otherwise (``module:function``)."""
MAX_WARPS = 2
"""``warp`` mode: the most display frames warped from one cache; then G runs again on the newest code for the new
view (W is trained to render the one or two display frames after its cache, :mod:`renderer.data`)."""
SLOTS_PER_WORKER = 2
"""Shared-memory image slots per parallel worker: one per tick of its pair (slot = tick % 2)."""


class DisplayEngine(Protocol):
    """What a scheduler drives (implemented by ``renderer.engine``; tests use fakes)."""

    size: int
    """Side of the images it returns."""

    def generate(self, z: np.ndarray, gaze: np.ndarray, view: np.ndarray) -> np.ndarray:
        """z (Z,) float32, gaze (2, 2) float32, view (3,) float32 unit head -> viewer -> (size, size, 3) uint8;
        decode + rasterize + G, and refresh the engine's neural cache."""
        ...

    def warp(self, z: np.ndarray, gaze: np.ndarray, view: np.ndarray) -> np.ndarray:
        """(size, size, 3) uint8 from the newest cache for the new view (and the newest code/gaze); needs a cache."""
        ...

    @property
    def has_cache(self) -> bool: ...

    def warm_up(self) -> None: ...

    def close(self) -> None: ...


class EngineStartError(UsageError):
    """The display engine did not open (a missing or broken model, no GL): one line, said at start-up."""


class EngineFailed(RuntimeError):
    """The display engine failed while rendering, or a worker process died; the message is one line."""


def one_line(exc: BaseException) -> str:
    """``exc`` as one line: its message's first line (with its type when the message does not say much)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, UsageError) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def resolve_opener(opener: str | Callable[[Any], DisplayEngine]) -> Callable[[Any], DisplayEngine]:
    """``opener`` itself, or the function a ``module:function`` string names."""
    if callable(opener):
        return opener
    module, _, name = str(opener).partition(":")
    return getattr(importlib.import_module(module), name or "open_engine")


# --------------------------------------------------------------------------------------------- records


@dataclass
class Code:
    """The newest code handed to a scheduler."""

    z: np.ndarray
    """(Z,) float32."""
    gaze: np.ndarray
    """(2, 2) float32."""
    seq: int = 0
    """The frame's sequence number (what presenters label a frame with)."""
    capture_ns: int = 0
    """Capture time on this process's monotonic clock (as ``time.monotonic_ns``)."""
    meta: Any = None
    """Whatever the caller keeps about the code (the receiver: the message's timestamps); never sent to a worker."""
    serial: int = -1
    """Set by :meth:`Scheduler.submit`: 0, 1, 2, ... in submission order."""


@dataclass
class DisplayFrame:
    """One presented display frame (times: monotonic ns)."""

    tick: int
    """Display tick index (0 = the clock's start)."""
    view_ns: int
    """When its view direction was sampled: the tick's time."""
    view: np.ndarray
    """(3,) float32 unit head -> viewer direction it was rendered for."""
    kind: str
    """:data:`GENERATE` (G ran on its code: the cache was refreshed) or :data:`WARP` (W from the newest cache)."""
    code: Code
    """The code it shows."""
    start_ns: int
    """Its engine call started."""
    end_ns: int
    """Its engine call returned (the frame was finished)."""
    worker: int = 0
    """Which worker rendered it (0 for the sequential scheduler)."""
    parallel: bool = False
    """Rendered by a worker process (``warp2x``): from ``end_ns`` to ``pres_ns`` is synchronisation overhead."""
    new_code: bool = False
    """The first presented frame that shows its code."""
    pres_ns: int = 0
    """The presenter returned."""

    @property
    def generated(self) -> bool:
        return self.kind == GENERATE

    @property
    def compute_ms(self) -> float:
        """The engine call's time (generate or warp)."""
        return (self.end_ns - self.start_ns) / 1e6

    @property
    def sync_ms(self) -> float:
        """Finished -> presented: the handing over (parallel: shared memory, pipes, in-order wait) and the presenter."""
        return (self.pres_ns - self.end_ns) / 1e6

    @property
    def view_to_present_ms(self) -> float:
        """Age of the view direction when the frame was on screen."""
        return (self.pres_ns - self.view_ns) / 1e6

    @property
    def capture_to_present_ms(self) -> float:
        return (self.pres_ns - self.code.capture_ns) / 1e6


class DisplayClock:
    """Ticks every ``1 / hz`` seconds from ``start_ns`` on a monotonic ns clock; tick ``k`` is due at
    :meth:`time_of` ``(k)``."""

    def __init__(self, hz: float, start_ns: int) -> None:
        if not (isinstance(hz, (int, float)) and math.isfinite(hz) and hz > 0):
            raise UsageError(f"display rate must be a positive number of Hz, got {hz!r}")
        self.hz = float(hz)
        self.period_ns = int(round(1e9 / self.hz))
        self.start_ns = int(start_ns)

    def time_of(self, tick: int) -> int:
        return self.start_ns + tick * self.period_ns

    def latest_due(self, now_ns: int) -> int:
        """The newest tick whose time has come at ``now_ns`` (-1 before the start)."""
        return (int(now_ns) - self.start_ns) // self.period_ns if now_ns >= self.start_ns else -1


# ------------------------------------------------------------------------------------------ schedulers


Present = Callable[[np.ndarray, DisplayFrame], None]
"""``present(image, frame)``: show ``image`` (size, size, 3) uint8, the display frame ``frame``. The image may be
kept (it is the presenter's own array)."""


class Scheduler:
    """What both schedulers share: the display clock, the newest code, in-order presentation and counters.

    Drive it with :meth:`submit` (a new code, any time) and :meth:`poll` (render/collect what is due, present it,
    return the presented frames); :meth:`next_due_ns` and :meth:`wait_handles` say when to poll next.
    """

    mode = ""

    def __init__(self, display_hz: float, view_at: Callable[[float], np.ndarray], present: Present, *,
                 clock: Callable[[], int] = time.monotonic_ns, start_ns: int | None = None) -> None:
        self.clock = clock
        self.display = DisplayClock(display_hz, clock() if start_ns is None else start_ns)
        self.view_at = view_at
        """(monotonic seconds) -> (3,) unit view direction at that moment (the headset's pose)."""
        self._present = present
        self._code: Code | None = None
        self._serials = 0
        self._shown_serial = -1
        self._next_tick = 0
        """The first tick not yet rendered, dispatched or counted missed."""
        self.missed = 0
        """Ticks (after the first code) that got no frame: due while busy (sequential) or their worker had a
        backlog beyond its pair (parallel)."""
        self.presented = 0
        self.generated = 0
        self.warped = 0
        self.closed = False

    # -- input

    def submit(self, code: Code) -> None:
        """The newest code (it replaces any not yet rendered). With the first code, the newest due tick is the first
        to render (the ticks before it had nothing to show: not missed)."""
        if self._code is None:
            self._next_tick = max(self._next_tick, self.display.latest_due(self.clock()), 0)
        code.serial = self._serials
        self._serials += 1
        self._code = code

    @property
    def newest_code(self) -> Code | None:
        return self._code

    # -- timing

    def next_due_ns(self) -> int | None:
        """When the next tick falls due (None before the first code: no tick is rendered until there is one)."""
        if self._code is None:
            return None
        return self.display.time_of(self._next_tick)

    def wait_handles(self) -> list:
        """Objects with ``fileno()`` that become readable when a result waits (parallel workers); poll then."""
        return []

    def wait(self, timeout_s: float) -> None:
        """Block until the next tick is due, a worker's result waits, or ``timeout_s`` (for loops that own no
        other socket; the receiver polls these handles together with its socket)."""
        due = self.next_due_ns()
        t = timeout_s if due is None else min(timeout_s, max(0.0, (due - self.clock()) / 1e9))
        handles = self.wait_handles()
        if handles:
            from multiprocessing.connection import wait

            wait(handles, timeout=t)
        elif t > 0:
            time.sleep(t)

    def poll(self, now_ns: int | None = None) -> list[DisplayFrame]:  # pragma: no cover - interface
        raise NotImplementedError

    # -- shared helpers

    def _view(self, tick: int) -> tuple[int, np.ndarray]:
        """The tick's time and the view direction sampled at it."""
        t = self.display.time_of(tick)
        return t, np.asarray(self.view_at(t / 1e9), np.float32).reshape(3)

    def _skip_to(self, tick: int) -> None:
        """Ticks before ``tick`` not handled yet are missed (after the first code; before it nothing is due)."""
        if tick > self._next_tick:
            self.missed += tick - self._next_tick
            self._next_tick = tick

    def _show(self, image: np.ndarray, frame: DisplayFrame) -> DisplayFrame:
        frame.new_code = frame.code.serial > self._shown_serial
        self._shown_serial = max(self._shown_serial, frame.code.serial)
        self._present(image, frame)
        frame.pres_ns = self.clock()
        self.presented += 1
        if frame.generated:
            self.generated += 1
        else:
            self.warped += 1
        return frame

    def stats(self) -> dict:
        """Counters for a report."""
        return {"mode": self.mode, "display_hz": self.display.hz, "presented": self.presented,
                "generated": self.generated, "warped": self.warped, "missed_ticks": self.missed}

    def close(self) -> None:
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SequentialScheduler(Scheduler):
    """Modes ``warp`` and ``neural`` in the calling process (see the module doc).

    ``engine`` is an open :class:`DisplayEngine`; the scheduler does not close it (its owner does).
    """

    def __init__(self, engine: DisplayEngine, mode: str, display_hz: float, view_at: Callable[[float], np.ndarray],
                 present: Present, *, clock: Callable[[], int] = time.monotonic_ns, start_ns: int | None = None,
                 max_warps: int = MAX_WARPS) -> None:
        if mode not in ("warp", "neural"):
            raise UsageError(f"the sequential scheduler runs modes warp and neural, not {mode!r}")
        super().__init__(display_hz, view_at, present, clock=clock, start_ns=start_ns)
        self.mode = mode
        self.engine = engine
        self.max_warps = max_warps
        self._cache_serial: int | None = None
        """Serial of the code the engine's cache was made from (None: no cache of ours yet)."""
        self._warps = 0
        """Frames warped from the current cache."""

    def poll(self, now_ns: int | None = None) -> list[DisplayFrame]:
        """Render and present the newest due tick (older due ones are missed); [] when none is due."""
        now = self.clock() if now_ns is None else now_ns
        due = self.display.latest_due(now)
        code = self._code
        if code is None or due < self._next_tick:
            return []
        self._skip_to(due)
        self._next_tick = due + 1
        view_ns, view = self._view(due)
        fresh = self._cache_serial != code.serial or not self.engine.has_cache
        stale = bool(self.max_warps) and self._warps >= self.max_warps  # W learnt 1-2 frames ahead, no further
        kind = GENERATE if self.mode == "neural" or fresh or stale else WARP
        start = self.clock()
        if kind == GENERATE:
            image = self.engine.generate(code.z, code.gaze, view)
            self._cache_serial, self._warps = code.serial, 0
        else:
            image = self.engine.warp(code.z, code.gaze, view)
            self._warps += 1
        end = self.clock()
        frame = DisplayFrame(due, view_ns, view, kind, code, start, end)
        return [self._show(image, frame)]


# -------------------------------------------------------------------------------------------- parallel


def _die_with_parent(parent_pid: int) -> None:
    """In a worker: SIGTERM when the parent dies (Linux), and stop now if it already has."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover - no prctl
            pass
    if os.getppid() != parent_pid:
        os._exit(3)


def _worker_main(index: int, spec: Any, opener: Any, parent_pid: int, jobs, results, slots, size: int) -> None:
    """A ``warp2x`` worker: open its own engine, then run jobs ``(kind, tick, z, gaze, view, slot)`` until None
    or the end of the pipe. Replies: ``("ready",)`` / ``("error", line)`` once, then per job
    ``("done", tick, kind, start_ns, end_ns)`` (image in ``slot``) or ``("failed", tick, line)``."""
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the main process's to handle; it stops us
    try:
        engine = resolve_opener(opener)(spec)
    except BaseException as exc:  # noqa: BLE001 - every failure is reported as one line, then we exit
        results.send(("error", one_line(exc)))
        return
    try:
        try:
            engine.warm_up()
            if int(engine.size) != size:
                raise EngineStartError(f"the engine renders {engine.size}x{engine.size}, the receiver asked for {size}")
        except BaseException as exc:  # noqa: BLE001
            results.send(("error", one_line(exc)))
            return
        images = np.frombuffer(slots, np.uint8).reshape(SLOTS_PER_WORKER, size, size, 3)
        results.send(("ready",))
        while True:
            try:
                job = jobs.recv()
            except (EOFError, OSError):  # the main process went away
                return
            if job is None:
                return
            kind, tick, z, gaze, view, slot = job
            start = time.monotonic_ns()
            try:
                image = engine.generate(z, gaze, view) if kind == GENERATE else engine.warp(z, gaze, view)
                end = time.monotonic_ns()
                images[slot] = image
            except Exception as exc:  # noqa: BLE001
                results.send(("failed", tick, one_line(exc)))
                return
            results.send(("done", tick, kind, start, end))
    except (BrokenPipeError, EOFError):  # the main process closed our pipes: stop quietly
        return
    finally:
        engine.close()


@dataclass
class _Worker:
    index: int
    proc: Any
    jobs: Any
    """Our end of the job pipe (send)."""
    results: Any
    """Our end of the result pipe (recv)."""
    images: np.ndarray
    """(SLOTS_PER_WORKER, size, size, 3) uint8 view of the shared slots."""
    pid: int = 0
    outstanding: set = field(default_factory=set)
    """Ticks sent and not yet answered."""
    pair: int = -1
    """The pair of ticks it last got a job of."""


class ParallelScheduler(Scheduler):
    """Mode ``warp2x``: ``workers`` (2) processes alternating generate and warp, ticks dealt in pairs; see the
    module doc. ``spec`` is picklable and handed to ``opener`` (a top-level function, or ``module:function``) in
    each worker; ``spec.size`` is the image side. Start-up waits (up to ``start_timeout_s``) until every worker
    has opened and warmed up its engine; a failure there is an :class:`EngineStartError` naming the worker.
    Always :meth:`close` it (or use ``with``): workers are stopped, terminated if they do not stop in time.
    """

    mode = "warp2x"

    def __init__(self, spec: Any, display_hz: float, view_at: Callable[[float], np.ndarray], present: Present, *,
                 opener: str | Callable[[Any], DisplayEngine] = DEFAULT_OPENER, workers: int = 2,
                 start_timeout_s: float = 120.0, stop_timeout_s: float = 5.0) -> None:
        import multiprocessing as mp

        super().__init__(display_hz, view_at, present, clock=time.monotonic_ns)  # workers stamp time.monotonic_ns
        if workers < 1:
            raise UsageError(f"warp2x needs at least one worker, got {workers}")
        self.size = int(spec.size)
        self.stop_timeout_s = stop_timeout_s
        self._stopped = False
        self._workers: list[_Worker] = []
        self._pending: deque[int] = deque()
        """Dispatched ticks not presented yet, in tick order."""
        self._jobs: dict[int, tuple] = {}
        """tick -> (worker, kind, code, view_ns, view) of a dispatched tick."""
        self._ready: dict[int, tuple[np.ndarray, DisplayFrame]] = {}
        """Finished frames waiting for earlier ticks."""
        self.max_outstanding = 0
        """Most jobs one worker ever had in flight (bounded by its pair: 2)."""
        ctx = mp.get_context("spawn")
        try:
            for i in range(workers):
                jobs_rx, jobs_tx = ctx.Pipe(duplex=False)
                res_rx, res_tx = ctx.Pipe(duplex=False)
                slots = ctx.RawArray("B", SLOTS_PER_WORKER * self.size * self.size * 3)
                proc = ctx.Process(target=_worker_main, name=f"avcall-warp2x-{i}", daemon=True,
                                   args=(i, spec, opener, os.getpid(), jobs_rx, res_tx, slots, self.size))
                proc.start()
                jobs_rx.close()  # the worker holds these ends now: its exit closes the pipe
                res_tx.close()
                images = np.frombuffer(slots, np.uint8).reshape(SLOTS_PER_WORKER, self.size, self.size, 3)
                self._workers.append(_Worker(i, proc, jobs_tx, res_rx, images, pid=proc.pid))
            self._wait_ready(start_timeout_s)
        except BaseException:
            self.close()
            raise
        self.display = DisplayClock(display_hz, self.clock())  # tick 0 after start-up, not during it

    def _wait_ready(self, timeout_s: float) -> None:
        from multiprocessing.connection import wait

        deadline = time.monotonic() + timeout_s
        waiting = {w.results: w for w in self._workers}
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                names = ", ".join(str(w.index) for w in waiting.values())
                raise EngineStartError(f"warp2x worker {names} did not open its display engine in {timeout_s:g} s")
            for conn in wait(list(waiting), timeout=min(left, 0.5)):
                w = waiting.pop(conn)
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    w.proc.join(1.0)
                    raise EngineStartError(f"warp2x worker {w.index} exited while opening its display engine "
                                           f"(exit code {w.proc.exitcode})") from None
                if msg[0] == "error":
                    raise EngineStartError(f"warp2x worker {w.index}: the display engine did not open: {msg[1]}")
            for w in list(waiting.values()):
                if not w.proc.is_alive() and not w.results.poll():
                    raise EngineStartError(f"warp2x worker {w.index} exited while opening its display engine "
                                           f"(exit code {w.proc.exitcode})")

    def wait_handles(self) -> list:
        return [w.results for w in self._workers]

    # -- the loop

    def poll(self, now_ns: int | None = None) -> list[DisplayFrame]:
        """Collect finished frames, dispatch the ticks that came due, present what is next in tick order."""
        if self.closed:
            raise EngineFailed("the warp2x scheduler is closed")
        self._collect()
        now = self.clock() if now_ns is None else now_ns
        due = self.display.latest_due(now)
        if self._code is not None:
            # a tick older than one round of the workers would be shown after newer ones could be: missed
            self._skip_to(due - 2 * len(self._workers) + 1)
            while self._next_tick <= due:
                self._dispatch(self._next_tick)
                self._next_tick += 1
        out = []
        while self._pending and self._pending[0] in self._ready:
            image, frame = self._ready.pop(self._pending.popleft())
            out.append(self._show(image, frame))
        return out

    def _dispatch(self, tick: int) -> None:
        """Send ``tick`` to its worker, or count it missed when that worker has work beyond its pair."""
        pair = tick // 2
        w = self._workers[pair % len(self._workers)]
        if any(t // 2 != pair for t in w.outstanding):
            self.missed += 1
            return
        kind = WARP if w.pair == pair else GENERATE  # the pair's first dispatched tick makes the cache
        w.pair = pair
        code = self._code
        view_ns, view = self._view(tick)
        try:
            w.jobs.send((kind, tick, code.z, code.gaze, view, tick % SLOTS_PER_WORKER))
        except (BrokenPipeError, OSError):
            raise EngineFailed(f"warp2x worker {w.index} exited (exit code {w.proc.exitcode})") from None
        w.outstanding.add(tick)
        self.max_outstanding = max(self.max_outstanding, len(w.outstanding))
        self._pending.append(tick)
        self._jobs[tick] = (w.index, kind, code, view_ns, view)

    def _collect(self) -> None:
        for w in self._workers:
            while True:
                try:
                    if not w.results.poll():
                        break
                    msg = w.results.recv()
                except (EOFError, OSError):
                    w.proc.join(0.5)
                    raise EngineFailed(f"warp2x worker {w.index} exited (exit code {w.proc.exitcode})") from None
                if msg[0] == "failed":
                    raise EngineFailed(f"warp2x worker {w.index}, tick {msg[1]}: {msg[2]}")
                _, tick, kind, start, end = msg
                w.outstanding.discard(tick)
                index, _, code, view_ns, view = self._jobs.pop(tick)
                image = w.images[tick % SLOTS_PER_WORKER].copy()  # the slot is the worker's again
                self._ready[tick] = (image, DisplayFrame(tick, view_ns, view, kind, code, start, end, worker=index,
                                                         parallel=True))

    def close(self) -> None:
        """Stop the workers: ask, wait ``stop_timeout_s``, then terminate (and kill). Safe to call again."""
        if self._stopped:
            return
        self.closed = True
        for w in self._workers:
            try:
                w.jobs.send(None)
            except (BrokenPipeError, OSError, ValueError):
                pass
        deadline = time.monotonic() + self.stop_timeout_s
        for w in self._workers:
            w.proc.join(max(0.0, deadline - time.monotonic()))
        for w in self._workers:
            if w.proc.is_alive():
                log.warning("warp2x worker %d did not stop in %.1f s; terminating it", w.index, self.stop_timeout_s)
                w.proc.terminate()
                w.proc.join(2.0)
            if w.proc.is_alive():  # pragma: no cover - ignored SIGTERM
                w.proc.kill()
                w.proc.join(2.0)
            for conn in (w.jobs, w.results):
                try:
                    conn.close()
                except OSError:  # pragma: no cover
                    pass
            try:
                w.proc.close()
            except ValueError:  # pragma: no cover - still running after kill
                pass
        self._stopped = True

    def stats(self) -> dict:
        return {**super().stats(), "workers": len(self._workers), "max_outstanding": self.max_outstanding}

    def pids(self) -> list[int]:
        """The worker processes' ids (for checks that none is left behind)."""
        return [w.pid for w in self._workers]


def open_scheduler(mode: str, spec: Any, display_hz: float, view_at: Callable[[float], np.ndarray], present: Present,
                   *, opener: str | Callable[[Any], DisplayEngine] = DEFAULT_OPENER,
                   start_timeout_s: float = 120.0) -> tuple[Scheduler, DisplayEngine | None]:
    """The scheduler of a display ``mode`` and, for the sequential modes, the engine it drives (opened and warmed
    up here; its owner closes it after the scheduler). Engine failures at start-up are one-line
    :class:`EngineStartError` s."""
    if mode not in DISPLAY_MODES:
        raise UsageError(f"not a display-clock render mode: {mode!r} (one of {', '.join(DISPLAY_MODES)})")
    if mode == "warp2x":
        return ParallelScheduler(spec, display_hz, view_at, present, opener=opener,
                                 start_timeout_s=start_timeout_s), None
    try:
        engine = resolve_opener(opener)(spec)
    except EngineStartError:
        raise
    except Exception as exc:  # noqa: BLE001 - a model that does not open is the user's to fix: one line
        raise EngineStartError(f"the display engine did not open: {one_line(exc)}") from None
    try:
        engine.warm_up()
        return SequentialScheduler(engine, mode, display_hz, view_at, present), engine
    except BaseException as exc:
        engine.close()
        if isinstance(exc, Exception) and not isinstance(exc, UsageError):
            raise EngineStartError(f"the display engine did not warm up: {one_line(exc)}") from None
        raise
