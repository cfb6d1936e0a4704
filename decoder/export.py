"""Saving a trained decoder: weights (state_dict + config), ONNX export checked against torch, assets.

A model directory holds:

- ``config.json``: the :class:`DecoderConfig` dict, ONNX I/O names, the parity tolerance
  and the measured parity error, training info.
- ``weights.pt``: ``{"decoder": state_dict (float16), "config": dict}``; never a pickled module.
- ``decoder.onnx``: ``D(z (B, Z), view_direction (B, 3)) -> vertices (B, V, 3), texture (B, 3, T, T)``;
  large weights stored as float16 initialisers cast to float32 inside the graph.
- ``assets.npz``: mesh topology (``uvs`` (V, 2), ``triangles`` (F, 3)) and the explicit eye model
  (``eye_centres`` (2, 3), ``eye_radius``, ``eye_texture`` (H, W, 4), eyeball mesh), so the receiver
  renders with onnxruntime + moderngl only.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from avcore import export as _avexport

from .config import DecoderConfig

INPUT_NAMES = ("z", "view_direction")
OUTPUT_NAMES = ("vertices", "texture")
#: Maximum absolute difference allowed between onnxruntime and torch outputs.
PARITY_ATOL = {"vertices": 1e-4, "texture": 1e-3}


# Kept importable here for older callers; the implementations live in :mod:`avcore.export`.
round_to_float16 = _avexport.round_to_float16
compress_initializers = _avexport.compress_initializers


def export_onnx(decoder, path: Path, *, atol: dict | None = None, seed: int = 0, float16_weights: bool = False) -> dict:
    """Export ``decoder`` (an :class:`AvatarDecoder`) to ONNX and verify onnxruntime against torch.

    Checks the model with ``onnx.checker`` (full check) and compares both outputs on random
    codes and view directions (batch 2); raises ``RuntimeError`` if any max abs difference
    exceeds ``atol``. Returns the measured max abs differences. ``float16_weights`` stores the
    large initialisers as float16 (use it for a decoder already passed through
    :func:`round_to_float16`, so the file holds exactly the torch weights).
    """
    import torch

    atol = dict(PARITY_ATOL if atol is None else atol)
    path = Path(path)
    decoder = decoder.eval()
    cfg = decoder.cfg
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(2, cfg.latent_dim, generator=g)
    v = torch.nn.functional.normalize(torch.randn(2, 3, generator=g) + torch.tensor([0.0, 0.0, 2.0]), dim=1)
    _avexport.export_onnx_model(decoder, (z, v), path, INPUT_NAMES, OUTPUT_NAMES, float16_weights=float16_weights)
    with torch.no_grad():
        ref = {n: t.numpy() for n, t in zip(OUTPUT_NAMES, decoder(z, v))}
    return _avexport.check_parity(path, {"z": z.numpy(), "view_direction": v.numpy()}, ref, atol, threads=2)


def identity_assets(identity: str) -> dict:
    """Mesh topology and explicit-eye parameters of a studio identity (pure numpy, no GL)."""
    from capture.eyes import eyeball_mesh
    from capture.head import HeadModel
    from capture.identity import make_identity
    from capture.texture import paint_eyeball

    head = HeadModel(make_identity(identity))
    ev, en, euv, etri = eyeball_mesh(head.eye_radius)
    return {
        "uvs": head.uvs.astype(np.float32), "triangles": head.triangles.astype(np.uint32),
        "eye_centres": head.eye_centres.astype(np.float32), "eye_radius": np.float32(head.eye_radius),
        "eye_texture": paint_eyeball(head).astype(np.float16),
        "eye_vertices": ev, "eye_normals": en, "eye_uvs": euv, "eye_triangles": etri,
    }


def save_model(decoder, out_dir: Path, *, studio_identity: str, train_info: dict | None = None, encoder=None) -> dict:
    """Write config.json, weights.pt, decoder.onnx (parity-checked) and assets.npz into ``out_dir``;
    with ``encoder`` also ``encoder.pt`` (float16 state_dict), which evaluation uses to get the
    ground-truth codes of held-out frames."""
    import copy

    import torch

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dec = copy.deepcopy(decoder).eval()
    round_to_float16(dec)
    cfg: DecoderConfig = dec.cfg
    torch.save({"decoder": {k: v.half() for k, v in dec.state_dict().items()}, "config": cfg.to_dict()}, out_dir / "weights.pt")
    if encoder is not None:
        torch.save({"encoder": {k: v.half() for k, v in encoder.state_dict().items()}, "config": encoder.cfg.to_dict()},
                   out_dir / "encoder.pt")  # its own sizes: a frozen encoder of another model may differ
    diffs = export_onnx(dec, out_dir / "decoder.onnx", float16_weights=True)
    np.savez_compressed(out_dir / "assets.npz", **identity_assets(studio_identity))
    meta = {
        "decoder": cfg.to_dict(),
        "onnx": {"file": "decoder.onnx", "inputs": list(INPUT_NAMES), "outputs": list(OUTPUT_NAMES),
                 "parity_atol": PARITY_ATOL, "parity_max_abs_diff": diffs},
        "weights": "weights.pt",
        "assets": "assets.npz",
        "train": train_info or {},
    }
    (out_dir / "config.json").write_text(json.dumps(meta, indent=2))
    return meta


def load_torch_decoder(model_dir: Path):
    """Rebuild an :class:`AvatarDecoder` from ``weights.pt`` (float32)."""
    import torch

    from .model import AvatarDecoder

    blob = torch.load(Path(model_dir) / "weights.pt", map_location="cpu", weights_only=True)
    dec = AvatarDecoder(DecoderConfig.from_dict(blob["config"]))
    dec.load_state_dict({k: v.float() for k, v in blob["decoder"].items()})
    return dec.eval()


def load_torch_encoder(model_dir: Path):
    """Rebuild the training encoder from ``encoder.pt`` (float32), or None if the directory has none."""
    import torch

    from .model import AvatarEncoder

    p = Path(model_dir) / "encoder.pt"
    if not p.exists():
        return None
    blob = torch.load(p, map_location="cpu", weights_only=True)
    enc = AvatarEncoder(DecoderConfig.from_dict(blob["config"]))
    enc.load_state_dict({k: v.float() for k, v in blob["encoder"].items()})
    return enc.eval()


def save_from_checkpoint(checkpoint: Path, out_dir: Path) -> dict:
    """Write a model directory from a training ``checkpoint.pt`` (decoder + encoder)."""
    import torch

    from .model import CodecAvatarVAE

    ck = torch.load(checkpoint, map_location="cpu", weights_only=True)
    cfg = DecoderConfig.from_dict(ck["decoder_config"])
    model = CodecAvatarVAE(cfg, checkpoint_encoder_config(ck))
    model.load_state_dict(ck["model"])
    return save_model(model.decoder, out_dir, studio_identity=cfg.identity, encoder=model.encoder,
                      train_info={"steps": ck["step"], "elapsed_s": ck["elapsed_s"], "train_config": ck["train_config"]})


def checkpoint_encoder_config(ck: dict) -> DecoderConfig | None:
    """The sizes of a training checkpoint's encoder when they are not its decoder's: a frozen encoder
    (``latent_from``) keeps the sizes its own ``encoder.pt`` names. None: the decoder's."""
    if "encoder_config" in ck:
        return DecoderConfig.from_dict(ck["encoder_config"])
    latent_from = ck.get("train_config", {}).get("latent_from") or ck.get("train_config", {}).get("teacher")
    enc = load_torch_encoder(Path(latent_from)) if latent_from else None
    return enc.cfg if enc is not None else None


def load_vae(identity: str | None = None, model_dir: str | Path | None = None):
    """The trained :class:`decoder.model.CodecAvatarVAE` of ``identity`` (eval mode, frozen).

    Reads, in order: a decoder model directory (``weights.pt`` + ``encoder.pt``, as :func:`save_model`
    writes them with ``encoder=``), or a training checkpoint (``checkpoint.pt``, state_dicts + configs).
    Without ``model_dir`` it looks in ``decoder/models/IDENTITY`` then ``out/decoder_IDENTITY``.
    """
    import torch

    from .model import CodecAvatarVAE
    from .runtime import default_model_dir

    if model_dir is None and identity is None:
        raise ValueError("load_vae needs an identity or a model directory")
    repo = Path(__file__).resolve().parent.parent
    dirs = [Path(model_dir)] if model_dir is not None else [default_model_dir(identity), repo / "out" / f"decoder_{identity}"]
    for d in dirs:
        if (d / "weights.pt").exists() and (d / "encoder.pt").exists():
            dec = torch.load(d / "weights.pt", map_location="cpu", weights_only=True)
            enc = torch.load(d / "encoder.pt", map_location="cpu", weights_only=True)
            vae = CodecAvatarVAE(DecoderConfig.from_dict(dec["config"]), DecoderConfig.from_dict(enc["config"]))
            vae.decoder.load_state_dict({k: v.float() for k, v in dec["decoder"].items()})
            vae.encoder.load_state_dict({k: v.float() for k, v in enc["encoder"].items()})
            break
        if (d / "checkpoint.pt").exists():
            ck = torch.load(d / "checkpoint.pt", map_location="cpu", weights_only=True)
            vae = CodecAvatarVAE(DecoderConfig.from_dict(ck["decoder_config"]), checkpoint_encoder_config(ck))
            vae.load_state_dict(ck["model"])
            break
    else:
        raise FileNotFoundError(
            f"no trained codec-avatar VAE for {identity or model_dir} (looked for weights.pt + encoder.pt or checkpoint.pt "
            f"in {', '.join(map(str, dirs))}); train the decoder first")
    vae.eval().requires_grad_(False)
    return vae
