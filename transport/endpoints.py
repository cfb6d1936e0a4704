"""ZeroMQ endpoint strings for avcall: validated before any socket sees them.

libzmq accepts some endpoints it should not (``tcp://127.0.0.1:99999`` binds a
random port, ``tcp://nope:5555`` and ``tcp://256.1.1.1:5000`` connect "fine"
and retry forever) and rejects others with a bare ``Invalid argument``.
:func:`parse_endpoint` turns every such case into an :class:`EndpointError`
(a ``ValueError``) whose one-line message names the endpoint and says what is
wrong; :class:`transport.sockets.SocketOwner` calls it for every socket.

Accepted forms::

    tcp://HOST:PORT     HOST: an IPv4 address, [IPv6] in brackets, a host name
                        (connect only; it must resolve), an interface name such
                        as lo or eth0 (bind only), localhost, or * (bind only:
                        all interfaces). PORT: 1-65535; * or 0 (bind only)
                        picks a free port.
    ipc://PATH          a Unix socket path; ipc://* (bind only) picks one
    inproc://NAME       in-process (tests, one context)

:func:`clock_endpoint_for` derives the clock channel's endpoint from the frames
endpoint and :func:`check_clock_endpoint` refuses a clock endpoint that would
collide with the frames endpoint.
"""
from __future__ import annotations

from avcore.errors import UsageError

import ipaddress
import re
import socket
from dataclasses import dataclass

__all__ = [
    "Endpoint",
    "EndpointError",
    "check_clock_endpoint",
    "clock_endpoint_for",
    "parse_endpoint",
]

_SCHEMES = ("tcp", "ipc", "inproc")
_IPC_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252})")
_WILDCARD_HOSTS = ("*", "0.0.0.0", "::")


class EndpointError(UsageError):
    """An endpoint that avcall cannot bind or connect; the message is one line for humans."""


@dataclass(frozen=True)
class Endpoint:
    """A parsed endpoint. ``str(endpoint)`` is the string to give ZeroMQ."""

    scheme: str
    """``"tcp"``, ``"ipc"`` or ``"inproc"``."""
    host: str = ""
    """TCP only: the host as written (brackets removed from IPv6 literals)."""
    port: int | None = None
    """TCP only: the port, or None for "any free port" (``*`` or ``0``, bind only)."""
    path: str = ""
    """ipc path or inproc name (``"*"`` for an ipc wildcard)."""

    @property
    def is_ipv6(self) -> bool:
        return self.scheme == "tcp" and ":" in self.host

    @property
    def is_wildcard(self) -> bool:
        """True when binding picks the actual address (port ``*``/``0``, ``ipc://*``)."""
        if self.scheme == "tcp":
            return self.port is None
        return self.scheme == "ipc" and self.path == "*"

    def __str__(self) -> str:
        if self.scheme == "tcp":
            host = f"[{self.host}]" if self.is_ipv6 else self.host
            return f"tcp://{host}:{'*' if self.port is None else self.port}"
        return f"{self.scheme}://{self.path}"


def _split(addr: object) -> Endpoint:
    """Syntax only: no name resolution, no bind/connect rules. Port 0 becomes None (any port)."""
    if not isinstance(addr, str):
        raise EndpointError(f"endpoint must be a string like tcp://HOST:PORT, got {type(addr).__name__}")
    shown = addr if len(addr) <= 200 else addr[:200] + "..."
    if not addr or addr != addr.strip() or any(c.isspace() for c in addr):
        raise EndpointError(f"endpoint {shown!r} is empty or contains spaces; expected tcp://HOST:PORT or ipc://PATH")
    scheme, sep, rest = addr.partition("://")
    if not sep:
        raise EndpointError(f"{shown!r} is not an endpoint: expected tcp://HOST:PORT or ipc://PATH")
    if scheme not in _SCHEMES:
        raise EndpointError(f"unsupported transport {scheme + '://'!r} in {shown!r}: avcall uses tcp://HOST:PORT or ipc://PATH")
    if scheme in ("ipc", "inproc"):
        if not rest:
            raise EndpointError(f"{shown!r} has no {'path' if scheme == 'ipc' else 'name'} after {scheme}://")
        if scheme == "ipc" and len(rest.encode()) > _IPC_PATH_MAX:
            raise EndpointError(f"ipc path in {shown!r} is {len(rest.encode())} bytes; Unix sockets allow at most {_IPC_PATH_MAX}")
        return Endpoint(scheme=scheme, path=rest)
    # tcp
    if ";" in rest:
        raise EndpointError(f"{shown!r}: source-address endpoints (SRC;HOST:PORT) are not supported")
    if rest.startswith("["):
        close = rest.find("]")
        if close < 0:
            raise EndpointError(f"{shown!r}: unclosed '[' in an IPv6 address")
        host, after = rest[1:close], rest[close + 1 :]
        if not after.startswith(":"):
            raise EndpointError(f"{shown!r} has no port: expected tcp://[IPv6]:PORT")
        port_text = after[1:]
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            raise EndpointError(f"{shown!r}: {host!r} is not a valid IPv6 address") from None
    else:
        host, colon, port_text = rest.rpartition(":")
        if not colon:
            raise EndpointError(f"{shown!r} has no port: expected tcp://HOST:PORT (e.g. tcp://{rest or '127.0.0.1'}:5555)")
        if ":" in host:
            raise EndpointError(f"{shown!r}: write an IPv6 address in brackets, e.g. tcp://[::1]:5555")
        if not host:
            raise EndpointError(f"{shown!r} has no host: expected tcp://HOST:PORT")
        if re.fullmatch(r"[0-9.]+", host):
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise EndpointError(f"{shown!r}: {host!r} is not a valid IPv4 address (four numbers 0-255)") from None
        elif host != "*" and not _HOSTNAME_RE.fullmatch(host):
            raise EndpointError(f"{shown!r}: {host!r} is not a valid host name or address")
    if not port_text:
        raise EndpointError(f"{shown!r} has no port after ':': give a number 1-65535 (or * to bind any free port)")
    if port_text == "*":
        port = None
    elif port_text.isdigit() and port_text.isascii():
        port = int(port_text)
        if port > 65535:
            raise EndpointError(f"{shown!r}: port {port} is out of range (1-65535)")
        if port == 0:
            port = None
    else:
        raise EndpointError(f"{shown!r}: port {port_text!r} is not a number (1-65535, or * to bind any free port)")
    return Endpoint(scheme="tcp", host=host, port=port)


def _local_interfaces() -> set[str]:
    try:
        return {name for _, name in socket.if_nameindex()}
    except OSError:  # pragma: no cover - platforms without if_nameindex
        return set()


def parse_endpoint(addr: str, bind: bool, *, resolve: bool = True) -> Endpoint:
    """Validate ``addr`` for binding (``bind=True``) or connecting; :class:`EndpointError` if unusable.

    Binding needs ``*``, an IP address, ``localhost`` or a local interface name
    as host, and may use port ``*`` (or ``0``) for any free port. Connecting
    needs a concrete port and a host that resolves (checked with
    ``getaddrinfo`` when ``resolve``; libzmq itself would retry an unresolvable
    name forever without a word).
    """
    ep = _split(addr)
    if ep.scheme == "ipc" and ep.path == "*" and not bind:
        raise EndpointError(f"cannot connect to {addr!r}: ipc://* only makes sense when binding")
    if ep.scheme != "tcp":
        return ep
    if bind:
        if ep.host in ("*", "localhost") or ep.is_ipv6 or re.fullmatch(r"[0-9.]+", ep.host):
            return ep
        if ep.host in _local_interfaces():
            return ep
        raise EndpointError(
            f"cannot bind {addr!r}: {ep.host!r} is not an interface of this machine; bind to * (all interfaces), "
            "an IP address of this machine, localhost or an interface name"
        )
    if ep.port is None:
        raise EndpointError(f"cannot connect to {addr!r}: a connecting side needs the actual port (1-65535), not * or 0")
    if ep.host == "*":
        raise EndpointError(f"cannot connect to {addr!r}: * means 'all interfaces' and only makes sense when binding")
    if resolve and not ep.is_ipv6 and not re.fullmatch(r"[0-9.]+", ep.host):
        try:
            socket.getaddrinfo(ep.host, ep.port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            why = getattr(exc, "strerror", None) or str(exc)
            raise EndpointError(f"cannot connect to {addr!r}: host {ep.host!r} does not resolve ({why})") from None
    return ep


def clock_endpoint_for(frames_endpoint: str) -> str:
    """The clock channel's endpoint next to a frames endpoint: TCP port + 1, ``ipc://P.clock``.

    A wildcard (``tcp://H:*``, ``tcp://H:0``, ``ipc://*``) gives a wildcard: the
    binding side picks a free address for each channel and reports it; a
    connecting side must be told both endpoints. Frames port 65535 has no
    port + 1: :class:`EndpointError` asks for an explicit clock endpoint.
    """
    ep = _split(frames_endpoint)
    if ep.scheme == "ipc":
        return "ipc://*" if ep.path == "*" else f"ipc://{ep.path}.clock"
    if ep.scheme == "inproc":
        return f"inproc://{ep.path}.clock"
    host = f"[{ep.host}]" if ep.is_ipv6 else ep.host
    if ep.port is None:
        return f"tcp://{host}:*"
    if ep.port >= 65535:
        raise EndpointError(
            f"the clock channel would use port {ep.port + 1} (frames port {ep.port} + 1), which does not exist; "
            "pass the clock endpoint explicitly with --clock tcp://HOST:PORT"
        )
    return f"tcp://{host}:{ep.port + 1}"


def check_clock_endpoint(frames: str, clock: str) -> None:
    """Refuse a clock endpoint that is the frames endpoint (:class:`EndpointError`).

    Wildcards never collide (each bind picks its own free address). Two TCP
    endpoints collide when their ports are equal and their hosts are equal or
    one of them is a wildcard host (``*``, ``0.0.0.0``, ``::``).
    """
    f, c = _split(frames), _split(clock)
    if f.scheme != c.scheme or f.is_wildcard or c.is_wildcard:
        return
    if f.scheme == "tcp":
        same = f.port == c.port and (
            f.host.lower() == c.host.lower() or f.host in _WILDCARD_HOSTS or c.host in _WILDCARD_HOSTS
        )
    else:
        same = f.path == c.path
    if same:
        raise EndpointError(
            f"the clock endpoint {clock!r} is the frames endpoint {frames!r}; the clock channel needs its own "
            "(omit --clock to use the frames port + 1)"
        )
