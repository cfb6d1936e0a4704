"""HMC training and test data for the encoders, rendered by the studio and cached as .npz.

Training frames come from many HMC sessions (each a different headset slip and
exposure) over the *train* segments of their performances; test frames are the
held-out *test* segments of performances recorded in held-out sessions.

Arrays of a cache (N frames; S = HMC view size, R = render-loss size, t = VAE texture size):

- ``views`` (N, 3, S, S) uint8: left eye, right eye, mouth
- ``gaze`` (N, 2, 2) float32, ``expression`` (N, E) float32
- ``keypoints`` (N, 3, 9, 2) float32 pixel (x, y); ``keypoints_visible`` (N, 3, 9) bool
- ``vertices`` (N, V, 3) float16, head frame (dm): the true mesh
- ``enc_texture`` (N, t, t, 3) uint8: front-view texture, the VAE encoder's input (ground-truth code)
- ``view_direction`` (N, 3) float32: one dome view direction per frame for the texture/render losses
- ``texture`` (N, R, R, 3) uint8: the true view-dependent texture for that direction, downsampled to R
- ``image`` (N, R, R, 3) uint8: the studio render from that direction
- ``uv_map`` (N, R, R, 3) float16: (u, v, face) of the true mesh from that direction
- ``coverage`` (R, R) bool: texels covered by the mesh
- ``test``, ``extreme``, ``asymmetric`` (N,) bool; ``session`` (N,) int32; ``frame`` (N,) int32
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass
class HmcDataConfig:
    """What frames an encoder dataset holds."""

    identity: str = "S1"
    train_sessions: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7)
    """Studio sessions (headset slip + exposure) rendered for training; 0 = the headset as designed."""
    test_sessions: tuple[int, ...] = (101, 102)
    """Held-out sessions whose held-out segments form the test set."""
    seconds_per_session: float = 16.0
    """Length of each training session's performance."""
    test_seconds_per_session: float = 40.0
    """Length of each held-out session's performance (only its test segments are kept)."""
    train_extreme_probability: float | None = None
    """Chance that a training segment is extreme (None = the studio's 0.12). A range-of-motion style
    capture (more extremes in training) is what lets encoders generalise to held-out extremes."""
    asymmetric_probability: float | None = None
    """Chance that a performance segment (training and held-out) is an asymmetric expression, one side of the
    face only (None = the studio's 0: none)."""
    fast_extreme_fraction: float | None = None
    """Share of the extreme segments (training and held-out) that are fast bursts of extremes with 30-50 ms
    onsets (None = the studio's 0)."""
    test_frames: str | None = None
    """Which frames of the held-out sessions form the test set: their held-out segments (None, "test") or every
    frame ("all": more test frames, so every kind of segment is in it)."""
    test_extreme_probability: float = 0.35
    """Chance that a held-out performance segment is extreme (training keeps the studio's rare 0.12),
    so the extreme subset of the test set is large enough to measure."""
    fps: float = 30.0
    """Performance frame rate (lower = more distinct expressions per frame rendered)."""
    render_size: int = 64
    """R: resolution of the texture and rendering losses."""
    enc_texture_size: int = 64
    """t: texture resolution the decoder's VAE encoder takes."""
    seed: int = 0

    def key(self) -> str:
        # Unset optional fields stay out of the key, so caches built before they existed stay valid.
        return repr(sorted((k, v) for k, v in asdict(self).items() if v is not None))


ROM_TRAIN_SESSIONS = 16
ROM_EXTREME_PROBABILITY = 0.35
ROM_ASYMMETRIC_PROBABILITY = 0.2
ROM_FAST_EXTREME_FRACTION = 0.5


def rom_data_config(identity: str, **overrides) -> HmcDataConfig:
    """The range-of-motion dataset: 16 training sessions, 35% extreme segments (half of them fast bursts) and 20%
    asymmetric-expression segments, in training and in the held-out test sessions; the test set is every frame of
    two held-out 60 s sessions. Table 1, the AVE-NAS search and the embedded encoders are trained and evaluated
    on it."""
    return HmcDataConfig(identity=identity, train_sessions=tuple(range(ROM_TRAIN_SESSIONS)),
                         train_extreme_probability=ROM_EXTREME_PROBABILITY,
                         asymmetric_probability=ROM_ASYMMETRIC_PROBABILITY,
                         fast_extreme_fraction=ROM_FAST_EXTREME_FRACTION, test_frames="all",
                         test_seconds_per_session=60.0, **overrides)


_DOME = ("front", "left", "right")


def _to_u8(x):
    return np.clip(np.rint(np.asarray(x) * 255.0), 0, 255).astype(np.uint8)


def performance_config(cfg: HmcDataConfig, fps: float, split: str) -> "PerformanceConfig":
    """The studio performance settings of ``split`` ("train", "test") of ``cfg``."""
    from capture.performance import PerformanceConfig

    pcfg = PerformanceConfig(fps=fps)
    xp = cfg.test_extreme_probability if split == "test" else cfg.train_extreme_probability
    if xp is not None:
        pcfg.extreme_probability = xp
    if cfg.asymmetric_probability is not None:
        pcfg.asymmetric_probability = cfg.asymmetric_probability
    if cfg.fast_extreme_fraction is not None:
        pcfg.fast_extreme_fraction = cfg.fast_extreme_fraction
    return pcfg


def render_session(identity: str, session: int, perf_seed: int, seconds: float, fps: float, split: str, cfg: HmcDataConfig,
                   progress: bool = False, hmc_size: int = 192, performance: "PerformanceConfig | None" = None) -> dict:
    """Frames of one session's performance rendered for ``split`` ("train"/"test"/"all"), with every target.

    ``performance``: the performance settings (default :func:`performance_config` of ``cfg`` for ``split``);
    the test split keeps the frames ``cfg.test_frames`` names (default its held-out segments);
    ``hmc_size`` other than 192 renders smaller HMC views (tests)."""
    import cv2
    from avcore.progress import progress as progress_bar

    from capture.performance import generate_performance
    from capture.rig import HmcRigConfig, view_direction
    from capture.look import CODE_LOOK
    from capture.studio import Studio
    from decoder.data import make_rasterizer

    pcfg = performance or performance_config(cfg, fps, split)
    perf = generate_performance(perf_seed, seconds, pcfg)
    idx = perf.split((cfg.test_frames or "test") if split == "test" else split)
    studio = Studio(identity, session=session, dome_size=2 * cfg.render_size, rig=HmcRigConfig(size=hmc_size),
                    look=CODE_LOOK)  # codes and the encoders' data: the plain look, whatever the studio's default
    rast = make_rasterizer(studio, size=cfg.render_size)
    R, t = cfg.render_size, cfg.enc_texture_size
    n, V = len(idx), studio.head.num_vertices
    S = studio.rig_config.size
    out = {
        "views": np.zeros((n, 3, S, S), np.uint8), "gaze": perf.gaze[idx].astype(np.float32),
        "expression": perf.expression[idx].astype(np.float32),
        "keypoints": np.zeros((n, 3, 9, 2), np.float32), "keypoints_visible": np.zeros((n, 3, 9), bool),
        "vertices": np.zeros((n, V, 3), np.float16), "enc_texture": np.zeros((n, t, t, 3), np.uint8),
        "view_direction": np.zeros((n, 3), np.float32), "texture": np.zeros((n, R, R, 3), np.uint8),
        "image": np.zeros((n, R, R, 3), np.uint8), "uv_map": np.zeros((n, R, R, 3), np.float16),
        "test": perf.test[idx].copy(), "extreme": perf.extreme[idx].copy(), "asymmetric": perf.asymmetric[idx].copy(),
        "session": np.full(n, session, np.int32), "frame": idx.astype(np.int32),
    }
    coverage = np.zeros((R, R), bool)
    rng = np.random.default_rng(perf_seed * 7 + session)
    for j, i in enumerate(progress_bar(idx, desc=f"{identity} session {session} ({split})", disable=not progress, leave=False)):
        e, g = perf.expression[i], perf.gaze[i]
        views, gt = studio.hmc_frame(e, g, t=float(perf.t[i]), frame_index=int(i))
        out["views"][j] = views
        out["keypoints"][j] = gt["keypoints"]
        out["keypoints_visible"][j] = gt["keypoints_visible"]
        out["vertices"][j] = gt["vertices"]
        tex, cov = studio.render_texture(e, g, "front")
        out["enc_texture"][j] = _to_u8(cv2.resize(tex, (t, t), interpolation=cv2.INTER_AREA))
        d = view_direction(_DOME[j % 3]) if split == "test" else view_direction(_DOME[rng.integers(0, 3)])
        out["view_direction"][j] = d
        tex_d, cov_d = studio.render_texture(e, g, d)
        out["texture"][j] = _to_u8(cv2.resize(tex_d, (R, R), interpolation=cv2.INTER_AREA))
        coverage |= cv2.resize(cov_d.astype(np.uint8), (R, R), interpolation=cv2.INTER_NEAREST).astype(bool)
        out["image"][j] = studio.render_view(e, g, d, size=R)
        out["uv_map"][j] = rast.render_uv(gt["vertices"], g, d, R)
    out["coverage"] = coverage
    rast.release()
    studio.release()
    return out


def _concat(parts: list[dict]) -> dict:
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k != "coverage"}
    out["coverage"] = np.logical_or.reduce([p["coverage"] for p in parts])
    return out


def _job(args):
    identity, session, perf_seed, seconds, fps, split, cfg_dict = args
    cfg = HmcDataConfig(**cfg_dict)
    return render_session(identity, session, perf_seed, seconds, fps, split, cfg)


def build_hmc_data(cfg: HmcDataConfig, *, workers: int = 1, progress: bool = True, splits=("train", "test")) -> tuple[dict, dict]:
    """(train, test) dicts of arrays (see the module docstring); a split not in ``splits`` comes back None."""
    from avcore.progress import progress as progress_bar

    jobs = []
    d = asdict(cfg)
    for k, s in enumerate(cfg.train_sessions if "train" in splits else ()):
        jobs.append((cfg.identity, s, cfg.seed * 1000 + k + 1, cfg.seconds_per_session, cfg.fps, "train", d))
    for k, s in enumerate(cfg.test_sessions if "test" in splits else ()):
        jobs.append((cfg.identity, s, cfg.seed * 1000 + 500 + k, cfg.test_seconds_per_session, cfg.fps, "test", d))
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            parts = list(progress_bar(pool.imap(_job, jobs), total=len(jobs), desc=f"HMC data {cfg.identity}", unit="session",
                              disable=not progress))
    else:
        parts = [_job(j) for j in progress_bar(jobs, desc=f"HMC data {cfg.identity}", unit="session", disable=not progress)]
    ntrain = len(cfg.train_sessions) if "train" in splits else 0
    return (_concat(parts[:ntrain]) if ntrain else None), (_concat(parts[ntrain:]) if "test" in splits else None)


def read_hmc_cache(path: str | Path, cfg: HmcDataConfig) -> tuple[dict | None, dict | None] | None:
    """(train, test) from the cache ``path`` if it was built with ``cfg`` (a split it lacks is None), else None."""
    path = Path(path)
    if not path.exists():
        return None
    with np.load(path) as z:
        if str(z["key"]) != cfg.key():
            return None
        train = {k[6:]: z[k] for k in z.files if k.startswith("train_")}
        test = {k[5:]: z[k] for k in z.files if k.startswith("test_")}
    return train or None, test or None


def read_test_split(path: str | Path) -> dict:
    """The ``test`` split of the HMC data cache ``path``, whatever settings built its training split.

    Raises FileNotFoundError if the file is missing and ValueError if it holds no test split."""
    from avcore.errors import UsageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"HMC data cache {path} missing")
    with np.load(path) as z:
        test = {k[5:]: z[k] for k in z.files if k.startswith("test_")}
    if not test or "views" not in test:
        raise UsageError(f"{path} holds no test split (test_views missing)")
    return test


def load_or_build_hmc_data(path: str | Path, cfg: HmcDataConfig, *, workers: int = 1, progress: bool = True,
                           splits=("train", "test")) -> tuple[dict | None, dict | None]:
    """Load ``path`` (``<path>`` holds train_*, test_* arrays) if it was built with ``cfg`` and holds ``splits``,
    else build those splits and save them there."""
    path = Path(path)
    cached = read_hmc_cache(path, cfg)
    if cached is not None and all(part is not None for part, s in zip(cached, ("train", "test")) if s in splits):
        return cached
    train, test = build_hmc_data(cfg, workers=workers, progress=progress, splits=splits)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, key=np.array(cfg.key()), **{f"train_{k}": v for k, v in (train or {}).items()},
             **{f"test_{k}": v for k, v in (test or {}).items()})
    tmp.replace(path)
    return train, test
