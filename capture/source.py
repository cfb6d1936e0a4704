"""A live synthetic HMC source: a performance rendered through the studio at the headset's rate.

Frames are produced on a fixed schedule (``fps``); each carries its capture
timestamp (``time.time_ns()`` at the moment the frame is due, as a camera's
sensor timestamp would). When ``live`` and rendering falls more than one frame
behind, due frames are dropped (counted in ``dropped``) rather than delivered
late, as a real camera would.

Clock domain: the stamps are wall-clock (``time.time_ns()``, :attr:`clock` =
``"wall"``), so a recording made from this source (``avcall record``) declares
``clock = "wall"`` in its header. The sender's runtime does not use these
stamps: it restamps every frame on its monotonic clock (``runtime/sources.py``).
"""
from __future__ import annotations

import math
import time
from typing import Iterator

import numpy as np

from .look import StudioLook
from .performance import PerformanceConfig, generate_performance
from .studio import Studio

CHUNK_SECONDS = 60.0


class SyntheticHmcSource:
    clock = "wall"
    """Clock domain of the capture timestamps this source yields (``time.time_ns()``)."""

    def __init__(
        self,
        identity: str = "S1",
        fps: float = 90.0,
        seed: int = 0,
        ground_truth: bool = True,
        live: bool = True,
        session: int | None = None,
        studio: Studio | None = None,
        with_vertices: bool = True,
    ):
        if not math.isfinite(fps) or fps <= 0:
            raise ValueError(f"fps must be positive and finite, got {fps}")
        self.fps = float(fps)
        self.seed = int(seed)
        self.ground_truth = ground_truth
        self.with_vertices = with_vertices
        self.live = live
        # Headset frames only: they do not depend on the colour look, and the plain one skips its set-up.
        self.studio = studio or Studio(identity, session=self.seed if session is None else session, look=StudioLook.plain())
        self.identity = self.studio.head.params.name
        self.dropped = 0
        self.delivered = 0
        self._chunk_index = -1
        self._chunk = None

    def pose_at(self, frame: int):
        """(expression, gaze) of frame ``frame``; performances are generated a minute at a time."""
        n_chunk = int(CHUNK_SECONDS * self.fps)
        c, i = divmod(frame, n_chunk)
        if c != self._chunk_index:
            self._chunk = generate_performance(self.seed * 1000 + c, CHUNK_SECONDS, PerformanceConfig(fps=self.fps))
            self._chunk_index = c
        return self._chunk.expression[i], self._chunk.gaze[i]

    def frames(self, seconds: float | None = None, count: int | None = None) -> Iterator[tuple[np.ndarray, int, dict | None]]:
        """Yield ``(views (3, S, S) uint8, capture_ts_ns, ground_truth | None)``."""
        total = count if count is not None else (None if seconds is None else int(round(seconds * self.fps)))
        period_ns = int(1e9 / self.fps)
        if self.live and total != 0:
            # One-time costs (the first performance chunk, shader and buffer set-up on the first
            # draw) come before the capture clock starts, so they do not drop the first frames.
            expr, gaze = self.pose_at(0)
            self.studio.hmc_frame(expr, gaze, t=0.0, frame_index=0, ground_truth=self.ground_truth)
        t0_mono = time.perf_counter_ns()
        t0_wall = time.time_ns()
        frame = 0
        while total is None or frame < total:
            if self.live:
                due = t0_mono + frame * period_ns
                now = time.perf_counter_ns()
                if now < due:
                    time.sleep((due - now) / 1e9)
                elif now - due > period_ns:
                    skip = min((now - due) // period_ns, (total - frame - 1) if total is not None else 1 << 30)
                    if skip > 0:
                        self.dropped += int(skip)
                        frame += int(skip)
                ts = t0_wall + frame * period_ns
            else:
                ts = t0_wall + frame * period_ns
            expr, gaze = self.pose_at(frame)
            views, gt = self.studio.hmc_frame(expr, gaze, t=frame / self.fps, frame_index=frame, ground_truth=self.ground_truth)
            if gt is not None and not self.with_vertices:
                del gt["vertices"]
            if gt is not None:
                gt["frame"] = np.array(frame, np.int64)
            self.delivered += 1
            yield views, int(ts), gt
            frame += 1

    def close(self):
        self.studio.release()
