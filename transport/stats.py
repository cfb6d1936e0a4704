"""Per-stream transport statistics: counts, bad messages by kind, loss, bandwidth.

Plain Python (no numpy), cheap enough to update for every message, bounded in
memory whatever a hostile peer sends. Times are ``time.monotonic_ns()`` values
unless a caller passes its own ``now_ns``.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


class BandwidthMeter:
    """Bytes per second over a sliding window, in fixed time buckets (O(1) memory)."""

    def __init__(self, window_s: float = 2.0, bucket_s: float = 0.1) -> None:
        if window_s <= 0 or bucket_s <= 0 or bucket_s > window_s:
            raise ValueError("need 0 < bucket_s <= window_s")
        self.bucket_ns = int(bucket_s * 1e9)
        self.n_buckets = max(1, round(window_s / bucket_s))
        self._bytes = [0] * self.n_buckets
        self._index = [-1] * self.n_buckets  # absolute bucket number held in each slot
        self._first_bucket: int | None = None
        self.total_bytes = 0
        self.total_messages = 0

    def add(self, nbytes: int, now_ns: int | None = None) -> None:
        now_ns = time.monotonic_ns() if now_ns is None else now_ns
        b = now_ns // self.bucket_ns
        slot = b % self.n_buckets
        if self._index[slot] != b:
            self._index[slot] = b
            self._bytes[slot] = 0
        self._bytes[slot] += nbytes
        if self._first_bucket is None:
            self._first_bucket = b
        self.total_bytes += nbytes
        self.total_messages += 1

    def bytes_per_s(self, now_ns: int | None = None) -> float:
        """Average rate over the window ending at ``now_ns`` (over less time
        when the first byte arrived less than a window ago)."""
        if self._first_bucket is None:
            return 0.0
        now_ns = time.monotonic_ns() if now_ns is None else now_ns
        current = now_ns // self.bucket_ns
        oldest = current - self.n_buckets + 1
        total = sum(n for n, b in zip(self._bytes, self._index) if oldest <= b <= current)
        span_buckets = current - max(oldest, self._first_bucket) + 1
        return total / (span_buckets * self.bucket_ns / 1e9)

    def kbit_per_s(self, now_ns: int | None = None) -> float:
        return self.bytes_per_s(now_ns) * 8 / 1000.0


@dataclass
class _SeqTrack:
    last_seq: int
    bandwidth: BandwidthMeter
    frames: int = 0
    newest_capture_ns: int | None = None
    """Newest capture time seen on the stream since its last (re)start (None: frames came without one)."""
    missing: int = 0
    """Bit k set: frame ``last_seq - 1 - k`` was counted in ``lost`` and has not arrived (k < MAX_REORDER)."""
    seen: int = 0
    """Bit k set: frame ``last_seq - 1 - k`` arrived (since the stream's first frame or last restart)."""


class StreamStats:
    """What a frame subscriber saw.

    Counters:
      ``received``       raw messages taken off the socket (good or bad)
      ``bytes_received`` their total size
      ``decoded``        messages that passed validation
      ``delivered``      frames handed to the caller (newest of each drain)
      ``dropped_stale``  valid frames skipped because a newer one was queued
      ``bad``            Counter of rejected messages by kind (``WireError.kind``,
                         or one of ``transport.wire.RECEIVER_CHECK_KINDS``:
                         ``"multipart"``, ``"stream"``, ``"model_mismatch"``,
                         ``"timestamp_range"``)
      ``lost``           frames that never arrived (gaps in ``seq`` of at most
                         :attr:`MAX_SEQ_JUMP` frames)
      ``duplicates``     frames whose ``seq`` equals the newest frame's of the
                         same stream, or a late one (as for ``reordered``) whose
                         ``seq`` already arrived (a resent or replayed frame); not
                         lost, not a restart
      ``skipped``        frames a coded stream skipped on purpose (LATEX-skip mode: the
                         receiver extrapolates them); not lost
      ``reordered``      late frames: ``seq`` below the stream's newest, at most
                         :attr:`MAX_REORDER` back, not received before, with a
                         capture time not newer than the newest frame's. One that
                         was counted in ``lost`` when its gap opened is taken back
                         out of ``lost``; the stream's newest ``seq`` stays
      ``restarts``       ``seq`` went backwards (and is not a late frame), or jumped
                         forward by more than :attr:`MAX_SEQ_JUMP`: the sender
                         restarted (or lied)
      ``events``         Counter of socket events (``connected``, ``disconnected``,
                         ``handshake_failed_auth``, ...)
      ``last_model_mismatch``  model id of the last frame rejected as
                         ``"model_mismatch"`` (None: none yet, or the frame had none)
    Each bad kind is logged once at WARNING, later ones at DEBUG.
    """

    MAX_SEQ_JUMP = 10_000
    """Largest forward ``seq`` gap counted as loss (about 5.5 minutes at 30 fps).
    A larger jump counts as a restart, so one hostile or corrupt ``seq`` near
    2**64 cannot make ``lost`` meaningless."""

    MAX_REORDER = 64
    """How far back (in ``seq``) a late frame still counts as reordered rather than as a sender restart
    (about 2 s at 30 fps); each stream keeps one bit per frame of this window."""

    MAX_STREAMS = 16
    """Streams tracked individually; more stream ids are pooled as ``"*other*"``
    so a hostile peer cannot grow this object."""

    def __init__(self, window_s: float = 2.0) -> None:
        self.window_s = window_s
        self.received = 0
        self.bytes_received = 0
        self.decoded = 0
        self.delivered = 0
        self.dropped_stale = 0
        self.lost = 0
        self.duplicates = 0
        self.skipped = 0
        self.reordered = 0
        self.restarts = 0
        self.last_model_mismatch: str | None = None
        self.bad: Counter[str] = Counter()
        self.events: Counter[str] = Counter()
        self.bandwidth = BandwidthMeter(window_s)
        self._streams: dict[str, _SeqTrack] = {}

    # --- recording -------------------------------------------------------------

    def record_message(self, nbytes: int, now_ns: int | None = None) -> None:
        """A raw message of ``nbytes`` came off the socket."""
        self.received += 1
        self.bytes_received += nbytes
        self.bandwidth.add(nbytes, now_ns)

    def record_bad(self, kind: str, detail: str = "") -> None:
        first = kind not in self.bad
        self.bad[kind] += 1
        if first:
            log.warning("dropping bad message (%s): %s; further '%s' messages are counted, not logged", kind, detail, kind)
        else:
            log.debug("dropping bad message (%s): %s", kind, detail)

    def record_frame(self, stream_id: str, seq: int, nbytes: int, now_ns: int | None = None, skipped: int = 0,
                     capture_ns: int | None = None) -> None:
        """A valid frame of ``stream_id`` arrived (in arrival order); ``skipped``: frames just before it that its
        sender skipped on purpose (not lost); ``capture_ns``: its capture time (sender clock), which tells a late
        frame (not newer than the newest frame seen) from a restarted sender. Without it a ``seq`` that went back
        is a restart."""
        self.decoded += 1
        key = stream_id
        if key not in self._streams and len(self._streams) >= self.MAX_STREAMS:
            key = "*other*"
        track = self._streams.get(key)
        if track is None:
            track = self._streams[key] = _SeqTrack(last_seq=seq, bandwidth=BandwidthMeter(self.window_s),
                                                   newest_capture_ns=capture_ns)
        elif key != "*other*":
            self._sequence(track, seq, skipped, capture_ns)
        track.frames += 1
        track.bandwidth.add(nbytes, now_ns)

    def _sequence(self, track: _SeqTrack, seq: int, skipped: int, capture_ns: int | None) -> None:
        window = (1 << self.MAX_REORDER) - 1
        last = track.last_seq
        if last < seq <= last + 1 + self.MAX_SEQ_JUMP:
            gap = seq - last - 1
            skip = min(max(skipped, 0), gap)
            self.skipped += skip
            self.lost += gap - skip
            # the frames just before ``seq`` were skipped, the earlier ones of the gap lost; ``last`` arrived
            lost_bits = ((1 << (gap - skip)) - 1) << skip if gap - skip else 0
            track.missing = ((track.missing << (gap + 1)) | lost_bits) & window
            track.seen = ((track.seen << (gap + 1)) | (1 << gap)) & window
            track.last_seq = seq
            if capture_ns is not None and (track.newest_capture_ns is None or capture_ns > track.newest_capture_ns):
                track.newest_capture_ns = capture_ns
            return
        if seq == last:
            self.duplicates += 1
            return
        back = last - 1 - seq  # bit of ``seq`` in ``missing`` and ``seen``
        if (0 <= back < self.MAX_REORDER and capture_ns is not None and track.newest_capture_ns is not None
                and capture_ns <= track.newest_capture_ns):
            bit = 1 << back
            if track.seen & bit:  # arrived already: a replay
                self.duplicates += 1
                return
            track.seen |= bit
            self.reordered += 1
            if track.missing & bit:  # counted lost when the gap opened: it was only late
                track.missing &= ~bit
                self.lost = max(0, self.lost - 1)
            return
        self.restarts += 1
        track.last_seq = seq
        track.missing = track.seen = 0
        track.newest_capture_ns = capture_ns

    def record_event(self, name: str) -> None:
        self.events[name] += 1

    # --- reading ---------------------------------------------------------------

    @property
    def bad_total(self) -> int:
        return sum(self.bad.values())

    def bytes_per_s(self, now_ns: int | None = None) -> float:
        """All bytes received (good and bad) per second over the window."""
        return self.bandwidth.bytes_per_s(now_ns)

    def stream_bytes(self, stream_id: str) -> int:
        """Total bytes of valid frames of ``stream_id`` since the start (0 for an unknown stream).

        Streams beyond :attr:`MAX_STREAMS` are pooled under ``"*other*"``."""
        track = self._streams.get(stream_id)
        return 0 if track is None else track.bandwidth.total_bytes

    def stream_ids(self) -> list[str]:
        """Stream ids seen so far (in order of first frame)."""
        return list(self._streams)

    def stream_bytes_per_s(self, now_ns: int | None = None) -> dict[str, float]:
        """Bytes per second of valid frames, per stream id, over the window."""
        now_ns = time.monotonic_ns() if now_ns is None else now_ns
        return {sid: t.bandwidth.bytes_per_s(now_ns) for sid, t in self._streams.items()}

    def snapshot(self, now_ns: int | None = None) -> dict[str, Any]:
        """A JSON-friendly summary."""
        now_ns = time.monotonic_ns() if now_ns is None else now_ns
        return {
            "received": self.received,
            "bytes_received": self.bytes_received,
            "decoded": self.decoded,
            "delivered": self.delivered,
            "dropped_stale": self.dropped_stale,
            "bad": dict(self.bad),
            "lost": self.lost,
            "duplicates": self.duplicates,
            "skipped": self.skipped,
            "reordered": self.reordered,
            "restarts": self.restarts,
            "last_model_mismatch": self.last_model_mismatch,
            "events": dict(self.events),
            "kbit_per_s": self.bandwidth.kbit_per_s(now_ns),
            "streams": {
                sid: {
                    "frames": t.frames,
                    "bytes": t.bandwidth.total_bytes,
                    "last_seq": t.last_seq,
                    "kbit_per_s": t.bandwidth.kbit_per_s(now_ns),
                }
                for sid, t in self._streams.items()
            },
        }


class SendStats:
    """What a frame publisher sent."""

    def __init__(self, window_s: float = 2.0) -> None:
        self.frames_sent = 0
        self.bytes_sent = 0
        self.bandwidth = BandwidthMeter(window_s)
        self.events: Counter[str] = Counter()

    def record_sent(self, nbytes: int, now_ns: int | None = None) -> None:
        self.frames_sent += 1
        self.bytes_sent += nbytes
        self.bandwidth.add(nbytes, now_ns)

    def record_event(self, name: str) -> None:
        self.events[name] += 1

    def snapshot(self, now_ns: int | None = None) -> dict[str, Any]:
        return {
            "frames_sent": self.frames_sent,
            "bytes_sent": self.bytes_sent,
            "kbit_per_s": self.bandwidth.kbit_per_s(now_ns),
            "events": dict(self.events),
        }
