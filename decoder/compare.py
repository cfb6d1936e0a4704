"""``avcall eval distill``: decoders of different sizes side by side (the distillation paper's Table 3 shape).

Every row is a role (``teacher``, ``current``, ``student``, ``student-scratch``, ``student-no-kl``,
``student-no-feature``) with one model directory per training seed. Per row: parameters and MFLOPs of one decode
(:func:`decoder.presets.decoder_cost`), the decode time (onnxruntime, one thread, median; every row in the same
run), and on held-out poses (seed disjoint from training; each directory's own training encoder gives the codes,
the students share their teacher's latent space) the PSNR and SSIM over the face pixels (the studio render's
foreground) of the front, left and right dome views; with several seeds, their mean and std. A side-by-side
picture shows a few held-out poses for every row with its error map.

``distill.json``: ``{"rows": [{"name", "role", "params", "mflops", "decode_ms", "psnr_face_mean", "psnr_face":
{view}, "ssim_face": {view}, "ssim_face_mean", "psnr_face_mean_std", "seeds", "model_dirs"}], "machine",
"command", "test"}``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .evaluate import VIEWS

ROLES = ("teacher", "current", "student", "student-scratch", "student-no-kl", "student-no-feature")


def decode_ms(model_dir: Path, *, iters: int = 60, warmup: int = 10) -> float:
    """Median onnxruntime decode time (ms) of one code, one thread."""
    from .runtime import OnnxAvatarDecoder

    dec = OnnxAvatarDecoder(model_dir, threads=1)
    z = np.random.default_rng(0).normal(size=(iters + warmup, dec.latent_dim)).astype(np.float32)
    view = np.array([0.2, 0.1, 1.0])
    times = []
    for i in range(iters + warmup):
        t0 = time.perf_counter()
        dec.decode(z[i], view)
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def face_quality(model_dir: Path, identity: str | None, poses: tuple[np.ndarray, np.ndarray]) -> dict:
    """Face-pixel PSNR (of the mean face MSE, 0..255) and SSIM per view over the held-out ``poses``."""
    from avcore.metrics import face_and_frame_mse, face_mask, psnr_from_mse, ssim

    from .evaluate import HeldOutProbe

    probe = HeldOutProbe(model_dir, identity, threads=1)
    expr, gaze = poses
    mse = {v: [] for v in VIEWS}
    ss = {v: [] for v in VIEWS}
    try:
        for i in range(len(expr)):
            z = probe.code(expr[i], gaze[i])
            for v in VIEWS:
                gt = probe.truth(expr[i], gaze[i], v)
                pr = probe.render(z, gaze[i], v)
                mse[v].append(face_and_frame_mse(pr, gt)[0])
                ss[v].append(ssim(pr, gt, peak=255.0, mask=face_mask(gt)))
    finally:
        probe.close()
    psnr = {v: psnr_from_mse(float(np.mean(mse[v]))) for v in VIEWS}
    ssim_v = {v: float(np.mean(ss[v])) for v in VIEWS}
    return {"psnr_face": psnr, "psnr_face_mean": float(np.mean(list(psnr.values()))), "ssim_face": ssim_v,
            "ssim_face_mean": float(np.mean(list(ssim_v.values())))}


def compare_decoders(rows: list[tuple[str, list[Path]]], *, identity: str | None = None, num_test: int = 24,
                     test_seed: int = 1_000_003, sheet: Path | None = None, progress: bool = True) -> dict:
    """``rows``: (role, model directories, one per seed). Returns the table (module docstring)."""
    from avcore.errors import UsageError
    from avcore.progress import progress as progress_bar

    from .config import DecoderConfig
    from .data import sample_poses
    from .presets import decoder_cost, preset_of

    if num_test < 1:
        raise UsageError(f"frames must be >= 1 (got {num_test})")
    for role, dirs in rows:
        if role not in ROLES:
            raise UsageError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
        for d in dirs:
            if not (Path(d) / "config.json").is_file():
                raise UsageError(f"{d} is not a decoder directory (config.json missing)")
    poses = sample_poses(num_test, test_seed)
    out = []
    bar = progress_bar(total=sum(len(d) for _, d in rows), desc="eval distill", unit="model", disable=not progress)
    for role, dirs in rows:
        cfg = DecoderConfig.from_dict(json.loads((Path(dirs[0]) / "config.json").read_text())["decoder"])
        q = []
        for d in dirs:
            q.append(face_quality(Path(d), identity, poses))
            bar.update(1)
        psnrs = [x["psnr_face_mean"] for x in q]
        row = {"name": f"{role} ({preset_of(cfg) or 'custom size'})", "role": role,
               **decoder_cost(cfg), "decode_ms": None, "seeds": len(dirs), "model_dirs": [str(d) for d in dirs],
               "psnr_face_mean": float(np.mean(psnrs)),
               "psnr_face_mean_std": float(np.std(psnrs, ddof=1)) if len(psnrs) > 1 else None,
               "psnr_face": {v: float(np.mean([x["psnr_face"][v] for x in q])) for v in VIEWS},
               "ssim_face": {v: float(np.mean([x["ssim_face"][v] for x in q])) for v in VIEWS},
               "ssim_face_mean": float(np.mean([x["ssim_face_mean"] for x in q]))}
        out.append(row)
    bar.close()
    for row, (_, dirs) in zip(out, rows):  # all decode timings in one go, after the GL-heavy part
        row["decode_ms"] = decode_ms(Path(dirs[0]))
    result = {"rows": out, "test": {"poses": num_test, "seed": test_seed, "views": list(VIEWS)}}
    if sheet is not None:
        side_by_side(rows, poses, Path(sheet), identity)
        result["picture"] = str(sheet)
    return result


def side_by_side(rows: list[tuple[str, list[Path]]], poses, path: Path, identity: str | None, n: int = 3,
                 size: int = 192) -> Path:
    """Front view of ``n`` held-out poses: ground truth, then every row's render over its error map (|diff| x4)."""
    import cv2

    from avcore.metrics import error_map

    from .evaluate import HeldOutProbe

    expr, gaze = poses
    n = min(n, len(expr))
    cols = []
    labels = ["ground truth"]
    truth = None
    for role, dirs in rows:
        probe = HeldOutProbe(Path(dirs[0]), identity, threads=1)
        try:
            if truth is None:
                truth = [probe.truth(expr[i], gaze[i], "front") for i in range(n)]
                cols.append(np.concatenate([cv2.resize(t, (size, size), interpolation=cv2.INTER_AREA) for t in truth]
                                           + [np.zeros((size, size, 3), np.uint8)] * n, 0))
            imgs, errs = [], []
            for i in range(n):
                pr = probe.render(probe.code(expr[i], gaze[i]), gaze[i], "front")
                imgs.append(cv2.resize(pr, (size, size), interpolation=cv2.INTER_AREA))
                errs.append(cv2.resize(error_map(pr, truth[i]), (size, size), interpolation=cv2.INTER_AREA))
            cols.append(np.concatenate(imgs + errs, 0))
            labels.append(role)
        finally:
            probe.close()
    grid = np.ascontiguousarray(np.concatenate(cols, 1)[..., ::-1])
    for j, lab in enumerate(labels):
        cv2.putText(grid, lab, (j * size + 4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1, cv2.LINE_AA)
    cv2.putText(grid, "error x4", (4, n * size + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1, cv2.LINE_AA)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), grid)
    return path


def render_markdown(table: dict) -> str:
    f = lambda x, nd=2: "–" if x is None else f"{x:.{nd}f}"  # noqa: E731
    lines = ["# Decoder distillation (the compression paper's Table 3 shape)", "", f"Machine: {table['machine']}", "",
             f"Command: `{table['command']}`", "",
             f"Held-out poses: {table['test']['poses']} (seed {table['test']['seed']}), front/left/right dome views; "
             "PSNR (dB, of the mean face-pixel MSE on 0..255) and SSIM over the face pixels (the studio render's "
             "foreground); decode ms: onnxruntime, one thread, median, all rows in one run.", "",
             "| row | params | MFLOPs | decode ms | face PSNR | ± seeds | front | left | right | face SSIM | seeds |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in table["rows"]:
        p = r["psnr_face"]
        lines.append(f"| {r['name']} | {r['params']:,} | {f(r['mflops'], 1)} | {f(r['decode_ms'])} | "
                     f"{f(r['psnr_face_mean'])} | {f(r['psnr_face_mean_std'])} | {f(p['front'])} | {f(p['left'])} | "
                     f"{f(p['right'])} | {f(r['ssim_face_mean'], 3)} | {r['seeds']} |")
    return "\n".join(lines) + "\n"


def write_results(table: dict, out_dir: Path) -> Path:
    from avcore.results import write_json_and_markdown

    return write_json_and_markdown(out_dir, "distill", table, render_markdown(table))
