"""Presenters: where the receiver's rendered frames go (mp4 file, PNG frames, a window).

``present(image, pres_ns, seq)`` is what the receiver times as its "present"
stage. For a window that is the draw itself; file presenters hand the frame to
a writer thread (the file is a recording of what would be shown, its encoding
is not on the frame's path), with a bounded queue: a writer that falls behind
drops frames and counts them rather than delaying the call.

Videos are H.264 (yuv420p) in MP4 with the ``moov`` atom at the front
(``+faststart``), written with PyAV, so browsers, QuickTime and chat apps play
them; :class:`VideoWriter` is the one writer the presenter and the call
composer (``runtime.compose``) share. Where PyAV or its H.264 encoder is
missing it falls back to OpenCV's MPEG-4 Part 2 (``mp4v``) with one warning.

Outputs are checked before a receiver starts (:func:`check_video_path`,
:func:`check_output_dir`: a ``ValueError`` with one line). A writer that fails
while running logs one line, stops accepting frames, and says so in
``result()``: ``{"path", "frames_written", "ok", "error"}``; ``ok`` is true only
when a finished file (or directory of PNGs) with at least one frame exists.
"""
from __future__ import annotations

import functools
import logging
import os
import queue
import tempfile
import threading
from fractions import Fraction
from pathlib import Path

import numpy as np

from avcore.errors import UsageError

log = logging.getLogger(__name__)

#: Containers a video can be written to (H.264 with PyAV; mp4v with the OpenCV fallback).
#: ``.mp4`` is the one to share; ``+faststart`` applies to ``.mp4`` and ``.mov``.
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv")
_FASTSTART = (".mp4", ".mov")


# ----------------------------------------------------------------------------------------------- output checks

def _check_writable_dir(d: Path) -> None:
    """Create ``d`` (and parents) if needed and prove a file can be created in it."""
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create directory {d}: {exc.strerror or exc}") from None
    if not d.is_dir():
        raise UsageError(f"{d} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(dir=d, prefix=".avcall-write-test-")
    except OSError as exc:
        raise UsageError(f"directory {d} is not writable: {exc.strerror or exc}") from None
    os.close(fd)
    os.unlink(probe)


def check_video_path(path: str | Path) -> Path:
    """Check before starting that a video can be written at ``path``; returns it as a Path.

    Raises ``ValueError`` with one line when the extension is not a container
    avcall writes (``.mp4``; also ``.mov``, ``.mkv``), when the path is a
    directory, or when its directory cannot be created or written. Creates the
    missing parent directories (the presenter would).
    """
    p = Path(path)
    ext = p.suffix.lower()
    if ext not in VIDEO_EXTENSIONS:
        raise UsageError(f"{path}: {'extension ' + repr(ext) if ext else 'no extension'} is not a video container "
                         f"avcall writes; use .mp4 (also {', '.join(VIDEO_EXTENSIONS[1:])})")
    if p.is_dir():
        raise UsageError(f"{path} is a directory, not a video file")
    _check_writable_dir(p.parent)
    if p.exists() and not os.access(p, os.W_OK):
        raise UsageError(f"{path} exists and is not writable")
    return p


def check_output_dir(path: str | Path) -> Path:
    """Check before starting that files can be written into directory ``path`` (created if missing).

    Raises ``ValueError`` with one line otherwise; returns it as a Path.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UsageError(f"{path} exists and is not a directory")
    _check_writable_dir(p)
    return p


# ----------------------------------------------------------------------------------------------- video writer

@functools.lru_cache(maxsize=None)
def h264_encoder() -> str | None:
    """Name of PyAV's H.264 encoder (``libx264``, else ``h264``), or None when PyAV or the encoder is missing."""
    try:
        import av
    except ImportError:
        return None
    for name in ("libx264", "h264"):
        try:
            av.codec.Codec(name, "w")
        except Exception:
            continue
        return name
    return None


_warned_fallback = False


def _warn_fallback_once() -> None:
    global _warned_fallback
    if not _warned_fallback:
        _warned_fallback = True
        log.warning("PyAV's H.264 encoder is not available; writing MPEG-4 Part 2 (mp4v) with OpenCV, which browsers "
                    "and QuickTime do not play (pip install av)")


class VideoWriter:
    """Writes uint8 (H, W, 3) frames to a video file at a fixed frame rate.

    H.264, yuv420p, ``+faststart`` through PyAV (``codec`` = ``"h264"``); OpenCV
    ``mp4v`` (``codec`` = ``"mp4v"``) where PyAV or its H.264 encoder is
    missing, or with ``backend="opencv"``. ``pixel_format`` says the channel
    order of the frames given: ``"rgb24"`` or ``"bgr24"``. ``crf``/``preset``
    are x264's quality and speed; ``threads`` its encoder threads (1: the
    writer should not compete with the call for the cores).

    The file is opened at the first frame (its size is the video's). yuv420p
    needs even sizes: an odd width or height is **padded** by one column/row
    repeating the last one (nothing of the picture is cropped), so a 63×65 frame
    becomes a 64×66 video (both backends, so the size does not depend on which). Every frame must have the first one's size.
    :meth:`close` flushes the encoder and finalises the container; until then
    the file is not playable. ``frames`` counts the frames written.
    """

    def __init__(self, path: str | Path, fps: float, *, pixel_format: str = "rgb24", backend: str = "auto",
                 crf: int = 20, preset: str = "veryfast", threads: int = 1) -> None:
        if pixel_format not in ("rgb24", "bgr24"):
            raise UsageError(f"pixel_format must be rgb24 or bgr24, not {pixel_format!r}")
        if backend not in ("auto", "pyav", "opencv"):
            raise UsageError(f"backend must be auto, pyav or opencv, not {backend!r}")
        self.path = Path(path)
        self.fps = float(fps)
        if not self.fps > 0:
            raise UsageError(f"fps must be positive, not {fps}")
        self.pixel_format = pixel_format
        self.frames = 0
        self.size: tuple[int, int] | None = None  # (width, height) of the video (even with PyAV)
        self._input_size: tuple[int, int] | None = None
        self._encoder = None
        if backend in ("auto", "pyav"):
            self._encoder = h264_encoder()
            if self._encoder is None:
                if backend == "pyav":
                    raise RuntimeError("PyAV with an H.264 encoder is not installed (pip install av)")
                _warn_fallback_once()
        self.codec = "h264" if self._encoder else "mp4v"
        self._opts = {"crf": str(int(crf)), "preset": preset}
        self._threads = int(threads)
        self._container = None
        self._stream = None
        self._cv = None
        self._closed = False

    def _open(self, w: int, h: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._encoder:
            import av

            container_options = {"movflags": "+faststart"} if self.path.suffix.lower() in _FASTSTART else {}
            container = av.open(str(self.path), mode="w", container_options=container_options)
            try:
                stream = container.add_stream(self._encoder, rate=Fraction(self.fps).limit_denominator(1001))
                stream.width, stream.height = w + (w & 1), h + (h & 1)
                stream.pix_fmt = "yuv420p"
                if stream.codec_context.name == "libx264":
                    stream.options = dict(self._opts)
                stream.codec_context.thread_count = self._threads
                container.start_encoding()  # opens the file now: an unwritable path fails at the first frame
            except BaseException:
                container.close()
                raise
            self._container, self._stream = container, stream
            self.size = (stream.width, stream.height)
        else:
            import cv2

            size = (w + (w & 1), h + (h & 1))
            writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, size)
            if not writer.isOpened():
                raise OSError(f"OpenCV cannot open a video writer for {self.path}")
            self._cv = writer
            self.size = size
        self._input_size = (w, h)

    def write(self, image: np.ndarray) -> None:
        """Append one frame (H, W, 3) uint8 in ``pixel_format`` order."""
        if self._closed:
            raise UsageError(f"{self.path}: writer is closed")
        img = np.asarray(image)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise UsageError(f"frames must be (H, W, 3) uint8, not {img.shape} {img.dtype}")
        h, w = img.shape[:2]
        if self._input_size is None:
            self._open(w, h)
        elif (w, h) != self._input_size:
            raise UsageError(f"frame size {w}x{h} differs from the video's first frame {self._input_size[0]}x"
                             f"{self._input_size[1]}")
        if (w, h) != self.size:
            img = np.pad(img, ((0, self.size[1] - h), (0, self.size[0] - w), (0, 0)), mode="edge")
        if self._stream is not None:
            import av

            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format=self.pixel_format)
            frame.pts = self.frames
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        else:
            bgr = img if self.pixel_format == "bgr24" else img[:, :, ::-1]
            self._cv.write(np.ascontiguousarray(bgr))
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder and finalise the file (moov atom); safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._container is not None:
            container, self._container = self._container, None
            try:
                for packet in self._stream.encode(None):
                    container.mux(packet)
            finally:
                container.close()
        if self._cv is not None:
            self._cv.release()
            self._cv = None

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ----------------------------------------------------------------------------------------------- presenters

class Presenter:
    dropped: int = 0

    def present(self, image: np.ndarray, pres_ns: int, seq: int) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        pass


class _ThreadedWriter(Presenter):
    """Runs ``_write`` on a background thread fed by a bounded queue.

    The first failure of ``_write`` (or of ``_finish``) is logged as one line and
    kept in ``error``; from then on frames are not accepted (counted in
    ``dropped``). ``close()`` writes what is queued, then ``_finish``es.
    """

    QUEUE = 64

    def __init__(self) -> None:
        self.dropped = 0
        self.written = 0
        self.error: str | None = None
        self._closing = False
        self._q: queue.Queue = queue.Queue(self.QUEUE)
        self._thread = threading.Thread(target=self._run, name=type(self).__name__, daemon=True)
        self._thread.start()

    @property
    def _target(self) -> Path:  # pragma: no cover - interface
        raise NotImplementedError

    def present(self, image: np.ndarray, pres_ns: int, seq: int) -> None:
        if self.error is not None or self._closing:
            self.dropped += 1
            return
        try:
            self._q.put_nowait((image, pres_ns, seq))
        except queue.Full:
            self.dropped += 1

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = f"{type(exc).__name__}: {exc}"
            log.error("%s %s failed, no more frames are written: %s", type(self).__name__, self._target, self.error)

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                break
            if self.error is not None:
                self.dropped += 1
                continue
            try:
                self._write(*item)
            except Exception as exc:  # unwritable path, disk full and the like: one line, then stop
                self._fail(exc)
                self.dropped += 1
                continue
            self.written += 1
        try:
            self._finish()
        except Exception as exc:
            self._fail(exc)

    def _write(self, image: np.ndarray, pres_ns: int, seq: int) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def _finish(self) -> None:
        pass

    def close(self) -> None:
        """Write what is queued, then finish the output (flush, finalise); safe to call again."""
        if not self._closing:
            self._closing = True
            self._q.put(None)
        self._thread.join()

    @property
    def finished(self) -> bool:
        """``close()`` has run to the end (the output is final). Not ``closed``: the receiver reads that as
        "the window was closed"."""
        return self._closing and not self._thread.is_alive()

    def _frames_written(self) -> int:
        return self.written

    def _exists(self) -> bool:  # pragma: no cover - interface
        raise NotImplementedError

    def result(self) -> dict:
        """What was really written: ``{"path", "frames_written", "ok", "error"}``.

        ``ok`` is true only after ``close()``, with no error and at least one frame in a file that exists:
        report an output only then. No frame presented: no file, ``ok`` false, ``error`` None. A writer
        that failed: ``ok`` false, ``error`` its one line, ``frames_written`` what it wrote before failing
        (for a video: frames handed to the encoder; the file may be unfinished)."""
        n = self._frames_written()
        ok = self.finished and self.error is None and n > 0 and self._exists()
        return {"path": str(self._target), "frames_written": n, "ok": ok, "error": self.error}


class VideoPresenter(_ThreadedWriter):
    """A video (H.264 mp4, see :class:`VideoWriter`) at a fixed frame rate; each frame is placed at its
    presentation time (repeated to fill gaps), so the video plays back in real time. ``frame_seqs``
    lists the sequence number shown in each video frame (-1 before the first).

    The path is checked at construction (:func:`check_video_path`, ``ValueError``); the file is created
    at the first frame, so no frame presented means no file.
    """

    def __init__(self, path: str | Path, fps: float = 30.0, *, backend: str = "auto") -> None:
        self.path = check_video_path(path)
        self.fps = float(fps)
        self.frame_seqs: list[int] = []
        # x264 "ultrafast": about the CPU time of the old mp4v writer (~4 ms per 512² frame here), so recording
        # does not take a core from the call; files are ~3x larger than "veryfast" (compose uses that, after the call).
        self._video = VideoWriter(self.path, self.fps, pixel_format="rgb24", backend=backend, preset="ultrafast")
        self.codec = self._video.codec
        self._t0: int | None = None
        self._last = None
        super().__init__()

    @property
    def _target(self) -> Path:
        return self.path

    def _write(self, image: np.ndarray, pres_ns: int, seq: int) -> None:
        video = self._video
        if self._t0 is None:
            self._t0 = pres_ns
        index = round((pres_ns - self._t0) * self.fps / 1e9)
        while self._last is not None and len(self.frame_seqs) < index:  # hold the previous frame
            video.write(self._last[0])
            self.frame_seqs.append(self._last[1])
        if len(self.frame_seqs) <= index:
            video.write(image)
            self.frame_seqs.append(seq)
        self._last = (image, seq)

    def _finish(self) -> None:
        self._video.close()

    def _frames_written(self) -> int:
        return self._video.frames

    def _exists(self) -> bool:
        return self.path.is_file() and self.path.stat().st_size > 0

    def result(self) -> dict:
        return {**super().result(), "codec": self.codec, "fps": self.fps}


class PngPresenter(_ThreadedWriter):
    """Every presented frame as ``DIR/frame_SEQ.png``; the directory is checked at construction
    (:func:`check_output_dir`, ``ValueError``)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = check_output_dir(directory)
        super().__init__()

    @property
    def _target(self) -> Path:
        return self.directory

    def _write(self, image: np.ndarray, pres_ns: int, seq: int) -> None:
        import cv2

        path = self.directory / f"frame_{seq:06d}.png"
        if not cv2.imwrite(str(path), np.ascontiguousarray(image[:, :, ::-1])):
            raise OSError(f"cannot write {path}")

    def _exists(self) -> bool:
        return self.directory.is_dir()


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
