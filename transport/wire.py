"""The avcall wire format: one msgpack map per message, validated strictly.

Both ends import this module, and ``docs/protocol.md`` describes the same bytes
for clients written in other languages. Every message is a single ZeroMQ frame
holding one msgpack map; nothing is ever unpickled, msgpack extension types are
refused, and arrays travel as plain ``{"t": dtype, "s": shape, "d": bytes}``
maps with explicit little-endian dtype strings.

Decoding treats its input as hostile: :func:`decode_frame` either returns a
fully validated :class:`FrameMessage` or raises :class:`WireError` whose
``kind`` is one of :data:`WIRE_ERROR_KINDS`. No other exception escapes it.

Frame keys (top-level map)::

    "v"  protocol version (2)        "id" stream id        "n"  sequence number
    "tc" capture time, ns            "dt" send - capture   "f"  flags
    "z"  latent code (D,)            "g"  gaze (2, 2)      "kp" keypoints (3, K, 2), optional
    "st" sender stage marks {name: ns after capture}, optional
    "m"  model id (which model the code belongs to), optional

Short keys keep a 256-d float16 frame under the 150 kbit/s budget at 30 fps
(see ``reference_frame_size``).
"""
from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import msgpack
import numpy as np

PROTOCOL_VERSION = 3
"""The only frame version this module writes and accepts (key ``"v"`` of a plain
frame, element 0 of a coded frame).

Version 3 added the coded frame (a msgpack array carrying an entropy-coded,
temporally predicted, quantised code; :mod:`transport.latent_codec`); the plain
frame (a map) is unchanged apart from ``v``. Version 2 added the optional model
id ``"m"``, forbids KEYFRAME together with EXTRAPOLATED, and bounds msgpack
nesting (``docs/protocol.md`` section 6)."""

CLOCK_PROTOCOL_VERSION = 1
"""Version of the clock-channel messages (key ``"v"``); unchanged since version 1."""


class FrameFlags(enum.IntFlag):
    """Bits of the frame's ``"f"`` field. Bits 2..7 are reserved and must be 0."""

    KEYFRAME = 1
    """The encoder ran on this frame (LATEX did not skip it)."""
    EXTRAPOLATED = 2
    """``z`` was extrapolated by LATEX from earlier codes instead of encoded.
    Never set together with KEYFRAME (such a message is rejected as "schema")."""
    INTRA = 4
    """Coded frames only: the frame is self-contained (an intra frame), not a
    residual against earlier frames. Reserved (0) in plain frames."""


KEYFRAME = FrameFlags.KEYFRAME
EXTRAPOLATED = FrameFlags.EXTRAPOLATED
INTRA = FrameFlags.INTRA
_KNOWN_FLAGS = int(KEYFRAME | EXTRAPOLATED)
_KNOWN_CODED_FLAGS = int(KEYFRAME | EXTRAPOLATED | INTRA)

WIRE_ERROR_KINDS = ("oversize", "msgpack", "schema", "version", "dtype", "shape", "non_finite", "code_range", "codec")
"""Every ``WireError.kind``; receivers count bad messages by these names.
``codec``: a coded frame whose payload does not decode (wrong length, a symbol
outside its alphabet, a check value that does not match the decoded code)."""

RECEIVER_CHECK_KINDS = ("multipart", "stream", "model_mismatch", "timestamp_range", "no_reference")
"""Bad-message kinds a :class:`transport.sockets.FrameSubscriber` counts beyond
:func:`decode_frame`'s: a multipart ZeroMQ message (never decoded), a valid
frame of another stream, of another model (or coded with tables this receiver
lacks), with a capture time outside the receiver's window, or a predicted coded
frame whose reference frame the receiver does not hold (``docs/protocol.md``
sections 3.6 and 3.7)."""

BAD_MESSAGE_KINDS = WIRE_ERROR_KINDS + RECEIVER_CHECK_KINDS
"""Every key a receiver's ``StreamStats.bad`` counter can hold."""

_U64 = 2**64
_I64 = 2**63
_STREAM_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,32}")
_STAGE_NAME_RE = re.compile(r"[a-z0-9_]{1,16}")
_MODEL_ID_RE = re.compile(r"[A-Za-z0-9._:/-]{1,64}")
_MAX_STAGES = 8

# msgpack container limits. They only bound work and memory (msgpack already
# refuses declared lengths longer than the buffer); they are generous enough
# that a message from a future protocol version still parses far enough to be
# reported as "version" rather than "msgpack".
_MAX_STR_LEN = 256
_MAX_ARRAY_LEN = 64
_MAX_MAP_LEN = 32
_MAX_DEPTH = 8
"""Deepest container nesting accepted; the top-level map is depth 1 and a v2
frame needs 3 (map -> array map -> shape array)."""

_FRAME_REQUIRED = frozenset({"v", "id", "n", "tc", "dt", "f", "z", "g"})
_FRAME_OPTIONAL = frozenset({"kp", "st", "m"})
_ARRAY_KEYS = frozenset({"t", "s", "d"})


class WireError(ValueError):
    """A message that failed validation.

    ``kind`` is one of :data:`WIRE_ERROR_KINDS` (a small fixed set, so that
    receivers can count and log once per kind); ``detail`` is for humans.
    """

    def __init__(self, kind: str, detail: str = "") -> None:
        if kind not in WIRE_ERROR_KINDS:
            raise ValueError(f"unknown WireError kind {kind!r}")
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True)
class WireLimits:
    """What a receiver accepts. Anything outside is a :class:`WireError`."""

    max_bytes: int = 65536
    """Largest accepted message in bytes ("oversize" above). A 256-d float16
    frame is about 600 bytes; 64 KiB leaves room for float32 codes up to 4096-d
    and keypoints, and keeps a hostile message cheap to reject."""
    max_latent_dim: int = 4096
    """Largest accepted ``z`` length D ("shape" above)."""
    latent_dim: int | None = None
    """If set, ``z`` must have exactly this length ("shape" otherwise): the
    receiver's decoder takes one code size."""
    max_keypoints: int = 256
    """Largest accepted keypoint count K per view ("shape" above)."""
    allowed_dtypes: frozenset[str] = frozenset({"<f2", "<f4"})
    """Accepted dtype strings for every array ("dtype" otherwise). Only
    little-endian IEEE floats make sense here; never allow ``"|O"``."""
    code_abs_max: float | None = None
    """If set, every element of ``z`` must satisfy ``|z_i| <= code_abs_max``
    ("code_range" otherwise). Fill it from the model's training statistics
    (e.g. a few times the largest absolute code value seen in training)."""
    code_low: Any = field(default=None, compare=False, repr=False)
    """Optional per-dimension lower bounds of ``z`` (a length-D sequence);
    given together with ``code_high``. ``z_i < code_low[i]`` is "code_range";
    a ``z`` of another length is "shape"."""
    code_high: Any = field(default=None, compare=False, repr=False)
    """Per-dimension upper bounds of ``z``, the partner of ``code_low``."""
    max_future_s: float = 1.0
    """A frame subscriber that knows the clock offset rejects a frame whose
    capture time, on the receiver's clock, lies more than this far in the
    future ("timestamp_range")."""
    max_past_s: float = 30.0
    """... or more than this far in the past ("timestamp_range")."""

    def __post_init__(self) -> None:
        if self.max_bytes < 64:
            raise ValueError("max_bytes must be at least 64")
        bad = set(self.allowed_dtypes) - {"<f2", "<f4", "<f8"}
        if bad:
            raise ValueError(f"allowed_dtypes may only hold little-endian floats, got {sorted(bad)}")
        if self.code_abs_max is not None and not (math.isfinite(self.code_abs_max) and self.code_abs_max > 0):
            raise ValueError(f"code_abs_max must be a positive finite number, got {self.code_abs_max!r}")
        if not (math.isfinite(self.max_future_s) and self.max_future_s >= 0):
            raise ValueError(f"max_future_s must be a finite number >= 0, got {self.max_future_s!r}")
        if not (math.isfinite(self.max_past_s) and self.max_past_s >= 0):
            raise ValueError(f"max_past_s must be a finite number >= 0, got {self.max_past_s!r}")
        if (self.code_low is None) != (self.code_high is None):
            raise ValueError("code_low and code_high go together: give both or neither")
        if self.code_low is not None:
            low = np.array(self.code_low, dtype=np.float64)
            high = np.array(self.code_high, dtype=np.float64)
            if low.ndim != 1 or low.shape != high.shape or low.size == 0:
                raise ValueError(f"code_low and code_high must be 1-D of the same length, got {low.shape} and {high.shape}")
            if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
                raise ValueError("code_low and code_high must be finite")
            if np.any(low > high):
                raise ValueError(f"code_low > code_high at dimension {int(np.argmax(low > high))}")
            if self.latent_dim is not None and low.size != self.latent_dim:
                raise ValueError(f"code_low/code_high have {low.size} dimensions but latent_dim is {self.latent_dim}")
            low.flags.writeable = False
            high.flags.writeable = False
            object.__setattr__(self, "code_low", low)
            object.__setattr__(self, "code_high", high)


@dataclass(eq=False)
class FrameMessage:
    """One frame of one stream, as sent by the sender and decoded by the receiver.

    Timestamps are nanoseconds on the *sender's* clock (:func:`transport.clock.now_ns`);
    a receiver maps them onto its own clock with the offset from the clock exchange.
    """

    stream_id: str
    """Who is talking, e.g. ``"alice"``: 1-32 characters of ``[A-Za-z0-9._-]``."""
    seq: int
    """Frame counter of this stream, +1 per frame sent; gaps mean lost frames."""
    capture_ts_ns: int
    """When the HMC frame was captured (sender clock, ns)."""
    send_ts_ns: int
    """When the message left the sender (sender clock, ns); >= capture_ts_ns."""
    z: np.ndarray
    """(D,) float16/float32 latent code."""
    gaze: np.ndarray
    """(2, 2) float16/float32: rows are left and right eye, columns (yaw, pitch) in radians."""
    flags: int = 0
    """Bitmask of :class:`FrameFlags`."""
    keypoints: np.ndarray | None = None
    """(3, K, 2) float16/float32 2D keypoints per HMC view (left eye, right eye, mouth), or None."""
    stage_ts_ns: dict[str, int] = field(default_factory=dict)
    """Optional sender stage marks, e.g. ``{"enc": t}``: sender clock, ns,
    each >= capture_ts_ns. Names: 1-16 characters of ``[a-z0-9_]``, at most 8.
    On an EXTRAPOLATED frame ``"enc"`` is when the extrapolated code was ready."""
    model: str | None = None
    """Which model the code belongs to (e.g. ``"avatar-s1:3f2a9c"``), or None:
    1-64 characters of ``[A-Za-z0-9._:/-]``. A receiver decoding with another
    model rejects the frame ("model_mismatch")."""
    approximate: bool = False
    """Receiver side only, never on the wire: a coded frame decoded across a lost reference frame
    (:class:`transport.latent_codec.LatentStreamDecoder` ``bridge``); its values may be off until the next intra frame."""

    @property
    def is_keyframe(self) -> bool:
        return bool(self.flags & KEYFRAME)

    @property
    def is_extrapolated(self) -> bool:
        return bool(self.flags & EXTRAPOLATED)


MAX_REF_DISTANCE = 255
"""Largest ``r`` of a predicted coded frame: its reference is at most this many frames back (the frames in
between were skipped on purpose, LATEX-skip mode)."""
CODED_FRAME_LEN = 11
"""Elements of a predicted coded frame; an intra frame has one more (the declarations map)."""
SEQ_CHECK_MOD = 128
"""A predicted frame carries its sequence number modulo this (one msgpack byte), so a receiver checks that the
frame it holds is the reference before applying a residual."""
CODERS = {0: "raw", 1: "range"}
"""Payload coders of a coded frame (element ``c``): fixed-width bit packing, or the range coder."""
_CODEC_ID_RE = re.compile(r"[0-9a-f]{8}")


@dataclass(eq=False)
class CodedFrame:
    """A coded frame as it is on the wire (``docs/protocol.md`` section 3.7), before its payload is decoded.

    :class:`transport.latent_codec.LatentStreamDecoder` turns it into a :class:`FrameMessage` with the
    receiver's per-stream state; :class:`transport.latent_codec.LatentStreamEncoder` makes it."""

    stream_id: str
    flags: int
    """:class:`FrameFlags`; ``INTRA`` set on a self-contained frame."""
    seq: int
    """Intra: the sequence number ``n``. Predicted: ``n`` modulo :data:`SEQ_CHECK_MOD`."""
    ref: int
    """Intra: 0. Predicted: ``r`` = n - (sequence number of the reference frame), 1..:data:`MAX_REF_DISTANCE`."""
    time: int
    """Intra: capture time, ns (sender clock). Predicted: capture time - the reference's, in microseconds."""
    send_delay_us: int
    """Send time - capture time, microseconds."""
    enc_delay_us: int | None
    """Stage mark ``enc`` - capture time, microseconds, or None."""
    coder: int
    """Payload coder, a key of :data:`CODERS`."""
    check: int
    """16-bit check of the decoded code (``crc32`` of the quantisation indices, low 16 bits)."""
    payload: bytes
    codec_id: str | None = None
    """Intra only: the id (8 hex digits) of the codec tables the payload was coded with."""
    model: str | None = None
    """Intra only, optional: the model id, as ``FrameMessage.model``."""

    @property
    def is_intra(self) -> bool:
        return bool(self.flags & INTRA)


def encode_coded_frame(cf: CodedFrame) -> bytes:
    """Serialize a coded frame (a msgpack array, section 3.7). ``ValueError`` for anything a receiver would reject."""
    if not isinstance(cf.stream_id, str) or not _STREAM_ID_RE.fullmatch(cf.stream_id):
        raise ValueError(f"stream_id must be 1-32 chars of [A-Za-z0-9._-], got {cf.stream_id!r}")
    flags = _check_uint(cf.flags, "flags", 256)
    if flags & ~_KNOWN_CODED_FLAGS or (flags & KEYFRAME and flags & EXTRAPOLATED):
        raise ValueError(f"bad coded-frame flags {flags:#x}")
    intra = bool(flags & INTRA)
    if intra:
        seq = _check_uint(cf.seq, "seq")
        ref = _check_uint(cf.ref, "ref distance", 1)
        t = _check_uint(cf.time, "capture_ts_ns")
    else:
        seq = _check_uint(cf.seq, "seq mod 128", SEQ_CHECK_MOD)
        ref = _check_uint(cf.ref, "ref distance", MAX_REF_DISTANCE + 1)
        if ref < 1:
            raise ValueError("ref distance must be >= 1")
        t = _check_uint(cf.time, "capture time delta (us)", 2**32)
    body: list[Any] = [PROTOCOL_VERSION, cf.stream_id, flags, seq, ref, t,
                       _check_uint(cf.send_delay_us, "send delay (us)", 2**32),
                       None if cf.enc_delay_us is None else _check_uint(cf.enc_delay_us, "enc delay (us)", 2**32),
                       cf.coder if cf.coder in CODERS else _check_uint(-1, "coder"),
                       _check_uint(cf.check, "check", 2**16), bytes(cf.payload)]
    if intra:
        if not isinstance(cf.codec_id, str) or not _CODEC_ID_RE.fullmatch(cf.codec_id):
            raise ValueError(f"an intra frame needs its codec id (8 hex digits), got {cf.codec_id!r}")
        decl: dict[str, Any] = {"k": cf.codec_id}
        if cf.model is not None:
            if not isinstance(cf.model, str) or not _MODEL_ID_RE.fullmatch(cf.model):
                raise ValueError(f"model must be 1-64 chars of [A-Za-z0-9._:/-], got {cf.model!r}")
            decl["m"] = cf.model
        body.append(decl)
    elif cf.codec_id is not None or cf.model is not None:
        raise ValueError("codec id and model id travel on intra frames only")
    return msgpack.packb(body, use_bin_type=True)


def _decode_coded(obj: list, limits: "WireLimits") -> CodedFrame:
    """Validate the elements of a coded frame (already parsed, version checked); [schema]/[codec] otherwise."""
    if len(obj) < 3:
        raise WireError("schema", f"coded frame of {len(obj)} elements")
    stream_id, flags = obj[1], obj[2]
    if type(stream_id) is not str or not _STREAM_ID_RE.fullmatch(stream_id):
        raise WireError("schema", f"bad stream id {stream_id!r}")
    if type(flags) is not int or not 0 <= flags < 256:
        raise WireError("schema", f"flags must be an integer in [0, 256), got {flags!r}")
    if flags & ~_KNOWN_CODED_FLAGS:
        raise WireError("schema", f"reserved flag bits set in {flags:#x}")
    if flags & KEYFRAME and flags & EXTRAPOLATED:
        raise WireError("schema", "flags KEYFRAME and EXTRAPOLATED both set")
    intra = bool(flags & INTRA)
    want = CODED_FRAME_LEN + intra
    if len(obj) != want:
        raise WireError("schema", f"{'intra' if intra else 'predicted'} coded frame has {len(obj)} elements, expected {want}")
    _, _, _, n, r, t, d, e, c, x, p = obj[:CODED_FRAME_LEN]

    def uint(value: Any, name: str, bound: int) -> int:
        if type(value) is not int or not 0 <= value < bound:
            raise WireError("schema", f"{name} must be an integer in [0, {bound}), got {value!r}")
        return value

    if intra:
        uint(n, "n", _U64)
        uint(r, "r of an intra frame", 1)
        uint(t, "tc", _U64)
    else:
        uint(n, "n mod 128", SEQ_CHECK_MOD)
        uint(r, "r", MAX_REF_DISTANCE + 1)
        if r < 1:
            raise WireError("schema", "r must be >= 1")
        uint(t, "tc delta", 2**32)
    uint(d, "dt", 2**32)
    if intra and t + d * 1000 >= _U64:
        raise WireError("schema", "send time overflows 64 bits")
    if e is not None:
        uint(e, "enc", 2**32)
    if type(c) is not int or c not in CODERS:
        raise WireError("codec", f"unknown payload coder {c!r}")
    uint(x, "check", 2**16)
    if type(p) is not bytes:
        raise WireError("schema", f"payload must be msgpack bin, got {type(p).__name__}")
    codec_id = model = None
    if intra:
        decl = obj[CODED_FRAME_LEN]
        if not isinstance(decl, dict):
            raise WireError("schema", "intra frame declarations must be a map")
        _check_keys(decl, frozenset({"k"}), frozenset({"m"}), "declarations")
        codec_id = decl["k"]
        if type(codec_id) is not str or not _CODEC_ID_RE.fullmatch(codec_id):
            raise WireError("schema", f"bad codec id {codec_id!r}")
        model = decl.get("m")
        if "m" in decl and (type(model) is not str or not _MODEL_ID_RE.fullmatch(model)):
            raise WireError("schema", f"bad model id {model!r}")
    return CodedFrame(stream_id=stream_id, flags=flags, seq=n, ref=r, time=t, send_delay_us=d, enc_delay_us=e,
                      coder=c, check=x, payload=p, codec_id=codec_id, model=model)


def decode_message(data: bytes, limits: "WireLimits | None" = None) -> "FrameMessage | CodedFrame":
    """Validate one frame-channel message: a plain frame (a map) comes back as a :class:`FrameMessage`
    (:func:`decode_frame`), a coded frame (an array) as a :class:`CodedFrame` whose payload still needs its
    stream's :class:`transport.latent_codec.LatentStreamDecoder`. :class:`WireError` on anything wrong."""
    limits = limits or WireLimits()
    obj = _unpack(data, limits.max_bytes, allow_array=True)
    if isinstance(obj, list):
        return _decode_coded(obj, limits)
    return _frame_from_map(obj, limits)


@dataclass(frozen=True)
class ClockRequest:
    """Clock-exchange request from the clock client (receiver) to the clock server (sender)."""

    request_id: int
    """Client-chosen id echoed in the reply (0 <= id < 2**64)."""
    t0_ns: int
    """Client clock when the request was sent."""
    intra: bool = False
    """Intra request (key ``i``): the receiver cannot decode the coded stream's predicted frames (it lost one)
    and asks for an intra frame now (``docs/protocol.md`` 8.2)."""


@dataclass(frozen=True)
class ClockReply:
    """Clock-exchange reply: the request's id and t0, plus the server's receive and send times."""

    request_id: int
    t0_ns: int
    """Echo of the request's t0."""
    t1_ns: int
    """Server clock when the request arrived."""
    t2_ns: int
    """Server clock when the reply left."""


CLOCK_MAX_BYTES = 128
"""Clock messages are tiny; anything longer is "oversize"."""


# --------------------------------------------------------------------------- encoding


def _encode_array(a: np.ndarray, name: str) -> dict[str, Any]:
    a = np.asarray(a)
    if a.dtype.kind != "f" or a.dtype.itemsize not in (2, 4):
        raise ValueError(f"{name} must be float16 or float32, got {a.dtype}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} holds NaN or Inf")
    le = a.astype(a.dtype.newbyteorder("<"), copy=False)
    return {"t": le.dtype.str, "s": list(a.shape), "d": le.tobytes(order="C")}


def _check_uint(value: Any, name: str, bound: int = _U64) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {type(value).__name__}")
    value = int(value)
    if not 0 <= value < bound:
        raise ValueError(f"{name}={value} out of range [0, {bound})")
    return value


def encode_frame(msg: FrameMessage) -> bytes:
    """Serialize ``msg`` to the bytes of one ZeroMQ frame.

    Raises ``ValueError`` for a message that the receiver would reject
    (wrong dtype or shape, non-finite values, out-of-range integers): the
    sender finds its own bugs instead of the far end counting them.
    """
    if not isinstance(msg.stream_id, str) or not _STREAM_ID_RE.fullmatch(msg.stream_id):
        raise ValueError(f"stream_id must be 1-32 chars of [A-Za-z0-9._-], got {msg.stream_id!r}")
    seq = _check_uint(msg.seq, "seq")
    tc = _check_uint(msg.capture_ts_ns, "capture_ts_ns")
    ts = _check_uint(msg.send_ts_ns, "send_ts_ns")
    if ts < tc:
        raise ValueError("send_ts_ns is earlier than capture_ts_ns")
    flags = _check_uint(msg.flags, "flags", 256)
    if flags & ~_KNOWN_FLAGS:
        raise ValueError(f"flags {flags:#x} use reserved bits")
    if flags & KEYFRAME and flags & EXTRAPOLATED:
        raise ValueError("flags KEYFRAME and EXTRAPOLATED must not both be set")
    if msg.model is not None and (not isinstance(msg.model, str) or not _MODEL_ID_RE.fullmatch(msg.model)):
        raise ValueError(f"model must be 1-64 chars of [A-Za-z0-9._:/-], got {msg.model!r}")
    z = np.asarray(msg.z)
    if z.ndim != 1 or z.shape[0] < 1:
        raise ValueError(f"z must have shape (D,), got {z.shape}")
    gaze = np.asarray(msg.gaze)
    if gaze.shape != (2, 2):
        raise ValueError(f"gaze must have shape (2, 2), got {gaze.shape}")
    body: dict[str, Any] = {
        "v": PROTOCOL_VERSION,
        "id": msg.stream_id,
        "n": seq,
        "tc": tc,
        "dt": ts - tc,
        "f": flags,
        "z": _encode_array(z, "z"),
        "g": _encode_array(gaze, "gaze"),
    }
    if msg.keypoints is not None:
        kp = np.asarray(msg.keypoints)
        if kp.ndim != 3 or kp.shape[0] != 3 or kp.shape[1] < 1 or kp.shape[2] != 2:
            raise ValueError(f"keypoints must have shape (3, K, 2), got {kp.shape}")
        body["kp"] = _encode_array(kp, "keypoints")
    if msg.stage_ts_ns:
        if len(msg.stage_ts_ns) > _MAX_STAGES:
            raise ValueError(f"at most {_MAX_STAGES} stage marks")
        st = {}
        for name, t in msg.stage_ts_ns.items():
            if not isinstance(name, str) or not _STAGE_NAME_RE.fullmatch(name):
                raise ValueError(f"stage name must be 1-16 chars of [a-z0-9_], got {name!r}")
            t = _check_uint(t, f"stage {name}")
            if t < tc:
                raise ValueError(f"stage {name} is earlier than capture_ts_ns")
            st[name] = t - tc
        body["st"] = st
    if msg.model is not None:
        body["m"] = msg.model
    return msgpack.packb(body, use_bin_type=True)


def encode_clock_request(req: ClockRequest) -> bytes:
    return msgpack.packb(
        {
            "v": CLOCK_PROTOCOL_VERSION,
            "q": _check_uint(req.request_id, "request_id"),
            "t0": _check_uint(req.t0_ns, "t0_ns"),
            **({"i": True} if req.intra else {}),  # omitted, never false
        },
        use_bin_type=True,
    )


def encode_clock_reply(rep: ClockReply) -> bytes:
    return msgpack.packb(
        {
            "v": CLOCK_PROTOCOL_VERSION,
            "q": _check_uint(rep.request_id, "request_id"),
            "t0": _check_uint(rep.t0_ns, "t0_ns"),
            "t1": _check_uint(rep.t1_ns, "t1_ns"),
            "t2": _check_uint(rep.t2_ns, "t2_ns"),
        },
        use_bin_type=True,
    )


# --------------------------------------------------------------------------- decoding


def _str_key_map(pairs: list[tuple[Any, Any]]) -> dict[str, Any]:
    """Build a map, refusing non-str keys (``bin`` keys pass strict_map_key) and duplicates."""
    out = {}
    for key, value in pairs:
        if type(key) is not str:
            raise WireError("msgpack", f"map key of type {type(key).__name__}")
        if key in out:
            raise WireError("msgpack", f"duplicate map key {key!r}")
        out[key] = value
    return out


def _too_deep(obj: Any, limit: int) -> bool:
    """True if containers nest deeper than ``limit`` (the top level is depth 1). Iterative."""
    stack = [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _unpack(data: Any, max_bytes: int, version: int = PROTOCOL_VERSION, *, allow_array: bool = False) -> Any:
    """Size cap, msgpack parse with limits, nesting depth, top-level map (or, with ``allow_array``, a coded
    frame's array whose element 0 is the version) and version check."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError("schema", f"expected bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise WireError("oversize", f"{len(data)} bytes > {max_bytes}")
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            object_pairs_hook=_str_key_map,
            max_str_len=_MAX_STR_LEN,
            max_bin_len=max_bytes,
            max_array_len=_MAX_ARRAY_LEN,
            max_map_len=_MAX_MAP_LEN,
            max_ext_len=0,  # extension types (incl. msgpack timestamps) are never valid
        )
    except WireError:
        raise
    except Exception as exc:  # untrusted bytes: any parser failure is one kind
        raise WireError("msgpack", f"{type(exc).__name__}: {exc}") from None
    if _too_deep(obj, _MAX_DEPTH):
        raise WireError("msgpack", f"containers nested deeper than {_MAX_DEPTH}")
    if allow_array and isinstance(obj, list):
        v = obj[0] if obj else None
        if type(v) is not int or v != version:
            raise WireError("version", f"coded frame version {v!r}, expected {version}")
        return obj
    if not isinstance(obj, dict):
        raise WireError("schema", f"top level is {type(obj).__name__}, not a map")
    v = obj.get("v")
    if type(v) is not int or v != version:
        raise WireError("version", f"version {v!r}, expected {version}")
    return obj


def _check_keys(obj: dict[str, Any], required: frozenset[str], optional: frozenset[str], what: str) -> None:
    keys = set(obj)
    missing = required - keys
    if missing:
        raise WireError("schema", f"{what}: missing keys {sorted(missing)}")
    extra = keys - required - optional
    if extra:
        raise WireError("schema", f"{what}: unknown keys {sorted(extra)}")


def _uint(obj: dict[str, Any], key: str, bound: int = _U64) -> int:
    value = obj[key]
    if type(value) is not int or not 0 <= value < bound:
        raise WireError("schema", f"{key!r} must be an integer in [0, {bound}), got {value!r}")
    return value


ShapeRule = Callable[[tuple[int, ...]], str | None]
"""Returns why a shape is wrong for a field, or None when it is right."""


def _decode_array(spec: Any, name: str, limits: WireLimits, shape_rule: ShapeRule) -> np.ndarray:
    """Validate one array map and return a native-endian copy of the array.

    Order (kinds): exact keys {t, s, d} [schema]; dtype allowed [dtype]; shape
    a list of non-negative ints obeying ``shape_rule`` [shape]; data is bin
    [schema] of exactly prod(shape) * itemsize bytes [shape]; all finite
    [non_finite]. No data is touched before its size is known to be right.
    """
    if not isinstance(spec, dict):
        raise WireError("schema", f"{name}: array must be a map")
    _check_keys(spec, _ARRAY_KEYS, frozenset(), name)
    dtype_str, shape, data = spec["t"], spec["s"], spec["d"]
    if type(dtype_str) is not str or dtype_str not in limits.allowed_dtypes:
        raise WireError("dtype", f"{name}: dtype {dtype_str!r} not in {sorted(limits.allowed_dtypes)}")
    if type(shape) is not list or not all(type(d) is int and d >= 0 for d in shape):
        raise WireError("shape", f"{name}: shape must be a list of non-negative integers, got {shape!r}")
    shape = tuple(shape)
    why = shape_rule(shape)
    if why is not None:
        raise WireError("shape", f"{name}: shape {list(shape)}, {why}")
    if type(data) is not bytes:
        raise WireError("schema", f"{name}: data must be msgpack bin, got {type(data).__name__}")
    dtype = np.dtype(dtype_str)
    expected = math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise WireError("shape", f"{name}: {len(data)} data bytes for shape {list(shape)} {dtype_str} (need {expected})")
    arr = np.frombuffer(data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="), copy=True)
    if not np.all(np.isfinite(arr)):
        raise WireError("non_finite", f"{name} holds NaN or Inf")
    return arr


def decode_frame(data: bytes, limits: WireLimits | None = None) -> FrameMessage:
    """Validate and decode one frame message; raise :class:`WireError` on anything wrong.

    Check order (each failure's kind in brackets): size [oversize]; msgpack
    parse with limits, str keys, no duplicate keys, nesting depth [msgpack];
    top level is a map [schema]; ``"v"`` == 2 [version]; exact key set and
    scalar fields, flags, model id [schema]; for ``z``, ``g``, ``kp`` in that
    order: dtype [dtype], shape and data length [shape], finite values
    [non_finite]; ``z`` within the code bounds of ``limits`` [code_range].
    ``docs/protocol.md`` section 3.4 is the same list.
    """
    limits = limits or WireLimits()
    return _frame_from_map(_unpack(data, limits.max_bytes), limits)


def _frame_from_map(obj: dict[str, Any], limits: WireLimits) -> FrameMessage:
    """Steps 5-7 of the plain frame's validation (section 3.4) on a parsed, version-checked map."""
    _check_keys(obj, _FRAME_REQUIRED, _FRAME_OPTIONAL, "frame")

    stream_id = obj["id"]
    if type(stream_id) is not str or not _STREAM_ID_RE.fullmatch(stream_id):
        raise WireError("schema", f"bad stream id {stream_id!r}")
    seq = _uint(obj, "n")
    tc = _uint(obj, "tc")
    dt = _uint(obj, "dt")
    if tc + dt >= _U64:
        raise WireError("schema", "send time overflows 64 bits")
    flags = _uint(obj, "f", 256)
    if flags & ~_KNOWN_FLAGS:
        raise WireError("schema", f"reserved flag bits set in {flags:#x}")
    if flags & KEYFRAME and flags & EXTRAPOLATED:
        raise WireError("schema", "flags KEYFRAME and EXTRAPOLATED both set")
    model = obj.get("m")
    if model is not None and (type(model) is not str or not _MODEL_ID_RE.fullmatch(model)):
        raise WireError("schema", f"bad model id {model!r}")
    if "m" in obj and model is None:
        raise WireError("schema", "model id 'm' is nil (omit the key instead)")
    stages: dict[str, int] = {}
    if "st" in obj:
        st = obj["st"]
        if not isinstance(st, dict) or len(st) > _MAX_STAGES:
            raise WireError("schema", f"'st' must be a map of at most {_MAX_STAGES} entries")
        for name, delta in st.items():
            if type(name) is not str or not _STAGE_NAME_RE.fullmatch(name):
                raise WireError("schema", f"bad stage name {name!r}")
            if type(delta) is not int or not 0 <= delta < _U64 - tc:
                raise WireError("schema", f"bad stage time {delta!r} for {name!r}")
            stages[name] = tc + delta

    def z_rule(shape: tuple[int, ...]) -> str | None:
        if len(shape) != 1 or not 1 <= shape[0] <= limits.max_latent_dim:
            return f"expected [D] with 1 <= D <= {limits.max_latent_dim}"
        if limits.latent_dim is not None and shape[0] != limits.latent_dim:
            return f"this receiver takes D = {limits.latent_dim}"
        if limits.code_low is not None and shape[0] != len(limits.code_low):
            return f"this receiver's code bounds have D = {len(limits.code_low)}"
        return None

    def kp_rule(shape: tuple[int, ...]) -> str | None:
        if len(shape) != 3 or shape[0] != 3 or shape[2] != 2 or not 1 <= shape[1] <= limits.max_keypoints:
            return f"expected [3, K, 2] with 1 <= K <= {limits.max_keypoints}"
        return None

    z = _decode_array(obj["z"], "z", limits, z_rule)
    gaze = _decode_array(obj["g"], "g", limits, lambda s: None if s == (2, 2) else "expected [2, 2]")
    keypoints = _decode_array(obj["kp"], "kp", limits, kp_rule) if "kp" in obj else None
    check_code_range(z, limits)

    return FrameMessage(
        stream_id=stream_id,
        seq=seq,
        capture_ts_ns=tc,
        send_ts_ns=tc + dt,
        z=z,
        gaze=gaze,
        flags=flags,
        keypoints=keypoints,
        stage_ts_ns=stages,
        model=model,
    )


def check_code_range(z: np.ndarray, limits: WireLimits) -> None:
    """[code_range] when ``z`` leaves ``limits.code_abs_max`` or ``[code_low, code_high]``."""
    if limits.code_abs_max is not None:
        mag = np.abs(z.astype(np.float64))
        if np.any(mag > limits.code_abs_max):
            i = int(np.argmax(mag))
            raise WireError("code_range", f"z[{i}] = {float(z[i]):.6g}, |z| must be <= {limits.code_abs_max:g}")
    if limits.code_low is not None:
        z64 = z.astype(np.float64)
        out = (z64 < limits.code_low) | (z64 > limits.code_high)
        if np.any(out):
            i = int(np.argmax(out))
            raise WireError(
                "code_range",
                f"z[{i}] = {float(z[i]):.6g} outside [{limits.code_low[i]:.6g}, {limits.code_high[i]:.6g}]",
            )


def decode_clock_request(data: bytes) -> ClockRequest:
    """Validate a clock request (``{"v", "q", "t0"}`` and optionally ``"i": true``); :class:`WireError` otherwise."""
    obj = _unpack(data, CLOCK_MAX_BYTES, CLOCK_PROTOCOL_VERSION)
    _check_keys(obj, frozenset({"v", "q", "t0"}), frozenset({"i"}), "clock request")
    intra = obj.get("i", False)
    if intra is not True:
        if "i" in obj:
            raise WireError("schema", f"clock request key 'i' must be true when present, got {intra!r}")
    return ClockRequest(request_id=_uint(obj, "q"), t0_ns=_uint(obj, "t0"), intra=intra is True)


def decode_clock_reply(data: bytes) -> ClockReply:
    """Validate a clock reply (``{"v", "q", "t0", "t1", "t2"}``); :class:`WireError` otherwise."""
    obj = _unpack(data, CLOCK_MAX_BYTES, CLOCK_PROTOCOL_VERSION)
    _check_keys(obj, frozenset({"v", "q", "t0", "t1", "t2"}), frozenset(), "clock reply")
    return ClockReply(
        request_id=_uint(obj, "q"), t0_ns=_uint(obj, "t0"), t1_ns=_uint(obj, "t1"), t2_ns=_uint(obj, "t2")
    )


# --------------------------------------------------------------------------- sizing

ZMTP_FRAME_OVERHEAD = 9
"""Bytes ZeroMQ (ZMTP 3) adds per message longer than 255 bytes: 1 flags + 8 length."""


def reference_frame(
    latent_dim: int = 256,
    keypoints: int | None = None,
    stream_id: str = "alice",
    code_dtype: Any = np.float16,
    model: str | None = None,
) -> FrameMessage:
    """A worst-case-timestamp frame used to state the bandwidth budget.

    ``seq`` needs 4 bytes (about 4.5 years at 30 fps), ``capture_ts_ns`` 8 and
    the send delay 4, so real frames are never larger than this one.
    ``code_dtype=np.float32`` is what ``--f32`` sends.
    """
    return FrameMessage(
        stream_id=stream_id,
        seq=2**31,
        capture_ts_ns=2**62,
        send_ts_ns=2**62 + 20_000_000,
        z=np.zeros(latent_dim, code_dtype),
        gaze=np.zeros((2, 2), np.float16),
        flags=int(KEYFRAME),
        keypoints=None if keypoints is None else np.zeros((3, keypoints, 2), np.float16),
        model=model,
    )


def reference_frame_size(
    latent_dim: int = 256,
    keypoints: int | None = None,
    stream_id: str = "alice",
    code_dtype: Any = np.float16,
    model: str | None = None,
) -> int:
    """Bytes of one encoded :func:`reference_frame` (msgpack body only)."""
    return len(encode_frame(reference_frame(latent_dim, keypoints, stream_id, code_dtype, model)))


def kbit_per_s(frame_bytes: int, fps: float = 30.0, per_message_overhead: int = 0) -> float:
    """Stream bandwidth in kbit/s (1 kbit = 1000 bit)."""
    return (frame_bytes + per_message_overhead) * 8 * fps / 1000.0
