"""``avcall eval decoder``, ``avcall eval encoder`` and ``avcall eval table`` end to end, in-process through
``avcall.cli.main``, on a tiny decoder and a tiny encoder trained here for a few steps on a few studio frames."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from avcall.cli import main  # noqa: E402

torch.set_num_threads(1)
LATENT = 8  # the "tiny" encoder architecture's code size


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """Paths: decoders root (ROOT/S1 a trained tiny decoder), encoder runs root (RUNS/S1/tiny), test data dir."""
    from decoder.config import DecoderConfig, TrainConfig
    from decoder.data import build_dataset
    from decoder.export import load_vae
    from decoder.train import train_decoder
    from encoder.arch import get_arch
    from encoder.data import HmcDataConfig, render_session
    from encoder.train import EncoderTrainConfig, train_encoder

    root = tmp_path_factory.mktemp("e2e")
    dcfg = DecoderConfig(identity="S1", latent_dim=LATENT, geometry_basis=4, geometry_hidden=16,
                         texture_seed=4, texture_channels=(8, 8), view_inject=1, encoder_texture_size=16,
                         encoder_channels=(4, 8))
    tcfg = TrainConfig(num_train_poses=6, views_per_pose=1, image_size=32, batch_size=4, steps=5, time_budget_s=120.0,
                       checkpoint_every_s=1e9, threads=1)
    dec_dir = root / "decoders" / "S1"
    train_decoder(dec_dir, dcfg, tcfg, progress=False, data=build_dataset("S1", 6, 5, dcfg, tcfg, progress=False))

    hcfg = HmcDataConfig(render_size=16, enc_texture_size=16)
    train = render_session("S1", 3, 11, 1.0, 30.0, "train", hcfg, hmc_size=32)
    test = render_session("S1", 101, 12, 0.4, 30.0, "all", hcfg, hmc_size=32)
    data_dir = root / "data"
    data_dir.mkdir()
    np.savez(data_dir / "test_S1.npz", key=np.array("tiny"), **{f"test_{k}": v for k, v in test.items()})
    vae = load_vae(model_dir=dec_dir)
    train_encoder(root / "runs" / "S1" / "tiny", get_arch("tiny"),
                  EncoderTrainConfig(batch_size=8, steps=3, augment=False, threads=1), data=train, vae=vae,
                  progress=False)
    return {"decoders": root / "decoders", "runs": root / "runs", "data": data_dir, "root": root}


def _run(capsys, *argv) -> tuple[int, str, str]:
    rc = main(list(argv))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _finite(x) -> bool:
    return isinstance(x, float) and math.isfinite(x)


def test_eval_decoder_json_and_progress(tiny_models, capsys):
    out = tiny_models["root"] / "decoder_eval.json"
    rc, stdout, stderr = _run(capsys, "eval", "decoder", "--model", str(tiny_models["decoders"] / "S1"), "--frames", "2",
                              "--linearity-frames", "8", "--json", "--out", str(out))
    assert rc == 0, stderr
    res = json.loads(stdout)
    assert json.loads(out.read_text()) == res
    for v in ("front", "left", "right"):
        assert _finite(res[f"psnr_{v}"]) and _finite(res[f"mse_{v}"]) and 0 < res[f"mse_{v}"] < 1
        assert res[f"psnr_{v}"] == pytest.approx(-10 * math.log10(res[f"mse_{v}"]))  # images in [0, 1]
        assert _finite(res[f"ssim_{v}"]) and -1 <= res[f"ssim_{v}"] <= 1
    assert _finite(res["linearity_mse_ratio"]) and res["num_test_frames"] == 2
    assert "eval decoder S1" in stderr  # progress, on stderr


def test_eval_decoder_without_frames_is_a_clear_error_not_nan(tiny_models, capsys):
    from avcore.errors import UsageError
    from decoder.evaluate import evaluate_decoder

    with pytest.raises(SystemExit) as e:  # refused while parsing: one usage line, nothing on stdout
        main(["eval", "decoder", "--model", str(tiny_models["decoders"] / "S1"), "--frames", "0", "--json"])
    cap = capsys.readouterr()
    assert e.value.code == 2 and cap.out == ""
    assert "argument --frames: must be >= 1" in cap.err and "nan" not in cap.err.lower()
    for kw in ({"num_test": 0}, {"num_test": 1, "linearity_frames": 3}):  # the library refuses too, before any work
        with pytest.raises(UsageError, match="frames"):
            evaluate_decoder(tiny_models["decoders"] / "S1", progress=False, **kw)


def test_eval_encoder_json(tiny_models, capsys):
    argv = ["eval", "encoder", "--model-dir", str(tiny_models["runs"] / "S1" / "tiny"), "--identity", "S1",
            "--decoder-dir", str(tiny_models["decoders"] / "S1"), "--data", str(tiny_models["data"] / "test_S1.npz"),
            "--size", "32", "--json"]
    rc, stdout, stderr = _run(capsys, *argv, "--frames", "3")
    assert rc == 0, stderr
    r = json.loads(stdout)  # strict JSON: json.loads would accept NaN, so check the values too
    assert r["frames"] == 3 and set(r["mse"]) == {"front", "left", "right"}
    assert all(_finite(x) and x > 0 for x in r["mse"].values()) and _finite(r["mse_mean"]) and _finite(r["gaze_mae_deg"])
    assert r["mse_extreme"] is None or _finite(r["mse_extreme"])
    with pytest.raises(SystemExit) as e:
        main([*argv, "--frames", "0"])
    cap = capsys.readouterr()
    assert e.value.code == 2 and cap.out == "" and "argument --frames: must be >= 1" in cap.err


def test_eval_encoder_several_models_to_a_result_file_with_its_command(tiny_models, capsys):
    run = tiny_models["runs"] / "S1" / "tiny"
    out = tiny_models["root"] / "attribution" / "enc.json"
    argv = ["eval", "encoder", "--model-dir", f"{run},{run}", "--identity", "S1", "--attribute",
            "--decoder-dir", str(tiny_models["decoders"] / "S1"), "--data", str(tiny_models["data"] / "test_S1.npz"),
            "--size", "32", "--frames", "2", "--out", str(out)]
    rc, stdout, stderr = _run(capsys, *argv)
    assert rc == 0, stderr
    table = json.loads(out.read_text())
    assert table["command"].startswith("avcall eval encoder --model-dir ") and "--attribute" in table["command"]
    assert table["machine"] and len(table["models"]) == 2 and f"wrote {out}" in stdout
    for r in table["models"]:
        assert r["model_dir"] == str(run) and r["frames"] == 2
        assert {"code_only", "gaze_only"} == set(r["attribution"]) and _finite(r["attribution"]["code_only"]["mse_mean"])
    bad = tiny_models["root"] / "no-such-run"
    rc, stdout, stderr = _run(capsys, *argv[:3], f"{run},{bad}", *argv[4:])
    assert rc != 0 and str(bad) in stderr and "Traceback" not in stderr


def test_eval_table_writes_markdown_json_and_plot(tiny_models, capsys):
    out = tiny_models["root"] / "results"
    rc, stdout, stderr = _run(capsys, "eval", "table", "--identities", "S1", "--models", "tiny", "--out", str(out),
                              "--runs", str(tiny_models["runs"]), "--decoders", str(tiny_models["decoders"]),
                              "--data-dir", str(tiny_models["data"]), "--frames", "3", "--size", "32", "--bench-runs", "3")
    assert rc == 0, stderr
    table = json.loads((out / "table1.json").read_text())
    row = table["models"]["tiny"]
    assert {"mflops", "latency_ms", "latency_ms_per_stage", "mse", "mse_extreme", "mse_mean", "gaze_mae_deg",
            "test_frames", "evaluated_by"} <= set(row)
    assert _finite(row["mflops"]) and row["mflops"] > 0 and _finite(row["latency_ms"]) and row["latency_ms"] > 0
    assert set(row["mse"]["S1"]) == {"front", "left", "right"} and all(_finite(x) for x in row["mse"]["S1"].values())
    assert row["test_frames"]["S1"] == 3 and table["missing"] == []
    md = (out / "table1.md").read_text()
    assert md == stdout.rstrip("\n") + "\n" or md in stdout
    assert "| tiny |" in md and "nan" not in md.lower()
    assert (out / "table1.png").stat().st_size > 1000


def test_eval_table_over_seeds_reports_the_mean_std_face_pixels_and_lut(tiny_models, capsys):
    """Runs under RUNS/seedK: a cell is the mean over the seeds with its std; face-pixel and hard-subset columns;
    the latency table's prediction beside the measured latency."""
    import shutil

    from decoder.export import load_vae
    from encoder.arch import get_arch
    from encoder.evaluate import cached_evaluation
    from encoder.data import read_test_split
    from encoder.train import EncoderTrainConfig, train_encoder

    runs = tiny_models["root"] / "seeded"
    shutil.copytree(tiny_models["runs"] / "S1" / "tiny", runs / "seed0" / "S1" / "tiny")
    from encoder.data import HmcDataConfig, render_session

    train = render_session("S1", 3, 11, 1.0, 30.0, "train", HmcDataConfig(render_size=16, enc_texture_size=16),
                           hmc_size=32)
    vae = load_vae(model_dir=tiny_models["decoders"] / "S1")
    train_encoder(runs / "seed1" / "S1" / "tiny", get_arch("tiny"),
                  EncoderTrainConfig(batch_size=8, steps=3, augment=False, threads=1, seed=1), data=train, vae=vae,
                  progress=False)
    out = tiny_models["root"] / "seeded_results"
    rc, stdout, stderr = _run(capsys, "eval", "table", "--identities", "S1", "--models", "tiny", "--out", str(out),
                              "--runs", str(runs), "--seeds", "0,1,2", "--decoders", str(tiny_models["decoders"]),
                              "--data-dir", str(tiny_models["data"]), "--frames", "3", "--size", "32",
                              "--bench-runs", "3", "--lut", str(tiny_models["root"] / "lut.json"))
    assert rc == 0, stderr
    row = json.loads((out / "table1.json").read_text())["models"]["tiny"]
    assert row["seeds"]["S1"] == 2  # seed2 has no run
    test = read_test_split(tiny_models["data"] / "test_S1.npz")
    each = [cached_evaluation(runs / f"seed{k}" / "S1" / "tiny", "S1", test, vae, size=32, max_frames=3) for k in (0, 1)]
    assert row["mse_face_mean"]["S1"] == pytest.approx(np.mean([r["mse_face_mean"] for r in each]))
    assert row["mse_face_mean_std"]["S1"] == pytest.approx(np.std([r["mse_face_mean"] for r in each], ddof=1))
    assert row["mse_face_mean"]["S1"] > row["mse_mean"]["S1"] > 0  # face pixels: no easy black background
    assert _finite(row["lut_ms"]) and row["lut_ms"] > 0
    assert "± " in (out / "table1.md").read_text()
    rc, _, stderr = _run(capsys, "eval", "table", "--identities", "S1", "--models", "tiny", "--out", str(out),
                         "--runs", str(runs), "--seeds", "zero")
    assert rc != 0 and "--seeds" in stderr


def test_robustness_compares_new_users_performances_with_the_test_split(tiny_models, capsys, tmp_path):
    """Held-out performances with fast extremes / asymmetric expressions are rendered in unseen sessions, evaluated
    like the test split and reported as ratios to it; renders are cached."""
    from decoder.export import load_vae
    from encoder.data import HmcDataConfig, read_test_split
    from encoder.robustness import condition_data, evaluate_robustness, write_results

    vae = load_vae(model_dir=tiny_models["decoders"] / "S1")
    test = read_test_split(tiny_models["data"] / "test_S1.npz")
    small = HmcDataConfig(render_size=16, enc_texture_size=16)
    kw = dict(seconds=2.0, sessions=(301, 302, 303), hmc_size=32, data_cfg=small, progress=False)
    fast = condition_data("S1", "frequent-fast", **kw)
    asym = condition_data("S1", "asymmetric", **kw)
    assert len(fast["views"]) == len(asym["views"]) == 180 and fast["extreme"].mean() > 0.2 and asym["asymmetric"].any()
    assert not np.array_equal(fast["views"], asym["views"])
    model = tiny_models["runs"] / "S1" / "tiny"
    r = evaluate_robustness(model, "S1", vae, test, frames=6, size=32, cache_dir=tmp_path, **kw)
    assert set(r["conditions"]) == {"frequent-fast", "asymmetric"}
    for c, x in r["conditions"].items():
        assert x["frames"] == 6 and x["ratio"]["mse_face_mean"] == pytest.approx(x["mse_face_mean"] / r["test"]["mse_face_mean"])
        assert (model / f"eval_S1_{c}.json").is_file()
    assert (tmp_path / "robust_S1_asymmetric.npz").is_file()
    path = write_results([r], tmp_path / "res", machine="test cpu", command="avcall eval robustness")
    assert json.loads(path.read_text())["results"][0]["identity"] == "S1"
    assert "| tiny | S1 |" in (tmp_path / "res" / "robustness.md").read_text()
    rc, _, stderr = _run(capsys, "eval", "robustness", "--conditions", "sideways")
    assert rc != 0 and "unknown sideways" in stderr and "Traceback" not in stderr


def test_eval_ablation_writes_table2_with_every_row_found(tiny_models, capsys):
    import shutil

    runs = tiny_models["root"] / "ablations"
    for sub in ("shared", "res192"):
        shutil.copytree(tiny_models["runs"] / "S1" / "tiny", runs / "S1" / sub)
    out = tiny_models["root"] / "t2"
    rc, stdout, stderr = _run(capsys, "eval", "ablation", "--identity", "S1", "--ave", str(tiny_models["runs"] / "S1" / "tiny"),
                              "--runs", str(runs), "--out", str(out), "--lut", "", "--data",
                              str(tiny_models["data"] / "test_S1.npz"), "--decoder-dir", str(tiny_models["decoders"] / "S1"),
                              "--frames", "3", "--size", "32", "--bench-runs", "3")
    assert rc == 0, stderr
    t = json.loads((out / "table2.json").read_text())
    assert [r["name"] for r in t["rows"]] == ["AVE-NAS", "shared-arch", "fixed-resolution"]
    assert t["missing"] == ["no-extreme-term", "flops-constrained"]
    assert all(_finite(r["latency_ms"]) and _finite(r["mse_face_mean"]) for r in t["rows"])
    assert t["rows"][0]["mse_face_mean"] == t["rows"][1]["mse_face_mean"]  # the same model evaluates the same
    assert (out / "table2_archs" / "shared-arch.json").is_file() and (out / "table2.png").stat().st_size > 1000
    assert "| AVE-NAS |" in (out / "table2.md").read_text()
    rc, _, stderr = _run(capsys, "eval", "ablation", "--ave", str(runs / "nothing"), "--runs", str(runs),
                         "--out", str(out))
    assert rc != 0 and "fusion.onnx missing" in stderr


def test_the_face_a_decoder_models_is_the_studio_head_mesh_inside_its_foreground(tiny_models):
    from decoder.data import sample_poses
    from decoder.evaluate import HeldOutProbe

    probe = HeldOutProbe(tiny_models["decoders"] / "S1", "S1", threads=1, size=128)
    try:
        expr, gaze = sample_poses(2, 5)
        for view in ("front", "left"):
            head = probe.head_mask(expr[1], gaze[1], view)
            fg = probe.truth(expr[1], gaze[1], view).max(-1) > 0
            assert head.shape == fg.shape == (128, 128)
            assert head.sum() > 0.1 * fg.sum()  # the face is a large part of the studio's foreground ...
            assert head.sum() < 0.9 * fg.sum()  # ... but not hair, ears, neck and shoulders
            assert (head & ~fg).sum() < 0.02 * head.sum()  # and it lies inside it
    finally:
        probe.close()


def test_eval_distill_compares_decoders_per_role_with_seeds_and_a_picture(tiny_models, capsys):
    dec = str(tiny_models["decoders"] / "S1")
    out = tiny_models["root"] / "distill"
    rc, stdout, stderr = _run(capsys, "eval", "distill", "--teacher", dec, "--current", dec, "--student", f"{dec},{dec}",
                              "--student-scratch", dec, "--student", dec, "--poses", "2", "--out-dir", str(out), "--json")
    assert rc == 0, stderr
    t = json.loads(stdout)
    # one row per --student given (students of several sizes), grouped by size, roles in the study's order
    assert [(r["role"], r["seeds"]) for r in t["rows"]] == [("teacher", 1), ("current", 1), ("student", 2),
                                                            ("student", 1), ("student-scratch", 1)]
    for r in t["rows"]:
        assert {"name", "role", "params", "mflops", "decode_ms", "psnr_face_mean", "seeds"} <= set(r)
        assert r["params"] > 0 and r["mflops"] > 0 and r["decode_ms"] > 0 and _finite(r["psnr_face_mean"])
        assert 0 < r["ssim_face_mean"] <= 1 and set(r["psnr_face"]) == {"front", "left", "right"}
        assert _finite(r["psnr_foreground_mean"]) and _finite(r["psnr_mean"])
        # the frame's black background is easy: the whole frame scores above the foreground
        assert r["psnr_mean"] > r["psnr_foreground_mean"]
    student = t["rows"][2]
    assert student["seeds"] == 2 and student["psnr_face_mean_std"] == pytest.approx(0.0, abs=1e-9)
    assert student["psnr_face_mean"] == pytest.approx(t["rows"][0]["psnr_face_mean"])  # the same model
    assert json.loads((out / "distill.json").read_text())["rows"][0]["role"] == "teacher"
    assert (out / "distill_side_by_side.png").stat().st_size > 1000 and "| teacher" in (out / "distill.md").read_text()
    rc, _, stderr = _run(capsys, "eval", "distill", "--teacher", str(tiny_models["root"]), "--poses", "1")
    assert rc != 0 and "config.json missing" in stderr
