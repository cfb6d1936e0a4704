"""``avcall capture``: the synthetic capture studio (contact sheet, training datasets)."""
from __future__ import annotations

import argparse
import json
import math

from avcall.args import HelpFormatter
from avcore.errors import UsageError

CAPTURE_EPILOG = """\
examples:
  avcall capture sheet --out sheet.png
  avcall capture generate --identity S1 --frames 2000 --out data/S1
  avcall capture generate --help
"""

SHEET_EPILOG = """\
examples:
  avcall capture sheet --out sheet.png
  avcall capture sheet --out s12.png --identities S1,S2 --tile 64 --session 3

The extension of --out picks the image type: .png, .jpg, .jpeg, .bmp, .tif, .tiff or .webp.
"""

GENERATE_EPILOG = """\
examples:
  avcall capture generate --identity S1 --frames 2000 --out data/S1
  avcall capture generate --identity S3 --frames 300 --fps 60 --seed 7 --out data/S3 --dome-views front,left
  avcall replay data/S1/hmc.hmc --info

--out is created if needed and must not hold a dataset (hmc.hmc) already.
"""


def check_number(name: str, value: float, *, low: float | None = None, high: float | None = None) -> float:
    """``value`` if it is finite and within [low, high], else a one-line usage error."""
    if math.isfinite(value) and (low is None or value >= low) and (high is None or value <= high):
        return value
    if low is not None and high is not None:
        bounds = f"between {low:g} and {high:g}"
    elif low is not None:
        bounds = f"at least {low:g}"
    else:
        bounds = "a finite number" if high is None else f"at most {high:g}"
    raise UsageError(f"{name} must be {bounds}, got {value:g}")


def check_positive(name: str, value: float) -> float:
    """A positive, finite float (rates, durations)."""
    if not (math.isfinite(value) and value > 0):
        raise UsageError(f"{name} must be a positive, finite number, got {value:g}")
    return value


def register(sub) -> None:
    p = sub.add_parser(
        "capture",
        help="synthetic capture studio: contact sheets and training datasets",
        description="The synthetic capture studio: procedural heads (S1..S6) seen by the HMC rig and dome cameras.",
        epilog=CAPTURE_EPILOG,
        formatter_class=HelpFormatter,
    )
    cs = p.add_subparsers(dest="capture_command", metavar="WHAT")
    cs.required = True

    s = cs.add_parser(
        "sheet",
        help="write a contact sheet image of every identity in a few poses",
        description="Every identity in neutral and a few expressions: the three HMC views (left eye, right eye, "
        "mouth) above the front/left/right colour views.",
        epilog=SHEET_EPILOG,
        formatter_class=HelpFormatter,
    )
    s.add_argument("--out", required=True, metavar="FILE.png", help="output image path (required)")
    s.add_argument("--identities", default=None, help="comma-separated identities (default: S1,S2,S3,S4,S5,S6)")
    s.add_argument("--tile", type=int, default=112, help="tile size in pixels, 16..1024")
    s.add_argument("--session", type=int, default=0,
                   help="HMC session seed: headset slip and exposure (default: %(default)s = as designed)")
    s.set_defaults(func=_sheet)

    g = cs.add_parser(
        "generate",
        help="render a training dataset with ground truth",
        description="Render a performance of one identity: an .hmc recording of the HMC views with per-frame "
        "ground truth (expression, gaze, keypoints, vertices), labels.npz (split, extreme flags) and meta.json.",
        epilog=GENERATE_EPILOG,
        formatter_class=HelpFormatter,
    )
    g.add_argument("--identity", default="S1", help="identity S1..S6")
    g.add_argument("--frames", type=int, required=True, help="number of frames, >= 1 (required)")
    g.add_argument("--out", required=True, metavar="DIR",
                   help="output directory (created; must not hold a dataset already; required)")
    g.add_argument("--fps", type=float, default=90.0, help="performance frame rate")
    g.add_argument("--seed", type=int, default=0, help="performance and session seed (default: %(default)s)")
    g.add_argument("--dome-views", default="",
                   help="also write colour renders for these views, e.g. front,left,right (default: none)")
    g.add_argument("--dome-size", type=int, default=256,
                   help="size of the colour renders in pixels, 16..4096")
    g.add_argument("--json", action="store_true", help="print the dataset meta as JSON (default: a summary line)")
    g.set_defaults(func=_generate)


def _sheet(args: argparse.Namespace) -> int:
    from avcore.progress import progress
    from capture.identity import IDENTITIES, check_identity
    from capture.paths import IMAGE_SUFFIXES, check_output_file

    idents = tuple(i.strip() for i in args.identities.split(",")) if args.identities is not None else IDENTITIES
    for i in idents:
        check_identity(i)
    check_number("--tile", args.tile, low=16, high=1024)
    out = check_output_file(args.out, what="contact sheet", suffixes=IMAGE_SUFFIXES)

    import cv2

    from capture.sheet import SHEET_POSES, contact_sheet

    with progress(total=len(idents) * len(SHEET_POSES), desc="contact sheet", unit="cell") as bar:
        img = contact_sheet(idents, tile=args.tile, session=args.session, progress=bar)
    if not cv2.imwrite(str(out), cv2.cvtColor(img, cv2.COLOR_RGB2BGR)) or not out.is_file():
        raise UsageError(f"could not write {out}")
    print(f"wrote {out} ({img.shape[1]}x{img.shape[0]})")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from capture.identity import check_identity
    from capture.paths import check_output_dir
    from capture.rig import DOME_VIEWS

    check_identity(args.identity)
    check_number("--frames", args.frames, low=1)
    check_positive("--fps", args.fps)
    check_number("--dome-size", args.dome_size, low=16, high=4096)
    views = tuple(v.strip() for v in args.dome_views.split(",") if v.strip())
    for v in views:
        if v not in DOME_VIEWS:
            raise UsageError(f"unknown dome view {v!r}: one of {', '.join(DOME_VIEWS)}")
    out = check_output_dir(args.out, what="dataset directory")
    if (out / "hmc.hmc").exists():
        raise UsageError(f"{out} already holds a dataset ({out / 'hmc.hmc'} exists); choose an empty directory")

    from capture.dataset import generate_dataset

    meta = generate_dataset(args.identity, args.frames, out, fps=args.fps, seed=args.seed, dome_views=views,
                            dome_size=args.dome_size)
    if args.json:
        print(json.dumps(meta))
    else:
        print(f"wrote {meta['frames']} frames of {args.identity} to {out} "
              f"({meta['train_frames']} train, {meta['test_frames']} test, {meta['extreme_frames']} extreme)")
    return 0
