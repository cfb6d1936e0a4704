"""LATEX: adaptive latent extrapolation (Auto-CARD), the runtime half.

A cheap *early model* (the stem convolution of each view encoder plus a tiny
head, see :mod:`encoder.early`) estimates the code and gaze of every frame. The
gate compares the early estimate of the current frame with that of the previous
frame; when they differ by more than a threshold the frame is a *keyframe* and
the full encoder runs, otherwise the code, gaze and keypoints are extrapolated
linearly from the last ``T`` sent values::

    z_t = z_{t-1} + (z_{t-1} - z_{t-T}) / (T - 1)

The gate distance is ``max(rms(dz / z_std), rms(dg / gaze_std))``: the larger of
the standardised change of the early code and of the early gaze, so a saccade
alone is enough to force a keyframe. A frame is also a keyframe while fewer than
``T`` values are known (the start of a stream) and after ``max_skips`` skipped
frames in a row (a bound on extrapolation drift). That rule lives in one place,
:class:`LatexGate`: the sender steps it frame by frame (:class:`LatexEncoder`) and
the evaluation and calibration loop it over whole sequences (:func:`gate_schedule`).
Its settings and defaults live in one place too, :class:`LatexConfig`.

This module never imports torch: the sender uses it through onnxruntime. The
files it reads sit in the encoder model directory next to the view models::

    DIR/early.onnx    views (B, 3, S, S) uint8 -> z (B, Z), gaze (B, 2, 2)
    DIR/latex.json    the LatexConfig defaults it was calibrated with ("defaults"),
                      standardisation scales ("z_scale", "gaze_scale"), thresholds
                      calibrated per (T, max_skips) ("calibration": {"T5_max2": {"0.3": thr, ...}})
"""
from __future__ import annotations

import json
import math
import numbers
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from avcore.config import ConfigDict
from avcore.errors import UsageError

from .runtime import EncodeResult

LATEX_FILE = "latex.json"
EARLY_FILE = "early.onnx"

CALIBRATION_RATIOS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7)
"""Target skip ratios whose thresholds ``avcall train latex`` calibrates."""
CALIBRATION_SETTINGS = ((2, 4), (3, 4), (4, 4), (5, 4), (3, 2), (4, 2), (5, 2), (3, 8))
"""(T, max_skips) pairs calibrated; (5, 2) is the default :class:`LatexConfig`, chosen by `avcall eval latex`."""


def calibration_key(history: int, max_skips: int) -> str:
    """The ``latex.json`` calibration entry of a (T, max_skips) setting, e.g. ``"T5_max2"``."""
    return f"T{history}_max{max_skips}"


@dataclass
class LatexConfig(ConfigDict):
    """LATEX gate settings and their defaults (the one place they live).

    ``threshold`` wins over ``skip_ratio`` when set; with neither, the default ``skip_ratio`` is used.
    ``to_dict()``/``from_dict()`` follow :mod:`avcore.config`: unknown keys are an error
    (:class:`avcore.errors.UsageError`, a ValueError, naming them), missing keys take their defaults."""

    history: int = 5
    """T: codes used by the extrapolation (>= 2)."""
    threshold: float | None = None
    """Gate distance above which a frame is a keyframe; when set it wins over ``skip_ratio``."""
    skip_ratio: float | None = 0.3
    """Target share of skipped frames; the threshold is looked up in the calibration of ``latex.json``
    (None = this default)."""
    max_skips: int = 2
    """Most frames skipped in a row before a keyframe is forced (0 = no bound)."""

    def __post_init__(self):
        if not isinstance(self.history, numbers.Integral) or self.history < 2:
            raise UsageError(f"LatexConfig: history T must be an integer >= 2, got {self.history!r}")
        if not isinstance(self.max_skips, numbers.Integral) or self.max_skips < 0:
            raise UsageError(f"LatexConfig: max_skips must be an integer >= 0, got {self.max_skips!r}")
        self.history, self.max_skips = int(self.history), int(self.max_skips)
        if self.skip_ratio is not None and not 0 <= self.skip_ratio < 1:
            raise UsageError(f"LatexConfig: skip_ratio must be in [0, 1), got {self.skip_ratio!r}")
        if self.threshold is not None and not self.threshold >= 0:  # NaN fails too
            raise UsageError(f"LatexConfig: threshold must be >= 0, got {self.threshold!r}")

    @property
    def target_skip_ratio(self) -> float:
        """The skip ratio the threshold is calibrated for when ``threshold`` is not set."""
        return LatexConfig.skip_ratio if self.skip_ratio is None else float(self.skip_ratio)


class LatexGate:
    """The gate rule, stateful: ``step(distance)`` -> True when the frame is a keyframe (the full encoder runs).

    A frame is a keyframe while fewer than ``history`` frames of the sequence are known, when its distance
    exceeds ``threshold`` (a NaN distance always does; distances compare as Python floats), and after
    ``max_skips`` skipped frames in a row (0 = no bound). ``reset()`` starts a new sequence.

    The sender steps it frame by frame (:class:`LatexEncoder`); :func:`gate_schedule` loops it over
    whole sequences for the evaluation and the calibration."""

    def __init__(self, threshold: float, history: int = LatexConfig.history, max_skips: int = LatexConfig.max_skips):
        if history < 2:
            raise UsageError(f"LatexGate: history T must be >= 2, got {history}")
        if max_skips < 0:
            raise UsageError(f"LatexGate: max_skips must be >= 0, got {max_skips}")
        self.threshold = float(threshold)
        self.history = int(history)
        self.max_skips = int(max_skips)
        self.reset()

    @classmethod
    def from_config(cls, cfg: LatexConfig, threshold: float) -> "LatexGate":
        return cls(threshold, cfg.history, cfg.max_skips)

    def reset(self) -> None:
        self.known = 0
        """Frames of the current sequence seen so far."""
        self.run = 0
        """Frames skipped in a row just before the next one."""

    def step(self, distance: float) -> bool:
        """The next frame's gate distance (to the frame before; inf for none) -> True = keyframe."""
        skip = (self.known >= self.history and float(distance) <= self.threshold
                and (self.max_skips == 0 or self.run < self.max_skips))
        self.run = self.run + 1 if skip else 0
        self.known += 1
        return not skip


def extrapolate(history: np.ndarray) -> np.ndarray:
    """history (T, ...) oldest first, T >= 2 -> the next value ``h[-1] + (h[-1] - h[0]) / (T - 1)``."""
    h = np.asarray(history, np.float32)
    T = len(h)
    if T < 2:
        raise ValueError("extrapolation needs at least 2 past values")
    return h[-1] + (h[-1] - h[0]) / (T - 1)


def gate_distances(z_early: np.ndarray, gaze_early: np.ndarray, z_scale: np.ndarray, gaze_scale: np.ndarray,
                   starts: np.ndarray | None = None) -> np.ndarray:
    """Early estimates of N consecutive frames -> (N,) gate distance of each frame to the one before.

    ``starts`` marks frames that begin a new sequence (their distance is +inf: no previous frame)."""
    z = np.asarray(z_early, np.float32) / z_scale
    g = np.asarray(gaze_early, np.float32).reshape(len(z), -1) / np.asarray(gaze_scale, np.float32).reshape(-1)
    d = np.full(len(z), np.inf, np.float32)
    if len(z) > 1:
        dz = np.sqrt(((z[1:] - z[:-1]) ** 2).mean(1))
        dg = np.sqrt(((g[1:] - g[:-1]) ** 2).mean(1))
        d[1:] = np.maximum(dz, dg)
    if starts is not None:
        d[np.asarray(starts, bool)] = np.inf
    return d


def gate_schedule(distances: np.ndarray, threshold: float, history: int, max_skips: int,
                  starts: np.ndarray | None = None) -> np.ndarray:
    """:class:`LatexGate` over a whole sequence set: (N,) bool, True = keyframe (full encoder runs).

    ``starts`` marks frames that begin a new sequence (the gate is reset there)."""
    d = np.asarray(distances, np.float64).tolist()
    n = len(d)
    starts = [False] * n if starts is None else np.asarray(starts, bool).tolist()
    gate = LatexGate(threshold, history, max_skips)
    key = np.ones(n, bool)
    for t in range(n):
        if starts[t]:
            gate.reset()
        key[t] = gate.step(d[t])
    return key


def blind_schedule(n: int, ratio: float, history: int, starts: np.ndarray | None = None) -> np.ndarray:
    """Blind skipping, the baseline the gate must beat: an evenly spread ``ratio`` of each sequence's frames
    is extrapolated whatever happens in them (frame ``pos`` is skipped when floor((pos + 1) r) > floor(pos r),
    so ``ratio = 1/k`` skips exactly every k-th frame), never before ``history`` frames are known."""
    if not 0 <= ratio < 1:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")
    starts = np.zeros(n, bool) if starts is None else np.asarray(starts, bool)
    key = np.ones(n, bool)
    pos = 0
    for t in range(n):
        if starts[t]:
            pos = 0
        key[t] = not (pos >= history and np.floor((pos + 1) * ratio + 1e-9) > np.floor(pos * ratio + 1e-9))
        pos += 1
    return key


def apply_schedule(keyframe: np.ndarray, values: np.ndarray, history: int, starts: np.ndarray | None = None) -> np.ndarray:
    """What the receiver gets: ``values`` (N, ...) of the full encoder on keyframes, extrapolations
    of the last ``history`` *sent* values elsewhere."""
    v = np.asarray(values, np.float32)
    out = v.copy()
    starts = np.zeros(len(v), bool) if starts is None else np.asarray(starts, bool)
    seq_start = 0
    for t in range(len(v)):
        if starts[t]:
            seq_start = t
        if not keyframe[t]:
            if t - seq_start < history:
                raise ValueError(f"frame {t} is skipped with fewer than {history} known frames")
            out[t] = extrapolate(out[t - history : t])
    return out


def calibrate_threshold(distances: np.ndarray, target: float, history: int, max_skips: int,
                        starts: np.ndarray | None = None, iters: int = 40) -> float | None:
    """Threshold whose :func:`gate_schedule` skips ``target`` of the frames (bisection on training sequences);
    None when the gate cannot skip that much (``history`` and ``max_skips`` bound the ratio)."""
    finite = distances[np.isfinite(distances)]
    if target <= 0 or len(finite) == 0:
        return 0.0
    lo, hi = 0.0, float(finite.max()) * 1.01 + 1e-6
    ratio = lambda thr: 1.0 - gate_schedule(distances, thr, history, max_skips, starts).mean()
    if ratio(hi) < target:
        return None
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if ratio(mid) < target:
            lo = mid
        else:
            hi = mid
    return hi


def sequence_starts(session: np.ndarray, frame: np.ndarray) -> np.ndarray:
    """(N,) bool: True where a frame does not directly follow the previous one of the same session."""
    s, f = np.asarray(session), np.asarray(frame)
    starts = np.ones(len(s), bool)
    starts[1:] = (s[1:] != s[:-1]) | (f[1:] != f[:-1] + 1)
    return starts


# ---------------------------------------------------------------------------- runtime
def load_latex_settings(model_dir: str | Path) -> dict:
    path = Path(model_dir) / LATEX_FILE
    if not path.exists():
        raise FileNotFoundError(f"no LATEX early model in {model_dir} ({LATEX_FILE} missing); "
                                f"train one with `avcall train latex --model-dir {model_dir}`")
    return json.loads(path.read_text())


def resolve_threshold(settings: dict, cfg: LatexConfig) -> float:
    """The threshold ``cfg`` asks for: its own, else the calibrated one for its (default) skip ratio, interpolated
    in ``settings["calibration"]`` (the ``latex.json`` of the model directory)."""
    if cfg.threshold is not None:
        return float(cfg.threshold)
    target = cfg.target_skip_ratio
    cal = settings.get("calibration", {})
    key = calibration_key(cfg.history, cfg.max_skips)
    if key not in cal:
        raise ValueError(f"{LATEX_FILE} has no calibration for T={cfg.history}, max_skips={cfg.max_skips} "
                         f"(has {sorted(cal)}); give a threshold instead")
    pts = sorted((float(r), float(t)) for r, t in cal[key].items())
    ratios, thrs = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
    if target <= 0:
        return 0.0
    if target > ratios.max():
        raise ValueError(f"skip ratio {target} is beyond the calibrated range (max {ratios.max():.2f})")
    return float(np.interp(target, ratios, thrs))


class LatexEncoder:
    """Gated encoding for the sender, an :class:`encoder.runtime.Encoder`: ``encode(views)`` ->
    :class:`encoder.runtime.EncodeResult` with ``keyframe``, ``distance`` and ``encode_ms`` filled in.

    Wraps an encoder (:class:`encoder.runtime.HmcEncoder`) and the early model of its directory. ``threads``
    is the early model's intra-op thread count; ``clock`` (seconds) times ``encode_ms`` and the ``early``
    stage (tests inject one)."""

    def __init__(self, encoder, cfg: LatexConfig | None = None, *, threads: int = 1,
                 clock: Callable[[], float] = time.perf_counter):
        from avcore.onnx import inference_session

        self.encoder = encoder
        self.cfg = cfg if cfg is not None else LatexConfig()
        self.model_dir = Path(encoder.model_dir)
        self.input_size = int(encoder.input_size)
        self.latent_dim = int(encoder.latent_dim)
        self.identity = str(getattr(encoder, "identity", ""))
        self.settings = load_latex_settings(self.model_dir)
        self.threshold = resolve_threshold(self.settings, self.cfg)
        self.z_scale = np.asarray(self.settings["z_scale"], np.float32)
        self.gaze_scale = np.asarray(self.settings["gaze_scale"], np.float32)
        early = self.model_dir / EARLY_FILE
        if not early.is_file():
            raise FileNotFoundError(f"no LATEX early model in {self.model_dir} ({EARLY_FILE} missing); "
                                    f"train one with `avcall train latex --model-dir {self.model_dir}`")
        self.early = inference_session(early, threads)
        self.gate = LatexGate.from_config(self.cfg, self.threshold)
        self._clock = clock
        self.reset()

    def reset(self) -> None:
        """Forget the history (a new sequence: the next ``T`` frames are keyframes) and the counts."""
        self.gate.reset()
        reset = getattr(self.encoder, "reset", None)
        if reset is not None:
            reset()
        self._prev_early: tuple[np.ndarray, np.ndarray] | None = None
        self._hist: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = []
        self.frames = 0
        self.keyframes = 0

    @property
    def skip_ratio(self) -> float:
        """Share of frames since the last :meth:`reset` whose code was extrapolated."""
        return 1.0 - self.keyframes / self.frames if self.frames else 0.0

    def early_estimate(self, views: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z, g = self.early.run(["z", "gaze"], {"views": np.ascontiguousarray(views, np.uint8)[None]})
        return z[0], g[0]

    def encode(self, views: np.ndarray) -> EncodeResult:
        T = self.cfg.history
        t0 = self._clock()
        ze, ge = self.early_estimate(views)
        t_early = (self._clock() - t0) * 1e3
        if self._prev_early is None:
            d = math.inf
        else:
            d = float(gate_distances(np.stack([self._prev_early[0], ze]), np.stack([self._prev_early[1], ge]),
                                     self.z_scale, self.gaze_scale)[1])
        self._prev_early = (ze, ge)
        keyframe = self.gate.step(d)
        stage_ms = {"early": t_early}
        if keyframe:
            try:
                r = self.encoder.encode(views)
            except BaseException:
                self.reset()  # the gate counted a frame the history lacks: start the sequence over
                raise
            z, g, kp = r.z, r.gaze, r.keypoints
            stage_ms.update(r.stage_ms)
            self.keyframes += 1
        else:
            h = self._hist[-T:]
            z = extrapolate(np.stack([x[0] for x in h]))
            g = extrapolate(np.stack([x[1] for x in h]))
            kp = extrapolate(np.stack([x[2] for x in h])) if h[0][2] is not None else None
        self.frames += 1
        self._hist.append((z, g, kp))
        if len(self._hist) > T:
            del self._hist[0]
        return EncodeResult(z=np.asarray(z, np.float32), gaze=np.asarray(g, np.float32), keypoints=kp,
                            stage_ms=stage_ms, keyframe=keyframe, distance=d,
                            encode_ms=(self._clock() - t0) * 1e3)
