"""LATEX: extrapolation, the gate, calibration, the early model's FLOPs, export and the sender's message flags."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import zmq

from encoder.latex import (LatexConfig, apply_schedule, blind_schedule, calibrate_threshold, extrapolate, gate_distances,
                           gate_schedule, resolve_threshold, sequence_starts)


# ---------------------------------------------------------------------------- extrapolation and gate (numpy only)
def test_extrapolation_formula():
    # z_t = z_{t-1} + (z_{t-1} - z_{t-T}) / (T - 1)
    h = np.array([[1.0, 0.0], [2.0, 4.0], [4.0, 5.0]], np.float32)
    assert np.allclose(extrapolate(h), h[-1] + (h[-1] - h[0]) / 2)
    assert np.allclose(extrapolate(h[-2:]), 2 * h[-1] - h[-2])
    # A straight line is continued exactly for any T; a constant stays constant.
    line = np.arange(10, dtype=np.float32)[:, None] * np.array([0.5, -2.0], np.float32) + 3
    for T in (2, 3, 5):
        assert np.allclose(extrapolate(line[4 - T + 1 : 5]), line[5])
    assert np.allclose(extrapolate(np.ones((4, 2, 2))), 1.0)
    with pytest.raises(ValueError):
        extrapolate(h[:1])


def test_apply_schedule_extrapolates_from_sent_codes_and_respects_sequence_starts():
    n = 12
    v = (np.arange(n, dtype=np.float32)[:, None] * [1.0, 2.0]) ** 1  # linear: extrapolation is exact
    key = np.ones(n, bool)
    key[[3, 4, 5, 9]] = False
    out = apply_schedule(key, v, 3)
    assert np.allclose(out, v)
    q = v ** 2  # not linear: a skipped frame differs and later skips build on sent (extrapolated) values
    out = apply_schedule(key, q, 3)
    assert np.allclose(out[key], q[key])
    assert np.allclose(out[3], extrapolate(q[0:3])) and np.allclose(out[4], extrapolate(out[1:4]))
    starts = np.zeros(n, bool)
    starts[[0, 8]] = True
    key2 = np.ones(n, bool)
    key2[9] = False  # only 1 known frame of the new sequence
    with pytest.raises(ValueError):
        apply_schedule(key2, q, 3, starts)


def test_gate_keyframes_a_known_jump_and_skips_static_frames():
    rng = np.random.default_rng(0)
    n, Z = 40, 16
    z = np.zeros((n, Z), np.float32) + rng.normal(0, 1e-3, (n, Z)).astype(np.float32)
    z[20:] += 5.0  # a jump at frame 20
    g = np.zeros((n, 2, 2), np.float32)
    g[30:] += 0.3  # a saccade alone at frame 30
    d = gate_distances(z, g, np.ones(Z, np.float32), np.full(4, 0.1, np.float32))
    assert np.isinf(d[0]) and d[20] > 1 and d[30] > 1 and np.all(d[1:20] < 0.01)
    key = gate_schedule(d, 0.5, history=3, max_skips=0)
    assert key[:3].all()  # history not yet known
    assert key[20] and key[30]
    assert not key[3:20].any() and not key[21:30].any() and not key[31:].any()
    # max_skips bounds runs of skipped frames.
    key = gate_schedule(d, 0.5, history=3, max_skips=4)
    runs, r = [], 0
    for k in key:
        r = 0 if k else r + 1
        runs.append(r)
    assert max(runs) == 4 and key[20] and key[30]
    # A new sequence starts with keyframes whatever the distance.
    starts = np.zeros(n, bool)
    starts[[0, 10]] = True
    key = gate_schedule(gate_distances(z, g, np.ones(Z), np.full(4, 0.1), starts), 0.5, 3, 0, starts)
    assert key[10:13].all() and not key[13:20].any()


def test_blind_schedule_skips_every_kth_frame():
    key = blind_schedule(20, 1 / 4, history=3)
    assert list(np.flatnonzero(~key)) == [3, 7, 11, 15, 19]
    key = blind_schedule(100, 0.3, history=3)
    assert abs((~key).mean() - 0.3) < 0.02
    assert blind_schedule(10, 0.0, 3).all()
    starts = sequence_starts(np.r_[np.zeros(6), np.ones(6)], np.r_[np.arange(6), np.arange(6)])
    assert list(np.flatnonzero(starts)) == [0, 6]
    key = blind_schedule(12, 0.5, 2, starts)
    assert key[6:8].all() and not key[7 + 2]


def test_calibration_hits_the_target_skip_ratio():
    rng = np.random.default_rng(1)
    d = np.abs(rng.normal(size=3000)).astype(np.float32)
    starts = np.zeros(3000, bool)
    starts[::300] = True
    d[starts] = np.inf
    for target in (0.1, 0.3, 0.5):
        thr = calibrate_threshold(d, target, 3, 4, starts)
        got = 1 - gate_schedule(d, thr, 3, 4, starts).mean()
        assert abs(got - target) < 0.01, (target, got)
    assert calibrate_threshold(d, 0.9, 3, 1, starts) is None  # max_skips=1 caps the ratio near 0.5
    settings = {"calibration": {"T3_max4": {"0.1": 0.2, "0.3": 0.6}}}
    assert resolve_threshold(settings, LatexConfig(history=3, max_skips=4, skip_ratio=0.2)) == pytest.approx(0.4)
    assert resolve_threshold(settings, LatexConfig(threshold=1.5)) == 1.5
    with pytest.raises(ValueError):
        resolve_threshold(settings, LatexConfig(history=3, max_skips=4, skip_ratio=0.5))
    with pytest.raises(ValueError, match="no calibration"):
        resolve_threshold(settings, LatexConfig(skip_ratio=0.2))  # the default T=5, max 2 is not in this file
    with pytest.raises(ValueError):
        resolve_threshold(settings, LatexConfig(history=4, skip_ratio=0.2))
    with pytest.raises(ValueError):
        LatexConfig(history=1)


# ---------------------------------------------------------------------------- the early model (torch)
@pytest.mark.parametrize("name", ["EEM", "EEM-ch50", "EEM-res50", "tiny"])
def test_early_model_is_under_two_percent_of_the_encoder(name):
    from encoder.arch import get_arch
    from encoder.early import EarlyConfig, EarlyModel, counted_early_flops, early_flops
    from encoder.flops import analytic_flops
    from encoder.model import build_encoder

    enc = build_encoder(get_arch(name)).eval()
    early = EarlyModel(enc, EarlyConfig(grid=12 if name != "tiny" else 4)).eval()
    f = early_flops(early, enc)
    assert f["total"] == counted_early_flops(early)  # analytic == FlopCounterMode
    share = f["total"] / analytic_flops(enc.arch)["total"]
    if name != "tiny":
        assert share < 0.02, share


def _tiny_latent256_dir(tmp_path):
    """A per-view torch encoder with a 256-d code (the tiny avatar's), exported; its early model trained on
    random sequences. Returns the model directory."""
    import torch

    from encoder.arch import EncoderArch, get_arch
    from encoder.early import EarlyConfig, train_latex
    from encoder.export import save_model
    from encoder.model import build_encoder

    arch = EncoderArch.from_dict({**get_arch("tiny").to_dict(), "latent_dim": 256})
    torch.manual_seed(0)
    enc = build_encoder(arch).eval()
    d = tmp_path / "enc"
    save_model(enc, d, identity="test")
    rng = np.random.default_rng(0)
    n = 48
    base = rng.integers(0, 256, (3, 32, 32))
    views = np.stack([np.clip(base + 40 * np.sin(i / 5.0) , 0, 255) for i in range(n)]).astype(np.uint8)
    data = {"views": views, "keypoints": np.full((n, 3, 9, 2), 16.0, np.float32),
            "session": np.repeat([0, 1], n // 2).astype(np.int32), "frame": np.tile(np.arange(n // 2), 2).astype(np.int32)}
    s = train_latex(d, data, EarlyConfig(grid=4, steps=30, batch_size=16), progress=False)
    return d, s


def test_train_latex_exports_a_parity_checked_early_model_and_calibrates(tmp_path):
    d, s = _tiny_latent256_dir(tmp_path)
    assert (d / "early.onnx").exists() and (d / "latex.json").exists()
    assert s["train"]["onnx_parity_max_rel_err"] < 1e-3
    cal = json.loads((d / "latex.json").read_text())["calibration"]["T3_max4"]
    ratios = sorted(float(r) for r in cal)
    assert ratios and all(cal[f"{a:g}"] <= cal[f"{b:g}"] for a, b in zip(ratios, ratios[1:]))

    from encoder.latex import LatexEncoder
    from encoder.runtime import HmcEncoder

    enc = HmcEncoder(d)
    frames = [np.full((3, 32, 32), 100, np.uint8)] * 8 + [np.full((3, 32, 32), 220, np.uint8)] * 4
    gated = LatexEncoder(enc, LatexConfig(threshold=1e-3, history=3, max_skips=0))
    out = [gated.encode(f) for f in frames]
    keys = [r.keyframe for r in out]
    assert keys[:3] == [True] * 3 and not any(keys[3:8]) and keys[8]  # static frames skipped, the jump is a keyframe
    assert np.allclose(out[5].z, out[2].z, atol=1e-5)  # constant codes extrapolate to themselves
    assert gated.skip_ratio == pytest.approx(1 - sum(keys) / len(keys))
    assert out[4].encode_ms < out[8].encode_ms  # a skipped frame costs only the early model


# ---------------------------------------------------------------------------- the sender flags its messages
@pytest.mark.timeout(120)
def test_sender_flags_keyframes_and_extrapolated_frames(tmp_path):
    from runtime.config import SenderConfig, SourceConfig
    from runtime.launch import Worker
    from test_runtime_support import make_pattern_recording
    from transport import EXTRAPOLATED, KEYFRAME, decode_frame

    d, _ = _tiny_latent256_dir(tmp_path)
    hmc = make_pattern_recording(tmp_path / "p.hmc", frames=30)
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVHWM, 10000)
    port = sub.bind_to_random_port("tcp://127.0.0.1")
    reports = {}
    try:
        for name, thr in (("always", 1e9), ("never", 0.0)):
            cfg = SenderConfig(stream_id="alice", endpoint=f"tcp://127.0.0.1:{port}",
                               bind=False, source=SourceConfig(kind="replay", path=str(hmc), loop=False, fps=60.0),
                               encoder_dir=str(d), report_path=str(tmp_path / f"{name}.json"), latex=True,
                               latex_threshold=thr, latex_history=3, latex_max_skips=2)
            w = Worker(name, cfg, tmp_path).start()
            msgs, deadline = [], time.monotonic() + 90
            try:
                while time.monotonic() < deadline and not (tmp_path / f"{name}.json").exists():
                    if sub.poll(200):
                        msgs.append(decode_frame(sub.recv()))
                assert w.wait(30) == 0
            finally:
                w.kill()
            while sub.poll(200):
                msgs.append(decode_frame(sub.recv()))
            reports[name] = (json.loads((tmp_path / f"{name}.json").read_text()), msgs)
    finally:
        sub.close(0)
    rep, msgs = reports["always"]
    assert len(msgs) >= 20
    seqs = [m.seq for m in msgs]
    flags = {m.seq: m.flags for m in msgs}
    # T = 3 keyframes, then (skip, skip, keyframe) forced by max_skips = 2.
    expect = {s: int(KEYFRAME) if s < 3 or (s - 3) % 3 == 2 else int(EXTRAPOLATED) for s in seqs}
    assert flags == expect
    assert rep["latex"] and rep["skip_ratio"] == pytest.approx(1 - rep["keyframes"] / rep["frames_sent"])
    assert 0.5 < rep["skip_ratio"] < 0.7
    assert rep["encoder_compute_ms"]["mean"] > 0
    rep0, msgs0 = reports["never"]
    assert msgs0 and all(m.flags == int(KEYFRAME) for m in msgs0) and rep0["skip_ratio"] == 0.0
