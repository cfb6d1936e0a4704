"""Training and held-out data of the neural renderer G and the warp network W.

**Clips** (training, :func:`build_renderer_data`): display frame t and the ``future`` frames after it at the display
rate (``fps``, 60 Hz), as W sees them. Expression and gaze come from a studio performance sampled at ``fps``
(frequent fast extremes and asymmetric segments included); the viewer's direction starts anywhere within yaw ±60°,
pitch ±30° and turns at a random angular speed up to ``max_view_speed_dps`` (a head turn in VR). Each frame's code
is the VAE mean of the true frame (what a perfect encoder would send).

For frame t, the decoded avatar's buffers at G's working size (``raster``: the decoder's texture rasterized,
``uv``: (u, v, face)) and the studio's render (``target``); for every later frame k = 1..future, the UV map of
frame t's mesh from frame k's view (``uv_k``: what the warp path rasterizes: no decode) and the studio's render
(``target_k``), with the view, code and gaze of each frame.

Arrays (N clips, S = ``size``, K = ``future``): ``raster`` (N, S, S, 3) uint8, ``uv`` (N, 1 + K, S, S, 3) float16,
``target`` (N, 1 + K, S, S, 3) uint8, ``view`` (N, 1 + K, 3), ``z`` (N, 1 + K, Z), ``gaze`` (N, 1 + K, 2, 2)
float32; index 0 along the second axis is frame t.

**Sequences** (held-out evaluation, :func:`build_sequence_data`): every display tick of a continuous performance
with a smooth viewer orbit; per tick the true expression's code, the view, the studio's render and the face mask.

Both are cached as .npz (:func:`avcore.cache.save_keyed_npz`) under a key of the settings, the decoder and the
studio's look.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avcore.config import ConfigDict


@dataclass
class RendererDataConfig(ConfigDict):
    identity: str = "S1"
    clips: int = 600
    """Training clips (frame t and its ``future`` frames)."""
    future: int = 2
    """Display frames after t that W learns to produce from t's cache (1x and 2x warp)."""
    fps: float = 60.0
    """Display rate: the time between the frames of a clip."""
    max_view_speed_dps: float = 150.0
    """Fastest viewer head turn, degrees per second."""
    size: int = 128
    """G's working resolution."""
    seed: int = 7
    """Performance and view seed (held-out data uses 1_000_003)."""


def _model_dir_and_key(cfg: ConfigDict, decoder_dir) -> tuple[Path, str]:
    """The decoder directory and the cache key of ``cfg``'s data: its settings, the decoder (its directory and a hash
    of its ONNX model, so a decoder retrained in place is not served stale clips) and the studio's look (the probe's
    studio renders the truth in :data:`capture.look.DEFAULT_LOOK`)."""
    import hashlib

    from capture.look import DEFAULT_LOOK
    from decoder.runtime import default_model_dir

    model_dir = Path(decoder_dir) if decoder_dir else default_model_dir(cfg.identity)
    onnx = model_dir / "decoder.onnx"
    weights = hashlib.sha1(onnx.read_bytes()).hexdigest() if onnx.is_file() else "no decoder.onnx"
    key = (type(cfg).__name__, sorted(cfg.to_dict().items()), str(model_dir.resolve()), weights, repr(DEFAULT_LOOK))
    return model_dir, repr(key)


def _probe(cfg: ConfigDict, model_dir: Path):
    from decoder.evaluate import HeldOutProbe

    return HeldOutProbe(model_dir, cfg.identity, threads=1, size=cfg.size)


def _rotate(view: np.ndarray, yaw: float, pitch: float) -> np.ndarray:
    """A unit direction turned by ``yaw`` / ``pitch`` radians, pitch kept within ±60°."""
    from capture.rig import direction_from_angles

    y = np.arctan2(view[0], view[2]) + yaw
    p = np.clip(np.arcsin(np.clip(view[1], -1, 1)) + pitch, -np.pi / 3, np.pi / 3)
    return direction_from_angles(y, p).astype(np.float32)


def performance_for(cfg, seconds: float, seed: int):
    """The studio performance clips and sequences are cut from: at the display rate, a third of the segments
    extreme (half of those fast), a fifth asymmetric."""
    from capture.performance import PerformanceConfig, generate_performance

    return generate_performance(seed, seconds, PerformanceConfig(fps=cfg.fps, extreme_probability=0.3,
                                                                  fast_extreme_fraction=0.5, asymmetric_probability=0.2))


def build_renderer_data(cfg: RendererDataConfig, *, decoder_dir: str | Path | None = None, cache: Path | None = None,
                        progress: bool = True) -> dict:
    """The clips of ``cfg`` (module docstring), from ``decoder_dir`` (default: the identity's embedded decoder)."""
    from avcore.cache import load_keyed_npz, save_keyed_npz
    from avcore.progress import progress as progress_bar
    from decoder.data import sample_view_directions

    model_dir, key = _model_dir_and_key(cfg, decoder_dir)
    cached = load_keyed_npz(cache, key)
    if cached is not None:
        return cached
    probe = _probe(cfg, model_dir)
    try:
        K, n, S = cfg.future, cfg.clips, cfg.size
        rng = np.random.default_rng(cfg.seed)
        perf = performance_for(cfg, max(4.0, n * 0.25), cfg.seed)
        starts = rng.integers(0, len(perf) - K, n)
        views0 = sample_view_directions(n, cfg.seed + 1)
        speed = np.radians(rng.uniform(0, cfg.max_view_speed_dps, n)) / cfg.fps  # radians per display frame
        heading = rng.uniform(0, 2 * np.pi, n)
        Z = probe.decoder.latent_dim
        out = {"raster": np.zeros((n, S, S, 3), np.uint8), "uv": np.zeros((n, 1 + K, S, S, 3), np.float16),
               "target": np.zeros((n, 1 + K, S, S, 3), np.uint8), "view": np.zeros((n, 1 + K, 3), np.float32),
               "z": np.zeros((n, 1 + K, Z), np.float32), "gaze": np.zeros((n, 1 + K, 2, 2), np.float32)}
        for i in progress_bar(range(n), desc=f"renderer clips {cfg.identity}", unit="clip", disable=not progress):
            for k in range(1 + K):
                f = starts[i] + k
                expr, gaze = perf.expression[f].astype(np.float32), perf.gaze[f].astype(np.float32)
                view = _rotate(views0[i], speed[i] * k * np.cos(heading[i]), speed[i] * k * np.sin(heading[i]))
                out["view"][i, k], out["gaze"][i, k] = view, gaze
                out["z"][i, k] = probe.code(expr, gaze)
                out["target"][i, k] = probe.truth(expr, gaze, view)
                if k == 0:
                    vertices, texture = probe.decoder.decode(out["z"][i, 0], view)
                    out["raster"][i] = probe.rast.render(vertices, np.clip(texture, 0, 1), gaze, view)
                out["uv"][i, k] = probe.rast.render_uv(vertices, gaze, view, S)
    finally:
        probe.close()
    if cache is not None:
        save_keyed_npz(cache, key, out)
    return out


@dataclass
class SequenceDataConfig(ConfigDict):
    identity: str = "S1"
    seconds: float = 4.0
    """Length of each held-out sequence."""
    sequences: int = 2
    fps: float = 60.0
    """Display rate (the viewer's direction and the truth are sampled every tick)."""
    orbit_yaw_deg: float = 40.0
    """Viewer orbit: yaw amplitude (peak angular speed = 2π · amplitude / period)."""
    orbit_period_s: float = 3.0
    size: int = 128
    seed: int = 1_000_003


def sequence_views(cfg: SequenceDataConfig, n: int, phase: float) -> np.ndarray:
    """(n, 3) viewer directions of a held-out sequence: a yaw orbit with a slower pitch wobble."""
    from capture.rig import direction_from_angles

    t = np.arange(n) / cfg.fps
    yaw = np.radians(cfg.orbit_yaw_deg) * np.sin(2 * np.pi * t / cfg.orbit_period_s + phase)
    pitch = np.radians(12.0) * np.sin(2 * np.pi * t / (1.43 * cfg.orbit_period_s) + 2 * phase)
    return np.stack([direction_from_angles(a, b) for a, b in zip(yaw, pitch)]).astype(np.float32)


def build_sequence_data(cfg: SequenceDataConfig, *, decoder_dir: str | Path | None = None, cache: Path | None = None,
                        progress: bool = True) -> dict:
    """Held-out display-rate sequences: ``z`` (N, T, Z), ``gaze`` (N, T, 2, 2), ``view`` (N, T, 3), ``target``
    (N, T, S, S, 3) uint8, ``extreme`` / ``asymmetric`` (N, T) bool."""
    from avcore.cache import load_keyed_npz, save_keyed_npz
    from avcore.progress import progress as progress_bar

    model_dir, key = _model_dir_and_key(cfg, decoder_dir)
    cached = load_keyed_npz(cache, key)
    if cached is not None:
        return cached
    probe = _probe(cfg, model_dir)
    try:
        T, N, S = int(round(cfg.seconds * cfg.fps)), cfg.sequences, cfg.size
        out = {"z": np.zeros((N, T, probe.decoder.latent_dim), np.float32), "gaze": np.zeros((N, T, 2, 2), np.float32),
               "view": np.zeros((N, T, 3), np.float32), "target": np.zeros((N, T, S, S, 3), np.uint8),
               "extreme": np.zeros((N, T), bool), "asymmetric": np.zeros((N, T), bool)}
        bar = progress_bar(total=N * T, desc=f"held-out sequences {cfg.identity}", unit="frame", disable=not progress)
        for s in range(N):
            perf = performance_for(cfg, cfg.seconds + 1.0, cfg.seed + s)
            start = int(cfg.fps * 0.5)
            out["view"][s] = sequence_views(cfg, T, phase=1.7 * s)
            for t in range(T):
                expr, gaze = perf.expression[start + t].astype(np.float32), perf.gaze[start + t].astype(np.float32)
                out["gaze"][s, t] = gaze
                out["z"][s, t] = probe.code(expr, gaze)
                out["target"][s, t] = probe.truth(expr, gaze, out["view"][s, t])
                out["extreme"][s, t], out["asymmetric"][s, t] = perf.extreme[start + t], perf.asymmetric[start + t]
                bar.update(1)
        bar.close()
    finally:
        probe.close()
    if cache is not None:
        save_keyed_npz(cache, key, out)
    return out


def clip_tensors(data: dict, idx) -> dict:
    """Torch tensors of the clips ``idx``: ``raster`` (B, 3, S, S) in [0, 1]; ``uv`` / ``target`` (B, 1 + K, 3, S, S)
    ([0, 1] for targets); ``view`` (B, 1 + K, 3), ``z`` (B, 1 + K, Z), ``gaze`` (B, 1 + K, 4)."""
    import torch

    idx = np.asarray(idx)
    img = lambda a: torch.from_numpy(np.ascontiguousarray(a[idx])).float()  # noqa: E731
    return {"raster": img(data["raster"]).permute(0, 3, 1, 2) / 255.0,
            "uv": img(data["uv"]).permute(0, 1, 4, 2, 3),
            "target": img(data["target"]).permute(0, 1, 4, 2, 3) / 255.0,
            "view": img(data["view"]), "z": img(data["z"]),
            "gaze": img(data["gaze"]).reshape(len(idx), data["gaze"].shape[1], 4)}
