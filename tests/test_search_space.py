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


@pytest.fixture(scope="module")
def tiny_setup(tiny_hmc_setup):
    return tiny_hmc_setup


def test_a_tiny_search_takes_gumbel_and_policy_gradient_steps_resumes_and_writes_an_architecture(tiny_setup, tmp_path):
    from encoder.export import save_model
    from encoder.runtime import HmcEncoder
    from encoder.search import FlopTable, SearchConfig, read_log, run_search

    data, vae = tiny_setup
    cfg = SearchConfig(name="AVE-test", target_ms=0.5, latency="flops", batch_size=4, steps=3, warmup_frac=0.2,
                       augment=False, threads=1, checkpoint_every_s=1e9, arch_lr=0.5, res_lr=0.5)
    table = FlopTable()
    r = run_search(tmp_path / "s", cfg, data=dict(data), vae=vae, table=table, space=SMALL, progress=False)
    assert r.steps == 3
    ck = torch.load(tmp_path / "s" / "checkpoint.pt", weights_only=True)
    logits = {k: v for k, v in ck["model"].items() if k.startswith("logits.") or k == "fusion_logits"}
    res = [v for k, v in logits.items() if k.endswith(".resolution")]
    assert any(v.abs().sum() > 0 for v in res)  # the policy gradient moved the resolution policies
    assert any(v.abs().sum() > 0 for k, v in logits.items() if not k.endswith(".resolution"))  # Gumbel: the others
    rows = read_log(tmp_path / "s" / "search_log.jsonl")
    assert [x["step"] for x in rows] == [1] and rows[0]["warmup"]
    # resume: two more steps continue from the checkpoint
    ck["search_config"]["steps"] = 5
    torch.save(ck, tmp_path / "s" / "checkpoint.pt")
    r2 = run_search(tmp_path / "s", SearchConfig(**{**cfg.to_dict(), "steps": 5}), data=dict(data), vae=vae,
                    table=table, space=SMALL, progress=False)
    assert r2.steps == 5
    arch = EncoderArch.from_json((tmp_path / "s" / "arch.json").read_text())
    assert arch.name == "AVE-test" and (tmp_path / "s" / "search_trajectory.png").stat().st_size > 0
    assert json.loads((tmp_path / "s" / "choice.json").read_text())["predicted_ms"] == pytest.approx(r2.predicted_ms)
    model = build_encoder(arch).eval()
    save_model(model, tmp_path / "m", identity="S1")  # exports with ONNX parity
    assert HmcEncoder(tmp_path / "m").encode(data["views"][0]).z.shape == (8,)


def test_a_search_warm_started_from_a_weight_warm_up_takes_its_weights_not_its_logits(tiny_setup, tmp_path):
    from avcore.errors import UsageError
    from encoder.search import FlopTable, SearchConfig, run_search

    data, vae = tiny_setup
    base = dict(name="AVE-test", target_ms=0.5, latency="flops", batch_size=4, augment=False, threads=1,
                checkpoint_every_s=1e9, arch_lr=0.5, res_lr=0.5)
    run_search(tmp_path / "warm", SearchConfig(**base, steps=2, warmup_frac=1.0), data=dict(data), vae=vae,
               table=FlopTable(), space=SMALL, progress=False)
    warm = torch.load(tmp_path / "warm" / "checkpoint.pt", weights_only=True)["model"]
    assert all(v.abs().sum() == 0 for k, v in warm.items() if "logits" in k)  # a warm-up never moves the logits
    # Weights frozen (lr 0) so they must still be the warm-up's after the search's own steps.
    cfg = SearchConfig(**base, steps=2, warmup_frac=0.0, lr=0.0, warm_start=str(tmp_path / "warm"))
    run_search(tmp_path / "s", cfg, data=dict(data), vae=vae, table=FlopTable(), space=SMALL, progress=False)
    got = torch.load(tmp_path / "s" / "checkpoint.pt", weights_only=True)["model"]
    weights = [k for k, v in warm.items() if "logits" not in k and v.dtype.is_floating_point and "running" not in k]
    assert weights and all(torch.equal(got[k], warm[k]) for k in weights)
    assert any(got[k].abs().sum() > 0 for k in got if "logits" in k)  # its own architecture steps ran
    with pytest.raises(UsageError, match="another space"):
        run_search(tmp_path / "bad", SearchConfig(**{**cfg.to_dict(), "identity": "S2"}), data=dict(data), vae=vae,
                   table=FlopTable(), space=SMALL, progress=False)
    # A shared-architecture search starts from the same per-view weights.
    run_search(tmp_path / "shared", SearchConfig(**{**cfg.to_dict(), "shared": True}), data=dict(data), vae=vae,
               table=FlopTable(), space=SMALL, progress=False)
    got = torch.load(tmp_path / "shared" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(got[k], warm[k]) for k in weights)


def test_the_latency_term_steers_the_architecture_towards_cheaper_choices():
    """Under latency pressure alone, the expected cost over the architecture distributions falls, and so does the
    cost of the most likely architecture (costs from the FLOPs table, so no timing here)."""
    from encoder.search import FlopTable
    from encoder.supernet import SuperNet

    torch.manual_seed(0)
    net = SuperNet(SMALL, latent_dim=8)
    table = FlopTable()
    res = {v: 32 for v in VIEW_NAMES}
    opt = torch.optim.Adam(net.arch_parameters(), lr=0.1)
    start = float(net.expected_latency(table, res).detach())
    with torch.no_grad():  # start from a costly most-likely architecture: the widest choices
        for v in VIEW_NAMES:
            for p in net.logits[v].width:
                p[-1] = 1.0
    before = table.predict(to_arch(SMALL, net.derive(), latent_dim=8))["total"]
    for _ in range(30):
        lat = net.expected_latency(table, res)
        opt.zero_grad()
        lat.backward()
        opt.step()
    assert float(net.expected_latency(table, res).detach()) < 0.8 * start
    assert table.predict(to_arch(SMALL, net.derive(), latent_dim=8))["total"] < before


def test_a_shared_search_gives_every_view_the_same_architecture():
    from encoder.supernet import SuperNet

    torch.manual_seed(1)
    net = SuperNet(SMALL, latent_dim=8, shared=True)
    with torch.no_grad():
        for p in net.arch_parameters():
            p.normal_()
    choice = net.derive()
    assert len({json.dumps(choice.views[v].to_dict()) for v in VIEW_NAMES}) == 1
    w = net.sample(1.0)
    assert all(w["views"][v] is w["views"]["left_eye"] for v in VIEW_NAMES)
    assert len(net.resolution_parameters()) == 1
    own = SuperNet(SMALL, latent_dim=8)
    assert len(own.arch_parameters()) == 3 * (len(net.arch_parameters()) - 1) + 1


def test_a_searched_architecture_installs_into_the_registry(tmp_path):
    from encoder.arch import get_arch, install_arch, list_archs, register_arch_file

    arch = to_arch(SMALL, sample_choice(SMALL, np.random.default_rng(9), name="x"), latent_dim=8)
    (tmp_path / "arch.json").write_text(arch.to_json())
    out = install_arch(tmp_path / "arch.json", "AVE-test-install", directory=tmp_path / "archs")
    assert out.name == "AVE-test-install.json" and "AVE-test-install" in list_archs()
    got = get_arch("AVE-test-install")
    assert got.name == "AVE-test-install" and got.views == arch.views
    with pytest.raises(ValueError, match="already registered"):
        install_arch(tmp_path / "arch.json", "AVE-test-install", directory=tmp_path / "archs")
    bad = tmp_path / "other.json"
    bad.write_text(arch.to_json())  # named "x" inside
    with pytest.raises(ValueError, match="named"):
        register_arch_file(bad)
    # An arch.json file trains without registering (the Table 2 ablations).
    assert get_arch(str(tmp_path / "arch.json")).views == arch.views
    with pytest.raises(ValueError, match="missing"):
        get_arch(str(tmp_path / "nowhere.json"))


def test_the_lut_check_compares_predictions_with_whole_models(tmp_path):
    from encoder.lut import check_lut, plot_lut

    table = LatencyTable(tmp_path / "lut.json", runs=3, warmup=1)
    r = check_lut(4, seed=1, table=table, progress=False, include=("tiny-search",), space=SMALL, runs=3)
    assert r["n"] == 5 and [p["arch"] for p in r["points"]] == ["random-0", "random-1", "random-2", "random-3", "tiny-search"]
    for p in r["points"]:
        assert p["predicted_ms"] > 0 and p["measured_ms"] > 0
        assert p["predicted_ms"] == pytest.approx(table.predict(EncoderArch.from_dict(p["arch_json"]))["total"])
        assert set(p["measured"]) == {*VIEW_NAMES, "fusion", "total"}
    assert -1 <= r["pearson_r"] <= 1 and r["mean_abs_pct_error"] >= 0
    assert json.loads((tmp_path / "lut.json").read_text())["entries"]  # the table was cached
    assert plot_lut(r, tmp_path / "lut.png").stat().st_size > 0
    # Measured again in one sitting: every entry comes back, a stale value is replaced.
    keys = set(table.entries)
    table.entries["empty:"] = 999.0
    table.remeasure(progress=False)
    assert set(table.entries) == keys and table.entries["empty:"] < 100
    assert LatencyTable(tmp_path / "lut.json").entries == table.entries


def test_the_latency_term_of_a_sampled_path_is_that_paths_cost_and_has_gradients():
    """With a sample's weights the latency term costs the sampled operators (hard, straight-through) instead of
    averaging every candidate, and its gradient still reaches the logits."""
    from encoder.search import FlopTable
    from encoder.supernet import SuperNet

    torch.manual_seed(3)
    net = SuperNet(SMALL, latent_dim=8)
    table = FlopTable()
    res = {v: 24 for v in VIEW_NAMES}
    costs = []
    for _ in range(6):
        w = net.sample(1.0)
        lat = net.expected_latency(table, res, w)
        net.zero_grad()
        lat.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.arch_parameters())
        costs.append(float(lat.detach()))
    avg = float(net.expected_latency(table, res).detach())
    assert len({round(c, 6) for c in costs}) > 1  # different paths, different costs
    assert all(abs(c - avg) > 1e-9 for c in costs)  # not the plain average over the candidates


def test_a_layer_more_likely_there_than_skipped_is_kept_when_deriving():
    from encoder.supernet import SKIP, candidates, layer_choice

    cands = candidates(SMALL, True)
    assert cands[-1] == (SKIP, 0)
    p = torch.full((len(cands),), 0.59 / (len(cands) - 1))
    p[-1] = 0.4  # skip is the single most likely candidate, but the layer is more likely there than not
    p[2] += 0.01
    assert layer_choice(p.log(), cands) == 2
    p = torch.full((len(cands),), 0.45 / (len(cands) - 1))
    p[-1] = 0.55
    assert layer_choice(p.log(), cands) == len(cands) - 1
    assert layer_choice(torch.tensor([0.1, 2.0, 0.3]), [("conv", 3), ("fmb4", 3), ("mb3", 3)]) == 1  # no skip allowed
