"""Frame sockets over real ZeroMQ: delivery, latest-frame-wins, hostile floods, CURVE, reconnects.

Random ports only (``tcp://127.0.0.1:*``), LINGER=0, and every wait is a poll
with a deadline: no sleeps as synchronisation.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq

from transport.endpoints import EndpointError
from transport.floor import measure_pubsub_floor
from transport.sockets import CurveConfig, FramePublisher, FrameSubscriber, KeyPairError, SocketOptions, generate_keypair
from transport.stats import StreamStats
from transport.wire import KEYFRAME, PROTOCOL_VERSION, FrameMessage, WireLimits, encode_frame

pytestmark = pytest.mark.timeout(60)

ANY_PORT = "tcp://127.0.0.1:*"
BIG_QUEUES = SocketOptions(sndhwm=100_000, rcvhwm=100_000)


def frame(seq: int, stream_id: str = "alice", dim: int = 256, model: str | None = None, capture_ts_ns: int | None = None) -> FrameMessage:
    t = time.monotonic_ns() if capture_ts_ns is None else capture_ts_ns
    return FrameMessage(
        stream_id=stream_id,
        seq=seq,
        capture_ts_ns=t,
        send_ts_ns=t + 1000,
        z=np.full(dim, seq % 100, np.float16),
        gaze=np.zeros((2, 2), np.float16),
        flags=int(KEYFRAME),
        model=model,
    )


@pytest.fixture
def owned():
    """Closes every socket owner (and so its context) a test registers, in reverse order."""
    items = []

    def own(x):
        items.append(x)
        return x

    yield own
    for x in reversed(items):
        x.close()


def until(predicate, timeout_s: float = 5.0, step=None):
    """Run ``step`` (which polls with its own timeout) until ``predicate()``; True on success."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if step is not None:
            step()
        if predicate():
            return True
    return predicate()


def handshake(pub: FramePublisher, sub: FrameSubscriber, timeout_s: float = 5.0, stream_id: str = "alice") -> FrameMessage:
    """Publish probe frames until the subscriber sees one (PUB drops until the subscription arrives)."""
    seq = 10**9
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pub.send(frame(seq, stream_id))
        got = sub.recv_latest(timeout_ms=20)
        if got is not None:
            return got
        seq += 1
    raise AssertionError("no frame delivered")


# --------------------------------------------------------------------------- delivery


@pytest.mark.parametrize("sub_binds", [False, True])
def test_delivery_either_side_binds(owned, sub_binds):
    if sub_binds:
        sub = owned(FrameSubscriber(ANY_PORT, bind=True))
        pub = owned(FramePublisher(sub.endpoint, bind=False))
    else:
        pub = owned(FramePublisher(ANY_PORT, bind=True))
        sub = owned(FrameSubscriber(pub.endpoint, bind=False))
    got = handshake(pub, sub)
    assert got.stream_id == "alice" and got.z.shape == (256,)
    sent = frame(5)
    pub.send(sent)
    got = sub.recv_latest(timeout_ms=2000)
    assert got is not None and got.seq == 5 and np.array_equal(got.z, sent.z)
    assert sub.stats.bad_total == 0
    assert pub.stats.frames_sent >= 2 and pub.stats.bytes_sent > 0


def test_recv_latest_times_out_without_traffic(owned):
    sub = owned(FrameSubscriber(ANY_PORT, bind=True))
    t = time.monotonic()
    assert sub.recv_latest(timeout_ms=50) is None
    assert time.monotonic() - t >= 0.04
    assert sub.recv_latest(timeout_ms=0) is None


def test_latest_frame_wins_deterministic_inproc(owned):
    ctx = zmq.Context()
    try:
        pub = FramePublisher("inproc://frames", bind=True, options=BIG_QUEUES, context=ctx)
        sub = FrameSubscriber("inproc://frames", bind=False, options=BIG_QUEUES, context=ctx)
        try:
            handshake(pub, sub)
            for seq in range(100):
                pub.send(frame(seq))
            # inproc: every sent frame is already in the subscriber's queue
            got = sub.recv_latest(timeout_ms=0)
            assert got is not None and got.seq == 99
            assert sub.stats.dropped_stale == 99
            assert sub.recv_latest(timeout_ms=0) is None
        finally:
            sub.close()
            pub.close()
    finally:
        ctx.term()


def test_slow_reader_gets_newest_over_tcp(owned):
    pub = owned(FramePublisher(ANY_PORT, bind=True, options=BIG_QUEUES))
    sub = owned(FrameSubscriber(pub.endpoint, options=BIG_QUEUES))
    handshake(pub, sub)
    base = sub.stats.delivered
    for seq in range(100):
        pub.send(frame(seq))
    seen = []
    assert until(lambda: seen and seen[-1] == 99, step=lambda: (f := sub.recv_latest(timeout_ms=100)) and seen.append(f.seq))
    assert seen == sorted(seen)  # never goes back in time
    assert sub.stats.delivered - base == len(seen) < 100
    assert sub.stats.dropped_stale > 0
    assert sub.stats.dropped_stale + len(seen) == 100
    assert sub.stats.lost == 0


def test_sequence_gaps_stream_filter_and_bandwidth(owned):
    pub = owned(FramePublisher(ANY_PORT, bind=True, options=BIG_QUEUES))
    sub = owned(FrameSubscriber(pub.endpoint, options=BIG_QUEUES, stream_id="alice"))
    handshake(pub, sub)
    for seq in (0, 1, 2, 5, 6):  # 3 and 4 "lost"
        pub.send(frame(seq))
        assert sub.recv_latest(timeout_ms=2000).seq == seq
    pub.send(frame(7, stream_id="mallory"))
    pub.send(frame(7))
    assert sub.recv_latest(timeout_ms=2000).seq == 7
    assert sub.stats.bad["stream"] == 1
    assert sub.stats.lost == 2
    assert sub.stats.restarts == 1  # the probes' seq ran far ahead of 0: a restart, not loss
    rates = sub.stats.stream_bytes_per_s()
    assert rates["alice"] > 0 and "mallory" not in rates
    json.dumps(sub.stats.snapshot())  # JSON-friendly
    assert pub.stats.bandwidth.kbit_per_s() > 0


# --------------------------------------------------------------------------- hostile input


def hostile_messages(n: int, rng: random.Random, limits: WireLimits):
    """Yield (bytes, expected kind or None when the kind depends on the random bytes)."""
    good = encode_frame(frame(1))
    good_obj = msgpack.unpackb(good)

    def variant(**changes):
        obj = {k: (dict(v) if isinstance(v, dict) else v) for k, v in good_obj.items()}
        for path, value in changes.items():
            if "__" in path:
                outer, inner = path.split("__")
                obj[outer][inner] = value
            else:
                obj[path] = value
        return msgpack.packb(obj, use_bin_type=True)

    nan_z = np.zeros(256, "<f2")
    nan_z[17] = np.nan
    inf_g = np.array([0, np.inf, 0, 0], "<f2")
    makers = [
        lambda: (rng.randbytes(rng.randrange(1, 600)), None),
        lambda: (good[: rng.randrange(1, len(good))], "msgpack"),
        lambda: (b"\x00" * rng.randrange(limits.max_bytes + 1, limits.max_bytes + 5000), "oversize"),
        lambda: (variant(v=rng.choice([v for v in (0, 1, 2, 3, 255) if v != PROTOCOL_VERSION])), "version"),
        lambda: (variant(z__t=rng.choice(["|O", ">f4", "<f8", "<i2", "<U1"])), "dtype"),
        lambda: (variant(z__s=[16, 16]), "shape"),
        lambda: (variant(g__s=[4]), "shape"),
        lambda: (variant(z__d=b"\x00" * 10), "shape"),
        lambda: (variant(z__d=nan_z.tobytes()), "non_finite"),
        lambda: (variant(g__d=inf_g.tobytes()), "non_finite"),
        lambda: (b"\xc6\xff\xff\xff\xff" + rng.randbytes(8), "msgpack"),
        lambda: (variant(n=-5), "schema"),
    ]
    oversize_budget = 60  # keep the test's memory and time small
    for _ in range(n):
        data, kind = rng.choice(makers)()
        if kind == "oversize":
            if oversize_budget == 0:
                data, kind = variant(v=PROTOCOL_VERSION + 7), "version"
            oversize_budget -= 1
        yield data, kind


def test_ten_thousand_hostile_messages_leave_the_receiver_running(owned):
    limits = WireLimits(latent_dim=256)
    sub = owned(FrameSubscriber(ANY_PORT, bind=True, limits=limits))
    raw_ctx = zmq.Context()
    raw = raw_ctx.socket(zmq.PUB)
    raw.linger = 0
    raw.sndhwm = 0  # unbounded: the attacker's queue, so that every message is delivered
    try:
        raw.connect(sub.endpoint)
        # the subscription must have reached the raw PUB before anything counts
        probe = encode_frame(frame(0))
        assert until(lambda: sub.stats.decoded > 0, step=lambda: (raw.send(probe), sub.recv_latest(timeout_ms=20)))
        before = sub.stats.snapshot()

        rng = random.Random(7)
        expected = Counter()
        n_hostile = 10_000
        n_good = 0
        for i, (data, kind) in enumerate(hostile_messages(n_hostile, rng, limits)):
            raw.send(data)
            expected[kind] += 1
            if i % 1000 == 999:  # a real frame now and then: still delivered
                raw.send(encode_frame(frame(i)))
                n_good += 1
        total = n_hostile + n_good
        delivered = []
        assert until(
            lambda: sub.stats.received - before["received"] >= total,
            timeout_s=20,
            step=lambda: (f := sub.recv_latest(timeout_ms=50)) and delivered.append(f.seq),
        ), sub.stats.snapshot()

        bad = sub.stats.bad
        assert sub.stats.received - before["received"] == total
        assert sub.stats.bad_total == n_hostile  # every bad message counted
        assert sub.stats.decoded - before["decoded"] == n_good
        for kind, count in expected.items():
            if kind is not None:
                assert bad[kind] >= count, (kind, bad)
        assert delivered and delivered[-1] == 9999

        # still alive and well
        raw.send(encode_frame(frame(123456)))
        got = sub.recv_latest(timeout_ms=2000)
        assert got is not None and got.seq == 123456
    finally:
        raw.close(linger=0)
        raw_ctx.term()


def test_message_over_maxmsgsize_drops_the_peer_which_reconnects(owned):
    sub = owned(FrameSubscriber(ANY_PORT, bind=True, options=SocketOptions(max_msg_size=100_000)))
    pub = owned(FramePublisher(sub.endpoint, bind=False))
    handshake(pub, sub)
    pub.send_encoded(b"\x00" * 200_000)  # over ZMQ_MAXMSGSIZE: libzmq disconnects the peer
    assert until(lambda: sub.stats.events["disconnected"] >= 1, step=lambda: sub.recv_latest(timeout_ms=20))
    assert sub.stats.bad_total == 0  # never reached the decoder
    handshake(pub, sub)  # the publisher re-dialled and delivers again


# --------------------------------------------------------------------------- CURVE


@pytest.fixture
def keys(tmp_path):
    receiver_pub, receiver_sec = generate_keypair(tmp_path / "receiver", "receiver")
    allowed_pub, allowed_sec = generate_keypair(tmp_path / "sender", "sender")
    _, stranger_sec = generate_keypair(tmp_path / "stranger", "stranger")
    allowed_dir = tmp_path / "allowed_senders"
    allowed_dir.mkdir()
    shutil.copy(allowed_pub, allowed_dir / allowed_pub.name)
    assert (receiver_sec.stat().st_mode & 0o777) == 0o600
    return {
        "server": CurveConfig.server(receiver_sec, allowed_dir),
        "allowed": CurveConfig.client(allowed_sec, receiver_pub),
        "stranger": CurveConfig.client(stranger_sec, receiver_pub),
    }


def curve_pair(owned, keys, client: str | None, sub_binds: bool):
    """A publisher with ``keys[client]`` (None: no CURVE) and the receiver's CURVE subscriber; either side binds."""
    curve = keys[client] if client else None
    if sub_binds:
        sub = owned(FrameSubscriber(ANY_PORT, bind=True, curve=keys["server"]))
        pub = owned(FramePublisher(sub.endpoint, bind=False, curve=curve))
    else:
        pub = owned(FramePublisher(ANY_PORT, bind=True, curve=curve))
        sub = owned(FrameSubscriber(pub.endpoint, bind=False, curve=keys["server"]))
    return pub, sub


@pytest.mark.parametrize("sub_binds", [True, False])
def test_curve_allowed_sender_delivers(owned, keys, sub_binds):
    pub, sub = curve_pair(owned, keys, "allowed", sub_binds)
    got = handshake(pub, sub)
    assert got.stream_id == "alice"
    assert sub.stats.events["handshake_succeeded"] >= 1


@pytest.mark.parametrize("sender", ["stranger", "plaintext"])
@pytest.mark.parametrize("sub_binds", [True, False])
def test_curve_unknown_sender_delivers_nothing(owned, keys, sender, sub_binds):
    pub, sub = curve_pair(owned, keys, "stranger" if sender == "stranger" else None, sub_binds)
    failed = ("handshake_failed_auth", "handshake_failed_protocol", "handshake_failed_no_detail")
    seq = 0

    def step():
        nonlocal seq
        pub.send(frame(seq))
        seq += 1
        assert sub.recv_latest(timeout_ms=20) is None

    # wait until the receiver has refused the sender at least once, then keep trying a while
    assert until(lambda: any(sub.stats.events[k] for k in failed), step=step), sub.stats.events
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        step()
    assert sub.stats.received == 0  # nothing ever reached the decoder
    if sender == "stranger":
        assert sub.stats.events["handshake_failed_auth"] >= 1


def test_curve_roles_are_checked(keys):
    with pytest.raises(ValueError):
        FramePublisher(ANY_PORT, curve=keys["server"])
    with pytest.raises(ValueError):
        FrameSubscriber(ANY_PORT, bind=True, curve=keys["allowed"])
    with pytest.raises(ValueError):
        CurveConfig(secret_key_file=keys["allowed"].secret_key_file)


# --------------------------------------------------------------------------- reconnect


def test_subscriber_receives_again_after_publisher_restarts(owned):
    pub = FramePublisher(ANY_PORT, bind=True)
    endpoint = pub.endpoint
    sub = owned(FrameSubscriber(endpoint))
    try:
        handshake(pub, sub)
    finally:
        pub.close()
    pub = owned(FramePublisher(endpoint, bind=True))  # same port, new process in real life
    got = handshake(pub, sub)
    assert got is not None
    assert sub.stats.events["disconnected"] >= 1


def test_publisher_delivers_again_after_subscriber_restarts(owned):
    sub = FrameSubscriber(ANY_PORT, bind=True)
    endpoint = sub.endpoint
    pub = owned(FramePublisher(endpoint, bind=False))
    try:
        handshake(pub, sub)
        assert pub.wait_for_peer(5000) and pub.peers == 1
    finally:
        sub.close()
    assert until(lambda: pub.peers == 0, step=lambda: pub.wait_events(20))  # it noticed the receiver went away
    sub = owned(FrameSubscriber(endpoint, bind=True))
    got = handshake(pub, sub)
    assert got.stream_id == "alice" and got.seq >= 10**9  # a probe frame of the new connection
    assert sub.stats.decoded >= 1 and sub.stats.bad_total == 0
    assert pub.stats.events["disconnected"] >= 1 and pub.peers == 1


# --------------------------------------------------------------------------- statistics


def test_stream_stats_logs_each_bad_kind_once(caplog):
    from transport.stats import StreamStats

    stats = StreamStats()
    with caplog.at_level("WARNING", logger="transport.stats"):
        for _ in range(5):
            stats.record_bad("msgpack", "junk")
        stats.record_bad("shape", "z")
    assert stats.bad == {"msgpack": 5, "shape": 1}
    assert len([r for r in caplog.records if r.levelname == "WARNING"]) == 2


def test_bandwidth_meter_sliding_window():
    from transport.stats import BandwidthMeter

    meter = BandwidthMeter(window_s=1.0, bucket_s=0.1)
    t0 = 10**12
    for i in range(30):  # 30 fps, 600 B per frame, for 1 s
        meter.add(600, t0 + i * 1_000_000_000 // 30)
    now = t0 + 999_000_000
    assert meter.bytes_per_s(now) == pytest.approx(18_000, rel=0.02)
    assert meter.kbit_per_s(now) == pytest.approx(144, rel=0.02)
    assert meter.bytes_per_s(now + 5 * 10**9) == 0.0  # silence empties the window
    assert meter.total_bytes == 18_000


# --------------------------------------------------------------------------- endpoints


def closed_port() -> str:
    """A TCP endpoint on loopback where nobody listens (bound once to learn a free port, then closed)."""
    ctx = zmq.Context()
    s = ctx.socket(zmq.PUB)
    s.linger = 0
    try:
        s.bind(ANY_PORT)
        return s.getsockopt_string(zmq.LAST_ENDPOINT)
    finally:
        s.close(linger=0)
        ctx.term()


@pytest.mark.parametrize(
    "endpoint, bind, words",
    [
        ("tcp://nope", False, "no port"),
        ("tcp://nope", True, "no port"),
        ("tcp://nope:5555", False, "does not resolve"),
        ("tcp://nope:5555", True, "not an interface of this machine"),
        ("abc", False, "not an endpoint"),
        ("abc", True, "not an endpoint"),
        ("tcp://127.0.0.1:", True, "no port"),
        ("tcp://127.0.0.1:", False, "no port"),
        ("udp://127.0.0.1:5000", False, "unsupported transport"),
        ("tcp://256.1.1.1:5000", False, "not a valid IPv4 address"),
        ("tcp://256.1.1.1:5000", True, "not a valid IPv4 address"),
        ("tcp://127.0.0.1:99999", True, "out of range"),
        ("tcp://127.0.0.1:99999", False, "out of range"),
        ("tcp://127.0.0.1:*", False, "needs the actual port"),
        ("tcp://127.0.0.1:0", False, "needs the actual port"),
        ("tcp://*:5555", False, "only makes sense when binding"),
        ("tcp://127.0.0.1:http", False, "not a number"),
        ("tcp://::1:5555", False, "brackets"),
        ("", True, "empty"),
        ("ipc://", True, "no path"),
    ],
)
@pytest.mark.parametrize("cls", [FramePublisher, FrameSubscriber])
def test_bad_endpoints_give_one_clear_line(cls, endpoint, bind, words):
    with pytest.raises(EndpointError) as info:
        cls(endpoint, bind=bind)
    msg = str(info.value)
    assert isinstance(info.value, ValueError) and not isinstance(info.value, zmq.ZMQError)
    assert words in msg and "\n" not in msg
    assert endpoint in msg or not endpoint


def test_port_in_use_is_said_in_words(owned):
    first = owned(FrameSubscriber(ANY_PORT, bind=True))
    for cls in (FrameSubscriber, FramePublisher):
        with pytest.raises(EndpointError) as info:
            cls(first.endpoint, bind=True)
        assert "address in use" in str(info.value) and first.endpoint in str(info.value)


def test_bind_failures_are_wrapped_with_the_endpoint(tmp_path):
    missing = f"ipc://{tmp_path}/no/such/dir/frames"
    with pytest.raises(EndpointError) as info:
        FrameSubscriber(missing, bind=True)
    assert missing in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(EndpointError) as info:
        FramePublisher("tcp://10.255.255.254:5000", bind=True)  # a valid IP that is not this machine's
    assert "tcp://10.255.255.254:5000" in str(info.value)


@pytest.mark.parametrize("endpoint", ["tcp://127.0.0.1:*", "tcp://127.0.0.1:0", "tcp://localhost:*", "tcp://lo:*", "ipc://*"])
def test_valid_bind_endpoints_still_work(owned, endpoint):
    sub = owned(FrameSubscriber(endpoint, bind=True))
    pub = owned(FramePublisher(sub.endpoint, bind=False))
    assert handshake(pub, sub).stream_id == "alice"


def test_ipc_endpoint_delivers(owned, tmp_path):
    sub = owned(FrameSubscriber(f"ipc://{tmp_path}/frames", bind=True))
    pub = owned(FramePublisher(f"ipc://{tmp_path}/frames", bind=False))
    assert sub.endpoint == f"ipc://{tmp_path}/frames"
    assert handshake(pub, sub).stream_id == "alice"


# --------------------------------------------------------------------------- receiver checks


def raw_pub_to(sub: FrameSubscriber):
    """A bare PUB (the hostile sender) connected to ``sub``; returns (ctx, socket)."""
    ctx = zmq.Context()
    raw = ctx.socket(zmq.PUB)
    raw.linger = 0
    raw.sndhwm = 0
    raw.connect(sub.endpoint)
    return ctx, raw


def test_multipart_messages_are_dropped_whole(owned):
    sub = owned(FrameSubscriber(ANY_PORT, bind=True))
    ctx, raw = raw_pub_to(sub)
    try:
        good = encode_frame(frame(1))
        assert until(lambda: sub.stats.decoded > 0, step=lambda: (raw.send(good), sub.recv_latest(timeout_ms=20)))
        before = sub.stats.snapshot()
        raw.send_multipart([encode_frame(frame(500)), encode_frame(frame(501)), b"junk"])
        raw.send_multipart([encode_frame(frame(502)), b""])
        raw.send(encode_frame(frame(503)))
        got = []
        assert until(lambda: got and got[-1] == 503, step=lambda: (f := sub.recv_latest(timeout_ms=50)) and got.append(f.seq))
        assert 500 not in got and 501 not in got and 502 not in got
        assert sub.stats.bad["multipart"] == 2
        assert sub.stats.bad["msgpack"] == 0  # no part was decoded as garbage
        assert sub.stats.received - before["received"] == 3  # a multipart message is one message
        assert sub.stats.decoded - before["decoded"] == 1
    finally:
        raw.close(linger=0)
        ctx.term()


def test_model_mismatch_is_counted_and_remembered(owned):
    sub = owned(FrameSubscriber(ANY_PORT, bind=True, options=BIG_QUEUES, expected_model="avatar-s1"))
    pub = owned(FramePublisher(sub.endpoint, bind=False, options=BIG_QUEUES))
    handshake(pub, sub)  # no model declared: accepted
    pub.send(frame(1, model="avatar-s1"))
    assert sub.recv_latest(timeout_ms=2000).model == "avatar-s1"
    pub.send(frame(2, model="avatar-xl"))
    pub.send(frame(3))  # no "m": the stream's last declared model still applies
    pub.send(frame(4, model="avatar-s1"))
    got = sub.recv_latest(timeout_ms=2000)
    assert got is not None and got.seq == 4
    assert sub.stats.bad["model_mismatch"] == 2
    assert sub.stats.last_model_mismatch == "avatar-xl"
    assert sub.declared_model("alice") == "avatar-s1"
    assert sub.stats.lost == 2  # rejected frames never reach the sequence statistics


def test_capture_times_outside_the_window_are_rejected(owned):
    sub = owned(FrameSubscriber(ANY_PORT, bind=True, options=BIG_QUEUES))
    pub = owned(FramePublisher(sub.endpoint, bind=False, options=BIG_QUEUES))
    handshake(pub, sub)
    offset = 7 * 10**9  # the sender's clock reads 7 s ahead of ours
    far_future = time.monotonic_ns() + offset + 3600 * 10**9
    pub.send(frame(1, capture_ts_ns=far_future))
    assert sub.recv_latest(timeout_ms=2000).seq == 1  # offset unknown: no check
    sub.set_clock_offset(offset)
    now_sender = time.monotonic_ns() + offset
    pub.send(frame(2, capture_ts_ns=far_future))  # an hour ahead
    pub.send(frame(3, capture_ts_ns=now_sender - 120 * 10**9))  # two minutes old
    pub.send(frame(4, capture_ts_ns=now_sender + 5 * 10**9))  # 5 s ahead > max_future_s
    pub.send(frame(5, capture_ts_ns=time.monotonic_ns() + offset))  # now: fine
    got = sub.recv_latest(timeout_ms=2000)
    assert got is not None and got.seq == 5
    assert sub.stats.bad["timestamp_range"] == 3
    sub.set_clock_offset(None)
    pub.send(frame(6, capture_ts_ns=far_future))
    assert sub.recv_latest(timeout_ms=2000).seq == 6


def test_sequence_jump_to_near_2_64_is_a_restart_not_loss():
    stats = StreamStats()
    stats.record_frame("alice", 5, 600)
    stats.record_frame("alice", 2**64 - 1, 600)
    assert stats.lost == 0 and stats.restarts == 1
    stats.record_frame("alice", 5, 600)  # back down: another restart
    stats.record_frame("alice", 5 + StreamStats.MAX_SEQ_JUMP + 1, 600)  # gap of exactly MAX_SEQ_JUMP: loss
    assert stats.lost == StreamStats.MAX_SEQ_JUMP and stats.restarts == 2
    stats.record_frame("alice", 5 + StreamStats.MAX_SEQ_JUMP + 1, 600)
    assert stats.duplicates == 1


def test_stream_bytes_accessor():
    stats = StreamStats()
    stats.record_frame("alice", 0, 600)
    stats.record_frame("alice", 1, 610)
    stats.record_frame("bob", 0, 50)
    assert stats.stream_bytes("alice") == 1210 and stats.stream_bytes("bob") == 50
    assert stats.stream_bytes("carol") == 0
    assert stats.stream_ids() == ["alice", "bob"]
    assert stats.snapshot()["streams"]["alice"]["bytes"] == 1210


# --------------------------------------------------------------------------- peers and refusals


def test_nobody_listening_is_visible(owned):
    pub = owned(FramePublisher(closed_port(), bind=False))
    assert not pub.wait_for_peer(50)
    assert until(lambda: pub.stats.events["connect_retried"] > 0, step=lambda: pub.wait_events(50))
    assert pub.peers == 0 and pub.last_refusal is None
    assert "nobody is accepting connections" in pub.connection_status()


def test_plain_peer_is_counted_and_uncounted(owned):
    sub = owned(FrameSubscriber(ANY_PORT, bind=True))
    assert sub.peers == 0 and "no peer" in sub.connection_status()
    pub = owned(FramePublisher(sub.endpoint, bind=False))
    assert pub.wait_for_peer(5000) and sub.wait_for_peer(5000)
    assert pub.peers == 1 and sub.peers == 1 and "1 peer connected" in sub.connection_status()
    pub2 = owned(FramePublisher(sub.endpoint, bind=False))
    assert pub2.wait_for_peer(5000)
    assert until(lambda: sub.peers == 2, step=lambda: sub.wait_events(50))
    pub2.close()
    assert until(lambda: sub.peers == 1, step=lambda: sub.wait_events(50))


@pytest.mark.parametrize("sub_binds", [True, False])
def test_curve_accepted_sender_sees_a_peer(owned, keys, sub_binds):
    pub, sub = curve_pair(owned, keys, "allowed", sub_binds)
    assert pub.wait_for_peer(5000) and sub.wait_for_peer(5000)
    assert pub.peers == 1 and sub.peers == 1
    assert pub.last_refusal is None and sub.last_refusal is None


@pytest.mark.parametrize("sub_binds", [True, False])
def test_curve_refused_sender_is_told_why(owned, keys, sub_binds):
    pub, sub = curve_pair(owned, keys, "stranger", sub_binds)
    assert until(lambda: pub.last_refusal is not None, step=lambda: pub.wait_events(50))
    assert pub.last_refusal == "the receiver refused this sender's key (not in its --allow directory)"
    assert until(lambda: sub.last_refusal is not None, step=lambda: sub.wait_events(50))
    assert "not in the --allow directory" in sub.last_refusal
    assert pub.peers == 0 and sub.peers == 0
    assert "refused this sender's key" in pub.connection_status()


def test_curve_wrong_server_key_is_named(owned, keys, tmp_path):
    other_pub, _ = generate_keypair(tmp_path / "other", "other_receiver")
    wrong = CurveConfig.client(keys["allowed"].secret_key_file, other_pub)
    sub = owned(FrameSubscriber(ANY_PORT, bind=True, curve=keys["server"]))
    pub = owned(FramePublisher(sub.endpoint, bind=False, curve=wrong))
    assert until(lambda: pub.last_refusal is not None, step=lambda: pub.wait_events(50))
    assert until(lambda: sub.last_refusal is not None, step=lambda: sub.wait_events(50))
    assert pub.last_refusal.startswith("CURVE handshake failed: server key does not match")
    assert sub.last_refusal.startswith("CURVE handshake failed: server key does not match")
    assert pub.peers == 0 and sub.peers == 0


def test_curve_against_plaintext_is_a_security_mismatch(owned, keys):
    sub = owned(FrameSubscriber(ANY_PORT, bind=True, curve=keys["server"]))
    pub = owned(FramePublisher(sub.endpoint, bind=False))  # no --secure
    # per connection, whichever side reads the other's greeting first names the mismatch; the other sees it dropped
    seen = lambda: [s for s in (*pub.refusals, *sub.refusals) if s.startswith("security mismatch")]  # noqa: E731
    # the publisher re-dials, so within a few attempts both sides have heard of a failed handshake
    both = lambda: seen() and sub.last_refusal is not None and pub.last_refusal is not None  # noqa: E731
    assert until(both, step=lambda: (sub.wait_events(20), pub.wait_events(20)))
    assert sub.peers == 0 and pub.peers == 0


# --------------------------------------------------------------------------- latency floor


def test_pubsub_floor_measures_per_message_latency():
    lat = measure_pubsub_floor(0.4, 50, warmup_s=0.2)
    assert len(lat) >= 5  # ~20 expected; PUB may drop a few before the subscription lands
    assert all(isinstance(x, float) and 0 <= x < 10_000 for x in lat)
    with pytest.raises(ValueError):
        measure_pubsub_floor(0, 30)


# --------------------------------------------------------------------------- keys


def test_generate_keypair_refuses_to_replace_without_force(tmp_path):
    pub1, sec1 = generate_keypair(tmp_path, "alice")
    before = pub1.read_text()
    with pytest.raises(KeyPairError) as info:
        generate_keypair(tmp_path, "alice")
    assert "--force" in str(info.value) and "\n" not in str(info.value)
    assert pub1.read_text() == before  # untouched
    pub2, sec2 = generate_keypair(tmp_path, "alice", force=True)
    assert pub2 == pub1 and pub2.read_text() != before
    assert (sec2.stat().st_mode & 0o777) == 0o600
    # a public key of the same name (someone else's, in an allowlist) is protected too
    (tmp_path / "allow").mkdir()
    shutil.copy(pub1, tmp_path / "allow" / "bob.key")
    with pytest.raises(KeyPairError):
        generate_keypair(tmp_path / "allow", "bob")


@pytest.mark.parametrize("name", ["", ".hidden", "..", "a/b", "../x", "a\\b", "x" * 65, "sp ace", "ä"])
def test_generate_keypair_rejects_bad_names(tmp_path, name):
    with pytest.raises(KeyPairError):
        generate_keypair(tmp_path / "keys", name)
    assert not (tmp_path / "keys").exists() or not any((tmp_path / "keys").iterdir())


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "avcall.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def test_keys_new_cli_refuses_overwrite_and_bad_names(tmp_path):
    d = str(tmp_path / "keys")
    ok = _cli("keys", "new", "--name", "x", "--dir", d, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    first = (tmp_path / "keys" / "x.key").read_text()
    for args in (["--name", "x"], ["--name", ""], ["--name", "../evil"], ["--name", ".x"]):
        r = _cli("keys", "new", *args, "--dir", d, cwd=tmp_path)
        assert r.returncode != 0, args
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert (tmp_path / "keys" / "x.key").read_text() == first
    forced = _cli("keys", "new", "--name", "x", "--dir", d, "--force", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert (tmp_path / "keys" / "x.key").read_text() != first
