"""``avcall train codec`` and ``avcall eval codec``: the latent stream codec's tables and its rate-distortion sweep.

Defaults come from the library: :class:`encoder.codec_fit.CodecFitConfig` (fit), :class:`encoder.codec_eval.CodecEvalConfig`
(held-out sweep); torch is imported only inside the eval handler (the VAE renders the ground truth).
"""
from __future__ import annotations

import argparse
import json
import textwrap

from encoder.codec_fit import CodecFitConfig

from .args import command_line

TRAIN_EPILOG = """\
examples:
  avcall train codec --identity S1
  avcall train codec --model-dir runs/encoder/S1/EEM --budget-pct 1.0 --json

Writes DIR/codec.json (settings, codec id, fitting record) and DIR/codec.npz (step sizes, alphabets,
frequency tables). Senders then send coded frames by default; receivers find the tables next to the
installed encoders of their model (or --codec DIR).
"""

EVAL_EPILOG = """\
examples:
  avcall eval codec --identity S1 --json
  avcall eval codec --identity S1 --budgets 0.5,1,2 --seconds 10 --out runs/codec_eval
"""


def _wrap(text: str) -> str:
    return textwrap.fill(text, 88)


def _fit_args(p: argparse.ArgumentParser) -> None:
    f = CodecFitConfig()
    p.add_argument("--identity", default=f.identity, help="studio identity (default: %(default)s)")
    p.add_argument("--model-dir", default=None, metavar="DIR",
                   help="encoder model directory (default: the identity's embedded default, encoder/models/defaults.json)")
    p.add_argument("--avatar", default=None, metavar="DIR",
                   help="decoder whose sensitivity sets the steps (default: the embedded decoder/models/IDENTITY)")
    p.add_argument("--sessions", default=",".join(map(str, f.sessions)),
                   help="training headset sessions (default: %(default)s)")
    p.add_argument("--seconds", type=float, default=f.seconds, help="performance length per session (default: %(default)s)")
    p.add_argument("--predictor", default=f.predictor, choices=("auto", "previous", "extrapolate"),
                   help="temporal predictor (default: %(default)s = the smaller training entropy)")
    p.add_argument("--cache-dir", default="runs/codec", metavar="DIR",
                   help="where training codes and the decoder sensitivity are cached (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print a JSON summary (no progress bars)")


def add_train(sub) -> None:
    f = CodecFitConfig()
    p = sub.add_parser(
        "codec", help="fit the latent stream codec (step sizes, probability tables) of an encoder",
        description=_wrap("Run the encoder on the identity's training sessions, measure how much each code dimension "
                          "and gaze angle moves the rendered face (the receiver's ONNX decoder), and fit the "
                          "quantisation steps (one face-pixel MSE budget spread evenly), the intra and residual "
                          "alphabets and their frequency tables. Writes DIR/codec.json and DIR/codec.npz."),
        epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _fit_args(p)
    p.add_argument("--budget-pct", type=float, default=f.budget_pct,
                   help="face-pixel MSE the quantisation may add, %% of the encoder's own (default: %(default)s, "
                        "the operating point of docs/results/codec.md)")
    p.set_defaults(func=_train)


def add_eval(sub) -> None:
    from encoder.codec_eval import CodecEvalConfig

    e = CodecEvalConfig()
    p = sub.add_parser(
        "codec", help="latent stream coding: kbit/s vs rendered face MSE on held-out sessions",
        description=_wrap("Code the held-out sequences with the real sender and receiver coders (float16 frames, "
                          "quantised, + prediction, + range coding or zstd, + LATEX-skip) at several quantisation "
                          "budgets; count the bytes of every message and render the decoded avatars. Writes "
                          "OUT/codec.json, codec.md and codec.png."),
        epilog=EVAL_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _fit_args(p)
    p.add_argument("--budgets", default=",".join(f"{b:g}" for b in e.budgets_pct),
                   help="quantisation budgets, %% of the float16 face MSE (default: %(default)s)")
    p.add_argument("--held-out-seconds", type=float, default=e.held_out.seconds,
                   help="length of each held-out sequence (default: %(default)s)")
    p.add_argument("--mse-stride", type=int, default=e.mse_stride, help="render every k-th frame (default: %(default)s)")
    p.add_argument("--out", default="docs/results/", metavar="OUT", help="where the results go (default: %(default)s)")
    p.set_defaults(func=_eval)


def _model_dir(args):
    from pathlib import Path

    from encoder.runtime import default_model_dir

    return Path(args.model_dir) if args.model_dir else default_model_dir(args.identity)


def _fit_cfg(args, **kw) -> CodecFitConfig:
    from avcore.errors import UsageError

    try:
        sessions = tuple(int(s) for s in args.sessions.split(","))
    except ValueError:
        raise UsageError(f"--sessions must be comma-separated integers, got {args.sessions!r}") from None
    if args.seconds <= 0:
        raise UsageError(f"--seconds must be > 0, got {args.seconds}")
    return CodecFitConfig(identity=args.identity, sessions=sessions, seconds=args.seconds, predictor=args.predictor, **kw)


def _command(name: str, args) -> str:
    return command_line("codec", f"avcall {name} codec --identity {args.identity}")


def _train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from avcore.errors import UsageError
    from encoder.codec_fit import fit_codec

    d = _model_dir(args)
    if not (d / "arch.json").exists():
        raise UsageError(f"no encoder in {d}; train one with 'avcall train encoder' or give --model-dir")
    if not args.budget_pct > 0:
        raise UsageError(f"--budget-pct must be > 0, got {args.budget_pct}")
    t = fit_codec(d, _fit_cfg(args, budget_pct=args.budget_pct), avatar_dir=args.avatar, progress=not args.json,
                  cache_dir=Path(args.cache_dir), command=_command("train", args))
    summary = {"model_dir": str(d), "codec_id": t.codec_id, "predictor": t.predictor, **t.meta}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"codec {t.codec_id} for {d}: {summary['active_elements_intra']} of {t.size} elements coded, predictor "
              f"{t.predictor}; ideal bits per frame: intra {summary['ideal_bits_intra']:.0f}, predicted "
              f"{summary['ideal_bits_predicted']:.0f} (training frames)")
        print(f"wrote {d / 'codec.json'} and {d / 'codec.npz'}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from avcore.errors import UsageError
    from decoder.export import load_vae
    from encoder.codec_eval import CodecEvalConfig, evaluate_codec, render_markdown, write_results
    from encoder.latex_eval import LatexEvalConfig

    torch.set_num_threads(1)
    try:
        budgets = tuple(float(b) for b in args.budgets.split(","))
    except ValueError:
        raise UsageError(f"--budgets must be comma-separated numbers, got {args.budgets!r}") from None
    cfg = CodecEvalConfig(held_out=LatexEvalConfig(identity=args.identity, seconds=args.held_out_seconds),
                          budgets_pct=budgets, mse_stride=args.mse_stride)
    cache = Path("runs") / "encoder" / f"latex_seq_{args.identity}.npz"
    r = evaluate_codec(_model_dir(args), load_vae(args.identity), cfg, fit=_fit_cfg(args), command=_command("eval", args),
                       progress=not args.json, cache=cache, cache_dir=Path(args.cache_dir))
    paths = write_results(r, args.out)
    if args.json:
        print(json.dumps(r))
    else:
        print(render_markdown(r))
        print("wrote " + ", ".join(map(str, paths)))
    return 0
