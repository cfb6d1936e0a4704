"""``avcall train renderer``: the neural renderer G of an identity (torch inside the handler only)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .args import HelpFormatter, command_line, non_negative_int, positive_float, positive_int

TRAIN_EPILOG = """\
examples:
  avcall train renderer --identity S1 --minutes 60 --out runs/renderer/S1 --install
  avcall train renderer --identity S1 --out runs/renderer/S1            # again: resumes
  avcall train renderer --identity S1 --warp-only --from runs/renderer/S1 --ablation no-duv --out runs/renderer/S1-no-duv
  # the embedded W, alone on the frozen G of runs/renderer/S1:
  avcall train renderer --identity S1 --warp-only --from runs/renderer/S1 --image-flow --w2-kernel 1 --out runs/renderer/S1k1c-full --steps 1500 --install
  avcall train renderer --identity S1 --clips 40 --size 64 --minutes 2 --out /tmp/g

G learns to turn the receiver's rasterized buffers of the decoded avatar (raster colour, UV, view) into the
studio's render; W learns to render the next display frames from G's cache (end to end). At the end both are
compared on held-out clips (G against the raster alone, W against reusing G's frame; face-pixel PSNR/SSIM) and
exported to DIR/renderer.onnx and DIR/warp.onnx; --install copies them into the avatar directory the receiver loads.
"""


def add_train(sub) -> None:
    from renderer.data import RendererDataConfig
    from renderer.train import RendererTrainConfig
    from renderer.config import ABLATIONS

    d, t = RendererDataConfig(), RendererTrainConfig()
    p = sub.add_parser("renderer", help="train the neural renderer G (deferred neural rendering) of an identity",
                       description="Render training buffers from the identity's decoder and the studio's truth (cached "
                                   "in DIR), train G with L1 + SSIM, compare it with the raster on held-out poses and "
                                   "export it to ONNX. Checkpoints and resumes.",
                       epilog=TRAIN_EPILOG, formatter_class=HelpFormatter)
    p.add_argument("--identity", default=d.identity, help="studio identity (default: %(default)s)")
    p.add_argument("--decoder-dir", default=None, help="the decoder whose avatar G refines (default: the embedded one)")
    p.add_argument("--out", required=True, metavar="DIR", help="run directory")
    p.add_argument("--clips", type=positive_int, default=d.clips,
                   help="training clips: a frame and the display frames after it (default: %(default)s)")
    p.add_argument("--test-clips", type=positive_int, default=TEST_CLIPS, help="held-out clips (default: %(default)s)")
    p.add_argument("--max-view-speed", type=positive_float, default=d.max_view_speed_dps, metavar="DEG_PER_S",
                   help="fastest viewer head turn in the clips (default: %(default)s)")
    p.add_argument("--size", type=positive_int, default=d.size, help="G's working resolution (default: %(default)s)")
    p.add_argument("--steps", type=positive_int, default=t.steps, help="(default: %(default)s)")
    p.add_argument("--minutes", type=positive_float, default=t.time_budget_s / 60,
                   help="wall-clock budget, counting resumed runs (default: %(default)g)")
    p.add_argument("--batch-size", type=positive_int, default=t.batch_size, help="(default: %(default)s)")
    p.add_argument("--threads", type=positive_int, default=t.threads, help="torch threads (default: %(default)s)")
    p.add_argument("--seed", type=non_negative_int, default=t.seed, help="(default: %(default)s)")
    p.add_argument("--code-every", type=positive_int, default=t.code_every, metavar="TICKS",
                   help="codes arrive every TICKS display frames (30 fps codes, 60 Hz display): W learns with the "
                        "code and gaze the receiver has by each frame (default: %(default)s)")
    p.add_argument("--warp-only", action="store_true", help="train W alone on the frozen G of --from")
    p.add_argument("--from", dest="from_dir", default=None, metavar="DIR", help="--warp-only: the trained G's run directory")
    p.add_argument("--ablation", choices=sorted(ABLATIONS) + ["explicit"], default=None,
                   help="W without one input (the paper's Table 3), or the explicit-warp baseline")
    add_warp_args(p)
    p.add_argument("--install", action="store_true",
                   help="copy renderer.onnx, warp.onnx and renderer.json into the avatar directory (--decoder-dir or "
                        "the identity's embedded one)")
    p.add_argument("--fresh", action="store_true", help="ignore a checkpoint in --out")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_train)


def add_warp_args(p) -> None:
    """W's shape options (``train renderer`` and ``distill renderer``); :func:`warp_config` reads them."""
    from renderer.config import WarpConfig

    p.add_argument("--feature-flow", action="store_true",
                   help="W also predicts a flow field and moves G's cached S/2 and S feature maps along it before its "
                        "convolutions")
    p.add_argument("--image-flow", action="store_true",
                   help="W also predicts a flow field, moves G's cached image along it and adds its own correction")
    p.add_argument("--warp-widths", type=channel_counts(2), default=",".join(map(str, WarpConfig().widths)),
                   metavar="S4,S2", help="W's channels after its S/4 and S/2 convolutions (default: %(default)s)")
    p.add_argument("--w2-kernel", type=int, choices=(1, 3), default=WarpConfig().w2_kernel,
                   help="kernel of W's last convolution, at S (default: %(default)s)")


def warp_config(args: argparse.Namespace, **switches):
    """The :class:`renderer.config.WarpConfig` of :func:`add_warp_args`' options (plus ablation ``switches``)."""
    from renderer.config import WarpConfig

    return WarpConfig(**switches, feature_flow=args.feature_flow, image_flow=args.image_flow,
                      widths=args.warp_widths, w2_kernel=args.w2_kernel)


def renderer_data(dcfg, avatar: Path, data_dir: Path, test_clips: int) -> tuple[dict, dict]:
    """(train, test) clips of ``dcfg`` (:class:`renderer.data.RendererDataConfig`) from the decoder in ``avatar``,
    cached in ``data_dir`` (``train_data.npz``, ``test_data.npz``): the held-out clips have their own seed."""
    from renderer.data import build_renderer_data

    train = build_renderer_data(dcfg, decoder_dir=avatar, cache=data_dir / "train_data.npz")
    return train, renderer_test_data(dcfg, avatar, data_dir, test_clips)


def renderer_test_data(dcfg, avatar: Path, data_dir: Path, test_clips: int) -> dict:
    """The held-out half of :func:`renderer_data`."""
    from dataclasses import replace

    from renderer.data import build_renderer_data

    return build_renderer_data(replace(dcfg, clips=test_clips, seed=TEST_SEED), decoder_dir=avatar,
                               cache=data_dir / "test_data.npz")


def trained_g_run(run_dir: str | Path, option: str = "--teacher") -> dict:
    """What a trained G's run directory says about itself (``renderer.json``), after checking it holds a G of its
    own; one line naming ``option`` if not."""
    from avcore.errors import UsageError

    d = Path(run_dir)
    if not (d / "checkpoint.pt").is_file() or not (d / "renderer.json").is_file():
        raise UsageError(f"{option} {d}: no trained renderer there (checkpoint.pt and renderer.json needed; "
                         "'avcall train renderer --out DIR' makes one)")
    meta = json.loads((d / "renderer.json").read_text())
    if meta.get("generator_from"):
        raise UsageError(f"{option} {d} is a W-only run; give the run that trained its G ({meta['generator_from']})")
    return meta


def teacher_clips(teacher: Path, *, train: bool = True) -> tuple:
    """(``renderer.json``, its data config, train clips or None, held-out clips) of a trained G's run directory
    (:func:`trained_g_run` checks it): the clips it was trained and compared on, from its caches."""
    from decoder.runtime import default_model_dir
    from renderer.data import RendererDataConfig

    meta = trained_g_run(teacher)
    dcfg = RendererDataConfig.from_dict(meta["train"]["data"])
    avatar, n_test = default_model_dir(dcfg.identity), int(meta["train"].get("test_clips", TEST_CLIPS))
    clips = (renderer_data(dcfg, avatar, teacher, n_test) if train
             else (None, renderer_test_data(dcfg, avatar, teacher, n_test)))
    return (meta, dcfg, *clips)


TEST_SEED = 1_000_003
"""Seed of the held-out renderer clips."""
TEST_CLIPS = 48
"""Held-out renderer clips unless told otherwise."""


def channel_counts(least: int, most: int | None = None, example: str = "32,16"):
    """argparse type: ``least`` to ``most`` (default: exactly ``least``) positive channel counts, comma-separated."""
    most = least if most is None else most

    def parse(text: str) -> tuple[int, ...]:
        try:
            w = tuple(int(x) for x in text.split(","))
        except ValueError:
            w = ()
        if not least <= len(w) <= most or min(w) < 1:
            n = f"{least}" if least == most else f"{least} to {most}"
            raise argparse.ArgumentTypeError(f"expected {n} channel counts like {example}, got {text!r}")
        return w

    return parse


def _train(args: argparse.Namespace) -> int:
    from avcore.errors import UsageError
    from capture.identity import check_identity
    from decoder.runtime import default_model_dir
    from renderer.data import RendererDataConfig
    from renderer.train import RendererTrainConfig, install_renderer, train_renderer
    from renderer.config import ABLATIONS

    check_identity(args.identity)
    if args.ablation == "explicit" and (args.feature_flow or args.image_flow):
        raise UsageError("--ablation explicit is its own warp: it does not combine with --feature-flow or --image-flow")
    if args.warp_only != bool(args.from_dir):
        raise UsageError("--warp-only and --from DIR go together (W is trained on the frozen G of DIR)")
    if args.from_dir and not (Path(args.from_dir) / "checkpoint.pt").is_file():
        raise UsageError(f"--from {args.from_dir}: no trained renderer there (checkpoint.pt missing)")
    avatar = Path(args.decoder_dir) if args.decoder_dir else default_model_dir(args.identity)
    if not (avatar / "config.json").is_file():
        raise UsageError(f"no decoder in {avatar} (config.json missing)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dcfg = RendererDataConfig(identity=args.identity, clips=args.clips, size=args.size,
                              max_view_speed_dps=args.max_view_speed)
    # ablations share the G run's data caches: same clips for every row
    train, test = renderer_data(dcfg, avatar, Path(args.from_dir) if args.from_dir else out, args.test_clips)
    tcfg = RendererTrainConfig(steps=args.steps, batch_size=args.batch_size, time_budget_s=args.minutes * 60,
                               threads=args.threads, seed=args.seed, code_every=args.code_every)
    switches = {"explicit": True} if args.ablation == "explicit" else ABLATIONS.get(args.ablation or "", {})
    wcfg = warp_config(args, **switches)
    meta = train_renderer(out, train, test, None, tcfg, wcfg=wcfg, frozen_g=args.from_dir, resume=not args.fresh,
                          info={"data": dcfg.to_dict(), "ablation": args.ablation, "test_clips": args.test_clips})  # W's switches: meta["warp"]
    installed = install_renderer(out, avatar) if args.install else []
    if args.json:
        print(json.dumps({**meta, "installed": [str(p) for p in installed]}))
    else:
        h = meta["heldout"]
        print(f"trained {'W' if args.warp_only else 'G + W'} for {args.identity}: {meta['train']['steps_done']} steps "
              f"-> {out / 'renderer.onnx'}, {out / 'warp.onnx'}")
        print(f"  held-out face PSNR: G {h['G']['psnr_face']:.2f} dB, raster {h['raster']['psnr_face']:.2f} dB; "
              f"face SSIM: G {h['G']['ssim_face']:.3f}, raster {h['raster']['ssim_face']:.3f}")
        for k in sorted(x for x in h if x.startswith("warp_")):
            n = k.replace("warp_", "naive_")
            print(f"  {k}: face PSNR {h[k]['psnr_face']:.2f} dB (reusing G's frame: {h[n]['psnr_face']:.2f} dB)")
        if installed:
            print(f"  installed into {avatar}")
    return 0


EVAL_EPILOG = """\
examples:
  avcall eval renderer --identity S1 --runs runs/renderer/S1k1c --json --out-dir docs/results
  avcall eval renderer --identity S1 --renderer runs/renderer/S1 --seconds 2 --sequences 1 --timed-seconds 3

Rows (docs/results/neural_caching.md): naive, raster, G, warp1x, warp2x, warp2x-parallel, explicit-warp; the
ablations come from the W-only runs RUNS-full, RUNS-no-duv, RUNS-no-code-pose, RUNS-no-mlp, RUNS-no-sh-modulation
and the explicit-warp baseline from RUNS-explicit ('avcall train renderer --warp-only --from G_RUN --ablation NAME
--out RUNS-NAME').
Latency and fps are measured on this machine: run it with nothing else busy.
"""


def add_eval(sub) -> None:
    from renderer.data import SequenceDataConfig

    d = SequenceDataConfig()
    p = sub.add_parser("renderer", help="neural caching: quality, latency and fps of G, W and the schedulers",
                       description="Held-out display-rate sequences (codes at 30 Hz, the viewer at 60 Hz): every way "
                                   "to fill the display frames, its quality against the studio (PSNR, SSIM, L1, face "
                                   "pixels and whole frame), its latency and its presented fps from a timed run of its "
                                   "scheduler; the online run at 60 Hz; the ablations of W.",
                       epilog=EVAL_EPILOG, formatter_class=HelpFormatter)
    p.add_argument("--identity", default=d.identity, help="(default: %(default)s)")
    p.add_argument("--avatar", default=None, metavar="DIR", help="avatar (decoder) directory (default: the embedded one)")
    p.add_argument("--renderer", default="", metavar="DIR",
                   help="G and W of the main rows (default: those installed in the avatar directory)")
    p.add_argument("--runs", default="", metavar="PREFIX",
                   help="prefix of the W-only runs for the explicit-warp row and the ablations (e.g. runs/renderer/S1)")
    p.add_argument("--seconds", type=positive_float, default=d.seconds, help="length of each sequence (default: %(default)s)")
    p.add_argument("--sequences", type=positive_int, default=d.sequences, help="(default: %(default)s)")
    p.add_argument("--timed-seconds", type=positive_float, default=6.0,
                   help="timed run of each row's scheduler (default: %(default)s)")
    p.add_argument("--online-seconds", type=positive_float, default=8.0,
                   help="online run at 60 Hz per mode (default: %(default)s)")
    p.add_argument("--out-dir", default=None, metavar="DIR",
                   help="write neural_caching.{json,md,png} there (e.g. docs/results)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_eval)


def _eval(args: argparse.Namespace) -> int:
    from avcore.errors import UsageError
    from capture.identity import check_identity
    from decoder.runtime import default_model_dir
    from renderer.data import SequenceDataConfig
    from renderer.evaluate import evaluate_renderer, render_markdown, write_results

    check_identity(args.identity)
    avatar = Path(args.avatar) if args.avatar else default_model_dir(args.identity)
    if not (avatar / "config.json").is_file():
        raise UsageError(f"no decoder in {avatar} (config.json missing)")
    seq_cfg = SequenceDataConfig(identity=args.identity, seconds=args.seconds, sequences=args.sequences)
    out = Path(args.out_dir) if args.out_dir else None
    cache = Path(args.runs + "-eval_sequences.npz") if args.runs else Path("runs/renderer") / f"eval_{args.identity}.npz"
    table = evaluate_renderer(args.identity, avatar, renderer_dir=args.renderer, runs=args.runs, seq_cfg=seq_cfg,
                              cache=cache, picture_path=(out / "neural_caching.png") if out else None,
                              timed_seconds=args.timed_seconds, online_seconds=args.online_seconds,
                              command=command_line("renderer", "avcall eval renderer"))
    if out is not None:
        write_results(table, out)
    print(json.dumps(table) if args.json else render_markdown(table))
    return 0
