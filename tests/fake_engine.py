"""Fake display engines with the ``renderer.engine`` contract (``EngineSpec``, ``open_engine``), for the scheduler and
receiver tests: no models, no GL. Importable by worker processes (spawned workers get the test's ``sys.path``; a
receiver process started by a test gets this directory on ``PYTHONPATH``).

Every image a fake returns carries, in its first bytes, what made it (:func:`read_image`): the kind (generate or
warp), the code's first value, the view direction, the first code value of the cache it warped from, which engine
(process id) and how many times that engine had generated. Tests compare these with the scheduler's records.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FIELDS = ("kind", "z0", "view_x", "view_y", "view_z", "cache_z0", "pid", "generation")
KIND_GENERATE, KIND_WARP = 1.0, 2.0
PIDS_DIR = "fake_engine_pids"
"""If the spec's avatar directory has this folder, every engine opened writes its process id there (an empty file)."""


@dataclass(frozen=True)
class EngineSpec:
    """The contract's fields (``avatar_dir``, ``size``, ``threads``) plus the fake's behaviour."""

    avatar_dir: str = ""
    size: int = 16
    threads: int = 1
    generate_ms: tuple[float, ...] = (0.0,)
    """Time of each generate call, cycled (e.g. ``(60.0, 2.0)``: slow, fast, slow, ...)."""
    warp_ms: float = 0.0
    slow_marker: str = ""
    """If set: the first engine to create this file (one worker of several) generates in ``slow_generate_ms``."""
    slow_generate_ms: float = 0.0
    fail_open: str = ""
    """Opening raises this message (an engine that cannot load its model)."""
    fail_generate_at: int = -1
    """The n-th generate call (0-based) of an engine raises (an engine that breaks mid-call)."""


class FakeEngine:
    """A :class:`renderer.scheduler.DisplayEngine` that sleeps instead of computing (``sleep`` may be a fake
    clock's advance) and writes what it did into its images."""

    def __init__(self, spec: EngineSpec, sleep=time.sleep) -> None:
        if spec.fail_open:
            raise RuntimeError(spec.fail_open)
        self.spec = spec
        self.size = spec.size
        self.sleep = sleep
        self.generate_ms = tuple(spec.generate_ms) or (0.0,)
        if spec.slow_marker:
            try:
                os.close(os.open(spec.slow_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                self.generate_ms = (spec.slow_generate_ms,)
            except FileExistsError:
                pass
        pids = Path(spec.avatar_dir) / PIDS_DIR if spec.avatar_dir else None
        if pids is not None and pids.is_dir():  # the test wants to know which processes held an engine
            (pids / str(os.getpid())).touch()
        self.generations = 0
        self._cache_z0: float | None = None
        self.calls: list[tuple[str, float, tuple]] = []
        self.closed = False

    @property
    def has_cache(self) -> bool:
        return self._cache_z0 is not None

    def _image(self, kind: float, z: np.ndarray, view: np.ndarray) -> np.ndarray:
        img = np.zeros((self.size, self.size, 3), np.uint8)
        values = np.array([kind, float(z[0]), *np.asarray(view, np.float64).reshape(3), self._cache_z0 or 0.0,
                           os.getpid(), self.generations], np.float64)
        img.reshape(-1)[: values.nbytes] = np.frombuffer(values.tobytes(), np.uint8)
        return img

    def generate(self, z: np.ndarray, gaze: np.ndarray, view: np.ndarray) -> np.ndarray:
        if self.generations == self.spec.fail_generate_at:
            raise RuntimeError("fake generate failed")
        self.sleep(self.generate_ms[self.generations % len(self.generate_ms)] / 1000)
        self.generations += 1
        self._cache_z0 = float(z[0])
        self.calls.append(("generate", float(z[0]), tuple(np.asarray(view).tolist())))
        return self._image(KIND_GENERATE, z, view)

    def warp(self, z: np.ndarray, gaze: np.ndarray, view: np.ndarray) -> np.ndarray:
        if not self.has_cache:
            raise RuntimeError("warp needs a cache: generate first")
        self.sleep(self.spec.warp_ms / 1000)
        self.calls.append(("warp", float(z[0]), tuple(np.asarray(view).tolist())))
        return self._image(KIND_WARP, z, view)

    def warm_up(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def open_engine(spec: EngineSpec) -> FakeEngine:
    return FakeEngine(spec)


def read_image(img: np.ndarray) -> dict:
    """What a fake wrote into ``img``: :data:`FIELDS` -> value."""
    n = len(FIELDS) * 8
    values = np.frombuffer(np.ascontiguousarray(img).reshape(-1)[:n].tobytes(), np.float64)
    return dict(zip(FIELDS, values.tolist()))
