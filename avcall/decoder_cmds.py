"""``avcall train decoder``, ``avcall eval decoder`` and ``avcall bench decoder``.

Each ``add_*`` takes the second-level subparsers object of ``avcall train`` /
``eval`` / ``bench`` and adds a ``decoder`` subcommand. Handlers import torch,
moderngl and onnxruntime lazily and call one library function each.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .args import HelpFormatter, command_line, positive_int

TRAIN_EPILOG = """\
examples:
  avcall train decoder --identity S1 --out runs/decoder_S1
  avcall train decoder --identity S2 --out runs/decoder_S2 --minutes 30
  avcall train decoder --identity S1 --out runs/decoder_S1      # again: resumes from checkpoint.pt

Writes DIR/dataset.npz (cached studio renders), DIR/checkpoint.pt every few minutes
(resumable), and at the end a model directory in DIR: config.json, weights.pt,
encoder.pt, decoder.onnx (checked against torch) and assets.npz.
"""

EVAL_EPILOG = """\
examples:
  avcall eval decoder --identity S1 --json
  avcall eval decoder --model runs/decoder_S1 --out docs/results/decoder_S1.json --sheet docs/results/decoder_S1.png

Progress goes to stderr; the table or JSON to stdout. Metrics that cannot be finite (PSNR of identical
images) are null in the JSON.
"""

BENCH_EPILOG = """\
examples:
  avcall bench decoder --json
  avcall bench decoder --model runs/decoder_S1 --iters 200
"""


def _model_dir(args) -> Path:
    if args.model is not None:
        return args.model
    from decoder.runtime import default_model_dir

    return default_model_dir(args.identity)


def add_train(sub) -> None:
    p = sub.add_parser("decoder", help="train the codec-avatar VAE decoder for one identity",
                       description="Train the per-identity VAE (geometry + view-dependent texture decoder) on\n"
                                   "the synthetic studio's dome data; resumes from DIR/checkpoint.pt.",
                       epilog=TRAIN_EPILOG, formatter_class=HelpFormatter)
    p.add_argument("--identity", default="S1", help="studio identity")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="run directory (checkpoints, model)")
    p.add_argument("--minutes", type=float, default=None, help="wall-clock training budget (default 20)")
    p.add_argument("--steps", type=int, default=None, help="maximum optimisation steps (default 100000; the time budget usually ends the run first)")
    p.add_argument("--poses", type=int, default=None, help="training poses to render (default 1000)")
    p.add_argument("--latent-dim", type=int, default=256, help="size of z")
    p.add_argument("--latent-from", default="", metavar="DIR",
                   help="train only the decoder, on the codes of this decoder model's frozen encoder (its latent "
                        "space: a teacher or student that today's HMC encoders drive), e.g. decoder/models/S1")
    p.add_argument("--preset", default="current", metavar="NAME",
                   help="decoder size: teacher, current, student-s, student-xs (decoder/presets.py)")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    p.set_defaults(func=run_train)


def add_eval(sub) -> None:
    p = sub.add_parser("decoder", help="held-out reconstruction PSNR/MSE (front/left/right) and latent linearity",
                       description="Decode held-out studio frames (their VAE-mean codes) with onnxruntime, render\n"
                                   "them and compare with the studio's ground-truth renders.",
                       epilog=EVAL_EPILOG, formatter_class=HelpFormatter)
    p.add_argument("--identity", default="S1", help="identity (default S1; picks the embedded model)")
    p.add_argument("--model", type=Path, default=None, metavar="DIR", help="model directory (default: embedded)")
    p.add_argument("--frames", type=positive_int, default=48, help="held-out frames, >= 1 (default 48)")
    p.add_argument("--linearity-frames", type=int, default=48,
                   help="frames of the smooth held-out performance for the linearity check (windows of 8; 0 skips it; "
                        "default 48)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--out", type=Path, default=None, metavar="FILE.json", help="also write the JSON here")
    p.add_argument("--sheet", type=Path, default=None, metavar="FILE.png", help="write a GT-vs-decoded side-by-side PNG")
    p.set_defaults(func=run_eval)


def add_bench(sub) -> None:
    p = sub.add_parser("decoder", help="decode (onnxruntime) and render (512², read back) latency",
                       description="Time one decode with onnxruntime and one 512x512 rasterisation with read-back.",
                       epilog=BENCH_EPILOG, formatter_class=HelpFormatter)
    p.add_argument("--identity", default="S1", help="identity (default S1; picks the embedded model)")
    p.add_argument("--model", type=Path, default=None, metavar="DIR", help="model directory (default: embedded)")
    p.add_argument("--iters", type=int, default=100, help="timed iterations (default 100, after 10 warm-up)")
    p.add_argument("--size", type=int, default=512, help="image size (default 512)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--out", type=Path, default=None, metavar="FILE.json", help="also write the JSON here")
    p.set_defaults(func=run_bench)


def _emit(res: dict, args) -> None:
    from runtime.telemetry import json_safe

    text = json.dumps(json_safe(res), indent=2, allow_nan=False)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    if args.json:
        print(text)
    else:
        w = max(len(k) for k in res)
        for k, v in res.items():
            print(f"{k:<{w}}  {v:.4g}" if isinstance(v, float) else f"{k:<{w}}  {v}")


def decoder_config(args):
    """The :class:`decoder.config.DecoderConfig` the ``train decoder`` arguments describe (its ``--preset``)."""
    from avcore.errors import UsageError
    from decoder.presets import preset_config

    try:
        return preset_config(args.preset, identity=args.identity, latent_dim=args.latent_dim)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def run_train(args) -> int:
    from decoder.config import TrainConfig
    from decoder.train import train_decoder

    d = decoder_config(args)
    t = TrainConfig(threads=args.threads, latent_from=args.latent_from)
    if args.minutes is not None:
        t.time_budget_s = args.minutes * 60
    if args.steps is not None:
        t.steps = args.steps
    if args.poses is not None:
        t.num_train_poses = args.poses
    r = train_decoder(args.out, d, t, resume=not args.no_resume)
    print(f"trained {args.identity}: {r.steps} steps in {r.elapsed_s / 60:.1f} min; model in {r.model_dir}", file=sys.stderr)
    return 0


def run_eval(args) -> int:
    from decoder.evaluate import evaluate_decoder

    from encoder.bench import machine_description

    res = evaluate_decoder(_model_dir(args), identity=args.identity, num_test=args.frames,
                           linearity_frames=args.linearity_frames, sheet=args.sheet)
    res |= {"machine": machine_description(), "command": command_line("decoder", "avcall eval decoder")}
    _emit(res, args)
    return 0


def run_bench(args) -> int:
    from decoder.evaluate import bench_decoder

    from encoder.bench import machine_description

    res = bench_decoder(_model_dir(args), iters=args.iters, size=args.size)
    res |= {"machine": machine_description(), "command": command_line("decoder", "avcall bench decoder")}
    _emit(res, args)
    return 0
