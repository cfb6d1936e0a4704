"""``avcall distill decoder|renderer``: a student decoder or neural renderer G trained against a teacher (knowledge
distillation), and ``avcall eval distill`` / ``eval distill-renderer``, which compare them."""
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
    _register_renderer(ds)


RENDERER_EPILOG = """\
examples:
  avcall distill renderer --teacher runs/renderer/S1 --widths 8,16,24,32 --out runs/distill/g-plain
  avcall distill renderer --teacher runs/renderer/S1 --widths 8,16,24,32 --modulated --out runs/distill/g-mod
  avcall distill renderer --teacher runs/renderer/S1 --widths 8,16,24,32 --no-kl --no-feature --out runs/distill/g-plain-scratch
  avcall eval distill-renderer --teacher runs/renderer/S1 --row plain=runs/distill/g-plain --row modulated=runs/distill/g-mod

The student G trains on the teacher's clips (its run directory's train_data.npz) with G's usual L1 + SSIM, plus
L_kl between the teacher's and its output logits (per colour channel, a softmax over the pixels) and 1 - cosine
between their cache maps (docs/decoder.md). --modulated makes it the enhanced renderer: convolutions modulated by
the code through a mapping MLP. W trains with it, so DIR is a complete renderer ('avcall train renderer --install'
layout: renderer.onnx, warp.onnx, neural_texture.npy, renderer.json).
"""


def _register_renderer(ds) -> None:
    from renderer.config import NeuralRendererConfig
    from renderer.train import RendererTrainConfig

    from .renderer_cmds import add_warp_args, channel_counts

    g, t = NeuralRendererConfig(), RendererTrainConfig()
    r = ds.add_parser("renderer", help="distil a smaller neural renderer G (plain or modulated) from a trained G",
                      description="A student G (U-Net widths of your choice, plain or modulated by the code) trained "
                                  "against a trained teacher G on the teacher's clips: G's L1 + SSIM plus L_kl and the "
                                  "feature-consistency loss; W trains with it. Checkpoints and resumes; writes a "
                                  "renderer directory.",
                      epilog=RENDERER_EPILOG, formatter_class=HelpFormatter)
    r.add_argument("--teacher", required=True, metavar="DIR",
                   help="the teacher G's run directory ('avcall train renderer --out DIR': checkpoint.pt, clips)")
    r.add_argument("--out", type=Path, required=True, metavar="DIR", help="run directory (checkpoints, model)")
    r.add_argument("--widths", type=channel_counts(3, 8, "8,16,24,32"), default=",".join(map(str, g.widths)), metavar="W0,W1,...",
                   help="the student's U-Net channels per level, full resolution first (default: %(default)s)")
    r.add_argument("--modulated", action="store_true",
                   help="the enhanced renderer: convolutions modulated/demodulated by the code via a mapping MLP")
    r.add_argument("--mapping-dim", type=positive_int, default=g.mapping_dim,
                   help="--modulated: mapping MLP width (default: %(default)s)")
    r.add_argument("--steps", type=positive_int, default=1500, help="(default: %(default)s)")
    r.add_argument("--minutes", type=positive_float, default=60.0, help="wall-clock budget (default: %(default)g)")
    r.add_argument("--batch-size", type=positive_int, default=t.batch_size, help="(default: %(default)s)")
    r.add_argument("--kl-weight", type=non_negative_float, default=t.distill_kl_weight,
                   help="weight of L_kl (default: %(default)s)")
    r.add_argument("--feature-weight", type=non_negative_float, default=t.distill_feature_weight,
                   help="weight of the feature loss (default: %(default)s)")
    r.add_argument("--no-kl", action="store_true", help="no L_kl (ablation)")
    r.add_argument("--no-feature", action="store_true",
                   help="no feature loss (ablation; with --no-kl: the same student trained from scratch)")
    r.add_argument("--code-every", type=positive_int, default=t.code_every, metavar="TICKS",
                   help="codes arrive every TICKS display frames, as for 'train renderer' (default: %(default)s)")
    add_warp_args(r)
    r.add_argument("--seed", type=non_negative_int, default=t.seed, help="(default: %(default)s)")
    r.add_argument("--threads", type=positive_int, default=t.threads, help="torch threads (default: %(default)s)")
    r.add_argument("--fresh", action="store_true", help="ignore a checkpoint in --out")
    r.set_defaults(func=_distill_renderer)


def _distill_renderer(args: argparse.Namespace) -> int:
    from renderer.config import NeuralRendererConfig
    from renderer.train import RendererTrainConfig, train_renderer

    from .renderer_cmds import teacher_clips, warp_config

    teacher = Path(args.teacher)
    tmeta, dcfg, train, test = teacher_clips(teacher)
    distil = not (args.no_kl and args.no_feature)
    tcfg = RendererTrainConfig(steps=args.steps, batch_size=args.batch_size, time_budget_s=args.minutes * 60,
                               threads=args.threads, seed=args.seed, code_every=args.code_every,
                               teacher=str(teacher) if distil else "",
                               distill_kl_weight=0.0 if args.no_kl else args.kl_weight,
                               distill_feature_weight=0.0 if args.no_feature else args.feature_weight)
    base = NeuralRendererConfig.from_dict(tmeta["renderer"])
    gcfg = NeuralRendererConfig(channels=base.channels, texture_levels=base.texture_levels, widths=args.widths,
                                modulated=args.modulated, mapping_dim=args.mapping_dim,
                                latent_dim=int(train["z"].shape[-1]))
    meta = train_renderer(args.out, train, test, gcfg, tcfg, wcfg=warp_config(args), resume=not args.fresh,
                          info={"data": dcfg.to_dict(), "ablation": None, "test_clips": len(test["raster"]),
                                "clips_from": str(teacher)})
    h = meta["heldout"]
    print(f"distilled G {'modulated' if args.modulated else 'plain'} {','.join(map(str, args.widths))} from {teacher}: "
          f"{meta['train']['steps_done']} steps; held-out face PSNR {h['G']['psnr_face']:.2f} dB; model in {args.out}",
          file=sys.stderr)
    return 0


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
    p.add_argument("--teacher", default="", metavar="DIR", help="the teacher decoder")
    for role in ("student", "student-scratch", "student-no-kl", "student-no-feature"):
        p.add_argument(f"--{role}", action="append", default=[], metavar="DIR[,DIR]",
                       help=f"a {role.replace('-', ' ')} decoder, one directory per seed (repeat for another size)")
    p.add_argument("--poses", type=positive_int, default=24, help="held-out poses (default: %(default)s)")
    p.add_argument("--out-dir", default="", metavar="DIR", help="write distill.{md,json} and "
                   "distill_side_by_side.png here (default: print only)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_eval_distill)

    r = sub.add_parser(
        "distill-renderer", help="neural renderers G side by side: plain vs modulated students, distilled or not",
        description="Network parameters, MFLOPs, G's time (onnxruntime, one thread, one run) and face-pixel "
                    "PSNR/SSIM on the teacher's held-out clips of the teacher G and every student given; each row "
                    "takes one run directory per training seed (comma-separated: mean and std). Writes "
                    "distill_renderer.{md,json} and a side-by-side picture with error maps with --out-dir.",
        epilog="example:\n  avcall eval distill-renderer --teacher runs/renderer/S1 --row plain=runs/distill/g-plain "
               "\\\n      --row modulated=runs/distill/g-mod --row plain-scratch=runs/distill/g-plain-scratch "
               "--out-dir docs/results\n", formatter_class=HelpFormatter)
    r.add_argument("--teacher", required=True, metavar="DIR", help="the teacher G's run directory (its held-out "
                   "clips are every row's test frames)")
    r.add_argument("--row", action="append", default=[], type=_row, metavar="NAME=DIR[,DIR]",
                   help="a student row: its name and run directories, one per seed (repeat for more rows)")
    r.add_argument("--out-dir", default="", metavar="DIR", help="write distill_renderer.{md,json} and "
                   "distill_renderer.png here (default: print only)")
    r.add_argument("--json", action="store_true", help="print one JSON object")
    r.set_defaults(func=_eval_distill_renderer)


def _row(text: str) -> tuple[str, list[Path]]:
    """argparse type: ``NAME=DIR[,DIR]``."""
    name, sep, dirs = text.partition("=")
    paths = [Path(d) for d in dirs.split(",") if d.strip()]
    if not sep or not name.strip() or not paths:
        raise argparse.ArgumentTypeError(f"expected NAME=DIR[,DIR], got {text!r}")
    return name.strip(), paths


def _eval_distill_renderer(args: argparse.Namespace) -> int:
    import json

    from avcall.args import command_line
    from encoder.bench import machine_description
    from renderer.compare import check_runs, compare_renderers, render_markdown, write_results

    from .renderer_cmds import teacher_clips

    teacher = Path(args.teacher)
    check_runs(args.row)  # before the teacher's clips are loaded
    *_, test = teacher_clips(teacher, train=False)
    picture = Path(args.out_dir) / "distill_renderer.png" if args.out_dir else None
    table = compare_renderers([("teacher", [teacher])] + args.row, test, sheet=picture)
    table["test"]["from"] = str(teacher)
    table |= {"machine": machine_description(), "command": command_line("distill-renderer", "avcall eval distill-renderer")}
    if args.out_dir:
        write_results(table, Path(args.out_dir))
    print(json.dumps(table) if args.json else render_markdown(table), file=sys.stdout)
    return 0


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
        for text in [value] if isinstance(value, str) else value:
            dirs = [Path(d) for d in text.split(",") if d.strip()]
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
