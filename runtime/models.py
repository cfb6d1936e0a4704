"""Model loading for the runtime: the sender's HMC encoder and the receiver's avatar.

Only onnxruntime runs models here (never torch). Two model-directory layouts
are understood:

* **Encoder.** The trained per-view encoders (``arch.json`` + one ONNX model
  per view + ``fusion.onnx``) are loaded by ``encoder.runtime.HmcEncoder``. A directory holding a single
  ``encoder.onnx`` (input ``views`` (1, 3, H, W) float32 in [0, 1]; outputs
  ``z`` (1, Z) and ``gaze`` (1, 2, 2)) is run directly: the layout of the tiny
  models the tests build (``tests/tiny_models.py``).
* **Avatar.** The layout of ``decoder.export.save_model``: ``config.json``
  (``decoder`` config, ``onnx`` file and I/O names, ``assets`` file),
  ``decoder.onnx`` (``z`` (1, Z), ``view_direction`` (1, 3) -> vertices
  (1, V, 3), texture (1, 3, T, T)) and ``assets.npz`` (mesh topology and the
  explicit eye model), loaded by ``decoder.runtime.OnnxAvatarDecoder`` and drawn
  by ``renderer.rasterizer.AvatarRasterizer``.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import DEFAULT_AVATAR_DIR, DEFAULT_ENCODER_DIR

log = logging.getLogger(__name__)

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
"""Root that the default model directories are relative to."""


def _session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, int(threads))
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


# --------------------------------------------------------------------------- encoder


@dataclass
class EncodeResult:
    """What an encoder returns for one HMC frame."""

    z: np.ndarray
    """(Z,) float32 latent code."""
    gaze: np.ndarray
    """(2, 2) float32: [[yaw, pitch] left eye, right eye], radians."""
    keypoints: np.ndarray | None = None
    """(3, K, 2) float32 per-view 2D keypoints, or None."""
    stage_ms: dict = field(default_factory=dict)
    """Per-stage milliseconds reported by the encoder (e.g. per view, fusion)."""


class SingleOnnxEncoder:
    """One ONNX graph: views (1, 3, H, W) float32 in [0, 1] -> z (1, Z), gaze (1, 2, 2)."""

    def __init__(self, model_dir: str | Path, threads: int = 1) -> None:
        self.model_dir = Path(model_dir)
        self.session = _session(self.model_dir / "encoder.onnx", threads)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_size = int(inp.shape[-1])
        self.latent_dim = int(self.session.get_outputs()[0].shape[-1])

    def encode(self, views: np.ndarray) -> EncodeResult:
        """views (3, H, W) uint8 -> :class:`EncodeResult`."""
        t0 = time.perf_counter()
        x = (np.asarray(views, np.float32) * (1.0 / 255.0))[None]
        z, gaze = self.session.run(None, {self.input_name: x})[:2]
        ms = (time.perf_counter() - t0) * 1e3
        return EncodeResult(z=z.reshape(-1), gaze=gaze.reshape(2, 2), stage_ms={"encode": ms})


def resolve_encoder_dir(model_dir: str | Path | None) -> Path | None:
    """The encoder directory to use: ``model_dir``, else the installed default if present, else None."""
    if model_dir:
        return Path(model_dir)
    default = PACKAGE_ROOT / DEFAULT_ENCODER_DIR
    return default if (default / "arch.json").is_file() else None


def load_encoder(model_dir: str | Path, threads: int = 1):
    """An object with ``encode(views (3, H, W) uint8) -> EncodeResult``-like result."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"encoder model directory {model_dir} does not exist")
    if (model_dir / "encoder.onnx").is_file():
        return SingleOnnxEncoder(model_dir, threads)
    from encoder.runtime import HmcEncoder  # the trained per-view encoders (onnxruntime only)

    return HmcEncoder(model_dir, threads=threads)


# --------------------------------------------------------------------------- avatar


def resolve_avatar_dir(model_dir: str | Path | None) -> Path | None:
    if model_dir:
        return Path(model_dir)
    default = PACKAGE_ROOT / DEFAULT_AVATAR_DIR
    return default if (default / "config.json").is_file() and (default / "decoder.onnx").is_file() else None


class Avatar:
    """The receiver's avatar: ONNX decoder ``D(z, view_direction)`` + explicit eyes + rasterizer.

    Loads the decoder's model directory with ``decoder.runtime.OnnxAvatarDecoder``
    (onnxruntime only). The GL rasterizer is created by :meth:`warm_up` or the
    first :meth:`render`, in the process that renders.
    """

    def __init__(self, model_dir: str | Path, *, size: int = 512, threads: int = 1) -> None:
        from decoder.runtime import OnnxAvatarDecoder

        self.model_dir = Path(model_dir)
        self.decoder = OnnxAvatarDecoder(self.model_dir, threads=threads)
        self.latent_dim = int(self.decoder.latent_dim)
        self.size = size
        self._raster = None

    def decode(self, z: np.ndarray, view_direction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """z (Z,), view_direction (3,) unit -> vertices (V, 3) float32, texture (T, T, 3) float32."""
        return self.decoder.decode(np.asarray(z, np.float32), view_direction)

    def render(self, vertices: np.ndarray, texture: np.ndarray, gaze: np.ndarray, view_direction: np.ndarray) -> np.ndarray:
        """-> image (size, size, 3) uint8 RGB, top row first."""
        if self._raster is None:
            self._raster = self.decoder.make_rasterizer(size=self.size)
        return self._raster.render(vertices, np.clip(texture, 0.0, 1.0), gaze, view_direction)

    def warm_up(self) -> None:
        """Create the GL rasterizer and run the decoder once, so the first real frame does not pay for it."""
        front = np.array([0.0, 0.0, 1.0], np.float32)
        vertices, texture = self.decode(np.zeros(self.latent_dim, np.float32), front)
        self.render(vertices, texture, np.zeros((2, 2), np.float32), front)

    def close(self) -> None:
        if self._raster is not None:
            self._raster.release()
            self._raster = None


def cache_dir() -> Path:
    """Per-user cache for files the runtime derives (bench recordings); ``AVCALL_CACHE`` overrides it."""
    base = os.environ.get("AVCALL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "avcall")
    return Path(base)


def ensure_encoder_dir(model_dir: str | Path | None) -> Path:
    """``model_dir``, else the installed default encoder; a clear error when there is none."""
    d = resolve_encoder_dir(model_dir)
    if d is None:
        raise FileNotFoundError(
            f"no trained encoder at {model_dir or PACKAGE_ROOT / DEFAULT_ENCODER_DIR}; "
            "train one with 'avcall train encoder --arch EEM --identity S1' or pass --encoder DIR"
        )
    return d


def ensure_avatar_dir(model_dir: str | Path | None) -> Path:
    """``model_dir``, else the installed default avatar (decoder); a clear error when there is none."""
    d = resolve_avatar_dir(model_dir)
    if d is None:
        raise FileNotFoundError(
            f"no trained avatar decoder at {model_dir or PACKAGE_ROOT / DEFAULT_AVATAR_DIR}; "
            "train one with 'avcall train decoder --identity S1 --out DIR' or pass --avatar DIR"
        )
    return d
