"""The encoder benchmark and its performance predictors (CARL, GCN): graphs, training, Ray trials, evaluation."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from encoder.arch import get_arch
from encoder.flops import analytic_flops
from encoder.nas.graph import FEATURES, MAX_NODES, TYPES, arch_graph, batch_graphs
from encoder.search_space import SearchSpace, sample_choice, to_arch

from test_search_space import SMALL


def test_an_architecture_graph_follows_the_data_through_views_and_fusion():
    arch = get_arch("EEM")
    x, adj, n = arch_graph(arch)
    # Per view: input, stem, 9 conv layers, head, pooling = 13; plus fusion and output.
    assert n == 3 * 13 + 2 and x.shape == (MAX_NODES, len(FEATURES)) and not x[n:].any() and not adj[n:].any()
    kinds = [TYPES[int(np.argmax(x[i, :len(TYPES)]))] for i in range(n)]
    assert kinds[:13] == ["input", "stem"] + ["conv"] * 9 + ["head", "pool_mean"] and kinds[-2:] == ["fusion", "output"]
    fusion = n - 2
    assert set(np.flatnonzero(adj[:, fusion])) == {12, 25, 38}  # every view's pooling feeds the fusion
    assert adj[fusion, n - 1] == 1 and adj.sum() == 3 * 12 + 3 + 1  # chains, three pools, fusion -> output
    # What differs between architectures shows in the features.
    flat = arch_graph(get_arch("EEM-flat"))[0]
    assert flat[12, TYPES.index("pool_flatten")] == 1 and not np.array_equal(flat, x)
    res = arch_graph(get_arch("EEM-res50"))[0]
    assert res[0, FEATURES.index("resolution")] == pytest.approx(96 / 192)
    # Skipped layers compute nothing and are no nodes; every point of the space fits.
    rng = np.random.default_rng(1)
    space = SearchSpace()
    for _ in range(30):
        a = to_arch(space, sample_choice(space, rng), latent_dim=256)
        layers = sum(b.repeats for v in a.views.values() for b in v.decoded() if b.op != "skip")
        headless = sum(1 for v in a.views.values() if not v.head)
        assert arch_graph(a)[2] == layers + 3 * 4 - headless + 2  # input, stem, head, pool per view; fusion, output


def test_an_architecture_graph_is_deterministic_and_survives_the_arch_json_round_trip():
    from encoder.arch import EncoderArch

    rng = np.random.default_rng(7)
    space = SearchSpace()
    for _ in range(10):
        a = to_arch(space, sample_choice(space, rng), latent_dim=256)
        x, adj, n = arch_graph(a)
        again = EncoderArch.from_dict(json.loads(json.dumps(a.to_dict())))
        x2, adj2, n2 = arch_graph(again)
        assert n == n2 and np.array_equal(x, x2) and np.array_equal(adj, adj2)
    # Different architectures give different graphs.
    b = to_arch(space, sample_choice(space, rng), latent_dim=256)
    assert not np.array_equal(arch_graph(b)[0], x) or not np.array_equal(arch_graph(b)[1], adj)


def _synthetic(n: int, seed: int):
    """Architectures with a score the graph determines (deeper networks at higher input resolutions score
    higher), plus noise."""
    rng = np.random.default_rng(seed)
    space = SearchSpace()
    archs = [to_arch(space, sample_choice(space, rng), latent_dim=256) for _ in range(n)]
    y = np.array([sum(sum(b.repeats for b in v.decoded() if b.op != "skip") * v.resolution / 192 for v in a.views.values())
                  for a in archs]) + 0.3 * rng.standard_normal(n)
    return batch_graphs(archs), y


@pytest.mark.parametrize("kind", ["gcn", "carl"])
def test_predictors_learn_to_rank_held_out_architectures(kind):
    from encoder.nas.predictors import PredictorConfig, fit_predictor, kendall_tau, predict

    torch.set_num_threads(1)
    g, y = _synthetic(48, 0)
    tr, te = slice(0, 24), slice(24, 48)
    pick = lambda s: {k: v[s] for k, v in g.items()}  # noqa: E731
    untrained = fit_predictor(pick(tr), y[tr], PredictorConfig(kind=kind, epochs=1))
    model = fit_predictor(pick(tr), y[tr], PredictorConfig(kind=kind, epochs=150))
    tau = kendall_tau(predict(model, pick(te)), y[te])
    assert tau > 0.5 and tau > kendall_tau(predict(untrained, pick(te)), y[te]) + 0.2
    if kind == "carl":  # the masks split every graph into a critical and a redundant part
        with torch.no_grad():
            out = model({k: torch.as_tensor(v) for k, v in pick(te).items()})
        share = out["node_mask"].sum(1) / torch.as_tensor(g["mask"][te]).sum(1)
        assert torch.all((share > 0.1) & (share < 0.9))
        assert torch.all(out["edge_mask"] <= torch.as_tensor(g["adj"][te]))  # masks only existing edges


def test_carl_ranks_better_than_chance_where_quality_depends_only_on_one_motif():
    """Synthetic benchmark: the score is the number of fused inverted-residual (fmb) layers and nothing else."""
    from encoder.nas.predictors import PredictorConfig, fit_predictor, kendall_tau, predict

    torch.set_num_threads(1)
    rng = np.random.default_rng(11)
    space = SearchSpace()
    archs = [to_arch(space, sample_choice(space, rng), latent_dim=256) for _ in range(48)]
    y = np.array([sum(b.repeats for v in a.views.values() for b in v.decoded() if b.op == "fmb") for a in archs], float)
    assert len(set(y)) > 3
    g = batch_graphs(archs)
    pick = lambda s: {k: v[s] for k, v in g.items()}  # noqa: E731
    untrained = fit_predictor(pick(slice(0, 24)), y[:24], PredictorConfig(kind="carl", epochs=1))
    model = fit_predictor(pick(slice(0, 24)), y[:24], PredictorConfig(kind="carl", epochs=300))
    tau = kendall_tau(predict(model, pick(slice(24, 48))), y[24:])
    # Chance: tau of a random order of 24 is about 0 with std 0.15.
    assert tau > 0.6 and tau > kendall_tau(predict(untrained, pick(slice(24, 48))), y[24:]) + 0.3


def test_carl_losses_push_the_redundant_part_to_uniform_and_keep_intervened_ranks():
    from encoder.nas.predictors import CARLPredictor, PredictorConfig, ranking_loss

    cfg = PredictorConfig(kind="carl")
    g, y = _synthetic(12, 3)
    gt = {k: torch.as_tensor(v) for k, v in g.items()}
    yt = torch.as_tensor(y, dtype=torch.float32)
    model = CARLPredictor(cfg)
    with torch.no_grad():
        base = float(model.loss(gt, yt, cfg, torch.Generator().manual_seed(0)))
        # The extra terms add to the ranking loss of the causal head; switched off, only that one is left.
        off = float(model.loss(gt, yt, PredictorConfig(lambda_uniform=0, lambda_intervention=0, lambda_ratio=0),
                               torch.Generator().manual_seed(0)))
        assert base > off
        assert off == pytest.approx(float(ranking_loss(model(gt)["pred"], yt)), rel=1e-5)
        # The uniform term is zero only for a redundant head that cannot tell architectures apart.
        only_uniform = PredictorConfig(lambda_uniform=1, lambda_intervention=0, lambda_ratio=0)
        u = float(model.loss(gt, yt, only_uniform, torch.Generator().manual_seed(0))) - off
        model.f_r[-1].weight.zero_()
        model.f_r[-1].bias.zero_()
        assert u > 0 and float(model.loss(gt, yt, only_uniform, torch.Generator().manual_seed(0))) - off == pytest.approx(0, abs=1e-6)
    # Ranking loss: zero-ish for the true order, large for the reversed one.
    assert ranking_loss(yt * 10, yt) < 0.01 < ranking_loss(-yt, yt)


def test_carl_critical_and_redundant_masks_sum_to_one_on_every_node_and_edge():
    from encoder.nas.predictors import CARLPredictor, PredictorConfig

    g, _ = _synthetic(6, 5)
    gt = {k: torch.as_tensor(v) for k, v in g.items()}
    with torch.no_grad():
        p = CARLPredictor(PredictorConfig(kind="carl")).parts(gt)
    assert torch.allclose(p["node_mask"] + p["node_mask_r"], gt["mask"])  # one on nodes, zero on padding
    assert torch.allclose(p["edge_mask"] + p["edge_mask_r"], gt["adj"])
    assert torch.all((p["node_mask"] > 0) & (p["node_mask"] < 1) | (gt["mask"] == 0))  # soft, not a hard cut


def test_carl_intervention_loss_is_zero_when_the_swapped_parts_match_and_not_otherwise():
    from encoder.nas.predictors import CARLPredictor, PredictorConfig

    torch.manual_seed(0)
    model = CARLPredictor(PredictorConfig(kind="carl"))
    g, _ = _synthetic(4, 6)
    gt = {k: torch.as_tensor(v) for k, v in g.items()}
    same = {k: torch.cat([v[:1], v[:1]]) for k, v in gt.items()}  # one architecture twice
    swap = torch.tensor([1, 0])
    with torch.no_grad():
        p = model.parts(gt)
        assert float(model.intervention_loss(p, torch.arange(4))) == 0.0  # each keeps its own redundant part
        assert float(model.intervention_loss(model.parts(same), swap)) == pytest.approx(0.0, abs=1e-12)
        assert float(model.intervention_loss(p, torch.tensor([1, 2, 3, 0]))) > 1e-6  # other redundant parts
        # With a redundant part that carries nothing (its convolution zeroed), any swap keeps the prediction.
        model.conv_r.weight.zero_()
        model.conv_r.bias.zero_()
        assert float(model.intervention_loss(model.parts(gt), torch.tensor([1, 2, 3, 0]))) == pytest.approx(0.0, abs=1e-12)


def test_a_supernet_path_runs_exactly_the_chosen_architecture():
    from encoder.supernet import SKIP, SuperNet, candidates
    from encoder.search_space import MAX_LAYERS

    net = SuperNet(SMALL, latent_dim=8)
    rng = np.random.default_rng(4)
    for _ in range(5):
        c = sample_choice(SMALL, rng)
        w = net.path_weights(c)
        for v, vc in c.views.items():
            wv = w["views"][v]
            assert SMALL.stem_widths[int(wv["stem"].argmax())] == vc.stem and SMALL.pools[int(wv["pool"].argmax())] == vc.pool
            for s in range(len(SMALL.stage_strides)):
                assert SMALL.stage_widths[s][int(wv["width"][s].argmax())] == vc.widths[s]
                for layer in range(MAX_LAYERS):
                    cands = candidates(SMALL, layer > 0 or (s == 0 and 0 in SMALL.first_stage_depths))
                    got = cands[int(wv["op"][s][layer].argmax())]
                    assert got == ((vc.ops[s][layer], vc.kernels[s][layer]) if layer < vc.depths[s] else (SKIP, 0))
        out = net(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), {v: x.resolution for v, x in c.views.items()}, w)
        assert out["z"].shape == (2, 8)


@pytest.fixture(scope="module")
def bench_setup(tiny_hmc_setup, tmp_path_factory):
    """Files a Ray worker can load: a tiny decoder, an HMC cache with train and test splits, a tiny supernet."""
    from decoder.export import save_model
    from encoder.search import FlopTable, SearchConfig, run_search

    data, vae = tiny_hmc_setup
    root = tmp_path_factory.mktemp("nasbench")
    save_model(vae.decoder, root / "decoder", studio_identity="S1", encoder=vae.encoder)
    half = len(data["views"]) // 2
    split = {f"train_{k}": (v if k == "coverage" else v[:half]) for k, v in data.items()}
    split |= {f"test_{k}": (v if k == "coverage" else v[half:]) for k, v in data.items()}
    np.savez(root / "data.npz", **split)
    run_search(root / "supernet", SearchConfig(latency="flops", batch_size=4, steps=2, warmup_frac=1.0, augment=False,
                                               threads=1, checkpoint_every_s=1e9), data=dict(data), vae=vae,
               table=FlopTable(), space=SMALL, progress=False)
    return root


def test_the_benchmark_runs_its_trials_on_ray_writes_them_as_they_finish_and_resumes(bench_setup):
    pytest.importorskip("ray")
    from encoder.nas.bench import BenchConfig, read_bench, run_benchmark, write_bench

    root = bench_setup
    cfg = BenchConfig(archs=4, trained=2, steps=2, batch_size=4, eval_frames=4, inherit_frames=4, calib_batches=1,
                      render_size=32, chunk=2, supernet=str(root / "supernet"), data_path=str(root / "data.npz"),
                      decoder_dir=str(root / "decoder"), space=SMALL.to_dict(), latent_dim=8)
    out = root / "run"
    bench = run_benchmark(cfg, out, workers=2, progress=False)
    assert len(bench["archs"]) == 4 and len({json.dumps(a["arch"]) for a in bench["archs"]}) == 4
    trained = [a for a in bench["archs"] if "trained" in a]
    assert [a["id"] for a in trained] == [a["id"] for a in bench["archs"][:2]]
    for a in trained:
        t = a["trained"]
        assert t["steps"] == 2 and t["mse_face_mean"] > 0 and t["measured_ms"] > 0
        assert (out / "trials" / a["id"] / "fusion.onnx").is_file()
    assert all(a["supernet"]["latent_mse"] > 0 and a["mflops"] > 0 and a["params"] > 0 for a in bench["archs"])
    lines = (out / "trials.jsonl").read_text().splitlines()
    assert len(lines) == 2 and len((out / "inherited.jsonl").read_text().splitlines()) == 4
    # Resume: nothing left to run (Ray is not even started), nothing run twice.
    import ray

    real_init, ray.init = ray.init, None  # calling it would fail the test
    try:
        again = run_benchmark(cfg, out, workers=2, progress=False)
    finally:
        ray.init = real_init
    assert again["archs"] == bench["archs"] and (out / "trials.jsonl").read_text().splitlines() == lines
    path = write_bench(again, root / "bench.json", machine="test cpu", command="avcall search bench")
    assert read_bench(path)["archs"][1]["trained"]["steps"] == 2
    from avcore.errors import UsageError

    with pytest.raises(UsageError, match="other settings"):
        run_benchmark(BenchConfig(**{**cfg.to_dict(), "steps": 3}), out, workers=2, progress=False)


def test_predictor_evaluation_reports_every_ranking_and_the_search_comparison(tmp_path):
    """On a synthetic benchmark whose MSE follows the size of the model, learned predictors and the FLOPs proxy
    rank well and the search comparison finds good architectures."""
    from encoder.nas.evaluate import ranking, render_markdown, search_comparison, write_results

    rng = np.random.default_rng(0)
    space = SearchSpace()
    archs = []
    for i in range(40):
        c = sample_choice(space, rng, name=f"a{i}")
        a = to_arch(space, c, latent_dim=256)
        mf = analytic_flops(a)["total"] / 1e6
        mse = 1000.0 / np.sqrt(mf) * np.exp(0.05 * rng.standard_normal())  # bigger models: lower MSE
        archs.append({"id": c.name, "choice": c.to_dict(), "arch": a.to_dict(), "mflops": mf, "params": int(mf * 10),
                      "lut_ms": mf / 100, "supernet": {"latent_mse": mse * (1 + 0.3 * rng.random())},
                      "trained": {"mse_face_mean": float(mse)}})
    bench = {"version": 1, "archs": archs}
    res = {"portions": ranking(bench, [8, 16], splits=2, epochs=100, progress=False),
           "search": search_comparison(bench, budget=6, runs=2, init=3, epochs=60, progress=False)}
    for p in res["portions"]:
        assert set(p["ktau"]) == {"CARL", "GCN", "mflops", "latency", "params", "supernet"}
        assert p["ktau"]["mflops"]["mean"] > 0.8 and p["ktau"]["CARL"]["mean"] > 0.1  # CARL learns from 8-16
        assert p["n_test"] == 40 - p["n_train"]
        carl, gcn, d = p["ktau"]["CARL"]["values"], p["ktau"]["GCN"]["values"], p["carl_minus_gcn"]
        assert len(carl) == len(gcn) == 2  # one per split, the same splits for both
        assert d["mean"] == pytest.approx(np.mean(np.subtract(carl, gcn)))
        assert d["carl_higher"] == sum(a > b for a, b in zip(carl, gcn))
    s = res["search"]
    assert s["budget"] == 6 and s["runs"] == 2
    assert all(s["best_possible_mse"] <= v for v in s["best_mse"].values())
    res |= {"bench": "synthetic", "archs": 40, "trained": 40, "machine": "test cpu", "command": "avcall eval predictor"}
    write_results(res, tmp_path)
    assert json.loads((tmp_path / "carl.json").read_text())["portions"][0]["n_train"] == 8
    assert "| 16 | 24 |" in render_markdown(res) and (tmp_path / "carl.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="portion"):
        ranking(bench, [39], splits=1, progress=False)


def test_a_benchmark_started_without_a_supernet_gains_its_inherited_quality_later_but_never_a_second_one(bench_setup):
    pytest.importorskip("ray")
    from avcore.errors import UsageError
    from encoder.nas.bench import BenchConfig, run_benchmark

    root = bench_setup
    cfg = BenchConfig(archs=3, trained=0, eval_frames=4, inherit_frames=4, calib_batches=1, render_size=32, chunk=3,
                      supernet="", data_path=str(root / "data.npz"), decoder_dir=str(root / "decoder"),
                      space=SMALL.to_dict(), latent_dim=8)
    out = root / "late-supernet"
    assert all("supernet" not in a for a in run_benchmark(cfg, out, workers=1, progress=False)["archs"])
    with_net = BenchConfig(**{**cfg.to_dict(), "supernet": str(root / "supernet")})
    bench = run_benchmark(with_net, out, workers=1, progress=False)
    assert all(a["supernet"]["latent_mse"] > 0 for a in bench["archs"])
    with pytest.raises(UsageError, match="other settings.*supernet"):
        run_benchmark(BenchConfig(**{**cfg.to_dict(), "supernet": str(root / "elsewhere")}), out, workers=1,
                      progress=False)


def test_a_trial_run_on_another_machine_brings_its_encoder_back_for_the_latency_measurement(bench_setup, tmp_path):
    from encoder.bench import bench_model_dir
    from encoder.nas.bench import BenchConfig, _store_model, sample_pool, train_trial

    root = bench_setup
    cfg = BenchConfig(archs=1, trained=1, steps=2, batch_size=4, eval_frames=4, render_size=32, supernet="",
                      data_path=str(root / "data.npz"), decoder_dir=str(root / "decoder"), space=SMALL.to_dict(),
                      latent_dim=8)
    entry = sample_pool(cfg)[0]
    result = train_trial(entry, cfg.to_dict(), str(tmp_path / "worker-disk" / entry["id"]))
    assert {"arch.json", "fusion.onnx"} <= set(result["files"])
    driver_dir = tmp_path / "driver-disk" / entry["id"]
    row = _store_model(result, driver_dir)
    assert "files" not in row and row["mse_face_mean"] > 0
    assert bench_model_dir(driver_dir, runs=2, warmup=1)["encode_ms_p50"]["total"] > 0
