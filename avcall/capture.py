"""``avcall capture``: the synthetic capture studio (contact sheet, training datasets)."""
from __future__ import annotations

import argparse
import json


def register(sub) -> None:
    p = sub.add_parser(
        "capture",
        help="synthetic capture studio: contact sheets and training datasets",
        description="The synthetic capture studio: procedural heads (S1..S6) seen by the HMC rig and dome cameras.",
    )
    cs = p.add_subparsers(dest="capture_command", metavar="WHAT")
    cs.required = True

    s = cs.add_parser(
        "sheet",
        help="write a contact sheet PNG of every identity in a few poses",
        description="Every identity in neutral and a few expressions: the three HMC views (left eye, right eye, "
        "mouth) above the front/left/right colour views.",
    )
    s.add_argument("--out", required=True, help="output PNG path")
    s.add_argument("--identities", default=None, help="comma-separated identities (default: S1..S6)")
    s.add_argument("--tile", type=int, default=112, help="tile size in pixels (default 112)")
    s.add_argument("--session", type=int, default=0, help="HMC session seed: headset slip and exposure (0 = as designed)")
    s.set_defaults(func=_sheet)

    g = cs.add_parser(
        "generate",
        help="render a training dataset with ground truth",
        description="Render a performance of one identity: an .hmc recording of the HMC views with per-frame "
        "ground truth (expression, gaze, keypoints, vertices), labels.npz (split, extreme flags) and meta.json.",
    )
    g.add_argument("--identity", default="S1", help="identity S1..S6 (default S1)")
    g.add_argument("--frames", type=int, required=True, help="number of frames")
    g.add_argument("--out", required=True, help="output directory (created; must not hold a dataset already)")
    g.add_argument("--fps", type=float, default=90.0, help="performance frame rate (default 90)")
    g.add_argument("--seed", type=int, default=0, help="performance and session seed")
    g.add_argument("--dome-views", default="", help="also write colour renders for these views, e.g. front,left,right")
    g.add_argument("--dome-size", type=int, default=256, help="size of the colour renders (default 256)")
    g.add_argument("--json", action="store_true", help="print the dataset meta as JSON")
    g.set_defaults(func=_generate)


def _sheet(args: argparse.Namespace) -> int:
    import cv2
    from tqdm import tqdm

    from capture.identity import IDENTITIES, identity_seed
    from capture.sheet import SHEET_POSES, contact_sheet

    idents = tuple(args.identities.split(",")) if args.identities else IDENTITIES
    for i in idents:
        identity_seed(i)
    with tqdm(total=len(idents) * len(SHEET_POSES), desc="contact sheet", unit="cell") as bar:
        img = contact_sheet(idents, tile=args.tile, session=args.session, progress=bar)
    if not cv2.imwrite(args.out, cv2.cvtColor(img, cv2.COLOR_RGB2BGR)):
        raise ValueError(f"could not write {args.out!r} (does the directory exist, is the extension an image type?)")
    print(f"wrote {args.out} ({img.shape[1]}x{img.shape[0]})")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from capture.dataset import generate_dataset

    views = tuple(v for v in args.dome_views.split(",") if v)
    meta = generate_dataset(args.identity, args.frames, args.out, fps=args.fps, seed=args.seed, dome_views=views, dome_size=args.dome_size)
    if args.json:
        print(json.dumps(meta))
    else:
        print(f"wrote {meta['frames']} frames of {args.identity} to {args.out} "
              f"({meta['train_frames']} train, {meta['test_frames']} test, {meta['extreme_frames']} extreme)")
    return 0
