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
  must know the receiver's public key;
* every endpoint is validated by :func:`transport.endpoints.parse_endpoint`
  first, and a failing bind/connect raises :class:`EndpointError` (a
  ``ValueError``) naming the endpoint, never a bare ``ZMQError``;
* a socket monitor tells whether a peer is connected (:attr:`SocketOwner.peers`,
  handshake done) and, in words, why the last one was refused
  (:attr:`SocketOwner.last_refusal`).
"""
from __future__ import annotations

from avcore.errors import UsageError

import errno
import logging
import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from .endpoints import EndpointError, parse_endpoint
from .stats import SendStats, StreamStats
from .latent_codec import CodecError, CodecTables, ReorderingDecoder
from .wire import CodedFrame, FrameMessage, WireError, WireLimits, decode_message, encode_frame

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


class KeyPairError(UsageError):
    """A key pair that cannot be written (bad name, or it would replace existing keys)."""


UNNAMED_MODEL = "unknown"
"""How ``stats.last_model_mismatch`` starts when the refused coded frame was a predicted one, which carries no
model id (only intra frames name their model)."""

_KEY_NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")


def check_key_name(name: object) -> str:
    """``name`` if it is a valid key pair name, else :class:`KeyPairError`.

    Names are 1-64 characters of ``[A-Za-z0-9._-]`` not starting with ``.``:
    a plain file name, never a path, never hidden.
    """
    if not isinstance(name, str) or not _KEY_NAME_RE.fullmatch(name):
        raise KeyPairError(
            f"bad key name {name!r}: use 1-64 characters of A-Z a-z 0-9 . _ - not starting with '.' "
            "(a plain name like alice, no path separators)"
        )
    return name


def generate_keypair(directory: str | Path, name: str, *, force: bool = False) -> tuple[Path, Path]:
    """Write a new CURVE key pair as ``name.key`` (public) and ``name.key_secret``.

    The secret file is created readable by its owner only (mode 0600 from the
    start). Returns ``(public_file, secret_file)``. Give the public file to the
    other side: a receiver puts senders' public files into its allowed-clients
    directory, a sender needs the receiver's public file.

    Refuses (:class:`KeyPairError`) to replace an existing ``name.key`` or
    ``name.key_secret`` unless ``force``: a new key pair locks this side out of
    every allowlist that holds the old public key, and ``name.key`` in an
    allowlist directory may be somebody else's public key.
    """
    check_key_name(name)
    if not zmq.has("curve"):
        raise RuntimeError("this libzmq was built without CURVE support")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise KeyPairError(f"{directory} exists and is not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    public_file, secret_file = directory / f"{name}.key", directory / f"{name}.key_secret"
    existing = [p for p in (public_file, secret_file) if p.exists() or p.is_symlink()]
    if existing and not force:
        raise KeyPairError(
            f"{' and '.join(str(p) for p in existing)} already exist{'s' if len(existing) == 1 else ''}; a new key pair "
            "would lock this side out of every allowlist holding the old public key (pass --force to replace it, "
            "or choose another --name)"
        )
    for p in existing:
        p.unlink()
    # Create the secret file 0600 before anything is written into it (O_EXCL: never through a planted symlink).
    try:
        os.close(os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        raise KeyPairError(f"{secret_file} appeared while writing the key pair; try again") from None
    try:
        written = zmq.auth.create_certificates(directory, name)
    except BaseException:
        secret_file.unlink(missing_ok=True)
        raise
    public_out, secret_out = (Path(p) for p in written)
    secret_out.chmod(0o600)
    return public_out, secret_out


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
    zmq.EVENT_CONNECT_RETRIED: "connect_retried",
    zmq.EVENT_HANDSHAKE_SUCCEEDED: "handshake_succeeded",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "handshake_failed_auth",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "handshake_failed_protocol",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "handshake_failed_no_detail",
}

_PROTOCOL_ERROR_NAMES = {
    int(getattr(zmq, n)): n[len("PROTOCOL_ERROR_"):] for n in dir(zmq) if n.startswith("PROTOCOL_ERROR_")
}


def refusal_sentence(event: str, value: int, curve_role: str | None) -> str:
    """A one-line human explanation of a failed handshake.

    ``event`` is a ``handshake_failed_*`` name, ``value`` the monitor event's
    value (ZAP status code, ZMTP protocol error code or errno), ``curve_role``
    ``"client"`` (the sender), ``"server"`` (the receiver) or None (no CURVE).
    """
    if event == "handshake_failed_auth":
        code = "" if value == 400 else f" (ZAP status {value})"
        if curve_role == "client":
            return f"the receiver refused this sender's key (not in its --allow directory){code}"
        return f"refused a sender whose public key is not in the --allow directory{code}"
    if event == "handshake_failed_protocol":
        if value == zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
            if curve_role == "server":
                return ("CURVE handshake failed: server key does not match (a sender was given a different "
                        "public key for this receiver)")
            return "CURVE handshake failed: server key does not match (check the receiver public key given to this sender)"
        if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
            if curve_role is None:
                return "security mismatch: the peer uses CURVE (--secure) but this side does not"
            return "security mismatch: this side uses CURVE (--secure) but the peer does not"
        name = _PROTOCOL_ERROR_NAMES.get(value, f"{value:#x}")
        return f"handshake failed: ZeroMQ protocol error {name} (not an avcall peer, or another protocol version)"
    # handshake_failed_no_detail: the peer closed the connection during the handshake
    if curve_role == "client":
        return ("CURVE handshake failed: server key does not match (the receiver dropped the handshake; check the "
                "receiver public key given to this sender, and that the receiver uses --secure)")
    if curve_role == "server":
        return "a peer dropped the connection during the CURVE handshake (a sender without --secure?)"
    return "the peer dropped the connection during the handshake (does it use --secure while this side does not?)"


def _bind_error(endpoint: str, exc: zmq.ZMQError) -> str:
    why = {
        errno.EADDRINUSE: "address in use (another program is already bound to it; pick another port or stop that program)",
        errno.EADDRNOTAVAIL: "address not available (it is not an address of this machine)",
        errno.ENODEV: "no such interface or address on this machine",
        errno.EACCES: "permission denied (ports below 1024 need privileges; or the ipc path is not writable)",
        errno.ENOENT: "no such directory for the ipc path",
    }.get(exc.errno)
    if why is None:
        why = (exc.strerror or str(exc)).split(" (addr=")[0].rstrip(".")
    return f"cannot bind {endpoint}: {why}"


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
        parsed = parse_endpoint(endpoint, bind)  # EndpointError before any resource exists
        self.options = options
        self._auth: ThreadAuthenticator | None = None
        self._monitor: zmq.Socket | None = None
        self.curve_role: str | None = None if curve is None else ("server" if curve.is_server else "client")
        """``"client"`` (sender), ``"server"`` (receiver) or None (no CURVE)."""
        self._peers = 0  # connections whose handshake succeeded and that have not disconnected
        self._failed_open = 0  # connections whose handshake failed and whose "disconnected" is still to come
        self._connect_retries = 0
        self._last_refusal: str | None = None
        self.refusals: Counter[str] = Counter()
        """Failed handshakes so far by sentence (:func:`refusal_sentence`); at most 16 distinct sentences."""
        self.endpoint = endpoint
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
            if parsed.is_ipv6:
                sock.setsockopt(zmq.IPV6, 1)
            if curve is not None:
                self._apply_curve(sock, curve)
            if monitor:
                events = 0
                for e in _MONITORED:
                    events |= e
                self._monitor = sock.get_monitor_socket(events)
            self._configure(sock)
            if bind:
                try:
                    sock.bind(endpoint)
                except zmq.ZMQError as exc:
                    raise EndpointError(_bind_error(endpoint, exc)) from None
                self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            else:
                try:
                    sock.connect(endpoint)
                except zmq.ZMQError as exc:
                    raise EndpointError(f"cannot connect to {endpoint}: {exc.strerror or exc}") from None
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
        """Socket events since the last call (non-blocking), by name.

        Also updates :attr:`peers` and :attr:`last_refusal`, and counts the
        events in ``self.stats.events`` where the socket has stats."""
        names: list[str] = []
        if self._monitor is None:
            return names
        stats: SendStats | StreamStats | None = getattr(self, "stats", None)
        while True:
            try:
                event = recv_monitor_message(self._monitor, zmq.NOBLOCK)
            except (zmq.Again, zmq.ContextTerminated):
                return names
            except zmq.ZMQError:  # monitor closed under us (teardown)
                return names
            name = _MONITORED.get(event["event"])
            if name is None:
                continue
            self._track(name, int(event["value"]))
            if stats is not None:
                stats.record_event(name)
            names.append(name)

    def _track(self, name: str, value: int) -> None:
        if name == "handshake_succeeded":
            self._peers += 1
            self._connect_retries = 0
        elif name.startswith("handshake_failed"):
            self._failed_open += 1
            sentence = refusal_sentence(name, value, self.curve_role)
            self._last_refusal = sentence
            if sentence in self.refusals or len(self.refusals) < 16:
                if sentence not in self.refusals:
                    log.warning("%s on %s: %s; further failures are counted", type(self).__name__, self.endpoint, sentence)
                self.refusals[sentence] += 1
        elif name == "disconnected":
            # Events carry no connection id; a failed connection always disconnects right after its failure,
            # so a disconnect is charged to a pending failure first. Interleavings only delay the count.
            if self._failed_open:
                self._failed_open -= 1
            elif self._peers:
                self._peers -= 1
        elif name == "connected":
            self._connect_retries = 0
        elif name == "connect_retried":
            self._connect_retries += 1

    # Every connection emits one handshake outcome (succeeded or failed_*) before
    # its "disconnected" (libzmq 4.3 stream engine); see _track.
    @property
    def peers(self) -> int:
        """Peers connected right now with the handshake (CURVE or plain) done.

        Reads pending socket events first. A PUB with ``peers == 0`` is talking
        to nobody; see :attr:`last_refusal` for why. Needs the monitor (the
        default); without it, always 0."""
        self.poll_events()
        return self._peers

    @property
    def last_refusal(self) -> str | None:
        """One sentence on the most recent failed handshake, e.g. "the receiver
        refused this sender's key (not in its --allow directory)"; None if none yet."""
        self.poll_events()
        return self._last_refusal

    def connection_status(self) -> str:
        """One sentence for humans on where this socket stands now."""
        peers = self.peers
        if peers:
            return f"{peers} peer{'s' if peers != 1 else ''} connected on {self.endpoint}"
        if self._last_refusal is not None:
            return f"no peer connected on {self.endpoint}: {self._last_refusal}"
        if self._connect_retries:
            return f"no peer connected: nobody is accepting connections at {self.endpoint} yet (retrying)"
        return f"no peer connected on {self.endpoint} yet"

    def wait_events(self, timeout_ms: int) -> list[str]:
        """Like :meth:`poll_events`, but wait up to ``timeout_ms`` for the first event."""
        names = self.poll_events()
        if not names and self._monitor is not None and self._monitor.poll(max(0, timeout_ms), zmq.POLLIN):
            names = self.poll_events()
        return names

    def wait_for_peer(self, timeout_ms: int) -> bool:
        """Wait up to ``timeout_ms`` until :attr:`peers` > 0; True if there is one."""
        deadline = time.monotonic() + timeout_ms / 1000.0
        while True:
            if self.peers > 0:
                return True
            remaining = int((deadline - time.monotonic()) * 1000)
            if remaining <= 0 or self._monitor is None:
                return False
            self.wait_events(remaining)

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
        self.poll_events()
        self.socket.send(data, zmq.NOBLOCK)  # type: ignore[union-attr]
        self.stats.record_sent(len(data))


class FrameSubscriber(SocketOwner):
    """Receiver side: SUB socket with latest-frame-wins delivery.

    Every message is validated with :func:`transport.wire.decode_message` under
    ``limits``; bad ones are counted in :attr:`stats` by kind and dropped. Coded
    frames (``docs/protocol.md`` 3.7) are decoded by one
    :class:`transport.latent_codec.LatentStreamDecoder` per stream with the codec
    tables in ``codecs`` (by codec id), so callers always get a
    :class:`FrameMessage` with a float32 ``z`` and gaze. Beyond the decoder's kinds
    (``transport.wire.RECEIVER_CHECK_KINDS``):

    * a coded frame the stream's decoder cannot use: ``"no_reference"`` (a
      predicted frame whose reference this receiver does not hold: it joined late
      or lost a frame; until the next intra frame), ``"codec"`` (a payload that
      does not decode or fails its check), ``"model_mismatch"`` (an intra frame
      coded with tables this receiver does not have);

    * a multipart ZeroMQ message is dropped whole, kind ``"multipart"``;
    * if ``stream_id`` is given, valid frames of other streams are ``"stream"``;
    * if ``expected_model`` is given, a frame of a stream whose last declared
      model id (``FrameMessage.model``; senders declare it on their first frame
      and then about once a second) is another model is ``"model_mismatch"``,
      and that id is kept in ``stats.last_model_mismatch``; frames of a stream
      that never declared a model are accepted;
    * once :attr:`clock_offset_ns` is known (set it from the clock exchange),
      a frame whose capture time on this host's clock is more than
      ``limits.max_future_s`` ahead of now or ``limits.max_past_s`` behind
      is ``"timestamp_range"``.

    Frames rejected by these checks never reach the sequence statistics.
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
        expected_model: str | None = None,
        clock_offset_ns: int | None = None,
        codecs: dict[str, CodecTables] | None = None,
        bridge: int = 0,
    ) -> None:
        if curve is not None and not curve.is_server:
            raise ValueError("the frame subscriber (receiver) is the CURVE server: give it an allowed-clients directory")
        if options.max_msg_size < limits.max_bytes:
            raise ValueError("SocketOptions.max_msg_size must be >= WireLimits.max_bytes")
        self.limits = limits
        self.expected_stream = stream_id
        self.expected_model = expected_model
        """Model id this receiver decodes with; None accepts any."""
        self.clock_offset_ns = clock_offset_ns
        """Sender clock minus receiver clock (``ClockClient.offset_ns``); None
        (unknown) skips the capture-time window check. Set it whenever the
        clock exchange has a new estimate."""
        self.stats = StreamStats()
        self._models: dict[str, str] = {}  # stream id -> model id it last declared
        self.codecs: dict[str, CodecTables] = dict(codecs or {})
        """Codec tables this receiver decodes coded frames with, by codec id."""
        self.bridge = int(bridge)
        """Lost reference frames a coded frame may be decoded across (:class:`LatentStreamDecoder`; 0: strict)."""
        self.needs_intra = False
        """Set when a coded frame could not be decoded for want of its reference (a frame was lost, or joined
        mid-stream) or was decoded across a lost one: the owner may ask the sender for an intra frame
        (``docs/protocol.md`` 8.2) and clear it."""
        self._decoders: dict[str, ReorderingDecoder] = {}  # stream id -> its coded-stream state
        self.reorder_deadline: Callable[[int], int] | None = None
        """Until when a coded frame waits for a reference that has not arrived (:meth:`set_reorder_deadline`)."""
        super().__init__(
            zmq.SUB, endpoint, bind=bind, curve=curve, options=options, max_msg_size=options.max_msg_size, context=context
        )

    def _configure(self, sock: zmq.Socket) -> None:
        sock.setsockopt(zmq.SUBSCRIBE, b"")  # stream ids live in the body, not a topic prefix

    def declared_model(self, stream_id: str) -> str | None:
        """The model id ``stream_id`` last declared (key ``m``), or None if it never did."""
        return self._models.get(stream_id)

    def set_clock_offset(self, offset_ns: int | None) -> None:
        """Sender clock minus receiver clock, or None when unknown (see :attr:`clock_offset_ns`)."""
        self.clock_offset_ns = None if offset_ns is None else int(offset_ns)

    def set_reorder_deadline(self, deadline: Callable[[int], int] | None) -> None:
        """Let a coded frame whose reference has not arrived yet wait for it until ``deadline(capture time on the
        sender's clock)`` (this host's monotonic ns): a receiver with a jitter buffer passes the frame's slot
        (:class:`transport.latent_codec.ReorderingDecoder`). None: every frame is decided on arrival."""
        self.reorder_deadline = deadline
        for dec in self._decoders.values():
            dec.deadline = deadline

    def _take(self, data: bytes, now_ns: int) -> list[FrameMessage]:
        """One message off the socket -> the valid frames it makes available (a coded frame may wait for its
        reference, or release frames that waited for it), each counted."""
        self.stats.record_message(len(data), now_ns)
        try:
            frame = decode_message(data, self.limits)
        except WireError as err:
            self.stats.record_bad(err.kind, err.detail)
            return []
        if self.expected_stream is not None and frame.stream_id != self.expected_stream:
            self.stats.record_bad("stream", f"frame of stream {frame.stream_id!r}")
            return []
        if isinstance(frame, CodedFrame):
            return self._coded_results(frame, self._decoder(frame.stream_id).push(frame, now_ns, len(data)), now_ns)
        out = self._accept(frame, len(data), now_ns, 0)
        return [] if out is None else [out]

    def _accept(self, frame: FrameMessage, nbytes: int, now_ns: int, skipped: int) -> FrameMessage | None:
        """The checks beyond the message (model, capture-time window) and the stream statistics."""
        if frame.model is not None and (frame.stream_id in self._models or len(self._models) < StreamStats.MAX_STREAMS):
            self._models[frame.stream_id] = frame.model
        if self.expected_model is not None:
            declared = frame.model if frame.model is not None else self._models.get(frame.stream_id)
            if declared is not None and declared != self.expected_model:
                self.stats.last_model_mismatch = declared
                self.stats.record_bad(
                    "model_mismatch", f"the sender's code is for model {declared!r}, this receiver decodes {self.expected_model!r}"
                )
                return None
        offset = self.clock_offset_ns
        if offset is not None:
            ahead_ns = (frame.capture_ts_ns - offset) - now_ns  # capture time on our clock, relative to now
            if ahead_ns > self.limits.max_future_s * 1e9 or -ahead_ns > self.limits.max_past_s * 1e9:
                self.stats.record_bad(
                    "timestamp_range",
                    f"capture time {ahead_ns / 1e9:+.3f} s from now on this host's clock "
                    f"(window -{self.limits.max_past_s:g} s .. +{self.limits.max_future_s:g} s)",
                )
                return None
        self.stats.record_frame(frame.stream_id, frame.seq, nbytes, now_ns, skipped=skipped, capture_ns=frame.capture_ts_ns)
        return frame

    def _decoder(self, stream_id: str) -> ReorderingDecoder:
        dec = self._decoders.get(stream_id)
        if dec is None:
            if len(self._decoders) >= StreamStats.MAX_STREAMS:  # bounded: a hostile peer cannot grow this
                self._decoders.pop(next(iter(self._decoders)))
            dec = self._decoders[stream_id] = ReorderingDecoder(self.codecs, self.limits, bridge=self.bridge)
            dec.deadline = self.reorder_deadline
        return dec

    def _coded_results(self, cf: CodedFrame | None, results: list, now_ns: int) -> list[FrameMessage]:
        """Count what a stream's decoder returned (errors as bad messages); the valid frames, accepted."""
        out = []
        for nbytes, res, skipped in results:
            if isinstance(res, CodecError):
                if res.kind != "model_mismatch":
                    self.needs_intra = True  # undecodable until the next intra frame: the receiver may ask for one
                elif cf is not None and (cf.model or self.stats.last_model_mismatch is None):
                    # Only intra frames name their model: a predicted frame never hides a name already known.
                    self.stats.last_model_mismatch = (f"{cf.model or UNNAMED_MODEL} coded with codec tables {cf.codec_id} "
                                                      "(not installed here; --codec DIR)")
                self.stats.record_bad(res.kind, res.detail)
            elif isinstance(res, WireError):
                self.stats.record_bad(res.kind, res.detail)
            else:
                if res.approximate:
                    self.needs_intra = True
                    self.stats.record_event("bridged")
                f = self._accept(res, nbytes, now_ns, skipped)
                if f is not None:
                    out.append(f)
        return out

    def next_held_ns(self) -> int | None:
        """When the next coded frame waiting for its reference must be decided (None: none waits)."""
        dues = [d for d in (dec.next_due_ns() for dec in self._decoders.values()) if d is not None]
        return min(dues, default=None)

    def _expired(self, now_ns: int) -> list[FrameMessage]:
        """Held coded frames whose wait ran out, decoded (across the gap) or counted."""
        out: list[FrameMessage] = []
        for dec in list(self._decoders.values()):
            out += self._coded_results(None, dec.expire(now_ns), now_ns)
        return out

    def _take_multipart_rest(self, first: bytes, now_ns: int) -> None:
        """Drop a multipart message whole (its first part is ``first``): one "multipart" bad message."""
        sock = self.socket
        nbytes, parts = len(first), 1
        while sock.getsockopt(zmq.RCVMORE):  # type: ignore[union-attr]
            nbytes += len(sock.recv(zmq.NOBLOCK))  # type: ignore[union-attr]  # later parts arrive with the first
            parts += 1
        self.stats.record_message(nbytes, now_ns)
        self.stats.record_bad("multipart", f"{parts} ZeroMQ frames in one message, expected 1")

    def _drain(self, collect: list[FrameMessage] | None = None) -> FrameMessage | None:
        """Take up to ``max_drain`` queued messages; return the newest valid frame (with ``collect``: append
        every valid frame to it, in arrival order, none counted stale)."""
        latest: FrameMessage | None = None
        sock = self.socket

        def take(frames: list[FrameMessage]) -> None:
            nonlocal latest
            for frame in frames:
                if collect is not None:
                    collect.append(frame)
                elif latest is not None:
                    self.stats.dropped_stale += 1
                latest = frame

        take(self._expired(time.monotonic_ns()))
        for _ in range(self.options.max_drain):
            try:
                data = sock.recv(zmq.NOBLOCK)  # type: ignore[union-attr]
            except zmq.Again:
                break
            if sock.getsockopt(zmq.RCVMORE):  # type: ignore[union-attr]
                self._take_multipart_rest(data, time.monotonic_ns())
                continue
            take(self._take(data, time.monotonic_ns()))
        return latest

    def recv_latest(self, timeout_ms: int | None = 0) -> FrameMessage | None:
        """The newest valid frame queued now, waiting up to ``timeout_ms`` for one.

        Drains the socket; older valid frames are counted in
        ``stats.dropped_stale``, invalid ones in ``stats.bad``. ``0`` never
        blocks; ``None`` waits until a valid frame arrives. Returns None on
        timeout.
        """
        self.poll_events()
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
                self.poll_events()
                return None

    def recv_all(self, timeout_ms: int | None = 0) -> list[FrameMessage]:
        """Every valid frame queued now, in arrival order (a jitter buffer's input: none is dropped as
        stale), waiting up to ``timeout_ms`` for the first; ``[]`` on timeout. Bad messages are counted
        as in :meth:`recv_latest`."""
        self.poll_events()
        deadline = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000.0
        while True:
            frames: list[FrameMessage] = []
            self._drain(frames)
            if frames:
                self.stats.delivered += len(frames)
                return frames
            wait_ms = -1 if deadline is None else int(max(0.0, deadline - time.monotonic()) * 1000)
            if deadline is not None and wait_ms <= 0:
                return []
            held = self.next_held_ns()  # a coded frame waiting for its reference must be decided by then
            if held is not None:
                until = max(1, (held - time.monotonic_ns() + 999_999) // 1_000_000)
                wait_ms = until if wait_ms < 0 else min(wait_ms, until)
            if not self.socket.poll(wait_ms, zmq.POLLIN):  # type: ignore[union-attr]
                self.poll_events()
                if held is None:
                    return []
