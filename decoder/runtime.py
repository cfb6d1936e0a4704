"""Receiver-side avatar: onnxruntime decoding + explicit eyes + GL rasterizer (this module never imports torch).

:class:`OnnxAvatarDecoder` runs ``decoder.onnx`` of a model directory (the
layout :func:`decoder.export.save_model` writes: ``config.json``,
``decoder.onnx``, ``assets.npz``); :class:`Avatar` is the one avatar object
the receiver, the evaluations and the tests use: decode a code, rasterise mesh
+ texture + explicit eyes for any view direction.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from avcore.onnx import inference_session

#: The embedded default models, one directory per identity.
MODELS_DIR = Path(__file__).resolve().parent / "models"


def default_model_dir(identity: str = "S1") -> Path:
    return MODELS_DIR / identity


class OnnxAvatarDecoder:
    """``decode(z (Z,), view_direction (3,)) -> vertices (V, 3) float32, texture (T, T, 3) float32``."""

    def __init__(self, model_dir: str | Path, *, threads: int = 2):
        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").is_file():
            raise FileNotFoundError(f"no decoder model in {self.model_dir} (config.json missing)")
        self.meta = json.loads((self.model_dir / "config.json").read_text())
        self.config = self.meta["decoder"]
        self.latent_dim = int(self.config["latent_dim"])
        self.identity = str(self.config.get("identity", ""))
        self.session = inference_session(self.model_dir / self.meta["onnx"]["file"], threads)
        with np.load(self.model_dir / self.meta["assets"]) as a:
            self.assets = {k: a[k] for k in a.files}

    def decode_batch(self, z: np.ndarray, view_direction: np.ndarray):
        """z (B, Z), view_direction (B, 3) -> vertices (B, V, 3), texture (B, 3, T, T)."""
        v = np.asarray(view_direction, np.float32).reshape(-1, 3)
        v = v / np.linalg.norm(v, axis=1, keepdims=True)
        verts, tex = self.session.run(None, {"z": np.asarray(z, np.float32).reshape(-1, self.latent_dim), "view_direction": v})
        return verts, tex

    def decode(self, z: np.ndarray, view_direction) -> tuple[np.ndarray, np.ndarray]:
        verts, tex = self.decode_batch(z, view_direction)
        return verts[0], np.ascontiguousarray(tex[0].transpose(1, 2, 0))

    def make_rasterizer(self, *, size: int = 512, ctx=None):
        from renderer.rasterizer import AvatarRasterizer

        a = self.assets
        return AvatarRasterizer(a["uvs"], a["triangles"], (a["eye_vertices"], a["eye_normals"], a["eye_uvs"], a["eye_triangles"]),
                                a["eye_centres"], a["eye_texture"].astype(np.float32), size=size,
                                texture_size=int(self.config["texture_size"]), ctx=ctx)


CODE_ABS_MAX = 100.0
"""Largest |code value| accepted when a model records no ``code_range``. Codes of the VAE are regularised
towards a unit Gaussian, so a value of 100 is far outside anything the decoder was trained on."""


class Avatar:
    """The receiver's avatar: ONNX decoder ``D(z, view_direction)`` + explicit eyes + rasterizer.

    The GL rasterizer is created by :meth:`warm_up` or the first render, in the
    process that renders (a GL context belongs to its process).
    """

    def __init__(self, model_dir: str | Path | None = None, *, size: int = 512, threads: int = 1, ctx=None) -> None:
        self.decoder = OnnxAvatarDecoder(model_dir or default_model_dir(), threads=threads)
        self.model_dir = self.decoder.model_dir
        self.latent_dim = self.decoder.latent_dim
        self.size = size
        self._ctx = ctx
        self._raster = None

    def code_limits(self) -> dict:
        """What a valid code of this model looks like, as ``transport.WireLimits`` fields: per-dimension
        ``code_low``/``code_high`` when ``config.json`` has a ``code_range`` (from the training codes, with a
        margin), else ``code_abs_max`` = :data:`CODE_ABS_MAX`."""
        rng = self.decoder.meta.get("code_range")
        if rng and len(rng.get("low", ())) == self.latent_dim and len(rng.get("high", ())) == self.latent_dim:
            return {"code_low": np.asarray(rng["low"], np.float32), "code_high": np.asarray(rng["high"], np.float32)}
        return {"code_abs_max": CODE_ABS_MAX}

    def decode(self, z: np.ndarray, view_direction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """z (Z,), view_direction (3,) unit -> vertices (V, 3) float32, texture (T, T, 3) float32."""
        return self.decoder.decode(np.asarray(z, np.float32), view_direction)

    def render(self, vertices: np.ndarray, texture: np.ndarray, gaze: np.ndarray, view_direction: np.ndarray) -> np.ndarray:
        """-> image (size, size, 3) uint8 RGB, top row first."""
        if self._raster is None:
            self._raster = self.decoder.make_rasterizer(size=self.size, ctx=self._ctx)
        return self._raster.render(vertices, np.clip(texture, 0.0, 1.0), gaze, view_direction)

    def render_code(self, z: np.ndarray, gaze: np.ndarray, view_direction) -> np.ndarray:
        """Decode and render in one call: z (Z,), gaze (2, 2), view (3,) -> (size, size, 3) uint8."""
        view = np.asarray(view_direction, np.float32)
        vertices, texture = self.decode(z, view)
        return self.render(vertices, texture, np.asarray(gaze, np.float32), view)

    def warm_up(self) -> None:
        """Create the GL rasterizer and run the decoder once, so the first real frame does not pay for it."""
        self.render_code(np.zeros(self.latent_dim, np.float32), np.zeros((2, 2), np.float32), [0.0, 0.0, 1.0])

    def close(self) -> None:
        if self._raster is not None:
            self._raster.release()
            self._raster = None

    def __enter__(self) -> "Avatar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
