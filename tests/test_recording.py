"""The .hmc session recording format: writer, reader, replayer and the CLI.

Real files in tmp_path and real subprocesses (a writer killed with SIGKILL,
``python -m avcall.cli``); no mocks.
"""
from __future__ import annotations

import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import msgpack
import numpy as np
import pytest

from capture import recording
from capture.recording import (
    FORMAT_VERSION,
    HMC_MAGIC,
    MAX_RECORD_BYTES,
    HmcFormatError,
    HmcReader,
    HmcWriter,
    RecordStats,
    ReplayStats,
    record_session,
    replay,
)

ROOT = Path(__file__).resolve().parents[1]
SIZE = (16, 24)  # (H, W): small, and not square so H/W mix-ups show
FPS = 100.0
T0 = 1_700_000_000_000_000_000

# Deterministic frame content, shared with the crash-test child process.
FRAME_SRC = """
import numpy as np
def make_frame(i, size, gt=True):
    rng = np.random.default_rng(i)
    views = rng.integers(0, 256, size=(3, *size), dtype=np.uint8)
    ts = T0 + i * 10_000_000 + int(rng.integers(0, 1000))
    truth = None
    if gt:
        truth = {
            "expression": rng.standard_normal(8).astype(np.float32),
            "gaze": rng.standard_normal((2, 2)).astype(np.float32),
            "keypoints": rng.standard_normal((3, 5, 2)).astype(np.float32),
            "vertices": rng.standard_normal((7, 3)).astype(np.float64),
            "visible": rng.integers(0, 2, 5).astype(bool),
            "frame_id": np.array(i, dtype=np.int64),
        }
    return views, ts, truth
"""
_ns: dict = {"T0": T0}
exec(FRAME_SRC, _ns)
make_frame = _ns["make_frame"]


def write_recording(path: Path, n: int, *, gt: bool = True, size=SIZE, fps=FPS, meta=None) -> None:
    with HmcWriter(path, fps=fps, size=size, meta=meta or {"identity": "S1"}) as w:
        for i in range(n):
            assert w.append(*make_frame(i, size, gt)) == i


def assert_frame_matches(frame, i: int, *, gt: bool = True, size=SIZE) -> None:
    views, ts, truth = make_frame(i, size, gt)
    assert frame.index == i
    assert frame.capture_ts_ns == ts
    assert frame.views.dtype == np.uint8 and frame.views.shape == (3, *size)
    np.testing.assert_array_equal(frame.views, views)
    if not gt:
        assert frame.ground_truth is None
        return
    assert set(frame.ground_truth) == set(truth)
    for key, value in truth.items():
        got = frame.ground_truth[key]
        assert got.dtype == value.dtype and got.shape == value.shape, key
        np.testing.assert_array_equal(got, value)


def flip_bytes(path: Path, offset: int, count: int = 4) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        data = f.read(count)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in data))


# ----------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("gt", [True, False])
def test_round_trip(tmp_path, gt):
    path = tmp_path / "s.hmc"
    meta = {"identity": "S7", "seed": 3, "rig": {"cameras": ["l", "r", "m"]}}
    write_recording(path, 12, gt=gt, meta=meta)
    with HmcReader(path) as r:
        assert len(r) == 12 and r.errors == []
        assert r.fps == FPS and r.size == SIZE and r.version == FORMAT_VERSION
        assert r.view_names == ("left_eye", "right_eye", "mouth")
        assert r.meta == meta
        for i in range(12):
            assert_frame_matches(r[i], i, gt=gt)
        info = r.info()
    assert info["frames"] == 12 and info["errors"] == [] and info["has_ground_truth"] is gt
    assert info["duration_s"] == pytest.approx(12 / FPS, abs=1e-4)
    assert info["views"] == ["left_eye", "right_eye", "mouth"] and info["size"] == list(SIZE)
    json.dumps(info)  # JSON-ready


def test_random_access_and_iteration(tmp_path):
    path = tmp_path / "s.hmc"
    write_recording(path, 20)
    with HmcReader(path) as r:
        for i in (17, 3, 19, 0, 3, 11):
            assert_frame_matches(r[i], i)
        assert r[-1].index == 19
        with pytest.raises(IndexError):
            r[20]
        assert [f.index for f in r] == list(range(20))
        assert r.capture_ts_ns(5) == make_frame(5, SIZE)[1]
    frame = HmcReader(path)[4]
    frame.views[0, 0, 0] ^= 1  # frames are writable copies


def test_writer_validates_input(tmp_path):
    with HmcWriter(tmp_path / "s.hmc", fps=FPS, size=SIZE) as w:
        views, ts, gt = make_frame(0, SIZE)
        with pytest.raises(ValueError, match="uint8"):
            w.append(views.astype(np.float32), ts)
        with pytest.raises(ValueError, match=r"\(3, 16, 24\)"):
            w.append(views[:, :8], ts)
        with pytest.raises(ValueError, match="dtype"):
            w.append(views, ts, {"bad": np.array([1 + 2j])})
        with pytest.raises(ValueError, match="dtype"):
            w.append(views, ts, {"bad": np.array(["text"], dtype=object)})
        with pytest.raises(ValueError, match="integer"):
            w.append(views, 1.5)
        assert w.append(views, ts, gt) == 0  # failed appends wrote nothing
    with pytest.raises(ValueError, match="fps"):
        HmcWriter(tmp_path / "x.hmc", fps=0)
    assert len(HmcReader(tmp_path / "s.hmc")) == 1


# ----------------------------------------------------------------------------- crash safety

CHILD = """
import sys, time
sys.path.insert(0, {root!r})
T0 = {t0}
{frame_src}
from capture.recording import HmcWriter
w = HmcWriter({path!r}, fps=100.0, size={size!r})
i = 0
while True:
    w.append(*make_frame(i, {size!r}))
    print(i, flush=True)
    i += 1
    time.sleep(0.002)
"""


def test_sigkill_mid_recording_keeps_every_completed_frame(tmp_path):
    path = tmp_path / "crash.hmc"
    probe = tmp_path / "probe.hmc"
    write_recording(probe, 1)
    header_bytes = probe.stat().st_size - HmcReader(probe).record_span(0)[1]
    record_bytes = HmcReader(probe).record_span(0)[1]

    code = CHILD.format(root=str(ROOT), t0=T0, frame_src=FRAME_SRC, path=str(path), size=SIZE)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        while not (path.exists() and path.stat().st_size >= header_bytes + 40 * record_bytes):
            assert child.poll() is None, "writer child died on its own"
            assert time.monotonic() < deadline, "writer child too slow"
            time.sleep(0.01)
    finally:
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate(timeout=10)
    assert child.returncode == -signal.SIGKILL
    reported = [int(line) for line in out.split()]
    done = reported[-1] + 1  # frames the child saw written
    assert done >= 40

    with HmcReader(path) as r:
        assert len(r) >= done
        for i in range(len(r)):
            assert_frame_matches(r[i], i)
        # At most the record being written when killed is incomplete.
        assert all("truncated" in e for e in r.errors) and len(r.errors) <= 1
        assert r.info()["frames"] == len(r)


# ----------------------------------------------------------------------------- corruption


def test_corrupt_payload_names_that_frame_only(tmp_path):
    path = tmp_path / "s.hmc"
    write_recording(path, 10)
    offset, length = HmcReader(path).record_span(4)
    flip_bytes(path, offset + length // 2)
    with HmcReader(path) as r:
        assert len(r) == 10
        with pytest.raises(HmcFormatError, match=r"frame 4\b") as exc:
            r[4]
        assert exc.value.frame == 4 and exc.value.offset == offset
        assert str(path) in str(exc.value) and "checksum" in str(exc.value)
        for i in range(10):
            if i != 4:
                assert_frame_matches(r[i], i)
    info = HmcReader(path).info()  # a fresh reader finds it by verifying
    assert info["frames"] == 9 and info["corrupt_frames"] == [4]
    assert len(info["errors"]) == 1 and "frame 4" in info["errors"][0]


@pytest.mark.parametrize("where", ["marker", "length", "index"])
def test_corrupt_record_header_resynchronises(tmp_path, where):
    path = tmp_path / "s.hmc"
    write_recording(path, 10)
    offset, _ = HmcReader(path).record_span(6)
    flip_bytes(path, offset + {"marker": 0, "length": 4, "index": 8}[where], 2)
    with HmcReader(path) as r:
        assert len(r) == 10
        assert len(r.errors) == 1 and r.errors[0].startswith("frame 6:"), r.errors
        with pytest.raises(HmcFormatError, match=r"frame 6\b"):
            r[6]
        for i in range(10):
            if i != 6:
                assert_frame_matches(r[i], i)
        assert r.info()["frames"] == 9


def test_garbage_run_over_several_records(tmp_path):
    path = tmp_path / "s.hmc"
    write_recording(path, 10)
    r = HmcReader(path)
    start, _ = r.record_span(2)
    end = sum(r.record_span(4))
    with open(path, "r+b") as f:
        f.seek(start)
        f.write(os.urandom(end - start))
    with HmcReader(path) as r:
        assert len(r) == 10 and r.corrupt_frames == [2, 3, 4]
        assert "frames 2..4" in r.errors[0]
        for i in (0, 1, 5, 6, 7, 8, 9):
            assert_frame_matches(r[i], i)


def test_corrupt_last_record_header(tmp_path):
    path = tmp_path / "s.hmc"
    write_recording(path, 5)
    offset, _ = HmcReader(path).record_span(4)
    flip_bytes(path, offset + 10)
    with HmcReader(path) as r:
        assert len(r) == 4 and "frame 4" in r.errors[0]
        for i in range(4):
            assert_frame_matches(r[i], i)


def test_truncation_at_many_offsets(tmp_path):
    src = tmp_path / "full.hmc"
    write_recording(src, 6)
    data = src.read_bytes()
    r = HmcReader(src)
    starts = [r.record_span(i)[0] for i in range(6)]
    rec3, len3 = r.record_span(3)
    cases = {  # cut at → complete frames left
        starts[0]: 0,  # header only
        starts[0] + 5: 0,
        rec3: 3,  # exactly at a record boundary: no error
        rec3 + 1: 3,
        rec3 + 31: 3,  # inside the record header
        rec3 + 32: 3,  # header complete, no payload
        rec3 + len3 // 2: 3,
        rec3 + len3 - 1: 3,
        len(data) - 1: 5,
    }
    for cut, expected in cases.items():
        path = tmp_path / f"cut{cut}.hmc"
        path.write_bytes(data[:cut])
        with HmcReader(path) as r:
            assert len(r) == expected, cut
            for i in range(expected):
                assert_frame_matches(r[i], i)
            if cut in starts:
                assert r.errors == [], cut
            else:
                assert len(r.errors) == 1 and r.errors[0].startswith(f"frame {expected}:"), r.errors
                assert "truncated" in r.errors[0] or "unreadable" in r.errors[0]
            with pytest.raises(IndexError):
                r[expected]
    # Cuts inside the file header make the whole file unreadable, clearly.
    for cut in (3, 8, 12, starts[0] - 1):
        path = tmp_path / f"head{cut}.hmc"
        path.write_bytes(data[:cut])
        with pytest.raises(HmcFormatError, match="truncated file header|not an .hmc"):
            HmcReader(path)


def test_wrong_version_magic_and_non_files(tmp_path):
    path = tmp_path / "s.hmc"
    write_recording(path, 2)
    data = bytearray(path.read_bytes())
    assert data[:8] == HMC_MAGIC

    # A file really written by a newer avcall: version 9 with an intact prefix checksum.
    prefix = bytes(data[:8]) + struct.pack("<H", 9) + bytes(data[10:20])
    newer = tmp_path / "v9.hmc"
    newer.write_bytes(prefix + struct.pack("<I", zlib.crc32(prefix)) + bytes(data[24:]))
    with pytest.raises(HmcFormatError, match=r"unsupported .hmc format version 9.*reads versions 1, 2"
                                             r".*newer avcall"):
        HmcReader(newer)

    wrong = tmp_path / "magic.hmc"
    wrong.write_bytes(b"RIFF" + data[4:])
    with pytest.raises(HmcFormatError, match=r"magic.hmc: not an .hmc recording"):
        HmcReader(wrong)

    png = tmp_path / "img.hmc"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(HmcFormatError, match="not an .hmc recording"):
        HmcReader(png)

    empty = tmp_path / "empty.hmc"
    empty.write_bytes(b"")
    with pytest.raises(HmcFormatError, match="empty"):
        HmcReader(empty)

    bad_header = tmp_path / "hdr.hmc"
    bad_header.write_bytes(bytes(data[:24]) + bytes([data[24] ^ 0xFF]) + bytes(data[25:]))
    with pytest.raises(HmcFormatError, match="header checksum"):
        HmcReader(bad_header)

    with pytest.raises(FileNotFoundError):
        HmcReader(tmp_path / "missing.hmc")
    with pytest.raises(HmcFormatError, match="not a regular file"):
        HmcReader(tmp_path)


def _raw_record(index: int, payload: bytes, *, length: int | None = None) -> bytes:
    """A record with valid checksums around an arbitrary payload (a hostile writer)."""
    head = struct.pack("<4sIIHHqI", recording.RECORD_MARKER, len(payload) if length is None else length,
                       index, 0, 0, T0, zlib.crc32(payload))
    return head + struct.pack("<I", zlib.crc32(head)) + payload


def test_hostile_payloads_are_rejected_per_frame(tmp_path):
    path = tmp_path / "s.hmc"
    write_recording(path, 2, gt=False)
    good = path.read_bytes()
    arr = {"dtype": "uint8", "shape": [3, *SIZE], "data": bytes(3 * SIZE[0] * SIZE[1])}
    payloads = [
        {"views": {**arr, "dtype": "object"}, "gt": None},  # dtype not whitelisted
        {"views": {**arr, "shape": [3, 4, 4]}, "gt": None},  # shape / byte count mismatch
        {"views": arr, "gt": {"x": {"dtype": "float32", "shape": [-1], "data": b""}}},
        {"views": arr, "gt": None, "extra": 1},
    ]
    hostile = b"".join(_raw_record(2 + k, msgpack.packb(p)) for k, p in enumerate(payloads))
    # A header claiming a huge payload (valid CRC) must not be trusted or allocated.
    huge = _raw_record(6, b"", length=MAX_RECORD_BYTES + 1)[:32]
    last = _raw_record(6, msgpack.packb({"views": arr, "gt": None}))
    path.write_bytes(good + hostile + huge + last)
    with HmcReader(path) as r:
        assert len(r) == 7
        for i in (2, 3, 4, 5):
            with pytest.raises(HmcFormatError, match=rf"frame {i}\b.*malformed payload"):
                r[i]
        assert r[6].views.shape == (3, *SIZE)
        assert_frame_matches(r[1], 1, gt=False)
        assert r.info()["corrupt_frames"] == [2, 3, 4, 5]


# ----------------------------------------------------------------------------- appending


def test_append_continues_recording(tmp_path):
    path = tmp_path / "s.hmc"
    write_recording(path, 5)
    with HmcWriter(path, fps=FPS, size=SIZE, append=True) as w:
        assert w.frames == 5
        for i in range(5, 8):
            assert w.append(*make_frame(i, SIZE)) == i
    with HmcReader(path) as r:
        assert len(r) == 8 and r.errors == [] and r.meta == {"identity": "S1"}
        for i in range(8):
            assert_frame_matches(r[i], i)

    with pytest.raises(HmcFormatError, match="fps"):
        HmcWriter(path, fps=90.0, size=SIZE, append=True)
    with pytest.raises(HmcFormatError, match="size"):
        HmcWriter(path, fps=FPS, size=(8, 8), append=True)
    with pytest.raises(HmcFormatError, match="meta"):
        HmcWriter(path, fps=FPS, size=SIZE, meta={"identity": "S2"}, append=True)
    garbage = tmp_path / "garbage.hmc"
    garbage.write_bytes(b"hello world, not a recording")
    with pytest.raises(HmcFormatError, match="not an .hmc"):
        HmcWriter(garbage, fps=FPS, size=SIZE, append=True)
    assert garbage.read_bytes() == b"hello world, not a recording"  # left untouched
    assert len(HmcReader(path)) == 8


def test_append_after_crash_cuts_the_partial_record(tmp_path):
    path = tmp_path / "s.hmc"
    write_recording(path, 4)
    with open(path, "ab") as f:
        f.write(_raw_record(4, b"x" * 100)[:60])  # a record cut short by a crash
    assert HmcReader(path).errors
    with HmcWriter(path, fps=FPS, size=SIZE, append=True) as w:
        assert w.append(*make_frame(4, SIZE)) == 4
    with HmcReader(path) as r:
        assert len(r) == 5 and r.errors == []
        assert_frame_matches(r[4], 4)


def test_second_writer_is_refused(tmp_path):
    path = tmp_path / "s.hmc"
    with HmcWriter(path, fps=FPS, size=SIZE) as w:
        w.append(*make_frame(0, SIZE))
        with pytest.raises(HmcFormatError, match="another process"):
            HmcWriter(path, fps=FPS, size=SIZE, append=True)
    assert len(HmcReader(path)) == 1


# ----------------------------------------------------------------------------- replay


def test_replay_native_pacing(tmp_path):
    path = tmp_path / "s.hmc"
    write_recording(path, 10)  # 10 ms apart → 9 intervals ≈ 0.09 s
    with HmcReader(path) as r:
        stats = ReplayStats()
        t = time.monotonic()
        got = [f.index for f in replay(r, stats=stats)]
        elapsed = time.monotonic() - t
        assert got == list(range(10)) and stats.frames == 10 and stats.skipped == 0
        assert 0.08 <= elapsed < 0.5
        t = time.monotonic()
        assert len(list(replay(r, speed=3.0))) == 10
        assert 0.025 <= time.monotonic() - t < 0.3
        t = time.monotonic()
        assert len(list(replay(r, rate="fast"))) == 10
        assert time.monotonic() - t < 0.08
        with pytest.raises(ValueError):
            next(replay(r, rate="slow"))


def test_replay_loop_and_skip_corrupt(tmp_path):
    path = tmp_path / "s.hmc"
    write_recording(path, 5)
    offset, length = HmcReader(path).record_span(2)
    flip_bytes(path, offset + length - 3, 2)
    with HmcReader(path) as r:
        stats = ReplayStats()
        it = replay(r, rate="fast", loop=True, stats=stats)
        got = [next(it).index for _ in range(10)]
        it.close()
        assert got == [0, 1, 3, 4, 0, 1, 3, 4, 0, 1]
        assert stats.skipped == 2 and stats.passes == 2
        # Native loop: the next pass starts one frame period after the last frame.
        t = time.monotonic()
        it = replay(r, loop=True)
        got = [next(it).index for _ in range(8)]
        it.close()
        assert got == [0, 1, 3, 4, 0, 1, 3, 4]
        assert 0.06 <= time.monotonic() - t < 0.5  # 7 gaps of 10 ms (frame 2 is skipped, not dropped from time)


def test_record_session_from_any_iterable(tmp_path):
    path = tmp_path / "live.hmc"

    def live_source(n):
        for i in range(n):
            views, _, gt = make_frame(i, SIZE)
            yield views, time.time_ns(), gt

    with HmcWriter(path, fps=FPS, size=SIZE, meta={"source": "fake"}) as w:
        stats = record_session(live_source(15), w)
    assert isinstance(stats, RecordStats) and stats.frames == 15
    assert stats.bytes_written > 0 and 0 <= stats.missed_deadline <= 15
    with HmcReader(path) as r:
        assert len(r) == 15 and r.info()["has_ground_truth"]
        np.testing.assert_array_equal(r[7].views, make_frame(7, SIZE)[0])


# ----------------------------------------------------------------------------- CLI


def run_cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "avcall.cli", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_cli_replay_info_json(tmp_path):
    path = tmp_path / "s.hmc"
    write_recording(path, 9)
    offset, length = HmcReader(path).record_span(5)
    flip_bytes(path, offset + length // 2)
    proc = run_cli("replay", path, "--info", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)  # exactly one JSON object
    assert info["frames"] == 8 and info["fps"] == FPS
    assert info["views"] == ["left_eye", "right_eye", "mouth"] and info["has_ground_truth"] is True
    assert info["duration_s"] == pytest.approx(9 / FPS, abs=2e-3)
    assert len(info["errors"]) == 1 and "frame 5" in info["errors"][0]

    text = run_cli("replay", path, "--info")
    assert text.returncode == 0 and "frame 5" in text.stdout and "left_eye" in text.stdout


def test_cli_replay_frames_to_pngs(tmp_path):
    import cv2

    path = tmp_path / "s.hmc"
    write_recording(path, 4)
    out = tmp_path / "frames"
    proc = run_cli("replay", path, "--rate", "fast", "--out-dir", out, "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["frames_replayed"] == 4 and summary["frames_skipped"] == 0
    pngs = sorted(out.glob("frame_*.png"))
    assert len(pngs) == 4
    img = cv2.imread(str(pngs[2]), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(img, np.concatenate(list(make_frame(2, SIZE)[0]), axis=1))


def test_cli_errors_exit_2(tmp_path):
    garbage = tmp_path / "garbage.hmc"
    garbage.write_bytes(os.urandom(300))
    proc = run_cli("replay", garbage, "--info", "--json")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "not an .hmc recording" in proc.stderr

    proc = run_cli("replay", tmp_path / "missing.hmc", "--info")
    assert proc.returncode == 2 and "missing.hmc" in proc.stderr and "Traceback" not in proc.stderr

    for cmd in ("replay", "record"):
        helped = run_cli(cmd, "--help")
        assert helped.returncode == 0 and "usage: avcall " + cmd in helped.stdout


def test_cli_record_synthetic_then_sigkill(tmp_path):
    """`avcall record` with the studio's synthetic source; killed, it keeps every frame."""
    pytest.importorskip("capture.source", reason="synthetic HMC source not available yet")
    path = tmp_path / "rec.hmc"
    proc = run_cli("record", "--source", "synthetic", "--identity", "S1", "--seconds", "0.5",
                   "--fps", "30", "--out", path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "frames" in proc.stdout
    # The progress bar counts the capture schedule's frame slots: a finished recording ends at 100%,
    # even when the renderer dropped frames; its lines are plain (stderr is not a terminal).
    last_bar = [line for line in proc.stderr.splitlines() if line.startswith("recording ")][-1]
    assert "100%" in last_bar and "15/15" in last_bar and "\r" not in proc.stderr
    with HmcReader(path) as r:
        info = r.info()
        # Every capture slot is either in the file or counted as dropped by the source (a loaded machine
        # renders fewer than 30 fps; how many is up to the machine, the bookkeeping is not).
        m = re.search(r"wrote (\d+) frames .* (\d+) frames dropped by the source", proc.stdout)
        assert m, proc.stdout
        written, dropped = int(m.group(1)), int(m.group(2))
        assert info["errors"] == [] and info["frames"] == written >= 1 and written + dropped == 15
        assert info["has_ground_truth"]
        assert r[0].views.dtype == np.uint8 and r[0].views.shape[0] == 3

    killed = tmp_path / "killed.hmc"
    child = subprocess.Popen([sys.executable, "-m", "avcall.cli", "record", "--seconds", "60",
                              "--fps", "30", "--out", str(killed)], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert child.poll() is None and time.monotonic() < deadline
            if killed.exists() and killed.stat().st_size > 0:
                try:
                    if len(HmcReader(killed)) >= 5:
                        break
                except HmcFormatError:
                    pass
            time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    with HmcReader(killed) as r:
        assert len(r) >= 5 and all("truncated" in e for e in r.errors)
        assert all(f.views.shape[0] == 3 for f in r)


# ----------------------------------------------------------------------------- format version 2: prefix CRC, clock, sessions


def test_flipped_version_byte_is_a_damaged_header_not_a_newer_version(tmp_path):
    path = tmp_path / "s.hmc"
    write_recording(path, 2)
    data = path.read_bytes()
    assert struct.unpack_from("<H", data, 8)[0] == FORMAT_VERSION == 2
    for offset, bit in ((8, 0x01), (8, 0x08), (9, 0x01), (10, 0x01), (13, 0x02)):  # version, flags, header_len
        bad = bytearray(data)
        bad[offset] ^= bit
        damaged = tmp_path / f"flip{offset}_{bit}.hmc"
        damaged.write_bytes(bytes(bad))
        with pytest.raises(HmcFormatError) as exc:
            HmcReader(damaged)
        assert "damaged header" in str(exc.value) and "newer" not in str(exc.value).replace(
            "not from a newer", ""), str(exc.value)


def test_version_1_files_still_read(tmp_path):
    """A version-1 file (20-byte prefix without CRC, no clock key) reads, as wall-clock stamps."""
    path = tmp_path / "s.hmc"
    write_recording(path, 3)
    with HmcReader(path) as r:
        start = r.record_span(0)[0]
    body = msgpack.packb({"format": "avcall.hmc", "fps": FPS, "view_names": ["left_eye", "right_eye", "mouth"],
                          "size": list(SIZE), "meta": {"identity": "S1"}, "created_ns": 0}, use_bin_type=True)
    v1 = tmp_path / "v1.hmc"
    v1.write_bytes(struct.pack("<8sHHII", HMC_MAGIC, 1, 0, len(body), zlib.crc32(body)) + body
                   + path.read_bytes()[start:])
    with HmcReader(v1) as r:
        assert r.version == 1 and r.clock == "wall" and len(r) == 3 and r.errors == []
        for i in range(3):
            assert_frame_matches(r[i], i)
    # A flipped version byte in a version-1 file is damage too, not "newer".
    bad = bytearray(v1.read_bytes())
    bad[8] ^= 0x04
    (tmp_path / "v1bad.hmc").write_bytes(bytes(bad))
    with pytest.raises(HmcFormatError, match="damaged header"):
        HmcReader(tmp_path / "v1bad.hmc")


def test_clock_is_stored_and_append_must_match_it(tmp_path):
    path = tmp_path / "tap.hmc"
    with HmcWriter(path, fps=FPS, size=SIZE, clock="monotonic") as w:
        stats = record_session(((make_frame(i, SIZE, False)[0], time.monotonic_ns(), None) for i in range(5)), w)
    # Deadlines are measured on the recording's own clock: monotonic stamps written at once are on time
    # (against time.time_ns() every one of them would count as decades late).
    assert stats.frames == 5 and stats.missed_deadline == 0
    with HmcReader(path) as r:
        assert r.clock == "monotonic" and r.info()["clock"] == "monotonic"
    with pytest.raises(HmcFormatError, match="clock"):
        HmcWriter(path, fps=FPS, size=SIZE, append=True, clock="wall")
    with pytest.raises(ValueError, match="clock"):
        HmcWriter(tmp_path / "x.hmc", fps=FPS, size=SIZE, clock="gps")
    assert len(HmcReader(path)) == 5


def test_appended_sessions_count_only_captured_time(tmp_path):
    path = tmp_path / "s.hmc"
    write_recording(path, 5)  # frames 10 ms apart from T0
    hour = 3600 * 10**9
    with HmcWriter(path, fps=FPS, size=SIZE, append=True, match_meta={"identity": "S1"}) as w:
        for i in range(5, 10):
            views, ts, gt = make_frame(i, SIZE)
            w.append(views, ts + hour, gt)  # the second session an hour later
    with HmcReader(path) as r:
        assert [r.starts_session(i) for i in range(10)] == [True] + [False] * 4 + [True] + [False] * 4
        info = r.info()
        schedule, pass_s = recording.replay_schedule(r)
    assert info["sessions"] == 2 and info["frames"] == 10
    assert info["duration_s"] == pytest.approx(10 / FPS, abs=1e-4)  # not an hour
    assert info["recorded_fps"] == pytest.approx(FPS, rel=1e-3)
    # Replay: the next session follows one frame period after the previous one's last frame.
    positions = [p for p, _ in schedule]
    assert positions[5] - positions[4] == pytest.approx(1 / FPS, abs=1e-4)
    assert pass_s == pytest.approx(10 / FPS, abs=1e-4)

    with pytest.raises(HmcFormatError, match="identity 'S1' in the file, 'S2'"):
        HmcWriter(path, fps=FPS, size=SIZE, append=True, match_meta={"identity": "S2"})
    with pytest.raises(HmcFormatError, match="identity"):
        recording.check_append(path, fps=FPS, match_meta={"identity": "S2", "source": "synthetic"})
    assert recording.check_append(path, fps=FPS, match_meta={"identity": "S1"}) == 10
    assert recording.check_append(tmp_path / "new.hmc", fps=FPS) == 0


# ----------------------------------------------------------------------------- real-time replay: drop, never slow down


def _consume_slowly(frames, seconds_per_frame):
    """(frame, t_requested, t_received) per frame, sleeping after each (a slow encoder)."""
    out = []
    it = iter(frames)
    while True:
        t_req = time.monotonic()
        try:
            frame = next(it)
        except StopIteration:
            return out
        out.append((frame, t_req, time.monotonic()))
        time.sleep(seconds_per_frame)


def test_replay_drop_late_keeps_the_recording_pace(tmp_path):
    """A consumer slower than the recording gets the latest due frame; older ones are dropped, counted."""
    n = 40
    path = tmp_path / "s.hmc"
    write_recording(path, n, gt=False)  # 100 fps: 10 ms apart
    with HmcReader(path) as r:
        positions = [p for p, _ in recording.replay_schedule(r)[0]]
        stats = ReplayStats()
        got = _consume_slowly(replay(r, stats=stats, drop_late=True), 0.035)
    idx = [f.index for f, _, _ in got]
    assert stats.frames == len(got) and stats.frames + stats.dropped == n and stats.skipped == 0
    assert idx == sorted(set(idx)) and idx[-1] == n - 1  # in order, and the replay reaches the end
    t0 = stats.start_monotonic_s
    for (frame, t_req, t_got) in got:
        assert t0 + positions[frame.index] <= t_got + 1e-3  # never before its time
        if frame.index + 1 < n:  # never a stale frame: the next one was not yet due when asked for
            assert t0 + positions[frame.index + 1] > t_req
    # A consumer taking 35 ms per frame sees at most one frame in every 3 of a 10 ms recording.
    assert len(got) <= 1 + (n - 1) // 3 and stats.dropped >= n - 1 - (n - 1) // 3

    with HmcReader(path) as r:  # without drop_late every frame comes, late: slow motion
        stats = ReplayStats()
        got = _consume_slowly(replay(r, stats=stats), 0.02)
    assert len(got) == n and stats.dropped == 0


def write_regular(path: Path, n: int, fps: float = FPS) -> None:
    """``n`` frames stamped exactly 1/fps apart."""
    with HmcWriter(path, fps=fps, size=SIZE, meta={"identity": "S1"}) as w:
        for i in range(n):
            w.append(make_frame(i, SIZE, False)[0], T0 + round(i * 1e9 / fps))


def test_replay_resamples_by_timestamp(tmp_path):
    path = tmp_path / "s.hmc"
    write_regular(path, 40)  # 100 fps, 0.4 s
    with HmcReader(path) as r:
        stats = ReplayStats()
        idx = [f.index for f in replay(r, rate="fast", resample_fps=50.0, stats=stats)]
        assert idx == list(range(0, 40, 2))  # ticks every 20 ms: every other frame
        idx = [f.index for f in replay(r, rate="fast", resample_fps=300.0)]
        assert idx == [min(int(k / 3 + 0.5), 39) for k in range(120)]  # the nearest frame at each tick
        with pytest.raises(ValueError, match="resample_fps"):
            next(replay(r, resample_fps=-1.0))


def test_sender_replay_source_drops_late_frames_and_follows_timestamps(tmp_path):
    """runtime.sources.ReplaySource with a slow consumer (the encoder): real time, not slow motion."""
    from runtime.config import SourceConfig
    from runtime.sources import open_source
    from transport.clock import now_ns

    n = 40
    path = tmp_path / "s.hmc"
    write_recording(path, n, gt=False)
    src = open_source(SourceConfig(kind="replay", path=str(path), loop=False, fps=30.0))
    try:
        assert src.fps == FPS and src.clock == "monotonic"  # the recording's rate, not cfg.fps
        before = now_ns()
        got = _consume_slowly(src, 0.035)
        after = now_ns()
        with HmcReader(path) as r:
            positions = [p for p, _ in recording.replay_schedule(r)[0]]
    finally:
        src.close()
    idx = [c.frame_index for c, _, _ in got]
    assert idx == sorted(set(idx)) and idx[-1] == n - 1
    assert src.dropped == n - len(got) and src.dropped >= n - 1 - (n - 1) // 3
    t0 = src.stats.start_monotonic_s
    for cap, t_req, t_got in got:
        assert t0 + positions[cap.frame_index] <= t_got + 1e-3
        if cap.frame_index + 1 < n:
            assert t0 + positions[cap.frame_index + 1] > t_req
        assert before <= cap.capture_ts_ns <= after  # stamped on the runtime clock
    # replay_fps resamples by timestamp: 50 Hz from a 100 Hz recording is every other frame.
    write_regular(path, n)
    src = open_source(SourceConfig(kind="replay", path=str(path), loop=False, replay_fps=50.0))
    try:
        assert src.fps == 50.0
        idx = [c.frame_index for c in src]
    finally:
        src.close()
    assert all(i % 2 == 0 for i in idx) and len(idx) + src.dropped == 20
    with pytest.raises(ValueError, match="replay_fps"):
        open_source(SourceConfig(kind="replay", path=str(path), replay_fps=float("nan")))


# ----------------------------------------------------------------------------- CLI: bad input is one line


def assert_one_line_error(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert proc.stderr.startswith("avcall ") and "error:" in proc.stderr
    assert "wrote" not in proc.stdout
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)


def test_cli_replay_info_into_a_closed_pipe_exits_quietly(tmp_path):
    path = tmp_path / "s.hmc"
    write_recording(path, 3)
    for extra in ((), ("--json",)):
        r_fd, w_fd = os.pipe()
        os.close(r_fd)  # the reader is gone before a byte is written (`| head -1` that already exited)
        try:
            proc = subprocess.run([sys.executable, "-m", "avcall.cli", "replay", str(path), "--info", *extra],
                                  cwd=ROOT, stdout=w_fd, stderr=subprocess.PIPE, text=True, timeout=60)
        finally:
            os.close(w_fd)
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_cli_replay_rejects_contradictory_options(tmp_path):
    path = tmp_path / "s.hmc"
    write_recording(path, 3)
    out = tmp_path / "pngs"
    assert_one_line_error(run_cli("replay", path, "--rate", "fast", "--speed", "2"), "--speed")
    assert_one_line_error(run_cli("replay", path, "--info", "--out-dir", out), "--info", "--out-dir")
    assert_one_line_error(run_cli("replay", path, "--info", "--speed", "2"), "--speed")
    assert_one_line_error(run_cli("replay", path, "--info", "--rate", "native"), "--rate")
    assert_one_line_error(run_cli("replay", path, "--loop", "--out-dir", out), "--loop")
    assert_one_line_error(run_cli("replay", path, "--speed", "nan"), "--speed")
    assert_one_line_error(run_cli("replay", path, "--speed", "-1"), "--speed")
    assert not out.exists()
    # An --out-dir that cannot be written fails before replaying.
    blocker = tmp_path / "file.txt"
    blocker.write_text("keep")
    assert_one_line_error(run_cli("replay", path, "--rate", "fast", "--out-dir", blocker / "pngs"), "not a directory")
    assert_one_line_error(run_cli("replay", path, "--rate", "fast", "--out-dir", "/sys/avcall-pngs"), "/sys/avcall-pngs")
    assert blocker.read_text() == "keep"
    # A damaged header is reported as damage.
    bad = bytearray(path.read_bytes())
    bad[8] ^= 0x08
    (tmp_path / "bad.hmc").write_bytes(bytes(bad))
    proc = run_cli("replay", tmp_path / "bad.hmc", "--info")
    assert_one_line_error(proc, "damaged header")
    assert "upgrade" not in proc.stderr


def test_cli_record_checks_arguments_before_starting(tmp_path):
    out = tmp_path / "r.hmc"
    proc = run_cli("record", "--identity", "S9", "--seconds", "1", "--out", out)
    assert_one_line_error(proc, "S9", "S1, S2, S3, S4, S5, S6")
    for flag, value in (("--seconds", "inf"), ("--seconds", "-1"), ("--seconds", "nan"), ("--seconds", "0"),
                        ("--fps", "0"), ("--fps", "inf"), ("--fps", "-30")):
        args = ["--seconds", "1", "--fps", "30"]
        args[args.index(flag) + 1] = value
        assert_one_line_error(run_cli("record", *args, "--out", out), flag)
    assert_one_line_error(run_cli("record", "--seconds", "1", "--out", "/sys/avcall-x.hmc"), "/sys/avcall-x.hmc")
    blocker = tmp_path / "file.txt"
    blocker.write_text("keep")
    assert_one_line_error(run_cli("record", "--seconds", "1", "--out", blocker / "r.hmc"), "not a directory")
    assert_one_line_error(run_cli("record", "--seconds", "1", "--out", tmp_path), "directory")
    assert not out.exists() and blocker.read_text() == "keep"
    assert not Path("/sys/avcall-x.hmc").exists()


def test_cli_record_append_refuses_another_identity(tmp_path):
    pytest.importorskip("capture.source", reason="synthetic HMC source not available yet")
    path = tmp_path / "s1.hmc"
    write_recording(path, 4, meta={"source": "synthetic", "identity": "S1", "seed": 0, "ground_truth": True})
    before = path.read_bytes()
    proc = run_cli("record", "--identity", "S2", "--seconds", "0.2", "--fps", "100", "--append", "--out", path)
    assert_one_line_error(proc, "identity", "'S1'", "'S2'")
    assert path.read_bytes() == before  # untouched
    proc = run_cli("record", "--identity", "S1", "--seconds", "0.2", "--fps", "30", "--append", "--out", path)
    assert_one_line_error(proc, "fps")
    assert path.read_bytes() == before


def test_cli_record_until_ctrl_c_keeps_every_frame(tmp_path):
    """Without --seconds, record runs until SIGINT, then closes the file with every frame in it."""
    pytest.importorskip("capture.source", reason="synthetic HMC source not available yet")
    path = tmp_path / "open.hmc"
    child = subprocess.Popen([sys.executable, "-m", "avcall.cli", "record", "--fps", "30", "--out", str(path)],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "recording too slow"
            if path.exists() and path.stat().st_size > 0:
                try:
                    if len(HmcReader(path)) >= 5:
                        break
                except HmcFormatError:
                    pass
            time.sleep(0.05)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, err
    assert "Traceback" not in err
    written = int(out.split("wrote ")[1].split(" frames")[0])
    with HmcReader(path) as r:
        assert len(r) == written >= 5 and r.errors == [] and r.info()["errors"] == []
        assert r.clock == "wall" and r.meta["identity"] == "S1"
