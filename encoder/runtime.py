"""The sender's HMC encoder: three near-sensor view models and the fusion head in onnxruntime.

This module never imports torch (the runtime path rule); it needs only numpy,
onnxruntime and the model directory written by :func:`encoder.export.save_model`.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

VIEW_NAMES: tuple[str, ...] = ("left_eye", "right_eye", "mouth")
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "models" / "S1" / "EEM"
"""The embedded default encoder (identity S1, EEM), shipped with the package."""


@dataclass
class EncodeResult:
    z: np.ndarray
    """(Z,) float32 latent code for the decoder."""
    gaze: np.ndarray
    """(2, 2) float32 [[yaw, pitch] left eye, [yaw, pitch] right eye], radians."""
    keypoints: np.ndarray | None
    """(3, K, 2) float32 pixel (x, y) per view, or None if the model has no keypoint heads."""
    stage_ms: dict[str, float] = field(default_factory=dict)
    """Wall time of each model run: left_eye, right_eye, mouth, fusion (ms)."""


def default_model_dir(identity: str = "S1", arch: str = "EEM") -> Path:
    return Path(__file__).resolve().parent / "models" / identity / arch


class HmcEncoder:
    """``encode(views (3, S, S) uint8)`` -> :class:`EncodeResult`. One ONNX session per view + fusion.

    ``threads`` is the intra-op thread count of each session (1 = the near-sensor setting).
    """

    def __init__(self, model_dir: str | Path | None = None, *, threads: int = 1):
        import onnxruntime as ort

        self.model_dir = Path(model_dir) if model_dir is not None else DEFAULT_MODEL_DIR
        arch_path = self.model_dir / "arch.json"
        if not arch_path.exists():
            raise FileNotFoundError(f"no encoder model in {self.model_dir} (arch.json missing)")
        self.arch = json.loads(arch_path.read_text())
        self.name = self.arch["name"]
        self.input_size = int(self.arch["input_size"])
        self.latent_dim = int(self.arch["latent_dim"])
        self.num_keypoints = int(self.arch["num_keypoints"])
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.sessions = {}
        for name in (*VIEW_NAMES, "fusion"):
            path = self.model_dir / f"{name}.onnx"
            if not path.exists():
                raise FileNotFoundError(f"{path} missing")
            self.sessions[name] = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.outputs = {v: [o.name for o in self.sessions[v].get_outputs()] for v in VIEW_NAMES}
        self.has_keypoints = all("keypoints" in self.outputs[v] for v in VIEW_NAMES[:2])

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
        stage_ms, outs = {}, []
        for i, v in enumerate(VIEW_NAMES):
            t0 = time.perf_counter()
            outs.append(self.encode_view(v, views[i]))
            stage_ms[v] = (time.perf_counter() - t0) * 1e3
        t0 = time.perf_counter()
        z = self.fuse(np.concatenate([o["feature"] for o in outs]))
        stage_ms["fusion"] = (time.perf_counter() - t0) * 1e3
        gaze = np.stack([outs[0].get("gaze", np.zeros(2, np.float32)), outs[1].get("gaze", np.zeros(2, np.float32))]).astype(np.float32)
        kp = None
        if self.has_keypoints:
            K = self.num_keypoints
            kp = np.stack([o.get("keypoints", np.full((K, 2), np.nan, np.float32)) for o in outs]).astype(np.float32)
        return EncodeResult(z=z.astype(np.float32), gaze=gaze, keypoints=kp, stage_ms=stage_ms)
