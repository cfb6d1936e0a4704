"""The encoder evaluation table in the shape of Auto-CARD Table 1.

Per model: MFLOPs (analytic, all three views + fusion), onnxruntime latency on this
CPU (one thread, median, three views + fusion); per identity and view the rendered
MSE between avatars from predicted and ground-truth codes on held-out test
segments; and the same MSE on the extreme-expression test frames.

``table1.json``::

    {"machine": str, "command": str, "models": {NAME: {"mflops": x, "latency_ms": x,
      "mse": {IDENTITY: {"front": x, "left": x, "right": x}}, "mse_extreme": {IDENTITY: x}, ...}}}

Rows already in an existing ``table1.json`` whose model is not re-evaluated are kept,
so later issues add rows to the same table.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

from .evaluate import EVAL_VIEWS


def find_model_dir(identity: str, name: str, runs_root: Path) -> Path | None:
    """A trained model for (identity, model name): a run under ``runs_root``, else the embedded one."""
    from .runtime import default_model_dir
    from .train import default_run_dir

    for d in (default_run_dir(identity, name, runs_root), default_model_dir(identity, name)):
        if (d / "arch.json").exists() and (d / "fusion.onnx").exists():
            return d
    return None


def test_data_path(identity: str, data_dir: str | Path) -> Path:
    """The HMC cache holding ``identity``'s test frames in ``data_dir``: ``test_IDENTITY.npz``, else ``data_IDENTITY.npz``."""
    data_dir = Path(data_dir)
    for p in (data_dir / f"test_{identity}.npz", data_dir / f"data_{identity}.npz"):
        if p.is_file():
            return p
    raise FileNotFoundError(f"no test data for {identity} in {data_dir} (test_{identity}.npz or data_{identity}.npz)")


def build_table(identities: list[str], models: list[str], out_dir: str | Path, *, command: str, runs_root: str | Path,
                max_frames: int | None = 240, render_size: int = 256, bench_runs: int = 200, progress: bool = True,
                decoders_root: str | Path | None = None, data_dir: str | Path | None = None) -> dict:
    """Evaluate every (model, identity) pair, write ``table1.json`` and ``table1.md``; return the table.

    ``decoders_root``: directory with one trained decoder per identity (``ROOT/IDENTITY``; default the embedded
    ``decoder/models``). ``data_dir``: directory with each identity's test data (:func:`test_data_path`; default
    the shared caches under ``runs/encoder``, rendered on first use)."""
    from avcore.errors import UsageError
    from decoder.export import load_vae

    from .arch import get_arch
    from .bench import bench_arch, bench_model_dir, machine_description
    from .evaluate import cached_evaluation
    from .flops import analytic_flops
    from .train import load_test_data, parse_model_name

    if max_frames is not None and max_frames < 1:
        raise UsageError(f"frames must be >= 1 (got {max_frames})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs_root = Path(runs_root)
    json_path = out_dir / "table1.json"
    table = json.loads(json_path.read_text()) if json_path.exists() else {"models": {}}
    earlier_command = table.get("command")
    table["machine"] = machine_description()
    table["command"] = command
    missing = []
    # Latency and FLOPs per model.
    rows = {}
    for name in models:
        arch_name, reweight = parse_model_name(name)
        arch = get_arch(arch_name)
        d = next((find_model_dir(i, name, runs_root) for i in identities if find_model_dir(i, name, runs_root)), None)
        lat = bench_model_dir(d, runs=bench_runs) if d else bench_arch(arch_name, runs=bench_runs)
        rows[name] = {"arch": arch_name, "reweight": reweight, "mflops": analytic_flops(arch)["total"] / 1e6,
                      "latency_ms": lat["encode_ms_p50"]["total"], "latency_ms_per_stage": lat["encode_ms_p50"],
                      "mse": {}, "mse_extreme": {}, "mse_mean": {}, "gaze_mae_deg": {}, "test_frames": {}, "extreme_frames": {},
                      "train_steps": {}, "train_data": {}}
    # Rendered MSE per identity.
    for ident in identities:
        dirs = {name: find_model_dir(ident, name, runs_root) for name in models}
        if not any(dirs.values()):
            missing += [f"{ident}/{n}" for n in models]
            continue
        vae = load_vae(ident, None if decoders_root is None else Path(decoders_root) / ident)
        test = load_test_data(ident, path=None if data_dir is None else test_data_path(ident, data_dir), progress=progress)
        for name in models:
            if dirs[name] is None:
                missing.append(f"{ident}/{name}")
                continue
            r = cached_evaluation(dirs[name], ident, test, vae, size=render_size, max_frames=max_frames, progress=progress)
            row = rows[name]
            row["mse"][ident] = r["mse"]
            row["mse_extreme"][ident] = r["mse_extreme"]
            row["mse_mean"][ident] = r["mse_mean"]
            row["gaze_mae_deg"][ident] = r["gaze_mae_deg"]
            row["test_frames"][ident] = r["frames"]
            row["extreme_frames"][ident] = r["extreme_frames"]
            meta_path = dirs[name] / "meta.json"
            if meta_path.exists():
                tr = json.loads(meta_path.read_text()).get("train", {})
                row["train_steps"][ident] = tr.get("steps")
                data = tr.get("data") or {}
                row["train_data"][ident] = {
                    "frames": tr.get("train_frames"),
                    "sessions": len(data.get("train_sessions", range(8))),
                    "extreme_probability": data.get("train_extreme_probability") or 0.12,
                }
    for name, row in rows.items():
        old = table["models"].get(name, {})
        # Cells not re-evaluated now are kept, each with the command that produced it.
        row["evaluated_by"] = {**{i: old.get("evaluated_by", {}).get(i, earlier_command) for i in old.get("mse", {})},
                               **{i: command for i in row["mse"]}}
        for k in ("mse", "mse_extreme", "mse_mean", "gaze_mae_deg", "test_frames", "extreme_frames", "train_steps",
                  "train_data"):
            row[k] = {**old.get(k, {}), **row[k]}
        table["models"][name] = row
    table["missing"] = [m for m in missing if m.split("/")[0] not in table["models"][m.split("/", 1)[1]]["mse"]]
    table["notes"] = (
        "MSE on the 0..255 scale over all pixels of 256x256 renders (front/left/right) of the avatar decoded from the "
        "predicted code + predicted gaze vs from the ground-truth code (VAE mean) + true gaze, on test segments of "
        "held-out HMC sessions; mse_extreme averages the three views over the extreme-expression test frames. "
        "latency_ms: onnxruntime, one intra-op thread, median of many runs, left eye + right eye + mouth + fusion. "
        "mflops: 2 x multiply-accumulates of conv/linear layers, all three views + fusion."
    )
    json_path.write_text(json.dumps(table, indent=2))
    (out_dir / "table1.md").write_text(render_markdown(table))
    plot_table(table, out_dir / "table1.png")
    return table


def plot_table(table: dict, path: Path) -> None:
    """Average rendered MSE (views, and the identities every plotted model has) against latency and MFLOPs,
    one point per model; models with none of those identities are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = {n: r for n, r in table["models"].items() if r.get("mse")}
    common = set.intersection(*(set(r["mse"]) for r in models.values())) if models else set()
    if not common and models:  # fall back to the identity most models have
        common = {Counter(i for r in models.values() for i in r["mse"]).most_common(1)[0][0]}
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for name, r in models.items():
        vals = [sum(m.values()) / len(m) for i, m in r["mse"].items() if i in common]
        if not vals:
            continue
        y = sum(vals) / len(vals)
        for ax, x in zip(axes, (r["latency_ms"], r["mflops"])):
            ax.scatter([x], [y])
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    axes[0].set_xlabel("latency, ms (onnxruntime, 1 thread, 3 views + fusion)")
    axes[1].set_xlabel("MFLOPs (3 views + fusion)")
    for ax in axes:
        ax.set_ylabel(f"avg rendered MSE, {','.join(sorted(common))} (0..255)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _f(x, nd=2) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def render_markdown(table: dict) -> str:
    models = table["models"]
    idents = sorted({i for r in models.values() for i in r.get("mse", {})})
    lines = ["# Encoder evaluation (Auto-CARD Table 1 shape)", "", f"Machine: {table['machine']}", "",
             f"Command: `{table['command']}`", ""]
    head = ["model", "MFLOPs", "latency ms"]
    for i in idents:
        head += [f"{i} {v}" for v in EVAL_VIEWS] + [f"{i} extreme"]
    head += ["avg MSE", "avg extreme"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in models.items():
        cells = [name, _f(r["mflops"], 0), _f(r["latency_ms"])]
        allv, allx = [], []
        for i in idents:
            m = r.get("mse", {}).get(i)
            cells += [_f(m[v]) if m else "–" for v in EVAL_VIEWS]
            x = r.get("mse_extreme", {}).get(i)
            cells.append(_f(x))
            if m:
                allv.append(sum(m.values()) / 3)
            if x is not None and not math.isnan(x):
                allx.append(x)
        cells += [_f(sum(allv) / len(allv)) if allv else "–", _f(sum(allx) / len(allx)) if allx else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    def trained(r, i, st):
        d = r.get("train_data", {}).get(i)
        if not d or not d.get("frames"):
            return f"{i} {st} (default data: 8 sessions, 12% extreme segments)"
        return f"{i} {st} on {d['frames']} frames ({d['sessions']} sessions, {d['extreme_probability']:.0%} extreme segments)"

    steps = [f"{n}: " + ", ".join(trained(r, i, st) for i, st in r.get("train_steps", {}).items()) for n, r in models.items()
             if r.get("train_steps")]
    if len({tuple(sorted(r.get("mse", {}))) for r in models.values() if r.get("mse")}) > 1:
        lines += ["", "avg MSE / avg extreme average the identities each row has; where rows have different identities, "
                      "compare the per-identity columns (the plot uses only the identities every model has)."]
    if steps:
        lines += ["", "Training steps (batch 8) per identity: " + "; ".join(steps) + "."]
    kept: dict[str, list[str]] = {}
    for n, r in models.items():
        for i, c in r.get("evaluated_by", {}).items():
            if c and c != table.get("command"):
                kept.setdefault(c, []).append(f"{n}/{i}")
    for c, cells in kept.items():
        lines += ["", f"Kept from an earlier run of `{c}` (no trained model here now): {', '.join(cells)}."]
    lines += ["", table.get("notes", "")]
    if table.get("missing"):
        lines += ["", "Not evaluated (no trained model): " + ", ".join(table["missing"])]
    return "\n".join(lines) + "\n"
