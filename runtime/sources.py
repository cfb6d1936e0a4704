"""HMC sources for the sender: the live synthetic studio, an .hmc replay, OpenCV cameras.

Clock domain. Every timestamp in the runtime is :func:`transport.clock.now_ns`
(``CLOCK_MONOTONIC``), the clock the wire protocol and the clock exchange use.
A source's frame is stamped when it is *handed to the runtime* (as a camera
driver stamps a frame when its buffer is ready): for the synthetic studio that
is after the studio rendered it (its render time is the "camera's" exposure and
read-out, not the runtime's), for a replay when the paced replay releases it.
The studio's own ``time.time_ns()`` stamps and the recording's stamps are not
used on the wire. Every source has ``fps``, the rate it delivers at, and
``clock = "monotonic"``, the clock of its stamps (what an .hmc tap of these
frames must declare).

Replay pacing. A replay is a live source: frames are due at the recording's
own capture timestamps (or on a ``replay_fps`` grid), and when the consumer
(the encoder) is late, the frames whose time has passed are dropped and
counted in ``dropped``; a slow encoder never turns the replay into slow motion.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from transport.clock import now_ns

from .config import SourceConfig

log = logging.getLogger(__name__)


@dataclass
class HmcCapture:
    """One HMC frame as the sender's pipeline sees it."""

    views: np.ndarray
    """(3, S, S) uint8: left eye, right eye, mouth."""
    capture_ts_ns: int
    """:func:`transport.clock.now_ns` when the frame reached the runtime."""
    frame_index: int = -1
    """Replay: the frame's index in the recording (-1 for live sources)."""


class HmcSource:
    """Base class: iterate for :class:`HmcCapture` s; ``dropped`` counts frames the
    source skipped because the consumer was late (a live camera's behaviour)."""

    dropped: int = 0
    fps: float = 0.0
    """Rate the source delivers frames at (frames per second)."""
    clock: str = "monotonic"
    """Clock domain of ``capture_ts_ns`` (:func:`transport.clock.now_ns`)."""

    def __iter__(self) -> Iterator[HmcCapture]:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        pass


class SyntheticSource(HmcSource):
    """The studio's live performance (``capture.source.SyntheticHmcSource``) on the runtime clock."""

    def __init__(self, cfg: SourceConfig) -> None:
        from capture.source import SyntheticHmcSource

        self._src = SyntheticHmcSource(identity=cfg.identity, fps=cfg.fps, seed=cfg.seed, ground_truth=False, live=True)
        self.fps = float(cfg.fps)

    @property
    def dropped(self) -> int:  # type: ignore[override]
        return self._src.dropped

    def __iter__(self) -> Iterator[HmcCapture]:
        for views, _wall_ts, _gt in self._src.frames():
            yield HmcCapture(views, now_ns())

    def close(self) -> None:
        self._src.close()


class ReplaySource(HmcSource):
    """An .hmc recording replayed in real time (optionally looping).

    Frames are due at the recording's capture timestamps (``cfg.replay_fps`` = 0)
    or at ``cfg.replay_fps`` resampled by timestamp; when the consumer is late the
    frames whose time has passed are dropped (``stats.dropped``), so the replay keeps
    the recording's pace. ``dropped`` = those plus damaged frames skipped.
    """

    def __init__(self, cfg: SourceConfig) -> None:
        import math

        from capture.recording import HmcReader, ReplayStats

        if not cfg.path:
            raise ValueError("a replay source needs a path to an .hmc recording")
        rate = cfg.replay_fps
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate < 0:
            raise ValueError(f"replay_fps must be 0 (the recording's own timing) or a positive rate, got {rate!r}")
        self._reader = HmcReader(cfg.path)
        if len(self._reader) == 0:
            self._reader.close()
            raise ValueError(f"{cfg.path} holds no frames")
        self._loop = cfg.loop
        self._replay_fps = float(rate)
        self.fps = self._replay_fps or self._reader.fps
        self.stats = ReplayStats()

    @property
    def dropped(self) -> int:  # type: ignore[override]
        return self.stats.dropped + self.stats.skipped

    def __iter__(self) -> Iterator[HmcCapture]:
        from capture.recording import replay

        for frame in replay(self._reader, rate="native", loop=self._loop, stats=self.stats,
                            drop_late=True, resample_fps=self._replay_fps):
            yield HmcCapture(np.ascontiguousarray(frame.views[:3]), now_ns(), frame.index)

    def close(self) -> None:
        self._reader.close()


class CameraSource(HmcSource):
    """OpenCV capture devices: three (left eye, right eye, mouth) or one split in three strips.

    Frames are converted to grayscale (the HMC cameras are near-IR) and resized
    to ``size``. A frame that a device fails to deliver is skipped and counted.
    """

    def __init__(self, cfg: SourceConfig) -> None:
        import cv2

        self._cv2 = cv2
        ids = tuple(cfg.camera_ids)
        if len(ids) not in (1, 3):
            raise ValueError("camera source needs 1 or 3 device ids")
        self._caps = []
        for i in ids:
            cap = cv2.VideoCapture(int(i))
            if not cap.isOpened():
                self.close()
                raise ValueError(f"cannot open camera {i}")
            cap.set(cv2.CAP_PROP_FPS, cfg.fps)
            self._caps.append(cap)
        self.size = cfg.size
        self.dropped = 0
        self.fps = float(cfg.fps)

    def _gray(self, img: np.ndarray) -> np.ndarray:
        cv2 = self._cv2
        g = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY) if img.ndim == 3 else img
        return cv2.resize(g, (self.size, self.size), interpolation=cv2.INTER_AREA)

    def __iter__(self) -> Iterator[HmcCapture]:
        while True:
            imgs = []
            for cap in self._caps:
                ok, img = cap.read()
                if not ok:
                    break
                imgs.append(img)
            if len(imgs) != len(self._caps):
                self.dropped += 1
                continue
            ts = now_ns()
            if len(imgs) == 1:
                w = imgs[0].shape[1] // 3
                imgs = [imgs[0][:, k * w:(k + 1) * w] for k in range(3)]
            yield HmcCapture(np.stack([self._gray(i) for i in imgs]), ts)

    def close(self) -> None:
        for cap in self._caps:
            cap.release()
        self._caps = []


def open_source(cfg: SourceConfig) -> HmcSource:
    """The source named by ``cfg.kind``."""
    kinds = {"synthetic": SyntheticSource, "replay": ReplaySource, "camera": CameraSource}
    if cfg.kind not in kinds:
        raise ValueError(f"unknown source kind {cfg.kind!r}; one of {sorted(kinds)}")
    return kinds[cfg.kind](cfg)
