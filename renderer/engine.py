"""The receiver's display engines: the neural renderer G and the implicit warp W run by onnxruntime (no torch).

:class:`NeuralEngine` holds one avatar's decoder, a rasterizer at G's working size, G (``renderer.onnx``) and W
(``warp.onnx``) from the avatar directory (or a renderer run directory, for evaluations):

- :meth:`~NeuralEngine.generate` decodes the code for the view, rasterizes the colour buffer and, in one pass, the
  UV map and G's neural texture sampled per pixel (``neural_texture.npy``), runs G and keeps G's cache
  (:mod:`renderer.warp`) with the mesh it was made from;
- :meth:`~NeuralEngine.warp` rasterizes only the UV map of the cached mesh from the new view (no decode) and runs W
  on the cache, the new view, code and gaze.

Images come back (size, size, 3) uint8, top row first, resized from G's working size when ``size`` differs.
``last_ms`` holds the stage times of the last call (``decode``, ``rasterize``, ``network``, ``total``).
Open engines with :func:`open_engine` from a picklable :class:`EngineSpec` (each process opens its own: a GL
context and onnxruntime sessions belong to their process).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avcore.errors import UsageError

RENDERER_FILES = ("renderer.onnx", "neural_texture.npy", "warp.onnx", "renderer.json")
TRAIN_HINT = "avcall train renderer --identity S1 --install"


@dataclass
class EngineSpec:
    avatar_dir: str
    """The avatar (decoder) directory."""
    size: int = 512
    """Side of the returned images."""
    threads: int = 1
    """onnxruntime intra-op threads per session."""
    renderer_dir: str = ""
    """Where ``renderer.onnx`` / ``warp.onnx`` / ``renderer.json`` are (default: the avatar directory)."""


def renderer_files_missing(avatar_dir: str | Path, renderer_dir: str | Path = "") -> list[str]:
    """The neural renderer files a directory lacks (empty when G and W can run)."""
    d = Path(renderer_dir or avatar_dir)
    return [n for n in RENDERER_FILES if not (d / n).is_file()]


def check_renderer_files(avatar_dir: str | Path, renderer_dir: str | Path = "") -> None:
    """Raise :class:`UsageError` with one line saying how to get them if G or W is missing."""
    missing = renderer_files_missing(avatar_dir, renderer_dir)
    if missing:
        raise UsageError(f"no neural renderer in {Path(renderer_dir or avatar_dir)} ({', '.join(missing)} missing); "
                         f"train and install one with '{TRAIN_HINT}'")


def _nchw(img_u8: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(img_u8.transpose(2, 0, 1)[None], np.float32) / np.float32(255.0)


class NeuralEngine:
    """G and W for one avatar (module docstring)."""

    def __init__(self, spec: EngineSpec, *, ctx=None) -> None:
        from avcore.onnx import inference_session
        from decoder.runtime import OnnxAvatarDecoder

        check_renderer_files(spec.avatar_dir, spec.renderer_dir)
        rdir = Path(spec.renderer_dir or spec.avatar_dir)
        self.spec = spec
        self.size = int(spec.size)
        self.meta = json.loads((rdir / "renderer.json").read_text())
        self.work = int(self.meta["size"])
        """G's working size."""
        self.decoder = OnnxAvatarDecoder(spec.avatar_dir, threads=spec.threads)
        if int(self.meta["latent_dim"]) != self.decoder.latent_dim:
            raise UsageError(f"the neural renderer in {rdir} takes {self.meta['latent_dim']}-d codes, the avatar "
                             f"{spec.avatar_dir} decodes {self.decoder.latent_dim}-d codes")
        self.g = inference_session(rdir / "renderer.onnx", spec.threads)
        self._g_takes_code = "z" in {i.name for i in self.g.get_inputs()}
        """A modulated G (the enhanced renderer) takes the code too."""
        self.neural_texture = np.load(rdir / "neural_texture.npy")
        self.w = inference_session(rdir / "warp.onnx", spec.threads)
        self._w_inputs = [i.name for i in self.w.get_inputs()]
        self._ctx = ctx
        self._rast = None
        self.cache: dict | None = None
        self.last_ms: dict[str, float] = {}

    @property
    def has_cache(self) -> bool:
        return self.cache is not None

    def _raster(self):
        if self._rast is None:
            self._rast = self.decoder.make_rasterizer(size=self.work, ctx=self._ctx)
            self._rast.set_neural_texture(self.neural_texture)
        return self._rast

    def _out(self, img: np.ndarray) -> np.ndarray:
        u8 = (img[0].transpose(1, 2, 0) * 255.0 + 0.5).clip(0, 255).astype(np.uint8)
        if self.size != self.work:
            import cv2

            u8 = cv2.resize(u8, (self.size, self.size), interpolation=cv2.INTER_LINEAR)
        return u8

    def _decode_raster(self, z, gaze, view) -> tuple:
        """Decode ``z`` for ``view`` and rasterize it at G's working size: (z (Z,), gaze (2, 2), view (3,),
        vertices, raster image, the time the decode ended)."""
        z = np.asarray(z, np.float32).reshape(-1)
        gaze = np.asarray(gaze, np.float32).reshape(2, 2)
        view = np.asarray(view, np.float32).reshape(3)
        vertices, texture = self.decoder.decode(z, view)
        t_decoded = time.perf_counter()
        raster = self._raster().render(vertices, np.clip(texture, 0.0, 1.0), gaze, view)
        return z, gaze, view, vertices, raster, t_decoded

    def generate(self, z: np.ndarray, gaze: np.ndarray, view: np.ndarray) -> np.ndarray:
        """z (Z,), gaze (2, 2), view (3,) unit -> (size, size, 3) uint8; refreshes the cache."""
        t0 = time.perf_counter()
        z, gaze, view, vertices, raster, t1 = self._decode_raster(z, gaze, view)
        uv, feats = self._raster().render_uv_features(vertices, gaze, view, self.work)
        uv = np.ascontiguousarray(uv.transpose(2, 0, 1)[None])
        t2 = time.perf_counter()
        feed = {"raster": _nchw(raster), "uv": uv, "view": view[None],
                "features": np.ascontiguousarray(feats.transpose(2, 0, 1)[None])}
        if self._g_takes_code:
            feed["z"] = z[None]
        image, f0, f1, f2 = self.g.run(["image", "f0", "f1", "f2"], feed)
        self.cache = {"f0": f0, "f1": f1, "f2": f2, "image": image, "uv": uv, "view": view[None], "z": z[None],
                      "gaze": gaze.reshape(1, 4), "vertices": vertices}
        out = self._out(image)
        t3 = time.perf_counter()
        self.last_ms = {"decode": (t1 - t0) * 1e3, "rasterize": (t2 - t1) * 1e3, "network": (t3 - t2) * 1e3,
                        "total": (t3 - t0) * 1e3}
        return out

    def warp(self, z: np.ndarray, gaze: np.ndarray, view: np.ndarray) -> np.ndarray:
        """The display frame for ``view`` (and the newest ``z``, ``gaze``) from the cache of the last
        :meth:`generate`: (size, size, 3) uint8."""
        if self.cache is None:
            raise RuntimeError("warp before any generate: no cache")
        t0 = time.perf_counter()
        c = self.cache
        gaze = np.asarray(gaze, np.float32).reshape(2, 2)
        view = np.asarray(view, np.float32).reshape(3)
        uv_new = self._raster().render_uv(c["vertices"], gaze, view, self.work)
        t1 = time.perf_counter()
        new = {"uv_new": np.ascontiguousarray(uv_new.transpose(2, 0, 1)[None]), "view_new": view[None],
               "z_new": np.asarray(z, np.float32).reshape(1, -1), "gaze_new": gaze.reshape(1, 4)}
        feed = {k: (c[k] if k in c else new[k]) for k in self._w_inputs}
        out = self._out(self.w.run(["warped"], feed)[0])
        t2 = time.perf_counter()
        self.last_ms = {"decode": 0.0, "rasterize": (t1 - t0) * 1e3, "network": (t2 - t1) * 1e3,
                        "total": (t2 - t0) * 1e3}
        return out

    def rasterize(self, z: np.ndarray, gaze: np.ndarray, view: np.ndarray) -> np.ndarray:
        """The plain receiver image without the neural renderer: decode + rasterize, at G's working size (resized to
        ``size``); leaves the cache alone."""
        t0 = time.perf_counter()
        *_, img, t1 = self._decode_raster(z, gaze, view)
        img = np.ascontiguousarray(img)
        if self.size != self.work:
            import cv2

            img = cv2.resize(img, (self.size, self.size), interpolation=cv2.INTER_LINEAR)
        t2 = time.perf_counter()
        self.last_ms = {"decode": (t1 - t0) * 1e3, "rasterize": (t2 - t1) * 1e3, "network": 0.0,
                        "total": (t2 - t0) * 1e3}
        return img

    def warm_up(self) -> None:
        """GL context, shaders and both networks' first runs, before any frame is waiting."""
        z = np.zeros(self.decoder.latent_dim, np.float32)
        gaze = np.zeros((2, 2), np.float32)
        self.generate(z, gaze, np.array([0.0, 0.0, 1.0], np.float32))
        self.warp(z, gaze, np.array([0.05, 0.0, 0.9987], np.float32))
        self.cache = None

    def close(self) -> None:
        if self._rast is not None:
            self._rast.release()
            self._rast = None


def open_engine(spec: EngineSpec) -> NeuralEngine:
    """The display engine of ``spec`` (raises :class:`UsageError` when the renderer files are missing)."""
    return NeuralEngine(spec)
