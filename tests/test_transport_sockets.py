"""Frame sockets over real ZeroMQ: delivery, latest-frame-wins, hostile floods, CURVE, reconnects.

Random ports only (``tcp://127.0.0.1:*``), LINGER=0, and every wait is a poll
with a deadline: no sleeps as synchronisation.
"""
from __future__ import annotations

import json
import random
import shutil
import time
from collections import Counter

import msgpack
import numpy as np
import pytest
import zmq

from transport.sockets import CurveConfig, FramePublisher, FrameSubscriber, SocketOptions, generate_keypair
from transport.wire import KEYFRAME, FrameMessage, WireLimits, encode_frame

pytestmark = pytest.mark.timeout(60)

ANY_PORT = "tcp://127.0.0.1:*"
BIG_QUEUES = SocketOptions(sndhwm=100_000, rcvhwm=100_000)


def frame(seq: int, stream_id: str = "alice", dim: int = 256) -> FrameMessage:
    t = time.monotonic_ns()
    return FrameMessage(
        stream_id=stream_id,
        seq=seq,
        capture_ts_ns=t,
        send_ts_ns=t + 1000,
        z=np.full(dim, seq % 100, np.float16),
        gaze=np.zeros((2, 2), np.float16),
        flags=int(KEYFRAME),
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
        lambda: (variant(v=rng.choice([0, 2, 3, 255])), "version"),
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
                data, kind = variant(v=9), "version"
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


@pytest.mark.parametrize("sub_binds", [True, False])
def test_curve_allowed_sender_delivers(owned, keys, sub_binds):
    if sub_binds:
        sub = owned(FrameSubscriber(ANY_PORT, bind=True, curve=keys["server"]))
        pub = owned(FramePublisher(sub.endpoint, bind=False, curve=keys["allowed"]))
    else:
        pub = owned(FramePublisher(ANY_PORT, bind=True, curve=keys["allowed"]))
        sub = owned(FrameSubscriber(pub.endpoint, bind=False, curve=keys["server"]))
    got = handshake(pub, sub)
    assert got.stream_id == "alice"
    assert sub.stats.events["handshake_succeeded"] >= 1


@pytest.mark.parametrize("sender", ["stranger", "plaintext"])
@pytest.mark.parametrize("sub_binds", [True, False])
def test_curve_unknown_sender_delivers_nothing(owned, keys, sender, sub_binds):
    curve = keys["stranger"] if sender == "stranger" else None
    if sub_binds:
        sub = owned(FrameSubscriber(ANY_PORT, bind=True, curve=keys["server"]))
        pub = owned(FramePublisher(sub.endpoint, bind=False, curve=curve))
    else:
        pub = owned(FramePublisher(ANY_PORT, bind=True, curve=curve))
        sub = owned(FrameSubscriber(pub.endpoint, bind=False, curve=keys["server"]))
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
    finally:
        sub.close()
    sub = owned(FrameSubscriber(endpoint, bind=True))
    handshake(pub, sub)


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
