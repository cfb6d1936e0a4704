"""Held-out headset sequences with ground-truth codes and the sender's codes, for evaluations of the stream.

The network bench (``avcall bench network``) needs what a sender would send for sessions the encoder never
saw (the float16 codes of the wire) next to the true codes (the VAE means of the frames). Building them
renders the sequences and runs the VAE (torch), so it lives here, with the encoder's evaluations; the
result is cached and handed to the runtime's bench as plain arrays.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from avcore.cache import load_keyed_npz, save_keyed_npz
from avcore.progress import progress as progress_bar


def heldout_codes(identity: str, sessions: tuple[int, ...], clip_s: float, fps: float, *, sequence_cache: Path,
                  codes_cache: Path, progress: bool = True) -> dict:
    """Held-out frames of ``identity``: ``z_gt`` (N, Z) and ``gaze`` (N, 2, 2) ground truth, ``z`` / ``g`` the
    embedded encoder's codes as float16 values (what the wire carries), ``session`` and ``frame`` (N,).
    Cached in ``codes_cache`` (the rendered sequences in ``sequence_cache``)."""
    key = repr((identity, tuple(sessions), clip_s, fps))
    cached = load_keyed_npz(codes_cache, key)
    if cached is not None:
        return cached
    import torch

    from decoder.export import load_vae

    from .latex_eval import LatexEvalConfig, build_sequences
    from .runtime import HmcEncoder, default_model_dir

    torch.set_num_threads(1)
    seq = build_sequences(LatexEvalConfig(identity=identity, sessions=tuple(sessions), seconds=clip_s, fps=fps),
                          load_vae(identity), progress=progress, cache=sequence_cache)
    enc = HmcEncoder(default_model_dir(identity))
    n = len(seq["views"])
    z = np.zeros((n, enc.latent_dim), np.float32)
    g = np.zeros((n, 2, 2), np.float32)
    for i in progress_bar(range(n), desc="encode held-out frames", unit="frame", disable=not progress, mininterval=5.0):
        r = enc.encode(seq["views"][i])
        z[i] = np.asarray(r.z).astype(np.float16)  # what the wire carries
        g[i] = np.asarray(r.gaze, np.float32).reshape(2, 2).astype(np.float16)
    out = {"z": z, "g": g, "z_gt": seq["z_gt"].astype(np.float32), "gaze": seq["gaze"].astype(np.float32),
           "session": seq["session"], "frame": seq["frame"]}
    save_keyed_npz(codes_cache, key, out)
    return out
