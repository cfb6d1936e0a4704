"""The encoder subcommands, on a parser built the way ``avcall`` builds its own."""
from __future__ import annotations

import argparse
import json

import pytest

from avcall import encoder_cmds


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avcall")
    sub = parser.add_subparsers(dest="command")
    for top, add in (("train", encoder_cmds.add_train), ("eval", encoder_cmds.add_eval), ("bench", encoder_cmds.add_bench)):
        p = sub.add_parser(top)
        s = p.add_subparsers(dest=f"{top}_command")
        add(s)
    return parser


def test_subcommands_parse_with_defaults():
    p = _parser()
    a = p.parse_args(["train", "encoder", "--arch", "EEM-ch50", "--identity", "S2", "--no-reweight", "--steps", "10"])
    assert a.arch == "EEM-ch50" and a.identity == "S2" and a.no_reweight and a.steps == 10 and callable(a.func)
    a = p.parse_args(["eval", "table", "--identities", "S1,S2,S3", "--models", "EEM,EEM-ch50,EEM-res50", "--out", "x/"])
    assert a.identities == "S1,S2,S3" and a.out == "x/" and callable(a.func)
    a = p.parse_args(["eval", "encoder", "--arch", "EEM"])
    assert a.frames > 0 and callable(a.func)


def test_bench_encoder_json_reports_every_stage(capsys):
    a = _parser().parse_args(["bench", "encoder", "--arch", "tiny", "--runs", "5", "--warmup", "1", "--json"])
    assert a.func(a) == 0
    r = json.loads(capsys.readouterr().out)
    assert set(r["encode_ms_p50"]) == {"left_eye", "right_eye", "mouth", "fusion", "total"}
    assert all(v > 0 for v in r["encode_ms_p50"].values())
    assert r["threads"] == 1 and r["machine"]


def test_table_markdown_and_plot_from_a_table_dict(tmp_path):
    from encoder.table import plot_table, render_markdown

    table = {"machine": "test cpu", "command": "avcall eval table --identities S1", "notes": "n", "missing": ["S2/EEM"],
             "models": {
                 "EEM": {"mflops": 3069.4, "latency_ms": 16.8, "mse": {"S1": {"front": 10.0, "left": 11.0, "right": 12.0}},
                         "mse_extreme": {"S1": 20.0}},
                 "EEM-res50": {"mflops": 768.0, "latency_ms": 4.5, "mse": {}, "mse_extreme": {}},
             }}
    md = render_markdown(table)
    assert "| EEM | 3069 | – | 16.80 | – | 11.00 | 20.00 | 11.00 | 20.00 |" in md
    assert "| EEM-res50 | 768 | – | 4.50 | – | – | – | – | – |" in md
    assert "test cpu" in md and "S2/EEM" in md
    assert "earlier run" not in md
    # A cell kept from an earlier run names the command that produced it.
    table["models"]["EEM"]["evaluated_by"] = {"S1": "avcall eval table --identities S1,S2"}
    assert "Kept from an earlier run of `avcall eval table --identities S1,S2` (no trained model here now): EEM/S1." \
        in render_markdown(table)
    plot_table(table, tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 1000
    # Face-pixel columns, seed std and the speed-up once the rows have them.
    table["models"]["EEM"] |= {"mse_face_mean": {"S1": 40.0}, "mse_face_mean_std": {"S1": 1.5},
                               "mse_face_asym_extreme": {"S1": 55.0}, "mse_mean": {"S1": 11.0}, "lut_ms": 15.0,
                               "speedup_vs_eem": 1.0}
    table["models"]["EEM-res50"] |= {"mse_face_mean": {}, "speedup_vs_eem": 16.8 / 4.5}
    md = render_markdown(table)
    assert "| EEM | 3069 | 15.00 | 16.80 | 1.0× | 40.00 ± 1.50 | 55.00 | 11.00 | 20.00 | 40.00 | 55.00 | 11.00 | 20.00 |" in md
    assert "| EEM-res50 | 768 | – | 4.50 | 3.7× | – | – | – | – | – | – | – | – |" in md
    # One schedule for every row is said once; different schedules per row.
    data = {"frames": 5863, "sessions": 16, "extreme_probability": 0.35, "asymmetric_probability": 0.2}
    for r in table["models"].values():
        r |= {"train_steps": {"S1": 1000}, "train_data": {"S1": data}}
    md = render_markdown(table)
    assert "every row: S1 1000 on 5863 frames (16 sessions, 35% extreme segments, 20% asymmetric)" in md
    assert "EEM-res50: S1" not in md
    table["models"]["EEM-res50"]["train_steps"] = {"S1": 500}
    md = render_markdown(table)
    assert "every row" not in md and "EEM: S1 1000 on" in md and "EEM-res50: S1 500 on" in md


@pytest.mark.parametrize("argv, message", [
    (["--make-default"], "--make-default needs --install"),
    (["--rom", "--train-sessions", "4"], "--rom is its own dataset"),
    (["--train-sessions", "4"], "give it its own cache with --data"),
])
def test_train_encoder_refuses_contradictory_data_options_in_one_line(argv, message, capsys):
    from avcall.cli import main

    rc = main(["train", "encoder", *argv])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
