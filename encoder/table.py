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

import numpy as np

from avcore.results import write_json_and_markdown

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
                decoders_root: str | Path | None = None, data_dir: str | Path | None = None,
                seeds: tuple[int, ...] | None = None, rom: bool = False, lut_path: str | Path | None = None) -> dict:
    """Evaluate every (model, identity) pair, write ``table1.json`` and ``table1.md``; return the table.

    ``decoders_root``: directory with one trained decoder per identity (``ROOT/IDENTITY``; default the embedded
    ``decoder/models``). ``data_dir``: directory with each identity's test data (:func:`test_data_path`; default
    the shared caches under ``runs/encoder``, rendered on first use); ``rom``: the range-of-motion dataset's test
    split instead (:func:`encoder.train.load_rom_data`). ``seeds``: the runs are ``runs_root/seedK/IDENTITY/MODEL``
    (no embedded fallback); each cell is the mean over the seeds found, with ``*_std`` beside it where there are
    two or more. ``lut_path``: the latency table whose prediction goes in ``lut_ms``."""
    from avcore.errors import UsageError
    from decoder.export import load_vae

    from .arch import get_arch
    from .bench import bench_arch, bench_model_dir, machine_description
    from .evaluate import cached_evaluation
    from .flops import analytic_flops
    from .train import ROM_TAG, load_rom_data, load_test_data, parse_model_name

    if max_frames is not None and max_frames < 1:
        raise UsageError(f"frames must be >= 1 (got {max_frames})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs_root = Path(runs_root)
    roots = [runs_root / f"seed{k}" for k in seeds] if seeds else [runs_root]

    def model_dirs(ident: str, name: str) -> list[Path]:
        if not seeds:
            d = find_model_dir(ident, name, runs_root)
            return [d] if d else []
        return [r / ident / name for r in roots if (r / ident / name / "fusion.onnx").is_file()]

    test_kind = ROM_TAG if rom else "default"
    json_path = out_dir / "table1.json"
    table = json.loads(json_path.read_text()) if json_path.exists() else {"models": {}}
    if table.get("test_data", "default") != test_kind:  # another test set: earlier cells do not compare
        table = {"models": {}}
    earlier_command = table.get("command")
    table["machine"] = machine_description()
    table["command"] = command
    table["test_data"] = test_kind
    lut = None
    if lut_path is not None:
        from .lut import LatencyTable

        lut = LatencyTable(lut_path)
    missing = []
    # Latency and FLOPs per model.
    rows = {}
    for name in models:
        arch_name, reweight = parse_model_name(name)
        arch = get_arch(arch_name)
        d = next((ds[0] for i in identities if (ds := model_dirs(i, name))), None)
        lat = bench_model_dir(d, runs=bench_runs) if d else bench_arch(arch_name, runs=bench_runs)
        rows[name] = {"arch": arch_name, "reweight": reweight, "mflops": analytic_flops(arch)["total"] / 1e6,
                      "latency_ms": lat["encode_ms_p50"]["total"], "latency_ms_per_stage": lat["encode_ms_p50"],
                      **({"lut_ms": lut.predict(arch)["total"]} if lut is not None else {}),
                      **{k: {} for k in PER_IDENTITY}}
    # Rendered MSE per identity.
    for ident in identities:
        dirs = {name: model_dirs(ident, name) for name in models}
        if not any(dirs.values()):
            missing += [f"{ident}/{n}" for n in models]
            continue
        vae = load_vae(ident, None if decoders_root is None else Path(decoders_root) / ident)
        if rom:
            test = load_rom_data(ident, splits=("test",), progress=progress, workers=2)[1]
        else:
            test = load_test_data(ident, path=None if data_dir is None else test_data_path(ident, data_dir),
                                  progress=progress)
        for name in models:
            if not dirs[name]:
                missing.append(f"{ident}/{name}")
                continue
            results = [cached_evaluation(d, ident, test, vae, size=render_size, max_frames=max_frames,
                                         progress=progress, tag=ROM_TAG if rom else "") for d in dirs[name]]
            row = rows[name]
            for k in ("mse_extreme", "mse_asym_extreme", "mse_face_extreme", "mse_face_asym_extreme", "mse_mean",
                      "mse_face_mean", "gaze_mae_deg"):
                vals = [r[k] for r in results if r.get(k) is not None]
                row[k][ident] = float(np.mean(vals)) if vals else None
            for k in ("mse", "mse_face"):
                if all(k in r for r in results):
                    row[k][ident] = {v: float(np.mean([r[k][v] for r in results])) for v in EVAL_VIEWS}
            if len(results) > 1:
                row["mse_mean_std"][ident] = float(np.std([r["mse_mean"] for r in results], ddof=1))
                row["mse_face_mean_std"][ident] = float(np.std([r["mse_face_mean"] for r in results], ddof=1))
            row["seeds"][ident] = len(results)
            row["test_frames"][ident] = results[0]["frames"]
            row["extreme_frames"][ident] = results[0]["extreme_frames"]
            row["asym_extreme_frames"][ident] = results[0].get("asym_extreme_frames")
            meta_path = dirs[name][0] / "meta.json"
            if meta_path.exists():
                tr = json.loads(meta_path.read_text()).get("train", {})
                row["train_steps"][ident] = tr.get("steps")
                data = tr.get("data") or {}
                row["train_data"][ident] = {
                    "frames": tr.get("train_frames"),
                    "sessions": len(data.get("train_sessions", range(8))),
                    "extreme_probability": data.get("train_extreme_probability") or 0.12,
                    "asymmetric_probability": data.get("asymmetric_probability") or 0.0,
                }
    eem = rows.get("EEM") or table["models"].get("EEM")
    for name, row in rows.items():
        old = table["models"].get(name, {})
        # Cells not re-evaluated now are kept, each with the command that produced it.
        row["evaluated_by"] = {**{i: old.get("evaluated_by", {}).get(i, earlier_command) for i in old.get("mse", {})},
                               **{i: command for i in row["mse"]}}
        for k in PER_IDENTITY:
            row[k] = {**old.get(k, {}), **row[k]}
        if eem:
            row["speedup_vs_eem"] = eem["latency_ms"] / row["latency_ms"]
        table["models"][name] = row
    table["missing"] = [m for m in missing if m.split("/")[0] not in table["models"][m.split("/", 1)[1]]["mse"]]
    table["notes"] = (
        "MSE on the 0..255 scale of 256x256 renders (front/left/right) of the avatar decoded from the predicted "
        "code + predicted gaze vs from the ground-truth code (VAE mean) + true gaze, on held-out HMC sessions; "
        "mse_* over all pixels, mse_face_* over the face pixels (the ground-truth render's foreground); *_extreme "
        "averages the three views over the extreme-expression test frames, *_asym_extreme over the asymmetric or "
        "extreme ones. With several seeds a cell is their mean (seeds, *_std: sample std). latency_ms: onnxruntime, "
        "one intra-op thread, median of many runs, left eye + right eye + mouth + fusion, all rows in one run; "
        "lut_ms: the latency table's prediction; speedup_vs_eem: EEM's latency_ms / the row's. mflops: 2 x "
        "multiply-accumulates of conv/linear layers, all three views + fusion."
    )
    write_json_and_markdown(out_dir, "table1", table, render_markdown(table))
    plot_table(table, out_dir / "table1.png")
    return table


PER_IDENTITY = ("mse", "mse_face", "mse_extreme", "mse_asym_extreme", "mse_face_extreme", "mse_face_asym_extreme",
                "mse_mean", "mse_face_mean", "mse_mean_std", "mse_face_mean_std", "gaze_mae_deg", "seeds",
                "test_frames", "extreme_frames", "asym_extreme_frames", "train_steps", "train_data")
"""Fields of a row that hold one value per identity."""


def _avg(row: dict, key: str, idents) -> float | None:
    """Mean over ``idents`` of a per-identity value (dicts of views are averaged first); None if any is missing."""
    vals = []
    for i in idents:
        x = row.get(key, {}).get(i)
        if isinstance(x, dict):
            x = sum(x.values()) / len(x)
        if x is None:
            return None
        vals.append(x)
    return sum(vals) / len(vals) if vals else None


def plot_table(table: dict, path: Path) -> None:
    """Average face-pixel MSE (whole-frame MSE for tables without it) over the identities every plotted model
    has, against latency and MFLOPs, one point per model; error bars: the std of that average from the seeds of the
    identities trained with several (sqrt(sum std_i^2) / n; an identity with one seed adds nothing)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    models = {n: r for n, r in table["models"].items() if r.get("mse")}
    common = set.intersection(*(set(r["mse"]) for r in models.values())) if models else set()
    if not common and models:  # fall back to the identity most models have
        common = {Counter(i for r in models.values() for i in r["mse"]).most_common(1)[0][0]}
    key = "mse_face_mean" if all(r.get("mse_face_mean") for r in models.values()) else "mse_mean"
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4))
    seeded = sorted({i for r in models.values() for i in r.get(key + "_std", {}) if i in common})
    for k, (name, r) in enumerate(sorted(models.items(), key=lambda kv: kv[1]["latency_ms"])):
        y = _avg(r, key, sorted(common))
        if y is None:
            continue
        std = [v for i, v in r.get(key + "_std", {}).items() if i in common]
        err = [math.sqrt(sum(v * v for v in std)) / len(common)] if std else None
        for ax, x in zip(axes, (r["latency_ms"], r["mflops"])):
            ax.errorbar([x], [y], yerr=err, fmt="o", capsize=3)
            # neighbours in latency alternate above / below their point, so close labels do not overlap
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 5 if k % 2 == 0 else -11), fontsize=8)
    axes[0].set_xlabel("latency, ms (onnxruntime, 1 thread, 3 views + fusion)")
    axes[1].set_xlabel("MFLOPs (3 views + fusion)")
    for ax in axes:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylabel(f"avg {'face-pixel ' if key == 'mse_face_mean' else ''}MSE, {','.join(sorted(common))} (0..255)")
        ax.grid(alpha=0.3)
    if seeded:
        fig.suptitle(f"error bars: ± std of the average over the training seeds of {', '.join(seeded)} "
                     f"(the other identities: one seed)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _f(x, nd=2) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def render_markdown(table: dict) -> str:
    models = table["models"]
    idents = sorted({i for r in models.values() for i in r.get("mse", {})})
    face = any(r.get("mse_face_mean") for r in models.values())
    lines = ["# Encoder evaluation (Auto-CARD Table 1 shape)", "", f"Machine: {table['machine']}", "",
             f"Command: `{table['command']}`", ""]
    head = ["model", "MFLOPs", "LUT ms", "latency ms", "speed-up"]
    for i in idents:
        head += ([f"{i} face MSE", f"{i} face hard"] if face else []) + [f"{i} MSE", f"{i} extreme"]
    head += (["avg face MSE", "avg face hard"] if face else []) + ["avg MSE", "avg extreme"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def pm(r, key, i):
        x, sd = r.get(key, {}).get(i), r.get(key + "_std", {}).get(i)
        return _f(x) + (f" ± {sd:.2f}" if sd is not None and x is not None else "")

    for name, r in models.items():
        cells = [name, _f(r["mflops"], 0), _f(r.get("lut_ms")), _f(r["latency_ms"]),
                 f"{r['speedup_vs_eem']:.1f}×" if r.get("speedup_vs_eem") else "–"]
        for i in idents:
            if face:
                cells += [pm(r, "mse_face_mean", i), _f(r.get("mse_face_asym_extreme", {}).get(i))]
            m = r.get("mse", {}).get(i)
            cells += [pm(r, "mse_mean", i) if r.get("mse_mean", {}).get(i) is not None else
                      (_f(sum(m.values()) / 3) if m else "–"), _f(r.get("mse_extreme", {}).get(i))]
        mine = [i for i in idents if i in r.get("mse", {})]
        if face:
            cells += [_f(_avg(r, "mse_face_mean", mine)), _f(_avg(r, "mse_face_asym_extreme", mine))]
        cells += [_f(_avg(r, "mse", mine)), _f(_avg(r, "mse_extreme", mine))]
        lines.append("| " + " | ".join(cells) + " |")
    def trained(r, i, st):
        d = r.get("train_data", {}).get(i)
        if not d or not d.get("frames"):
            return f"{i} {st} (default data: 8 sessions, 12% extreme segments)"
        asym = f", {d['asymmetric_probability']:.0%} asymmetric" if d.get("asymmetric_probability") else ""
        return (f"{i} {st} on {d['frames']} frames ({d['sessions']} sessions, {d['extreme_probability']:.0%} extreme "
                f"segments{asym})")

    per_row = {n: [trained(r, i, st) for i, st in r.get("train_steps", {}).items()] for n, r in models.items()
               if r.get("train_steps")}
    if len({tuple(v) for v in per_row.values()}) == 1 and len(per_row) > 1:  # one schedule for every row: say it once
        steps = [f"every row: {', '.join(next(iter(per_row.values())))}"]
    else:
        steps = [f"{n}: " + ", ".join(v) for n, v in per_row.items()]
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
