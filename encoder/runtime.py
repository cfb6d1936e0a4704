"""The sender's HMC encoders on onnxruntime: the one result type, the protocol, the per-view encoder.

This module never imports torch (the runtime path rule); it needs only numpy,
onnxruntime and the model directory written by :func:`encoder.export.save_model`::

    DIR/arch.json            architecture (name, input_size, latent_dim, num_keypoints, views)
    DIR/meta.json            identity the encoder was trained for, training record
    DIR/left_eye.onnx        image (1, 1, S, S) uint8 -> feature (1, F) [, gaze (1, 2), keypoints (1, K, 2)]
    DIR/right_eye.onnx       same
    DIR/mouth.onnx           image -> feature
    DIR/fusion.onnx          features (1, 3F) float32 -> z (1, Z)

Two encoders implement :class:`Encoder`: :class:`HmcEncoder` (every frame) and
:class:`encoder.latex.LatexEncoder` (LATEX-gated: extrapolates redundant frames).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from avcore.onnx import inference_session
from capture.rig import HMC_VIEWS as VIEW_NAMES

MODELS_DIR = Path(__file__).resolve().parent / "models"
"""Embedded encoders: ``MODELS_DIR/IDENTITY/ARCH``."""


DEFAULTS_FILE = "defaults.json"
"""``MODELS_DIR/defaults.json``: the embedded encoder the sender runs for each identity (``{"S1": "EEM"}``)."""


def default_arch(identity: str = "S1", models_dir: Path = MODELS_DIR) -> str:
    """Name of the embedded encoder the sender runs for ``identity`` (EEM where the defaults name none)."""
    path = Path(models_dir) / DEFAULTS_FILE
    return (json.loads(path.read_text()) if path.is_file() else {}).get(identity, "EEM")


def set_default_arch(identity: str, arch: str, models_dir: Path = MODELS_DIR) -> Path:
    """Make ``MODELS_DIR/identity/arch`` the sender's default for ``identity``."""
    models_dir = Path(models_dir)
    if not (models_dir / identity / arch / "fusion.onnx").is_file():
        raise FileNotFoundError(f"no embedded encoder {models_dir / identity / arch}")
    path = models_dir / DEFAULTS_FILE
    table = json.loads(path.read_text()) if path.is_file() else {}
    table[identity] = arch
    path.write_text(json.dumps(dict(sorted(table.items())), indent=2) + "\n")
    return path


def default_model_dir(identity: str = "S1", arch: str | None = None) -> Path:
    """``MODELS_DIR/identity/arch``; without ``arch``, the identity's default (:func:`default_arch`)."""
    return MODELS_DIR / identity / (arch or default_arch(identity))


DEFAULT_MODEL_DIR = default_model_dir()
"""The embedded default encoder of S1 (:func:`default_arch`), shipped with the package."""


@dataclass
class EncodeResult:
    """What an encoder returns for one HMC frame."""

    z: np.ndarray
    """(Z,) float32 latent code for the decoder."""
    gaze: np.ndarray
    """(2, 2) float32 [[yaw, pitch] left eye, [yaw, pitch] right eye], radians."""
    keypoints: np.ndarray | None = None
    """(3, K, 2) float32 pixel (x, y) per view, or None if the model has no keypoint heads."""
    stage_ms: dict[str, float] = field(default_factory=dict)
    """Wall time of each model run (left_eye, right_eye, mouth, fusion; ``early`` under LATEX), ms."""
    keyframe: bool = True
    """True when the full encoder ran on this frame; False when the code was extrapolated (LATEX)."""
    distance: float = math.inf
    """LATEX gate distance of this frame to the previous one (inf without a gate)."""
    encode_ms: float = 0.0
    """Encoder time actually spent on this frame (all model runs)."""


@runtime_checkable
class Encoder(Protocol):
    """``encode(views (3, S, S) uint8) -> EncodeResult``; ``reset()`` starts a new sequence."""

    model_dir: Path
    input_size: int
    latent_dim: int
    identity: str

    def encode(self, views: np.ndarray) -> EncodeResult: ...

    def reset(self) -> None: ...


def read_encoder_identity(model_dir: str | Path) -> str:
    """The identity an encoder directory was trained for (``meta.json``), or "" when it does not say."""
    meta = Path(model_dir) / "meta.json"
    try:
        return str(json.loads(meta.read_text()).get("identity", ""))
    except (FileNotFoundError, json.JSONDecodeError):
        return ""


class HmcEncoder:
    """The per-view encoders + fusion, run on every frame. One ONNX session per view + fusion.

    ``threads`` is the intra-op thread count of each session (1 = the near-sensor setting).
    """

    def __init__(self, model_dir: str | Path | None = None, *, threads: int = 1):
        self.model_dir = Path(model_dir) if model_dir is not None else DEFAULT_MODEL_DIR
        arch_path = self.model_dir / "arch.json"
        if not arch_path.is_file():
            raise FileNotFoundError(f"no encoder model in {self.model_dir} (arch.json missing)")
        self.arch = json.loads(arch_path.read_text())
        self.name = self.arch["name"]
        self.input_size = int(self.arch["input_size"])
        self.latent_dim = int(self.arch["latent_dim"])
        self.num_keypoints = int(self.arch.get("num_keypoints", 0))
        self.identity = read_encoder_identity(self.model_dir)
        self.sessions = {name: inference_session(self.model_dir / f"{name}.onnx", threads)
                         for name in (*VIEW_NAMES, "fusion")}
        self.outputs = {v: [o.name for o in self.sessions[v].get_outputs()] for v in VIEW_NAMES}
        self.has_keypoints = all("keypoints" in self.outputs[v] for v in VIEW_NAMES[:2])

    def reset(self) -> None:
        """Nothing to forget: every frame is encoded on its own."""

    def encode_view(self, view: int | str, image: np.ndarray) -> dict[str, np.ndarray]:
        """Run one near-sensor model on image (S, S) uint8 -> {output name: array without batch axis}."""
        name = VIEW_NAMES[view] if isinstance(view, int) else view
        x = np.ascontiguousarray(image, np.uint8).reshape(1, 1, self.input_size, self.input_size)
        outs = self.sessions[name].run(self.outputs[name], {"image": x})
        return {n: o[0] for n, o in zip(self.outputs[name], outs)}

    def fuse(self, features: np.ndarray) -> np.ndarray:
        """features (3F,) float32 -> z (Z,) float32."""
        return self.sessions["fusion"].run(["z"], {"features": np.asarray(features, np.float32).reshape(1, -1)})[0][0]

    def encode(self, views: np.ndarray) -> EncodeResult:
        """views (3, S, S) uint8 [left_eye, right_eye, mouth] -> EncodeResult."""
        views = np.asarray(views)
        S = self.input_size
        if views.shape != (3, S, S) or views.dtype != np.uint8:
            raise ValueError(f"views must be (3, {S}, {S}) uint8, got {views.shape} {views.dtype}")
        t_start = time.perf_counter()
        stage_ms, outs = {}, []
        for i, v in enumerate(VIEW_NAMES):
            t0 = time.perf_counter()
            outs.append(self.encode_view(v, views[i]))
            stage_ms[v] = (time.perf_counter() - t0) * 1e3
        t0 = time.perf_counter()
        z = self.fuse(np.concatenate([o["feature"] for o in outs]))
        stage_ms["fusion"] = (time.perf_counter() - t0) * 1e3
        no_gaze = np.zeros(2, np.float32)
        gaze = np.stack([outs[0].get("gaze", no_gaze), outs[1].get("gaze", no_gaze)]).astype(np.float32)
        kp = None
        if self.has_keypoints:
            K = self.num_keypoints
            kp = np.stack([o.get("keypoints", np.full((K, 2), np.nan, np.float32)) for o in outs]).astype(np.float32)
        return EncodeResult(z=z.astype(np.float32), gaze=gaze, keypoints=kp, stage_ms=stage_ms,
                            encode_ms=(time.perf_counter() - t_start) * 1e3)
