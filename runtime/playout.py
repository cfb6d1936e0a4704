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
  a LATEX-skipped frame is just a missing sequence number) is **concealed**:

  - when a later frame is already in the buffer (the target delay holds more than a frame period),
    code and gaze are **interpolated** between the last value shown and that frame;
  - otherwise they are **predicted** from the last values shown (``method="predict"``): the last value
    plus a learned mix of the recent steps, ``h_0 + sum_j a_kj (h_j - h_{j+1})`` for the k-th frame
    in a row, with weights :class:`LinearPredictor` fitted on the training codes of the stream's encoder
    (``avcall train codec`` stores them in ``codec.json``; without them the last value is held). Measured
    better than the LATEX formula and than holding on held-out streams (``docs/results/network.md``):
    the encoder's frame-to-frame noise makes a slope through the last values a poor guess, and the
    fitted weights lean back towards the recent mean instead; ``method="latex"`` with T = 5 and damping 1
    is the sender's own formula (:func:`encoder.latex.extrapolate`), rebuilding a LATEX-skipped frame
    exactly as the sender extrapolated it.

  At most ``max_concealed`` frames in a row, then the last frame is held; with ``conceal`` off a
  missing frame holds the last one (nothing new is shown);
* a frame that arrives after its slot was filled is never shown (out of order): it is counted
  ``late`` and replaces the concealed value in the history, correcting the next extrapolation;
* a frame whose sequence number went back behind a received frame's but whose capture time is newer
  than that frame's means the sender restarted: the buffer starts over. (A sender that stalled sends
  frames captured later than their concealed slots were estimated: those are late, not a restart.)

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

__all__ = ["BUFFERED_MAX_DELAY_MS", "LinearPredictor", "PlayoutBuffer", "PlayoutConfig", "PlayoutFrame", "predictor_from_codecs"]

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
    """Most frames concealed in a row; then the last frame is held until a real one arrives."""
    interpolate: bool = True
    """Conceal by interpolating towards a later frame when one is already buffered."""
    method: str = "predict"
    """How a missing frame is predicted when no later frame is buffered: ``predict`` (the stream's fitted
    :class:`LinearPredictor`; the last value held when the codec tables carry none) or ``latex`` (the sender's
    extrapolation formula over ``history`` values)."""
    history: int = 5
    """``method="latex"``: T, the values the extrapolation spans (T = 5 rebuilds a LATEX-skipped frame exactly as
    a sender with the default LATEX settings extrapolated it)."""
    damping: float = 1.0
    """``method="latex"``: share of the extrapolated step taken,
    ``z_t = z_{t-1} + damping (z_{t-1} - z_{t-T}) / (T - 1)`` (1 = the LATEX formula exactly, 0 = hold)."""

    def __post_init__(self) -> None:
        require_non_negative("playout", max_delay_ms=self.max_delay_ms, min_delay_ms=self.min_delay_ms,
                             release_ms_per_frame=self.release_ms_per_frame)
        if self.max_delay_ms and self.min_delay_ms > self.max_delay_ms:
            raise UsageError(f"playout: min_delay_ms {self.min_delay_ms:g} > max_delay_ms {self.max_delay_ms:g}")
        if self.max_delay_ms > 2000:
            raise UsageError(f"playout: max_delay_ms must be at most 2000, got {self.max_delay_ms:g}")
        if self.method not in ("predict", "latex"):
            raise UsageError(f"playout: method must be predict or latex, got {self.method!r}")
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


@dataclass(frozen=True)
class LinearPredictor:
    """Concealment weights fitted on an encoder's training codes (``encoder.codec_fit.fit_concealment``).

    The k-th missing frame in a row (k = 1 .. ``steps``) is ``h_0 + sum_j a_kj (h_j - h_{j+1})``, where ``h_0`` is
    the last value shown before the run and ``h_j`` the one j frames before it; ``a_k`` is ``z[k - 1]`` for the
    code's elements and ``gaze[k - 1]`` for the gaze's (beyond ``steps``, the last row is reused)."""

    z: tuple[tuple[float, ...], ...]
    gaze: tuple[tuple[float, ...], ...]

    @property
    def order(self) -> int:
        """Values one prediction looks at."""
        return len(self.z[0]) + 1

    @classmethod
    def from_dict(cls, d: dict) -> "LinearPredictor":
        """From the ``conceal`` entry of ``codec.json``; ``ValueError`` if malformed."""
        try:
            z = tuple(tuple(float(c) for c in row) for row in d["z"])
            gaze = tuple(tuple(float(c) for c in row) for row in d["gaze"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"concealment weights: {exc!r}") from None
        widths = {len(r) for r in z + gaze}
        if not z or len(z) != len(gaze) or len(widths) != 1 or 0 in widths:
            raise ValueError("concealment weights: z and gaze need the same number of equally long rows")
        if not all(np.isfinite(c) and abs(c) <= 10 for r in z + gaze for c in r):
            raise ValueError("concealment weights must be finite and at most 10 in size")
        return cls(z, gaze)

    def predict(self, history: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k-th frame after the newest of ``history`` ((z, gaze) pairs, newest first; fewer than
        :attr:`order` values use what there is). (z (Z,), gaze (2, 2)) float32."""
        row = min(k, len(self.z)) - 1
        n = min(len(history), self.order)
        out = []
        for part, weights in ((0, self.z[row]), (1, self.gaze[row])):
            h = [np.asarray(v[part], np.float64).reshape(-1) for v in history[:n]]
            acc = h[0].copy()
            for j in range(n - 1):
                acc += weights[j] * (h[j] - h[j + 1])
            out.append(acc.astype(np.float32))
        return out[0], out[1].reshape(2, 2)


def predictor_from_codecs(codecs: dict) -> LinearPredictor | None:
    """The concealment weights stored with a stream's codec tables (``{codec id: CodecTables}``): those of the
    first table that has valid ones, or None."""
    for t in codecs.values():
        entry = getattr(t, "meta", {}).get("conceal")
        if isinstance(entry, dict):
            try:
                return LinearPredictor.from_dict(entry)
            except ValueError:
                continue
    return None


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

    HISTORY = 16
    """Values shown that the buffer remembers for predictions."""

    def __init__(self, cfg: PlayoutConfig, predictor: LinearPredictor | None = None) -> None:
        self.cfg = cfg
        self.predictor = predictor
        """Concealment weights of the stream's encoder (``method="predict"``; None: hold the last value)."""
        self.counts = {"played": 0, "concealed": 0, "interpolated": 0, "held": 0, "late": 0, "duplicates": 0,
                       "stale": 0, "resets": 0}
        """played: received frames released at their slot; concealed: slots filled by concealment (interpolated:
        those of them interpolated towards a buffered later frame); held: slots
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
        self._shown: deque[tuple[int, np.ndarray, np.ndarray]] = deque(maxlen=max(self.cfg.history, self.HISTORY))  # (seq, z, gaze)
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
                prev = self._prev_rx
                if prev is not None and seq <= prev[0] and capture_ns > prev[1]:
                    # seq went back behind a frame received, yet the capture time is newer: the sender restarted.
                    # (Compared with received frames only: concealed slots' capture times are estimates, and a
                    # sender that stalled sends frames captured later than its slots were estimated.)
                    self.reset()
                    status = "restart"
                else:
                    self._transit.append(arrival_ns - capture_ns)  # a late frame is jitter the target must learn
                    self._update_target()
                    self._correct(seq, z, gaze)
                    self._note_received(seq, capture_ns)
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
        self._note_received(seq, capture_ns)
        self._update_target()
        self._pending[seq] = _Entry(seq, capture_ns, arrival_ns, z, gaze, frame)
        return status

    def _note_received(self, seq: int, capture_ns: int) -> None:
        """The newest received frame (and the capture interval per sequence number since the one before)."""
        if self._prev_rx is not None and seq > self._prev_rx[0] and capture_ns > self._prev_rx[1]:
            self._periods.append((capture_ns - self._prev_rx[1]) // (seq - self._prev_rx[0]))
        if self._prev_rx is None or seq > self._prev_rx[0]:
            self._prev_rx = (seq, capture_ns)

    def _correct(self, seq: int, z: np.ndarray, gaze: np.ndarray) -> None:
        """A late frame's true values replace the concealed ones in the history (better next extrapolation)."""
        for k, (s, _, _) in enumerate(self._shown):
            if s == seq:
                self._shown[k] = (seq, z, gaze)

    # ------------------------------------------------------------------ output

    def slot_ns(self, capture_ns: int) -> int:
        """When a frame captured at ``capture_ns`` (receiver clock) falls due."""
        return capture_ns + self._base_ns() + self._target_ns

    def next_due_ns(self) -> int | None:
        """When the next slot falls due (None: nothing to wait for until a frame arrives)."""
        if self._next is None:
            return None
        e = self._pending.get(self._next)
        if e is not None:
            return self.slot_ns(e.capture_ns)
        if not self._pending and (not self.cfg.conceal or self._run >= self.cfg.max_concealed):
            return None
        period = self.period_ns
        if period is None or self._last_capture is None:
            return None
        return self.slot_ns(self._last_capture + period)

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
                if self.cfg.conceal and self._run <= self.cfg.max_concealed and self._shown:
                    z, g, interpolated = self._conceal(s)
                    res = PlayoutFrame(s, z, g, self._last_capture, due, concealed=True,
                                       target_delay_ms=self.target_delay_ms)
                    self.counts["concealed"] += 1
                    self.counts["interpolated"] += interpolated
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

    def _conceal(self, s: int) -> tuple[np.ndarray, np.ndarray, bool]:
        """Code and gaze for the missing slot ``s`` (``_run`` missing in a row so far): interpolated towards a
        buffered later frame, else predicted. (z, gaze, interpolated)."""
        seq0, z0, g0 = self._shown[-1]
        if self.cfg.interpolate and self._pending:
            n = min(self._pending)
            e = self._pending[n]
            f = (s - seq0) / float(n - seq0)
            return ((z0 + f * (e.z - z0)).astype(np.float32), (g0 + f * (e.gaze - g0)).astype(np.float32), True)
        k = self._run
        before = list(self._shown)[: len(self._shown) - (k - 1)]  # the values shown before this run
        if self.cfg.method == "latex":
            from encoder.latex import extrapolate

            h = before[-self.cfg.history:]
            if len(h) < 2:
                return z0, g0, False
            z, g = h[-1][1], h[-1][2]
            for _ in range(k):  # the sender's formula, applied k times as the sender would have
                zs, gs = np.stack([v[1] for v in h]), np.stack([v[2] for v in h])
                z = h[-1][1] + self.cfg.damping * (extrapolate(zs) - h[-1][1])
                g = h[-1][2] + self.cfg.damping * (extrapolate(gs) - h[-1][2])
                h = h[1:] + [(0, z, g)]
            return z.astype(np.float32), g.astype(np.float32), False
        if self.predictor is None:
            return z0, g0, False
        z, g = self.predictor.predict([(v[1], v[2]) for v in reversed(before)], k)
        return z, g, False

    def report(self) -> dict:
        """Settings, counters and the target delay over the call (ms)."""
        t = np.asarray(self._targets, np.float64)
        return {
            "enabled": True,
            "conceal": self.cfg.conceal,
            "max_concealed": self.cfg.max_concealed,
            "interpolate": self.cfg.interpolate,
            "method": self.cfg.method if self.cfg.method != "predict" or self.predictor is not None else "hold",
            "min_delay_ms": self.cfg.min_delay_ms,
            "max_delay_ms": self.cfg.max_delay_ms,
            "jitter_percentile": self.cfg.jitter_percentile,
            "target_delay_ms": self.target_delay_ms,
            "target_delay_ms_p50": float(np.percentile(t, 50)) if t.size else None,
            "target_delay_ms_max": float(t.max()) if t.size else None,
            **self.counts,
            "late_seqs": list(self.late_seqs),
        }

