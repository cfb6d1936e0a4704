"""The AVE-NAS search space and the latency lookup table (no timed assertions: latency goals live in benches)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from encoder.arch import VIEW_NAMES, EncoderArch, get_arch
from encoder.flops import analytic_flops, counted_flops
from encoder.lut import LatencyTable, arch_entries, entry_module, time_entry
from encoder.model import build_encoder
from encoder.search_space import Choice, SearchSpace, sample_choice, to_arch

SMALL = SearchSpace(resolutions=(16, 24, 32), stem_widths=(8,), stage_widths=((8,), (8, 16), (16,), (16, 24), (24,)),
                    head_widths=(0, 16), fusion_widths=(16, 32), feature_dim=16, input_size=32)
"""The real space's grammar at test size (32x32 views)."""


def test_points_of_the_space_round_trip_through_arch_json_and_build():
    rng = np.random.default_rng(0)
    seen_ops, seen_res, seen_pools = set(), set(), set()
    for i in range(12):
        choice = sample_choice(SMALL, rng, name=f"s{i}")
        again = Choice.from_dict(json.loads(json.dumps(choice.to_dict())))
        assert again.to_dict() == choice.to_dict()
        arch = to_arch(SMALL, choice)
        back = EncoderArch.from_json(arch.to_json())
        assert back.to_dict() == arch.to_dict() == to_arch(SMALL, again).to_dict()
        for v in VIEW_NAMES:
            vc, va = choice.views[v], arch.views[v]
            assert va.resolution == vc.resolution and va.pool == vc.pool
            assert len(va.blocks) == sum(vc.depths)  # layers beyond a stage's depth are skipped
            seen_ops |= {b.split("_")[0] + (b.split("_e")[1][0] if "_e" in b else "") for b in va.blocks}
            seen_res.add(va.resolution)
            seen_pools.add(va.pool)
        model = build_encoder(back).eval()
        assert analytic_flops(back) == counted_flops(model)
        with torch.no_grad():
            out = model(torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8))
        assert out["z"].shape == (1, back.latent_dim) and torch.isfinite(out["z"]).all()
    # the views of one point differ: per-view choices are independent
    assert len({json.dumps(choice.views[v].to_dict()) for v in VIEW_NAMES}) > 1
    assert seen_ops >= {"conv", "fmb4", "mb3", "mb6"} and seen_res == {16, 24, 32} and seen_pools == {"mean", "flatten"}


def test_the_lut_sums_its_entries_for_a_known_architecture():
    arch = get_arch("tiny-search")
    keys = arch_entries(arch)
    assert set(keys) == {*VIEW_NAMES, "fusion"}
    # left eye: input, stem, 3 layers (the skip costs nothing), head, output
    assert [k.split(":")[0] for k in keys["left_eye"]] == ["input", "stem", "block", "block", "block", "head", "out"]
    assert keys["left_eye"][0] == "input:32>24" and keys["mouth"][0] == "input:32>16"
    assert [k.split(":")[0] for k in keys["mouth"]] == ["input", "stem", "block", "block", "block", "out"]  # r2, no head
    table = LatencyTable(None)
    table.entries = {"empty:": 0.01}
    value = {}
    for i, k in enumerate(sorted({k for ks in keys.values() for k in ks})):
        value[k] = table.entries[k] = 0.1 + 0.05 * i
    pred = table.predict(arch)
    for model, ks in keys.items():
        assert pred[model] == pytest.approx(sum(value[k] - 0.01 for k in ks) + 0.01)
    assert pred["total"] == pytest.approx(sum(pred[m] for m in keys))
    assert pred["left_eye"] == pred["right_eye"]  # same architecture, same entries


def test_every_entry_of_a_sampled_architecture_exports_and_runs(tmp_path):
    arch = to_arch(SMALL, sample_choice(SMALL, np.random.default_rng(3)))
    keys = sorted({k for ks in arch_entries(arch).values() for k in ks} | {"empty:"})
    for k in keys:
        module, example = entry_module(k)
        with torch.no_grad():
            module(example)
    table = LatencyTable(tmp_path / "lut.json", runs=2, warmup=1)
    table.fill(keys, progress=False)
    assert set(table.entries) == set(keys) and all(v > 0 for v in table.entries.values())
    again = LatencyTable(tmp_path / "lut.json", runs=2, warmup=1)  # the cache is reused, nothing re-measured
    assert again.entries == table.entries
    assert time_entry("empty:", runs=2, warmup=1) > 0
    with pytest.raises(ValueError):
        entry_module("nonsense:1")
