"""``avcall distill decoder``: a student decoder trained against a teacher (knowledge distillation)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .args import HelpFormatter, non_negative_float, non_negative_int, positive_float, positive_int

EPILOG = """\
examples:
  avcall distill decoder --teacher runs/decoder/S1-teacher --preset student-xs --identity S1 --out runs/distill/xs
  avcall distill decoder --teacher runs/decoder/S1-teacher --preset student-xs --no-kl --out runs/distill/xs-nokl
  avcall distill decoder --teacher runs/decoder/S1-teacher --preset student-xs --out runs/distill/xs   # resumes

The student trains in the teacher's latent space (the teacher directory's frozen encoder), on the studio's
data with the decoder's usual losses plus L_kl and the feature-consistency loss (docs/decoder.md). Without
both (--no-kl --no-feature) it is the same student trained from scratch, the ablation's baseline.
"""


def register(sub) -> None:
    p = sub.add_parser("distill", help="knowledge distillation of the receiver's models",
                       description="Train a smaller model against a larger teacher.")
    ds = p.add_subparsers(dest="distill_command", metavar="WHAT")
    ds.required = True
    d = ds.add_parser("decoder", help="distil a student decoder (a preset) from a teacher decoder",
                      description="A student decoder preset trained against a teacher decoder: the usual L1 losses "
                                  "on geometry, texture and rendered image, plus the distribution-consistency "
                                  "loss L_kl and the feature-consistency loss. Checkpoints and resumes; writes a "
                                  "model directory the receiver loads.",
                      epilog=EPILOG, formatter_class=HelpFormatter)
    d.add_argument("--teacher", required=True, metavar="DIR", help="the teacher's decoder model directory")
    d.add_argument("--preset", required=True, metavar="NAME", help="the student's size (decoder/presets.py)")
    d.add_argument("--identity", default="S1", help="studio identity")
    d.add_argument("--out", type=Path, required=True, metavar="DIR", help="run directory (checkpoints, model)")
    d.add_argument("--minutes", type=positive_float, default=20.0, help="wall-clock budget")
    d.add_argument("--steps", type=positive_int, default=100000, help="step limit")
    d.add_argument("--kl-weight", type=non_negative_float, default=1.0, help="weight of L_kl")
    d.add_argument("--feature-weight", type=non_negative_float, default=1.0, help="weight of the feature loss")
    d.add_argument("--no-kl", action="store_true", help="no L_kl (ablation)")
    d.add_argument("--no-feature", action="store_true", help="no feature loss (ablation)")
    d.add_argument("--seed", type=non_negative_int, default=None,
                   help="initialisation and batch-order seed (the training poses stay the same); default: the data's")
    d.add_argument("--cache", default="", metavar="FILE.npz",
                   help="studio data cache shared between runs (default: DIR/dataset.npz)")
    d.add_argument("--threads", type=positive_int, default=2, help="torch threads")
    d.add_argument("--fresh", action="store_true", help="ignore a checkpoint in --out")
    d.set_defaults(func=_distill)


def add_eval(sub) -> None:
    p = sub.add_parser(
        "distill", help="teacher, today's decoder and students side by side: size, decode time, face-pixel quality",
        description="Parameters, MFLOPs, decode time (one thread, one run) and face-pixel PSNR/SSIM on held-out "
                    "poses (front, left, right) of every decoder given; each role takes one directory per "
                    "training seed (comma-separated: mean and std). Writes distill.{md,json} and a side-by-side "
                    "picture with error maps with --out-dir.",
        epilog="example:\n  avcall eval distill --teacher runs/decoder/S1-teacher --student runs/distill/xs-s0,"
               "runs/distill/xs-s1 \\\n      --student-scratch runs/distill/xs-scratch-s0,runs/distill/xs-scratch-s1 "
               "--out-dir docs/results\n", formatter_class=HelpFormatter)
    p.add_argument("--identity", default="S1", help="studio identity (default: %(default)s)")
    p.add_argument("--current", default=None, metavar="DIR",
                   help="today's decoder (default: the embedded decoder/models/IDENTITY)")
    for role in ("teacher", "student", "student-scratch", "student-no-kl", "student-no-feature"):
        p.add_argument(f"--{role}", default="", metavar="DIR[,DIR]", help=f"the {role.replace('-', ' ')} decoder(s), "
                       "one per seed")
    p.add_argument("--poses", type=positive_int, default=24, help="held-out poses (default: %(default)s)")
    p.add_argument("--out-dir", default="", metavar="DIR", help="write distill.{md,json} and "
                   "distill_side_by_side.png here (default: print only)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_eval_distill)


def _eval_distill(args: argparse.Namespace) -> int:
    import json

    from avcall.args import command_line
    from capture.identity import check_identity
    from decoder.compare import compare_decoders, render_markdown, write_results
    from decoder.runtime import default_model_dir
    from encoder.bench import machine_description

    check_identity(args.identity)
    rows = []
    for role in ("teacher", "current", "student", "student-scratch", "student-no-kl", "student-no-feature"):
        value = getattr(args, role.replace("-", "_"))
        if role == "current":
            value = value or str(default_model_dir(args.identity))
        dirs = [Path(d) for d in value.split(",") if d.strip()]
        if dirs:
            rows.append((role, dirs))
    picture = Path(args.out_dir) / "distill_side_by_side.png" if args.out_dir else None
    table = compare_decoders(rows, identity=args.identity, num_test=args.poses, sheet=picture)
    table |= {"machine": machine_description(), "command": command_line("distill", "avcall eval distill")}
    if args.out_dir:
        write_results(table, Path(args.out_dir))
    print(json.dumps(table) if args.json else render_markdown(table), file=sys.stdout)
    return 0


def distill_config(args):
    """(DecoderConfig, TrainConfig) the ``distill decoder`` arguments describe."""
    from avcore.errors import UsageError
    from decoder.config import TrainConfig
    from decoder.presets import preset_config

    try:
        dcfg = preset_config(args.preset, identity=args.identity)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    tcfg = TrainConfig(teacher=str(args.teacher), distill_kl_weight=0.0 if args.no_kl else args.kl_weight,
                       distill_feature_weight=0.0 if args.no_feature else args.feature_weight,
                       time_budget_s=args.minutes * 60, steps=args.steps, threads=args.threads, cache=args.cache,
                       init_seed=-1 if args.seed is None else args.seed)
    return dcfg, tcfg


def _distill(args: argparse.Namespace) -> int:
    from decoder.train import train_decoder

    dcfg, tcfg = distill_config(args)
    r = train_decoder(args.out, dcfg, tcfg, resume=not args.fresh)
    print(f"distilled {args.preset} from {args.teacher}: {r.steps} steps in {r.elapsed_s / 60:.1f} min; "
          f"model in {r.model_dir}", file=sys.stderr)
    return 0
