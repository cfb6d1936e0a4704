"""``avcall train renderer``: the neural renderer G of an identity (torch inside the handler only)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .args import HelpFormatter, non_negative_int, positive_float, positive_int

TRAIN_EPILOG = """\
examples:
  avcall train renderer --identity S1 --minutes 60 --out runs/renderer/S1
  avcall train renderer --identity S1 --out runs/renderer/S1            # again: resumes
  avcall train renderer --identity S1 --poses 40 --size 64 --minutes 2 --out /tmp/g

G learns to turn the receiver's rasterized buffers of the decoded avatar (raster colour, UV, view) into the
studio's render. At the end it is compared with the raster alone on held-out poses (face-pixel PSNR/SSIM) and
exported to DIR/renderer.onnx.
"""


def add_train(sub) -> None:
    from renderer.data import RendererDataConfig
    from renderer.train import RendererTrainConfig

    d, t = RendererDataConfig(), RendererTrainConfig()
    p = sub.add_parser("renderer", help="train the neural renderer G (deferred neural rendering) of an identity",
                       description="Render training buffers from the identity's decoder and the studio's truth (cached "
                                   "in DIR), train G with L1 + SSIM, compare it with the raster on held-out poses and "
                                   "export it to ONNX. Checkpoints and resumes.",
                       epilog=TRAIN_EPILOG, formatter_class=HelpFormatter)
    p.add_argument("--identity", default=d.identity, help="studio identity (default: %(default)s)")
    p.add_argument("--decoder-dir", default=None, help="the decoder whose avatar G refines (default: the embedded one)")
    p.add_argument("--out", required=True, metavar="DIR", help="run directory")
    p.add_argument("--poses", type=positive_int, default=d.poses, help="training poses (default: %(default)s)")
    p.add_argument("--views-per-pose", type=positive_int, default=d.views_per_pose, help="(default: %(default)s)")
    p.add_argument("--test-poses", type=positive_int, default=24, help="held-out poses (default: %(default)s)")
    p.add_argument("--size", type=positive_int, default=d.size, help="G's working resolution (default: %(default)s)")
    p.add_argument("--steps", type=positive_int, default=t.steps, help="(default: %(default)s)")
    p.add_argument("--minutes", type=positive_float, default=t.time_budget_s / 60,
                   help="wall-clock budget, counting resumed runs (default: %(default)g)")
    p.add_argument("--batch-size", type=positive_int, default=t.batch_size, help="(default: %(default)s)")
    p.add_argument("--threads", type=positive_int, default=t.threads, help="torch threads (default: %(default)s)")
    p.add_argument("--seed", type=non_negative_int, default=t.seed, help="(default: %(default)s)")
    p.add_argument("--fresh", action="store_true", help="ignore a checkpoint in --out")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from capture.identity import check_identity
    from renderer.data import RendererDataConfig, build_renderer_data
    from renderer.train import RendererTrainConfig, train_renderer

    check_identity(args.identity)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dcfg = RendererDataConfig(identity=args.identity, poses=args.poses, views_per_pose=args.views_per_pose,
                              size=args.size)
    train = build_renderer_data(dcfg, decoder_dir=args.decoder_dir, cache=out / "train_data.npz")
    test = build_renderer_data(RendererDataConfig(identity=args.identity, poses=args.test_poses, views_per_pose=1,
                                                  size=args.size, seed=1_000_003),
                               decoder_dir=args.decoder_dir, cache=out / "test_data.npz")
    tcfg = RendererTrainConfig(steps=args.steps, batch_size=args.batch_size, time_budget_s=args.minutes * 60,
                               threads=args.threads, seed=args.seed)
    meta = train_renderer(out, train, test, None, tcfg, resume=not args.fresh, info={"data": dcfg.to_dict()})
    if args.json:
        print(json.dumps(meta))
    else:
        h = meta["heldout"]
        print(f"trained G for {args.identity}: {meta['train']['steps_done']} steps -> {out / 'renderer.onnx'}")
        print(f"  held-out face PSNR: G {h['G']['psnr_face']:.2f} dB, raster {h['raster']['psnr_face']:.2f} dB; "
              f"face SSIM: G {h['G']['ssim_face']:.3f}, raster {h['raster']['ssim_face']:.3f}")
    return 0
