"""Latent stream coding: exact round trips, the quantisation bound, references, corruption and late joiners.

Tables are the tiny encoder's codec (``tests/tiny_models.py`` writes it in the real layout with the real
fitter); sockets are real (random loopback ports), processes are real (``runtime.launch.Worker``).
"""
from __future__ import annotations

import json
import random
import time

import msgpack
import numpy as np
import pytest

from runtime_support import ANY, presented
from transport.latent_codec import (CodecConfig, CodecError, LatentStreamDecoder, LatentStreamEncoder, check_value,
                                    load_codec)
from transport.sockets import FramePublisher, FrameSubscriber
from transport.wire import (BAD_MESSAGE_KINDS, INTRA, KEYFRAME, CodedFrame, WireError, WireLimits, decode_message,
                            encode_coded_frame)

T0 = 10**15
FRAME_NS = 33_333_333


@pytest.fixture(scope="module")
def tables(tiny_models):
    return load_codec(tiny_models[0])


def walk(tables, n: int, seed: int = 0, speed: float = 0.4) -> np.ndarray:
    """(n, N) code+gaze vectors: a random walk inside the tables' trained range."""
    rng = np.random.default_rng(seed)
    lo, hi = tables.mean + tables.lo * tables.step, tables.mean + tables.hi * tables.step
    x = np.empty((n, tables.size))
    x[0] = tables.mean
    for i in range(1, n):
        x[i] = np.clip(x[i - 1] + rng.normal(0, speed, tables.size) * tables.step, lo, hi)
    return x


def stream(tables, x: np.ndarray, cfg: CodecConfig, skip=lambda i: False):
    """Encode ``x`` frame by frame: (messages (None = skipped), what the sender says the receiver shows)."""
    enc = LatentStreamEncoder(tables, "alice", cfg)
    msgs, shown = [], []
    for i, v in enumerate(x):
        tc = T0 + i * FRAME_NS
        msgs.append(enc.encode(i, tc, tc + 20_000_000, v[: tables.latent_dim], v[tables.latent_dim:].reshape(2, 2),
                               enc_ts_ns=tc + 19_000_000, model="unknown/z256", skip=skip(i)))
        shown.append(np.concatenate([a.reshape(-1) for a in enc.decoded()]))
    return msgs, np.array(shown)


def within_half_step(tables, x: np.ndarray, decoded: np.ndarray) -> bool:
    # float32 rounding of the reconstruction on top of the half step
    return bool(np.all(np.abs(decoded - x) <= tables.step / 2 + 1e-5 * np.maximum(1.0, np.abs(x))))


def test_intra_frames_round_trip_exactly(tables):
    x = walk(tables, 40, seed=1, speed=3.0)
    msgs, shown = stream(tables, x, CodecConfig(intra_interval=1))
    dec = LatentStreamDecoder({tables.codec_id: tables})
    for i, data in enumerate(msgs):
        cf = decode_message(data)
        assert isinstance(cf, CodedFrame) and cf.is_intra
        f = dec.decode(cf)
        z, g = tables.values(tables.quantise(x[i][: tables.latent_dim], x[i][tables.latent_dim:]))
        assert np.array_equal(f.z, z) and np.array_equal(f.gaze, g)  # exactly the quantised code
        assert np.array_equal(np.concatenate([f.z, f.gaze.reshape(-1)]), shown[i])
        assert within_half_step(tables, x[i], shown[i])
        assert (f.seq, f.capture_ts_ns, f.stage_ts_ns["enc"]) == (i, T0 + i * FRAME_NS, T0 + i * FRAME_NS + 19_000_000)
        assert f.model == "unknown/z256"


@pytest.mark.parametrize("coder", ["range", "raw"])
@pytest.mark.parametrize("latex_skip", [False, True])
def test_predicted_frames_decode_to_the_senders_reconstruction_within_the_bound(tables, coder, latex_skip):
    x = walk(tables, 120, seed=2)
    skip = (lambda i: i % 3 == 2) if latex_skip else (lambda i: False)
    msgs, shown = stream(tables, x, CodecConfig(coder=coder, intra_interval=15, latex_skip=latex_skip), skip)
    dec = LatentStreamDecoder({tables.codec_id: tables})
    intra = 0
    for i, data in enumerate(msgs):
        if data is None:
            assert latex_skip and skip(i)
            continue
        cf = decode_message(data)
        intra += cf.is_intra
        f = dec.decode(cf)
        assert f.seq == i and abs(f.capture_ts_ns - (T0 + i * FRAME_NS)) <= 500  # microsecond deltas
        assert np.array_equal(np.concatenate([f.z, f.gaze.reshape(-1)]), shown[i])
        if not skip(i):
            assert within_half_step(tables, x[i], shown[i])
    assert intra == 8  # frames 0, 15, ..., 105
    # skipped frames are declared by the next predicted frame: never the one just before an intra frame
    assert dec.skipped == (sum(skip(i) and (i + 1) % 15 != 0 for i in range(120)) if latex_skip else 0)


def test_a_residual_is_never_applied_to_the_wrong_reference(tables):
    x = walk(tables, 45, seed=3)
    msgs, shown = stream(tables, x, CodecConfig(intra_interval=15))
    dec = LatentStreamDecoder({tables.codec_id: tables})
    kinds = []
    for i, data in enumerate(msgs):
        if i in (5, 33):  # lost in the network
            continue
        try:
            f = dec.decode(decode_message(data))
            assert np.array_equal(np.concatenate([f.z, f.gaze.reshape(-1)]), shown[i]) and f.seq == i
        except CodecError as err:
            kinds.append((i, err.kind))
    # everything after a loss waits for the next intra frame (15 and 45), counted as no_reference
    assert kinds == [(i, "no_reference") for i in [*range(6, 15), *range(34, 45)]]
    # a late joiner: the first frames it sees are predicted
    late = LatentStreamDecoder({tables.codec_id: tables})
    with pytest.raises(CodecError) as info:
        late.decode(decode_message(msgs[20]))
    assert info.value.kind == "no_reference"
    # tables it lacks: model_mismatch, not a wrong face
    other = LatentStreamDecoder({})
    with pytest.raises(CodecError) as info:
        other.decode(decode_message(msgs[0]))
    assert info.value.kind == "model_mismatch"


def _corrupt(data: bytes, rng: random.Random, how: str) -> bytes:
    if how == "truncate":
        return data[: rng.randrange(1, len(data))]
    obj = msgpack.unpackb(data)
    if how == "payload":
        p = bytearray(obj[10])
        p[rng.randrange(len(p))] ^= 1 << rng.randrange(8)
        obj[10] = bytes(p)
    elif how == "check":
        obj[9] ^= 0x5A5A
    elif how == "ref":
        obj[4] = min(255, obj[4] + 1)
    return msgpack.packb(obj, use_bin_type=True)


def test_corrupted_or_truncated_frames_are_counted_and_the_receiver_resyncs_at_the_next_intra(tables):
    """Real PUB/SUB on a random port: every corrupted frame is a counted bad message; frames after it are
    dropped (counted) until the next intra frame and never shown wrong."""
    x = walk(tables, 75, seed=4)
    msgs, shown = stream(tables, x, CodecConfig(intra_interval=15))
    rng = random.Random(4)
    corrupt = {3: "payload", 17: "truncate", 31: "check", 50: "ref", 62: "payload"}
    with FramePublisher(ANY, bind=True) as pub, \
            FrameSubscriber(pub.endpoint, limits=WireLimits(latent_dim=tables.latent_dim),
                            codecs={tables.codec_id: tables}) as sub:
        assert pub.wait_for_peer(10_000)
        while sub.stats.received == 0:  # the subscription has arrived once a message gets through
            pub.send_encoded(msgs[0])
            sub.recv_latest(timeout_ms=100)
        base = sub.stats.received
        shown_ok = {}
        for i, data in enumerate(msgs):
            pub.send_encoded(_corrupt(data, rng, corrupt[i]) if i in corrupt else data)
            while sub.stats.received < base + i + 1:
                f = sub.recv_latest(timeout_ms=50)
                if f is not None:
                    shown_ok[f.seq] = np.concatenate([f.z, f.gaze.reshape(-1)])
        bad = dict(sub.stats.bad)
    for seq, v in shown_ok.items():
        assert np.array_equal(v, shown[seq]), seq  # nothing shown is ever decoded against the wrong reference
    assert set(bad) <= set(BAD_MESSAGE_KINDS)
    assert sum(bad.values()) == len(msgs) - len(shown_ok)
    for k in corrupt:  # the corrupted frame and those after it, up to the next intra frame, are missing
        nxt = (k // 15 + 1) * 15
        assert k not in shown_ok and all(i not in shown_ok for i in range(k, nxt))
        assert nxt >= len(msgs) or nxt in shown_ok  # ... and no longer: resynchronised at the intra frame
    assert bad.get("codec", 0) >= 3 and bad.get("no_reference", 0) >= 40


def test_fuzzed_coded_frames_raise_only_counted_kinds(tables):
    x = walk(tables, 30, seed=5)
    msgs, _ = stream(tables, x, CodecConfig(intra_interval=10))
    rng = random.Random(5)
    seen = set()
    for trial in range(1500):
        dec = LatentStreamDecoder({tables.codec_id: tables})
        dec.decode(decode_message(msgs[0]))
        base = bytearray(rng.choice(msgs[1:10]) if trial % 2 else msgs[0])
        for _ in range(rng.randrange(1, 6)):
            base[rng.randrange(len(base))] ^= 1 << rng.randrange(8)
        try:
            cf = decode_message(bytes(base), WireLimits(latent_dim=tables.latent_dim))
            if isinstance(cf, CodedFrame):
                dec.decode(cf)
            seen.add("ok")
        except (WireError, CodecError) as err:
            assert err.kind in BAD_MESSAGE_KINDS, err
            seen.add(err.kind)
    assert {"msgpack", "codec"} <= seen


def test_coded_frame_validation_kinds():
    good = CodedFrame("bob", int(KEYFRAME | INTRA), 7, 0, 10**9, 2500, 2000, 1, check_value(np.zeros(3)), b"",
                      codec_id="0123abcd", model="s1")
    obj = msgpack.unpackb(encode_coded_frame(good))
    assert decode_message(encode_coded_frame(good)).codec_id == "0123abcd"

    def kind(**at):
        o = list(obj)
        for k, v in at.items():
            i = int(k[1:])
            if v is ...:
                del o[i:]
            else:
                o[i] = v
        with pytest.raises(WireError) as info:
            decode_message(msgpack.packb(o, use_bin_type=True))
        return info.value.kind

    assert kind(e0=2) == "version" and kind(e0=4) == "version"
    assert kind(e1="a b") == "schema" and kind(e2=8) == "schema" and kind(e2=3 | 4) == "schema"
    assert kind(e4=1) == "schema"  # an intra frame has r = 0
    assert kind(e11=...) == "schema" and kind(e11={"k": "xyz"}) == "schema" and kind(e11={"k": "0123abcd", "x": 1}) == "schema"
    assert kind(e8=7) == "codec" and kind(e10="text") == "schema" and kind(e9=2**16) == "schema"
    pred = list(obj[:11])
    pred[2] = int(KEYFRAME)
    pred[3], pred[4] = 8, 0
    with pytest.raises(WireError) as info:
        decode_message(msgpack.packb(pred, use_bin_type=True))
    assert info.value.kind == "schema"  # a predicted frame needs r >= 1
    pred[3] = 130
    pred[4] = 1
    with pytest.raises(WireError):
        decode_message(msgpack.packb(pred, use_bin_type=True))  # n mod 128 only


UP = 60.0


@pytest.mark.timeout(120)
def test_late_joining_receiver_presents_within_the_resync_bound(tiny_models, pattern_hmc, workers, tmp_path):
    """A sender streams coded frames for a while; a receiver that connects late drops at most the predicted
    frames before the next intra frame (intra_interval - 1 of them: 0.5 s at 30 fps) and then presents."""
    from runtime.config import ReceiverConfig, SenderConfig, SourceConfig

    interval = 15
    tx_cfg = SenderConfig(stream_id="alice", endpoint=ANY, clock_endpoint=ANY, bind=True,
                          source=SourceConfig(kind="replay", path=str(pattern_hmc), loop=True, fps=30.0),
                          encoder_dir=str(tiny_models[0]), report_path=str(tmp_path / "tx.report.json"),
                          codec=CodecConfig(intra_interval=interval))
    tx = workers("tx", tx_cfg, tmp_path)
    st = tx.wait_status(lambda s: s.get("frames_sent", 0) >= 40 and bool(s.get("endpoint")), UP)
    rx_cfg = ReceiverConfig(stream_id="alice", endpoint=st["endpoint"], clock_endpoint=st["clock_endpoint"], bind=False,
                            avatar_dir=str(tiny_models[1]), size=64, codec_dir=str(tiny_models[0]),
                            report_path=str(tmp_path / "rx.report.json"))
    rx = workers("rx", rx_cfg, tmp_path)
    rst = rx.wait_status(lambda s: presented(s) >= 10, UP)
    bad = rst["transport"]["bad"]
    assert set(bad) <= {"no_reference"}, bad  # nothing else went wrong
    assert bad.get("no_reference", 0) <= interval - 1  # joined mid-stream: waited at most for the next intra frame
    assert rst["transport"]["decoded"] >= 10
    rx.stop()
    rep = json.loads((tmp_path / "rx.report.json").read_text())
    assert rep["presented"] >= 10 and rep["dropped"]["bad_messages"].keys() <= {"no_reference"}
    kb = rep["streams"]["alice"]["kbit_per_s"]
    assert kb is not None and kb > 0


def test_a_lost_reference_is_bridged_approximately_until_the_next_intra_frame(tables):
    """With ``bridge`` the frames after a lost one decode on a guess of it (the frame before, unchanged): flagged
    approximate, off by exactly the lost frames' step (the runtime's ``previous`` predictor), exact again from the
    next intra frame; more lost frames in a row than the bridge still wait for the intra frame (no_reference)."""
    import dataclasses

    tables = dataclasses.replace(tables, predictor="previous", codec_id="")
    x = walk(tables, 60, seed=4)
    msgs, shown = stream(tables, x, CodecConfig(intra_interval=15))
    dec = LatentStreamDecoder({tables.codec_id: tables}, bridge=2)
    strict = LatentStreamDecoder({tables.codec_id: tables})
    lost = {5, 6, 33, 34, 35}  # two in a row (bridged), three in a row (beyond the bridge)
    out, kinds, strict_kinds = {}, [], []
    for i, data in enumerate(msgs):
        if i in lost:
            continue
        for d, sink in ((dec, kinds), (strict, strict_kinds)):
            try:
                f = d.decode(decode_message(data))
            except CodecError as err:
                sink.append((i, err.kind))
                continue
            if d is dec:
                out[i] = f
    assert strict_kinds == [(i, "no_reference") for i in [*range(7, 15), *range(36, 45)]]
    assert kinds == [(i, "no_reference") for i in range(36, 45)]  # 3 lost > bridge 2
    def q(v):
        return tables.quantise(v[: tables.latent_dim], v[tables.latent_dim:])

    for i in range(7, 15):
        f = out[i]
        assert f.approximate and f.seq == i and abs(f.capture_ts_ns - (T0 + i * FRAME_NS)) <= 2_000
        # off by exactly what the guess (frame 4 for frames 5 and 6) missed, in quantisation steps
        assert np.array_equal(tables.quantise(f.z, f.gaze) - q(shown[i]), q(shown[4]) - q(shown[6]))
    assert not np.array_equal(np.concatenate([out[7].z, out[7].gaze.reshape(-1)]), shown[7])  # a real guess
    for i in [*range(0, 5), *range(15, 33), *range(45, 60)]:
        f = out[i]
        assert not f.approximate and np.array_equal(np.concatenate([f.z, f.gaze.reshape(-1)]), shown[i])
    assert dec.bridged == 8 and not dec.approximate


def test_a_receiver_that_lost_a_frame_asks_for_an_intra_frame_and_gets_one(tiny_models, pattern_hmc, workers, tmp_path):
    """Real processes, 10% loss on the sender's transmit path, periodic intra frames as far apart as the protocol allows: every loss would
    freeze the receiver until then; instead it asks over the clock channel, and the sender sends intra frames on
    request, so the receiver keeps presenting."""
    from runtime.config import ReceiverConfig, SenderConfig, SourceConfig
    from runtime.playout import PlayoutConfig
    from transport.wire import MAX_REF_DISTANCE as MAX_REF

    tx_cfg = SenderConfig(stream_id="alice", endpoint=ANY, clock_endpoint=ANY, bind=True,
                          source=SourceConfig(kind="replay", path=str(pattern_hmc), loop=True, fps=30.0),
                          encoder_dir=str(tiny_models[0]), report_path=str(tmp_path / "tx.report.json"),
                          codec=CodecConfig(intra_interval=MAX_REF), impair="loss=10%,seed=3")
    tx = workers("tx", tx_cfg, tmp_path)
    st = tx.wait_status(lambda s: bool(s.get("endpoint")), UP)
    rx_cfg = ReceiverConfig(stream_id="alice", endpoint=st["endpoint"], clock_endpoint=st["clock_endpoint"], bind=False,
                            avatar_dir=str(tiny_models[1]), size=64, codec_dir=str(tiny_models[0]),
                            report_path=str(tmp_path / "rx.report.json"),
                            playout=PlayoutConfig(conceal=False))  # no bridging: every loss needs an intra frame
    rx = workers("rx", rx_cfg, tmp_path)
    rx.wait_status(lambda s: presented(s) >= 90, UP)
    rx.stop()
    tx.stop()
    rep = json.loads((tmp_path / "rx.report.json").read_text())
    txr = json.loads((tmp_path / "tx.report.json").read_text())
    lost = rep["transport"]["lost"]
    assert lost >= 3, rep["transport"]  # losses happened ...
    assert rep["clock"]["intra_requests"] >= 2  # ... the receiver asked ...
    assert txr["codec"]["intra_requests"] >= 2  # ... the sender heard ...
    assert txr["codec"]["intra_frames"] >= 1 + txr["codec"]["intra_requests"] // 2  # ... and answered
    assert rep["presented"] >= 90  # and frames kept coming after losses (90 frames > one loss-free run at 10%)


def test_a_reordered_intra_frame_does_not_roll_the_decoder_back(tables):
    """Intra frame 15 overtaken by predicted frame 16: 16 cannot be decoded yet, 15 decodes; had 15 been overtaken
    by frames already decoded, the decoder keeps its newer state and 17 still decodes."""
    x = walk(tables, 40, seed=5)
    msgs, shown = stream(tables, x, CodecConfig(intra_interval=15))
    dec = LatentStreamDecoder({tables.codec_id: tables})
    for i in range(15):
        dec.decode(decode_message(msgs[i]))
    old_intra = decode_message(msgs[0])  # a stale intra frame turning up late
    f = dec.decode(old_intra)
    assert f.seq == 0 and np.array_equal(np.concatenate([f.z, f.gaze.reshape(-1)]), shown[0])
    for i in range(15, 40):  # the stream goes on from where it was
        f = dec.decode(decode_message(msgs[i]))
        assert f.seq == i and np.array_equal(np.concatenate([f.z, f.gaze.reshape(-1)]), shown[i])
    # a restarted sender: seq back to 0 with a newer capture time is adopted
    enc = LatentStreamEncoder(tables, "alice", CodecConfig(intra_interval=15))
    tc = T0 + 100 * FRAME_NS
    v = x[3]
    f = dec.decode(decode_message(enc.encode(0, tc, tc, v[: tables.latent_dim], v[tables.latent_dim:].reshape(2, 2))))
    tc2 = tc + FRAME_NS
    v2 = x[4]
    f2 = dec.decode(decode_message(enc.encode(1, tc2, tc2, v2[: tables.latent_dim], v2[tables.latent_dim:].reshape(2, 2))))
    assert (f.seq, f2.seq) == (0, 1)


def test_frames_that_overtake_their_reference_wait_for_it(tables):
    """ReorderingDecoder: with a deadline, frames that arrive before their reference are decoded exactly once it
    arrives, in sequence order; a reference that never comes is bridged at the deadline; without one the
    overtaking frame fails at once."""
    from transport.latent_codec import ReorderingDecoder

    x = walk(tables, 30, seed=6)
    msgs, shown = stream(tables, x, CodecConfig(intra_interval=30))
    order = [0, 1, 2, 4, 5, 3, 6, 7, 9, 8, 10, 11, 13, 14, 15, 16]  # 3 and 8 overtaken; 12 never arrives
    dec = ReorderingDecoder({tables.codec_id: tables}, bridge=3)
    dec.deadline = lambda tc: tc - T0 + 80_000_000  # frame k is due 80 ms after its capture (3 arrives 67 ms after 4)
    got = []
    for k, i in enumerate(order):
        now = k * FRAME_NS
        got += dec.expire(now)
        got += dec.push(decode_message(msgs[i]), now, tag=i)
    got += dec.expire(len(order) * FRAME_NS + 10**9)
    frames = [r for _, r, _ in got]
    assert all(isinstance(f, object) and not isinstance(f, Exception) for f in frames), frames
    assert [f.seq for f in frames] == [i for i in range(17) if i != 12]  # in sequence order, 12 missing
    for f in frames:
        exact = np.array_equal(np.concatenate([f.z, f.gaze.reshape(-1)]), shown[f.seq])
        assert exact == (f.seq < 12) and f.approximate == (f.seq > 12)  # after the lost 12: bridged
    assert dec.held == 7 and dec.superseded == 0  # 4, 5 (for 3), 9 (for 8), 13-16 (for 12) waited
    strict = ReorderingDecoder({tables.codec_id: tables})  # no wait, no bridge
    res = [r for i in order[:5] for _, r, _ in strict.push(decode_message(msgs[i]), 0, tag=i)]
    assert [type(r).__name__ for r in res] == ["FrameMessage"] * 3 + ["CodecError"] * 2


def test_a_subscriber_with_a_reorder_wait_decodes_swapped_frames(tables):
    """Real PUB/SUB: frames sent with neighbours swapped all come out decoded, exactly, none counted bad."""
    x = walk(tables, 40, seed=7)
    msgs, shown = stream(tables, x, CodecConfig(intra_interval=40))
    order = list(range(40))
    for k in range(5, 35, 6):
        order[k], order[k + 1] = order[k + 1], order[k]
    with FramePublisher(ANY, bind=True) as pub, \
            FrameSubscriber(pub.endpoint, limits=WireLimits(latent_dim=tables.latent_dim),
                            codecs={tables.codec_id: tables}) as sub:
        sub.set_reorder_deadline(lambda tc: time.monotonic_ns() + 10**9)  # wait up to 1 s
        assert pub.wait_for_peer(10_000)
        while sub.stats.received == 0:  # the subscription has arrived once a message gets through
            pub.send_encoded(msgs[0])
            sub.recv_latest(timeout_ms=100)
        out = []
        for i in order[1:]:  # paced: the sockets' high-water marks are small on purpose
            pub.send_encoded(msgs[i])
            out += sub.recv_all(timeout_ms=5)
        deadline = time.monotonic() + 10
        while len(out) < 39 and time.monotonic() < deadline:
            out += sub.recv_all(timeout_ms=50)
        bad = dict(sub.stats.bad)
    assert [f.seq for f in out] == list(range(1, 40)) and not bad
    assert all(np.array_equal(np.concatenate([f.z, f.gaze.reshape(-1)]), shown[f.seq]) for f in out)


def test_frames_waiting_for_a_lost_reference_are_decided_before_an_intra_frame_overtakes_them(tables):
    """5 is lost; 6 and 7 wait for it; the intra frame 8 arrives before their deadline: 6 and 7 are bridged and
    handed out first (never silently dropped), then 8 decodes exactly."""
    import dataclasses

    from transport.latent_codec import ReorderingDecoder

    t = dataclasses.replace(tables, predictor="previous", codec_id="")
    x = walk(t, 12, seed=8)
    enc = LatentStreamEncoder(t, "alice", CodecConfig(intra_interval=8))
    msgs, shown = [], []
    for i, v in enumerate(x):
        tc = T0 + i * FRAME_NS
        msgs.append(enc.encode(i, tc, tc, v[: t.latent_dim], v[t.latent_dim:].reshape(2, 2)))
        shown.append(np.concatenate([a.reshape(-1) for a in enc.decoded()]))
    assert decode_message(msgs[8]).is_intra
    dec = ReorderingDecoder({t.codec_id: t}, bridge=3)
    dec.deadline = lambda tc: tc - T0 + 10**9  # a long wait: nothing expires on its own here
    got = []
    for i in [0, 1, 2, 3, 4, 6, 7, 8, 9]:
        got += dec.push(decode_message(msgs[i]), 0, tag=i)
    frames = [r for _, r, _ in got]
    assert [f.seq for f in frames] == [0, 1, 2, 3, 4, 6, 7, 8, 9]
    assert [f.approximate for f in frames] == [False] * 5 + [True, True] + [False, False]
    assert np.array_equal(np.concatenate([frames[7].z, frames[7].gaze.reshape(-1)]), shown[8])
    assert dec.superseded == 0


def test_codec_caches_and_reference_follow_the_encoder_not_the_identity(tiny_models, tmp_path):
    """A retrained or replaced encoder must not reuse another encoder's cached codes, and the quantisation budget's
    reference MSE belongs to one embedded encoder (identity and architecture), not to every encoder of the identity."""
    import os
    import shutil

    from avcore.cache import load_keyed_npz, save_keyed_npz
    from encoder.codec_fit import REFERENCE_FACE_MSE, model_key, reference_face_mse

    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(tiny_models[0], a)
    shutil.copytree(tiny_models[0], b)
    assert model_key(a) != model_key(b)  # another directory
    cache = tmp_path / "codes.npz"
    save_keyed_npz(cache, repr(model_key(a)), {"z": np.zeros(3)})
    assert load_keyed_npz(cache, repr(model_key(a))) is not None
    before = model_key(a)
    onnx = a / "fusion.onnx"
    st = onnx.stat()
    os.utime(onnx, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the same bytes, rewritten later
    assert model_key(a) != before and load_keyed_npz(cache, repr(model_key(a))) is None

    arch = json.loads((a / "arch.json").read_text())
    arch["name"] = "EEM"
    (a / "arch.json").write_text(json.dumps(arch))
    assert reference_face_mse("S1", a) == REFERENCE_FACE_MSE[("S1", "EEM")] > 0
    arch["name"] = "not-embedded"
    (a / "arch.json").write_text(json.dumps(arch))
    assert reference_face_mse("S1", a) == 0.0 and reference_face_mse("S1", tmp_path / "missing") == 0.0
