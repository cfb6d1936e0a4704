"""Presenters and the video writer: real encoders writing real files, read back with PyAV and OpenCV."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from runtime import presenters
from runtime.presenters import (
    PngPresenter,
    VideoPresenter,
    VideoWriter,
    check_output_dir,
    check_video_path,
    h264_encoder,
)

av = pytest.importorskip("av")

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_000_000_000


def _boxes(path: Path) -> list[str]:
    """Top-level ISO-BMFF boxes of an mp4, in file order."""
    data = Path(path).read_bytes()
    out, i = [], 0
    while i + 8 <= len(data):
        size = int.from_bytes(data[i:i + 4], "big")
        kind = data[i + 4:i + 8].decode("latin-1")
        if size == 1:
            size = int.from_bytes(data[i + 8:i + 16], "big")
        elif size == 0:
            size = len(data) - i
        assert size >= 8, f"corrupt box {kind!r} at {i}"
        out.append(kind)
        i += size
    return out


def _probe(path: Path) -> dict:
    """What ffprobe would say: codec, pix_fmt, size, and every frame decoded (RGB)."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        info = {"codec": s.codec_context.name, "pix_fmt": s.codec_context.pix_fmt,
                "size": (s.codec_context.width, s.codec_context.height)}
        info["frames"] = [f.to_ndarray(format="rgb24") for f in c.decode(s)]
    return info


def _colour(k: int) -> np.ndarray:
    return np.array([(60 * k) % 256, 200, 255 - (40 * k) % 256], np.uint8)


def _assert_shareable(path: Path, n: int) -> dict:
    info = _probe(path)
    assert info["codec"] == "h264" and info["pix_fmt"] == "yuv420p"
    assert len(info["frames"]) == n
    boxes = _boxes(path)
    assert "moov" in boxes and "mdat" in boxes and boxes.index("moov") < boxes.index("mdat"), boxes  # +faststart
    return info


@pytest.fixture
def fresh_encoder_lookup():
    h264_encoder.cache_clear()
    presenters._warned_fallback = False
    yield
    h264_encoder.cache_clear()
    presenters._warned_fallback = False


def test_pyav_has_an_h264_encoder():
    assert h264_encoder() in ("libx264", "h264")


def test_video_presenter_writes_h264_yuv420p_faststart(tmp_path):
    vp = VideoPresenter(tmp_path / "v.mp4", fps=10.0)
    assert vp.codec == "h264"
    for seq, dt_ms in [(0, 0), (1, 100), (2, 400), (3, 500)]:  # a 200 ms gap after seq 1: seq 1 held
        vp.present(np.broadcast_to(_colour(seq), (64, 96, 3)).copy(), T0 + dt_ms * 1_000_000, seq)
    vp.close()
    assert vp.frame_seqs == [0, 1, 1, 1, 2, 3]
    info = _assert_shareable(tmp_path / "v.mp4", 6)
    assert info["size"] == (96, 64)
    for frame, seq in zip(info["frames"], vp.frame_seqs):  # RGB order kept (a swapped R/B would fail here)
        np.testing.assert_allclose(frame[8:-8, 8:-8].reshape(-1, 3).mean(0), _colour(seq), atol=6)
    assert vp.result() == {"path": str(tmp_path / "v.mp4"), "frames_written": 6, "ok": True, "error": None,
                           "codec": "h264", "fps": 10.0}


def test_odd_frame_sizes_are_padded_to_even(tmp_path):
    img = np.zeros((45, 63, 3), np.uint8)
    img[:, :32] = (255, 0, 0)
    img[:, 32:] = (0, 0, 255)  # the last column is blue: padding repeats it
    with VideoWriter(tmp_path / "odd.mp4", 10) as w:
        for _ in range(3):
            w.write(img)
    assert w.size == (64, 46) and w.frames == 3
    info = _assert_shareable(tmp_path / "odd.mp4", 3)
    assert info["size"] == (64, 46)
    f = info["frames"][1].astype(int)
    assert f[10:35, 4:26, 0].mean() > 200 and f[10:35, 4:26, 2].mean() < 50
    assert f[10:40, 40:, 2].mean() > 200 and f[10:40, 40:, 0].mean() < 50  # right part and padded column blue
    assert f[-1, 4:26, 0].mean() > 180  # padded bottom row repeats the picture, not black


@pytest.mark.parametrize("ext", [".mov", ".mkv"])
def test_other_containers_decode(tmp_path, ext):
    with VideoWriter(tmp_path / f"v{ext}", 10) as w:
        for k in range(4):
            w.write(np.broadcast_to(_colour(k), (32, 32, 3)).copy())
    info = _probe(tmp_path / f"v{ext}")
    assert info["codec"] == "h264" and len(info["frames"]) == 4


def test_compose_writes_a_shareable_video(tmp_path):
    from runtime.compose import compose_call_video
    from runtime_support import make_pattern_recording

    hmc = make_pattern_recording(tmp_path / "tap.hmc", frames=5)
    src = tmp_path / "r.mp4"
    with VideoWriter(src, 10) as w:  # the receiver's own kind of video (H.264) must be readable by compose
        for _ in range(4):
            w.write(np.full((100, 100, 3), 128, np.uint8))
    n = compose_call_video(src, [-1, 0, 3, 4], hmc, tmp_path / "out.mp4", fps=10, title="t", input_title="in")
    assert n == 4
    info = _assert_shareable(tmp_path / "out.mp4", 4)
    assert info["size"] == (134, 100)  # 100 + 33 = 133 wide: padded to 134


def test_falls_back_to_opencv_mp4v_with_one_warning_without_pyav(tmp_path, monkeypatch, caplog,
                                                                   fresh_encoder_lookup):
    import cv2

    monkeypatch.setitem(sys.modules, "av", None)  # `import av` raises ImportError, as where it is not installed
    caplog.set_level(logging.WARNING, logger="runtime.presenters")
    vps = [VideoPresenter(tmp_path / f"v{k}.mp4", fps=10.0) for k in range(2)]
    for vp in vps:
        assert vp.codec == "mp4v"
        for seq in range(3):
            vp.present(np.full((33, 47, 3), 90, np.uint8), T0 + seq * 100_000_000, seq)
        vp.close()
        assert vp.result()["ok"] and vp.result()["frames_written"] == 3
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "mp4v" in warnings[0].getMessage() and "\n" not in warnings[0].getMessage()
    monkeypatch.undo()
    info = _probe(tmp_path / "v0.mp4")
    assert info["codec"] == "mpeg4" and len(info["frames"]) == 3 and info["size"] == (48, 34)
    cap = cv2.VideoCapture(str(tmp_path / "v1.mp4"))
    assert sum(1 for _ in iter(lambda: cap.read()[0], False)) == 3


# ---------------------------------------------------------------------------------------- unwritable outputs

def test_check_video_path_rejects_what_cannot_be_written(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "adir.mp4").mkdir()
    cases = {
        tmp_path / "rx.txt": "not a video container",
        tmp_path / "rx": "no extension",
        tmp_path / "adir.mp4": "is a directory",
        tmp_path / "file" / "rx.mp4": "cannot create directory",
    }
    if Path("/sys").is_dir():
        cases[Path("/sys/rx.mp4")] = "not writable"  # sysfs: no regular files, not even for root
    for path, why in cases.items():
        with pytest.raises(ValueError, match=why) as e:
            check_video_path(path)
        assert "\n" not in str(e.value)
        assert not path.is_file()
    for ext in (".mp4", ".MP4", ".mov", ".mkv"):
        p = tmp_path / "new" / "dir" / f"rx{ext}"
        assert check_video_path(p) == p and p.parent.is_dir() and not p.exists()
    assert list((tmp_path / "new" / "dir").iterdir()) == []  # the probe file is gone
    with pytest.raises(ValueError, match="not a video container"):
        VideoPresenter(tmp_path / "rx.txt")  # the presenter checks too, before any frame


def test_check_output_dir_rejects_what_cannot_be_written(tmp_path):
    (tmp_path / "file").write_text("x")
    cases = {tmp_path / "file": "not a directory", tmp_path / "file" / "pngs": "cannot create directory"}
    if Path("/sys").is_dir():
        cases[Path("/sys")] = "not writable"
    for path, why in cases.items():
        with pytest.raises(ValueError, match=why) as e:
            check_output_dir(path)
        assert "\n" not in str(e.value)
    assert check_output_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b" and (tmp_path / "a" / "b").is_dir()
    with pytest.raises(ValueError, match="cannot create directory"):
        PngPresenter(tmp_path / "file" / "pngs")


def _errors(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_video_writer_failure_logs_one_line_and_reports_no_video(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    path = tmp_path / "v.mp4"
    vp = VideoPresenter(path, fps=10.0)
    path.mkdir()  # the path turns unwritable after the check: the writer fails for real
    for seq in range(20):
        vp.present(np.zeros((32, 32, 3), np.uint8), T0 + seq * 100_000_000, seq)
    vp.close()
    vp.present(np.zeros((32, 32, 3), np.uint8), T0 + 21 * 100_000_000, 21)  # after close: not accepted
    errors = _errors(caplog)
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert errors[0].exc_info is None and "\n" not in errors[0].getMessage() and str(path) in errors[0].getMessage()
    r = vp.result()
    assert r["ok"] is False and r["frames_written"] == 0 and r["error"] and r["path"] == str(path)
    assert vp.written == 0 and vp.dropped == 21 and vp.frame_seqs == []


def test_no_frame_no_file_no_claim(tmp_path):
    vp = VideoPresenter(tmp_path / "v.mp4")
    vp.close()
    assert vp.result()["ok"] is False and vp.result()["frames_written"] == 0 and vp.result()["error"] is None
    assert not (tmp_path / "v.mp4").exists()
    pp = PngPresenter(tmp_path / "pngs")
    pp.close()
    assert pp.result() == {"path": str(tmp_path / "pngs"), "frames_written": 0, "ok": False, "error": None}


def test_png_presenter_writes_and_reports(tmp_path):
    import cv2

    pp = PngPresenter(tmp_path / "pngs")
    for seq in (3, 4, 7):
        pp.present(np.broadcast_to(_colour(seq), (16, 24, 3)).copy(), T0 + seq, seq)
    pp.close()
    assert pp.result() == {"path": str(tmp_path / "pngs"), "frames_written": 3, "ok": True, "error": None}
    names = sorted(p.name for p in (tmp_path / "pngs").iterdir())
    assert names == ["frame_000003.png", "frame_000004.png", "frame_000007.png"]
    img = cv2.imread(str(tmp_path / "pngs" / "frame_000007.png"))[:, :, ::-1]
    assert np.array_equal(img[0, 0], _colour(7))


def test_png_writer_failure_logs_one_line(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    d = tmp_path / "pngs"
    pp = PngPresenter(d)
    d.rmdir()
    d.write_text("now a file")  # imwrite into it fails for real
    for seq in range(10):
        pp.present(np.zeros((8, 8, 3), np.uint8), T0 + seq, seq)
    pp.close()
    errors = _errors(caplog)
    assert len(errors) == 1 and errors[0].exc_info is None and "\n" not in errors[0].getMessage()
    r = pp.result()
    assert r["ok"] is False and r["frames_written"] == 0 and r["error"]
    assert pp.dropped == 10


# ---------------------------------------------------------------------------------------- close finalises

def test_close_writes_queued_frames_and_finalises(tmp_path):
    vp = VideoPresenter(tmp_path / "v.mp4", fps=30.0)
    for seq in range(40):  # handed over faster than they are encoded; close() must still write them all
        vp.present(np.broadcast_to(_colour(seq), (48, 64, 3)).copy(), T0 + seq * 33_333_333, seq)
    vp.close()
    vp.close()  # twice is harmless
    assert vp.dropped == 0 and vp.frame_seqs == list(range(40))
    _assert_shareable(tmp_path / "v.mp4", 40)
    assert vp.result()["ok"] and vp.result()["frames_written"] == 40


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_video_is_readable_after_a_signal_stops_the_process(tmp_path, sig):
    """A process stopped by Ctrl-C / SIGTERM closes its presenter in a ``finally`` (as the receiver does
    with runtime.proc's handlers): the video must be a finished, readable file."""
    code = textwrap.dedent("""
        import signal, sys, threading
        import numpy as np
        from runtime.presenters import VideoPresenter

        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *a: stop.set())
        signal.signal(signal.SIGINT, lambda *a: stop.set())
        vp = VideoPresenter(sys.argv[1], fps=10.0)
        try:
            for i in range(12):
                vp.present(np.full((48, 64, 3), 20 * i, np.uint8), 10**9 + i * 10**8, i)
            print("ready", flush=True)
            while not stop.is_set():
                stop.wait(0.05)
        finally:
            vp.close()
            print("closed", vp.result()["frames_written"], "torch" in sys.modules, flush=True)
    """)
    path = tmp_path / "sig.mp4"
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert out.split() == ["closed", "12", "False"]  # all frames written; the runtime path imported no torch
    _assert_shareable(path, 12)
