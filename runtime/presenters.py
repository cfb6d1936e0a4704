"""Presenters: where the receiver's rendered frames go (mp4 file, PNG frames, a window).

``present(image, pres_ns, seq)`` is what the receiver times as its "present"
stage. For a window that is the draw itself; file presenters hand the frame to
a writer thread (the file is a recording of what would be shown, its encoding
is not on the frame's path), with a bounded queue: a writer that falls behind
drops frames and counts them rather than delaying the call.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


class Presenter:
    dropped: int = 0

    def present(self, image: np.ndarray, pres_ns: int, seq: int) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        pass


class _ThreadedWriter(Presenter):
    """Runs ``_write`` on a background thread fed by a bounded queue."""

    QUEUE = 64

    def __init__(self) -> None:
        self.dropped = 0
        self.written = 0
        self._q: queue.Queue = queue.Queue(self.QUEUE)
        self._thread = threading.Thread(target=self._run, name=type(self).__name__, daemon=True)
        self._thread.start()

    def present(self, image: np.ndarray, pres_ns: int, seq: int) -> None:
        try:
            self._q.put_nowait((image, pres_ns, seq))
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                break
            try:
                self._write(*item)
            except Exception:  # pragma: no cover - disk full and the like
                log.exception("%s failed; frames are dropped from now on", type(self).__name__)
                self.dropped += 1
                continue
            self.written += 1
        self._finish()

    def _write(self, image: np.ndarray, pres_ns: int, seq: int) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def _finish(self) -> None:
        pass

    def close(self) -> None:
        if self._thread.is_alive():
            self._q.put(None)
            self._thread.join()


class VideoPresenter(_ThreadedWriter):
    """mp4 (mp4v) at a fixed frame rate; each frame is placed at its presentation time
    (repeated to fill gaps), so the video plays back in real time. ``frame_seqs``
    lists the sequence number shown in each video frame (-1 before the first)."""

    def __init__(self, path: str | Path, fps: float = 30.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fps = float(fps)
        self.frame_seqs: list[int] = []
        self._writer = None
        self._t0: int | None = None
        self._last = None
        super().__init__()

    def _write(self, image: np.ndarray, pres_ns: int, seq: int) -> None:
        import cv2

        bgr = np.ascontiguousarray(image[:, :, ::-1])
        if self._writer is None:
            h, w = bgr.shape[:2]
            self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h))
            if not self._writer.isOpened():
                raise RuntimeError(f"cannot open video writer for {self.path}")
            self._t0 = pres_ns
        index = round((pres_ns - self._t0) * self.fps / 1e9)
        while self._last is not None and len(self.frame_seqs) < index:  # hold the previous frame
            self._writer.write(self._last[0])
            self.frame_seqs.append(self._last[1])
        if len(self.frame_seqs) <= index:
            self._writer.write(bgr)
            self.frame_seqs.append(seq)
        self._last = (bgr, seq)

    def _finish(self) -> None:
        if self._writer is not None:
            self._writer.release()


class PngPresenter(_ThreadedWriter):
    """Every presented frame as ``DIR/frame_SEQ.png``."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        super().__init__()

    def _write(self, image: np.ndarray, pres_ns: int, seq: int) -> None:
        import cv2

        cv2.imwrite(str(self.directory / f"frame_{seq:06d}.png"), np.ascontiguousarray(image[:, :, ::-1]))


class WindowPresenter(Presenter):
    """An OpenCV window (needs a display); closing it or pressing q/Esc sets ``closed``."""

    def __init__(self, title: str = "avcall") -> None:
        if not has_display():
            raise RuntimeError("no display (DISPLAY/WAYLAND_DISPLAY unset): use --out or --png-dir instead of --window")
        import cv2

        self._cv2 = cv2
        self.title = title
        self.closed = False
        cv2.namedWindow(title, cv2.WINDOW_AUTOSIZE)

    def present(self, image: np.ndarray, pres_ns: int, seq: int) -> None:
        cv2 = self._cv2
        cv2.imshow(self.title, np.ascontiguousarray(image[:, :, ::-1]))
        if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
            self.closed = True

    def close(self) -> None:
        self._cv2.destroyWindow(self.title)


def has_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
