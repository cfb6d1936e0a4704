"""``avcall eval distill-renderer``: neural renderers G of different sizes side by side, plain or modulated, distilled
or trained from scratch (the avatar-compression paper's renderer comparison).

Every row is a name with one renderer run directory per training seed (``avcall train renderer`` for the teacher,
``avcall distill renderer`` for students). Per row: parameters of the network G runs per frame (the neural texture,
sampled by the rasterizer, counted apart), MFLOPs of one frame at G's working size (``FlopCounterMode``), G's time
(onnxruntime, one thread, median; all rows in one run, after the quality part) and, on the teacher's held-out clips
(the same frames for every row), PSNR and SSIM over the face pixels (the studio render's foreground) and the whole
frame; with several seeds, their mean and std. The plain rasterized avatar (the receiver's image without G) is the
reference line. A picture shows a few held-out clips for every row over its error map.

``distill_renderer.json``: ``{"rows": [{"name", "modulated", "widths", "distilled", "params", "texture_params",
"mflops", "g_ms", "psnr_face_mean", "psnr_face_mean_std", "ssim_face_mean", "psnr_mean", "seeds", "run_dirs"}],
"raster": {...}, "test": {"clips", "from"}, "machine", "command"}``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np


def g_cost(g, size: int) -> dict:
    """Network parameters, neural-texture parameters and MFLOPs (2 x MACs) of one frame of G at ``size``."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    c = g.cfg
    args = (torch.rand(1, 3, size, size), torch.rand(1, 3, size, size), torch.tensor([[0.0, 0.0, 1.0]]),
            torch.rand(1, c.channels, size, size))
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        g(*args, z=torch.zeros(1, c.latent_dim) if c.modulated else None)
    return {"params": g.network_params(), "texture_params": int(sum(p.numel() for p in g.texture.parameters())),
            "mflops": fc.get_total_flops() / 1e6}


def g_ms(run_dir: Path, *, iters: int = 60, warmup: int = 10) -> float:
    """Median onnxruntime time (ms) of one run of ``renderer.onnx``, one thread, on random inputs of its shapes."""
    from avcore.onnx import inference_session

    sess = inference_session(Path(run_dir) / "renderer.onnx", 1)
    rng = np.random.default_rng(0)
    feed = {i.name: rng.random([d if isinstance(d, int) else 1 for d in i.shape]).astype(np.float32)
            for i in sess.get_inputs()}
    times = []
    for k in range(iters + warmup):
        t0 = time.perf_counter()
        sess.run(None, feed)
        if k >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def g_images(g, test: dict, batch: int = 8) -> np.ndarray:
    """G's frame-t images (N, S, S, 3) uint8 of the held-out clips."""
    import torch

    from .data import clip_tensors
    from .train import _to_uint8, g_on_clips

    out = []
    with torch.no_grad():
        for a in range(0, len(test["raster"]), batch):
            b = clip_tensors(test, np.arange(a, min(a + batch, len(test["raster"]))))
            out.append(_to_uint8(g_on_clips(g, b)["image"]))
    return np.concatenate(out)


def check_runs(rows: list[tuple[str, list[Path]]]) -> None:
    """One line (:class:`UsageError`) naming the first row directory that is not a trained renderer run."""
    from avcore.errors import UsageError

    for name, dirs in rows:
        for d in dirs:
            if not all((Path(d) / f).is_file() for f in ("checkpoint.pt", "renderer.onnx", "renderer.json")):
                raise UsageError(f"{name}: {d} is not a trained renderer run (checkpoint.pt, renderer.onnx and "
                                 "renderer.json needed)")


def compare_renderers(rows: list[tuple[str, list[Path]]], test: dict, *, sheet: Path | None = None,
                      sheet_clips: tuple[int, ...] = (0, 5, 11), progress: bool = True) -> dict:
    """``rows``: (name, run directories, one per seed); ``test``: the held-out clips (the teacher's). Returns the
    table (module docstring) without machine and command."""
    from avcore.progress import progress as progress_bar

    from .evaluate import frame_metrics, summarise
    from .train import load_generator

    check_runs(rows)
    truth = test["target"][:, 0]
    size = int(truth.shape[1])
    out, kept = [], {}
    bar = progress_bar(total=sum(len(d) for _, d in rows), desc="eval distill-renderer", unit="model",
                       disable=not progress)
    for name, dirs in rows:
        q = []
        for k, d in enumerate(dirs):
            g = load_generator(d)
            imgs = g_images(g, test)
            q.append(summarise(frame_metrics(imgs, truth)))
            if k == 0:
                kept[name] = imgs
                cost = g_cost(g, size)
                meta = json.loads((Path(d) / "renderer.json").read_text())
            bar.update(1)
        psnrs = [x["psnr_face"] for x in q]
        out.append({"name": name, "modulated": bool(g.cfg.modulated), "widths": list(g.cfg.widths),
                    "distilled": bool(meta["train"].get("teacher")), **cost, "g_ms": None,
                    "psnr_face_mean": float(np.mean(psnrs)),
                    "psnr_face_mean_std": float(np.std(psnrs, ddof=1)) if len(psnrs) > 1 else None,
                    "ssim_face_mean": float(np.mean([x["ssim_face"] for x in q])),
                    "psnr_mean": float(np.mean([x["psnr"] for x in q])),
                    "ssim_mean": float(np.mean([x["ssim"] for x in q])),
                    "steps": int(meta["train"]["steps_done"]), "seeds": len(dirs),
                    "run_dirs": [str(d) for d in dirs]})
    bar.close()
    for row, (_, dirs) in zip(out, rows):  # every timing in one go, after the quality part
        row["g_ms"] = g_ms(Path(dirs[0]))
    raster = summarise(frame_metrics(test["raster"], truth))
    result = {"rows": out, "raster": {"psnr_face_mean": raster["psnr_face"], "ssim_face_mean": raster["ssim_face"],
                                      "psnr_mean": raster["psnr"]},
              "test": {"clips": int(len(truth)), "size": size}}
    if sheet is not None:
        result["picture"] = str(side_by_side(kept, test, Path(sheet), sheet_clips))
    return result


def side_by_side(kept: dict[str, np.ndarray], test: dict, path: Path, clips: tuple[int, ...], tile: int = 192) -> Path:
    """Held-out clips (rows of tiles): the studio truth, the raster, then every renderer's image; under each row the
    error maps (|diff| x4)."""
    import cv2

    from avcore.metrics import error_map

    clips = tuple(i for i in clips if i < len(test["raster"]))
    up = lambda im: cv2.resize(im, (tile, tile), interpolation=cv2.INTER_LINEAR)  # noqa: E731
    labels = ["studio truth", "raster"] + list(kept)
    bands = []
    for i in clips:
        gt = test["target"][i, 0]
        imgs = [gt, test["raster"][i]] + [k[i] for k in kept.values()]
        bands.append(np.concatenate([up(im) for im in imgs], 1))
        bands.append(np.concatenate([np.zeros((tile, tile, 3), np.uint8)]
                                    + [up(error_map(im, gt)) for im in imgs[1:]], 1))
    grid = np.ascontiguousarray(np.concatenate(bands, 0)[..., ::-1])
    for j, lab in enumerate(labels):
        cv2.putText(grid, lab, (j * tile + 4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1, cv2.LINE_AA)
    cv2.putText(grid, "error x4", (4, tile + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1, cv2.LINE_AA)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), grid)
    return path


def render_markdown(table: dict) -> str:
    f = lambda x, nd=2: "–" if x is None else f"{x:.{nd}f}"  # noqa: E731
    r0 = table["raster"]
    lines = ["# Neural renderer distillation: plain vs modulated students", "", f"Machine: {table['machine']}", "",
             f"Command: `{table['command']}`", "",
             f"Held-out clips: {table['test']['clips']} (the teacher's), frame t at {table['test']['size']} px; PSNR "
             "(dB, of the mean MSE on 0..255) and SSIM over the face pixels (the studio render's foreground) and the "
             "whole frame. Params: the network G runs per frame (the neural texture, sampled by the rasterizer, "
             "apart); G ms: onnxruntime, one thread, median, all rows in one run.", "",
             "| row | U-Net widths | modulated | distilled | params | texture params | MFLOPs | G ms | face PSNR | "
             "± seeds | face SSIM | PSNR | steps | seeds |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in table["rows"]:
        lines.append(f"| {r['name']} | {','.join(map(str, r['widths']))} | {'yes' if r['modulated'] else 'no'} | "
                     f"{'yes' if r['distilled'] else 'no'} | {r['params']:,} | {r['texture_params']:,} | "
                     f"{f(r['mflops'], 1)} | {f(r['g_ms'])} | {f(r['psnr_face_mean'])} | {f(r['psnr_face_mean_std'])} "
                     f"| {f(r['ssim_face_mean'], 3)} | {f(r['psnr_mean'])} | {r['steps']} | {r['seeds']} |")
    lines.append(f"| raster alone (no G) | | | | 0 | | | | {f(r0['psnr_face_mean'])} | | "
                 f"{f(r0['ssim_face_mean'], 3)} | {f(r0['psnr_mean'])} | | |")
    return "\n".join(lines) + "\n"


def write_results(table: dict, out_dir: Path) -> Path:
    from avcore.results import write_json_and_markdown

    return write_json_and_markdown(out_dir, "distill_renderer", table, render_markdown(table))
