"""``avcall eval distill``: decoders of different sizes side by side (the distillation paper's Table 3 shape).

Every row is a role (``teacher``, ``current``, ``student``, ``student-scratch``, ``student-no-kl``,
``student-no-feature``) with one model directory per training seed. Per row: parameters and MFLOPs of one decode
(:func:`decoder.presets.decoder_cost`), the decode time (onnxruntime, one thread, median; every row in the same
run), and on held-out poses (seed disjoint from training; each directory's own training encoder gives the codes,
the students share their teacher's latent space) the PSNR over the face pixels, the studio's whole foreground and
the whole frame, and the face SSIM, of the front, left and right dome views; with several seeds, their mean and
std. The face pixels are those of the studio's own head mesh (:meth:`decoder.evaluate.HeldOutProbe.head_mask`),
the face a decoder models: the studio's foreground also has hair volume, ears, neck and shoulders, which no decoder
mesh has, and the error there, the same for every decoder, would hide the differences between them. A
side-by-side picture shows a few held-out poses for every row with its error map.

``distill.json``: ``{"rows": [{"name", "role", "params", "mflops", "decode_ms", "psnr_face_mean", "psnr_face":
{view}, "psnr_foreground_mean", "psnr_foreground": {view}, "psnr_mean", "psnr": {view}, "ssim_face": {view},
"ssim_face_mean", "psnr_face_mean_std", "seeds", "model_dirs"}], "machine", "command", "test"}``.
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
    """PSNR (of the mean MSE, 0..255) per view over the face pixels (the studio's head mesh, which the decoder
    models), the studio's whole foreground and the whole frame, and the face SSIM, over the held-out ``poses``."""
    from avcore.metrics import face_and_frame_mse, mse as masked_mse, psnr_from_mse, ssim

    from .evaluate import HeldOutProbe

    probe = HeldOutProbe(model_dir, identity, threads=1)
    expr, gaze = poses
    parts = ("face", "foreground", "frame")
    mse = {part: {v: [] for v in VIEWS} for part in parts}
    ss = {v: [] for v in VIEWS}
    try:
        for i in range(len(expr)):
            z = probe.code(expr[i], gaze[i])
            for v in VIEWS:
                gt = probe.truth(expr[i], gaze[i], v)
                pr = probe.render(z, gaze[i], v)
                head = probe.head_mask(expr[i], gaze[i], v)
                for part, m in zip(parts, (masked_mse(pr, gt, head), *face_and_frame_mse(pr, gt))):
                    mse[part][v].append(m)
                ss[v].append(ssim(pr, gt, peak=255.0, mask=head))
    finally:
        probe.close()
    out = {}
    for part in parts:
        psnr = {v: psnr_from_mse(float(np.mean(mse[part][v]))) for v in VIEWS}
        key = "psnr" if part == "frame" else f"psnr_{part}"
        out |= {key: psnr, f"{key}_mean": float(np.mean(list(psnr.values())))}
    ssim_v = {v: float(np.mean(ss[v])) for v in VIEWS}
    return out | {"ssim_face": ssim_v, "ssim_face_mean": float(np.mean(list(ssim_v.values())))}


def compare_decoders(rows: list[tuple[str, list[Path]]], *, identity: str | None = None, num_test: int = 24,
                     test_seed: int = 1_000_003, sheet: Path | None = None, progress: bool = True) -> dict:
    """``rows``: (role, model directories, one per seed). Returns the table (module docstring)."""
    from avcore.errors import UsageError
    from avcore.progress import progress as progress_bar

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
    rows = _grouped(rows)
    poses = sample_poses(num_test, test_seed)
    out = []
    bar = progress_bar(total=sum(len(d) for _, d in rows), desc="eval distill", unit="model", disable=not progress)
    for role, dirs in rows:
        cfg = _decoder_config(dirs[0])
        q = []
        for d in dirs:
            q.append(face_quality(Path(d), identity, poses))
            bar.update(1)
        psnrs = [x["psnr_face_mean"] for x in q]
        row = {"name": f"{role} ({preset_of(cfg) or 'custom size'})", "role": role,
               **decoder_cost(cfg), "decode_ms": None, "seeds": len(dirs), "model_dirs": [str(d) for d in dirs],
               "psnr_face_mean": float(np.mean(psnrs)),
               "psnr_face_mean_std": float(np.std(psnrs, ddof=1)) if len(psnrs) > 1 else None,
               **{key: {v: float(np.mean([x[key][v] for x in q])) for v in VIEWS}
                  for key in ("psnr_face", "psnr_foreground", "psnr", "ssim_face")},
               **{key: float(np.mean([x[key] for x in q])) for key in ("psnr_foreground_mean", "psnr_mean",
                                                                       "ssim_face_mean")}}
        out.append(row)
    bar.close()
    for row, (_, dirs) in zip(out, rows):  # all decode timings in one go, after the GL-heavy part
        row["decode_ms"] = decode_ms(Path(dirs[0]))
    result = {"rows": out, "test": {"poses": num_test, "seed": test_seed, "views": list(VIEWS)}}
    if sheet is not None:
        side_by_side(rows, poses, Path(sheet), identity)
        result["picture"] = str(sheet)
    return result


def _decoder_config(model_dir: Path):
    """The :class:`decoder.config.DecoderConfig` a model directory's ``config.json`` names."""
    from .config import DecoderConfig

    return DecoderConfig.from_dict(json.loads((Path(model_dir) / "config.json").read_text())["decoder"])


def _grouped(rows: list[tuple[str, list[Path]]]) -> list[tuple[str, list[Path]]]:
    """Teacher and current first, then the students by size (in the order their sizes first appear), each size's
    roles in :data:`ROLES` order."""
    from .presets import preset_of

    def size(d: Path) -> str:
        cfg = _decoder_config(d)
        return preset_of(cfg) or json.dumps(cfg.to_dict(), sort_keys=True)

    sizes: list[str] = []
    for role, dirs in rows:
        if role.startswith("student") and size(dirs[0]) not in sizes:
            sizes.append(size(dirs[0]))
    key = lambda r: (-1 if not r[0].startswith("student") else sizes.index(size(r[1][0])), ROLES.index(r[0]))  # noqa: E731
    return sorted(rows, key=key)


def side_by_side(rows: list[tuple[str, list[Path]]], poses, path: Path, identity: str | None, n: int = 3,
                 size: int = 192) -> Path:
    """Front view of ``n`` held-out poses: ground truth, then every row's render over its error map (|diff| x4) on
    the face pixels (the studio's head mesh; black elsewhere)."""
    import cv2

    from avcore.metrics import error_map

    from .evaluate import HeldOutProbe
    from .presets import preset_of

    expr, gaze = poses
    n = min(n, len(expr))
    cols = []
    labels = [("ground truth", "")]
    truth = heads = None
    for role, dirs in rows:
        probe = HeldOutProbe(Path(dirs[0]), identity, threads=1)
        try:
            if truth is None:
                truth = [probe.truth(expr[i], gaze[i], "front") for i in range(n)]
                heads = [probe.head_mask(expr[i], gaze[i], "front") for i in range(n)]
                cols.append(np.concatenate([cv2.resize(t, (size, size), interpolation=cv2.INTER_AREA) for t in truth]
                                           + [np.zeros((size, size, 3), np.uint8)] * n, 0))
            imgs, errs = [], []
            for i in range(n):
                pr = probe.render(probe.code(expr[i], gaze[i]), gaze[i], "front")
                imgs.append(cv2.resize(pr, (size, size), interpolation=cv2.INTER_AREA))
                err = error_map(pr, truth[i]) * heads[i][..., None]
                errs.append(cv2.resize(err.astype(np.uint8), (size, size), interpolation=cv2.INTER_AREA))
            cols.append(np.concatenate(imgs + errs, 0))
            labels.append((role, preset_of(_decoder_config(dirs[0])) or "custom size"))
        finally:
            probe.close()
    grid = np.ascontiguousarray(np.concatenate(cols, 1)[..., ::-1])
    for j, (role, preset) in enumerate(labels):
        for k, text in enumerate((role, preset)):
            cv2.putText(grid, text, (j * size + 4, 14 + 16 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1,
                        cv2.LINE_AA)
    cv2.putText(grid, "error x4, face pixels", (4, n * size + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1,
                cv2.LINE_AA)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), grid)
    return path


def render_markdown(table: dict) -> str:
    f = lambda x, nd=2: "–" if x is None else f"{x:.{nd}f}"  # noqa: E731
    lines = ["# Decoder distillation (the compression paper's Table 3 shape)", "", f"Machine: {table['machine']}", "",
             f"Command: `{table['command']}`", "",
             f"Held-out poses: {table['test']['poses']} (seed {table['test']['seed']}), front/left/right dome views; "
             "PSNR in dB, of the mean MSE on 0..255. Face: the pixels of the studio's head mesh, the face a decoder "
             "models; foreground: everything the studio renders (also hair volume, ears, neck and shoulders, which "
             "no decoder mesh has: the same error for every row); frame: the whole image. Face SSIM over the face "
             "pixels. Decode ms: onnxruntime, one thread, median, all rows in one run.", "",
             "| row | params | MFLOPs | decode ms | face PSNR | ± seeds | front | left | right | face SSIM "
             "| foreground PSNR | frame PSNR | seeds |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in table["rows"]:
        p = r["psnr_face"]
        lines.append(f"| {r['name']} | {r['params']:,} | {f(r['mflops'], 1)} | {f(r['decode_ms'])} | "
                     f"{f(r['psnr_face_mean'])} | {f(r['psnr_face_mean_std'])} | {f(p['front'])} | {f(p['left'])} | "
                     f"{f(p['right'])} | {f(r['ssim_face_mean'], 3)} | {f(r['psnr_foreground_mean'])} | "
                     f"{f(r['psnr_mean'])} | {r['seeds']} |")
    return "\n".join(lines) + "\n"


def write_results(table: dict, out_dir: Path) -> Path:
    from avcore.results import write_json_and_markdown

    return write_json_and_markdown(out_dir, "distill", table, render_markdown(table))
