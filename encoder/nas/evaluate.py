"""``avcall eval predictor``: how well predictors and proxies rank trained encoders, and whether that helps search.

**Ranking** (Kendall's tau on held-out architectures): the benchmark's standalone-trained architectures are split
at random into ``n_train`` training architectures and the rest (held out); CARL and the plain GCN are trained on
the first and rank the second; the proxies a user would try first rank them without training: MFLOPs, the LUT
latency and the parameter count (more = better) and the supernet-inherited latent MSE (less = better). Every
portion is repeated over ``splits`` random splits (mean ± std).

**Search at an equal query budget** (a query = one standalone training, looked up in the benchmark, as
tabular NAS benchmarks are used), over the trained architectures under the latency target:

- ``random``: ``budget`` random architectures;
- ``supernet``: the ``budget`` best by the supernet-inherited quality;
- ``predictor``: CARL-guided evolution (CARL §5.3): ``init`` random queries, then repeatedly fit CARL on what
  was queried, mutate the best queried architectures (candidates: the unqueried ones within ``radius`` changed
  choices of a parent among the top three, all unqueried if none is) and query the candidate CARL ranks best.

Reported: the best (lowest) face-pixel MSE each finds, mean over ``runs`` runs.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

PROXIES = ("mflops", "latency", "params", "supernet")


def _trained(bench: dict) -> list[dict]:
    return [a for a in bench["archs"] if a.get("trained")]


def _graphs(rows: list[dict]) -> dict:
    from ..arch import EncoderArch
    from .graph import batch_graphs

    return batch_graphs([EncoderArch.from_dict(r["arch"]) for r in rows])


def score(row: dict) -> float:
    """Higher = better: ``-log`` face-pixel MSE of the standalone training."""
    return -float(np.log(row["trained"]["mse_face_mean"]))


def proxy_score(row: dict, name: str) -> float | None:
    if name == "mflops":
        return row["mflops"]
    if name == "latency":
        return row.get("lut_ms")
    if name == "params":
        return float(row["params"])
    if name == "supernet":
        s = row.get("supernet")
        return None if s is None else -s["latent_mse"]
    raise ValueError(name)


def ranking(bench: dict, portions: list[int], splits: int = 5, *, epochs: int = 300, seed: int = 0,
            progress: bool = True) -> list[dict]:
    """Kendall tau of every predictor and proxy at each training portion (see the module docstring)."""
    from avcore.progress import progress as progress_bar

    from .predictors import PredictorConfig, fit_predictor, kendall_tau, predict

    rows = _trained(bench)
    y = np.array([score(r) for r in rows])
    g = _graphs(rows)
    out = []
    jobs = [(n, k) for n in portions for k in range(splits)]
    taus: dict[int, dict[str, list[float]]] = {n: {} for n in portions}
    for n, k in progress_bar(jobs, desc="predictors", unit="split", disable=not progress):
        if n >= len(rows) - 2:
            raise ValueError(f"portion {n}: needs more than {n + 2} trained architectures, the benchmark has {len(rows)}")
        perm = np.random.default_rng(seed * 1000 + k).permutation(len(rows))
        tr, te = perm[:n], perm[n:]
        pick = lambda idx: {key: v[idx] for key, v in g.items()}  # noqa: E731
        for kind, name in (("carl", "CARL"), ("gcn", "GCN")):
            m = fit_predictor(pick(tr), y[tr], PredictorConfig(kind=kind, epochs=epochs, seed=k))
            taus[n].setdefault(name, []).append(kendall_tau(predict(m, pick(te)), y[te]))
        for p in PROXIES:
            vals = [proxy_score(rows[i], p) for i in te]
            if any(v is None for v in vals):
                continue
            taus[n].setdefault(p, []).append(kendall_tau(vals, y[te]))
    for n in portions:
        t = taus[n]
        # both predictors are trained and tested on the same splits: their difference per split is paired
        d = np.asarray(t["CARL"]) - np.asarray(t["GCN"])
        out.append({"n_train": n, "n_test": len(rows) - n, "splits": splits,
                    "ktau": {name: {"mean": float(np.mean(v)), "std": float(np.std(v)), "values": [float(x) for x in v]}
                             for name, v in t.items()},
                    "carl_minus_gcn": {"mean": float(np.mean(d)), "std": float(np.std(d)),
                                       "carl_higher": int((d > 0).sum())}})
    return out


def _distance(a: dict, b: dict) -> int:
    """Number of differing choices of two :class:`encoder.search_space.Choice` dicts (depth-aware)."""
    d = int(a["fusion"] != b["fusion"])
    for v, ca in a["views"].items():
        cb = b["views"][v]
        for k in ("resolution", "stem", "head", "pool"):
            d += int(ca[k] != cb[k])
        for s in range(len(ca["widths"])):
            d += int(ca["widths"][s] != cb["widths"][s]) + int(ca["depths"][s] != cb["depths"][s])
            for layer in range(min(ca["depths"][s], cb["depths"][s])):
                d += int(ca["ops"][s][layer] != cb["ops"][s][layer]) + int(ca["kernels"][s][layer] != cb["kernels"][s][layer])
    return d


def search_comparison(bench: dict, *, budget: int = 10, runs: int = 10, target_ms: float | None = None, init: int = 4,
                      radius: int = 12, epochs: int = 200, progress: bool = True) -> dict:
    """Best face-pixel MSE found by random, supernet-guided and CARL-guided search at the same query budget."""
    from avcore.progress import progress as progress_bar

    from .predictors import PredictorConfig, fit_predictor, predict

    rows = _trained(bench)
    if target_ms is None:
        target_ms = float(np.median([r["lut_ms"] for r in rows]))
    pool = [r for r in rows if r.get("lut_ms", 0.0) <= target_ms]
    if len(pool) <= budget:
        raise ValueError(f"only {len(pool)} trained architectures under {target_ms:.2f} ms: the budget {budget} "
                         "would query them all")
    mse = np.array([r["trained"]["mse_face_mean"] for r in pool])
    y = -np.log(mse)
    g = _graphs(pool)
    best = {"random": [], "supernet": [], "predictor": []}
    for run in progress_bar(range(runs), desc="search comparison", unit="run", disable=not progress):
        rng = np.random.default_rng(run)
        best["random"].append(float(mse[rng.choice(len(pool), budget, replace=False)].min()))
        inh = [(-r["supernet"]["latent_mse"] if r.get("supernet") else -np.inf) for r in pool]
        best["supernet"].append(float(mse[np.argsort(inh)[::-1][:budget]].min()))
        queried = list(rng.choice(len(pool), init, replace=False))
        while len(queried) < budget:
            rest = [i for i in range(len(pool)) if i not in queried]
            parents = sorted(queried, key=lambda i: -y[i])[:3]
            near = [i for i in rest if min(_distance(pool[i]["choice"], pool[p]["choice"]) for p in parents) <= radius]
            cands = near or rest
            m = fit_predictor({k: v[queried] for k, v in g.items()}, y[queried],
                              PredictorConfig(kind="carl", epochs=epochs, seed=run))
            p = predict(m, {k: v[cands] for k, v in g.items()})
            queried.append(cands[int(np.argmax(p))])
        best["predictor"].append(float(mse[queried].min()))
    return {"budget": budget, "runs": runs, "target_ms": target_ms, "pool": len(pool),
            "best_mse": {k: float(np.mean(v)) for k, v in best.items()},
            "best_mse_std": {k: float(np.std(v)) for k, v in best.items()},
            "best_possible_mse": float(mse.min())}


def render_markdown(res: dict) -> str:
    lines = ["# Performance predictors for the encoder search (CARL)", "", f"Machine: {res['machine']}", "",
             f"Command: `{res['command']}`", "",
             f"Benchmark: `{res['bench']}`: {res['trained']} standalone-trained architectures of the AVE-NAS space "
             f"(of {res['archs']}). Kendall's tau between each predictor's ranking and the trained architectures' "
             "face-pixel MSE ranking on the held-out architectures, mean ± std over random splits.", ""]
    names = list(res["portions"][0]["ktau"]) if res["portions"] else []
    lines += ["| trained archs | held out | " + " | ".join(names) + " | CARL − GCN (same splits) |",
              "|---|---|" + "---|" * (len(names) + 1)]
    for p in res["portions"]:
        d = p["carl_minus_gcn"]
        lines.append(f"| {p['n_train']} | {p['n_test']} | " + " | ".join(
            f"{p['ktau'][n]['mean']:.3f} ± {p['ktau'][n]['std']:.3f}" if n in p["ktau"] else "–" for n in names)
            + f" | {d['mean']:+.3f} ± {d['std']:.3f}, CARL higher in {d['carl_higher']} of {p['splits']} |")
    s = res["search"]
    lines += ["", f"Search at a budget of {s['budget']} standalone trainings under {s['target_ms']:.2f} ms (LUT; "
                  f"{s['pool']} trained architectures qualify, the best of them: {s['best_possible_mse']:.2f}), "
                  f"best face-pixel MSE found, mean ± std over {s['runs']} runs:", "",
              "| search | best MSE |", "|---|---|"]
    for k, v in s["best_mse"].items():
        lines.append(f"| {k} | {v:.2f} ± {s['best_mse_std'][k]:.2f} |")
    return "\n".join(lines) + "\n"


def plot_ranking(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    xs = [p["n_train"] for p in res["portions"]]
    names = list(res["portions"][0]["ktau"]) if res["portions"] else []
    for n in names:
        m = [p["ktau"][n]["mean"] for p in res["portions"]]
        sd = [p["ktau"][n]["std"] for p in res["portions"]]
        ax.errorbar(xs, m, yerr=sd, marker="o", capsize=3, label=n, lw=2.5 if n == "CARL" else 1.2)
    ax.set_xticks(xs)
    ax.set_xlabel("trained architectures the predictor learns from")
    ax.set_ylabel("Kendall tau on the held-out architectures")
    ax.axhline(0, color="gray", lw=0.8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))  # outside: it hid points
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(res: dict, out_dir: str | Path) -> Path:
    from avcore.results import write_json_and_markdown

    write_json_and_markdown(out_dir, "carl", res, render_markdown(res))
    out_dir = Path(out_dir)
    plot_ranking(res, out_dir / "carl.png")
    return out_dir / "carl.json"
