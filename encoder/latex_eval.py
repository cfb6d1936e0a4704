"""`avcall eval latex`: the LATEX skip-ratio vs quality sweep on held-out HMC sequences.

Held-out sequences are whole performances (every frame at the performance rate,
natural blink/speech/extreme statistics) in headset sessions and with
performance seeds the encoder never saw. On them:

1. the full encoder (ONNX, what the sender runs) gives the no-skip codes, and the
   early model the gate's estimates;
2. for each threshold the gate's schedule is applied (keyframes keep the full
   encoder's code and gaze, other frames get the extrapolation of the last ``T``
   sent values) and the avatar is rendered from the front dome view and compared
   with the render of the ground-truth code and true gaze (MSE, 0..255 scale, as
   Auto-CARD Table 3 reports);
3. the same with blind skipping of every k-th frame (``every_k``), and of an
   evenly spread share of frames at the Table 3 ratios, the baselines the gate
   must beat;
4. the sender's :class:`encoder.latex.LatexEncoder` runs each threshold over the
   whole sequence set for real, so the skip ratio and the encode time per frame
   are measured, not derived (its skip ratio must equal the simulated one).
"""
from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avcore.cache import load_keyed_npz, save_keyed_npz
from avcore.progress import progress as progress_bar

from .latex import (LatexConfig, LatexEncoder, apply_schedule, blind_schedule, gate_distances, gate_schedule,
                    load_latex_settings, resolve_threshold, sequence_starts)

TABLE3_RATIOS = (0.0, 0.2, 0.3, 0.4)
EVERY_K = (10, 5, 4, 3, 2)


@dataclass
class LatexEvalConfig:
    identity: str = "S1"
    sessions: tuple[int, ...] = (201, 202, 203)
    """Held-out headset sessions (slip + exposure), one performance each."""
    seconds: float = 20.0
    fps: float = 30.0
    seed: int = 9000
    size: int = 256
    hmc_size: int = 192


def build_sequences(cfg: LatexEvalConfig, vae, *, progress: bool = True, cache: Path | None = None) -> dict:
    """Render (or load) the held-out sequences with their ground-truth codes."""
    from .data import HmcDataConfig, render_session
    from .codec import attach_codes

    key = repr(sorted(vars(cfg).items()))
    cached = load_keyed_npz(cache, key)
    if cached is not None:
        return cached
    from capture.performance import PerformanceConfig

    dcfg = HmcDataConfig(identity=cfg.identity, fps=cfg.fps)
    perf = PerformanceConfig(fps=cfg.fps)  # the studio's everyday performances
    parts = []
    for k, s in enumerate(progress_bar(cfg.sessions, desc=f"held-out sequences {cfg.identity}", unit="session",
                                       disable=not progress)):
        parts.append(render_session(cfg.identity, s, cfg.seed + k, cfg.seconds, cfg.fps, "all", dcfg, hmc_size=cfg.hmc_size,
                                    performance=perf))
    keep = ("views", "gaze", "vertices", "enc_texture", "extreme", "session", "frame")
    data = {k: np.concatenate([p[k] for p in parts]) for k in keep}
    attach_codes(data, vae)
    del data["vertices"], data["enc_texture"]
    if cache is not None:
        save_keyed_npz(cache, key, data)
    return data


def _machine() -> str:
    from .bench import machine_description

    return machine_description()


def run_encoders(model_dir: Path, views: np.ndarray, progress: bool = True) -> dict:
    """Full encoder and early model on every frame (no gate): outputs and per-frame times."""
    from .runtime import HmcEncoder

    enc = HmcEncoder(model_dir)
    gated = LatexEncoder(enc, LatexConfig(threshold=0.0))
    n = len(views)
    z, g = np.zeros((n, enc.latent_dim), np.float32), np.zeros((n, 2, 2), np.float32)
    ze, ge = np.zeros((n, enc.latent_dim), np.float32), np.zeros((n, 2, 2), np.float32)
    t_full, t_early = np.zeros(n), np.zeros(n)
    enc.encode(views[0]), gated.early_estimate(views[0])  # warm-up
    for i in progress_bar(range(n), desc="encode held-out frames", unit="frame", disable=not progress, mininterval=5.0):
        t0 = time.perf_counter()
        r = enc.encode(views[i])
        t1 = time.perf_counter()
        ze[i], ge[i] = gated.early_estimate(views[i])
        t2 = time.perf_counter()
        z[i], g[i] = r.z, r.gaze
        t_full[i], t_early[i] = (t1 - t0) * 1e3, (t2 - t1) * 1e3
    return {"z": z, "gaze": g, "z_early": ze, "gaze_early": ge, "full_ms": t_full, "early_ms": t_early,
            "z_scale": gated.z_scale, "gaze_scale": gated.gaze_scale}


def measure_gated(model_dir: Path, views: np.ndarray, starts: np.ndarray, cfg: LatexConfig) -> dict:
    """The sender's gated encoder over all sequences: real skip ratio, keyframe mask, encode ms per frame."""
    from .runtime import HmcEncoder

    gated = LatexEncoder(HmcEncoder(model_dir), cfg)
    gated.encode(views[0])
    gated.reset()
    key, ms = np.zeros(len(views), bool), np.zeros(len(views))
    for i in range(len(views)):
        if starts[i]:
            gated.reset()
        r = gated.encode(views[i])
        key[i], ms[i] = r.keyframe, r.encode_ms
    return {"keyframe": key, "encode_ms": ms}


def expected_encode_ms(early_ms: np.ndarray, full_ms: np.ndarray, keyframe: np.ndarray) -> float:
    """Encode time per frame a gated sender should spend: the early model on every frame plus the full encoder
    on the keyframe share, ``mean(early) + mean(keyframe) x mean(full)`` (= early + (1 - skip ratio) x full),
    from the per-frame times of the no-skip pass."""
    return float(np.mean(early_ms) + np.mean(np.asarray(keyframe, bool)) * np.mean(full_ms))


class _MseCache:
    """Front-view MSE of each frame's (z, gaze) against the ground-truth render; renders only what differs
    from the no-skip run (keyframes keep the full encoder's code)."""

    def __init__(self, identity: str, vae, seq: dict, full: dict, size: int, progress: bool):
        from .evaluate import AvatarRenders

        self.r = AvatarRenders(identity, vae, size)
        n = len(seq["views"])
        self.gt = np.zeros((n, size, size, 3), np.uint8)
        self.full = np.zeros(n)
        for a in progress_bar(range(0, n, 16), desc="render ground truth + no-skip", unit="batch", disable=not progress,
                              mininterval=5.0):
            s = slice(a, min(n, a + 16))
            self.gt[s] = self.r.images(seq["z_gt"][s], seq["gaze"][s], "front").astype(np.uint8)
            self.full[s] = self._mse(full["z"][s], full["gaze"][s], s)
        self.z_full, self.g_full = full["z"], full["gaze"]

    def _mse(self, z, g, s) -> np.ndarray:
        img = self.r.images(z, g, "front")
        return ((img - self.gt[s].astype(np.float32)) ** 2).reshape(len(img), -1).mean(1)

    def per_frame(self, z: np.ndarray, g: np.ndarray) -> np.ndarray:
        out = self.full.copy()
        diff = np.flatnonzero(np.any(z != self.z_full, axis=1) | np.any((g != self.g_full).reshape(len(g), -1), axis=1))
        for a in range(0, len(diff), 16):
            idx = diff[a : a + 16]
            out[idx] = self._mse(z[idx], g[idx], idx)
        return out

    def close(self):
        self.r.close()


def evaluate_latex(model_dir: str | Path, vae, cfg: LatexEvalConfig, *, history: int = LatexConfig.history, max_skips: int = LatexConfig.max_skips,
                   command: str = "", progress: bool = True, cache: Path | None = None,
                   sweep_ratios: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)) -> dict:
    """The whole evaluation (see the module docstring) -> the latex.json dict (+ per-frame arrays under ``_frames``)."""
    model_dir = Path(model_dir)
    settings = load_latex_settings(model_dir)
    seq = build_sequences(cfg, vae, progress=progress, cache=cache)
    starts = sequence_starts(seq["session"], seq["frame"])
    n = len(seq["views"])
    full = run_encoders(model_dir, seq["views"], progress=progress)
    mse = _MseCache(cfg.identity, vae, seq, full, cfg.size, progress)
    d = gate_distances(full["z_early"], full["gaze_early"], full["z_scale"], full["gaze_scale"], starts)

    def outcome(key: np.ndarray) -> tuple[np.ndarray, dict]:
        z = apply_schedule(key, full["z"], history, starts)
        g = apply_schedule(key, full["gaze"], history, starts)
        per = mse.per_frame(z, g)
        return per, {"skip_ratio": float(1 - key.mean()), "mse_front": float(per.mean())}

    base = float(mse.full.mean())
    thresholds = [0.0] + [resolve_threshold(settings, LatexConfig(history=history, max_skips=max_skips, skip_ratio=r))
                          for r in sweep_ratios]
    rows, frames = [], {"mse_full": mse.full, "distance": d, "starts": starts, "extreme": seq["extreme"]}
    try:
        for thr in progress_bar(thresholds, desc="LATEX sweep", unit="threshold", disable=not progress):
            key = gate_schedule(d, thr, history, max_skips, starts)
            meas = measure_gated(model_dir, seq["views"], starts, LatexConfig(history=history, max_skips=max_skips, threshold=thr))
            if not np.array_equal(meas["keyframe"], key):
                raise RuntimeError(f"threshold {thr}: the sender's gate and the simulated schedule disagree on "
                                   f"{int((meas['keyframe'] != key).sum())} frames")
            per, row = outcome(key)
            row = {"threshold": float(thr), **row, "mse_rise_pct": 100 * (row["mse_front"] / base - 1),
                   "encode_ms_per_frame": float(meas["encode_ms"].mean()),
                   "encode_ms_expected": expected_encode_ms(full["early_ms"], full["full_ms"], key),
                   "encode_ms_p50": float(np.percentile(meas["encode_ms"], 50))}
            rows.append(row)
            frames[f"latex_{thr:.6g}"] = per
            frames[f"latex_{thr:.6g}_key"] = key
        every_k = []
        for k in EVERY_K:
            key = blind_schedule(n, 1.0 / k, history, starts)
            per, row = outcome(key)
            every_k.append({"k": k, **row, "mse_rise_pct": 100 * (row["mse_front"] / base - 1)})
        table3 = []
        for r in TABLE3_RATIOS:
            thr = resolve_threshold(settings, LatexConfig(history=history, max_skips=max_skips, skip_ratio=r))
            key = gate_schedule(d, thr, history, max_skips, starts)
            per, lat = outcome(key)
            bkey = blind_schedule(n, lat["skip_ratio"], history, starts)
            bper, blind = outcome(bkey)
            table3.append({"target_skip_ratio": r, "threshold": thr, "latex": lat, "blind": blind,
                           "latex_mse_rise_pct": 100 * (lat["mse_front"] / base - 1),
                           "blind_mse_rise_pct": 100 * (blind["mse_front"] / base - 1)})
            frames[f"table3_{r:g}"] = per
            frames[f"table3_{r:g}_key"] = key
            frames[f"table3_{r:g}_blind"] = bper
        # Other (T, max_skips) settings the calibration holds, simulated at the Table 3 ratios.
        variants = []
        for name in sorted(settings.get("calibration", {})):
            T, m = (int(x) for x in name[1:].split("_max"))
            for r in TABLE3_RATIOS[1:]:
                try:
                    thr = resolve_threshold(settings, LatexConfig(history=T, max_skips=m, skip_ratio=r))
                except ValueError:
                    continue
                key = gate_schedule(d, thr, T, m, starts)
                z = apply_schedule(key, full["z"], T, starts)
                g = apply_schedule(key, full["gaze"], T, starts)
                per = mse.per_frame(z, g)
                variants.append({"history": T, "max_skips": m, "target_skip_ratio": r, "skip_ratio": float(1 - key.mean()),
                                 "mse_front": float(per.mean()), "mse_rise_pct": 100 * (float(per.mean()) / base - 1)})
    finally:
        mse.close()
    enc_ms = float(full["full_ms"].mean())
    return {
        "machine": _machine(),
        "python": platform.python_version(),
        "command": command,
        "identity": cfg.identity,
        "encoder": settings.get("encoder", ""),
        "model_dir": str(model_dir),
        "history": history,
        "max_skips": max_skips,
        "early_flops_share": settings["flops"]["share"],
        "frames": n,
        "sequences": int(starts.sum()),
        "fps": cfg.fps,
        "mse_front_no_skip": base,
        "encode_ms_full_per_frame": enc_ms,
        "early_ms_per_frame": float(full["early_ms"].mean()),
        "settings": rows,
        "every_k": every_k,
        "table3": table3,
        "variants": variants,
        "_frames": frames,
    }


def plot_latex(result: dict, out_dir: Path) -> list[Path]:
    """Sweep plot (MSE and encode ms over skip ratio) and Fig. 6 (MSE over time with and without LATEX)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    paths = []
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    s = sorted(result["settings"], key=lambda r: r["skip_ratio"])
    e = sorted(result["every_k"], key=lambda r: r["skip_ratio"])
    ax[0].plot([r["skip_ratio"] for r in s], [r["mse_front"] for r in s], "o-", label="LATEX (early-head gate)")
    ax[0].plot([r["skip_ratio"] for r in e], [r["mse_front"] for r in e], "s--", label="blind: every k-th frame")
    ax[0].axhline(result["mse_front_no_skip"] * 1.05, color="gray", lw=0.8, ls=":", label="no skipping + 5%")
    for r in e:
        ax[0].annotate(f"k={r['k']}", (r["skip_ratio"], r["mse_front"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    # Keep the interesting range readable; points beyond it are written at the top edge.
    base = result["mse_front_no_skip"]
    top = base * 1.6
    ax[0].set_ylim(base * 0.9, top)
    for r in [*s, *e]:
        if r["mse_front"] > top:
            ax[0].annotate(f"{r['mse_front']:.0f} (off scale)", (r["skip_ratio"], top), fontsize=7, ha="center",
                           xytext=(0, -10), textcoords="offset points")
    ax[0].set_xlabel("skip ratio")
    ax[0].set_ylabel("front-view MSE (0..255)")
    ax[0].legend(fontsize=8)
    ax[0].set_title(f"{result['identity']} {result['encoder']}: quality vs skipped encoder runs")
    ax[1].plot([r["skip_ratio"] for r in s], [r["encode_ms_per_frame"] for r in s], "o-", label="measured (gated sender path)")
    ax[1].plot([r["skip_ratio"] for r in s], [r["encode_ms_expected"] for r in s], "--", color="gray",
               label="early + (1 - sr) x full encoder")
    ax[1].legend(fontsize=8)
    ax[1].set_xlabel("skip ratio (measured)")
    ax[1].set_ylabel("encode ms per frame (early model + full encoder)")
    ax[1].set_title("effective encode time (onnxruntime, 1 thread)")
    fig.tight_layout()
    p = out_dir / "latex_sweep.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    paths.append(p)

    fr = result["_frames"]
    t3 = {r["target_skip_ratio"]: r for r in result["table3"]}
    r30 = 0.3 if 0.3 in t3 else max(t3)
    starts = np.flatnonzero(fr["starts"])
    a, b = starts[0], (starts[1] if len(starts) > 1 else len(fr["starts"]))
    t = np.arange(b - a) / result["fps"]
    fig, ax = plt.subplots(figsize=(11, 4))
    ax.plot(t, fr["mse_full"][a:b], lw=1.0, label=f"no skipping (mean {fr['mse_full'][a:b].mean():.1f})")
    lat = fr[f"table3_{r30:g}"][a:b]
    key = fr[f"table3_{r30:g}_key"][a:b]
    ax.plot(t, lat, lw=1.0, label=f"LATEX, {t3[r30]['latex']['skip_ratio']:.0%} skipped overall (mean {lat.mean():.1f})")
    bl = fr[f"table3_{r30:g}_blind"][a:b]
    ax.plot(t, bl, lw=0.8, alpha=0.7, label=f"blind, same ratio (mean {bl.mean():.1f})")
    ax.scatter(t[~key], np.full((~key).sum(), 0.0), marker="|", s=30, color="k", label="frames LATEX skipped")
    ex = fr["extreme"][a:b]
    if ex.any():
        ax.fill_between(t, 0, max(lat.max(), bl.max()) * 1.05, where=ex, color="orange", alpha=0.12, label="extreme segment")
    ax.set_xlabel("time (s), first held-out sequence")
    ax.set_ylabel("front-view MSE (0..255)")
    ax.set_title("MSE over time with and without LATEX (Auto-CARD Fig. 6 shape)")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    p = out_dir / "latex_mse_over_time.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    paths.append(p)
    return paths


def render_markdown(result: dict) -> str:
    lines = [
        "# LATEX: skipped encoder runs vs quality",
        "",
        f"Machine: {result['machine']}",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Encoder {result['encoder']} of {result['identity']}; {result['frames']} held-out frames in {result['sequences']} "
        f"sequences at {result['fps']:g} fps; T = {result['history']}, at most {result['max_skips']} frames skipped in a row. "
        f"Early model: {100 * result['early_flops_share']:.2f}% of the encoder's FLOPs, "
        f"{result['early_ms_per_frame']:.2f} ms per frame; full encoder {result['encode_ms_full_per_frame']:.2f} ms per frame.",
        "",
        "## Table 3 shape (thresholds calibrated on training sequences for the target ratio)",
        "",
        "| target sr | measured sr | MSE front | rise | blind skipping, same sr | rise |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["table3"]:
        lines.append(f"| {r['target_skip_ratio']:.0%} | {r['latex']['skip_ratio']:.1%} | {r['latex']['mse_front']:.2f} | "
                     f"{r['latex_mse_rise_pct']:+.1f}% | {r['blind']['mse_front']:.2f} | {r['blind_mse_rise_pct']:+.1f}% |")
    lines += ["", "## Threshold sweep (gate measured in the sender's code path)", "",
              "| threshold | skip ratio | MSE front | rise | encode ms / frame | expected ms |", "|---|---|---|---|---|---|"]
    for r in sorted(result["settings"], key=lambda r: r["skip_ratio"]):
        lines.append(f"| {r['threshold']:.4f} | {r['skip_ratio']:.1%} | {r['mse_front']:.2f} | {r['mse_rise_pct']:+.1f}% | "
                     f"{r['encode_ms_per_frame']:.2f} | {r['encode_ms_expected']:.2f} |")
    lines += ["", "expected ms = early model + (1 - skip ratio) x full encoder, from the per-frame times of the no-skip pass."]
    if result.get("variants"):
        lines += ["", "## Other extrapolation lengths T and skip-run bounds (simulated, same held-out frames)", "",
                  "| T | max skips | target sr | measured sr | MSE front | rise |", "|---|---|---|---|---|---|"]
        for r in result["variants"]:
            lines.append(f"| {r['history']} | {r['max_skips']} | {r['target_skip_ratio']:.0%} | {r['skip_ratio']:.1%} | "
                         f"{r['mse_front']:.2f} | {r['mse_rise_pct']:+.1f}% |")
    lines += ["", "## Blind skipping of every k-th frame", "", "| k | skip ratio | MSE front | rise |", "|---|---|---|---|"]
    for r in result["every_k"]:
        lines.append(f"| {r['k']} | {r['skip_ratio']:.1%} | {r['mse_front']:.2f} | {r['mse_rise_pct']:+.1f}% |")
    lines += ["", "MSE: front dome view, 256², 0..255 scale, avatar decoded from the sent code and gaze vs from the "
              "ground-truth code (VAE mean) and true gaze, averaged over all held-out frames. Skipped frames get "
              "z_t = z_{t-1} + (z_{t-1} - z_{t-T}) / (T - 1) of the sent codes (gaze and keypoints alike).", ""]
    return "\n".join(lines)


def write_results(result: dict, out_dir: str | Path) -> list[Path]:
    from avcore.results import write_json_and_markdown

    public = {k: v for k, v in result.items() if not k.startswith("_")}
    write_json_and_markdown(out_dir, "latex", public, render_markdown(result))
    out_dir = Path(out_dir)
    return [out_dir / "latex.json", out_dir / "latex.md", *plot_latex(result, out_dir)]
