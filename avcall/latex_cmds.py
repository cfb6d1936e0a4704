"""``avcall train latex`` and ``avcall eval latex``: the LATEX early model and its skip-ratio sweep."""
from __future__ import annotations

import argparse
import json
import shlex
import sys

from encoder.latex import LatexConfig


def add_train(sub) -> None:
    p = sub.add_parser(
        "latex",
        help="train the LATEX early-prediction head of an encoder and calibrate its gate",
        description="Freeze a trained encoder, train a tiny head on its stem features to estimate the encoder's code "
        "and gaze, export DIR/early.onnx and write DIR/latex.json (gate scales and thresholds calibrated on the "
        "identity's training sequences for skip ratios 5%%..70%%). The sender then runs with --latex.",
    )
    p.add_argument("--identity", default="S1")
    p.add_argument("--model-dir", default=None, help="encoder model directory (default: the embedded encoder/models/IDENTITY/EEM)")
    p.add_argument("--data", default=None, help="HMC data cache .npz (default: the cache the encoder was trained on, as its meta.json records)")
    p.add_argument("--steps", type=int, default=3000, help="head training steps (default 3000)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_train)


def add_eval(sub) -> None:
    p = sub.add_parser(
        "latex",
        help="LATEX sweep: skip ratio vs rendered MSE and encode time, against blind every-k-th skipping",
        description="Render held-out HMC sequences, run the full encoder and the early model on every frame, then for "
        "a sweep of gate thresholds (and blind skipping of every k-th frame) measure the skip ratio, the front-view "
        "rendered MSE and the encode time per frame. Writes OUT/latex.json, latex.md, latex_sweep.png and "
        "latex_mse_over_time.png.",
    )
    p.add_argument("--identity", default="S1")
    p.add_argument("--model-dir", default=None, help="encoder with early.onnx + latex.json (default: the embedded one)")
    p.add_argument("--history", type=int, default=LatexConfig.history,
                   help=f"T, codes the extrapolation uses (default {LatexConfig.history})")
    p.add_argument("--max-skips", type=int, default=LatexConfig.max_skips,
                   help=f"most frames skipped in a row (default {LatexConfig.max_skips})")
    p.add_argument("--seconds", type=float, default=20.0, help="length of each held-out sequence (default 20)")
    p.add_argument("--sessions", default="201,202,203", help="held-out headset sessions, one sequence each")
    p.add_argument("--size", type=int, default=256, help="render size (default 256)")
    p.add_argument("--out", default="docs/results/", help="where latex.json, latex.md and the plots go")
    p.add_argument("--cache", default=None, help="held-out sequence cache (default runs/encoder/latex_seq_IDENTITY.npz)")
    p.add_argument("--json", action="store_true", help="print latex.json to stdout")
    p.set_defaults(func=_eval)


def _model_dir(args):
    from pathlib import Path

    from encoder.runtime import default_model_dir

    return Path(args.model_dir) if args.model_dir else default_model_dir(args.identity, "EEM")


def _train(args: argparse.Namespace) -> int:
    import torch

    from encoder.early import EarlyConfig, train_latex
    from encoder.train import load_identity_data, training_data_of

    torch.set_num_threads(args.threads)
    d = _model_dir(args)
    if not (d / "arch.json").exists():
        raise FileNotFoundError(f"no encoder in {d}; train one with 'avcall train encoder' or give --model-dir")
    data_path, data_cfg = training_data_of(d)
    if args.data:
        data_path = args.data
    train, _ = load_identity_data(args.identity, data_path, progress=not args.json, data_cfg=data_cfg)
    s = train_latex(d, train, EarlyConfig(steps=args.steps), progress=not args.json)
    summary = {"model_dir": str(d), "flops": s["flops"], "train": s["train"],
               "thresholds_default": s["calibration"].get(f"T{LatexConfig.history}_max{LatexConfig.max_skips}", {})}
    if args.json:
        print(json.dumps(summary))
    else:
        f = s["flops"]
        print(f"LATEX early model for {d}: {f['total'] / 1e6:.1f} MFLOPs = {100 * f['share']:.2f}% of the encoder "
              f"(head alone {100 * f['head_share']:.3f}%)")
        fit = s["train"]["fit"]
        print(f"  fit to the encoder on training frames: code RMSE {fit['z_rmse_std']:.3f} std, gaze MAE {fit['gaze_mae_deg']:.2f} deg")
        print(f"  thresholds (T={LatexConfig.history}, max {LatexConfig.max_skips} skips): "
              + ", ".join(f"{r}: {t:.4f}" for r, t in summary["thresholds_default"].items()))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from encoder.codec import load_vae
    from encoder.latex_eval import LatexEvalConfig, evaluate_latex, write_results

    torch.set_num_threads(1)
    d = _model_dir(args)
    argv = sys.argv[1:]
    command = ("avcall " + " ".join(shlex.quote(a) for a in argv)) if "latex" in argv else \
        f"avcall eval latex --identity {args.identity}"
    cfg = LatexEvalConfig(identity=args.identity, sessions=tuple(int(s) for s in args.sessions.split(",")),
                          seconds=args.seconds, size=args.size)
    cache = Path(args.cache) if args.cache else Path("runs") / "encoder" / f"latex_seq_{args.identity}.npz"
    r = evaluate_latex(d, load_vae(args.identity), cfg, history=args.history, max_skips=args.max_skips, command=command,
                       progress=not args.json, cache=cache)
    paths = write_results(r, args.out)
    public = {k: v for k, v in r.items() if not k.startswith("_")}
    if args.json:
        print(json.dumps(public))
    else:
        from encoder.latex_eval import render_markdown

        print(render_markdown(r))
        print("wrote " + ", ".join(map(str, paths)))
    return 0
