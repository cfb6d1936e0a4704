"""Training and held-out data of the neural renderer G: the receiver's rasterized buffers and the studio's truth.

One sample = a pose (expression, gaze), its code (the VAE mean of the true frame: what a perfect encoder would
send), a view direction (yaw within ±60°, pitch within ±30°), the decoded avatar's buffers from that view at G's
working size (``raster``: the decoder's texture rasterized, ``uv``: (u, v, face)) and the studio's render from
the same view (``target``). Cached as .npz (:func:`avcore.cache.save_keyed_npz`) under a key of the settings.

Arrays (N samples, S = ``size``): ``raster`` (N, S, S, 3) uint8, ``uv`` (N, S, S, 3) float16, ``target``
(N, S, S, 3) uint8, ``view`` (N, 3) float32, ``z`` (N, Z) float32, ``gaze`` (N, 2, 2) float32.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avcore.config import ConfigDict


@dataclass
class RendererDataConfig(ConfigDict):
    identity: str = "S1"
    poses: int = 400
    views_per_pose: int = 2
    size: int = 128
    """G's working resolution."""
    seed: int = 7
    """Pose and view seed (the decoder's held-out evaluation uses 1_000_003)."""


def build_renderer_data(cfg: RendererDataConfig, *, decoder_dir: str | Path | None = None, cache: Path | None = None,
                        progress: bool = True) -> dict:
    """The samples of ``cfg`` (module docstring), from ``decoder_dir`` (default: the identity's embedded decoder)."""
    from avcore.cache import load_keyed_npz, save_keyed_npz
    from avcore.progress import progress as progress_bar
    from decoder.data import sample_poses, sample_view_directions
    from decoder.evaluate import HeldOutProbe
    from decoder.runtime import default_model_dir

    model_dir = Path(decoder_dir) if decoder_dir else default_model_dir(cfg.identity)
    key = repr((sorted(cfg.to_dict().items()), str(model_dir.resolve())))
    cached = load_keyed_npz(cache, key)
    if cached is not None:
        return cached
    expr, gaze = sample_poses(cfg.poses, cfg.seed)
    views = sample_view_directions(cfg.poses * cfg.views_per_pose, cfg.seed + 1)
    n, S = cfg.poses * cfg.views_per_pose, cfg.size
    probe = HeldOutProbe(model_dir, cfg.identity, threads=1, size=S)
    out = {"raster": np.zeros((n, S, S, 3), np.uint8), "uv": np.zeros((n, S, S, 3), np.float16),
           "target": np.zeros((n, S, S, 3), np.uint8), "view": views,
           "z": np.zeros((n, probe.decoder.latent_dim), np.float32), "gaze": np.zeros((n, 2, 2), np.float32)}
    try:
        for p in progress_bar(range(cfg.poses), desc=f"renderer data {cfg.identity}", unit="pose", disable=not progress):
            z = probe.code(expr[p], gaze[p])
            for k in range(cfg.views_per_pose):
                j = p * cfg.views_per_pose + k
                out["raster"][j], out["uv"][j] = probe.render_buffers(z, gaze[p], views[j])
                out["target"][j] = probe.truth(expr[p], gaze[p], views[j])
                out["z"][j], out["gaze"][j] = z, gaze[p]
    finally:
        probe.close()
    if cache is not None:
        save_keyed_npz(cache, key, out)
    return out


def to_tensors(data: dict, idx) -> tuple:
    """(raster, uv, view, target) torch tensors of the samples ``idx`` (images (B, C, S, S) in [0, 1])."""
    import torch

    img = lambda a: torch.from_numpy(np.ascontiguousarray(a[idx])).permute(0, 3, 1, 2).float()  # noqa: E731
    return (img(data["raster"]) / 255.0, img(data["uv"].astype(np.float32)), torch.from_numpy(data["view"][idx]),
            img(data["target"]) / 255.0)
