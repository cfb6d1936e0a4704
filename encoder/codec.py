"""The codec-avatar VAE as the encoder sees it: ground-truth codes and a frozen decoder.

The ground-truth code of a frame is the VAE mean ``mu(vertices, front texture)``
of the decoder's (training-only) encoder; the frozen decoder ``D(z, view)`` turns
predicted codes into geometry and texture for the geometry, texture and rendering
losses and for evaluation.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

DECODER_MODELS = Path(__file__).resolve().parent.parent / "decoder" / "models"


def decoder_dir(identity: str) -> Path:
    return DECODER_MODELS / identity


def _candidate_dirs(identity: str) -> list[Path]:
    root = DECODER_MODELS.parent.parent
    return [decoder_dir(identity), root / "out" / f"decoder_{identity}"]


def load_vae(identity: str | None = None, model_dir: str | Path | None = None):
    """The trained :class:`decoder.model.CodecAvatarVAE` of ``identity`` (eval mode, frozen).

    Reads, in order: a decoder model directory (``weights.pt`` + ``encoder.pt``, as
    :func:`decoder.export.save_model` writes them with ``encoder=``), or a training checkpoint
    (``checkpoint.pt``, state_dicts + configs). Without ``model_dir`` it looks in
    ``decoder/models/IDENTITY`` then ``out/decoder_IDENTITY``.
    """
    import torch

    from decoder.config import DecoderConfig
    from decoder.model import CodecAvatarVAE

    dirs = [Path(model_dir)] if model_dir is not None else _candidate_dirs(identity)
    for d in dirs:
        if (d / "weights.pt").exists() and (d / "encoder.pt").exists():
            dec = torch.load(d / "weights.pt", map_location="cpu", weights_only=True)
            enc = torch.load(d / "encoder.pt", map_location="cpu", weights_only=True)
            vae = CodecAvatarVAE(DecoderConfig.from_dict(dec["config"]))
            vae.decoder.load_state_dict({k: v.float() for k, v in dec["decoder"].items()})
            vae.encoder.load_state_dict({k: v.float() for k, v in enc["encoder"].items()})
            break
        if (d / "checkpoint.pt").exists():
            ck = torch.load(d / "checkpoint.pt", map_location="cpu", weights_only=True)
            vae = CodecAvatarVAE(DecoderConfig.from_dict(ck["decoder_config"]))
            vae.load_state_dict(ck["model"])
            break
    else:
        raise FileNotFoundError(
            f"no trained codec-avatar VAE for {identity or model_dir} (looked for weights.pt + encoder.pt or checkpoint.pt "
            f"in {', '.join(map(str, dirs))}); train the decoder first")
    vae.eval().requires_grad_(False)
    return vae


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
