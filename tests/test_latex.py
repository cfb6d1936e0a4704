"""LATEX: extrapolation, the gate (one rule for sender and evaluation), settings, calibration, the early model's
FLOPs, export, the gated encoder's accounting and the sender's message flags.

Nothing here compares wall-clock timings: encoder runs are counted and time comes from an injected clock."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from encoder.latex import (LatexConfig, LatexGate, apply_schedule, blind_schedule, calibrate_threshold, calibration_key,
                           extrapolate, gate_distances, gate_schedule, resolve_threshold, sequence_starts)
from encoder.runtime import default_model_dir

EMBEDDED_LATEX = default_model_dir("S1") / "latex.json"  # the sender's default encoder of S1


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


def _schedule_before_latex_gate(d, threshold, history, max_skips, starts=None):
    """``gate_schedule`` as it was before :class:`LatexGate` existed (kept verbatim as the reference)."""
    d = np.asarray(d)
    n = len(d)
    starts = np.zeros(n, bool) if starts is None else np.asarray(starts, bool)
    key = np.ones(n, bool)
    known, run = 0, 0
    for t in range(n):
        if starts[t]:
            known, run = 0, 0
        skip = known >= history and d[t] <= threshold and (max_skips == 0 or run < max_skips)
        key[t] = not skip
        run = run + 1 if skip else 0
        known += 1
    return key


def _frame_by_frame(d, threshold, history, max_skips, starts):
    """The sender's path: one :class:`LatexGate`, stepped per frame, reset where a sequence starts."""
    gate = LatexGate(threshold, history, max_skips)
    out = []
    for dist, start in zip(d, starts):
        if start:
            gate.reset()
        out.append(gate.step(dist))
    return np.array(out, bool)


def test_gate_known_case_by_hand():
    inf, nan = np.inf, np.nan
    #    seq 1: T=3 known first, then skip, skip, forced key, skip, jump, skip, skip | seq 2: 3 known, skip, NaN
    d = [inf, .1, .1, .1, .1, .1, .1, .9, .1, .1, inf, .1, .1, .1, nan]
    starts = np.zeros(len(d), bool)
    starts[[0, 10]] = True
    K, S = True, False
    expected = {2: [K, K, K, S, S, K, S, K, S, S, K, K, K, S, K],
                0: [K, K, K, S, S, S, S, K, S, S, K, K, K, S, K]}  # max_skips 0: no bound on skip runs
    for max_skips, want in expected.items():
        want = np.array(want)
        assert np.array_equal(gate_schedule(d, 0.5, 3, max_skips, starts), want)
        assert np.array_equal(_frame_by_frame(d, 0.5, 3, max_skips, starts), want)
        assert np.array_equal(_schedule_before_latex_gate(d, 0.5, 3, max_skips, starts), want)


def test_gate_frame_by_frame_equals_gate_schedule_equals_the_old_rule():
    rng = np.random.default_rng(7)
    for trial in range(60):
        n = int(rng.integers(1, 300))
        d = rng.exponential(1.0, n)
        d[rng.random(n) < 0.03] = np.inf
        d[rng.random(n) < 0.01] = np.nan
        starts = rng.random(n) < 0.04
        starts[0] = True
        d[starts] = np.inf
        thr = float(rng.choice([0.0, 0.3, 1.0, 2.5, 1e9]))
        T, m = int(rng.integers(2, 6)), int(rng.integers(0, 4))
        a = gate_schedule(d, thr, T, m, starts)
        b = _frame_by_frame(d, thr, T, m, starts)
        c = _schedule_before_latex_gate(d, thr, T, m, starts)
        assert np.array_equal(a, b) and np.array_equal(a, c), (trial, thr, T, m)
    gate = LatexGate(0.5, history=2, max_skips=1)
    assert [gate.step(0.0) for _ in range(5)] == [True, True, False, True, False]
    gate.reset()
    assert (gate.known, gate.run) == (0, 0) and gate.step(0.0)
    with pytest.raises(ValueError):
        LatexGate(0.5, history=1)


def test_latex_config_is_the_one_place_of_settings_and_defaults():
    c = LatexConfig()
    assert (c.history, c.threshold, c.skip_ratio, c.max_skips) == (5, None, 0.3, 2)
    assert LatexConfig.from_dict(c.to_dict()) == c
    assert json.loads(json.dumps(c.to_dict())) == c.to_dict()
    d = LatexConfig(history=3, threshold=0.07, skip_ratio=None, max_skips=0)
    assert LatexConfig.from_dict(d.to_dict()) == d
    assert LatexConfig.from_dict({"history": 4}) == LatexConfig(history=4)  # missing keys: defaults
    with pytest.raises(ValueError, match="bogus.*default_skip_ratio|default_skip_ratio.*bogus") as e:
        LatexConfig.from_dict({"history": 5, "bogus": 1, "default_skip_ratio": 0.3})
    assert "history" not in str(e.value)
    for bad in ({"history": 1}, {"max_skips": -1}, {"skip_ratio": 1.0}, {"threshold": -0.1}, {"threshold": float("nan")}):
        with pytest.raises(ValueError):
            LatexConfig(**bad)
    # threshold wins; with no threshold the default skip ratio (also when skip_ratio is None) picks the threshold.
    settings = {"calibration": {calibration_key(5, 2): {"0.2": 0.1, "0.4": 0.3}}}
    assert resolve_threshold(settings, LatexConfig()) == pytest.approx(0.2)
    assert resolve_threshold(settings, LatexConfig(skip_ratio=None)) == pytest.approx(0.2)
    assert resolve_threshold(settings, LatexConfig(threshold=0.05, skip_ratio=0.4)) == 0.05
    assert resolve_threshold(settings, LatexConfig(skip_ratio=0.0)) == 0.0


def test_embedded_latex_json_declares_the_latex_config_defaults():
    settings = json.loads(EMBEDDED_LATEX.read_text())
    assert LatexConfig.from_dict(settings["defaults"]) == LatexConfig()
    assert settings["defaults"] == LatexConfig().to_dict()
    # The defaults are calibrated in the file, so the sender's default setting resolves without a threshold.
    assert calibration_key(LatexConfig.history, LatexConfig.max_skips) in settings["calibration"]
    assert 0 < resolve_threshold(settings, LatexConfig()) < 1


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


@pytest.fixture(scope="module")
def tiny_latex(tmp_path_factory):
    """(model directory, latex settings) of :func:`_tiny_latent256_dir`, made once for this module's tests."""
    return _tiny_latent256_dir(tmp_path_factory.mktemp("latex"))


def _tiny_latent256_dir(tmp_path):
    """A per-view torch encoder with a 256-d code (the tiny avatar's), exported; its early model trained on
    random sequences. Returns the model directory and the written latex settings."""
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


def test_train_latex_exports_a_parity_checked_early_model_and_calibrates(tiny_latex):
    d, s = tiny_latex
    assert (d / "early.onnx").exists() and (d / "latex.json").exists()
    assert s["train"]["onnx_parity_max_rel_err"] < 1e-3
    written = json.loads((d / "latex.json").read_text())
    assert LatexConfig.from_dict(written["defaults"]) == LatexConfig()
    assert calibration_key(LatexConfig.history, LatexConfig.max_skips) in written["calibration"]
    cal = written["calibration"]["T3_max4"]
    ratios = sorted(float(r) for r in cal)
    assert ratios and all(cal[f"{a:g}"] <= cal[f"{b:g}"] for a, b in zip(ratios, ratios[1:]))



class _CountingEncoder:
    """An :class:`encoder.runtime.HmcEncoder` that counts its runs and advances a fake clock by ``ms`` per run."""

    def __init__(self, inner, clock, ms: float):
        self.inner, self.clock, self.ms, self.calls = inner, clock, ms, []
        self.model_dir, self.input_size, self.latent_dim = inner.model_dir, inner.input_size, inner.latent_dim
        self.identity = getattr(inner, "identity", "")

    def reset(self):
        pass

    def encode(self, views):
        self.calls.append(views)
        r = self.inner.encode(views)
        self.clock.now += self.ms / 1e3
        return r


class _FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_latex_encoder_runs_the_full_encoder_exactly_on_keyframes(tiny_latex):
    from encoder.latex import LatexEncoder
    from encoder.runtime import EncodeResult, Encoder, HmcEncoder

    d, _ = tiny_latex
    clock = _FakeClock()
    enc = _CountingEncoder(HmcEncoder(d), clock, ms=30.0)
    gated = LatexEncoder(enc, LatexConfig(threshold=1e-3, history=3, max_skips=0), clock=clock)
    early = gated.early_estimate

    def timed_early(views):  # the early model "costs" 1 ms of the fake clock
        clock.now += 1e-3
        return early(views)

    gated.early_estimate = timed_early
    assert isinstance(gated, Encoder)
    assert (gated.model_dir, gated.input_size, gated.latent_dim) == (Path(d), 32, 256)
    frames = [np.full((3, 32, 32), 100, np.uint8)] * 8 + [np.full((3, 32, 32), 220, np.uint8)] * 4
    out, runs = [], []
    for f in frames:
        before = len(enc.calls)
        out.append(gated.encode(f))
        runs.append(len(enc.calls) - before)
    assert all(isinstance(r, EncodeResult) for r in out)
    keys = [r.keyframe for r in out]
    assert keys[:3] == [True] * 3 and not any(keys[3:8]) and keys[8]  # static frames skipped, the jump is a keyframe
    assert np.allclose(out[5].z, out[2].z, atol=1e-5)  # constant codes extrapolate to themselves
    assert gated.skip_ratio == pytest.approx(1 - sum(keys) / len(keys))
    # A skipped frame costs only the early model: the full encoder ran once per keyframe, on exactly those frames,
    # and each frame's encode_ms is early (1 ms) + full encoder (30 ms) on keyframes only.
    assert runs == [int(k) for k in keys] and gated.keyframes == sum(keys)
    for r in out:
        assert r.encode_ms == pytest.approx(31.0 if r.keyframe else 1.0)
        assert r.stage_ms["early"] == pytest.approx(1.0)
        assert ("fusion" in r.stage_ms) == r.keyframe
    # The sender's gate is the evaluation's gate: its distances through gate_schedule give its keyframes.
    dist = np.array([r.distance for r in out])
    assert np.isinf(dist[0]) and np.isfinite(dist[1:]).all()
    assert np.array_equal(gate_schedule(dist, gated.threshold, 3, 0), np.array(keys))
    # reset() starts a new sequence: T keyframes again, counts from zero.
    gated.reset()
    assert [gated.encode(frames[0]).keyframe for _ in range(4)] == [True, True, True, False]
    assert gated.frames == 4 and gated.keyframes == 3


def test_expected_encode_time_formula():
    from encoder.latex_eval import expected_encode_ms

    early = np.array([0.5, 1.5, 1.0, 1.0])  # mean 1
    full = np.array([20.0, 40.0, 25.0, 35.0])  # mean 30
    assert expected_encode_ms(early, full, np.array([True, False, False, True])) == pytest.approx(1 + 0.5 * 30)
    assert expected_encode_ms(early, full, np.ones(4, bool)) == pytest.approx(31.0)
    assert expected_encode_ms(early, full, np.zeros(4, bool)) == pytest.approx(1.0)


def test_latex_cli_help_shows_defaults_and_examples(capsys):
    from avcall.cli import build_parser, main
    from encoder.early import EarlyConfig

    for what, must in (("train", ("5%..70%", "(default: 3000)", "examples:", "avcall train latex --identity S1")),
                       ("eval", ("(default: 5)", "(default: 2)", "examples:", "avcall eval latex --identity S1"))):
        with pytest.raises(SystemExit) as e:
            main([what, "latex", "--help"])
        assert e.value.code == 0
        text = capsys.readouterr().out
        assert "%%" not in text
        for m in must:
            assert m in text, (what, m)
    args = build_parser().parse_args(["train", "latex"])
    assert args.steps == EarlyConfig().steps
    args = build_parser().parse_args(["eval", "latex"])
    assert (args.history, args.max_skips) == (LatexConfig.history, LatexConfig.max_skips)


# ---------------------------------------------------------------------------- the sender flags its messages
@pytest.mark.timeout(120)
def test_sender_flags_keyframes_and_extrapolated_frames(tmp_path, tiny_latex):
    from runtime.config import SenderConfig, SourceConfig
    from runtime.launch import Worker
    from runtime_support import make_pattern_recording
    from transport import EXTRAPOLATED, KEYFRAME, decode_frame

    d, _ = tiny_latex
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
                               encoder_dir=str(d), report_path=str(tmp_path / f"{name}.json"),
                               latex=LatexConfig(threshold=thr, history=3, max_skips=2))
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
