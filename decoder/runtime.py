"""Receiver-side decoding: onnxruntime only (this module never imports torch).

:class:`OnnxAvatarDecoder` runs ``decoder.onnx`` from a model directory;
:class:`AvatarPlayer` decodes a code and rasterises mesh + texture + explicit
eyes from any view direction.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

#: The embedded default models, one directory per identity.
MODELS_DIR = Path(__file__).resolve().parent / "models"


def default_model_dir(identity: str = "S1") -> Path:
    return MODELS_DIR / identity


class OnnxAvatarDecoder:
    """``decode(z (Z,), view_direction (3,)) -> vertices (V, 3) float32, texture (T, T, 3) float32``."""

    def __init__(self, model_dir: Path, *, threads: int = 2):
        import onnxruntime as ort

        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").exists():
            raise FileNotFoundError(f"no decoder model in {self.model_dir} (config.json missing)")
        self.meta = json.loads((self.model_dir / "config.json").read_text())
        self.config = self.meta["decoder"]
        self.latent_dim = int(self.config["latent_dim"])
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(self.model_dir / self.meta["onnx"]["file"]), so,
                                            providers=["CPUExecutionProvider"])
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


class AvatarPlayer:
    """Decode + render: ``render(z, gaze, view_direction) -> (size, size, 3) uint8``."""

    def __init__(self, model_dir: Path | None = None, *, size: int = 512, ctx=None, threads: int = 2):
        self.decoder = OnnxAvatarDecoder(model_dir or default_model_dir(), threads=threads)
        self.rasterizer = self.decoder.make_rasterizer(size=size, ctx=ctx)

    def render(self, z: np.ndarray, gaze: np.ndarray, view_direction) -> np.ndarray:
        verts, tex = self.decoder.decode(z, view_direction)
        return self.rasterizer.render(verts, tex, gaze, view_direction)
