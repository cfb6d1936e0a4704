"""Two-party calls, the e2e bench and the trained-encoder integration, with real processes."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from runtime.call import CallConfig, PartyConfig, run_call, summary_lines
from runtime_support import presented, receiver_config, sender_config

pytestmark = pytest.mark.timeout(120)


def _frames(path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, f = cap.read()
        if not ok:
            return out
        out.append(f)


def test_two_party_call_secure_writes_both_views_with_the_remote_input(tiny_models, pattern_hmc, tmp_path):
    cfg = CallConfig(out_dir=str(tmp_path / "call"), seconds=3.0, encoder_dir=str(tiny_models[0]),
                     avatar_dir=str(tiny_models[1]), size=192, secure=True,
                     parties=(PartyConfig("alice", replay=str(pattern_hmc)), PartyConfig("bob", replay=str(pattern_hmc))))
    rep = run_call(cfg)
    assert set(rep["streams"]) == {"alice", "bob"}
    for name, s in rep["streams"].items():
        assert s["presented"] >= 20, (name, s)
        assert s["transport"]["bad"] == {}
        assert s["kbit_per_s"] <= 150
        assert s["transport"]["events"].get("handshake_succeeded", 0) >= 1  # CURVE was on
    assert set(rep["videos"]) == {"alice", "bob"}
    for viewer, v in rep["videos"].items():
        frames = _frames(v["path"])
        assert len(frames) == v["frames"] >= 20
        assert frames[0].shape == (192, 192 + 64, 3)  # rendered view | remote HMC strip
        strip = np.stack([f[:, 192:] for f in frames[len(frames) // 2:]]).astype(float)
        assert strip.std(axis=0).mean() > 5  # the remote input moves
        face = np.stack([f[:, :192] for f in frames[len(frames) // 2:]]).astype(float)
        assert face.std(axis=0).mean() > 0.5  # and so does the rendered avatar
    report = json.loads((tmp_path / "call" / "call_report.json").read_text())
    assert report["e2e_ms"]["p50"] > 0 and (tmp_path / "call" / "latency.png").is_file()
    assert len(summary_lines(report)) == 4  # two lines per stream


def test_bench_e2e_reports_the_issue_metrics(tiny_models, tmp_path, monkeypatch, capsys):
    import tempfile

    from runtime.bench import E2EBenchConfig, bench_e2e

    monkeypatch.setenv("AVCALL_CACHE", str(tmp_path / "cache"))  # the bench's short recording goes here
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the bench's own working folder goes
    r = bench_e2e(E2EBenchConfig(seconds=3.0, warmup_s=1.0, encoder_dir=str(tiny_models[0]),
                                 avatar_dir=str(tiny_models[1]), size=128, floor_s=1.0))
    assert list(scratch.iterdir()) == [] and r["out_dir"] == ""  # no temporary folder left behind
    assert "streaming:" in capsys.readouterr().err  # not silent while it runs
    for key in ("e2e_ms_p50", "e2e_ms_p99", "runtime_overhead_ms_p99", "fps", "dropped", "encode_ms_p50",
                "network_ms_p50", "decode_ms_p50", "render_ms_p50", "present_ms_p50"):
        assert key in r and r[key] is not None, key
    assert 0 < r["e2e_ms_p50"] <= r["e2e_ms_p99"]
    assert 0 < r["bandwidth_kbps"]["alice"] <= 150
    st = r["streams"]["alice"]
    assert st["frames"] >= 5 and r["fps"] > 0  # frames were presented (a rate bound would depend on the machine's load)
    assert 0 < r["transport_floor_ms_p50"] <= r["transport_floor_ms_p99"]
    json.dumps(r)


@pytest.mark.parametrize("plain", [False, True], ids=["coded", "plain"])
def test_demo_command_prints_where_the_results_are(tiny_models, pattern_hmc, tmp_path, capsys, plain):
    """``avcall demo`` end to end; with ``--plain`` both senders send plain float16 frames, without it coded ones
    (the tiny encoder has codec tables), as their own reports say."""
    from avcall.cli import build_parser

    out = tmp_path / "demo"
    args = build_parser().parse_args(["demo", "--seconds", "2", "--out", str(out), "--size", "128",
                                 "--encoder", str(tiny_models[0]), "--avatar", str(tiny_models[1]),
                                 "--replay-a", str(pattern_hmc), "--replay-b", str(pattern_hmc)]
                                + (["--plain"] if plain else []))
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "alice's view:" in printed and "bob's view:" in printed and "latency report:" in printed
    assert (out / "alice_sees_bob.mp4").is_file()
    report = json.loads((out / "call_report.json").read_text())
    for name in ("alice", "bob"):
        tx = json.loads((out / "raw" / f"{name}_sender.json").read_text())
        assert tx["frames_sent"] >= 10, (name, tx)
        per_frame = tx["bytes_sent"] / tx["frames_sent"]
        if plain:
            assert tx["codec"] is None, (name, tx["codec"])
            assert per_frame > 500, (name, per_frame)  # a 256-d float16 code is 512 bytes alone
        else:
            c = tx["codec"]
            assert c is not None and c["intra_frames"] >= 1 and c["intra_frames"] + c["predicted_frames"] == tx["frames_sent"]
            assert per_frame < 300, (name, per_frame)
        assert report["streams"][name]["coded"] is (not plain)
        assert report["streams"][name]["presented"] > 0
    assert ("(plain frames)" in printed) is plain


def test_an_encoder_without_codec_tables_still_calls_with_plain_frames(tiny_models, pattern_hmc, tmp_path, capsys):
    """A freshly trained encoder has no codec tables yet: its senders send plain frames, and the receivers must not
    refuse to start for want of tables they do not need."""
    import shutil

    from avcall.cli import build_parser

    enc = tmp_path / "encoder"
    shutil.copytree(tiny_models[0], enc)
    for name in ("codec.json", "codec.npz"):
        (enc / name).unlink(missing_ok=True)
    out = tmp_path / "demo"
    args = build_parser().parse_args(["demo", "--seconds", "2", "--out", str(out), "--size", "128", "--plain",
                                      "--encoder", str(enc), "--avatar", str(tiny_models[1]),
                                      "--replay-a", str(pattern_hmc), "--replay-b", str(pattern_hmc)])
    assert args.func(args) == 0, capsys.readouterr().err
    report = json.loads((out / "call_report.json").read_text())
    for name in ("alice", "bob"):
        assert report["streams"][name]["coded"] is False and report["streams"][name]["presented"] > 0


@pytest.mark.parametrize("command", ["call", "demo"])
def test_plain_reaches_both_senders(tiny_models, tmp_path, command):
    """``--plain`` (and its absence) reaches the sender config of both parties, and survives the config's dict round
    trip (how a call config is written and read back)."""
    from avcall.call_cmds import call_config
    from avcall.cli import build_parser
    from avcore.errors import UsageError
    from runtime.call import plan_call

    base = [command, "--out", str(tmp_path / command), "--encoder", str(tiny_models[0]), "--avatar", str(tiny_models[1])]
    for extra, coded in (([], True), (["--plain"], False)):
        cfg = call_config(build_parser().parse_args(base + extra))
        assert cfg.codec.coded is coded
        again = CallConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
        assert again == cfg and isinstance(again.parties[0], PartyConfig)
        links = plan_call(cfg, tmp_path / command / ("plain" if extra else "coded"))
        assert [ln.sender.codec.coded for ln in links] == [coded, coded]
        assert {ln.sender.stream_id for ln in links} == {"alice", "bob"}
    with pytest.raises(UsageError, match="unknown CodecConfig fields: plain"):
        CallConfig.from_dict({**CallConfig().to_dict(), "codec": {"plain": True}})
    with pytest.raises(UsageError, match="unknown PartyConfig fields: colour"):
        CallConfig.from_dict({**CallConfig().to_dict(), "parties": [{"name": "a", "colour": 1}, {"name": "b"}]})


def test_call_runs_the_trained_model_layouts(tmp_path, pattern_hmc, workers):
    """Model directories as ``encoder.export.save_model`` and ``decoder.export.save_model`` write them
    (tiny, untrained configurations) behind a real sender and receiver."""
    pytest.importorskip("torch")
    from decoder.config import DecoderConfig
    from decoder.export import save_model as save_decoder
    from decoder.model import AvatarDecoder
    from encoder.export import save_model as save_encoder
    from encoder.model import build_encoder

    enc_dir, dec_dir = tmp_path / "enc", tmp_path / "dec"
    save_encoder(build_encoder("tiny"), enc_dir, identity="S1")  # 32x32 input, z of 8; trained for S1's latent space
    dcfg = DecoderConfig(latent_dim=8, geometry_basis=4, geometry_hidden=16, texture_size=32, texture_seed=4,
                         texture_channels=(8, 8), view_inject=1)
    save_decoder(AvatarDecoder(dcfg), dec_dir, studio_identity="S1")
    models = (enc_dir, dec_dir)
    rx = workers("rx", receiver_config(models, tmp_path), tmp_path)
    st = rx.wait_status(lambda s: bool(s.get("endpoint")), 60)
    workers("tx", sender_config(models, pattern_hmc, tmp_path, st), tmp_path)  # 192x192 views resized to 32x32
    st = rx.wait_status(lambda s: presented(s) >= 10, 60)
    assert st["torch_loaded"] is False and st["transport"]["bad"] == {}


def test_bench_e2e_reports_the_display_clock_figures(tiny_models, tmp_path, monkeypatch):
    """``bench e2e --render warp2x`` (fake engines behind real processes): the display figures join the JSON, and the
    session stops a receiver that keeps presenting new views of the last code."""
    from runtime.bench import E2EBenchConfig, bench_e2e
    from runtime_support import TESTS_DIR, neural_avatar

    monkeypatch.setenv("AVCALL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PYTHONPATH", str(TESTS_DIR))  # the receiver processes import the fake engines
    avatar = neural_avatar(tiny_models[1], tmp_path / "avatar")
    r = bench_e2e(E2EBenchConfig(seconds=2.0, warmup_s=1.0, encoder_dir=str(tiny_models[0]), avatar_dir=str(avatar),
                                 size=64, render="warp2x", display_hz=60.0, engine_module="fake_engine",
                                 out_dir=str(tmp_path / "bench")))
    assert r["render_mode"] == "warp2x" and r["display_hz"] == 60.0
    for key in ("display_fps", "generate_ms_p50", "warp_ms_p50", "view_to_present_ms_p50", "view_to_present_ms_p99",
                "e2e_new_code_ms_p50", "e2e_warped_ms_p50", "sync_ms_p50", "sync_ms_p99", "missed_ticks"):
        assert r.get(key) is not None, key
    assert r["frames_generated"] > 0 and r["frames_warped"] > 0
    assert r["view_to_present_ms_p50"] <= r["view_to_present_ms_p99"]
    assert r["e2e_ms_p50"] > 0 and r["display_fps"] == r["fps"]
    json.dumps(r)
    rx = json.loads((tmp_path / "bench" / "alice_rx.json").read_text())
    assert rx["render"] == "warp2x" and rx["display"]["workers"] == 2
