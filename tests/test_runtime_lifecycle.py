"""Processes end when they should: a stopped or killed `avcall call` takes its workers with it and keeps what was
captured; a sender or receiver with nobody at the other end says so and exits non-zero. Real processes throughout."""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parent.parent


def _avcall(*args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "avcall.cli", *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _workers_of(pid: int) -> list[int]:
    """Pids of the `runtime.proc` worker processes whose parent is ``pid``."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and b"runtime.proc" in cmd:
            out.append(int(d.name))
    return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited


def _wait(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _presented(out: Path) -> int:
    total = 0
    for f in (out / "logs").glob("*_receiver.status.json"):
        try:
            total += min(1, json.loads(f.read_text()).get("presented", 0) // 5)
        except (OSError, json.JSONDecodeError):
            pass
    return total


def _start_call(tiny_models, pattern_hmc, out: Path) -> tuple[subprocess.Popen, list[int]]:
    call = _avcall("call", "--seconds", "120", "--out", out, "--size", "96", "--encoder", tiny_models[0],
                   "--avatar", tiny_models[1], "--replay-a", pattern_hmc, "--replay-b", pattern_hmc)
    pids = _wait(lambda: (lambda p: p if len(p) == 4 else None)(_workers_of(call.pid)), 60, "four workers")
    _wait(lambda: _presented(out) == 2, 90, "both receivers presenting")
    return call, pids


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stopped_call_stops_its_workers_and_keeps_what_was_captured(sig, tiny_models, pattern_hmc, tmp_path):
    out = tmp_path / "call"
    call, pids = _start_call(tiny_models, pattern_hmc, out)
    call.send_signal(sig)
    stdout, stderr = call.communicate(timeout=90)
    assert call.returncode == 130, stderr
    assert not [p for p in pids if _alive(p)], "workers outlived the call"
    report = json.loads((out / "call_report.json").read_text())
    assert report["interrupted"] is True
    assert set(report["streams"]) == {"alice", "bob"} and all(s["presented"] >= 5 for s in report["streams"].values())
    import av

    for viewer in ("alice", "bob"):
        v = report["videos"][viewer]
        with av.open(v["path"]) as f:  # a finished, readable file
            assert sum(1 for _ in f.decode(video=0)) == v["frames"] >= 5
    assert "latency report:" in stdout and "interrupted" in stderr


def test_killed_call_takes_its_workers_with_it(tiny_models, pattern_hmc, tmp_path):
    call, pids = _start_call(tiny_models, pattern_hmc, tmp_path / "call")
    call.kill()  # SIGKILL: no cleanup code runs in the launcher
    call.wait()
    _wait(lambda: not [p for p in pids if _alive(p)], 30, "the orphaned workers to exit")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sender_with_nobody_listening_says_so_and_fails(tiny_models, pattern_hmc):
    port = _free_port()
    p = _avcall("send", "--source", "replay", pattern_hmc, "--connect", f"tcp://127.0.0.1:{port}",
                "--clock", f"tcp://127.0.0.1:{_free_port()}", "--seconds", "1.5", "--encoder", tiny_models[0])
    stdout, stderr = p.communicate(timeout=60)
    assert p.returncode == 3, stderr
    assert "waiting for a receiver" in stderr and "nothing was delivered" in stderr
    assert "connected" not in stdout.replace("while a receiver was connected", "")


def test_receiver_with_nobody_sending_says_so_and_fails(tiny_models, tmp_path):
    port = _free_port()
    p = _avcall("receive", "--connect", f"tcp://127.0.0.1:{port}", "--clock", f"tcp://127.0.0.1:{_free_port()}",
                "--seconds", "1.5", "--avatar", tiny_models[1], "--size", "64", "--out", tmp_path / "rx.mp4")
    stdout, stderr = p.communicate(timeout=60)
    assert p.returncode == 3, stderr
    assert "waiting for a sender" in stderr and "nothing was presented" in stderr
    assert "video:" not in stdout and not (tmp_path / "rx.mp4").exists()  # no claim of a file that is not there


def test_receivers_started_by_a_session_stop_when_idle(tiny_models, pattern_hmc, tmp_path):
    """A session's receivers have a bounded idle time: with the sender gone, the receiver ends by itself."""
    from runtime.config import ReceiverConfig, SenderConfig, SourceConfig
    from runtime.launch import Worker

    rc = ReceiverConfig(stream_id="alice", endpoint="tcp://127.0.0.1:*", clock_endpoint="tcp://127.0.0.1:*",
                        avatar_dir=str(tiny_models[1]), size=64, stop_after_idle_s=1.0,
                        codec_dir=str(tiny_models[0]))  # the tiny encoder's codec tables (coded frames)
    rx = Worker("rx", rc, tmp_path).start()
    try:
        st = rx.wait_status(lambda s: bool(s.get("endpoint")), 60)
        sc = SenderConfig(stream_id="alice", endpoint=st["endpoint"], clock_endpoint=st["clock_endpoint"],
                          source=SourceConfig(kind="replay", path=str(pattern_hmc)), encoder_dir=str(tiny_models[0]),
                          seconds=1.0)
        tx = Worker("tx", sc, tmp_path).start()
        assert tx.wait(60) == 0
        assert rx.wait(30) == 0  # ended by its idle bound, not killed
    finally:
        rx.kill()


def test_sender_refused_by_curve_names_the_key_problem(tiny_models, pattern_hmc, tmp_path):
    """A sender whose key the receiver does not allow hears why, in words, and exits non-zero."""
    from runtime.config import ReceiverConfig, SecureConfig
    from runtime.launch import Worker
    from transport import generate_keypair

    rx_pub, rx_sec = generate_keypair(tmp_path / "keys", "viewer")
    _, mallory_sec = generate_keypair(tmp_path / "keys", "mallory")
    generate_keypair(tmp_path / "allowed", "alice")  # the only key the receiver accepts
    rc = ReceiverConfig(stream_id="alice", endpoint="tcp://127.0.0.1:*", clock_endpoint="tcp://127.0.0.1:*",
                        avatar_dir=str(tiny_models[1]), size=64,
                        secure=SecureConfig(secret_key=str(rx_sec), allowed_dir=str(tmp_path / "allowed")))
    rx = Worker("rx", rc, tmp_path).start()
    try:
        st = rx.wait_status(lambda s: bool(s.get("endpoint")), 60)
        p = _avcall("send", "--source", "replay", pattern_hmc, "--connect", st["endpoint"], "--clock",
                    st["clock_endpoint"], "--seconds", "2", "--encoder", tiny_models[0], "--secure", "--key",
                    mallory_sec, "--server-key", rx_pub)
        stdout, stderr = p.communicate(timeout=60)
        assert p.returncode == 3, stderr
        assert "nothing was delivered" in stderr and "refused this sender's key" in stderr
        assert rx.status()["presented"] == 0
    finally:
        rx.kill()


def test_call_whose_receiver_cannot_start_fails_in_one_line(tiny_models, pattern_hmc, tmp_path):
    """A worker that dies at start-up (here: a damaged decoder file) ends the call with its last log line and the log
    path, not a traceback, and leaves no process behind."""
    import shutil

    broken = tmp_path / "avatar"
    shutil.copytree(tiny_models[1], broken)
    (broken / "decoder.onnx").write_bytes(b"not an onnx model")
    call = _avcall("call", "--seconds", "2", "--out", tmp_path / "call", "--size", "64", "--encoder", tiny_models[0],
                   "--avatar", broken, "--replay-a", pattern_hmc, "--replay-b", pattern_hmc)
    _, stderr = call.communicate(timeout=120)
    assert call.returncode == 1, stderr
    assert "Traceback" not in stderr and "failed:" in stderr and "_receiver exited with" in stderr and ".log" in stderr
    assert not _processes_mentioning(str(tmp_path))  # no worker of this call is left running


def _processes_mentioning(text: str) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if text.encode() in (d / "cmdline").read_bytes() and _alive(int(d.name)):
                    out.append(int(d.name))
            except OSError:
                continue
    return out


@pytest.mark.parametrize("render", ["warp", "warp2x"])
def test_receiver_without_a_trained_renderer_refuses_display_modes_in_one_line(tiny_models, tmp_path, render):
    """The tiny avatar has no renderer.onnx / warp.onnx: ``--render warp`` fails at start-up, in one line that says
    how to train them, before any socket or engine exists."""
    port = _free_port()
    p = _avcall("receive", "--bind", f"tcp://127.0.0.1:{port}", "--seconds", "5", "--avatar", tiny_models[1],
                "--size", "64", "--render", render)
    stdout, stderr = p.communicate(timeout=60)
    assert p.returncode == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "renderer.onnx" in lines[0] and "avcall train renderer --identity" in lines[0] and "Traceback" not in stderr
    assert f"--render {render}" in lines[0]
    assert "waiting for a sender" not in stdout + stderr
