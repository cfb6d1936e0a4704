"""``avcall eval renderer``: the neural-caching paper's Table 1 (quality and speed of each way to fill display frames)
and Table 3 (ablations of W) on held-out studio sequences.

Held-out sequences (:func:`renderer.data.build_sequence_data`): every 60 Hz display tick of a performance the models
never saw, with a viewer orbit sampled at every tick; codes arrive at 30 Hz (every ``code_every``-th tick, the code
of that tick's true frame). Every row fills every tick for the viewer's direction of that tick, with the newest code:

- ``naive``: G when a code arrives, the last frame shown again in between (no warp);
- ``raster``: the decoder's output rasterized, every tick (no neural renderer);
- ``G``: G on every tick;
- ``warp1x``: G when a code arrives, W from its cache in between (one process: ``--render warp``);
- ``warp2x``: G on every third tick, W for the two after it (two warped frames per generated one);
- ``warp2x-parallel``: the two-worker scheduler (``--render warp2x``): ticks dealt in pairs, each worker G then W
  from its own cache, so its images are those of ``warp1x``; its speed is its own;
- ``explicit-warp``: ``warp1x``'s schedule with the explicit-warp baseline (a flow field resamples G's image).

Quality per row against the studio's render of every tick at G's working size: PSNR (of the mean MSE, 0..255), SSIM
and L1 (0..1) over the whole frame and over the face pixels (the render's foreground), on all ticks and on the
warped ticks alone. ``latency_ms``: mean time of the path that makes a display frame once its view (and newest code)
is known: decode + rasterize + G for ``G`` and ``naive``, decode + rasterize for ``raster``, the UV rasterization + W
for the warp rows (``latency_generate_ms``: their generate path). ``fps``: presented display frames per second
from a timed run of the row's scheduler (:mod:`renderer.scheduler`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROWS = ("naive", "raster", "G", "warp1x", "warp2x", "warp2x-parallel", "explicit-warp")
"""The rows of the result table, in order (``docs/results/neural_caching.json``)."""


def schedule(name: str, ticks: int, code_every: int = 2) -> list[str]:
    """Per tick: ``generate``, ``warp``, ``reuse`` (show the last frame again) or ``raster``."""
    out = []
    for t in range(ticks):
        new_code = t % code_every == 0
        if name == "raster":
            out.append("raster")
        elif name == "G":
            out.append("generate")
        elif name == "naive":
            out.append("generate" if new_code else "reuse")
        elif name in ("warp1x", "explicit-warp") or name.startswith("ablation:"):
            out.append("generate" if new_code or t == 0 else "warp")
        elif name == "warp2x":
            out.append("generate" if t % 3 == 0 else "warp")
        elif name == "warp2x-parallel":  # dealt in pairs: each worker generates then warps from its own cache
            out.append("generate" if t % 2 == 0 else "warp")
        else:
            raise ValueError(f"unknown row {name!r}")
    return out


def run_schedule(engine, seq: dict, s: int, actions: list[str], code_every: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Frames (T, S, S, 3) uint8 of sequence ``s`` under ``actions`` and each frame's path time in ms (0 for a
    reused frame)."""
    T = len(actions)
    frames, ms = [], np.zeros(T)
    last = None
    for t, a in enumerate(actions):
        c = t - t % code_every  # the newest code's tick
        z, gaze, view = seq["z"][s, c], seq["gaze"][s, c], seq["view"][s, t]
        if a == "reuse":
            img = last
        elif a == "raster":
            img = engine.rasterize(z, gaze, view)
        elif a == "generate":
            img = engine.generate(z, gaze, view)
        else:
            img = engine.warp(z, gaze, view)
        if a != "reuse":
            ms[t] = engine.last_ms["total"]
        frames.append(img)
        last = img
    return np.stack(frames), ms


def frame_metrics(frames: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
    """Per frame: ``mse``, ``face_mse`` (0..255 scale), ``ssim``, ``ssim_face``, ``l1``, ``l1_face`` (0..1)."""
    from avcore.metrics import face_and_frame_mse, face_mask, ssim

    out = {k: np.zeros(len(frames)) for k in ("mse", "face_mse", "ssim", "ssim_face", "l1", "l1_face")}
    for i, (f, g) in enumerate(zip(frames, targets)):
        out["face_mse"][i], out["mse"][i] = face_and_frame_mse(f, g)
        m = face_mask(g)
        d = np.abs(f.astype(np.float64) - g.astype(np.float64)) / 255.0
        out["l1"][i] = d.mean()
        out["l1_face"][i] = d[m].mean() if m.any() else 0.0
        out["ssim"][i] = ssim(f, g)
        out["ssim_face"][i] = ssim(f, g, mask=m) if m.any() else 1.0
    return out


def summarise(per: dict[str, np.ndarray], sel: np.ndarray | None = None) -> dict:
    from avcore.metrics import psnr_from_mse

    sel = np.ones(len(per["mse"]), bool) if sel is None else sel
    if not sel.any():
        return {}
    return {"psnr": psnr_from_mse(float(per["mse"][sel].mean())),
            "psnr_face": psnr_from_mse(float(per["face_mse"][sel].mean())),
            "ssim": float(per["ssim"][sel].mean()), "ssim_face": float(per["ssim_face"][sel].mean()),
            "l1": float(per["l1"][sel].mean()), "l1_face": float(per["l1_face"][sel].mean())}


@dataclass
class RowSpec:
    name: str
    renderer_dir: str
    """Where the row's G and W come from ('' = the avatar's installed ones)."""
    schedule: str


def evaluate_rows(avatar_dir: str | Path, specs: list[RowSpec], seq: dict, *, code_every: int = 2,
                  progress: bool = True, keep_frames: tuple[int, ...] = ()) -> tuple[list[dict], dict]:
    """Quality and path times of each row over every held-out sequence (module docstring); returns the rows and,
    for the ticks ``keep_frames`` of sequence 0, every row's frames (for the picture)."""
    from avcore.progress import progress as progress_bar

    from .engine import EngineSpec, NeuralEngine

    N, T = seq["view"].shape[:2]
    size = int(seq["target"].shape[2])
    rows, kept = [], {}
    engines: dict[str, NeuralEngine] = {}
    bar = progress_bar(total=len(specs) * N, desc="eval renderer", unit="sequence", disable=not progress)
    try:
        for spec in specs:
            eng = engines.get(spec.renderer_dir)
            if eng is None:
                eng = engines[spec.renderer_dir] = NeuralEngine(EngineSpec(str(avatar_dir), size=size, threads=1,
                                                                           renderer_dir=spec.renderer_dir))
                eng.warm_up()
            actions = schedule(spec.schedule, T, code_every)
            per, ms, kinds = None, [], []
            for s in range(N):
                eng.cache = None
                frames, t_ms = run_schedule(eng, seq, s, actions, code_every)
                m = frame_metrics(frames, seq["target"][s])
                per = m if per is None else {k: np.concatenate([per[k], m[k]]) for k in m}
                ms.append(t_ms)
                kinds += actions
                if s == 0 and keep_frames:
                    kept[spec.name] = frames[list(keep_frames)]
                bar.update(1)
            ms, kinds = np.concatenate(ms), np.array(kinds)
            warped = kinds == "warp"
            lat = {"generate": ms[kinds == "generate"], "warp": ms[warped], "raster": ms[kinds == "raster"]}
            path = lat["warp"] if warped.any() else (lat["raster"] if spec.schedule == "raster" else lat["generate"])
            rows.append({"name": spec.name, "schedule": spec.schedule, "renderer_dir": spec.renderer_dir,
                         **summarise(per), "warped_frames": summarise(per, warped) if warped.any() else None,
                         "latency_ms": float(path.mean()), "latency_ms_p50": float(np.median(path)),
                         "latency_generate_ms": float(lat["generate"].mean()) if len(lat["generate"]) else None,
                         "frames": int(len(kinds)), "warped": int(warped.sum())})
    finally:
        bar.close()
        for e in engines.values():
            e.close()
    return rows, kept


class _RasterEngine:
    """The ``raster`` row through a scheduler: every display frame is the plain decode + rasterize."""

    def __init__(self, engine) -> None:
        self.engine, self.size, self.has_cache = engine, engine.size, True

    def generate(self, z, gaze, view):
        return self.engine.rasterize(z, gaze, view)

    warp = generate

    def warm_up(self) -> None:
        self.engine.warm_up()

    def close(self) -> None:
        self.engine.close()


class _NaiveEngine:
    """The ``naive`` row through a scheduler: G on a new code, the last image shown again otherwise."""

    def __init__(self, engine) -> None:
        self.engine, self.size, self._last = engine, engine.size, None

    @property
    def has_cache(self) -> bool:
        return self._last is not None

    def generate(self, z, gaze, view):
        self._last = self.engine.generate(z, gaze, view)
        return self._last

    def warp(self, z, gaze, view):
        return self._last

    def warm_up(self) -> None:
        self.engine.warm_up()

    def close(self) -> None:
        self.engine.close()


TIMED_MODES = {"naive": ("warp", _NaiveEngine, 2), "raster": ("neural", _RasterEngine, 1), "G": ("neural", None, 1),
               "warp1x": ("warp", None, 2), "warp2x": ("warp", None, 3), "warp2x-parallel": ("warp2x", None, 0),
               "explicit-warp": ("warp", None, 2)}
"""Row -> (scheduler mode, engine adapter, frames per code at capacity: a new code after every n presented frames,
0 = codes at their own rate)."""


def measure_display(row: str, spec, seq: dict, *, display_hz: float, seconds: float, code_hz: float = 30.0,
                    at_capacity: bool = True) -> dict:
    """Run the row's real scheduler (:mod:`renderer.scheduler`) for ``seconds`` and count what it presents.

    ``at_capacity``: the display clock runs faster than any row can render (``display_hz`` high) and, for the
    sequential rows, a new code is handed over after every n presented frames (n = 1 for G every frame, 2 for one
    warped frame per generated one, 3 for two), so ``fps`` is the row's throughput. Otherwise (online, the
    paper's Table 2) codes arrive at ``code_hz`` on the wall clock and the display ticks at ``display_hz``.
    Codes and views come from held-out sequence 0 (views by display tick)."""
    import time

    from .engine import NeuralEngine
    from .scheduler import Code, open_scheduler

    mode, adapter, per_code = TIMED_MODES[row]
    views = seq["view"][0]
    view_at = lambda t_s: views[int(t_s * 60.0) % len(views)]  # noqa: E731  (the sequence's 60 Hz viewer motion)
    frames = []
    opener = (lambda sp: adapter(NeuralEngine(sp))) if adapter is not None else "renderer.engine:open_engine"
    sched, engine = open_scheduler(mode, spec, display_hz, view_at, lambda img, f: None, opener=opener)
    try:
        k, since_code = 0, 0

        def submit():
            nonlocal k, since_code
            c = 2 * (k % (len(views) // 2))
            sched.submit(Code(seq["z"][0, c], seq["gaze"][0, c], seq=k, capture_ns=time.monotonic_ns()))
            k, since_code = k + 1, 0

        submit()
        t0 = time.monotonic()
        next_code = t0 + 1 / code_hz
        presented0 = None
        while time.monotonic() - t0 < seconds:
            got = sched.poll()
            if got and presented0 is None:
                presented0 = (time.monotonic(), sched.presented - len(got))
            frames += got
            since_code += len(got)
            if at_capacity and per_code:
                if since_code >= per_code:
                    submit()
            elif time.monotonic() >= next_code:
                submit()
                next_code += 1 / code_hz
            sched.wait(0.002)
        t_end, n_end = time.monotonic(), sched.presented
        stats = sched.stats()
    finally:
        sched.close()
        if engine is not None:
            engine.close()
    span = t_end - (presented0[0] if presented0 else t0)
    fps = (n_end - (presented0[1] if presented0 else 0)) / span if span > 0 else 0.0
    v2p = np.array([f.view_to_present_ms for f in frames]) if frames else np.zeros(1)
    comp = {kind: np.array([f.compute_ms for f in frames if f.kind == kind]) for kind in ("generate", "warp")}
    sync = np.array([f.sync_ms for f in frames if f.parallel])
    return {"row": row, "mode": mode, "display_hz": display_hz, "at_capacity": at_capacity, "seconds": seconds,
            "fps": fps, "presented": stats["presented"], "generated": stats["generated"], "warped": stats["warped"],
            "missed": stats["missed_ticks"],
            "view_to_present_ms_p50": float(np.percentile(v2p, 50)), "view_to_present_ms_p99": float(np.percentile(v2p, 99)),
            "generate_ms_p50": float(np.median(comp["generate"])) if len(comp["generate"]) else None,
            "warp_ms_p50": float(np.median(comp["warp"])) if len(comp["warp"]) else None,
            "sync_ms_p50": float(np.median(sync)) if len(sync) else None,
            "sync_ms_p99": float(np.percentile(sync, 99)) if len(sync) else None}


ABLATION_ROWS = ("full", "no-duv", "no-code-pose", "no-mlp", "no-sh-modulation")
"""W-only runs on the same frozen G, in the ablation table's order (``full``: every input, trained the same way)."""


def evaluate_renderer(identity: str, avatar_dir: str | Path, *, renderer_dir: str | Path = "", runs: str | Path = "",
                      seq_cfg=None, cache: Path | None = None, picture_path: Path | None = None,
                      timed_seconds: float = 6.0, online_seconds: float = 8.0, command: str = "",
                      progress: bool = True) -> dict:
    """The whole evaluation (module docstring): quality rows, their timed runs, the online runs at 60 Hz and the
    ablations. ``renderer_dir``: G and W of the main rows (default: the avatar's installed ones); ``runs``: prefix
    of the W-only run directories ``{runs}-explicit`` and ``{runs}-{ablation}`` (rows whose directory is missing are
    left out and named in ``missing``)."""
    from encoder.bench import machine_description

    from .data import SequenceDataConfig, build_sequence_data
    from .engine import EngineSpec, check_renderer_files

    seq_cfg = seq_cfg or SequenceDataConfig(identity=identity)
    check_renderer_files(avatar_dir, renderer_dir)
    seq = build_sequence_data(seq_cfg, decoder_dir=avatar_dir, cache=cache, progress=progress)
    main = str(renderer_dir or "")
    extra = {name: f"{runs}-{name}" for name in ("explicit",) + ABLATION_ROWS} if runs else {}
    have = {k: d for k, d in extra.items() if Path(d, "warp.onnx").is_file()}
    missing = sorted(set(extra) - set(have))
    specs = [RowSpec(r, main, r) for r in ROWS if r != "explicit-warp"]
    if "explicit" in have:
        specs.append(RowSpec("explicit-warp", have["explicit"], "explicit-warp"))
    T = seq["view"].shape[1]
    keep = tuple(t for t in (T // 4 + 1, T // 2 + 1, 3 * T // 4 + 1) if t < T)
    rows, kept = evaluate_rows(avatar_dir, specs, seq, progress=progress, keep_frames=keep)
    abl_specs = [RowSpec(a, have[a], "warp1x") for a in ABLATION_ROWS if a in have]
    ablation = evaluate_rows(avatar_dir, abl_specs, seq, progress=progress)[0] if abl_specs else []
    size = int(seq["target"].shape[2])
    for r in rows:  # the timed runs: every row's real scheduler, at capacity
        spec = EngineSpec(str(avatar_dir), size=size, threads=1, renderer_dir=r["renderer_dir"])
        t = measure_display(r["name"], spec, seq, display_hz=240.0, seconds=timed_seconds)
        r["fps"], r["timed"] = t["fps"], t
    online = []
    for name in ("raster", "G", "warp1x", "warp2x-parallel"):
        spec = EngineSpec(str(avatar_dir), size=size, threads=1, renderer_dir=main)
        online.append({**measure_display(name, spec, seq, display_hz=60.0, seconds=online_seconds, at_capacity=False),
                       "mode": {"raster": "raster", "G": "neural", "warp1x": "warp",
                                "warp2x-parallel": "warp2x"}[name]})
    by = {r["name"]: r for r in rows}
    checks = {"warp_to_generate_latency": by["warp1x"]["latency_ms"] / by["G"]["latency_ms"],
              "warp1x_psnr_loss_pct": 100 * (by["G"]["psnr"] - by["warp1x"]["psnr"]) / by["G"]["psnr"],
              "warp1x_psnr_face_loss_pct": 100 * (by["G"]["psnr_face"] - by["warp1x"]["psnr_face"]) / by["G"]["psnr_face"],
              "parallel_fps_ratio": by["warp2x-parallel"]["fps"] / by["G"]["fps"] if by["G"]["fps"] else None}
    table = {"identity": identity, "rows": rows, "ablation": ablation, "online": online, "checks": checks,
             "sequences": seq_cfg.to_dict(), "code_every": 2, "avatar_dir": str(avatar_dir), "missing": missing,
             "machine": machine_description(), "command": command}
    if picture_path is not None:
        table["picture"] = str(picture(seq, kept, keep, Path(picture_path)))
    return table


def picture(seq: dict, kept: dict, ticks: tuple[int, ...], path: Path, tile: int = 160) -> Path:
    """Fig. 5 of the paper: for each kept tick (rows), the truth and every row's frame over its error map
    (|diff| x4, inferno)."""
    import cv2

    from avcore.metrics import error_map

    names = list(kept)
    grid_rows = []
    for j, t in enumerate(ticks):
        gt = seq["target"][0, t]
        top = [gt] + [kept[n][j] for n in names]
        err = [np.zeros_like(gt)] + [error_map(kept[n][j], gt) for n in names]
        r = lambda im: cv2.resize(im, (tile, tile), interpolation=cv2.INTER_LINEAR)  # noqa: E731
        grid_rows.append(np.concatenate([r(x) for x in top], 1))
        grid_rows.append(np.concatenate([r(x) for x in err], 1))
    grid = np.ascontiguousarray(np.concatenate(grid_rows, 0)[..., ::-1])
    for k, lab in enumerate(["truth"] + names):
        cv2.putText(grid, lab, (k * tile + 4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1, cv2.LINE_AA)
    for j, t in enumerate(ticks):
        cv2.putText(grid, f"tick {t} ({'new code' if t % 2 == 0 else 'no new code'})", (4, (2 * j + 1) * tile - 6),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.38, (255, 255, 255), 1, cv2.LINE_AA)
        cv2.putText(grid, "error x4", (4, (2 * j + 1) * tile + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (255, 255, 255), 1,
                    cv2.LINE_AA)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), grid)
    return path


def render_markdown(table: dict) -> str:
    f = lambda x, nd=2: "–" if x is None else f"{x:.{nd}f}"  # noqa: E731

    def line(r):
        w = r.get("warped_frames") or {}
        return (f"| {r['name']} | {f(r['psnr'])} | {f(r['psnr_face'])} | {f(w.get('psnr_face'))} | {f(r['ssim'], 3)} | "
                f"{f(r['ssim_face'], 3)} | {f(r['l1'], 4)} | {f(r['latency_ms'])} | {f(r.get('fps'), 1)} |")

    head = ["| row | PSNR | face PSNR | face PSNR, warped ticks | SSIM | face SSIM | L1 | latency ms | fps |",
            "|---|---|---|---|---|---|---|---|---|"]
    s = table["sequences"]
    lines = ["# Neural caching on the studio (the paper's Tables 1-3 shape)", "", f"Machine: {table['machine']}", "",
             f"Command: `{table['command']}`", "",
             f"Held-out sequences: {s['sequences']} × {s['seconds']} s of S{table['identity'][1:]} at {s['fps']:g} Hz "
             f"display ticks (viewer orbit ±{s['orbit_yaw_deg']:g}° yaw every {s['orbit_period_s']:g} s), codes at "
             f"{s['fps'] / table['code_every']:g} Hz; images at G's working size {s['size']} px. PSNR of the mean "
             "MSE; face = the studio render's foreground. Latency: the path that makes a display frame (module "
             "docstring of renderer/evaluate.py), one onnxruntime thread, mean.", "", *head]
    lines += [line(r) for r in table["rows"]]
    if table.get("checks"):
        c = table["checks"]
        lines += ["", f"W / G latency: {f(c['warp_to_generate_latency'], 3)} (goal ≤ 0.3); warp1x PSNR loss vs G: "
                      f"{f(c['warp1x_psnr_loss_pct'])} % (goal ≤ 1 %); warp2x-parallel fps / G fps: "
                      f"{f(c['parallel_fps_ratio'])} (goal ≥ 2.2)."]
    if table.get("online"):
        lines += ["", "## Online at the display rate (the paper's Table 2)", "",
                  "| mode | display fps | view-to-present p50 ms | p99 ms | missed ticks |", "|---|---|---|---|---|"]
        for r in table["online"]:
            lines.append(f"| {r['mode']} | {f(r['fps'], 1)} | {f(r.get('view_to_present_ms_p50'))} | "
                         f"{f(r.get('view_to_present_ms_p99'))} | {r.get('missed', '–')} |")
    if table.get("ablation"):
        lines += ["", "## Ablations of W (the paper's Table 3)", "",
                  "Every W trained on the same frozen G, data, steps and seed; warp1x schedule.", "", *head]
        lines += [line(r) for r in table["ablation"]]
    if table.get("picture"):
        lines += ["", f"![side by side]({Path(table['picture']).name})"]
    return "\n".join(lines) + "\n"


def write_results(table: dict, out_dir: Path) -> Path:
    from avcore.results import write_json_and_markdown

    return write_json_and_markdown(out_dir, "neural_caching", table, render_markdown(table))
