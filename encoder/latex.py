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
frames in a row (a bound on extrapolation drift).

This module never imports torch: the sender uses it through onnxruntime. The
files it reads sit in the encoder model directory next to the view models::

    DIR/early.onnx    views (B, 3, S, S) uint8 -> z (B, Z), gaze (B, 2, 2)
    DIR/latex.json    gate settings, standardisation scales, calibrated thresholds
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

LATEX_FILE = "latex.json"
EARLY_FILE = "early.onnx"


@dataclass
class LatexConfig:
    """Gate settings. ``threshold`` wins over ``skip_ratio`` when both are given."""

    history: int = 5
    """T: codes used by the extrapolation (>= 2)."""
    threshold: float | None = None
    """Gate distance above which a frame is a keyframe."""
    skip_ratio: float | None = None
    """Target share of skipped frames; the threshold is looked up in the calibration of ``latex.json``."""
    max_skips: int = 2
    """Most frames skipped in a row before a keyframe is forced (0 = no bound)."""

    def __post_init__(self):
        if self.history < 2:
            raise ValueError(f"history T must be >= 2, got {self.history}")
        if self.skip_ratio is not None and not 0 <= self.skip_ratio < 1:
            raise ValueError(f"skip_ratio must be in [0, 1), got {self.skip_ratio}")
        if self.threshold is not None and self.threshold < 0:
            raise ValueError(f"threshold must be >= 0, got {self.threshold}")
        if self.max_skips < 0:
            raise ValueError(f"max_skips must be >= 0, got {self.max_skips}")

    def to_dict(self) -> dict:
        return asdict(self)


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
    """The gate over a whole sequence: (N,) bool, True = keyframe (full encoder runs).

    Frame t is a keyframe when fewer than ``history`` frames of its sequence are known,
    when its distance exceeds ``threshold``, or when ``max_skips`` frames before it were skipped."""
    d = np.asarray(distances)
    n = len(d)
    starts = np.zeros(n, bool) if starts is None else np.asarray(starts, bool)
    key = np.ones(n, bool)
    known, run = 0, 0
    for t in range(n):
        if starts[t]:
            known, run = 0, 0
        skip = known >= history and d[t] <= threshold and (max_skips == 0 or run < max_skips)
        key[t] = not skip
        run = run + 1 if skip else 0
        known += 1
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
@dataclass
class GatedResult:
    """One frame through :class:`LatexEncoder`."""

    z: np.ndarray
    gaze: np.ndarray
    keypoints: np.ndarray | None
    keyframe: bool
    distance: float
    encode_ms: float
    """Encoder time actually spent on this frame: early model (+ full encoder on a keyframe)."""
    stage_ms: dict[str, float] = field(default_factory=dict)


def load_latex_settings(model_dir: str | Path) -> dict:
    path = Path(model_dir) / LATEX_FILE
    if not path.exists():
        raise FileNotFoundError(f"no LATEX early model in {model_dir} ({LATEX_FILE} missing); "
                                f"train one with `avcall train latex --model-dir {model_dir}`")
    return json.loads(path.read_text())


def resolve_threshold(settings: dict, cfg: LatexConfig) -> float:
    """The threshold ``cfg`` asks for: its own, else the calibrated one for its skip ratio (interpolated)."""
    if cfg.threshold is not None:
        return float(cfg.threshold)
    target = settings.get("default_skip_ratio", 0.3) if cfg.skip_ratio is None else cfg.skip_ratio
    cal = settings.get("calibration", {})
    key = f"T{cfg.history}_max{cfg.max_skips}"
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
    """Gated encoding for the sender: ``encode(views)`` -> :class:`GatedResult`.

    Wraps an :class:`encoder.runtime.HmcEncoder` and the early model of the same directory."""

    def __init__(self, encoder, cfg: LatexConfig | None = None, *, threads: int = 1):
        import onnxruntime as ort

        self.encoder = encoder
        self.cfg = cfg or LatexConfig()
        self.settings = load_latex_settings(encoder.model_dir)
        self.threshold = resolve_threshold(self.settings, self.cfg)
        self.z_scale = np.asarray(self.settings["z_scale"], np.float32)
        self.gaze_scale = np.asarray(self.settings["gaze_scale"], np.float32)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        self.early = ort.InferenceSession(str(Path(encoder.model_dir) / EARLY_FILE), so, providers=["CPUExecutionProvider"])
        self.input_size = encoder.input_size
        self.reset()

    def reset(self) -> None:
        """Forget the history (a new sequence: the next ``T`` frames are keyframes)."""
        self._prev_early: tuple[np.ndarray, np.ndarray] | None = None
        self._hist: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = []
        self._run = 0
        self.frames = 0
        self.keyframes = 0

    @property
    def skip_ratio(self) -> float:
        return 1.0 - self.keyframes / self.frames if self.frames else 0.0

    def early_estimate(self, views: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z, g = self.early.run(["z", "gaze"], {"views": np.ascontiguousarray(views, np.uint8)[None]})
        return z[0], g[0]

    def encode(self, views: np.ndarray) -> GatedResult:
        T = self.cfg.history
        t0 = time.perf_counter()
        ze, ge = self.early_estimate(views)
        t_early = (time.perf_counter() - t0) * 1e3
        if self._prev_early is None:
            d = float("inf")
        else:
            d = float(gate_distances(np.stack([self._prev_early[0], ze]), np.stack([self._prev_early[1], ge]),
                                     self.z_scale, self.gaze_scale)[1])
        self._prev_early = (ze, ge)
        skip = len(self._hist) >= T and d <= self.threshold and (self.cfg.max_skips == 0 or self._run < self.cfg.max_skips)
        stage_ms = {"early": t_early}
        if skip:
            h = self._hist[-T:]
            z = extrapolate(np.stack([x[0] for x in h]))
            g = extrapolate(np.stack([x[1] for x in h]))
            kp = extrapolate(np.stack([x[2] for x in h])) if h[0][2] is not None else None
            self._run += 1
        else:
            r = self.encoder.encode(views)
            z, g, kp = r.z, r.gaze, r.keypoints
            stage_ms.update(r.stage_ms)
            self._run = 0
            self.keyframes += 1
        self.frames += 1
        self._hist.append((z, g, kp))
        if len(self._hist) > T:
            del self._hist[0]
        return GatedResult(z=np.asarray(z, np.float32), gaze=np.asarray(g, np.float32), keypoints=kp, keyframe=not skip,
                           distance=d, encode_ms=(time.perf_counter() - t0) * 1e3, stage_ms=stage_ms)
