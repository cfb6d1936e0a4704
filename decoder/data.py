"""Dome training data for the decoder, sampled from the synthetic studio and cached as .npz.

One sample = one pose (expression, gaze) seen from ``views_per_pose`` random view
directions. Arrays in the cache (N poses, K views):

- ``expression`` (N, E) float32, ``gaze`` (N, 2, 2) float32
- ``vertices`` (N, V, 3) float32, head frame (dm)
- ``enc_texture`` (N, t, t, 3) uint8: front-view texture at the encoder's resolution
- ``view_direction`` (N, K, 3) float32, unit, head -> viewer
- ``texture`` (N, K, T, T, 3) uint8: view-dependent texture (row 0 = v 0)
- ``image`` (N, K, S, S, 3) uint8: studio render at the image-loss size
- ``uv_map`` (N, K, S, S, 3) float16: (u, v, face) of the GT mesh from that view
- ``coverage`` (T, T) bool: texels covered by the mesh
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from avcore.cache import load_keyed_npz, save_keyed_npz

from .config import DecoderConfig, TrainConfig

MAX_VIEW_YAW = np.radians(60.0)
MAX_VIEW_PITCH = np.radians(30.0)


def sample_poses(n: int, seed: int, num_expressions: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Random sparse expressions in [0, 1] (1-4 active, some at the extremes) and gaze.

    Returns expression (n, E) float32 and gaze (n, 2, 2) float32. Every 10th pose is
    a neutral-ish pose with only gaze.
    """
    rng = np.random.default_rng(seed)
    expr = np.zeros((n, num_expressions), np.float32)
    for i in range(n):
        if i % 10 == 9:
            continue
        k = rng.integers(1, 5)
        idx = rng.choice(num_expressions, k, replace=False)
        w = rng.uniform(0, 1, k)
        w[rng.uniform(size=k) < 0.3] = 1.0  # extremes
        expr[i, idx] = w
    yaw = rng.uniform(-0.55, 0.55, n)
    pitch = rng.uniform(-0.4, 0.4, n)
    gaze = np.stack([yaw, pitch], 1)[:, None, :].repeat(2, 1)
    gaze += rng.normal(0, 0.03, gaze.shape) * (rng.uniform(size=(n, 1, 1)) < 0.3)  # occasional vergence
    gaze[..., 0] = np.clip(gaze[..., 0], -0.55, 0.55)
    gaze[..., 1] = np.clip(gaze[..., 1], -0.4, 0.4)
    return expr, gaze.astype(np.float32)


def sample_view_directions(n: int, seed: int) -> np.ndarray:
    """(n, 3) unit view directions, yaw within ±60°, pitch within ±30°."""
    rng = np.random.default_rng(seed)
    yaw = rng.uniform(-MAX_VIEW_YAW, MAX_VIEW_YAW, n)
    pitch = rng.uniform(-MAX_VIEW_PITCH, MAX_VIEW_PITCH, n)
    return np.stack([np.sin(yaw) * np.cos(pitch), np.sin(pitch), np.cos(yaw) * np.cos(pitch)], 1).astype(np.float32)


def make_rasterizer(studio, *, size: int = 512, texture_size: int = 256):
    """An :class:`renderer.rasterizer.AvatarRasterizer` sharing the studio's GL context and eye model."""
    from capture.eyes import eyeball_mesh
    from renderer.rasterizer import AvatarRasterizer

    h = studio.head
    return AvatarRasterizer(h.uvs, h.triangles, eyeball_mesh(h.eye_radius), h.eye_centres, studio.eye_texture,
                            size=size, texture_size=texture_size, ctx=studio.ctx)


def build_dataset(identity: str, n: int, seed: int, dcfg: DecoderConfig, tcfg: TrainConfig, *, progress: bool = True,
                  workers: int = 1) -> dict:
    """Render ``n`` poses of ``identity`` (see the module docstring for the arrays).

    ``workers`` > 1 splits the poses over that many processes (each its own GL context).
    """
    if workers > 1 and n >= 2 * workers:
        return _build_parallel(identity, n, seed, dcfg, tcfg, workers)
    return _build_range(identity, n, seed, dcfg, tcfg, 0, n, progress)


def _build_parallel(identity, n, seed, dcfg, tcfg, workers):
    import multiprocessing as mp

    bounds = np.linspace(0, n, workers + 1).astype(int)
    jobs = [(identity, n, seed, dcfg.to_dict(), tcfg.to_dict(), int(a), int(b), w == 0) for w, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))]
    with mp.get_context("spawn").Pool(workers) as pool:
        parts = pool.starmap(_build_range_job, jobs)
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k != "coverage"}
    out["coverage"] = np.logical_or.reduce([p["coverage"] for p in parts])
    return out


def _build_range_job(identity, n, seed, dcfg, tcfg, start, stop, progress):
    return _build_range(identity, n, seed, DecoderConfig.from_dict(dcfg), TrainConfig.from_dict(tcfg), start, stop, progress)


def _build_range(identity: str, n: int, seed: int, dcfg: DecoderConfig, tcfg: TrainConfig, start: int, stop: int,
                 progress: bool) -> dict:
    import cv2
    from avcore.progress import progress as progress_bar

    from capture.look import CODE_LOOK
    from capture.studio import Studio

    studio = Studio(identity)  # the colour cameras' look: the decoder's textures and images
    code_studio = Studio(identity, look=CODE_LOOK, ctx=studio.ctx)  # the encoder's input texture: codes keep meaning
    rast = make_rasterizer(studio)
    K, S, t = tcfg.views_per_pose, tcfg.image_size, dcfg.encoder_texture_size
    expr, gaze = sample_poses(n, seed)
    views = sample_view_directions(n * K, seed + 7).reshape(n, K, 3)
    expr, gaze, views = expr[start:stop], gaze[start:stop], views[start:stop]
    n = stop - start
    V, T = studio.head.num_vertices, dcfg.texture_size
    out = {
        "expression": expr, "gaze": gaze, "view_direction": views,
        "vertices": np.zeros((n, V, 3), np.float32),
        "enc_texture": np.zeros((n, t, t, 3), np.uint8),
        "texture": np.zeros((n, K, T, T, 3), np.uint8),
        "image": np.zeros((n, K, S, S, 3), np.uint8),
        "uv_map": np.zeros((n, K, S, S, 3), np.float16),
    }
    coverage = None
    for i in progress_bar(range(n), desc=f"dome data {identity}", disable=not progress, mininterval=2.0):
        st = studio.pose(expr[i], gaze[i])
        out["vertices"][i] = st.vertices
        tex, cov = code_studio.render_texture(expr[i], gaze[i], "front")
        cov = _resized_texture(cov.astype(np.uint8), T, cv2.INTER_NEAREST).astype(bool)
        coverage = cov if coverage is None else coverage | cov
        out["enc_texture"][i] = to_uint8(cv2.resize(tex, (t, t), interpolation=cv2.INTER_AREA))
        for k in range(K):
            d = views[i, k]
            tex, _ = studio.render_texture(expr[i], gaze[i], d)
            out["texture"][i, k] = to_uint8(_resized_texture(tex, T))
            out["image"][i, k] = studio.render_view(expr[i], gaze[i], d, size=S)
            out["uv_map"][i, k] = rast.render_uv(st.vertices, gaze[i], d, S)
    out["coverage"] = coverage
    code_studio.release()
    studio.release()
    return out


def _resized_texture(tex: np.ndarray, size: int, interpolation: int | None = None) -> np.ndarray:
    """The studio's texture (or coverage) at the decoder's ``texture_size``: unchanged at the studio's own size,
    area-averaged down for a smaller decoder texture, bilinear up for a larger one."""
    import cv2

    if tex.shape[0] == size:
        return tex
    if interpolation is None:
        interpolation = cv2.INTER_AREA if size < tex.shape[0] else cv2.INTER_LINEAR
    return cv2.resize(tex, (size, size), interpolation=interpolation)


def to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.asarray(x) * 255.0), 0, 255).astype(np.uint8)


def load_or_build(path: Path, identity: str, n: int, seed: int, dcfg: DecoderConfig, tcfg: TrainConfig) -> dict:
    """Load the cache at ``path`` if it matches (identity, n, seed, sizes, the studio's look), else build and save it."""
    from capture.look import DEFAULT_LOOK

    path = Path(path)
    key = f"{identity}|{n}|{seed}|{tcfg.views_per_pose}|{tcfg.image_size}|{dcfg.texture_size}|{dcfg.encoder_texture_size}"
    if not DEFAULT_LOOK.is_plain:  # the colour look changes every texture and image (not the codes' input)
        key += f"|look={DEFAULT_LOOK.key()}"
    cached = load_keyed_npz(path, key)
    if cached is not None:
        return cached
    data = build_dataset(identity, n, seed, dcfg, tcfg, workers=max(1, tcfg.threads))
    save_keyed_npz(path, key, data)
    return data
