"""Performances: expression and gaze sequences over time, deterministic from a seed.

A performance is a list of segments. Each segment is one of

- ``smooth``: slow transitions between sparse random expressions,
- ``speech``: speech-like jaw and lip motion at 3-6 Hz over a calm face,
- ``extreme``: rare extreme expressions (one eye shut and the other wide
  open, extreme gaze, maximal jaw) held briefly; a share of them are *fast*
  (``fast_extreme_fraction``): several extremes in a row, each reached in
  30-50 ms and held 0.1-0.3 s, as people really pull faces,
- ``asymmetric``: one side of the face doing what the other does not (a wink,
  one brow up, a one-sided smile or sneer-like squint, one side smiling while
  the other brow frowns), between calm stretches (``asymmetric_probability``;
  the default performance has none).

Over every segment run sudden events: blinks (~150 ms) and gaze saccades
(30-60 ms jumps between fixations). Segments are assigned to the train or
test split by a hash of (seed, segment index), so every frame of a segment
lands in the same split. Shapes: ``expression`` (N, E), ``gaze`` (N, 2, 2),
``segment`` (N,), ``test`` (N,) bool, ``extreme`` (N,) bool, ``asymmetric`` (N,) bool, ``t`` (N,) s.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .expression import INDEX as X
from .expression import MAX_GAZE_PITCH, MAX_GAZE_YAW, NUM_EXPRESSIONS

SEGMENT_KINDS = ("smooth", "speech", "extreme", "asymmetric")


@dataclass
class PerformanceConfig:
    fps: float = 90.0
    """Frame rate of the sequence (30-90 fps)."""
    segment_seconds: tuple[float, float] = (1.5, 4.0)
    """Range of segment durations."""
    extreme_probability: float = 0.12
    """Chance that a segment is an extreme-expression segment."""
    speech_probability: float = 0.3
    """Chance that a segment is a speech segment."""
    asymmetric_probability: float = 0.0
    """Chance that a segment is an asymmetric-expression segment (one side of the face only)."""
    fast_extreme_fraction: float = 0.0
    """Share of the extreme segments that are fast: several extremes in a row with 30-50 ms onsets."""
    test_fraction: float = 0.2
    """Fraction of segments held out for testing."""
    blink_interval: tuple[float, float] = (1.5, 5.0)
    """Seconds between blinks."""
    saccade_interval: tuple[float, float] = (0.4, 1.8)
    """Seconds between gaze saccades."""


@dataclass
class Performance:
    t: np.ndarray
    expression: np.ndarray
    gaze: np.ndarray
    segment: np.ndarray
    segment_kind: np.ndarray
    test: np.ndarray
    extreme: np.ndarray
    fps: float
    asymmetric: np.ndarray | None = None
    """(N,) bool: frames of asymmetric-expression segments (all False when the performance has none)."""

    def __post_init__(self) -> None:
        if self.asymmetric is None:
            self.asymmetric = np.zeros(len(self.t), bool)

    def __len__(self) -> int:
        return len(self.t)

    def split(self, name: str) -> np.ndarray:
        """Frame indices of ``name`` in {"train", "test", "all"}."""
        if name == "all":
            return np.arange(len(self))
        if name not in ("train", "test"):
            raise ValueError(f"split must be train, test or all, got {name!r}")
        return np.flatnonzero(self.test if name == "test" else ~self.test)


def _ease(x):
    x = np.clip(x, 0, 1)
    return x * x * (3 - 2 * x)


def _sparse_expression(rng, max_active=3, scale=0.8) -> np.ndarray:
    e = np.zeros(NUM_EXPRESSIONS)
    k = rng.integers(0, max_active + 1)
    idx = rng.choice(NUM_EXPRESSIONS, size=k, replace=False)
    e[idx] = rng.uniform(0.15, 1.0, size=k) * scale
    e[X["blink_left"]] = e[X["blink_right"]] = 0.0  # blinks come from events
    return e


def _extreme_expression(rng) -> np.ndarray:
    e = np.zeros(NUM_EXPRESSIONS)
    kind = rng.integers(0, 5)
    if kind == 0:  # one eye shut, the other wide open
        shut, wide = ("left", "right") if rng.random() < 0.5 else ("right", "left")
        e[X[f"blink_{shut}"]] = 1.0
        e[X[f"squint_{shut}"]] = rng.uniform(0.3, 1.0)
        e[X[f"brow_raise_{wide}"]] = 1.0
    elif kind == 1:  # maximal jaw
        e[X["jaw_open"]] = 1.0
        e[X["brow_raise_left"]] = e[X["brow_raise_right"]] = rng.uniform(0.4, 1.0)
    elif kind == 2:  # pucker + furrow
        e[X["lip_pucker"]] = 1.0
        e[X["brow_furrow"]] = 1.0
    elif kind == 3:  # lopsided smile with puff
        side = "left" if rng.random() < 0.5 else "right"
        e[X[f"smile_{side}"]] = 1.0
        e[X["cheek_puff"]] = rng.uniform(0.5, 1.0)
        e[X[f"squint_{side}"]] = 0.8
    else:  # big smile, squint both
        e[X["smile_left"]] = e[X["smile_right"]] = 1.0
        e[X["squint_left"]] = e[X["squint_right"]] = 1.0
        e[X["jaw_open"]] = rng.uniform(0.2, 0.6)
    return e


def _asymmetric_expression(rng) -> np.ndarray:
    """One side of the face active, the other calm (or doing something else)."""
    e = np.zeros(NUM_EXPRESSIONS)
    side, other = ("left", "right") if rng.random() < 0.5 else ("right", "left")
    kind = rng.integers(0, 5)
    if kind == 0:  # wink
        e[X[f"blink_{side}"]] = 1.0
        e[X[f"squint_{side}"]] = rng.uniform(0.4, 1.0)
        e[X[f"smile_{side}"]] = rng.uniform(0.0, 0.6)
    elif kind == 1:  # one brow up
        e[X[f"brow_raise_{side}"]] = rng.uniform(0.7, 1.0)
        e[X[f"squint_{other}"]] = rng.uniform(0.0, 0.5)
    elif kind == 2:  # one-sided smile
        e[X[f"smile_{side}"]] = rng.uniform(0.7, 1.0)
        e[X[f"squint_{side}"]] = rng.uniform(0.2, 0.8)
        e[X["jaw_open"]] = rng.uniform(0.0, 0.4)
    elif kind == 3:  # squint and smile on one side, the other brow raised
        e[X[f"squint_{side}"]] = rng.uniform(0.7, 1.0)
        e[X[f"smile_{side}"]] = rng.uniform(0.5, 1.0)
        e[X[f"brow_raise_{other}"]] = rng.uniform(0.6, 1.0)
    else:  # half-closed eye on one side, lopsided mouth
        e[X[f"blink_{side}"]] = rng.uniform(0.5, 0.8)
        e[X[f"smile_{other}"]] = rng.uniform(0.6, 1.0)
        e[X["lip_pucker"]] = rng.uniform(0.0, 0.5)
    return e


def _bursts(rng, prev: np.ndarray, m: int, fps: float, targets, onset: tuple[float, float],
            hold: tuple[float, float]) -> np.ndarray:
    """A track of ``m`` frames jumping from ``prev`` through ``targets()`` in turn: each reached in ``onset`` s,
    held ``hold`` s, sometimes with a brief return towards neutral between them."""
    track = np.zeros((m, NUM_EXPRESSIONS))
    i, cur = 0, prev
    while i < m:
        target = targets()
        on = max(1, int(round(rng.uniform(*onset) * fps)))
        hd = max(1, int(round(rng.uniform(*hold) * fps)))
        w = _ease(np.arange(1, on + 1) / on)[:, None]
        seg = np.concatenate([cur * (1 - w) + target * w, np.repeat(target[None], hd, 0)])
        if rng.random() < 0.3:  # back towards neutral for a moment
            back = max(1, int(round(rng.uniform(*onset) * fps)))
            wb = _ease(np.arange(1, back + 1) / back)[:, None] * 0.8
            seg = np.concatenate([seg, target * (1 - wb)])
        n = min(len(seg), m - i)
        track[i:i + n] = seg[:n]
        cur = track[i + n - 1]
        i += n
    return track


def generate_performance(seed: int, seconds: float, cfg: PerformanceConfig | None = None) -> Performance:
    """A deterministic performance of ``seconds`` at ``cfg.fps``."""
    cfg = cfg or PerformanceConfig()
    if seconds <= 0:
        raise ValueError("seconds must be positive")
    if not 1 <= cfg.fps <= 240:
        raise ValueError("fps must be between 1 and 240")
    rng = np.random.default_rng(seed)
    n = max(1, int(round(seconds * cfg.fps)))
    t = np.arange(n) / cfg.fps
    expr = np.zeros((n, NUM_EXPRESSIONS))
    segment = np.zeros(n, np.int32)
    kinds = np.empty(n, dtype="<U10")
    extreme = np.zeros(n, bool)
    asymmetric = np.zeros(n, bool)

    # Segments and their expression tracks.
    start, seg, prev = 0, 0, np.zeros(NUM_EXPRESSIONS)
    while start < n:
        dur = int(rng.uniform(*cfg.segment_seconds) * cfg.fps)
        end = min(n, start + max(dur, 2))
        u = rng.random()
        kind = "extreme" if u < cfg.extreme_probability else ("speech" if u < cfg.extreme_probability + cfg.speech_probability else "smooth")
        if kind != "extreme" and cfg.asymmetric_probability > 0 and rng.random() < cfg.asymmetric_probability:
            kind = "asymmetric"  # drawn apart, so performances without it keep their random stream
        fast = kind == "extreme" and cfg.fast_extreme_fraction > 0 and rng.random() < cfg.fast_extreme_fraction
        m = end - start
        tt = np.arange(m) / cfg.fps
        if kind == "smooth":
            # Two or three keyframes with eased transitions.
            keys = [prev] + [_sparse_expression(rng) for _ in range(rng.integers(1, 3))]
            pos = np.linspace(0, m, len(keys))
            track = np.zeros((m, NUM_EXPRESSIONS))
            for a in range(len(keys) - 1):
                lo, hi = int(pos[a]), int(pos[a + 1])
                w = _ease((np.arange(lo, hi) - lo) / max(hi - lo, 1) * 1.6)[:, None]
                track[lo:hi] = keys[a] * (1 - w) + keys[a + 1] * w
            track[int(pos[-2]) :] = keys[-1] if m - int(pos[-2]) > 0 else track[int(pos[-2]) :]
        elif kind == "speech":
            base = _sparse_expression(rng, max_active=1, scale=0.4)
            f1, f2 = rng.uniform(3, 6), rng.uniform(1, 2.5)
            jaw = 0.12 + 0.22 * np.abs(np.sin(np.pi * f1 * tt + rng.uniform(0, 3))) * (0.6 + 0.4 * np.sin(2 * np.pi * f2 * tt) ** 2)
            track = np.repeat(base[None], m, 0)
            ramp = _ease(np.minimum(tt, tt[-1] - tt + 1e-9) / 0.15)[:, None]
            track = prev * (1 - _ease(tt / 0.2))[:, None] + track * _ease(tt / 0.2)[:, None]
            track[:, X["jaw_open"]] = np.maximum(track[:, X["jaw_open"]], jaw * ramp[:, 0])
            track[:, X["lip_pucker"]] += 0.25 * np.clip(np.sin(np.pi * f1 * 0.5 * tt), 0, 1) * ramp[:, 0]
        elif kind == "asymmetric":
            track = _bursts(rng, prev, m, cfg.fps, lambda: _asymmetric_expression(rng), onset=(0.08, 0.25), hold=(0.3, 1.0))
            asymmetric[start:end] = True
        elif fast:
            track = _bursts(rng, prev, m, cfg.fps,
                            lambda: _extreme_expression(rng) if rng.random() < 0.6 else _asymmetric_expression(rng),
                            onset=(0.03, 0.05), hold=(0.1, 0.3))
            extreme[start:end] = True
        else:
            target = _extreme_expression(rng)
            w = _ease(tt / 0.12)[:, None] * _ease((tt[-1] - tt) / 0.12 + 0.5)[:, None]
            track = prev * (1 - w) + target * w
            extreme[start:end] = True
        expr[start:end] = track
        segment[start:end] = seg
        kinds[start:end] = kind
        prev = track[-1]
        start, seg = end, seg + 1

    # Blinks: 60 ms closing, 90 ms opening, both eyes (rarely one).
    tb = rng.uniform(0.2, cfg.blink_interval[1])
    while tb < t[-1]:
        close, hold, opn = 0.06, 0.02, 0.09
        dt = t - tb
        b = np.where(dt < 0, 0, np.where(dt < close, dt / close, np.where(dt < close + hold, 1, 1 - (dt - close - hold) / opn)))
        b = np.clip(b, 0, 1)
        sides = ["left", "right"] if rng.random() > 0.08 else [rng.choice(["left", "right"])]
        for side in sides:
            expr[:, X[f"blink_{side}"]] = np.maximum(expr[:, X[f"blink_{side}"]], b)
        tb += rng.uniform(*cfg.blink_interval)

    # Gaze: fixations joined by fast saccades; both eyes share yaw/pitch with slight vergence.
    gaze = np.zeros((n, 2, 2))
    fix = np.zeros(2)
    ts = 0.0
    while ts < t[-1] + 1:
        nxt = ts + rng.uniform(*cfg.saccade_interval)
        target = np.array([rng.uniform(-0.7, 0.7) * MAX_GAZE_YAW, rng.uniform(-0.7, 0.7) * MAX_GAZE_PITCH])
        dur = rng.uniform(0.03, 0.06)
        sel = (t >= ts) & (t < nxt)
        w = _ease((t[sel] - ts) / dur)[:, None]
        g = fix * (1 - w) + target * w
        g += 0.004 * rng.standard_normal(g.shape)  # fixational jitter
        gaze[sel, 0] = g
        gaze[sel, 1] = g
        fix, ts = target, nxt
    # Extreme segments push gaze to its limits.
    for s in np.unique(segment[extreme]):
        sel = segment == s
        if rng.random() < 0.6:
            g = np.array([rng.choice([-1, 1]) * MAX_GAZE_YAW, rng.uniform(-1, 1) * MAX_GAZE_PITCH])
            gaze[sel] = g
    vergence = 0.03
    gaze[:, 0, 0] -= vergence
    gaze[:, 1, 0] += vergence

    # Train/test split by segment.
    seg_rng = np.random.default_rng(seed * 7 + 11)
    test_seg = seg_rng.random(segment.max() + 1) < cfg.test_fraction
    if segment.max() >= 1 and not test_seg.any():
        test_seg[-1] = True
    return Performance(
        t=t.astype(np.float64),
        expression=np.clip(expr, 0, 1).astype(np.float32),
        gaze=gaze.astype(np.float32),
        segment=segment,
        segment_kind=kinds,
        test=test_seg[segment],
        extreme=extreme,
        fps=float(cfg.fps),
        asymmetric=asymmetric,
    )
