"""The codec-avatar VAE as the encoder sees it: ground-truth codes and a frozen decoder.

The ground-truth code of a frame is the VAE mean ``mu(vertices, front texture)``
of the decoder's (training-only) encoder; the frozen decoder ``D(z, view)`` turns
predicted codes into geometry and texture for the geometry, texture and rendering
losses and for evaluation. Loading the VAE from a model directory is the decoder
package's job (:func:`decoder.export.load_vae`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def load_vae(identity: str | None = None, model_dir: str | Path | None = None):
    """The frozen codec-avatar VAE of ``identity``: :func:`decoder.export.load_vae` (kept here for older imports)."""
    from decoder.export import load_vae as _load_vae

    return _load_vae(identity, model_dir)


def ground_truth_codes(vae_encoder, vertices: np.ndarray, enc_texture: np.ndarray, batch: int = 128) -> np.ndarray:
    """VAE means (N, Z) float32 for true meshes (N, V, 3) and front textures (N, t, t, 3) uint8."""
    import torch

    out = []
    with torch.no_grad():
        for a in range(0, len(vertices), batch):
            v = torch.from_numpy(np.asarray(vertices[a : a + batch], np.float32))
            t = torch.from_numpy(np.ascontiguousarray(enc_texture[a : a + batch])).permute(0, 3, 1, 2).float() / 255.0
            mu, _ = vae_encoder(v, t)
            out.append(mu.numpy())
    return np.concatenate(out).astype(np.float32)


def attach_codes(data: dict, vae) -> dict:
    """Add ``z_gt`` (the VAE means, :func:`ground_truth_codes`) to an HMC data dict (in place) and return it."""
    if "z_gt" not in data:
        data["z_gt"] = ground_truth_codes(vae.encoder, data["vertices"], data["enc_texture"])
    return data
