"""The display clock and the neural-caching schedulers (``renderer.scheduler``) with fake engines.

The sequential scheduler runs on a fake clock that the fake engine advances by its compute time, so which tick is
generated, warped or missed is exact. The parallel scheduler runs real worker processes, pipes and shared memory on
the real clock; its checks are on order, accounting and bounds, never on durations (margins are wide: the machine is
shared).
"""
from __future__ import annotations

import math
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import pytest

from fake_engine import KIND_GENERATE, KIND_WARP, EngineSpec, FakeEngine, read_image
from renderer.scheduler import (GENERATE, WARP, Code, DisplayClock, EngineFailed, EngineStartError, ParallelScheduler,
                                SequentialScheduler, open_scheduler)

pytestmark = pytest.mark.timeout(120)

OPENER = "fake_engine:open_engine"


class FakeClock:
    """A monotonic ns clock that moves only when told (the fake engine's compute time advances it)."""

    def __init__(self) -> None:
        self.t = 1_000_000_000

    def __call__(self) -> int:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += int(round(seconds * 1e9))


def view_at(t_s: float) -> np.ndarray:
    """A viewer turning steadily: every tick gets its own, recognisable direction."""
    yaw = 0.7 * math.sin(t_s)
    return np.array([math.sin(yaw), 0.0, math.cos(yaw)], np.float32)


def code(z0: float, seq: int = 0) -> Code:
    z = np.zeros(8, np.float32)
    z[0] = z0
    return Code(z, np.zeros((2, 2), np.float32), seq=seq, capture_ns=0)


class Shown:
    """A present callback that keeps what it was given."""

    def __init__(self) -> None:
        self.images: list[np.ndarray] = []
        self.frames = []

    def __call__(self, image, frame) -> None:
        self.images.append(image)
        self.frames.append(frame)


def _check_images_match_records(shown: Shown) -> None:
    """Each presented image is the one rendered for its record: its kind, its tick's view, its code."""
    for image, f in zip(shown.images, shown.frames):
        info = read_image(image)
        assert info["kind"] == (KIND_GENERATE if f.kind == GENERATE else KIND_WARP), f
        np.testing.assert_allclose([info["view_x"], info["view_y"], info["view_z"]], f.view, atol=1e-6)
        assert info["z0"] == pytest.approx(float(f.code.z[0]))


# ------------------------------------------------------------------------------------------ display clock


def test_display_clock_ticks_from_its_start():
    c = DisplayClock(60.0, start_ns=5_000)
    assert c.period_ns == 16_666_667
    assert c.latest_due(4_999) == -1 and c.latest_due(5_000) == 0
    assert c.latest_due(c.time_of(7) - 1) == 6 and c.latest_due(c.time_of(7)) == 7


# ----------------------------------------------------------------------------------------------- sequential


def _sequential(mode: str, generate_ms: float = 0.0, warp_ms: float = 0.0, hz: float = 60.0):
    clock = FakeClock()
    engine = FakeEngine(EngineSpec(generate_ms=(generate_ms,), warp_ms=warp_ms), sleep=clock.advance)
    shown = Shown()
    sched = SequentialScheduler(engine, mode, hz, view_at, shown, clock=clock, start_ns=clock())
    return clock, engine, shown, sched


def _to_tick(clock: FakeClock, sched, tick: int) -> None:
    clock.t = max(clock.t, sched.display.time_of(tick))


def test_sequential_generates_on_a_new_code_and_warps_otherwise_in_tick_order():
    clock, engine, shown, sched = _sequential("warp")
    sched.submit(code(1.0, seq=10))
    plan = {3: code(2.0, seq=11), 6: code(3.0, seq=12)}  # new codes arrive before ticks 3 and 6
    for tick in range(8):
        if tick in plan:
            sched.submit(plan[tick])
        _to_tick(clock, sched, tick)
        assert len(sched.poll()) == 1
        assert sched.poll() == []  # nothing more is due at this tick
    kinds = [f.kind for f in shown.frames]
    assert kinds == [GENERATE, WARP, WARP, GENERATE, WARP, WARP, GENERATE, WARP]
    assert [f.tick for f in shown.frames] == list(range(8))
    assert [f.new_code for f in shown.frames] == [k == GENERATE for k in kinds]
    assert [f.code.seq for f in shown.frames] == [10, 10, 10, 11, 11, 11, 12, 12]
    _check_images_match_records(shown)
    for image, f in zip(shown.images, shown.frames):
        if f.kind == WARP:  # warped from the cache of the newest code's generate
            assert read_image(image)["cache_z0"] == pytest.approx(float(f.code.z[0]))
        assert f.view_ns == sched.display.time_of(f.tick)  # the view of the tick's time
        np.testing.assert_allclose(f.view, view_at(f.view_ns / 1e9), atol=1e-7)
    assert sched.missed == 0 and sched.generated == 3 and sched.warped == 5


def test_sequential_warps_at_most_max_warps_frames_from_one_cache():
    """W renders one or two display frames after its cache; when codes stall, G runs again on the newest code."""
    clock, engine, shown, sched = _sequential("warp")
    sched.submit(code(1.0))
    for tick in range(7):
        _to_tick(clock, sched, tick)
        sched.poll()
    assert [f.kind for f in shown.frames] == [GENERATE, WARP, WARP] * 2 + [GENERATE]
    assert [f.new_code for f in shown.frames] == [True] + [False] * 6  # the same code, seen from new views
    _check_images_match_records(shown)


def test_sequential_neural_mode_runs_the_generator_every_tick():
    clock, engine, shown, sched = _sequential("neural")
    sched.submit(code(1.0))
    for tick in range(5):
        if tick == 2:
            sched.submit(code(2.0))
        _to_tick(clock, sched, tick)
        sched.poll()
    assert [f.kind for f in shown.frames] == [GENERATE] * 5
    assert [f.new_code for f in shown.frames] == [True, False, True, False, False]
    assert [c[0] for c in engine.calls] == ["generate"] * 5


def test_sequential_ticks_due_while_rendering_are_missed_not_queued():
    """G takes 3.5 display periods: the ticks that came due meanwhile get no frame (counted), and the next frame is
    the newest due tick, for the view of that tick's time."""
    clock, engine, shown, sched = _sequential("warp", generate_ms=3.5 * 1000 / 60)
    _to_tick(clock, sched, 10)
    assert sched.poll() == [] and sched.missed == 0  # no code yet: nothing is due, nothing is missed
    sched.submit(code(1.0))
    sched.poll()  # tick 10: generate, which ends between ticks 13 and 14
    assert clock() > sched.display.time_of(13)
    sched.poll()  # ticks 11 and 12 came due while rendering: missed; tick 13 is warped now
    assert sched.poll() == []
    _to_tick(clock, sched, 14)
    sched.poll()
    assert [(f.tick, f.kind) for f in shown.frames] == [(10, GENERATE), (13, WARP), (14, WARP)]
    assert sched.missed == 2
    f13 = shown.frames[1]
    assert f13.view_ns == sched.display.time_of(13) < f13.start_ns  # late, but for its own tick's view
    _check_images_match_records(shown)


def test_open_scheduler_refuses_an_engine_that_does_not_open():
    with pytest.raises(EngineStartError, match=r"^the display engine did not open: RuntimeError: no renderer here$"):
        open_scheduler("warp", EngineSpec(fail_open="no renderer here"), 60.0, view_at, Shown(), opener=OPENER)


# ------------------------------------------------------------------------------------------------- parallel


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _run(sched: ParallelScheduler, ticks: int, new_code_every: int = 3, timeout_s: float = 60.0) -> int:
    """Drive ``sched`` until ``ticks`` ticks (after the first code) are presented or missed, a new code every
    ``new_code_every`` ticks; returns the first tick."""
    deadline = time.monotonic() + timeout_s
    sched.submit(code(0.0))
    first = sched._next_tick
    submitted = 0
    while sched.presented + sched.missed < ticks:
        assert time.monotonic() < deadline, "the scheduler stopped presenting"
        sched.wait(0.05)
        sched.poll()
        now_tick = sched.display.latest_due(time.monotonic_ns()) - first
        if now_tick // new_code_every > submitted:
            submitted = now_tick // new_code_every
            sched.submit(code(float(submitted)))
    return first


def test_parallel_delivers_every_tick_in_order_though_workers_finish_out_of_order(tmp_path):
    """One worker's generator is slow (2.5 periods), the other's fast: results come back out of order, yet every
    tick is presented, in tick order, each warp from the cache its own worker made for that pair."""
    spec = EngineSpec(size=16, generate_ms=(1.0,), warp_ms=1.0, slow_marker=str(tmp_path / "slow"),
                      slow_generate_ms=250.0)
    shown = Shown()
    with ParallelScheduler(spec, 10.0, view_at, shown, opener=OPENER) as sched:
        first = _run(sched, 16)
        pids = sched.pids()
        stats = sched.stats()
    frames = shown.frames
    ticks = [f.tick for f in frames]
    assert ticks == list(range(first, first + len(ticks))), ticks  # every tick, strictly in order
    assert stats["missed_ticks"] == 0 and stats["max_outstanding"] <= 2
    # precondition of the test: some frame finished before an earlier tick's (else in-order delivery is untested)
    assert any(b.end_ns < a.end_ns for a, b in zip(frames, frames[1:])), [(f.tick, f.end_ns) for f in frames]
    _check_images_match_records(shown)
    by_tick = {f.tick: (f, read_image(img)) for img, f in zip(shown.images, frames)}
    worker_pid = {}
    for f, info in by_tick.values():
        assert f.kind == (GENERATE if f.tick % 2 == 0 else WARP), f.tick  # ticks dealt in pairs: G then W
        assert f.worker == (f.tick // 2) % 2 and f.parallel
        assert worker_pid.setdefault(f.worker, info["pid"]) == info["pid"]  # a worker keeps its own engine
        if f.kind == WARP and f.tick - 1 in by_tick:
            g, ginfo = by_tick[f.tick - 1]
            assert info["pid"] == ginfo["pid"] and info["generation"] == ginfo["generation"]  # the cache it just made
            assert info["cache_z0"] == pytest.approx(float(g.code.z[0]))
        assert f.pres_ns >= f.end_ns and f.sync_ms >= 0  # synchronisation overhead measured per frame
    assert sorted(worker_pid.values()) == sorted(pids) and len(set(pids)) == 2
    assert not [p for p in pids if _alive(p)]  # closed: no worker left behind


def test_parallel_too_slow_workers_miss_ticks_instead_of_queueing(tmp_path):
    """G takes 8 periods: most ticks find their worker still busy with an older pair and are missed (counted); no
    worker ever has more than its pair in flight, and what is presented is still in tick order."""
    spec = EngineSpec(size=16, generate_ms=(160.0,), warp_ms=1.0)
    shown = Shown()
    with ParallelScheduler(spec, 50.0, view_at, shown, opener=OPENER) as sched:
        first = _run(sched, 60)
        in_flight = len(sched._pending)
        handled = sched._next_tick - first
        stats = sched.stats()
    ticks = [f.tick for f in shown.frames]
    assert ticks == sorted(set(ticks)) and ticks[0] == first
    assert stats["missed_ticks"] > 0 and stats["max_outstanding"] <= 2
    assert in_flight <= 4  # bounded: one pair per worker
    assert len(ticks) < ticks[-1] - ticks[0] + 1  # the missed ticks are gaps, not frames shown late
    assert stats["presented"] + stats["missed_ticks"] + in_flight == handled  # every tick accounted for once
    _check_images_match_records(shown)


def test_parallel_workers_stop_on_close_even_mid_frame():
    """A worker in the middle of a 10-minute generate is terminated after the stop timeout, not waited for (waiting
    would overrun the test's time limit)."""
    spec = EngineSpec(size=16, generate_ms=(600_000.0,))
    sched = ParallelScheduler(spec, 20.0, view_at, Shown(), opener=OPENER, stop_timeout_s=0.5)
    pids = sched.pids()
    sched.submit(code(1.0))
    deadline = time.monotonic() + 10
    while not sched._pending and time.monotonic() < deadline:
        sched.wait(0.05)
        sched.poll()
    assert sched._pending  # a job is in flight
    sched.close()
    assert not [p for p in pids if _alive(p)]
    sched.close()  # again: a no-op


def test_parallel_workers_are_gone_when_the_main_loop_raises():
    spec = EngineSpec(size=16, generate_ms=(1.0,))
    pids = []

    def present(image, frame):
        raise KeyError("presenter broke")

    with pytest.raises(KeyError, match="presenter broke"):
        with ParallelScheduler(spec, 20.0, view_at, present, opener=OPENER) as sched:
            pids = sched.pids()
            _run(sched, 10)
    assert len(pids) == 2 and not [p for p in pids if _alive(p)]
    assert not multiprocessing.active_children()


def test_parallel_worker_whose_engine_does_not_open_is_one_clear_error():
    """Said as soon as the worker fails (a start-up timeout of 10 minutes would overrun the test's limit)."""
    with pytest.raises(EngineStartError) as err:
        ParallelScheduler(EngineSpec(size=16, fail_open="renderer.onnx missing"), 60.0, view_at, Shown(),
                          opener=OPENER, start_timeout_s=600)
    msg = str(err.value)
    assert "\n" not in msg and "worker" in msg and "did not open" in msg and "renderer.onnx missing" in msg, msg
    assert not multiprocessing.active_children()


def test_parallel_engine_failing_mid_call_is_an_error_not_a_hang():
    spec = EngineSpec(size=16, generate_ms=(1.0,), fail_generate_at=1)
    with ParallelScheduler(spec, 20.0, view_at, Shown(), opener=OPENER) as sched:
        with pytest.raises(EngineFailed, match=r"warp2x worker \d, tick \d+: RuntimeError: fake generate failed"):
            _run(sched, 40)
    assert not multiprocessing.active_children()


def test_parallel_worker_that_dies_is_an_error(tmp_path):
    spec = EngineSpec(size=16, generate_ms=(1.0,))
    with ParallelScheduler(spec, 20.0, view_at, Shown(), opener=OPENER) as sched:
        os.kill(sched.pids()[1], 9)
        with pytest.raises(EngineFailed, match=r"warp2x worker 1 exited"):
            _run(sched, 40)
