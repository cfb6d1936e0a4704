"""Clock-offset estimation: pure NTP math on synthetic skewed clocks, then real sockets on loopback."""
from __future__ import annotations

import random
import time
import shutil

import msgpack
import pytest
import zmq

from transport.clock import (
    CLOCK_BURST_GAP_S,
    CLOCK_BURST_REQUESTS,
    CLOCK_INTERVAL_S,
    ClockClient,
    ClockServer,
    OffsetEstimator,
    clock_request_gap_s,
    now_ns,
    offset_and_delay,
)
from transport.endpoints import EndpointError, check_clock_endpoint, clock_endpoint_for
from transport.sockets import CurveConfig, FramePublisher, generate_keypair

pytestmark = pytest.mark.timeout(60)

ANY_PORT = "tcp://127.0.0.1:*"
MS = 1_000_000


def exchange_times(client_t0: int, true_offset: int, forward: int, backward: int, turnaround: int):
    """Four NTP timestamps for one exchange; the server clock reads client clock + true_offset."""
    t1 = client_t0 + forward + true_offset
    t2 = t1 + turnaround
    t3 = client_t0 + forward + turnaround + backward
    return client_t0, t1, t2, t3


def test_symmetric_legs_give_the_exact_offset():
    for offset in (0, 5 * 10**9, -3 * 10**12 + 17):
        t = exchange_times(10**12, offset, forward=400_000, backward=400_000, turnaround=50_000)
        assert offset_and_delay(*t) == (offset, 800_000)


def test_asymmetric_legs_err_by_half_the_difference():
    rng = random.Random(0)
    for _ in range(1000):
        offset = rng.randrange(-(10**13), 10**13)
        fwd, back = rng.randrange(0, 50 * MS), rng.randrange(0, 50 * MS)
        t = exchange_times(rng.randrange(0, 10**15), offset, fwd, back, rng.randrange(0, MS))
        est, delay = offset_and_delay(*t)
        assert delay == fwd + back
        assert abs(est - (offset + (fwd - back) / 2)) <= 1
        assert abs(est - offset) <= delay / 2 + 1  # the NTP error bound


def test_estimator_trusts_the_least_delayed_sample():
    rng = random.Random(1)
    true_offset = 7_345_678_901
    est = OffsetEstimator(window=64)
    t = 10**12
    for _ in range(60):
        # queueing on either leg: up to 20 ms, heavily asymmetric
        fwd = 200_000 + int(rng.expovariate(1 / (4 * MS)))
        back = 200_000 + int(rng.expovariate(1 / (4 * MS)))
        est.add(*exchange_times(t, true_offset, fwd, back, 30_000))
        t += 1_000 * MS
    best = est.best
    assert best.delay_ns == min(s.delay_ns for s in est._samples)
    assert abs(est.offset_ns - true_offset) <= est.uncertainty_ns + 1
    assert abs(est.offset_ns - true_offset) < 1 * MS  # far better than a typical sample
    assert est.to_local(true_offset + 5) == pytest.approx(5, abs=MS)
    assert est.to_remote(est.to_local(123456789)) == 123456789


def test_estimator_forgets_old_samples_and_follows_drift():
    est = OffsetEstimator(window=100, max_age_s=10)
    t = 10**12
    est.add(*exchange_times(t, 1000 * MS, 100, 100, 0))  # very good sample, old offset
    for i in range(30):
        t += 1000 * MS
        est.add(*exchange_times(t, 2000 * MS, 300_000, 300_000, 0))
    assert est.offset_ns == 2000 * MS
    assert len(est) <= 11


def test_impossible_samples_are_rejected():
    est = OffsetEstimator()
    assert est.add(100, 50, 60, 90) is None  # t3 - t0 < t2 - t1
    assert est.add(100, 50, 40, 200) is None  # t2 < t1
    assert est.offset_ns is None and est.rejected == 2
    assert est.to_local(42) == 42


# --------------------------------------------------------------------------- sockets


@pytest.fixture
def owned():
    items = []
    yield lambda x: items.append(x) or x
    for x in reversed(items):
        x.close()


SKEW = 5_000 * MS  # the "sender host" clock runs 5 s ahead


def skewed_clock() -> int:
    return now_ns() + SKEW


def test_clock_exchange_on_loopback_threaded_server(owned):
    server = owned(ClockServer(ANY_PORT, bind=True, clock=skewed_clock))
    server.start()
    client = owned(ClockClient(server.endpoint))
    samples = []
    for _ in range(200):
        s = client.exchange(timeout_ms=200)
        if s is not None:
            samples.append(s)
        if len(samples) >= 10:
            break
    assert len(samples) >= 10
    assert 0 <= client.estimator.best.delay_ns < 200 * MS
    assert abs(client.offset_ns - SKEW) <= client.estimator.uncertainty_ns + 1
    assert abs(client.offset_ns - SKEW) < 5 * MS


def test_intra_requests_are_counted_by_the_server_and_still_answered(owned):
    server = owned(ClockServer(ANY_PORT, bind=True))
    server.start()
    client = owned(ClockClient(server.endpoint))
    assert client.exchange(timeout_ms=1000) is not None and server.intra_requests == 0
    deadline = time.monotonic() + 5
    while not client.request(intra=True):  # the connection may still be settling
        assert time.monotonic() < deadline
        time.sleep(0.01)
    got = []
    while not got and time.monotonic() < deadline:
        got = client.poll(timeout_ms=100)
    assert got and server.intra_requests == 1  # answered like any request, and counted
    assert client.exchange(timeout_ms=1000) is not None and server.intra_requests == 1


def test_clock_exchange_polled_server_and_reverse_bind(owned):
    client = owned(ClockClient(ANY_PORT, bind=True, clock=now_ns))
    server = owned(ClockServer(client.endpoint, bind=False, clock=skewed_clock))
    got = []
    for _ in range(500):
        if client.request():
            server.serve_pending(timeout_ms=100)
            got += client.poll(timeout_ms=100)
        else:  # not connected yet: IMMEDIATE means nothing was queued
            server.serve_pending(timeout_ms=5)
        if got:
            break
    assert got and abs(client.offset_ns - SKEW) < 50 * MS
    assert server.served >= 1


def test_tick_never_blocks_and_requests_on_interval(owned):
    server = owned(ClockServer(ANY_PORT, bind=True))
    server.start()
    client = owned(ClockClient(server.endpoint, interval_s=0.0))
    for _ in range(2000):
        client.tick()
        if len(client.estimator) >= 3:
            break
        client.poll(timeout_ms=1)
    assert len(client.estimator) >= 3
    assert abs(client.offset_ns) < 5 * MS  # one host, one monotonic clock


def test_client_without_server_returns_none_quickly(owned, tmp_path):
    client = owned(ClockClient(f"ipc://{tmp_path}/nobody", bind=False))
    assert client.request() is False
    assert client.exchange(timeout_ms=50) is None
    assert client.offset_ns is None


def test_bad_clock_requests_are_counted_not_fatal(owned):
    server = owned(ClockServer(ANY_PORT, bind=True))
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.linger = 0
    try:
        dealer.connect(server.endpoint)
        garbage = [b"\xc1", b"", msgpack.packb({"v": 2, "q": 1, "t0": 1}), msgpack.packb({"v": 1, "q": "x", "t0": 1}), b"\x00" * 500]
        for g in garbage:
            dealer.send(g)
        dealer.send_multipart([b"two", b"frames"])
        dealer.send(msgpack.packb({"v": 1, "q": 5, "t0": 7}))
        answered = 0
        for _ in range(100):
            answered += server.serve_pending(timeout_ms=50)
            if answered:
                break
        assert answered == 1
        assert sum(server.bad.values()) == len(garbage) + 1
        assert dealer.poll(2000)
        reply = msgpack.unpackb(dealer.recv())
        assert reply["q"] == 5 and reply["t0"] == 7 and reply["t2"] >= reply["t1"]
    finally:
        dealer.close()
        ctx.term()


@pytest.fixture
def keys(tmp_path):
    receiver_pub, receiver_sec = generate_keypair(tmp_path / "receiver", "receiver")
    sender_pub, sender_sec = generate_keypair(tmp_path / "sender", "sender")
    _, stranger_sec = generate_keypair(tmp_path / "stranger", "stranger")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    shutil.copy(sender_pub, allowed)
    return {
        "server": CurveConfig.server(receiver_sec, allowed),
        "allowed": CurveConfig.client(sender_sec, receiver_pub),
        "stranger": CurveConfig.client(stranger_sec, receiver_pub),
    }


@pytest.mark.parametrize("who", ["allowed", "stranger"])
def test_clock_exchange_with_curve(owned, keys, who):
    # the receiver's clock client is the CURVE server, even though it connects
    server = owned(ClockServer(ANY_PORT, bind=True, curve=keys[who], clock=skewed_clock))
    server.start()
    client = owned(ClockClient(server.endpoint, curve=keys["server"]))
    sample = None
    for _ in range(20 if who == "allowed" else 5):
        sample = client.exchange(timeout_ms=100)
        if sample is not None:
            break
    if who == "allowed":
        assert sample is not None and abs(client.offset_ns - SKEW) < 50 * MS
    else:
        assert sample is None and client.offset_ns is None


# --------------------------------------------------------------------------- clock endpoint


@pytest.mark.parametrize(
    "frames, clock",
    [
        ("tcp://10.0.0.2:5555", "tcp://10.0.0.2:5556"),
        ("tcp://127.0.0.1:*", "tcp://127.0.0.1:*"),
        ("tcp://127.0.0.1:0", "tcp://127.0.0.1:*"),  # any free port: the clock gets any free port too, not port 1
        ("tcp://*:7000", "tcp://*:7001"),
        ("tcp://[::1]:5555", "tcp://[::1]:5556"),
        ("tcp://host.example:65534", "tcp://host.example:65535"),
        ("ipc:///tmp/a", "ipc:///tmp/a.clock"),
        ("ipc://*", "ipc://*"),
    ],
)
def test_clock_endpoint_for(frames, clock):
    assert clock_endpoint_for(frames) == clock


def test_clock_endpoint_for_port_65535_asks_for_clock():
    with pytest.raises(EndpointError) as info:
        clock_endpoint_for("tcp://10.0.0.2:65535")
    msg = str(info.value)
    assert "65536" in msg and "--clock" in msg and "\n" not in msg


@pytest.mark.parametrize("bad", ["abc", "udp://x:1", "tcp://127.0.0.1:", "tcp://127.0.0.1:99999"])
def test_clock_endpoint_for_bad_frames_endpoint(bad):
    with pytest.raises(EndpointError):
        clock_endpoint_for(bad)


def test_wildcard_frames_bind_gives_the_clock_a_free_port_too(owned):
    pub = owned(FramePublisher("tcp://127.0.0.1:0", bind=True))
    server = owned(ClockServer(clock_endpoint_for("tcp://127.0.0.1:0"), bind=True))
    assert pub.endpoint != server.endpoint and not server.endpoint.endswith(":1")
    check_clock_endpoint(pub.endpoint, server.endpoint)


@pytest.mark.parametrize(
    "frames, clock",
    [
        ("tcp://127.0.0.1:5555", "tcp://127.0.0.1:5555"),
        ("tcp://*:5555", "tcp://127.0.0.1:5555"),
        ("tcp://HOST:5555", "tcp://host:5555"),
        ("ipc:///tmp/f", "ipc:///tmp/f"),
    ],
)
def test_check_clock_endpoint_rejects_the_frames_endpoint(frames, clock):
    with pytest.raises(EndpointError) as info:
        check_clock_endpoint(frames, clock)
    assert "frames endpoint" in str(info.value)


@pytest.mark.parametrize(
    "frames, clock",
    [
        ("tcp://127.0.0.1:5555", "tcp://127.0.0.1:5556"),
        ("tcp://127.0.0.1:*", "tcp://127.0.0.1:*"),
        ("tcp://10.0.0.1:5555", "tcp://10.0.0.2:5555"),
        ("ipc:///tmp/f", "ipc:///tmp/f.clock"),
        ("ipc:///tmp/f", "tcp://127.0.0.1:5555"),
    ],
)
def test_check_clock_endpoint_accepts_distinct_endpoints(frames, clock):
    assert check_clock_endpoint(frames, clock) is None


def test_clock_cadence_of_the_reference_receiver():
    gaps = [clock_request_gap_s(sent) for sent in range(0, 12)]
    assert gaps[: CLOCK_BURST_REQUESTS + 1] == [CLOCK_BURST_GAP_S] * (CLOCK_BURST_REQUESTS + 1)
    assert gaps[CLOCK_BURST_REQUESTS + 1 :] == [CLOCK_INTERVAL_S] * (11 - CLOCK_BURST_REQUESTS)
    assert (CLOCK_BURST_REQUESTS, CLOCK_BURST_GAP_S, CLOCK_INTERVAL_S) == (8, 0.02, 0.25)


def test_clock_sockets_validate_endpoints_too():
    with pytest.raises(EndpointError):
        ClockServer("tcp://127.0.0.1:99999", bind=True)
    with pytest.raises(EndpointError):
        ClockClient("tcp://nope:5556")
