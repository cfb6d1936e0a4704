"""ZeroMQ sockets for avcall: frame PUB/SUB with latest-frame-wins, CURVE security.

Pattern (see ``docs/protocol.md`` for the why):

* frames go PUB (sender) -> SUB (receiver), one single-frame msgpack message
  per video frame; either side may bind, the other connects;
* LINGER=0 everywhere, small high-water marks, ZMQ_MAXMSGSIZE, reconnect
  intervals and ZMTP heartbeats, so a restarted or vanished peer is noticed
  and reconnected;
* the receiver does *not* use ZMQ_CONFLATE: :meth:`FrameSubscriber.recv_latest`
  drains everything queued, validates every message (so every bad one is
  counted and the sequence numbers measure loss) and returns the newest valid
  frame, counting the others as stale;
* with CURVE, the *receiver* is always the CURVE server, whichever side binds:
  it holds the allowlist of sender public keys, checked by a ZAP handler
  before a single message is accepted. The sender is the CURVE client and
  must know the receiver's public key.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from .stats import SendStats, StreamStats
from .wire import FrameMessage, WireError, WireLimits, decode_frame, encode_frame

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class SocketOptions:
    """ZeroMQ options shared by avcall sockets. LINGER is always 0 (not an option)."""

    sndhwm: int = 8
    """Messages a PUB queues per subscriber before it drops new ones (~0.27 s at
    30 fps). Small, so a stalled link cannot build seconds of backlog."""
    rcvhwm: int = 8
    """Messages a SUB queues before TCP back-pressure stops reading."""
    max_msg_size: int = 262144
    """ZMQ_MAXMSGSIZE for frame subscribers: a peer sending a larger message is
    disconnected by libzmq before the message is buffered. It must be at least
    ``WireLimits.max_bytes``; messages between the two reach the decoder and
    are counted as "oversize"."""
    reconnect_ivl_ms: int = 100
    """First reconnect attempt after a peer goes away (connecting side)."""
    reconnect_ivl_max_ms: int = 2000
    """Reconnect back-off ceiling."""
    heartbeat_ivl_ms: int = 1000
    """ZMTP PING interval; detects a peer that vanished without closing TCP."""
    heartbeat_timeout_ms: int = 3000
    """Connection dropped (and re-dialled) when no traffic for this long after a PING."""
    heartbeat_ttl_ms: int = 3000
    """Tells the peer to drop us after this long without traffic."""
    max_drain: int = 1024
    """Most messages one ``recv_latest`` call takes off the socket, so a flood
    cannot keep the render loop inside the call."""


@dataclass(frozen=True)
class CurveConfig:
    """CurveZMQ keys for one socket. Exactly one of the two role fields is set.

    Key files are ZeroMQ certificate files as written by :func:`generate_keypair`
    (``zmq.auth`` / czmq ``zcert`` format).
    """

    secret_key_file: Path
    """This side's ``*.key_secret`` certificate (holds its public and secret key)."""
    server_public_key_file: Path | None = None
    """Client role (the sender): the receiver's public ``*.key`` certificate."""
    allowed_clients_dir: Path | None = None
    """Server role (the receiver): a directory whose ``*.key`` files are the
    public keys of the senders allowed to connect. Anyone else fails the
    handshake; none of their messages ever reaches the decoder."""

    def __post_init__(self) -> None:
        if (self.server_public_key_file is None) == (self.allowed_clients_dir is None):
            raise ValueError("CurveConfig needs exactly one of server_public_key_file (client) or allowed_clients_dir (server)")

    @property
    def is_server(self) -> bool:
        return self.allowed_clients_dir is not None

    @classmethod
    def server(cls, secret_key_file: str | Path, allowed_clients_dir: str | Path) -> "CurveConfig":
        return cls(secret_key_file=Path(secret_key_file), allowed_clients_dir=Path(allowed_clients_dir))

    @classmethod
    def client(cls, secret_key_file: str | Path, server_public_key_file: str | Path) -> "CurveConfig":
        return cls(secret_key_file=Path(secret_key_file), server_public_key_file=Path(server_public_key_file))


def generate_keypair(directory: str | Path, name: str) -> tuple[Path, Path]:
    """Write a new CURVE key pair as ``name.key`` (public) and ``name.key_secret``.

    The secret file is made readable by its owner only. Returns
    ``(public_file, secret_file)``. Give the public file to the other side:
    a receiver puts senders' public files into its allowed-clients directory,
    a sender needs the receiver's public file.
    """
    if not zmq.has("curve"):
        raise RuntimeError("this libzmq was built without CURVE support")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    public_file, secret_file = (Path(p) for p in zmq.auth.create_certificates(directory, name))
    secret_file.chmod(0o600)
    return public_file, secret_file


def _load_secret(path: Path) -> tuple[bytes, bytes]:
    public, secret = zmq.auth.load_certificate(path)
    if not secret:
        raise ValueError(f"{path} holds no secret key (pass the *.key_secret file)")
    return public, secret


# --------------------------------------------------------------------------- socket ownership

_MONITORED = {
    zmq.EVENT_CONNECTED: "connected",
    zmq.EVENT_ACCEPTED: "accepted",
    zmq.EVENT_DISCONNECTED: "disconnected",
    zmq.EVENT_HANDSHAKE_SUCCEEDED: "handshake_succeeded",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "handshake_failed_auth",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "handshake_failed_protocol",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "handshake_failed_no_detail",
}


class SocketOwner:
    """Owns one zmq socket (and, when needed, its context and ZAP authenticator).

    A CURVE *server* always gets a private context: the ZAP handler is per
    context, and a server socket in a context without one would accept every
    client. Otherwise the caller may share a context (``context=``); when none
    is given the owner makes and terminates its own.
    """

    def __init__(
        self,
        socket_type: int,
        endpoint: str,
        *,
        bind: bool,
        curve: CurveConfig | None,
        options: SocketOptions,
        max_msg_size: int,
        context: zmq.Context | None = None,
        monitor: bool = True,
    ) -> None:
        self.options = options
        self._auth: ThreadAuthenticator | None = None
        self._monitor: zmq.Socket | None = None
        if curve is not None and curve.is_server and context is not None:
            raise ValueError("a CURVE server owns a private context (its ZAP allowlist is per context); pass context=None")
        self._owns_context = context is None
        self.context = zmq.Context() if context is None else context
        self.socket: zmq.Socket | None = None
        try:
            sock = self.socket = self.context.socket(socket_type)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, options.sndhwm)
            sock.setsockopt(zmq.RCVHWM, options.rcvhwm)
            sock.setsockopt(zmq.MAXMSGSIZE, max_msg_size)
            sock.setsockopt(zmq.RECONNECT_IVL, options.reconnect_ivl_ms)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, options.reconnect_ivl_max_ms)
            sock.setsockopt(zmq.HEARTBEAT_IVL, options.heartbeat_ivl_ms)
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, options.heartbeat_timeout_ms)
            sock.setsockopt(zmq.HEARTBEAT_TTL, options.heartbeat_ttl_ms)
            if curve is not None:
                self._apply_curve(sock, curve)
            if monitor:
                events = 0
                for e in _MONITORED:
                    events |= e
                self._monitor = sock.get_monitor_socket(events)
            self._configure(sock)
            if bind:
                sock.bind(endpoint)
                self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            else:
                sock.connect(endpoint)
                self.endpoint = endpoint
        except BaseException:
            self.close()
            raise

    def _apply_curve(self, sock: zmq.Socket, curve: CurveConfig) -> None:
        if not zmq.has("curve"):
            raise RuntimeError("this libzmq was built without CURVE support")
        public, secret = _load_secret(curve.secret_key_file)
        sock.curve_secretkey = secret
        sock.curve_publickey = public
        if curve.is_server:
            allowed = Path(curve.allowed_clients_dir)  # type: ignore[arg-type]
            if not allowed.is_dir():
                raise FileNotFoundError(f"allowed-clients directory {allowed} does not exist")
            self._auth = ThreadAuthenticator(self.context, log=logging.getLogger("avcall.transport.auth"))
            self._auth.start()
            self._auth.configure_curve(domain="*", location=str(allowed))
            sock.curve_server = True
        else:
            server_public, _ = zmq.auth.load_certificate(curve.server_public_key_file)  # type: ignore[arg-type]
            sock.curve_serverkey = server_public

    def _configure(self, sock: zmq.Socket) -> None:
        """Socket-type specific options, set before bind/connect."""

    def poll_events(self) -> list[str]:
        """Socket events since the last call (non-blocking), by name."""
        names: list[str] = []
        if self._monitor is None:
            return names
        while True:
            try:
                event = recv_monitor_message(self._monitor, zmq.NOBLOCK)
            except zmq.Again:
                return names
            name = _MONITORED.get(event["event"])
            if name is not None:
                names.append(name)

    def _record_events(self, stats: SendStats | StreamStats) -> None:
        """Move pending socket events into ``stats``; warn on the first failed handshake of each kind."""
        for name in self.poll_events():
            if name.startswith("handshake_failed") and not stats.events[name]:
                log.warning(
                    "%s on %s: a peer failed the security handshake (%s); further failures are counted",
                    type(self).__name__,
                    getattr(self, "endpoint", "?"),
                    name,
                )
            stats.record_event(name)

    def close(self) -> None:
        """Close the socket (LINGER=0: nothing queued is sent), the monitor,
        the authenticator, and the context if owned. Safe to call twice."""
        if self.socket is not None and self._monitor is not None:
            try:
                self.socket.disable_monitor()
            except zmq.ZMQError:
                pass
        if self._monitor is not None:
            self._monitor.close(linger=0)
            self._monitor = None
        if self.socket is not None:
            self.socket.close(linger=0)
            self.socket = None
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._owns_context and self.context is not None:
            self.context.term()
            self.context = None  # type: ignore[assignment]

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------- frames


class FramePublisher(SocketOwner):
    """Sender side: publishes :class:`FrameMessage` s on a PUB socket.

    ``endpoint`` is a ZeroMQ endpoint (``tcp://host:port``, ``ipc://path``);
    when binding, ``tcp://127.0.0.1:*`` picks a free port and :attr:`endpoint`
    tells which. PUB never blocks: with no subscriber, or a subscriber more
    than ``sndhwm`` frames behind, frames are dropped.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        bind: bool = True,
        curve: CurveConfig | None = None,
        options: SocketOptions = SocketOptions(),
        context: zmq.Context | None = None,
    ) -> None:
        if curve is not None and curve.is_server:
            raise ValueError("the frame publisher (sender) is the CURVE client: give it the receiver's public key")
        self.stats = SendStats()
        # Only subscription messages come in: a few bytes each.
        super().__init__(zmq.PUB, endpoint, bind=bind, curve=curve, options=options, max_msg_size=1024, context=context)

    def send(self, msg: FrameMessage) -> int:
        """Encode and publish one frame; returns the message size in bytes."""
        data = encode_frame(msg)
        self.send_encoded(data)
        return len(data)

    def send_encoded(self, data: bytes) -> None:
        """Publish bytes already made by :func:`encode_frame`."""
        self._record_events(self.stats)
        self.socket.send(data, zmq.NOBLOCK)  # type: ignore[union-attr]
        self.stats.record_sent(len(data))


class FrameSubscriber(SocketOwner):
    """Receiver side: SUB socket with latest-frame-wins delivery.

    Every message is validated with :func:`decode_frame` under ``limits``;
    bad ones are counted in :attr:`stats` by kind and dropped. If
    ``stream_id`` is given, valid frames of other streams are counted as bad
    kind ``"stream"``.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        bind: bool = False,
        curve: CurveConfig | None = None,
        limits: WireLimits = WireLimits(),
        options: SocketOptions = SocketOptions(),
        context: zmq.Context | None = None,
        stream_id: str | None = None,
    ) -> None:
        if curve is not None and not curve.is_server:
            raise ValueError("the frame subscriber (receiver) is the CURVE server: give it an allowed-clients directory")
        if options.max_msg_size < limits.max_bytes:
            raise ValueError("SocketOptions.max_msg_size must be >= WireLimits.max_bytes")
        self.limits = limits
        self.expected_stream = stream_id
        self.stats = StreamStats()
        super().__init__(
            zmq.SUB, endpoint, bind=bind, curve=curve, options=options, max_msg_size=options.max_msg_size, context=context
        )

    def _configure(self, sock: zmq.Socket) -> None:
        sock.setsockopt(zmq.SUBSCRIBE, b"")  # stream ids live in the body, not a topic prefix

    def _take(self, data: bytes, now_ns: int) -> FrameMessage | None:
        self.stats.record_message(len(data), now_ns)
        try:
            frame = decode_frame(data, self.limits)
        except WireError as err:
            self.stats.record_bad(err.kind, err.detail)
            return None
        if self.expected_stream is not None and frame.stream_id != self.expected_stream:
            self.stats.record_bad("stream", f"frame of stream {frame.stream_id!r}")
            return None
        self.stats.record_frame(frame.stream_id, frame.seq, len(data), now_ns)
        return frame

    def _drain(self) -> FrameMessage | None:
        """Take up to ``max_drain`` queued messages; return the newest valid frame."""
        latest: FrameMessage | None = None
        sock = self.socket
        for _ in range(self.options.max_drain):
            try:
                data = sock.recv(zmq.NOBLOCK)  # type: ignore[union-attr]
            except zmq.Again:
                break
            frame = self._take(data, time.monotonic_ns())
            if frame is not None:
                if latest is not None:
                    self.stats.dropped_stale += 1
                latest = frame
        return latest

    def recv_latest(self, timeout_ms: int | None = 0) -> FrameMessage | None:
        """The newest valid frame queued now, waiting up to ``timeout_ms`` for one.

        Drains the socket; older valid frames are counted in
        ``stats.dropped_stale``, invalid ones in ``stats.bad``. ``0`` never
        blocks; ``None`` waits until a valid frame arrives. Returns None on
        timeout.
        """
        self._record_events(self.stats)
        deadline = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000.0
        while True:
            latest = self._drain()
            if latest is not None:
                self.stats.delivered += 1
                return latest
            if deadline is None:
                wait_ms = -1
            else:
                wait_ms = int(max(0.0, deadline - time.monotonic()) * 1000)
                if wait_ms <= 0:
                    return None
            if not self.socket.poll(wait_ms, zmq.POLLIN):  # type: ignore[union-attr]
                self._record_events(self.stats)
                return None
