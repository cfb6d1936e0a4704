"""Every option of send/receive/call/demo/bench e2e reaches the config it is meant for.

The parser is the real ``avcall`` parser; each test checks the config dataclass
the handler would run with (a flag that is parsed but dropped fails here).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from avcall.call_cmds import call_config, receive_config, send_config
from avcall.cli import build_parser
from avcore.errors import UsageError
from encoder.latex import LatexConfig
from runtime.bench import E2EBenchConfig
from runtime.call import CallConfig
from runtime.config import ReceiverConfig, SenderConfig, SourceConfig

ROOT = Path(__file__).resolve().parent.parent


def parse(*argv):
    return build_parser().parse_args([str(a) for a in argv])


def test_send_flags_reach_the_sender_config(tmp_path):
    hmc = tmp_path / "s.hmc"
    hmc.write_bytes(b"")  # existence is all the config checks; the sender opens it
    cfg = send_config(parse("send", "--source", "replay", hmc, "--connect", "tcp://127.0.0.1:6000", "--seconds", "2.5",
                            "--stream-id", "carol", "--f32", "--tap", tmp_path / "t.hmc", "--no-loop", "--fps", "45",
                            "--latex", "--latex-threshold", "0.7", "--latex-history", "4", "--latex-max-skips", "3",
                            "--encoder", "E", "--clock", "tcp://127.0.0.1:6005", "--report", "r.json"))
    assert isinstance(cfg, SenderConfig)
    assert (cfg.endpoint, cfg.bind, cfg.clock_endpoint) == ("tcp://127.0.0.1:6000", False, "tcp://127.0.0.1:6005")
    assert (cfg.seconds, cfg.stream_id, cfg.latent_dtype, cfg.encoder_dir) == (2.5, "carol", "<f4", "E")
    assert cfg.tap_path == str(tmp_path / "t.hmc") and cfg.report_path == "r.json"
    assert cfg.source.kind == "replay" and cfg.source.path == str(hmc) and cfg.source.loop is False
    assert cfg.source.replay_fps == 45.0  # --fps resamples a replay; the capture rate stays the default
    assert cfg.latex == LatexConfig(history=4, threshold=0.7, max_skips=3)


def test_send_defaults_come_from_the_configs():
    cfg = send_config(parse("send", "--bind", "tcp://127.0.0.1:*", "--identity", "S2", "--seed", "7", "--camera", "0"))
    default = SenderConfig()
    assert cfg.latex is None and cfg.latent_dtype == default.latent_dtype and cfg.seconds == default.seconds
    assert cfg.stream_id == default.stream_id and cfg.bind is True
    assert cfg.source == SourceConfig(identity="S2", seed=7)
    cfg = send_config(parse("send", "--connect", "tcp://h:1", "--latex", "--latex-skip-ratio", "0.4"))
    assert cfg.latex == LatexConfig(skip_ratio=0.4)
    cfg = send_config(parse("send", "--connect", "tcp://h:1", "--source", "camera", "--camera", "0,1,2", "--fps", "60"))
    assert cfg.source.camera_ids == (0, 1, 2) and cfg.source.fps == 60.0


@pytest.mark.parametrize("argv, message", [
    (["--source", "replay"], "exactly one"),
    (["--identity", "S9"], "S9"),
    (["--latex-threshold", "0.5"], "without --latex"),
    (["--latex", "--latex-history", "1"], "history"),
    (["--stream-id", "a b"], "stream id"),
    (["--source", "replay", "/nonexistent.hmc"], "no such recording"),
])
def test_send_bad_values_are_usage_errors(argv, message):
    with pytest.raises(UsageError, match=message):
        send_config(parse("send", "--connect", "tcp://h:1", *argv))


def test_receive_flags_reach_the_receiver_config(tmp_path):
    cfg = receive_config(parse("receive", "--connect", "tcp://127.0.0.1:6000", "--out", tmp_path / "v.mp4",
                               "--png-dir", tmp_path / "png", "--size", "256", "--yaw", "10", "--period", "4",
                               "--idle-stop", "5", "--seconds", "9", "--stream-id", "bob", "--avatar", "A",
                               "--histogram", "h.png", "--status", "s.json"))
    assert isinstance(cfg, ReceiverConfig)
    assert (cfg.endpoint, cfg.bind, cfg.size, cfg.seconds, cfg.stop_after_idle_s) == ("tcp://127.0.0.1:6000", False, 256, 9.0, 5.0)
    assert (cfg.viewer.yaw_deg, cfg.viewer.period_s, cfg.stream_id, cfg.avatar_dir) == (10.0, 4.0, "bob", "A")
    assert cfg.video_path == str(tmp_path / "v.mp4") and cfg.png_dir == str(tmp_path / "png")
    assert (cfg.histogram_path, cfg.status_path) == ("h.png", "s.json")
    for bad in (["--size", "0"], ["--size", "100000"], ["--out", "/sys/rx.mp4"], ["--out", tmp_path / "rx.txt"]):
        with pytest.raises(UsageError):
            receive_config(parse("receive", "--bind", "tcp://127.0.0.1:*", *bad))


def test_call_flags_reach_the_call_config(tmp_path):
    cfg = call_config(parse("call", "--seconds", "3", "--fps", "20", "--out", tmp_path / "c", "--size", "256",
                            "--identity-b", "S2", "--seed-a", "5", "--seed-b", "6", "--latex", "--latex-threshold", "0.9",
                            "--latex-max-skips", "1", "--secure", "--encoder", "E", "--avatar", "A"))
    assert isinstance(cfg, CallConfig)
    assert (cfg.seconds, cfg.fps, cfg.out_dir, cfg.size, cfg.secure) == (3.0, 20.0, str(tmp_path / "c"), 256, True)
    a, b = cfg.parties
    assert (a.identity, a.seed, b.identity, b.seed) == ("S1", 5, "S2", 6)
    assert cfg.latex == LatexConfig(threshold=0.9, max_skips=1)
    assert (cfg.encoder_dir, cfg.avatar_dir) == ("E", "A")
    demo = call_config(parse("demo", "--out", tmp_path / "d"))
    assert demo.seconds == 8.0 and demo.latex is None and demo.parties == CallConfig().parties


@pytest.mark.parametrize("argv", [["--seconds", "0"], ["--seconds", "-1"], ["--seconds", "inf"], ["--fps", "0"]])
def test_call_bad_numbers_are_parse_errors(argv):
    with pytest.raises(SystemExit):
        parse("call", *argv)


def test_bench_e2e_flags_reach_the_bench_config():
    from avcall.args import latex_from_args

    a = parse("bench", "e2e", "--seconds", "5", "--two-way", "--latex", "--latex-max-skips", "4", "--size", "256",
              "--floor-seconds", "1")
    cfg = E2EBenchConfig(seconds=a.seconds, two_way=a.two_way, size=a.size, floor_s=a.floor_seconds,
                         latex=latex_from_args(a))
    assert cfg.latex == LatexConfig(max_skips=4) and cfg.two_way and cfg.seconds == 5.0


def _cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "avcall.cli", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("argv", [
    ["call", "--seconds", "0.3", "--replay-a", "/nonexistent.hmc"],
    ["call", "--identity-b", "S9"],
    ["send", "--connect", "tcp://127.0.0.1:1", "--identity", "S2"],
    ["receive", "--bind", "tcp://127.0.0.1:*", "--out", "/sys/rx.mp4"],
    ["send", "--connect", "tcp://127.0.0.1:1", "--camera", "abc"],
    ["send", "--connect", "abc"],
    ["send", "--connect", "udp://127.0.0.1:5000"],
    ["send", "--connect", "tcp://256.1.1.1:5000"],
    ["send", "--connect", "tcp://127.0.0.1:"],
    ["send", "--connect", "tcp://127.0.0.1:99999"],
    ["receive", "--bind", "tcp://127.0.0.1:65535"],
    ["send", "--connect", "tcp://127.0.0.1:5000", "--clock", "tcp://127.0.0.1:5000"],
    ["send", "--connect", "tcp://nope.invalid:5000", "--seconds", "1"],
])
def test_bad_input_is_one_line_and_nonzero(argv, tmp_path):
    r = _cli(*argv, "--out" if argv[0] == "call" else "--report", tmp_path / ("o" if argv[0] == "call" else "r.json"))
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if not ln.startswith(("usage:", " "))]  # argparse's usage block
    assert "Traceback" not in r.stderr and len(lines) == 1 and ": error: " in lines[0], r.stderr
    assert not list(tmp_path.glob("o/raw/*.mp4"))  # nothing started


def test_version_and_models():
    r = _cli("--version")
    assert r.returncode == 0 and r.stdout.startswith("avcall ")
    r = _cli("models", "--json")
    import json

    models = json.loads(r.stdout)
    kinds = {(m["kind"], m["identity"]) for m in models}
    assert ("decoder", "S1") in kinds and ("encoder", "S1") in kinds
    assert all(m["model_id"] == f"{m['identity']}/z{m['latent_dim']}" for m in models)
    from encoder.runtime import default_arch

    defaults = [m for m in models if m["kind"] == "encoder" and m["default"]]  # one per identity: defaults.json's
    assert [(m["identity"], m["name"]) for m in defaults if m["identity"] == "S1"] == [("S1", default_arch("S1"))]
    assert len({m["identity"] for m in defaults}) == len(defaults)
    r = _cli("models")
    assert r.returncode == 0 and f"{default_arch('S1')} (+LATEX), sender's default" in r.stdout


def test_port_in_use_is_one_line(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = _cli("receive", "--bind", f"tcp://127.0.0.1:{port}", "--clock", "tcp://127.0.0.1:*", "--seconds", "1",
                 "--report", tmp_path / "r.json")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "in use" in r.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "r.json").exists()
