"""Sender and receiver as real processes on real sockets (random loopback ports).

Every wait polls a status file with a deadline; nothing sleeps a guessed time.
"""
from __future__ import annotations

import json
import random
import shutil
from collections import Counter

import msgpack
import numpy as np
import pytest
import zmq

from runtime_support import bad_total, presented, receiver_config, sender_config
from transport import KEYFRAME, PROTOCOL_VERSION, FrameMessage, encode_frame, generate_keypair, now_ns
from transport.latent_codec import CodecConfig

pytestmark = pytest.mark.timeout(90)

UP = 60.0  # seconds a process may take to start (imports, ONNX sessions, GL) on a loaded 2-core machine


def test_stream_end_to_end_with_telemetry_video_and_no_torch(tiny_models, pattern_hmc, workers, tmp_path):
    rc = receiver_config(tiny_models, tmp_path, video_path=str(tmp_path / "rx.mp4"), png_dir=str(tmp_path / "png"),
                         histogram_path=str(tmp_path / "h.png"))
    rx = workers("rx", rc, tmp_path)
    st = rx.wait_status(lambda s: bool(s.get("endpoint")), UP)
    tx = workers("tx", sender_config(tiny_models, pattern_hmc, tmp_path, st, seconds=3.0), tmp_path)
    st = rx.wait_status(lambda s: presented(s) >= 20, UP)
    tx_st = tx.wait_status(lambda s: True, UP)
    assert st["torch_loaded"] is False and tx_st["torch_loaded"] is False  # the runtime path never imports torch
    assert tx.wait(UP) == 0
    rx.stop()
    rep = json.loads((tmp_path / "rx.report.json").read_text())
    txr = json.loads((tmp_path / "tx.report.json").read_text())
    lat = rep["latency"]
    assert rep["presented"] >= 20 and lat["frames"] == rep["presented"]
    for stage in ("encode", "send", "network", "decode", "render", "present", "e2e", "overhead"):
        assert np.isfinite(lat["stages_ms"][stage]["p50"]), stage
    assert lat["stages_ms"]["e2e"]["p50"] > 0
    assert lat["stages_ms"]["network"]["p50"] > -0.5  # same host: the clock offset is close to 0
    assert abs(rep["clock"]["offset_ns"]) < 2_000_000 and rep["clock"]["samples"] > 0
    assert rep["dropped"]["bad_messages"] == {}
    kb = rep["streams"]["alice"]["kbit_per_s"]
    assert 0 < kb <= 150, kb  # 256-d code at up to 30 fps: within the 150 kbit/s budget
    assert kb == pytest.approx(txr["kbit_per_s"], rel=0.35)  # what the sender sent, measured at the other end
    assert txr["frames_sent"] >= rep["presented"]
    assert (tmp_path / "h.png").stat().st_size > 1000
    assert len(rep["video"]["frame_seqs"]) >= 20 and (tmp_path / "rx.mp4").stat().st_size > 1000
    assert len(list((tmp_path / "png").glob("frame_*.png"))) == rep["presented"]


def _hostile(n: int, rng: random.Random):
    """(bytes, kind) of ``n`` messages a receiver must reject; about 30 are oversize (~70 KB)."""
    t = now_ns()
    good = encode_frame(FrameMessage("alice", 1, t, t + 1000, np.zeros(256, np.float16), np.zeros((2, 2), np.float16),
                                     flags=int(KEYFRAME)))
    obj = msgpack.unpackb(good)

    def variant(**changes):
        o = {k: (dict(v) if isinstance(v, dict) else v) for k, v in obj.items()}
        for path, value in changes.items():
            outer, _, inner = path.partition("__")
            if inner:
                o[outer][inner] = value
            else:
                o[outer] = value
        return msgpack.packb(o, use_bin_type=True)

    nan_z = np.zeros(256, "<f2")
    nan_z[3] = np.nan
    inf_g = np.array([0, np.inf, 0, 0], "<f2")
    makers = [
        lambda: (b"\xc1" + rng.randbytes(rng.randrange(0, 600)), "msgpack"),  # 0xc1 is never valid msgpack
        lambda: (rng.randbytes(rng.randrange(1, 600)), None),
        lambda: (good[: rng.randrange(1, len(good))], "msgpack"),
        lambda: (variant(v=rng.choice([0, PROTOCOL_VERSION + 1, 7])), "version"),
        lambda: (variant(z__t=rng.choice(["|O", ">f4", "<f8", "<i4"])), "dtype"),
        lambda: (variant(z__s=[255]), "shape"),
        lambda: (variant(z__s=[16, 16]), "shape"),
        lambda: (variant(g__s=[4]), "shape"),
        lambda: (variant(z__d=nan_z.tobytes()), "non_finite"),
        lambda: (variant(g__d=inf_g.tobytes()), "non_finite"),
        lambda: (variant(id="mallory"), "stream"),
        lambda: (variant(f=4), "schema"),
    ]
    for i in range(n):
        if i % 333 == 0:
            yield b"\x00" * 70_000, "oversize"  # over WireLimits.max_bytes, under ZMQ_MAXMSGSIZE
        else:
            yield rng.choice(makers)()


def test_ten_thousand_hostile_messages_leave_a_running_receiver_rendering(tiny_models, pattern_hmc, workers, tmp_path):
    rx = workers("rx", receiver_config(tiny_models, tmp_path), tmp_path)
    st = rx.wait_status(lambda s: bool(s.get("endpoint")), UP)
    workers("tx", sender_config(tiny_models, pattern_hmc, tmp_path, st), tmp_path)
    st = rx.wait_status(lambda s: presented(s) >= 5, UP)
    ctx = zmq.Context()
    attacker = ctx.socket(zmq.XPUB)  # XPUB: we see the receiver's subscription arrive, so nothing is sent too early
    attacker.linger = 0
    attacker.sndhwm = 0  # unbounded queue on the attacker's side: every message gets delivered
    try:
        attacker.connect(st["endpoint"])
        assert attacker.poll(20_000, zmq.POLLIN), "the receiver never subscribed"
        assert attacker.recv() == b"\x01"  # subscribe to everything
        base = bad_total(rx.wait_status(lambda s: True, 5))
        base_presented = presented(rx.status())
        rng = random.Random(5)
        expected = Counter()
        n = 10_000
        for data, kind in _hostile(n, rng):
            attacker.send(data)
            expected[kind] += 1
        st = rx.wait_status(lambda s: bad_total(s) >= base + n, 60)
        assert bad_total(st) == base + n  # every bad message counted, none taken for a frame
        bad = Counter(st["transport"]["bad"])
        for kind, count in expected.items():
            if kind is not None:
                assert bad[kind] >= count, (kind, bad)
        assert rx.alive()
        # still rendering the real stream
        st = rx.wait_status(lambda s: presented(s) >= max(presented(st), base_presented) + 10, 30)
        assert st["transport"]["streams"]["alice"]["frames"] > 0
    finally:
        attacker.close(linger=0)
        ctx.term()


def test_sender_then_receiver_restart_and_the_stream_resumes(tiny_models, pattern_hmc, workers, tmp_path):
    rx = workers("rx", receiver_config(tiny_models, tmp_path), tmp_path)
    st = rx.wait_status(lambda s: bool(s.get("endpoint")), UP)
    endpoints = {"endpoint": st["endpoint"], "clock_endpoint": st["clock_endpoint"]}
    tx_cfg = sender_config(tiny_models, pattern_hmc, tmp_path, endpoints)
    tx = workers("tx", tx_cfg, tmp_path)
    n = presented(rx.wait_status(lambda s: presented(s) >= 5, UP))

    tx.kill()  # crash the sender ...
    tx = workers("tx", tx_cfg, tmp_path)  # ... and start it again
    st = rx.wait_status(lambda s: presented(s) >= n + 10 and s["transport"]["restarts"] >= 1, UP)
    assert rx.alive()

    rx.kill()  # crash the receiver ...
    rc2 = receiver_config(tiny_models, tmp_path, name="rx2", **endpoints)  # ... and start it on the same ports
    rx2 = workers("rx2", rc2, tmp_path)
    st = rx2.wait_status(lambda s: presented(s) >= 10, UP)  # the sender re-dialled by itself
    # Joining mid-stream, the new receiver refuses coded frames whose reference it never saw until the next intra frame
    # (the sender sends one as soon as the receiver asks for the clock, and at the latest every intra interval).
    bad = st["transport"]["bad"]
    assert tx.alive() and set(bad) <= {"no_reference"} and bad.get("no_reference", 0) <= CodecConfig().intra_interval


def test_secure_sender_with_unknown_key_delivers_nothing(tiny_models, pattern_hmc, workers, tmp_path):
    keys = tmp_path / "keys"
    rx_pub, rx_sec = generate_keypair(keys, "receiver")
    good_pub, good_sec = generate_keypair(keys, "good")
    _, bad_sec = generate_keypair(keys / "other", "mallory")
    allow = tmp_path / "allow"
    allow.mkdir()
    shutil.copy(good_pub, allow)
    from runtime.config import SecureConfig

    rc = receiver_config(tiny_models, tmp_path, secure=SecureConfig(secret_key=str(rx_sec), allowed_dir=str(allow)))
    rx = workers("rx", rc, tmp_path)
    st = rx.wait_status(lambda s: bool(s.get("endpoint")), UP)
    bad_cfg = sender_config(tiny_models, pattern_hmc, tmp_path, st, name="bad",
                            secure=SecureConfig(secret_key=str(bad_sec), server_key=str(rx_pub)))
    bad = workers("bad", bad_cfg, tmp_path)
    failed = ("handshake_failed_auth", "handshake_failed_protocol", "handshake_failed_no_detail")
    st = rx.wait_status(lambda s: sum(s["transport"]["events"].get(k, 0) for k in failed) >= 1, UP)
    bad.wait_status(lambda s: s.get("frames_sent", 0) >= 30, UP)  # it has been sending for a second
    st = rx.wait_status(lambda s: True, 5)
    assert st["transport"]["received"] == 0 and presented(st) == 0  # nothing reached validation, let alone the decoder
    bad.stop()
    good_cfg = sender_config(tiny_models, pattern_hmc, tmp_path, st, name="good",
                             secure=SecureConfig(secret_key=str(good_sec), server_key=str(rx_pub)))
    workers("good", good_cfg, tmp_path)
    st = rx.wait_status(lambda s: presented(s) >= 5, UP)  # the allowed key gets through
    assert st["transport"]["events"].get("handshake_succeeded", 0) >= 1


def test_receiver_refuses_codes_of_another_model_in_words(pattern_hmc, workers, tmp_path):
    """An S1 encoder's codes sent to a receiver that decodes S2's latent space are refused and named."""
    from tiny_models import build_tiny

    s1 = build_tiny(tmp_path / "s1", identity="S1", latent_dim=16)
    s2 = build_tiny(tmp_path / "s2", identity="S2", latent_dim=16)
    rx = workers("rx", receiver_config((None, s2[1]), tmp_path), tmp_path)
    st = rx.wait_status(lambda s: bool(s.get("endpoint")), UP)
    tx = workers("tx", sender_config((s1[0], None), pattern_hmc, tmp_path, st, seconds=2.0), tmp_path)
    st = rx.wait_status(lambda s: s["transport"]["bad"].get("model_mismatch", 0) >= 3, UP)  # intra frames name it
    assert presented(st) == 0  # not one frame of the stranger's code was drawn
    assert tx.wait(UP) == 0
    rx.stop()
    rep = json.loads((tmp_path / "rx.report.json").read_text())
    assert rep["model"] == "S2/z16" and rep["presented"] == 0
    assert "S1/z16" in rep["refused"]
    assert "refusing frames of model S1/z16" in (tmp_path / "rx.log").read_text()


def _pid_alive(pid: int) -> bool:
    from pathlib import Path

    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize("render,jitter", [("warp", True), ("warp2x", False)], ids=["warp+jitter-buffer", "warp2x"])
def test_display_clock_receiver_renders_every_tick_from_the_newest_code(tiny_models, pattern_hmc, workers, tmp_path,
                                                                        monkeypatch, render, jitter):
    """``--render warp`` (one process, here behind the jitter buffer) and ``warp2x`` (two engine workers) with fake
    engines behind a real sender: display frames in tick order, G exactly on new codes (warp) or on the first tick of
    each pair (warp2x), the display telemetry in the report, no torch, and no engine process left after the stop."""
    from fake_engine import PIDS_DIR
    from runtime.playout import PlayoutConfig
    from runtime.telemetry import CONCEALED, GENERATED, NEW_CODE, PARALLEL, WARPED
    from runtime_support import TESTS_DIR, neural_avatar

    monkeypatch.setenv("PYTHONPATH", str(TESTS_DIR))  # the receiver process imports the fake engines
    avatar = neural_avatar(tiny_models[1], tmp_path / "avatar")
    rc = receiver_config((tiny_models[0], avatar), tmp_path, render=render, display_hz=60.0,
                         engine_module="fake_engine", size=32,
                         playout=PlayoutConfig(max_delay_ms=60.0) if jitter else PlayoutConfig())
    rx = workers("rx", rc, tmp_path)
    st = rx.wait_status(lambda s: bool(s.get("endpoint")), UP)
    tx = workers("tx", sender_config(tiny_models, pattern_hmc, tmp_path, st, seconds=3.0), tmp_path)
    st = rx.wait_status(lambda s: s.get("codes_presented", 0) >= 20, UP)
    assert st["torch_loaded"] is False and st["render"] == render
    assert tx.wait(UP) == 0
    rx.stop()
    rep = json.loads((tmp_path / "rx.report.json").read_text())
    cols = rep["frames_columns"]
    rows = [dict(zip(cols, r)) for r in rep["frames"]]
    ticks = [r["tick"] for r in rows]
    assert ticks == sorted(set(ticks)), "display frames out of tick order or repeated"
    gen = [r for r in rows if r["flags"] & GENERATED]
    warped = [r for r in rows if r["flags"] & WARPED]
    assert len(gen) + len(warped) == len(rows) and gen and warped
    assert all(r["view"] > 0 and r["pres"] >= r["view"] for r in rows)  # view sampled at its tick, before present
    if render == "warp":
        # one process: G runs when a new code arrived, or when MAX_WARPS frames were already warped from its cache
        from renderer.scheduler import MAX_WARPS

        run = 0
        for r in rows:
            if r["flags"] & GENERATED:
                assert r["flags"] & NEW_CODE or run == MAX_WARPS
                run = 0
            else:
                assert not r["flags"] & NEW_CODE
                run += 1
                assert run <= MAX_WARPS
        assert not any(r["flags"] & PARALLEL for r in rows)
        assert rep["playout"]["played"] >= 20  # the jitter buffer fed the display clock
    else:
        assert all(r["flags"] & PARALLEL for r in rows)
        assert all(r["flags"] & GENERATED for r in rows if r["tick"] % 2 == 0)  # each pair starts with G
        assert rep["latency"]["display"]["sync_ms"]["p50"] >= 0
    lat = rep["latency"]
    assert lat["display"]["generated"] == len(gen) and lat["display"]["warped"] == len(warped)
    assert lat["display"]["missed_ticks"] == rep["display"]["missed_ticks"]
    for key in ("generate", "warp", "view_to_present"):
        assert lat["stages_ms"][key]["p50"] >= 0, key
    assert lat["display"]["e2e_new_code_ms"]["p50"] > 0 and lat["display"]["e2e_warped_ms"]["p50"] > 0
    assert rep["display"]["mode"] == render and rep["render"] == render
    assert len([r for r in rows if r["flags"] & NEW_CODE and not r["flags"] & CONCEALED]) >= 20
    pids = [int(p.name) for p in (avatar / PIDS_DIR).iterdir()]
    assert len(pids) == (2 if render == "warp2x" else 1)
    assert not [p for p in pids if _pid_alive(p)]  # the engines' processes ended with the receiver
