"""Clock-offset estimation between sender and receiver hosts (NTP-style).

Frame timestamps are taken on the sender's clock; to measure
capture-to-present latency on the receiver, the receiver needs
``offset = sender_clock - receiver_clock``. It gets it the way NTP does: the
receiver (clock *client*) sends a request stamped ``t0``, the sender (clock
*server*) stamps its arrival ``t1`` and its reply's departure ``t2``, and the
client stamps the reply's arrival ``t3``::

    offset = ((t1 - t0) + (t2 - t3)) / 2      delay = (t3 - t0) - (t2 - t1)

The offset is exact when the two network legs take equal time; its error is at
most ``delay / 2``. :class:`OffsetEstimator` therefore keeps the sample with the
smallest delay among recent ones (queueing only ever adds delay).

All timestamps are :func:`now_ns` (``CLOCK_MONOTONIC``, ns): immune to wall
clock steps, shared by every process on one host (so the offset is ~0 there),
and slewed by NTP so hosts drift slowly; re-estimating every second or so
tracks what drift remains.
"""
from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Callable

import zmq

from .sockets import CurveConfig, SocketOptions, SocketOwner
from .wire import (
    ClockReply,
    ClockRequest,
    WireError,
    decode_clock_reply,
    decode_clock_request,
    encode_clock_reply,
    encode_clock_request,
)

log = logging.getLogger(__name__)

Clock = Callable[[], int]

CLOCK_BURST_REQUESTS = 8
"""The reference receiver (``runtime.receiver.ClockThread``) waits only
:data:`CLOCK_BURST_GAP_S` after each of its first 8 requests, so that a good
offset exists within the first frames ..."""
CLOCK_BURST_GAP_S = 0.02
"""... 20 ms between burst requests ..."""
CLOCK_INTERVAL_S = 0.25
"""... and :data:`CLOCK_INTERVAL_S` (250 ms) after every later one
(``docs/protocol.md`` section 8.2)."""


def clock_request_gap_s(sent: int) -> float:
    """How long the reference receiver waits after its ``sent``-th clock request (1-based).

    A request that could not be sent (no sender connected yet) does not count,
    so an unconnected receiver keeps trying every :data:`CLOCK_BURST_GAP_S`.
    """
    return CLOCK_BURST_GAP_S if sent <= CLOCK_BURST_REQUESTS else CLOCK_INTERVAL_S


def now_ns() -> int:
    """The clock every avcall timestamp uses: ``time.monotonic_ns()``."""
    return time.monotonic_ns()


def offset_and_delay(t0: int, t1: int, t2: int, t3: int) -> tuple[int, int]:
    """NTP offset and round-trip delay from the four timestamps, in ns.

    ``t0``/``t3``: client clock at request send / reply receive; ``t1``/``t2``:
    server clock at request receive / reply send. ``offset`` is server clock
    minus client clock (rounded toward minus infinity to an integer ns);
    ``delay`` is the time spent on the network, excluding the server's turnaround.
    """
    return ((t1 - t0) + (t2 - t3)) // 2, (t3 - t0) - (t2 - t1)


@dataclass(frozen=True)
class ClockSample:
    offset_ns: int
    """Server (remote) clock minus client (local) clock."""
    delay_ns: int
    """Network round trip; the offset's error is at most delay_ns / 2."""
    local_ns: int
    """Client clock when the sample was taken (t3)."""


class OffsetEstimator:
    """Keeps recent clock samples and trusts the one with the smallest delay.

    ``window`` samples are kept, and samples older than ``max_age_s`` (relative
    to the newest) are forgotten so that slow clock drift is followed.
    """

    def __init__(self, window: int = 32, max_age_s: float = 60.0) -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
        self._samples: deque[ClockSample] = deque(maxlen=window)
        self.max_age_ns = int(max_age_s * 1e9)
        self.rejected = 0

    def add(self, t0: int, t1: int, t2: int, t3: int) -> ClockSample | None:
        """Add one exchange; returns its sample, or None if it is impossible
        (negative delay: the timestamps were not taken as documented)."""
        offset, delay = offset_and_delay(t0, t1, t2, t3)
        if delay < 0 or t3 < t0 or t2 < t1:
            self.rejected += 1
            return None
        sample = ClockSample(offset_ns=offset, delay_ns=delay, local_ns=t3)
        self.add_sample(sample)
        return sample

    def add_sample(self, sample: ClockSample) -> None:
        self._samples.append(sample)
        newest = sample.local_ns
        while self._samples and newest - self._samples[0].local_ns > self.max_age_ns:
            self._samples.popleft()

    @property
    def best(self) -> ClockSample | None:
        """The kept sample with the smallest delay (the latest among ties)."""
        best = None
        for s in self._samples:
            if best is None or s.delay_ns <= best.delay_ns:
                best = s
        return best

    @property
    def offset_ns(self) -> int | None:
        """Remote clock minus local clock, or None before the first sample."""
        best = self.best
        return None if best is None else best.offset_ns

    @property
    def uncertainty_ns(self) -> int | None:
        """Bound on the offset error: half the best sample's delay."""
        best = self.best
        return None if best is None else best.delay_ns // 2

    def __len__(self) -> int:
        return len(self._samples)

    def to_local(self, remote_ns: int) -> int:
        """A remote (sender) timestamp on the local (receiver) clock; 0 offset before any sample."""
        return remote_ns - (self.offset_ns or 0)

    def to_remote(self, local_ns: int) -> int:
        return local_ns + (self.offset_ns or 0)


class ClockServer(SocketOwner):
    """The sender's side of the clock exchange: a ROUTER that stamps and answers requests.

    Either call :meth:`serve_pending` from the sender's loop, or :meth:`start`
    a background thread that answers promptly (better: a request waiting in
    the queue inflates that sample's delay). With CURVE the sender is the
    client role here too (the receiver holds the allowlist).
    """

    def __init__(
        self,
        endpoint: str,
        *,
        bind: bool = True,
        curve: CurveConfig | None = None,
        options: SocketOptions = SocketOptions(),
        context: zmq.Context | None = None,
        clock: Clock = now_ns,
    ) -> None:
        if curve is not None and curve.is_server:
            raise ValueError("the clock server runs on the sender, which is the CURVE client")
        self.clock = clock
        self.served = 0
        self.clients_seen = 0
        """Distinct clock clients (receivers) that asked so far: a sender sends an intra frame of its coded
        stream when this grows, so a receiver that just joined decodes at once (``docs/protocol.md`` 3.7)."""
        self.intra_requests = 0
        """Clock requests that asked for an intra frame (key ``i``): the sender makes its next frame intra when
        this grows (``docs/protocol.md`` 8.2)."""
        self._identities: set[bytes] = set()
        self.bad: Counter[str] = Counter()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        super().__init__(zmq.ROUTER, endpoint, bind=bind, curve=curve, options=options, max_msg_size=1024, context=context)

    def serve_pending(self, timeout_ms: int = 0) -> int:
        """Answer every queued request, waiting up to ``timeout_ms`` for the first; returns how many."""
        sock = self.socket
        if timeout_ms and not sock.poll(timeout_ms, zmq.POLLIN):  # type: ignore[union-attr]
            return 0
        answered = 0
        for _ in range(self.options.max_drain):
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK)  # type: ignore[union-attr]
            except zmq.Again:
                break
            t1 = self.clock()
            if len(parts) != 2:
                self._bad("schema", f"{len(parts) - 1} frames, expected 1")
                continue
            identity, data = parts
            try:
                req = decode_clock_request(data)
            except WireError as err:
                self._bad(err.kind, err.detail)
                continue
            if identity not in self._identities:
                if len(self._identities) >= 256:  # bounded: a churn of clients only re-counts old ones
                    self._identities.clear()
                self._identities.add(identity)
                self.clients_seen += 1
            if req.intra:
                self.intra_requests += 1
            reply = ClockReply(request_id=req.request_id, t0_ns=req.t0_ns, t1_ns=t1, t2_ns=self.clock())
            sock.send_multipart([identity, encode_clock_reply(reply)], zmq.NOBLOCK)  # type: ignore[union-attr]
            answered += 1
        self.served += answered
        return answered

    def _bad(self, kind: str, detail: str) -> None:
        if kind not in self.bad:
            log.warning("clock server: dropping bad request (%s): %s", kind, detail)
        self.bad[kind] += 1

    def start(self) -> None:
        """Answer requests on a background thread until :meth:`close`; the
        thread then owns the socket (do not call :meth:`serve_pending`)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="avcall-clock-server", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.serve_pending(timeout_ms=50)
            except zmq.ZMQError as exc:  # pragma: no cover - only on teardown races
                log.debug("clock server thread stopping: %s", exc)
                return

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        super().close()


class ClockClient(SocketOwner):
    """The receiver's side of the clock exchange: a DEALER that asks and estimates.

    Call :meth:`tick` once per render frame: it sends a request every
    ``interval_s`` and folds in any replies, never blocking. With CURVE the
    receiver is the server role (it checks the sender's key).
    """

    MAX_OUTSTANDING = 16

    def __init__(
        self,
        endpoint: str,
        *,
        bind: bool = False,
        curve: CurveConfig | None = None,
        options: SocketOptions = SocketOptions(),
        context: zmq.Context | None = None,
        clock: Clock = now_ns,
        window: int = 32,
        interval_s: float = 1.0,
    ) -> None:
        if curve is not None and not curve.is_server:
            raise ValueError("the clock client runs on the receiver, which is the CURVE server")
        self.clock = clock
        self.estimator = OffsetEstimator(window=window)
        self.interval_ns = int(interval_s * 1e9)
        self.bad: Counter[str] = Counter()
        self.unanswered = 0
        self._ids = itertools.count(1)
        self._outstanding: dict[int, int] = {}  # request id -> t0
        self._last_request_ns: int | None = None
        super().__init__(zmq.DEALER, endpoint, bind=bind, curve=curve, options=options, max_msg_size=1024, context=context)

    def _configure(self, sock: zmq.Socket) -> None:
        sock.setsockopt(zmq.IMMEDIATE, 1)  # no queueing for peers not yet connected

    def request(self, intra: bool = False) -> bool:
        """Send one request now (``intra``: also ask for an intra frame); False if no server is connected
        (nothing queued)."""
        request_id = next(self._ids)
        t0 = self.clock()
        try:
            self.socket.send(encode_clock_request(ClockRequest(request_id, t0, intra=intra)), zmq.NOBLOCK)  # type: ignore[union-attr]
        except zmq.Again:
            return False
        self._last_request_ns = t0
        self._outstanding[request_id] = t0
        while len(self._outstanding) > self.MAX_OUTSTANDING:
            self._outstanding.pop(next(iter(self._outstanding)))
            self.unanswered += 1
        return True

    def poll(self, timeout_ms: int = 0) -> list[ClockSample]:
        """Fold in replies, waiting up to ``timeout_ms`` for the first; returns the new samples."""
        sock = self.socket
        samples: list[ClockSample] = []
        if timeout_ms and not sock.poll(timeout_ms, zmq.POLLIN):  # type: ignore[union-attr]
            return samples
        for _ in range(self.options.max_drain):
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK)  # type: ignore[union-attr]
            except zmq.Again:
                break
            t3 = self.clock()
            if len(parts) != 1:
                self._bad("schema", f"{len(parts)} frames, expected 1")
                continue
            try:
                rep = decode_clock_reply(parts[0])
            except WireError as err:
                self._bad(err.kind, err.detail)
                continue
            t0 = self._outstanding.pop(rep.request_id, None)
            if t0 is None or t0 != rep.t0_ns:
                self._bad("schema", f"reply to unknown request {rep.request_id}")
                continue
            sample = self.estimator.add(t0, rep.t1_ns, rep.t2_ns, t3)
            if sample is not None:
                samples.append(sample)
        return samples

    def tick(self) -> None:
        """Non-blocking: request if ``interval_s`` has passed, then fold in replies."""
        now = self.clock()
        if self._last_request_ns is None or now - self._last_request_ns >= self.interval_ns:
            self.request()
        self.poll(0)

    def exchange(self, timeout_ms: int = 1000) -> ClockSample | None:
        """One request and its reply, waiting up to ``timeout_ms`` in all
        (including for a connection to the server); None on timeout."""
        deadline = time.monotonic() + timeout_ms / 1000.0
        while not self.request():
            remaining = int((deadline - time.monotonic()) * 1000)
            if remaining <= 0 or not self.socket.poll(remaining, zmq.POLLOUT):  # type: ignore[union-attr]
                return None
        while True:
            remaining = int((deadline - time.monotonic()) * 1000)
            if remaining <= 0:
                return None
            got = self.poll(remaining)
            if got:
                return got[-1]

    def _bad(self, kind: str, detail: str) -> None:
        if kind not in self.bad:
            log.warning("clock client: dropping bad reply (%s): %s", kind, detail)
        self.bad[kind] += 1

    @property
    def offset_ns(self) -> int | None:
        """Sender clock minus receiver clock, or None before the first reply."""
        return self.estimator.offset_ns
