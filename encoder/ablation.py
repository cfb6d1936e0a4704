"""Table 2 (Auto-CARD's ablation of AVE-NAS): the full search against searches that each drop one of its parts.

Every row is an architecture found by ``avcall search encoder`` at the same latency target (from the same
supernet weight warm-up), then trained from scratch with the Table 1 schedule and evaluated on the
range-of-motion test split:

- ``AVE-NAS``: per-view architectures, extreme-expression-aware objective, searched resolution, measured latency;
- ``shared-arch``: one architecture for all three views (``--shared``);
- ``no-extreme-term``: no extreme-expression re-weighting in the search objective (``--no-reweight``);
- ``fixed-resolution``: input resolution fixed at 192 (``--fixed-resolution 192``);
- ``flops-constrained``: MFLOPs instead of the measured latency table as the cost (``--latency flops``, target
  the AVE-NAS architecture's MFLOPs).

``table2.json``: ``{"rows": [{"name", "latency_ms", "lut_ms", "mflops", "mse_face_mean", "mse_mean",
"mse_face_asym_extreme", "resolutions", "model_dir"}], "identity", "machine", "command", "notes"}``.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from avcore.results import write_json_and_markdown

ROWS: dict[str, str] = {
    "shared-arch": "shared",
    "no-extreme-term": "noRW",
    "fixed-resolution": "res192",
    "flops-constrained": "flops",
}
"""Table 2 row -> its run directory's name under ``RUNS/IDENTITY/``."""


def build_table2(identity: str, ave_dir: str | Path, runs_root: str | Path, out_dir: str | Path, *, command: str,
                 lut_path: str | Path | None = None, frames: int = 240, size: int = 256, bench_runs: int = 200,
                 progress: bool = True, test_path: str | Path | None = None, decoder_dir: str | Path | None = None) -> dict:
    """Evaluate the AVE-NAS run ``ave_dir`` and the ablation runs ``runs_root/IDENTITY/{shared,noRW,res192,flops}``
    found; write ``table2.{json,md,png}`` and each row's ``arch.json`` (``table2_archs/ROW.json``) to ``out_dir``.
    ``test_path``: an HMC cache whose test split is used instead of the range-of-motion one (tests)."""
    from avcore.errors import UsageError
    from decoder.export import load_vae

    from .arch import EncoderArch
    from .bench import bench_model_dir, machine_description
    from .evaluate import cached_evaluation
    from .flops import analytic_flops
    from .train import ROM_TAG, load_rom_data

    dirs = {"AVE-NAS": Path(ave_dir)} | {name: Path(runs_root) / identity / sub for name, sub in ROWS.items()}
    found = {n: d for n, d in dirs.items() if (d / "fusion.onnx").is_file()}
    if "AVE-NAS" not in found:
        raise UsageError(f"{ave_dir} holds no trained encoder (fusion.onnx missing)")
    vae = load_vae(identity, decoder_dir)
    if test_path is not None:
        from .data import read_test_split

        test = read_test_split(test_path)
    else:
        _, test = load_rom_data(identity, splits=("test",), progress=progress, workers=2)
    lut = None
    if lut_path:
        from .lut import LatencyTable

        lut = LatencyTable(lut_path)
    out_dir = Path(out_dir)
    (out_dir / "table2_archs").mkdir(parents=True, exist_ok=True)
    rows = []
    for name, d in found.items():
        arch = EncoderArch.from_json((d / "arch.json").read_text())
        r = cached_evaluation(d, identity, test, vae, size=size, max_frames=frames, progress=progress, tag=ROM_TAG)
        lat = bench_model_dir(d, runs=bench_runs)
        shutil.copyfile(d / "arch.json", out_dir / "table2_archs" / f"{name}.json")
        rows.append({"name": name, "latency_ms": lat["encode_ms_p50"]["total"],
                     "lut_ms": lut.predict(arch)["total"] if lut is not None else None,
                     "mflops": analytic_flops(arch)["total"] / 1e6, "mse_face_mean": r["mse_face_mean"],
                     "mse_mean": r["mse_mean"], "mse_face_asym_extreme": r["mse_face_asym_extreme"],
                     "resolutions": {v: a.resolution for v, a in arch.views.items()},
                     "model_dir": str(d)})
    table = {"rows": rows, "identity": identity, "machine": machine_description(), "command": command,
             "missing": [n for n in dirs if n not in found],
             "notes": "Each row: an architecture searched at the same target from the same supernet weight warm-up, "
                      "trained from scratch with the Table 1 schedule (1000 steps, batch 8, seed 0, range-of-motion "
                      "data, no re-weighting in training), evaluated on 240 frames of the range-of-motion test split "
                      "(MSE 0..255 of 256x256 renders, front/left/right; face pixels: the ground truth's "
                      "foreground). latency_ms: onnxruntime, one thread, median, all rows in one run."}
    write_json_and_markdown(out_dir, "table2", table, render_markdown(table))
    plot_table2(table, out_dir / "table2.png")
    return table


def render_markdown(table: dict) -> str:
    f = lambda x, nd=2: "–" if x is None else f"{x:.{nd}f}"  # noqa: E731
    lines = [f"# AVE-NAS ablation (Auto-CARD Table 2 shape), {table['identity']}", "", f"Machine: {table['machine']}",
             "", f"Command: `{table['command']}`", "",
             "| search | latency ms | LUT ms | MFLOPs | face MSE | face MSE, asymmetric/extreme | MSE | resolutions (L/R/mouth) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in table["rows"]:
        res = "/".join(str(r["resolutions"][v]) for v in ("left_eye", "right_eye", "mouth"))
        lines.append(f"| {r['name']} | {f(r['latency_ms'])} | {f(r['lut_ms'])} | {f(r['mflops'], 0)} | "
                     f"{f(r['mse_face_mean'])} | {f(r['mse_face_asym_extreme'])} | {f(r['mse_mean'])} | {res} |")
    lines += ["", table["notes"]]
    if table.get("missing"):
        lines += ["", "Not trained yet: " + ", ".join(table["missing"])]
    return "\n".join(lines) + "\n"


def plot_table2(table: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in table["rows"]:
        ax.scatter([r["latency_ms"]], [r["mse_face_mean"]], marker="*" if r["name"] == "AVE-NAS" else "o", s=80)
        ax.annotate(r["name"], (r["latency_ms"], r["mse_face_mean"]), textcoords="offset points", xytext=(4, 4),
                    fontsize=8)
    ax.set_xlabel("latency, ms (onnxruntime, 1 thread, 3 views + fusion)")
    ax.set_ylabel(f"face-pixel MSE, {table['identity']} (0..255)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
