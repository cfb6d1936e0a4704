"""The receiver's adaptive jitter buffer and loss concealment (latent extrapolation).

Frames go in as they arrive (:meth:`PlayoutBuffer.push`, any order, duplicates and late ones
included); :meth:`PlayoutBuffer.pop` hands out what is due *now*, in sequence order, one slot
per sequence number:

* **slot** of frame ``s`` = its capture time (receiver clock) + the base transit (the fastest
  capture -> arrival of the recent window) + the **target delay**; a missing frame's capture
  time is the previous slot's plus the measured frame period;
* **target delay** = the ``jitter_percentile`` of the recent ``transit - base`` values, clamped
  to ``[min_delay_ms, max_delay_ms]``; it rises at once and falls by at most
  ``release_ms_per_frame`` per frame, so a quiet second does not undo it;
* a frame present at its slot is played; a frame missing at its slot (lost, late, or never sent:
  a LATEX-skipped frame is just a missing sequence number) is **concealed** by predicting code and
  gaze from the last ``history`` values shown: by default (``method="fit"``) a least-squares line
  through them, evaluated one step on with its slope damped (``damping``), which measured better
  than the LATEX formula ``z_t = z_{t-1} + (z_{t-1} - z_{t-T}) / (T - 1)`` on held-out streams
  (``docs/results/network.md``: the encoder's frame-to-frame noise is amplified by a two-point
  slope); ``method="latex"``, T = 5, damping 1 is the sender's own formula
  (:func:`encoder.latex.extrapolate`), rebuilding a LATEX-skipped frame exactly as the sender would
  have extrapolated it. At most ``max_concealed`` frames in a row, then the last frame is held;
  with ``conceal`` off a missing frame holds the last one (nothing new is shown);
* a frame that arrives after its slot was filled is never shown (out of order): it is counted
  ``late`` and replaces the concealed value in the history, correcting the next extrapolation;
* a frame whose sequence number went backwards but whose capture time is newer than what was
  shown means the sender restarted: the buffer starts over.

Everything takes times as arguments (ns, receiver clock), so the tests drive it with an injected
clock and the network bench drives it in-process over a recorded sequence.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from avcore.config import ConfigDict, require_non_negative
from avcore.errors import UsageError

__all__ = ["BUFFERED_MAX_DELAY_MS", "PlayoutBuffer", "PlayoutConfig", "PlayoutFrame"]

BUFFERED_MAX_DELAY_MS = 100.0
"""Target-delay bound of a receiver run with the jitter buffer on (``--jitter-max-ms 100``)."""


@dataclass
class PlayoutConfig(ConfigDict):
    """Jitter buffer and concealment settings of a receiver."""

    max_delay_ms: float = 0.0
    """Upper bound of the target delay. 0 (the default) turns the buffer off: the receiver shows the newest
    frame that arrived (the latest-frame behaviour, no concealment). :data:`BUFFERED_MAX_DELAY_MS` is the bound the
    network bench measures with. Off by default until it pays: on loopback its p99 target alone added ~18 ms
    (p50) to capture-to-present, and on random loss concealment has not yet beaten holding the last frame
    (``docs/results/network.md``)."""
    min_delay_ms: float = 0.0
    """Lower bound of the target delay."""
    jitter_percentile: float = 99.0
    """The target delay covers this percentile of the recent transit jitter; later frames are concealed."""
    window: int = 150
    """Frames of transit history the target and the base transit are measured over (~5 s at 30 fps)."""
    release_ms_per_frame: float = 0.5
    """How fast the target delay may fall (it rises at once)."""
    conceal: bool = True
    """Extrapolate missing frames (else hold the last one)."""
    max_concealed: int = 5
    """Most frames extrapolated in a row; then the last frame is held until a real one arrives."""
    history: int = 12
    """T: values the prediction uses (``method="latex"`` with T = 5 rebuilds a LATEX-skipped frame exactly as a
    sender with the default LATEX settings extrapolated it)."""
    method: str = "fit"
    """How a missing frame is predicted from the last ``history`` values shown: ``latex`` (the sender's
    extrapolation formula) or ``fit`` (a least-squares line through them, evaluated one step on: less
    sensitive to frame-to-frame encoder noise)."""
    damping: float = 0.5
    """Share of the extrapolated step taken: ``z_t = z_{t-1} + damping (z_{t-1} - z_{t-T}) / (T - 1)``
    (1 = the LATEX formula exactly, 0 = repeat the last code)."""

    def __post_init__(self) -> None:
        require_non_negative("playout", max_delay_ms=self.max_delay_ms, min_delay_ms=self.min_delay_ms,
                             release_ms_per_frame=self.release_ms_per_frame)
        if self.max_delay_ms and self.min_delay_ms > self.max_delay_ms:
            raise UsageError(f"playout: min_delay_ms {self.min_delay_ms:g} > max_delay_ms {self.max_delay_ms:g}")
        if self.max_delay_ms > 2000:
            raise UsageError(f"playout: max_delay_ms must be at most 2000, got {self.max_delay_ms:g}")
        if self.method not in ("latex", "fit"):
            raise UsageError(f"playout: method must be latex or fit, got {self.method!r}")
        if not 0 <= self.damping <= 1:
            raise UsageError(f"playout: damping must be in [0, 1], got {self.damping!r}")
        if not 0 < self.jitter_percentile <= 100:
            raise UsageError(f"playout: jitter_percentile must be in (0, 100], got {self.jitter_percentile!r}")
        for name, low in (("window", 2), ("max_concealed", 0), ("history", 2)):
            v = getattr(self, name)
            if not isinstance(v, int) or v < low:
                raise UsageError(f"playout: {name} must be an integer >= {low}, got {v!r}")

    @property
    def enabled(self) -> bool:
        return self.max_delay_ms > 0


@dataclass
class PlayoutFrame:
    """One slot's output: a received frame (``frame`` set) or a concealed one (``concealed``)."""

    seq: int
    z: np.ndarray
    """(Z,) float32."""
    gaze: np.ndarray
    """(2, 2) float32."""
    capture_ns: int
    """Capture time on the receiver clock (estimated for a concealed frame)."""
    slot_ns: int
    """When it was due."""
    concealed: bool = False
    frame: Any = None
    """The received message (None when concealed)."""
    arrival_ns: int = 0
    """When it was taken off the socket (0 when concealed)."""
    target_delay_ms: float = 0.0
    """The buffer's target delay when it was released."""


@dataclass
class _Entry:
    seq: int
    capture_ns: int
    arrival_ns: int
    z: np.ndarray
    gaze: np.ndarray
    frame: Any


class PlayoutBuffer:
    """Adaptive jitter buffer + concealment for one stream (see the module doc)."""

    MAX_GAP = 300
    """A forward jump of more sequence numbers than this starts over (about 10 s at 30 fps)."""

    def __init__(self, cfg: PlayoutConfig) -> None:
        self.cfg = cfg
        self.counts = {"played": 0, "concealed": 0, "held": 0, "late": 0, "duplicates": 0, "stale": 0, "resets": 0}
        """played: received frames released at their slot; concealed: slots filled by extrapolation; held: slots
        with nothing new (conceal off, or the run bound reached); late: frames that arrived after their slot
        (never shown); duplicates; stale: released frames superseded before the caller took them; resets."""
        self._targets: list[float] = []
        self.late_seqs: deque[int] = deque(maxlen=1000)
        """Sequence numbers of the most recent late frames (for the report)."""
        self.reset(count=False)

    # ------------------------------------------------------------------ state

    def reset(self, count: bool = True) -> None:
        """Forget the stream (a sender restart, a long gap)."""
        if count:
            self.counts["resets"] += 1
        self._pending: dict[int, _Entry] = {}
        self._next: int | None = None
        self._last_capture: int | None = None  # capture time of the last slot processed (real or estimated)
        self._shown: deque[tuple[int, np.ndarray, np.ndarray]] = deque(maxlen=self.cfg.history)  # (seq, z, gaze)
        self._run = 0  # slots missing in a row
        self._transit: deque[int] = deque(maxlen=self.cfg.window)
        self._periods: deque[int] = deque(maxlen=self.cfg.window)
        self._prev_rx: tuple[int, int] | None = None  # (seq, capture) of the newest received frame
        self._target_ns = int(self.cfg.min_delay_ms * 1e6)

    def rebase(self) -> None:
        """The clock offset changed: transit times measured before are on another scale; measure afresh."""
        self._transit.clear()

    @property
    def target_delay_ms(self) -> float:
        return self._target_ns / 1e6

    @property
    def period_ns(self) -> int | None:
        """Median capture interval per sequence number of the recent frames (None before two frames)."""
        return int(np.median(self._periods)) if self._periods else None

    def _base_ns(self) -> int:
        return min(self._transit) if self._transit else 0

    def _update_target(self) -> None:
        if len(self._transit) < 3:
            return
        a = np.asarray(self._transit, np.int64)
        want = float(np.percentile(a - a.min(), self.cfg.jitter_percentile))
        lo, hi = self.cfg.min_delay_ms * 1e6, self.cfg.max_delay_ms * 1e6
        want = min(max(want, lo), hi)
        if want >= self._target_ns:
            self._target_ns = int(want)
        else:
            self._target_ns = int(max(want, self._target_ns - self.cfg.release_ms_per_frame * 1e6))

    # ------------------------------------------------------------------ input

    def push(self, seq: int, capture_ns: int, arrival_ns: int, z: np.ndarray, gaze: np.ndarray, frame: Any = None) -> str:
        """A frame taken off the socket at ``arrival_ns`` (its capture time already on the receiver clock).

        Returns what became of it: ``"queued"``, ``"late"`` (its slot passed: never shown, corrects the
        history), ``"duplicate"`` or ``"restart"`` (the buffer started over with it)."""
        seq, capture_ns, arrival_ns = int(seq), int(capture_ns), int(arrival_ns)
        z = np.asarray(z, np.float32).reshape(-1)
        gaze = np.asarray(gaze, np.float32).reshape(2, 2)
        status = "queued"
        if self._next is not None:
            if seq < self._next:
                period = self.period_ns or 0
                if self._last_capture is not None and capture_ns > self._last_capture + period // 2:
                    self.reset()  # seq went back but the capture time is new: the sender restarted
                    status = "restart"
                else:
                    self._transit.append(arrival_ns - capture_ns)  # a late frame is jitter the target must learn
                    self._update_target()
                    self._correct(seq, z, gaze)
                    self.counts["late"] += 1
                    self.late_seqs.append(seq)
                    return "late"
            elif seq in self._pending:
                self.counts["duplicates"] += 1
                return "duplicate"
            elif seq - self._next > self.MAX_GAP:
                self.reset()
                status = "restart"
        if self._next is None:
            self._next = seq
        self._transit.append(arrival_ns - capture_ns)
        if self._prev_rx is not None and seq > self._prev_rx[0] and capture_ns > self._prev_rx[1]:
            self._periods.append((capture_ns - self._prev_rx[1]) // (seq - self._prev_rx[0]))
        if self._prev_rx is None or seq > self._prev_rx[0]:
            self._prev_rx = (seq, capture_ns)
        self._update_target()
        self._pending[seq] = _Entry(seq, capture_ns, arrival_ns, z, gaze, frame)
        return status

    def _correct(self, seq: int, z: np.ndarray, gaze: np.ndarray) -> None:
        """A late frame's true values replace the concealed ones in the history (better next extrapolation)."""
        for k, (s, _, _) in enumerate(self._shown):
            if s == seq:
                self._shown[k] = (seq, z, gaze)

    # ------------------------------------------------------------------ output

    def _slot(self, capture_ns: int) -> int:
        return capture_ns + self._base_ns() + self._target_ns

    def next_due_ns(self) -> int | None:
        """When the next slot falls due (None: nothing to wait for until a frame arrives)."""
        if self._next is None:
            return None
        e = self._pending.get(self._next)
        if e is not None:
            return self._slot(e.capture_ns)
        if not self._pending and (not self.cfg.conceal or self._run >= self.cfg.max_concealed):
            return None
        period = self.period_ns
        if period is None or self._last_capture is None:
            return None
        return self._slot(self._last_capture + period)

    def pop(self, now_ns: int) -> PlayoutFrame | None:
        """The newest output due at ``now_ns`` (older ones due at the same time are counted stale), or None.

        Every slot that fell due is processed in sequence order: played, concealed or held."""
        out: PlayoutFrame | None = None
        while self._next is not None:
            due = self.next_due_ns()
            if due is None or now_ns < due:
                break
            s = self._next
            e = self._pending.pop(s, None)
            if e is not None:
                res = PlayoutFrame(s, e.z, e.gaze, e.capture_ns, due, frame=e.frame, arrival_ns=e.arrival_ns,
                                   target_delay_ms=self.target_delay_ms)
                self._run = 0
                self.counts["played"] += 1
                self._last_capture = e.capture_ns
            else:
                self._last_capture += self.period_ns  # type: ignore[operator]
                self._run += 1
                if self.cfg.conceal and self._run <= self.cfg.max_concealed and len(self._shown) >= 2:
                    z, g = self._extrapolate()
                    res = PlayoutFrame(s, z, g, self._last_capture, due, concealed=True,
                                       target_delay_ms=self.target_delay_ms)
                    self.counts["concealed"] += 1
                else:
                    self.counts["held"] += 1
                    if self._shown:  # what stays on screen is the last value shown
                        _, z, g = self._shown[-1]
                        self._shown.append((s, z, g))
                    self._next = s + 1
                    continue
            self._shown.append((s, res.z, res.gaze))
            self._next = s + 1
            if out is not None:
                self.counts["stale"] += 1
            out = res
        if out is not None:
            self._targets.append(self.target_delay_ms)
            if len(self._targets) > 100_000:
                del self._targets[:50_000]
        return out

    def _extrapolate(self) -> tuple[np.ndarray, np.ndarray]:
        from encoder.latex import extrapolate

        h = list(self._shown)
        if self.cfg.method == "fit":
            return _line_fit(h, self.cfg.damping)
        z = extrapolate(np.stack([v[1] for v in h]))
        g = extrapolate(np.stack([v[2] for v in h]))
        d = self.cfg.damping
        if d != 1.0:
            z = h[-1][1] + d * (z - h[-1][1])
            g = h[-1][2] + d * (g - h[-1][2])
        return z.astype(np.float32), g.astype(np.float32)

    def report(self) -> dict:
        """Settings, counters and the target delay over the call (ms)."""
        t = np.asarray(self._targets, np.float64)
        return {
            "enabled": True,
            "conceal": self.cfg.conceal,
            "max_concealed": self.cfg.max_concealed,
            "min_delay_ms": self.cfg.min_delay_ms,
            "max_delay_ms": self.cfg.max_delay_ms,
            "jitter_percentile": self.cfg.jitter_percentile,
            "target_delay_ms": self.target_delay_ms,
            "target_delay_ms_p50": float(np.percentile(t, 50)) if t.size else None,
            "target_delay_ms_max": float(t.max()) if t.size else None,
            **self.counts,
            "late_seqs": list(self.late_seqs),
        }


def _line_fit(h: list[tuple[int, np.ndarray, np.ndarray]], damping: float) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares line through the history values (one per step, oldest first), evaluated one step after
    the last; the slope scaled by ``damping``. (z (Z,), gaze (2, 2)) float32."""
    T = len(h)
    x = np.arange(T, dtype=np.float64) - (T - 1) / 2.0  # centred step index
    w = x / float((x**2).sum())
    out = []
    for k in (1, 2):
        v = np.stack([e[k].reshape(-1) for e in h]).astype(np.float64)  # (T, D)
        mean, slope = v.mean(0), w @ v
        out.append((mean + damping * slope * ((T - 1) / 2.0 + 1.0)).astype(np.float32))
    return out[0], out[1].reshape(2, 2)
