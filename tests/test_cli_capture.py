"""The capture commands as a user runs them: real subprocesses of ``avcall``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def avcall(*args, timeout=240):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "avcall.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_help_lists_the_commands():
    r = avcall("--help")
    assert r.returncode == 0
    for cmd in ("capture", "record", "replay", "bench"):
        assert cmd in r.stdout


def test_building_the_parser_imports_neither_torch_nor_gl():
    # every command's parser is built for any call (even --help): heavy imports belong in the handlers
    code = ("import sys, avcall.cli as c; c.build_parser(); "
            "print(' '.join(m for m in ('torch', 'moderngl', 'onnxruntime') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ""


def test_capture_sheet(tmp_path):
    out = tmp_path / "sheet.png"
    r = avcall("capture", "sheet", "--out", str(out), "--identities", "S1,S2", "--tile", "48")
    assert r.returncode == 0, r.stderr
    img = cv2.imread(str(out))
    assert img is not None and img.shape[0] > 2 * 2 * 48 and img.std() > 20


def test_capture_sheet_rejects_unknown_identity(tmp_path):
    r = avcall("capture", "sheet", "--out", str(tmp_path / "x.png"), "--identities", "nobody")
    assert r.returncode == 2 and "identity" in r.stderr


def test_capture_generate_then_replay_info(tmp_path):
    out = tmp_path / "ds"
    r = avcall("capture", "generate", "--identity", "S2", "--frames", "12", "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    meta = json.loads(r.stdout.strip().splitlines()[-1])
    assert meta["frames"] == 12 and meta["identity"]["name"] == "S2"
    labels = np.load(out / "labels.npz")
    assert labels["expression"].shape == (12, 12)
    r = avcall("replay", str(out / "hmc.hmc"), "--info", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["frames"] == 12 and info["has_ground_truth"] and info["errors"] == []
    assert info["views"] == ["left_eye", "right_eye", "mouth"]
    assert abs(info["fps"] - 90) < 1e-6 and info["duration_s"] > 0


def test_bench_capture_json():
    r = avcall("bench", "capture", "--json", "--frames", "20", "--dome-frames", "5")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["hmc_fps"] > 0 and res["dome_fps"] > 0
    assert res["hmc_ms"]["p50"] <= res["hmc_ms"]["p99"]
    assert res["command"] == "avcall bench capture --json --frames 20 --dome-frames 5" and res["machine"]  # its origin


def assert_one_line_error(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr
    assert r.stderr.startswith("avcall ") and "wrote" not in r.stdout
    for needle in needles:
        assert needle in r.stderr, (needle, r.stderr)


def test_capture_sheet_checks_its_output_and_numbers_first(tmp_path):
    assert_one_line_error(avcall("capture", "sheet", "--out", str(tmp_path / "sheet.txt")), "extension", ".png")
    assert_one_line_error(avcall("capture", "sheet", "--out", str(tmp_path / "sheet")), "extension")
    assert_one_line_error(avcall("capture", "sheet", "--out", "/sys/avcall-sheet.png"), "/sys/avcall-sheet.png")
    blocker = tmp_path / "file.txt"
    blocker.write_text("keep")
    assert_one_line_error(avcall("capture", "sheet", "--out", str(blocker / "s.png")), "not a directory")
    for tile in ("0", "-5", "100000"):
        assert_one_line_error(avcall("capture", "sheet", "--out", str(tmp_path / "s.png"), "--tile", tile), "--tile")
    assert_one_line_error(avcall("capture", "sheet", "--out", str(tmp_path / "s.png"), "--identities", "S1,S9"),
                          "S9", "S1, S2, S3, S4, S5, S6")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"] and blocker.read_text() == "keep"


def test_capture_generate_checks_its_output_and_numbers_first(tmp_path):
    out = tmp_path / "ds"
    assert_one_line_error(avcall("capture", "generate", "--frames", "0", "--out", str(out)), "--frames")
    assert_one_line_error(avcall("capture", "generate", "--frames", "-3", "--out", str(out)), "--frames")
    for fps in ("0", "-1", "inf", "nan"):
        assert_one_line_error(avcall("capture", "generate", "--frames", "5", "--fps", fps, "--out", str(out)), "--fps")
    assert_one_line_error(avcall("capture", "generate", "--identity", "S9", "--frames", "5", "--out", str(out)),
                          "S9", "S1, S2, S3, S4, S5, S6")
    assert_one_line_error(avcall("capture", "generate", "--frames", "5", "--dome-views", "top", "--out", str(out)),
                          "top")
    assert not out.exists()
    assert_one_line_error(avcall("capture", "generate", "--frames", "5", "--out", "/sys/avcall-ds"), "/sys/avcall-ds")
    blocker = tmp_path / "file.txt"
    blocker.write_text("keep")
    assert_one_line_error(avcall("capture", "generate", "--frames", "5", "--out", str(blocker)), "not a directory")
    assert_one_line_error(avcall("capture", "generate", "--frames", "5", "--out", str(blocker / "ds")),
                          "not a directory")
    assert blocker.read_text() == "keep"
    # A directory that already holds a dataset is refused before rendering, and left as it was.
    out.mkdir()
    (out / "hmc.hmc").write_bytes(b"previous dataset")
    assert_one_line_error(avcall("capture", "generate", "--frames", "5", "--out", str(out)), "already holds a dataset")
    assert (out / "hmc.hmc").read_bytes() == b"previous dataset"


def test_bench_capture_checks_numbers_and_identity():
    assert_one_line_error(avcall("bench", "capture", "--frames", "0"), "--frames")
    assert_one_line_error(avcall("bench", "capture", "--dome-frames", "0"), "--dome-frames")
    assert_one_line_error(avcall("bench", "capture", "--identity", "S9"), "S9", "S1, S2, S3, S4, S5, S6")


def test_capture_help_shows_defaults_and_examples():
    for cmd in (["capture"], ["capture", "sheet"], ["capture", "generate"], ["bench", "capture"], ["record"],
                ["replay"]):
        r = avcall(*cmd, "--help")
        assert r.returncode == 0, r.stderr
        assert "example" in r.stdout, cmd
        if cmd != ["capture"]:
            assert "(default: " in r.stdout, cmd
    sheet = avcall("capture", "sheet", "--help").stdout
    assert "(default: 112)" in sheet and "avcall capture sheet --out" in sheet
    generate = avcall("capture", "generate", "--help").stdout
    assert "(default: 90.0)" in generate and "(default: S1)" in generate
