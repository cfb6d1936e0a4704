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
