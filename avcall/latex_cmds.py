"""``avcall train latex`` and ``avcall eval latex``: the LATEX early model and its skip-ratio sweep.

Defaults come from the library: :class:`encoder.latex.LatexConfig` (gate), :class:`encoder.latex_eval.LatexEvalConfig`
(held-out sequences); torch is imported only inside the handlers.
"""
from __future__ import annotations

import argparse
import json
import textwrap

from encoder.latex import CALIBRATION_RATIOS, CALIBRATION_SETTINGS, LatexConfig, calibration_key
from encoder.latex_eval import LatexEvalConfig

from .args import command_line

EARLY_STEPS = 3000
"""Default head training steps (= ``encoder.early.EarlyConfig.steps``; that module imports torch, this one must not)."""

TRAIN_EPILOG = """\
examples:
  avcall train latex --identity S1
  avcall train latex --model-dir runs/encoder/S1/EEM --data runs/encoder/data_S1_rom.npz --steps 1000

Writes DIR/early.onnx (checked against torch), DIR/latex.json (the LatexConfig defaults, gate
scales, calibrated thresholds) and DIR/latex_loss_history.json. Then `avcall send --latex`.
"""

EVAL_EPILOG = """\
examples:
  avcall eval latex --identity S1
  avcall eval latex --identity S1 --history 3 --max-skips 4 --seconds 10 --out runs/latex_T3
"""


def _pct(r: float) -> str:
    return f"{100 * r:g}%"


def _wrap(text: str) -> str:
    """A description for RawDescriptionHelpFormatter (which keeps the epilog's lines but does not wrap)."""
    return textwrap.fill(text, 88)


def add_train(sub) -> None:
    settings = ", ".join(calibration_key(T, m) for T, m in CALIBRATION_SETTINGS)
    p = sub.add_parser(
        "latex",
        help="train the LATEX early-prediction head of an encoder and calibrate its gate",
        description=_wrap("Freeze a trained encoder, train a tiny head on its stem features to estimate the encoder's code "
        "and gaze, export DIR/early.onnx and write DIR/latex.json (gate scales and thresholds calibrated on the "
        f"identity's training sequences for skip ratios {_pct(CALIBRATION_RATIOS[0])}..{_pct(CALIBRATION_RATIOS[-1])} "
        f"and the (T, max skips) settings {settings}; the default LatexConfig is "
        f"{calibration_key(LatexConfig.history, LatexConfig.max_skips)}). "
        "The sender then runs with --latex."),
        epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--identity", default="S1", help="studio identity (default: %(default)s)")
    p.add_argument("--model-dir", default=None, metavar="DIR",
                   help="encoder model directory (default: the identity's embedded default, encoder/models/defaults.json)")
    p.add_argument("--data", default=None, metavar="FILE.npz",
                   help="HMC data cache (default: the cache the encoder was trained on, as its meta.json records)")
    p.add_argument("--steps", type=int, default=EARLY_STEPS, help="head training steps (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print a JSON summary instead of text (no progress bars)")
    p.set_defaults(func=_train)


def add_eval(sub) -> None:
    e = LatexEvalConfig()
    p = sub.add_parser(
        "latex",
        help="LATEX sweep: skip ratio vs rendered MSE and encode time, against blind every-k-th skipping",
        description=_wrap("Render held-out HMC sequences, run the full encoder and the early model on every frame, then for "
        "a sweep of gate thresholds (and blind skipping of every k-th frame) measure the skip ratio, the front-view "
        "rendered MSE and the encode time per frame. Writes OUT/latex.json, latex.md, latex_sweep.png and "
        "latex_mse_over_time.png."),
        epilog=EVAL_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--identity", default=e.identity, help="studio identity (default: %(default)s)")
    p.add_argument("--model-dir", default=None, metavar="DIR",
                   help="encoder with early.onnx + latex.json (default: the identity's embedded default, encoder/models/defaults.json)")
    p.add_argument("--history", type=int, default=LatexConfig.history, metavar="T",
                   help="codes the extrapolation uses (default: %(default)s)")
    p.add_argument("--max-skips", type=int, default=LatexConfig.max_skips, metavar="N",
                   help="most frames skipped in a row, 0 = no bound (default: %(default)s)")
    p.add_argument("--seconds", type=float, default=e.seconds, help="length of each held-out sequence (default: %(default)s)")
    p.add_argument("--sessions", default=",".join(map(str, e.sessions)),
                   help="held-out headset sessions, one sequence each (default: %(default)s)")
    p.add_argument("--size", type=int, default=e.size, help="render size in pixels (default: %(default)s)")
    p.add_argument("--out", default="docs/results/", metavar="OUT",
                   help="where latex.json, latex.md and the plots go (default: %(default)s)")
    p.add_argument("--cache", default=None, metavar="FILE.npz",
                   help="held-out sequence cache (default: runs/encoder/latex_seq_IDENTITY.npz)")
    p.add_argument("--json", action="store_true", help="print latex.json to stdout (no progress bars)")
    p.set_defaults(func=_eval)


def _model_dir(args):
    from pathlib import Path

    from encoder.runtime import default_model_dir

    return Path(args.model_dir) if args.model_dir else default_model_dir(args.identity)


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
               "thresholds_default": s["calibration"].get(calibration_key(LatexConfig.history, LatexConfig.max_skips), {})}
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

    from decoder.export import load_vae
    from encoder.latex_eval import LatexEvalConfig, evaluate_latex, write_results

    torch.set_num_threads(1)
    d = _model_dir(args)
    command = command_line("latex", f"avcall eval latex --identity {args.identity}")
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
