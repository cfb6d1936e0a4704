"""Latent stream coding: quantisation, temporal prediction and entropy coding of the code and gaze.

numpy only on the runtime path (plus ``constriction``'s range coder); ``docs/protocol.md`` section 3.7 is
the same text for clients in other languages. Both ends share one :class:`CodecTables` (the ``codec.json``
+ ``codec.npz`` shipped next to the encoder, fitted by ``avcall train codec``):

* **Quantisation.** The code and gaze form one vector ``x`` of N = D + 4 elements (z, then gaze row-major).
  Element i is coded as the integer index ``q_i = round((x_i - mean_i) / step_i)``, clamped to
  ``[lo_i, hi_i]``; the receiver shows ``mean_i + q_i * step_i``. So the error is at most ``step_i / 2``
  inside the trained range. Step sizes come from the training codes and the decoder: equal rendered-MSE
  cost per element (``step_i ~ 1 / sqrt(sensitivity_i)``), so a dimension the decoder ignores, or one whose
  training spread is below its step, has a one-symbol alphabet and costs no bits at all.
* **Temporal prediction**, in integer index space (exact at both ends, whatever their floating point): an
  intra frame sends ``q`` itself; a predicted frame sends ``u = q - p`` where ``p`` is computed from the
  receiver's own decoded indices (the previous frame's, or LATEX's extrapolation
  ``q_{t-1} + round((q_{t-1} - q_{t-T}) / (T - 1))``). Intra frames come every ``intra_interval`` frames,
  on demand (a new receiver asked for the clock, a receiver asked for one because it lost a frame, a residual
  outside its alphabet) and first, so a receiver that joined late or lost a frame decodes again within one
  interval, or one round trip when it asks. A predicted frame names its reference (``r`` frames back); a
  strict receiver that does not hold exactly that frame drops it as ``no_reference`` until the next intra,
  and a 16-bit check of the decoded indices catches a corrupted payload (``codec``), so a residual is never
  applied to the wrong reference unknowingly. A receiver may instead **bridge** a few lost frames
  (``LatentStreamDecoder(bridge=N)``: the lost frames guessed unchanged, the frames after them flagged
  ``approximate`` until the intra frame) and **wait** for a reference that was overtaken rather than lost
  (:class:`ReorderingDecoder`).
* **Entropy coding**: the symbols of the elements whose alphabet has more than one symbol go through
  ``constriction``'s range coder with per-element categorical models (frequency tables fitted on training
  sessions), or (``raw``) are bit-packed with fixed widths.
* **LATEX-skip**: a frame the sender's LATEX gate extrapolated need not be sent; both ends fill it with the
  extrapolation of the decoded indices, and the next frame's ``r`` says how many were skipped.
"""
from __future__ import annotations

import hashlib
import json
import zlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from avcore.config import ConfigDict
from avcore.errors import UsageError

from .wire import (CODERS, EXTRAPOLATED, INTRA, KEYFRAME, MAX_REF_DISTANCE, SEQ_CHECK_MOD, CodedFrame, FrameMessage, WireError,
                   WireLimits, check_code_range, encode_coded_frame)

CODEC_JSON = "codec.json"
"""Settings and provenance of the codec tables (predictor, history, fitting record, codec id)."""
CODEC_NPZ = "codec.npz"
"""The tables: ``mean``, ``step`` (float64), ``lo``, ``hi``, ``res_max`` (int64), ``intra_freq``,
``res_freq`` (float64 frequency tables, zero-padded rows)."""
GAZE_ELEMENTS = 4
"""Gaze (2, 2) is coded as elements D..D+3 (row-major: left yaw, left pitch, right yaw, right pitch)."""
PREDICTORS = ("previous", "extrapolate")
CODER_IDS = {name: cid for cid, name in CODERS.items()}
_TABLE_KEYS = ("mean", "step", "lo", "hi", "res_max", "intra_freq", "res_freq")


class CodecError(ValueError):
    """A coded frame that cannot be decoded: ``kind`` is ``codec``, ``no_reference`` or ``model_mismatch``."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind
        self.detail = detail


@dataclass
class CodecConfig(ConfigDict):
    """How a sender streams the code (the receiver follows whatever the frames say)."""

    coded: bool = True
    """Send coded frames (quantised, predicted, range-coded; ``docs/protocol.md`` 3.7). False = plain
    float frames (``--plain``: today's float16, or float32 with ``--f32``)."""
    coder: str = "range"
    """Payload coder: ``range`` (constriction range coder with the fitted tables) or ``raw`` (fixed-width bits)."""
    intra_interval: int = 15
    """Frames between intra frames (15 = 0.5 s at 30 fps: the longest a late or desynchronised receiver waits)."""
    latex_skip: bool = False
    """With the LATEX gate on, do not send the frames it extrapolated: the receiver extrapolates them itself."""

    def __post_init__(self) -> None:
        if self.coder not in CODER_IDS:
            raise UsageError(f"codec: coder must be one of {', '.join(CODER_IDS)}, got {self.coder!r}")
        if not isinstance(self.intra_interval, int) or not 1 <= self.intra_interval <= MAX_REF_DISTANCE:
            raise UsageError(f"codec: intra_interval must be an integer from 1 to {MAX_REF_DISTANCE}, got {self.intra_interval!r}")


# --------------------------------------------------------------------------- tables


def _table_digest(arrays: dict[str, np.ndarray], predictor: str, history: int, latent_dim: int) -> str:
    h = hashlib.sha256(f"{predictor}:{history}:{latent_dim}".encode())
    for k in _TABLE_KEYS:
        a = np.ascontiguousarray(arrays[k])
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        h.update(k.encode() + str(a.shape).encode() + a.tobytes())
    return h.hexdigest()[:8]


@dataclass(eq=False)
class CodecTables:
    """Quantisation steps, alphabets and probability tables shared by sender and receiver."""

    latent_dim: int
    mean: np.ndarray
    """(N,) float64 centre of each element."""
    step: np.ndarray
    """(N,) float64 quantisation step of each element."""
    lo: np.ndarray
    """(N,) int64 smallest intra index."""
    hi: np.ndarray
    """(N,) int64 largest intra index (``lo == hi``: the element costs nothing)."""
    res_max: np.ndarray
    """(N,) int64 A_i: residual alphabet of a predicted frame is ``[-A_i, A_i]``."""
    intra_freq: np.ndarray
    """(N, max n_intra) float64: frequency of symbol ``q - lo`` in intra frames (zero-padded)."""
    res_freq: np.ndarray
    """(N, max n_res) float64: frequency of symbol ``u + A`` in predicted frames (zero-padded)."""
    predictor: str = "extrapolate"
    history: int = 5
    """T of the extrapolation (prediction with ``extrapolate``, and the fill of skipped frames)."""
    meta: dict = field(default_factory=dict)
    codec_id: str = ""

    def __post_init__(self) -> None:
        N = self.latent_dim + GAZE_ELEMENTS
        self.mean = np.asarray(self.mean, np.float64)
        self.step = np.asarray(self.step, np.float64)
        self.lo, self.hi, self.res_max = (np.asarray(a, np.int64) for a in (self.lo, self.hi, self.res_max))
        self.intra_freq = np.asarray(self.intra_freq, np.float64)
        self.res_freq = np.asarray(self.res_freq, np.float64)
        for name in ("mean", "step", "lo", "hi", "res_max"):
            if getattr(self, name).shape != (N,):
                raise ValueError(f"codec table {name} must have shape ({N},), got {getattr(self, name).shape}")
        if not (np.all(np.isfinite(self.mean)) and np.all(np.isfinite(self.step)) and np.all(self.step > 0)):
            raise ValueError("codec means must be finite and steps positive")
        if np.any(self.hi < self.lo) or np.any(self.res_max < 0):
            raise ValueError("codec alphabets must be non-empty")
        n_intra, n_res = self.hi - self.lo + 1, 2 * self.res_max + 1
        if self.intra_freq.shape != (N, int(n_intra.max())) or self.res_freq.shape != (N, int(n_res.max())):
            raise ValueError("codec frequency tables do not match the alphabets")
        if self.predictor not in PREDICTORS or not isinstance(self.history, int) or self.history < 2:
            raise ValueError(f"codec predictor must be one of {PREDICTORS} with history >= 2")
        self.n_intra, self.n_res = n_intra, n_res
        self.intra_active = np.flatnonzero(n_intra > 1)
        self.res_active = np.flatnonzero(n_res > 1)
        self.intra_bits = np.ceil(np.log2(np.maximum(n_intra, 1))).astype(np.int64)
        self.res_bits = np.ceil(np.log2(np.maximum(n_res, 1))).astype(np.int64)
        self._intra_probs = np.ascontiguousarray(self.intra_freq[self.intra_active])
        self._res_probs = np.ascontiguousarray(self.res_freq[self.res_active])
        digest = _table_digest(self.arrays(), self.predictor, self.history, self.latent_dim)
        if self.codec_id and self.codec_id != digest:
            raise ValueError(f"codec id {self.codec_id} does not match its tables ({digest})")
        self.codec_id = digest

    @property
    def size(self) -> int:
        return self.latent_dim + GAZE_ELEMENTS

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in _TABLE_KEYS}

    # -- values <-> indices ------------------------------------------------------------------------

    def quantise(self, z: np.ndarray, gaze: np.ndarray) -> np.ndarray:
        """z (D,), gaze (2, 2) -> (N,) int64 indices, clamped to the intra alphabet."""
        x = np.concatenate([np.asarray(z, np.float64).reshape(-1), np.asarray(gaze, np.float64).reshape(-1)])
        if x.shape != (self.size,):
            raise ValueError(f"expected a {self.latent_dim}-d code and (2, 2) gaze")
        if not np.all(np.isfinite(x)):
            raise ValueError("code or gaze holds NaN or Inf")
        q = np.rint((x - self.mean) / self.step)
        return np.clip(q, self.lo, self.hi).astype(np.int64)

    def values(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N,) indices -> z (D,) float32, gaze (2, 2) float32: ``float32(mean + q * step)`` in binary64."""
        x = (self.mean + np.asarray(q, np.float64) * self.step).astype(np.float32)
        return x[: self.latent_dim], x[self.latent_dim :].reshape(2, 2)

    def extrapolate(self, history: list[np.ndarray], T: int | None = None) -> np.ndarray:
        """LATEX extrapolation of index vectors (oldest first): ``a + floor((2 (a - b) + k - 1) / (2 (k - 1)))``
        with ``a`` the newest, ``b`` the k-th newest, k = min(T, len) (just ``a`` when k < 2), clamped."""
        T = self.history if T is None else T
        a = history[-1]
        k = min(T, len(history))
        if k < 2:
            return a.copy()
        b = history[-k]
        p = a + (2 * (a - b) + (k - 1)) // (2 * (k - 1))
        return np.clip(p, self.lo, self.hi)

    def predict(self, history: list[np.ndarray]) -> np.ndarray:
        """The prediction of the next frame's indices from the decoded ones (oldest first)."""
        if self.predictor == "previous":
            return history[-1].copy()
        return self.extrapolate(history)

    # -- symbols <-> payload -------------------------------------------------------------------------

    def pack(self, symbols: np.ndarray, intra: bool, coder: int) -> bytes:
        """Symbols of the active elements (in element order) -> payload bytes."""
        if coder == 1:
            return _range_encode(symbols, self._intra_probs if intra else self._res_probs)
        bits = (self.intra_bits if intra else self.res_bits)[self.intra_active if intra else self.res_active]
        return _pack_bits(symbols, bits)

    def unpack(self, payload: bytes, intra: bool, coder: int) -> np.ndarray:
        """Payload -> symbols of the active elements; :class:`CodecError` ``codec`` when it does not decode."""
        active = self.intra_active if intra else self.res_active
        n = (self.n_intra if intra else self.n_res)[active]
        if coder == 1:
            symbols = _range_decode(payload, self._intra_probs if intra else self._res_probs)
        else:
            symbols = _unpack_bits(payload, (self.intra_bits if intra else self.res_bits)[active])
        if np.any(symbols < 0) or np.any(symbols >= n):
            raise CodecError("codec", "a symbol outside its element's alphabet")
        return symbols


def check_value(q: np.ndarray) -> int:
    """The 16-bit check of decoded indices: low 16 bits of CRC-32 (zlib) of ``q`` as little-endian int32."""
    return zlib.crc32(np.asarray(q, "<i4").tobytes()) & 0xFFFF


def _range_encode(symbols: np.ndarray, probs: np.ndarray) -> bytes:
    if len(symbols) == 0:
        return b""
    import constriction

    enc = constriction.stream.queue.RangeEncoder()
    enc.encode(np.ascontiguousarray(symbols, np.int32), constriction.stream.model.Categorical(perfect=False), probs)
    return enc.get_compressed().astype("<u4").tobytes()


def _range_decode(payload: bytes, probs: np.ndarray) -> np.ndarray:
    if len(probs) == 0:
        if payload:
            raise CodecError("codec", "payload for a frame with nothing to code")
        return np.zeros(0, np.int64)
    if len(payload) % 4 or not payload:
        raise CodecError("codec", f"range-coded payload of {len(payload)} bytes (a multiple of 4 is needed)")
    import constriction

    try:
        dec = constriction.stream.queue.RangeDecoder(np.frombuffer(payload, "<u4").astype(np.uint32))
        out = dec.decode(constriction.stream.model.Categorical(perfect=False), probs)
    except Exception as exc:  # untrusted bytes: any decoder failure is one kind
        raise CodecError("codec", f"range decoder: {exc}") from None
    return np.asarray(out, np.int64)


def _pack_bits(symbols: np.ndarray, bits: np.ndarray) -> bytes:
    """Each symbol in its width, most significant bit first, concatenated, zero-padded to whole bytes."""
    total = int(bits.sum())
    if total == 0:
        return b""
    out = np.zeros(total, np.uint8)
    pos = np.concatenate([[0], np.cumsum(bits)[:-1]])
    for b in range(int(bits.max())):
        sel = bits > b  # bit b counted from the most significant end of each symbol
        shift = bits[sel] - 1 - b
        out[pos[sel] + b] = (np.asarray(symbols)[sel] >> shift) & 1
    return np.packbits(out).tobytes()


def _unpack_bits(payload: bytes, bits: np.ndarray) -> np.ndarray:
    total = int(bits.sum())
    if len(payload) != (total + 7) // 8:
        raise CodecError("codec", f"raw payload of {len(payload)} bytes, expected {(total + 7) // 8}")
    flat = np.unpackbits(np.frombuffer(payload, np.uint8))
    if np.any(flat[total:]):
        raise CodecError("codec", "raw payload padding bits are not zero")
    symbols = np.zeros(len(bits), np.int64)
    pos = np.concatenate([[0], np.cumsum(bits)[:-1]]).astype(np.int64)
    for b in range(int(bits.max()) if len(bits) else 0):
        sel = bits > b
        symbols[sel] = (symbols[sel] << 1) | flat[pos[sel] + b]
    return symbols


def save_codec(tables: CodecTables, directory: str | Path, info: dict | None = None) -> Path:
    """Write ``codec.npz`` (tables) and ``codec.json`` (settings, codec id, ``info``) into ``directory``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(d / CODEC_NPZ, **tables.arrays())
    doc = {"codec_id": tables.codec_id, "latent_dim": tables.latent_dim, "predictor": tables.predictor,
           "history": tables.history, "gaze_elements": GAZE_ELEMENTS, "tables": CODEC_NPZ, **(info or {})}
    (d / CODEC_JSON).write_text(json.dumps(doc, indent=1))
    return d / CODEC_JSON


def load_codec(directory: str | Path) -> CodecTables:
    """The codec tables of a model directory (``codec.json`` + ``codec.npz``); ``FileNotFoundError`` if absent."""
    d = Path(directory)
    doc = json.loads((d / CODEC_JSON).read_text())
    with np.load(d / doc.get("tables", CODEC_NPZ), allow_pickle=False) as z:
        arrays = {k: z[k] for k in _TABLE_KEYS}
    meta = {k: v for k, v in doc.items() if k not in ("codec_id", "latent_dim", "predictor", "history", "tables")}
    return CodecTables(latent_dim=int(doc["latent_dim"]), predictor=str(doc["predictor"]), history=int(doc["history"]),
                       meta=meta, codec_id=str(doc["codec_id"]), **arrays)


# --------------------------------------------------------------------------- the two ends


class LatentStreamEncoder:
    """Sender side of one coded stream: ``encode(...)`` -> the message bytes, or None for a skipped frame.

    Keeps exactly the state the receiver will have (decoded indices of the last ``history`` frames, the
    reconstructed capture time, the reference's sequence number)."""

    def __init__(self, tables: CodecTables, stream_id: str, cfg: CodecConfig | None = None) -> None:
        self.tables = tables
        self.stream_id = stream_id
        self.cfg = cfg or CodecConfig()
        self.coder = CODER_IDS[self.cfg.coder]
        self.reset()

    def reset(self) -> None:
        """Forget the state: the next frame is intra."""
        self._hist: deque[np.ndarray] = deque(maxlen=max(self.tables.history, 2))
        self._last_seq: int | None = None  # sequence number of the last frame in the history (sent or skipped)
        self._ref_seq: int | None = None  # ... of the last frame sent
        self._ref_tc = 0  # reconstructed capture time of the last frame sent (what the receiver holds)
        self._since_intra = 0
        self.intra_frames = 0
        self.predicted_frames = 0
        self.skipped_frames = 0
        self.escapes = 0
        """Intra frames sent because a residual left its alphabet."""
        self.last_intra = False
        """Whether the last frame sent was an intra frame (it carried the codec id and, if given, the model id)."""

    def request_intra(self) -> None:
        """Make the next frame an intra frame (a receiver joined)."""
        self._since_intra = self.cfg.intra_interval

    def encode(self, seq: int, capture_ts_ns: int, send_ts_ns: int, z: np.ndarray, gaze: np.ndarray, *,
               flags: int = int(KEYFRAME), enc_ts_ns: int | None = None, model: str | None = None,
               skip: bool = False) -> bytes | None:
        """One frame. ``skip`` (LATEX-skip mode, on an EXTRAPOLATED frame): send nothing unless an intra frame
        is due; the receiver fills the frame by extrapolation, and so does this state."""
        t = self.tables
        q = t.quantise(z, gaze)
        consecutive = self._last_seq is not None and seq == self._last_seq + 1
        ref_distance = seq - self._ref_seq if self._ref_seq is not None else 0
        intra = (not consecutive or self._since_intra + 1 >= self.cfg.intra_interval
                 or not 1 <= ref_distance <= MAX_REF_DISTANCE)
        # a skipped frame is declared by the predicted frame after it (its r), so never skip just before an intra
        if skip and not intra and self._since_intra + 2 < self.cfg.intra_interval:
            self._hist.append(t.extrapolate(list(self._hist)))
            self._last_seq = seq
            self._since_intra += 1
            self.skipped_frames += 1
            self.last_intra = False
            return None
        if not intra:
            p = t.predict(list(self._hist))
            u = q - p
            if np.any(np.abs(u) > t.res_max):
                intra = True
                self.escapes += 1
        flags = int(flags) & int(KEYFRAME | EXTRAPOLATED)
        if intra:
            symbols = (q - t.lo)[t.intra_active]
            time_field, n_field, r_field = int(capture_ts_ns), int(seq), 0
            tc_rx = int(capture_ts_ns)
            flags |= int(INTRA)
        else:
            symbols = (u + t.res_max)[t.res_active]
            delta_us = max(0, round((capture_ts_ns - self._ref_tc) / 1000))
            time_field, n_field, r_field = delta_us, int(seq) % SEQ_CHECK_MOD, ref_distance
            tc_rx = self._ref_tc + delta_us * 1000
        payload = t.pack(symbols, intra, self.coder)
        cf = CodedFrame(
            stream_id=self.stream_id, flags=flags, seq=n_field, ref=r_field, time=time_field,
            send_delay_us=max(0, round((send_ts_ns - tc_rx) / 1000)),
            enc_delay_us=None if enc_ts_ns is None else max(0, round((enc_ts_ns - tc_rx) / 1000)),
            coder=self.coder, check=check_value(q), payload=payload,
            codec_id=t.codec_id if intra else None, model=model if intra else None)
        data = encode_coded_frame(cf)
        if intra:  # prediction restarts from the intra frame: all a late joiner has
            self._hist.clear()
        self._hist.append(q)
        self._last_seq = self._ref_seq = seq
        self._ref_tc = tc_rx
        self.last_intra = intra
        if intra:
            self._since_intra = 0
            self.intra_frames += 1
        else:
            self._since_intra += 1
            self.predicted_frames += 1
        return data

    def decoded(self) -> tuple[np.ndarray, np.ndarray]:
        """What the receiver shows for the last frame (sent or skipped): z (D,), gaze (2, 2) float32."""
        return self.tables.values(self._hist[-1])


class LatentStreamDecoder:
    """Receiver side of one coded stream: ``decode(CodedFrame)`` -> :class:`FrameMessage` with float32 ``z``
    and gaze, or :class:`CodecError` (``no_reference``, ``codec``, ``model_mismatch``).

    ``codecs`` maps codec ids to the tables this receiver has; an intra frame picks its tables by id."""

    def __init__(self, codecs: dict[str, CodecTables], limits: WireLimits | None = None, bridge: int = 0) -> None:
        self.codecs = dict(codecs)
        self.limits = limits or WireLimits()
        self.bridge = int(bridge)
        """Lost reference frames a predicted frame may be decoded across (0: strict, ``no_reference``). A lost frame
        is guessed unchanged from the one before it, and the frames after it decode on that guess: their values are
        off by the lost frame's step until the next intra frame (flagged ``approximate``, their check values cannot
        match and are not checked) instead of frozen for a round trip (``docs/protocol.md`` 3.7.4)."""
        self.approximate = False
        """Decoding on a guessed reference since a lost frame (until the next intra frame)."""
        self.bridged = 0
        """Predicted frames decoded on a guessed reference."""
        self.tables: CodecTables | None = None
        self._hist: deque[np.ndarray] = deque(maxlen=2)
        self._seq: int | None = None
        self._tc = 0
        self._dt = 0  # capture interval of the last consecutive predicted frame (ns)
        self.skipped = 0
        """Frames the sender skipped on purpose (LATEX-skip) and this decoder filled by extrapolation."""

    @property
    def synchronised(self) -> bool:
        """True once an intra frame was decoded and no payload failed since."""
        return self._seq is not None

    def _lose_sync(self) -> None:
        self._seq = None
        self._hist.clear()
        self.approximate = False

    def decode(self, cf: CodedFrame) -> FrameMessage:
        if cf.is_intra:
            tables = self.codecs.get(cf.codec_id or "")
            if tables is None:
                raise CodecError("model_mismatch", f"coded with codec tables {cf.codec_id}, this receiver has "
                                 f"{sorted(self.codecs) or 'none'}")
            symbols = tables.unpack(cf.payload, True, cf.coder)
            q = tables.lo.copy()
            q[tables.intra_active] += symbols
            seq, tc, fills, guessed, approximate = cf.seq, cf.time, [], [], False
        else:
            tables = self.tables
            if tables is None or self._seq is None:
                raise CodecError("no_reference", "no intra frame decoded yet (or sync lost); waiting for the next")
            r = cf.ref
            seq = self._seq + r
            hist = list(self._hist)
            guessed: list[np.ndarray] = []
            lost_ns = 0
            approximate = self.approximate
            if seq % SEQ_CHECK_MOD != cf.seq:
                lost = (cf.seq - r - self._seq) % SEQ_CHECK_MOD  # frames between ours and the frame's reference
                if not 1 <= lost <= self.bridge:
                    raise CodecError("no_reference", f"the reference is frame n - {r} = {cf.seq - r} (mod {SEQ_CHECK_MOD}), "
                                     f"this receiver holds {self._seq % SEQ_CHECK_MOD}; waiting for the next intra frame")
                seq += lost
                lost_ns = lost * self._dt  # their capture times, guessed at the last frame interval
                guessed = [hist[-1]] * lost  # the lost frames, guessed unchanged
                hist += guessed
                approximate = True
            if seq >= 2**64:
                raise CodecError("codec", "sequence number overflows 64 bits")
            fills = []
            for _ in range(r - 1):  # frames the sender skipped: filled by extrapolation at both ends
                fills.append(tables.extrapolate(hist))
                hist.append(fills[-1])
            p = tables.predict(hist)
            symbols = tables.unpack(cf.payload, False, cf.coder)
            u = -tables.res_max.copy()
            u[tables.res_active] += symbols
            q = p + u
            if approximate:  # a guessed reference may push an index off its alphabet: keep it in range
                q = np.clip(q, tables.lo, tables.hi)
            if np.any(q < tables.lo) or np.any(q > tables.hi):
                self._lose_sync()
                raise CodecError("codec", "decoded index outside its element's range")
            tc = self._tc + lost_ns + cf.time * 1000
        if check_value(q) != cf.check and not approximate:
            if not cf.is_intra:
                self._lose_sync()
            raise CodecError("codec", "check value does not match the decoded code (corrupt payload or wrong reference)")
        if tc + cf.send_delay_us * 1000 >= 2**64 or tc >= 2**64:
            raise CodecError("codec", "timestamps overflow 64 bits")
        z, gaze = tables.values(q)
        try:
            check_code_range(z, self.limits)
        except WireError:
            if not cf.is_intra:
                self._lose_sync()
            raise
        if cf.is_intra and self._seq is not None and seq < self._seq and tc < self._tc:
            # an intra frame that arrived after newer frames (reordered): shown or not by the caller, but the
            # decoder keeps its newer state (a sender restart, whose seq also goes back, has a newer capture time)
            stages = {} if cf.enc_delay_us is None else {"enc": tc + cf.enc_delay_us * 1000}
            return FrameMessage(stream_id=cf.stream_id, seq=seq, capture_ts_ns=tc, send_ts_ns=tc + cf.send_delay_us * 1000,
                                z=z, gaze=gaze, flags=cf.flags & int(KEYFRAME | EXTRAPOLATED), stage_ts_ns=stages,
                                model=cf.model)
        if cf.is_intra and tables is not self.tables:
            self.tables = tables
            self._hist = deque(maxlen=max(tables.history, 2))
        elif not cf.is_intra:
            self.skipped += len(fills)
            self._hist.extend(guessed + fills)
        if cf.is_intra:
            self._hist.clear()
        self._hist.append(q)
        if not cf.is_intra and cf.ref == 1 and cf.time > 0:
            self._dt = cf.time * 1000
        self._seq, self._tc = seq, tc
        self.approximate = approximate
        self.bridged += approximate
        stages = {} if cf.enc_delay_us is None else {"enc": tc + cf.enc_delay_us * 1000}
        return FrameMessage(stream_id=cf.stream_id, seq=seq, capture_ts_ns=tc, send_ts_ns=tc + cf.send_delay_us * 1000,
                            z=z, gaze=gaze, flags=cf.flags & int(KEYFRAME | EXTRAPOLATED), stage_ts_ns=stages,
                            model=cf.model, approximate=approximate)



class ReorderingDecoder:
    """A :class:`LatentStreamDecoder` that waits for references that arrive out of order, while that costs nothing.

    A predicted frame whose reference is not decoded yet, but which is at most :attr:`HOLD` frames ahead of the
    decoder, is held instead of failing at once: when the frames before it arrive, it is decoded after them, in
    sequence order; at its deadline it is decoded across the gap (the decoder's ``bridge``) or fails
    (``no_reference``). :attr:`deadline` maps a frame's capture time (sender clock, ns; estimated from the last
    decoded frame and the frame interval) to the time (caller's clock) by which it must be decoded: a receiver with
    a jitter buffer passes the frame's slot, so waiting never makes a frame late. None (the default) holds
    nothing: every frame is decided on arrival.

    :meth:`push` and :meth:`expire` return ``(tag, result, skipped)`` triples in decoding order: ``result`` a
    :class:`FrameMessage` or the :class:`CodecError` / :class:`WireError` it raised, ``skipped`` the frames the
    sender skipped on purpose just before it, ``tag`` what the caller passed with the frame."""

    HOLD = 8
    """Most frames a held frame may be ahead of the decoder."""
    MARGIN_NS = 2_000_000
    """A held frame is decided this long before its deadline (decoding and rendering it take time)."""

    def __init__(self, codecs: dict[str, CodecTables], limits: WireLimits | None = None, bridge: int = 0) -> None:
        self.decoder = LatentStreamDecoder(codecs, limits, bridge=bridge)
        self.deadline: Callable[[int], int] | None = None
        """Capture time (sender clock) -> when a frame must be decoded; None: nothing waits."""
        self._held: dict[int, tuple[CodedFrame, int, Any]] = {}  # absolute seq -> (frame, deadline, tag)
        self.held = 0
        """Frames that waited for their reference."""
        self.superseded = 0
        """Held frames dropped because the decoder moved past them (an intra frame overtook them)."""

    def _decode(self, cf: CodedFrame, tag: Any) -> tuple[Any, FrameMessage | Exception, int]:
        before = self.decoder.skipped
        try:
            return tag, self.decoder.decode(cf), self.decoder.skipped - before
        except (CodecError, WireError) as err:
            return tag, err, 0

    def push(self, cf: CodedFrame, now_ns: int, tag: Any = None) -> list[tuple[Any, FrameMessage | Exception, int]]:
        d = self.decoder
        out: list = []
        if cf.is_intra and self._held:
            # the frames still waiting before an intra frame are decided now (across the gap, or failed): once the
            # intra frame is decoded their references are gone for good, and dropping them silently would hide them
            for seq in sorted(s for s in self._held if s < cf.seq):
                if seq in self._held:
                    hcf, _, htag = self._held.pop(seq)
                    out.append(self._decode(hcf, htag))
                    self._release(out)
        if self.deadline is not None and not cf.is_intra and d._seq is not None:
            ahead = (cf.seq - d._seq) % SEQ_CHECK_MOD
            if cf.ref < ahead <= self.HOLD:  # its reference is a frame this decoder has not seen yet
                seq = d._seq + ahead
                due = self.deadline(d._tc + ahead * d._dt) - self.MARGIN_NS
                if seq in self._held:
                    return out  # a duplicate
                if due > now_ns:
                    self._held[seq] = (cf, due, tag)
                    self.held += 1
                    return out
        out.append(self._decode(cf, tag))
        self._release(out)
        return out

    def next_due_ns(self) -> int | None:
        """When the first held frame must be decided (None: nothing waits)."""
        return min((due for _, due, _ in self._held.values()), default=None)

    def expire(self, now_ns: int) -> list[tuple[Any, FrameMessage | Exception, int]]:
        """Decode (across the gap, or fail) the held frames whose deadline came, oldest sequence first."""
        out: list = []
        while self._held and self.next_due_ns() <= now_ns:
            cf, _, tag = self._held.pop(min(self._held))
            out.append(self._decode(cf, tag))
            self._release(out)
        return out

    def _release(self, out: list) -> None:
        """Decode every held frame whose reference is now the decoder's last frame, in order."""
        d = self.decoder
        while self._held:
            if d._seq is None:
                return
            for seq in [s for s in self._held if s <= d._seq]:
                del self._held[seq]
                self.superseded += 1
            nxt = next((s for s, (cf, _, _) in sorted(self._held.items()) if s - cf.ref == d._seq), None)
            if nxt is None:
                return
            cf, _, tag = self._held.pop(nxt)
            out.append(self._decode(cf, tag))

def message_sizes(frames: list[bytes | None]) -> dict[str, Any]:
    """Bytes of a stream's messages (None = a skipped frame): total, mean per frame slot, and per message."""
    sent = [len(f) for f in frames if f is not None]
    return {"messages": len(sent), "frames": len(frames), "bytes": int(sum(sent)),
            "bytes_per_frame": float(sum(sent)) / max(1, len(frames))}
