"""The latency floor of a bare PUB -> SUB hop between two processes on this host.

:func:`measure_pubsub_floor` binds a SUB socket, starts a child process
(``python -m transport.floor ENDPOINT SECONDS FPS WARMUP_S``) that publishes
its :func:`transport.clock.now_ns` timestamp ``fps`` times a second, and
returns one latency per received message: what the machine's scheduler and
loopback cost without any avatar pipeline around them. Both processes read
the same monotonic clock, so no clock exchange is needed.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import zmq

from .clock import now_ns

_MAX_PAYLOAD = 32  # a decimal ns timestamp is at most 20 bytes


def measure_pubsub_floor(seconds: float, fps: float, *, warmup_s: float = 1.0, endpoint: str = "tcp://127.0.0.1:*") -> list[float]:
    """Per-message PUB -> SUB latencies in ms, in arrival order, over ``seconds`` at ``fps``.

    The child publishes for ``warmup_s + seconds``; the first ``round(warmup_s
    * fps)`` messages (connection set-up) are left out of the result, as the
    old ``runtime.bench.transport_floor`` did with its first second. Messages
    that are not a decimal timestamp are ignored. Raises ``ValueError`` for
    non-positive ``seconds`` or ``fps`` and ``RuntimeError`` if the child
    fails.
    """
    if not (seconds > 0 and fps > 0 and warmup_s >= 0):
        raise ValueError(f"need seconds > 0, fps > 0 and warmup_s >= 0, got {seconds}, {fps}, {warmup_s}")
    from .endpoints import parse_endpoint

    parse_endpoint(endpoint, bind=True)
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    child = None
    lat: list[float] = []
    try:
        sub.linger = 0
        sub.setsockopt(zmq.MAXMSGSIZE, _MAX_PAYLOAD)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.bind(endpoint)
        bound = sub.getsockopt_string(zmq.LAST_ENDPOINT)
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[1])  # so the child finds this transport package from any cwd
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        child = subprocess.Popen(
            [sys.executable, "-m", "transport.floor", bound, repr(float(seconds)), repr(float(fps)), repr(float(warmup_s))],
            env=env,
        )
        # Hard stop well after the child should have finished, in case it hangs.
        deadline = time.monotonic() + warmup_s + seconds + 30.0
        while time.monotonic() < deadline and (child.poll() is None or sub.poll(0)):
            if sub.poll(100):
                data = sub.recv()
                t = now_ns()
                if data.isdigit():
                    lat.append((t - int(data)) / 1e6)
        if child.poll() is None:
            raise RuntimeError("the floor publisher child did not finish in time")
        if child.returncode != 0:
            raise RuntimeError(f"the floor publisher child exited with status {child.returncode}")
    finally:
        if child is not None and child.poll() is None:
            child.kill()
            child.wait()
        sub.close(linger=0)
        ctx.term()
    return lat[round(warmup_s * fps) :]


def publish_timestamps(endpoint: str, seconds: float, fps: float, warmup_s: float = 1.0) -> int:
    """The child's side: connect a PUB to ``endpoint`` and send ``now_ns()`` at ``fps``
    for ``warmup_s + seconds``; returns how many messages were sent."""
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    sent = 0
    try:
        pub.linger = 0
        pub.connect(endpoint)
        t0 = time.monotonic() + 0.5  # let the subscription arrive before the first message
        for i in range(int(round((seconds + warmup_s) * fps))):
            wait = t0 + i / fps - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            pub.send(str(now_ns()).encode())
            sent += 1
    finally:
        pub.close(linger=0)
        ctx.term()
    return sent


def _main(argv: list[str]) -> int:
    if len(argv) not in (3, 4):
        print("usage: python -m transport.floor ENDPOINT SECONDS FPS [WARMUP_S]", file=sys.stderr)
        return 2
    try:
        seconds, fps = float(argv[1]), float(argv[2])
        warmup = float(argv[3]) if len(argv) == 4 else 1.0
    except ValueError as exc:
        print(f"transport.floor: error: {exc}", file=sys.stderr)
        return 2
    publish_timestamps(argv[0], seconds, fps, warmup)
    return 0


if __name__ == "__main__":  # python -m transport.floor ENDPOINT SECONDS FPS [WARMUP_S]
    sys.exit(_main(sys.argv[1:]))
