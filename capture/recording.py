"""HMC session recordings: the ``.hmc`` file format, its writer, reader and replayer.

A recording holds one headset-camera (HMC) session: per frame the three
near-IR views (left eye, right eye, mouth), the capture timestamp and,
optionally, the studio's ground truth for that frame. The byte layout is
documented in ``docs/hmc-format.md``; in short::

    file   = prefix header record*
    prefix = magic "\\x89AVCHMC\\n" | u16 version | u16 flags | u32 header_len | u32 header_crc
             | u32 prefix_crc (version 2 on; covers the 20 bytes before it)
    header = msgpack map (fps, view_names, size, clock, meta, ...)
    record = 32-byte record header | payload (msgpack map: views, gt)
    record header = "\\x8eHFR" | u32 payload_len | u32 frame_index | u16 flags | u16 reserved
                    | i64 capture_ts_ns | u32 payload_crc | u32 header_crc

Properties the layout is built for:

- **Appendable, crash-safe.** Each record is one ``os.write`` of a complete
  record; a process killed with SIGKILL loses at most the record it was
  writing, and the reader reports that truncated tail and reads all frames
  before it.
- **Corruption stays local.** Every record header carries its own CRC and
  every payload its CRC. A record whose header is damaged is skipped by
  searching forward for the next record marker whose header CRC checks out
  (resynchronisation), so one bad frame never hides the frames after it.
- **Untrusted bytes are validated.** Lengths are capped before allocating,
  arrays are decoded from raw bytes with a dtype whitelist and a shape check,
  and nothing is ever unpickled. The file prefix carries its own CRC
  (version 2), so a flipped bit in the version field reads as a damaged
  header, never as "written by a newer avcall".

Clock domain: the header's ``clock`` names the clock of every capture
timestamp in the file (:data:`CLOCKS`): ``wall`` (``time.time_ns()``),
``monotonic`` (``time.monotonic_ns()`` of the recording host, what the
sender's tap writes) or ``session`` (ns since the start of a synthetic
performance). Version-1 files have no ``clock`` and are read as ``wall``.

Sessions: ``HmcWriter`` flags the first record it writes
(:data:`FLAG_SESSION_START`), so a file continued with ``append=True`` holds
several capture sessions. Duration, recorded fps and replay pacing count only
the time inside sessions, never the gap between them.

Shapes: ``views`` is ``(V, H, W) uint8`` with ``V = len(view_names)`` (3 by
default, in the order left_eye, right_eye, mouth) and ``(H, W) = size``.
"""
from __future__ import annotations

import bisect
import logging
import math
import os
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import msgpack
import numpy as np

from avcore.errors import UsageError

from .rig import HMC_VIEWS

try:  # POSIX advisory locks keep two writers off one file; absent on Windows.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- constants

HMC_MAGIC = b"\x89AVCHMC\n"
"""8 bytes that open every .hmc file (a non-ASCII first byte and a newline, as
in PNG, so text-mode transfers and wrong file types are caught at once)."""

FORMAT_VERSION = 2
"""The version this module writes (2: the file prefix has its own CRC, the header names its clock)."""

READ_VERSIONS = (1, 2)
"""Versions this module reads."""

CLOCKS = ("wall", "monotonic", "session")
"""Clock domains of capture timestamps (the header's ``clock``): ``wall`` = ``time.time_ns()``,
``monotonic`` = ``time.monotonic_ns()`` / ``transport.clock.now_ns()`` of the recording host
(not comparable across hosts or reboots), ``session`` = ns since the start of a synthetic
performance (no real capture clock)."""

RECORD_MARKER = b"\x8eHFR"
"""4 bytes that open every frame record; the scanner resynchronises on it."""

FLAG_GROUND_TRUTH = 0x0001
"""Record-header flag: the payload carries a ground-truth map."""

FLAG_SESSION_START = 0x0002
"""Record-header flag: the first frame of a capture session (each ``HmcWriter`` sets it on
the first record it writes). Time between sessions is not capture time."""

MAX_HEADER_BYTES = 1 << 20
"""Largest file header accepted (1 MiB); a bigger length is treated as corrupt."""

MAX_RECORD_BYTES = 64 << 20
"""Largest record payload written or read (64 MiB): a corrupt length field can
never make the reader allocate more than this."""

MAX_ARRAY_DIMS = 8
MAX_GROUND_TRUTH_KEYS = 256

DEFAULT_VIEW_NAMES = HMC_VIEWS
"""View names written when a writer is not told otherwise: the HMC rig's views, in frame order."""

# Little-endian on disk, whatever the host.
ARRAY_DTYPES: dict[str, np.dtype] = {
    name: np.dtype(name).newbyteorder("<")
    for name in ("uint8", "int16", "int32", "int64", "float16", "float32", "float64", "bool")
}
"""dtype whitelist for arrays stored in a recording (views are always uint8)."""

_PREFIX = struct.Struct("<8sHHII")  # magic, version, flags, header_len, header_crc
_PREFIX_CRC = struct.Struct("<I")  # version >= 2: crc32 of the 20 prefix bytes before it
_RECORD = struct.Struct("<4sIIHHqII")  # marker, payload_len, index, flags, reserved, ts, payload_crc, header_crc
_RECORD_CRC_SPAN = _RECORD.size - 4  # the header CRC covers every field before it
_SCAN_CHUNK = 1 << 20  # bytes read at a time while searching for the next record marker

assert _PREFIX.size == 20 and _RECORD.size == 32


def _crc(data: bytes | memoryview) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


# ----------------------------------------------------------------------------- errors and frames


class HmcFormatError(UsageError):
    """A recording that is not a valid .hmc file, or a frame in it that cannot be read.

    A :class:`avcore.errors.UsageError` (so a ``ValueError``): the ``avcall`` command
    prints it as one line.

    The message names the file and, where it applies, the frame index and the
    byte offset of its record. The same facts are attributes for code.
    """

    def __init__(self, message: str, *, path: str | os.PathLike | None = None,
                 frame: int | None = None, offset: int | None = None):
        self.path = None if path is None else str(path)
        self.frame = frame
        self.offset = offset
        where = []
        if frame is not None:
            where.append(f"frame {frame}")
        if offset is not None:
            where.append(f"byte offset {offset}")
        text = message
        if where:
            text = f"{', '.join(where)}: {text}"
        if self.path is not None:
            text = f"{self.path}: {text}"
        super().__init__(text)


@dataclass
class HmcFrame:
    """One recorded HMC frame."""

    index: int
    """Frame number in the session, 0-based and contiguous as written."""
    capture_ts_ns: int
    """Capture timestamp in ns, on the clock the recording's header names
    (``HmcReader.clock``: ``wall``, ``monotonic`` or ``session``)."""
    views: np.ndarray
    """(V, H, W) uint8 camera views, in the recording's ``view_names`` order."""
    ground_truth: dict[str, np.ndarray] | None = None
    """Studio ground truth for the frame (e.g. ``expression`` (E,) float32,
    ``gaze`` (2, 2) float32, ``keypoints`` (3, K, 2) float32, ``vertices``
    (V, 3) float32), or None when the frame was recorded without it."""


def views_side_by_side(views: np.ndarray) -> np.ndarray:
    """(V, H, W) uint8 views → one (H, V*W) uint8 image, views left to right."""
    if views.ndim != 3:
        raise ValueError(f"expected (V, H, W) views, got shape {views.shape}")
    return np.ascontiguousarray(np.concatenate(list(views), axis=1))


# ----------------------------------------------------------------------------- array codec


def _encode_array(name: str, value) -> dict:
    arr = np.asarray(value)
    if arr.dtype.name not in ARRAY_DTYPES:
        raise ValueError(
            f"{name}: dtype {arr.dtype} cannot be recorded "
            f"(allowed: {', '.join(ARRAY_DTYPES)})")
    if arr.ndim > MAX_ARRAY_DIMS:
        raise ValueError(f"{name}: {arr.ndim} dimensions, at most {MAX_ARRAY_DIMS} allowed")
    arr = arr.astype(ARRAY_DTYPES[arr.dtype.name], order="C", copy=False)  # keeps 0-d shapes
    return {"dtype": arr.dtype.name, "shape": list(arr.shape), "data": arr.tobytes()}


def _decode_array(obj, what: str) -> np.ndarray:
    """Rebuild an array from its msgpack map, validating every field; raises ValueError."""
    if not isinstance(obj, dict) or set(obj) != {"dtype", "shape", "data"}:
        raise ValueError(f"{what}: not an encoded array")
    dtype_name, shape, data = obj["dtype"], obj["shape"], obj["data"]
    if not isinstance(dtype_name, str) or dtype_name not in ARRAY_DTYPES:
        raise ValueError(f"{what}: dtype {dtype_name!r} not allowed")
    if (not isinstance(shape, list) or len(shape) > MAX_ARRAY_DIMS
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise ValueError(f"{what}: invalid shape {shape!r}")
    if not isinstance(data, bytes):
        raise ValueError(f"{what}: data is not a byte string")
    dtype = ARRAY_DTYPES[dtype_name]
    expected = math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(f"{what}: {len(data)} data bytes for shape {shape} {dtype_name} "
                         f"(expected {expected})")
    # astype copies into a writable, native-endian array.
    return np.frombuffer(data, dtype=dtype).reshape(tuple(shape)).astype(dtype.newbyteorder("="))


# ----------------------------------------------------------------------------- header


@dataclass(frozen=True)
class HmcHeader:
    """The file header: what every frame of the recording shares."""

    fps: float
    """Nominal capture rate in frames per second."""
    view_names: tuple[str, ...]
    """Names of the views, in the order of a frame's ``views`` axis 0."""
    size: tuple[int, int]
    """(H, W) of each view in pixels."""
    meta: dict
    """Free-form session metadata (identity, source, seed, ...): msgpack-able
    str-keyed map of str / int / float / bool / None / lists / maps."""
    created_ns: int = 0
    """``time.time_ns()`` when the file was created."""
    version: int = FORMAT_VERSION
    clock: str = "wall"
    """Clock domain of every capture timestamp in the file (one of :data:`CLOCKS`)."""

    def to_map(self) -> dict:
        return {"format": "avcall.hmc", "fps": float(self.fps), "view_names": list(self.view_names),
                "size": [int(self.size[0]), int(self.size[1])], "clock": self.clock, "meta": self.meta,
                "created_ns": int(self.created_ns)}


def _check_clock(clock) -> str:
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {', '.join(CLOCKS)}, got {clock!r}")
    return clock


def _validate_header_fields(fps, view_names, size) -> tuple[float, tuple[str, ...], tuple[int, int]]:
    """Check fps / view names / size (raises ValueError) and return them normalised."""
    try:
        fps = float(fps)
    except (TypeError, ValueError):
        raise ValueError(f"fps must be a number, got {fps!r}") from None
    if not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be positive and finite, got {fps}")
    if isinstance(view_names, str) or not view_names or not all(
            isinstance(n, str) and n for n in view_names):
        raise ValueError(f"view_names must be a non-empty sequence of names, got {view_names!r}")
    if len(set(view_names)) != len(view_names):
        raise ValueError(f"view_names must be distinct, got {view_names!r}")
    if (len(size) != 2 or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool)
                                  and 0 < s <= 16384 for s in size)):
        raise ValueError(f"size must be (H, W) positive integers, got {size!r}")
    return fps, tuple(view_names), (int(size[0]), int(size[1]))


def _pack_header(header: HmcHeader) -> bytes:
    try:
        body = msgpack.packb(header.to_map(), use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"meta cannot be stored in a recording header: {exc}") from None
    if len(body) > MAX_HEADER_BYTES:
        raise ValueError(f"header is {len(body)} bytes, at most {MAX_HEADER_BYTES} allowed")
    prefix = _PREFIX.pack(HMC_MAGIC, FORMAT_VERSION, 0, len(body), _crc(body))
    return prefix + _PREFIX_CRC.pack(_crc(prefix)) + body


def _read_header(fd: int, path: str, file_size: int) -> tuple[HmcHeader, int]:
    """Parse the prefix and header; returns (header, offset of the first record)."""
    if file_size == 0:
        raise HmcFormatError("empty file: not an .hmc recording (no header was written)", path=path)
    prefix = os.pread(fd, _PREFIX.size + _PREFIX_CRC.size, 0)
    if len(prefix) < len(HMC_MAGIC) or prefix[:len(HMC_MAGIC)] != HMC_MAGIC:
        raise HmcFormatError(
            f"not an .hmc recording (file starts with {prefix[:8]!r}, expected magic {HMC_MAGIC!r})",
            path=path)
    if len(prefix) < 10:
        raise HmcFormatError(f"truncated file header ({file_size} bytes)", path=path)
    (version,) = struct.unpack_from("<H", prefix, 8)
    # Version 1 has a 20-byte prefix without a CRC; every later version (by this
    # rule, also ones not written yet) has 24 bytes, the last 4 a CRC of the first 20.
    prefix_len = _PREFIX.size if version == 1 else _PREFIX.size + _PREFIX_CRC.size
    if len(prefix) < prefix_len:
        raise HmcFormatError(f"truncated file header ({file_size} bytes)", path=path)
    if version != 1:
        (stored,) = _PREFIX_CRC.unpack_from(prefix, _PREFIX.size)
        if stored != _crc(prefix[:_PREFIX.size]):
            raise HmcFormatError(
                f"damaged header: the file prefix checksum does not match (its version field "
                f"reads {version}; the file is corrupt, not from a newer avcall)", path=path)
    if version not in READ_VERSIONS:
        newer = " (written by a newer avcall; upgrade to read it)" if version > FORMAT_VERSION else ""
        raise HmcFormatError(
            f"unsupported .hmc format version {version}; this avcall reads versions "
            f"{', '.join(map(str, READ_VERSIONS))}{newer}", path=path)
    _, version, _flags, header_len, header_crc = _PREFIX.unpack(prefix[:_PREFIX.size])
    if header_len > MAX_HEADER_BYTES:
        raise HmcFormatError(f"header length {header_len} exceeds the {MAX_HEADER_BYTES}-byte cap "
                             "(corrupt file header)", path=path)
    body = os.pread(fd, header_len, prefix_len)
    if len(body) < header_len:
        raise HmcFormatError(f"truncated file header: {len(body)} of {header_len} header bytes",
                             path=path)
    if _crc(body) != header_crc:
        raise HmcFormatError("file header checksum mismatch (corrupt header)", path=path)
    try:
        obj = msgpack.unpackb(body, raw=False, strict_map_key=True)
        if not isinstance(obj, dict) or obj.get("format") != "avcall.hmc":
            raise ValueError("header is not an avcall.hmc map")
        fps, view_names, size = _validate_header_fields(
            obj.get("fps"), obj.get("view_names") or (), tuple(obj.get("size") or ()))
        meta = obj.get("meta") or {}
        if not isinstance(meta, dict):
            raise ValueError("meta is not a map")
        created_ns = obj.get("created_ns", 0)
        created_ns = created_ns if isinstance(created_ns, int) else 0
        clock = obj.get("clock", "wall")  # version 1 had no clock key: its stamps were documented as wall clock
        if not isinstance(clock, str) or not clock:
            raise ValueError(f"clock is not a name: {clock!r}")
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise HmcFormatError(f"invalid file header: {exc}", path=path) from None
    header = HmcHeader(fps=fps, view_names=view_names, size=size, meta=meta,
                       created_ns=created_ns, version=version, clock=clock)
    return header, prefix_len + header_len


# ----------------------------------------------------------------------------- records


@dataclass(frozen=True)
class _Entry:
    """Where one record lives, from its (CRC-checked) record header."""

    offset: int
    payload_len: int
    index: int
    flags: int
    capture_ts_ns: int
    payload_crc: int

    @property
    def end(self) -> int:
        return self.offset + _RECORD.size + self.payload_len


def _parse_record_header(buf: bytes, offset: int) -> _Entry | None:
    """A record header if ``buf`` (32 bytes) is one whose CRC checks out, else None."""
    if len(buf) < _RECORD.size or buf[:4] != RECORD_MARKER:
        return None
    _, plen, index, flags, _reserved, ts, pcrc, hcrc = _RECORD.unpack(buf[:_RECORD.size])
    if hcrc != _crc(buf[:_RECORD_CRC_SPAN]) or plen > MAX_RECORD_BYTES:
        return None
    return _Entry(offset, plen, index, flags, ts, pcrc)


def _encode_record(index: int, capture_ts_ns: int, views: np.ndarray,
                   ground_truth: Mapping[str, np.ndarray] | None, *, session_start: bool = False) -> bytes:
    payload_map = {"views": _encode_array("views", views), "gt": None}
    flags = FLAG_SESSION_START if session_start else 0
    if ground_truth is not None:
        if not isinstance(ground_truth, Mapping):
            raise ValueError(f"ground_truth must be a dict of arrays, got {type(ground_truth).__name__}")
        if len(ground_truth) > MAX_GROUND_TRUTH_KEYS:
            raise ValueError(f"ground_truth has {len(ground_truth)} entries, "
                             f"at most {MAX_GROUND_TRUTH_KEYS} allowed")
        gt = {}
        for key, value in ground_truth.items():
            if not isinstance(key, str) or not key:
                raise ValueError(f"ground_truth keys must be non-empty strings, got {key!r}")
            gt[key] = _encode_array(f"ground_truth[{key!r}]", value)
        payload_map["gt"] = gt
        flags |= FLAG_GROUND_TRUTH
    payload = msgpack.packb(payload_map, use_bin_type=True)
    if len(payload) > MAX_RECORD_BYTES:
        raise ValueError(f"frame {index}: record payload is {len(payload)} bytes, "
                         f"at most {MAX_RECORD_BYTES} allowed")
    head = _RECORD.pack(RECORD_MARKER, len(payload), index, flags, 0, capture_ts_ns, _crc(payload), 0)
    head = head[:_RECORD_CRC_SPAN] + struct.pack("<I", _crc(head[:_RECORD_CRC_SPAN]))
    return head + payload


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


# ----------------------------------------------------------------------------- writer


def _raise_append_mismatches(path, old: HmcHeader, *, fps=None, view_names=None, size=None,
                             meta=None, clock=None, match_meta: Mapping | None = None) -> None:
    """HmcFormatError naming every setting in which ``old`` differs from the session to append
    (arguments left None are not compared)."""
    mismatches = []
    if fps is not None and not math.isclose(old.fps, fps, rel_tol=1e-9):
        mismatches.append(f"fps {old.fps:g} != {fps:g}")
    if view_names is not None and old.view_names != tuple(view_names):
        mismatches.append(f"view_names {list(old.view_names)} != {list(view_names)}")
    if size is not None and old.size != tuple(size):
        mismatches.append(f"size {list(old.size)} != {list(size)}")
    if clock is not None and old.clock != clock:
        mismatches.append(f"timestamps on the {old.clock} clock, this session's on the {clock} clock")
    if meta is not None and msgpack.unpackb(msgpack.packb(meta, use_bin_type=True),
                                            raw=False) != old.meta:
        mismatches.append(f"meta {old.meta!r} != {meta!r}")
    for key, value in (match_meta or {}).items():
        if old.meta.get(key) != value:
            mismatches.append(f"{key} {old.meta.get(key)!r} in the file, {value!r} in this session")
    if mismatches:
        raise HmcFormatError("cannot append: the recording does not match this session ("
                             + "; ".join(mismatches) + ")", path=path)


def check_append(path: str | os.PathLike, *, fps: float | None = None,
                 view_names: Iterable[str] | None = None, size: tuple[int, int] | None = None,
                 clock: str | None = None, match_meta: Mapping | None = None) -> int:
    """Whether a session with these settings may be appended to ``path``, checked before any
    capture starts. Raises ``HmcFormatError`` (a ValueError, one line) when the file is not a
    readable recording or differs; returns the frames already in it (0 when the file is
    missing or empty, which ``append`` creates)."""
    path = Path(path)
    if not path.exists() or (path.is_file() and path.stat().st_size == 0):
        return 0
    with HmcReader(path) as reader:
        _raise_append_mismatches(path, reader.header, fps=fps, view_names=view_names, size=size,
                                 clock=clock, match_meta=match_meta)
        return len(reader)



class HmcWriter:
    """Writes an .hmc recording frame by frame, as it is captured.

    Every ``append`` builds the complete record in memory and hands it to the
    OS in one ``write``; nothing is buffered in the process, so a SIGKILL
    loses at most the record being written. Pass ``fsync=True`` to also survive
    power loss per frame (``close`` always fsyncs). Use as a context manager.

    With ``append=True`` an existing recording is continued: its header must
    match ``fps``, ``view_names``, ``size`` and ``clock`` (and ``meta`` if given;
    ``match_meta`` names meta entries that must be equal, e.g. the identity), an
    incomplete record left at its end by a crash is cut off, and frame indices
    continue after the last record. A missing file is created.

    ``clock`` declares the clock of the ``capture_ts_ns`` passed to ``append``
    (one of :data:`CLOCKS`); it is stored in the header. The first record each
    writer writes is flagged as the start of a capture session.
    """

    def __init__(self, path: str | os.PathLike, *, fps: float,
                 view_names: Iterable[str] = DEFAULT_VIEW_NAMES,
                 size: tuple[int, int] = (192, 192), meta: dict | None = None,
                 append: bool = False, fsync: bool = False, clock: str = "wall",
                 match_meta: Mapping | None = None):
        self.path = Path(path)
        fps, view_names, size = _validate_header_fields(fps, tuple(view_names), tuple(size))
        clock = _check_clock(clock)
        self.fsync = bool(fsync)
        self._fd: int | None = None
        self._next_index = 0
        self._session_started = False
        self.bytes_written = 0
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise HmcFormatError("another process is writing this recording",
                                         path=self.path) from None
            existing = os.fstat(fd).st_size
            if append and existing > 0:
                self.header = self._continue(fd, fps, view_names, size, meta, clock, match_meta)
            else:
                self.header = HmcHeader(fps=fps, view_names=view_names, size=size,
                                        meta=dict(meta or {}), created_ns=time.time_ns(), clock=clock)
                blob = _pack_header(self.header)
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                _write_all(fd, blob)
                self.bytes_written += len(blob)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def _continue(self, fd: int, fps, view_names, size, meta, clock, match_meta) -> HmcHeader:
        with HmcReader(self.path) as reader:
            old = reader.header
            _raise_append_mismatches(self.path, old, fps=fps, view_names=view_names, size=size,
                                     meta=meta, clock=clock, match_meta=match_meta)
            end = reader._data_end
            self._next_index = reader._last_index + 1
            if reader._file_size > end:
                log.warning("%s: cutting %d bytes of incomplete record after byte offset %d "
                            "before appending", self.path, reader._file_size - end, end)
        os.ftruncate(fd, end)
        os.lseek(fd, end, os.SEEK_SET)
        return old

    # -- properties mirroring the header
    @property
    def fps(self) -> float:
        return self.header.fps

    @property
    def view_names(self) -> tuple[str, ...]:
        return self.header.view_names

    @property
    def size(self) -> tuple[int, int]:
        return self.header.size

    @property
    def clock(self) -> str:
        return self.header.clock

    @property
    def frames(self) -> int:
        """Index the next appended frame will get (= frames in the file when it is intact)."""
        return self._next_index

    @property
    def closed(self) -> bool:
        return self._fd is None

    def append(self, frame_views: np.ndarray, capture_ts_ns: int,
               ground_truth: Mapping[str, np.ndarray] | None = None) -> int:
        """Write one frame; returns its frame index.

        ``frame_views`` is (V, H, W) uint8 matching the header; ``capture_ts_ns``
        an int64 nanosecond timestamp; ``ground_truth`` an optional dict of
        numeric arrays (dtypes in ``ARRAY_DTYPES``).
        """
        if self._fd is None:
            raise ValueError(f"{self.path}: writer is closed")
        views = np.asarray(frame_views)
        expected = (len(self.view_names), *self.size)
        if views.dtype != np.uint8 or views.shape != expected:
            raise ValueError(f"frame views must be {expected} uint8, got {views.shape} {views.dtype}")
        if isinstance(capture_ts_ns, bool) or not isinstance(capture_ts_ns, (int, np.integer)):
            raise ValueError(f"capture_ts_ns must be an integer (ns), got {capture_ts_ns!r}")
        ts = int(capture_ts_ns)
        if not -(1 << 63) <= ts < (1 << 63):
            raise ValueError(f"capture_ts_ns {ts} does not fit in int64")
        index = self._next_index
        if index >= 1 << 32:
            raise ValueError("a recording holds at most 2**32 frames")
        record = _encode_record(index, ts, views, ground_truth,
                                session_start=not self._session_started)
        _write_all(self._fd, record)
        self._session_started = True
        if self.fsync:
            os.fsync(self._fd)
        self._next_index += 1
        self.bytes_written += len(record)
        return index

    def close(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.fsync(fd)
        finally:
            os.close(fd)  # also releases the flock

    def __enter__(self) -> "HmcWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # a forgotten close still releases the descriptor
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None


# ----------------------------------------------------------------------------- reader


class HmcReader:
    """Random access to an .hmc recording.

    Opening reads the header and scans the record headers once (32 bytes per
    record, payloads are not read), building an index from frame number to
    byte offset. Frames are addressed by their frame index: ``reader[i]`` is
    frame ``i`` of the session and ``len(reader)`` is one past the last frame
    whose record is complete. A frame whose record is damaged raises
    ``HmcFormatError`` naming it; every other frame stays readable.

    ``errors`` lists the problems found, one message per problem naming the
    frame: at open, the structural ones (truncated tail, damaged record
    headers, skipped bytes); payload checksum failures are added when a frame
    is read or when ``verify()`` runs (``info()`` runs it, as does opening
    with ``verify=True``).
    """

    def __init__(self, path: str | os.PathLike, *, verify: bool = False):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path}: no such file")
        if not self.path.is_file():
            raise HmcFormatError("not a regular file", path=self.path)
        self._fd: int | None = os.open(self.path, os.O_RDONLY)
        try:
            self._file_size = os.fstat(self._fd).st_size
            self.header, self._data_start = _read_header(self._fd, str(self.path), self._file_size)
            self.errors: list[str] = []
            self._entries: dict[int, _Entry] = {}
            self._bad: dict[int, str] = {}  # frame index → why it cannot be read
            self._verified: set[int] = set()
            self._last_index = -1
            self._data_end = self._data_start  # end of the last complete record
            self._scan()
            if verify:
                self.verify()
        except BaseException:
            self.close()
            raise

    # -- header attributes
    @property
    def fps(self) -> float:
        return self.header.fps

    @property
    def view_names(self) -> tuple[str, ...]:
        return self.header.view_names

    @property
    def size(self) -> tuple[int, int]:
        return self.header.size

    @property
    def meta(self) -> dict:
        return self.header.meta

    @property
    def version(self) -> int:
        return self.header.version

    @property
    def clock(self) -> str:
        """Clock domain of the capture timestamps (``wall``, ``monotonic`` or ``session``)."""
        return self.header.clock

    def starts_session(self, i: int) -> bool:
        """Whether frame ``i``'s record is flagged as the first frame of a capture session
        (an appended recording holds one session per writer)."""
        entry = self._entries.get(self._slot(i))
        return entry is not None and bool(entry.flags & FLAG_SESSION_START)

    def sessions(self) -> list[list[int]]:
        """Capture timestamps (ns) of the readable frames, one list per capture session.

        A session starts at a record flagged :data:`FLAG_SESSION_START` (even when that
        frame itself is unreadable, the next readable frame starts the new session).
        """
        out: list[list[int]] = []
        boundary = True
        for i, entry in self._entries.items():
            boundary = boundary or bool(entry.flags & FLAG_SESSION_START)
            if i in self._bad:
                continue
            if boundary or not out:
                out.append([])
                boundary = False
            out[-1].append(entry.capture_ts_ns)
        return out

    # -- scanning
    def _error(self, message: str, frames: Iterable[int] = ()) -> None:
        self.errors.append(message)
        for i in frames:
            self._bad.setdefault(i, message)

    def _find_next_record(self, start: int) -> _Entry | None:
        """First offset ≥ start holding a record header with a valid CRC."""
        offset = start
        while offset < self._file_size:
            buf = os.pread(self._fd, _SCAN_CHUNK + _RECORD.size, offset)
            j = buf.find(RECORD_MARKER)
            while 0 <= j < _SCAN_CHUNK:
                entry = _parse_record_header(buf[j:j + _RECORD.size], offset + j)
                if entry is not None:
                    return entry
                j = buf.find(RECORD_MARKER, j + 1)
            offset += _SCAN_CHUNK
        return None

    def _scan(self) -> None:
        pos, size = self._data_start, self._file_size
        expected = 0  # the frame index the next record should carry
        while pos < size:
            if size - pos < _RECORD.size:
                self._error(f"frame {expected}: truncated record header at byte offset {pos} "
                            f"({size - pos} of {_RECORD.size} bytes at end of file; "
                            "recording interrupted mid-write?)")
                return
            entry = _parse_record_header(os.pread(self._fd, _RECORD.size, pos), pos)
            if entry is None:  # damaged bytes: resynchronise on the next intact record header
                entry = self._find_next_record(pos + 1)
                if entry is None:
                    self._error(f"frame {expected}: unreadable record at byte offset {pos} "
                                f"({size - pos} bytes to end of file hold no complete "
                                "record; truncated or corrupt)")
                    return
                lost = range(expected, max(expected, entry.index))
                what = (f"frame {lost[0]}" if len(lost) == 1 else
                        f"frames {lost[0]}..{lost[-1]}" if lost else f"before frame {entry.index}")
                self._error(f"{what}: damaged record at byte offset {pos} "
                            f"({entry.offset - pos} bytes skipped to the next intact record)", lost)
                expected = max(expected, entry.index)
                pos = entry.offset
            if entry.end > size:
                self._error(f"frame {entry.index}: truncated record at byte offset {pos}: "
                            f"{size - pos - _RECORD.size} of {entry.payload_len} payload bytes "
                            "present (recording interrupted mid-write?)")
                nxt = self._find_next_record(pos + 1)
                if nxt is None:
                    return
                pos = nxt.offset  # something complete follows: keep scanning from it
                continue
            if entry.index < expected:
                self._error(f"frame {entry.index}: record at byte offset {pos} repeats or goes back "
                            f"in frame order (expected frame {expected} or later); ignored")
                pos = entry.end
                continue
            if entry.index > expected:
                lost = range(expected, entry.index)
                self._error(f"frames {lost[0]}..{lost[-1]}: missing before byte offset {pos}", lost)
            self._entries[entry.index] = entry
            self._last_index = entry.index
            self._data_end = entry.end
            expected = entry.index + 1
            pos = entry.end

    # -- access
    def __len__(self) -> int:
        """Frame slots: one past the last frame with a complete record."""
        return self._last_index + 1

    def _slot(self, i) -> int:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"frame index must be an integer, got {type(i).__name__}")
        n = len(self)
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"frame {i} out of range (recording has {n} frames)")
        return i

    def has_record(self, i: int) -> bool:
        """Whether frame ``i`` has a record with an intact header (its payload may still be bad)."""
        return self._slot(i) in self._entries

    def capture_ts_ns(self, i: int) -> int | None:
        """Frame ``i``'s capture timestamp from the record index (no payload read), or None."""
        entry = self._entries.get(self._slot(i))
        return None if entry is None else entry.capture_ts_ns

    def record_span(self, i: int) -> tuple[int, int] | None:
        """(byte offset, total bytes incl. the 32-byte record header) of frame ``i``'s record,
        or None when the frame has no intact record header."""
        entry = self._entries.get(self._slot(i))
        return None if entry is None else (entry.offset, entry.end - entry.offset)

    @property
    def frame_indices(self) -> list[int]:
        """Frames with a record (payloads not yet known bad), in order."""
        return [i for i in self._entries if i not in self._bad]

    @property
    def corrupt_frames(self) -> list[int]:
        """Frames known to be unreadable so far (all of them after ``verify()``)."""
        return sorted(self._bad)

    def _fail(self, i: int, reason: str, offset: int | None) -> HmcFormatError:
        message = f"frame {i}: {reason}" + ("" if offset is None else f" (record at byte offset {offset})")
        if i not in self._bad:
            self._error(message, [i])
        return HmcFormatError(reason, path=self.path, frame=i, offset=offset)

    def _known_bad(self, i: int) -> HmcFormatError:
        """The error for a frame already found unreadable (its message names the frame)."""
        entry = self._entries.get(i)
        exc = HmcFormatError(self._bad.get(i, f"frame {i}: no record in the file"), path=self.path)
        exc.frame, exc.offset = i, None if entry is None else entry.offset
        return exc

    def _read_payload(self, entry: _Entry) -> bytes:
        if self._fd is None:
            raise ValueError(f"{self.path}: reader is closed")
        payload = os.pread(self._fd, entry.payload_len, entry.offset + _RECORD.size)
        if len(payload) != entry.payload_len:  # the file shrank since the scan
            raise self._fail(entry.index, "record truncated since the file was opened", entry.offset)
        if _crc(payload) != entry.payload_crc:
            raise self._fail(entry.index, "payload checksum mismatch (corrupt record)", entry.offset)
        self._verified.add(entry.index)
        return payload

    def __getitem__(self, i) -> HmcFrame:
        i = self._slot(i)
        entry = self._entries.get(i)
        if entry is None:
            raise self._known_bad(i)
        if i in self._bad:
            raise self._known_bad(i)
        payload = self._read_payload(entry)
        try:
            obj = msgpack.unpackb(payload, raw=False, strict_map_key=True)
            if not isinstance(obj, dict) or set(obj) != {"views", "gt"}:
                raise ValueError("payload is not a frame map")
            views = _decode_array(obj["views"], "views")
            expected = (len(self.view_names), *self.size)
            if views.dtype != np.uint8 or views.shape != expected:
                raise ValueError(f"views are {views.shape} {views.dtype}, header says {expected} uint8")
            gt = obj["gt"]
            if gt is not None:
                if not isinstance(gt, dict) or len(gt) > MAX_GROUND_TRUTH_KEYS:
                    raise ValueError("ground truth is not a map of arrays")
                gt = {k: _decode_array(v, f"ground truth {k!r}") for k, v in gt.items()}
        except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError,
                msgpack.StackError) as exc:
            raise self._fail(i, f"malformed payload: {exc}", entry.offset) from None
        return HmcFrame(index=i, capture_ts_ns=entry.capture_ts_ns, views=views, ground_truth=gt)

    def __iter__(self) -> Iterator[HmcFrame]:
        """All frames in order; raises HmcFormatError at the first unreadable one.
        Use ``iter_frames(skip_corrupt=True)`` to step over damaged frames."""
        return self.iter_frames(skip_corrupt=False)

    def iter_frames(self, *, skip_corrupt: bool = True) -> Iterator[HmcFrame]:
        for i in range(len(self)):
            try:
                yield self[i]
            except HmcFormatError:
                if not skip_corrupt:
                    raise

    def verify(self) -> list[str]:
        """Check every payload's checksum (reads the whole file once); returns ``errors``."""
        for i, entry in self._entries.items():
            if i in self._verified or i in self._bad:
                continue
            try:
                self._read_payload(entry)
            except HmcFormatError:
                pass  # recorded in errors by _fail
        return self.errors

    def info(self, *, verify: bool = True) -> dict:
        """Summary of the recording (JSON-ready). ``verify`` checks every payload first."""
        if verify:
            self.verify()
        good = [e for i, e in self._entries.items() if i not in self._bad]
        ts = [e.capture_ts_ns for e in good]
        sessions = self.sessions()
        # Captured time only: each session spans its first to last stamp plus one frame period;
        # the gaps between appended sessions are not counted.
        span_s = sum((max(t) - min(t)) / 1e9 for t in sessions)
        intervals = len(ts) - len(sessions)
        return {
            "path": str(self.path),
            "version": self.version,
            "clock": self.clock,
            "frames": len(good),
            "frame_slots": len(self),
            "sessions": len(sessions),
            "fps": self.fps,
            "duration_s": span_s + len(sessions) / self.fps,
            "recorded_fps": intervals / span_s if intervals > 0 and span_s > 0 else None,
            "views": list(self.view_names),
            "size": list(self.size),
            "has_ground_truth": any(e.flags & FLAG_GROUND_TRUTH for e in good),
            "first_capture_ts_ns": min(ts) if ts else None,
            "last_capture_ts_ns": max(ts) if ts else None,
            "bytes": self._file_size,
            "corrupt_frames": self.corrupt_frames,
            "errors": list(self.errors),
            "meta": self.meta,
        }

    def close(self) -> None:
        fd, self._fd = getattr(self, "_fd", None), None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> "HmcReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        self.close()


# ----------------------------------------------------------------------------- replay


@dataclass
class ReplayStats:
    """Counters a ``replay`` fills in while it runs."""

    frames: int = 0
    """Frames yielded."""
    skipped: int = 0
    """Damaged frames skipped (each logged once)."""
    dropped: int = 0
    """``drop_late`` only: frames not yielded because a later frame was already due when the
    consumer asked for the next one (the consumer was slower than the recording)."""
    passes: int = 0
    """Completed passes over the recording (more than 1 only with ``loop``)."""
    late: int = 0
    """Native rate only: frames yielded more than one frame period after their
    scheduled time (the consumer or the disk could not keep up)."""
    elapsed_s: float = 0.0
    """Monotonic seconds from the start to the last yield / the end."""
    start_monotonic_s: float = 0.0
    """``time.monotonic()`` at the start of the replay: slot ``(pos, i)`` of
    :func:`replay_schedule` is due at ``start_monotonic_s + (pass * pass_s + pos) / speed``."""

    @property
    def achieved_fps(self) -> float:
        return self.frames / self.elapsed_s if self.elapsed_s > 0 else 0.0


REPLAY_RATES = ("native", "fast")


def replay_schedule(reader: HmcReader) -> tuple[list[tuple[float, int]], float]:
    """One pass of a native-rate replay: ``([(position_s, frame index), ...], pass_s)``.

    The position is the sum of the recorded capture-timestamp gaps, each clamped to
    [0, max(1 s, 10 frame periods)] so a clock step in the recording cannot stall or rush
    playback; a new capture session (an appended one) starts one frame period after the
    previous session's last frame. Frames without a timestamp (damaged record headers) share
    the previous position. ``pass_s`` = last position + one frame period (where a loop restarts).
    """
    period_s = 1.0 / reader.fps
    max_gap_s = max(1.0, 10.0 * period_s)
    pos, prev_ts = 0.0, None
    out: list[tuple[float, int]] = []
    for i in range(len(reader)):
        ts = reader.capture_ts_ns(i)
        if ts is not None:
            if prev_ts is not None:
                if reader.starts_session(i):
                    pos += period_s
                else:
                    pos += min(max((ts - prev_ts) / 1e9, 0.0), max_gap_s)
            prev_ts = ts
        out.append((pos, i))
    return out, pos + period_s


def _slots(schedule: list[tuple[float, int]], pass_s: float, loop: bool,
           resample_fps: float) -> Iterator[tuple[float, int, int]]:
    """(due position s, frame index, pass number) of every frame to deliver, in order."""
    if not schedule:
        return
    if resample_fps <= 0:
        k = 0
        while True:
            for pos, i in schedule:
                yield k * pass_s + pos, i, k
            k += 1
            if not loop:
                return
    positions = [p for p, _ in schedule]
    n = 0
    while True:
        t = n / resample_fps
        k = int(math.floor(t / pass_s + 1e-9))
        if k >= 1 and not loop:
            return
        within = t - k * pass_s
        j = min(bisect.bisect_left(positions, within), len(positions) - 1)
        if j > 0 and within - positions[j - 1] <= positions[j] - within:
            j -= 1  # the recorded frame nearest in time to the tick (the earlier one on a tie)
        yield t, schedule[j][1], k
        n += 1


def replay(reader: HmcReader, *, rate: str = "native", loop: bool = False, speed: float = 1.0,
           stats: ReplayStats | None = None, drop_late: bool = False,
           resample_fps: float = 0.0) -> Iterator[HmcFrame]:
    """Yield the recording's frames in order.

    ``rate="native"`` paces frames by their recorded capture timestamps
    (divided by ``speed``; see :func:`replay_schedule`) against a monotonic
    clock. Each frame's due time is computed from the start of the replay, not
    from the previous yield, so waiting errors never accumulate. A consumer
    that falls behind gets the overdue frames at once (counted in
    ``stats.late``), or, with ``drop_late=True`` (a live source, such as the
    sender's replay), only the latest frame that is due: the frames whose time
    has passed are dropped (counted in ``stats.dropped``) so playback keeps the
    recording's pace instead of turning into slow motion. ``rate="fast"``
    never waits. ``resample_fps > 0`` delivers frames at that rate instead of
    the recording's own: at each tick ``n / resample_fps`` the frame whose
    schedule position is nearest the tick (frames are repeated when resampling
    up, left out when resampling down). ``loop=True`` starts over after the last
    frame (one frame period later) until the consumer stops; it stops if a
    whole pass yields nothing. Damaged frames are skipped, logged once each and
    counted in ``stats.skipped``; they never raise.
    """
    if rate not in REPLAY_RATES:
        raise ValueError(f"rate must be one of {REPLAY_RATES}, got {rate!r}")
    if not (isinstance(speed, (int, float)) and math.isfinite(speed) and speed > 0):
        raise ValueError(f"speed must be positive, got {speed!r}")
    if not (isinstance(resample_fps, (int, float)) and math.isfinite(resample_fps)
            and resample_fps >= 0):
        raise ValueError(f"resample_fps must be 0 (the recording's own timing) or positive, "
                         f"got {resample_fps!r}")
    stats = stats if stats is not None else ReplayStats()
    native = rate == "native"
    period_s = 1.0 / (resample_fps or reader.fps)
    schedule, pass_s = replay_schedule(reader)
    warned: set[int] = set()
    t0 = time.monotonic()
    stats.start_monotonic_s = t0
    slots = _slots(schedule, pass_s, loop, float(resample_fps))
    pending = next(slots, None)
    current_pass, active = 0, 0  # frames yielded or dropped in the current pass
    try:
        while pending is not None:
            due_s, i, k = pending
            pending = next(slots, None)
            if k != current_pass:
                stats.passes += k - current_pass
                if active == 0:
                    return  # a whole pass with nothing readable
                current_pass, active = k, 0
            if native and drop_late and pending is not None \
                    and time.monotonic() >= t0 + pending[0] / speed:
                stats.dropped += 1  # a later frame is already due: this one's time has passed
                active += 1
                continue
            try:
                frame = reader[i]
            except HmcFormatError as exc:
                stats.skipped += 1
                if i not in warned:
                    warned.add(i)
                    log.warning("replay: skipping %s", exc)
                continue
            if native:
                wait = t0 + due_s / speed - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                elif -wait > period_s / speed:
                    stats.late += 1
            stats.frames += 1
            stats.elapsed_s = time.monotonic() - t0
            active += 1
            yield frame
        stats.passes += 1
    finally:
        stats.elapsed_s = time.monotonic() - t0


# ----------------------------------------------------------------------------- recording a session


@dataclass
class RecordStats:
    """What ``record_session`` did."""

    frames: int = 0
    """Frames written."""
    missed_deadline: int = 0
    """Frames written more than one frame period after their capture timestamp
    (the recorder fell behind the live source). Measured on the writer's clock
    (``wall`` or ``monotonic``); never counted for ``session`` stamps."""
    elapsed_s: float = 0.0
    """Monotonic seconds from the first frame received to the last written."""
    bytes_written: int = 0
    write_ms_max: float = 0.0
    """Slowest single ``append`` in milliseconds."""

    @property
    def achieved_fps(self) -> float:
        return (self.frames - 1) / self.elapsed_s if self.frames > 1 and self.elapsed_s > 0 else 0.0


def record_session(frames: Iterable[tuple[np.ndarray, int, Mapping[str, np.ndarray] | None]],
                   writer: HmcWriter, *, stats: RecordStats | None = None) -> RecordStats:
    """Append every ``(views, capture_ts_ns, ground_truth)`` of a live source to ``writer``.

    The timestamps must be on the clock the writer declares (``writer.clock``).
    Returns the stats (also filled in place when ``stats`` is passed, so a
    caller interrupted by Ctrl-C still has the counts). Does not close the writer.
    """
    stats = stats if stats is not None else RecordStats()
    period_ns = 1e9 / writer.fps
    now_ns = {"wall": time.time_ns, "monotonic": time.monotonic_ns}.get(writer.clock)
    t_first: float | None = None
    for views, ts_ns, gt in frames:
        t_start = time.monotonic()
        if t_first is None:
            t_first = t_start
        before = writer.bytes_written
        writer.append(views, ts_ns, gt)
        done = time.monotonic()
        stats.frames += 1
        stats.bytes_written += writer.bytes_written - before
        stats.write_ms_max = max(stats.write_ms_max, (done - t_start) * 1e3)
        stats.elapsed_s = done - t_first
        if now_ns is not None and now_ns() - int(ts_ns) > period_ns:
            stats.missed_deadline += 1
    return stats
