"""``avcall record``: record a live HMC session into an .hmc file as it is captured."""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

EPILOG = """\
examples:
  avcall record --source synthetic --identity S1 --seconds 10 --out s1.hmc
  avcall record --identity S2 --seconds 5 --fps 60 --seed 3 --no-ground-truth --out s2.hmc
  avcall replay s1.hmc --info

Every frame is written to disk as soon as it is captured, so a recording that is
killed keeps every completed frame. Ctrl-C stops early and keeps what was recorded.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "record",
        help="record a live HMC session (three headset views per frame) to an .hmc file",
        description=("Capture a live HMC session at --fps for --seconds and write each frame\n"
                     "(views, capture timestamp, optional ground truth) to an .hmc recording\n"
                     "as it arrives. Prints frames written, the achieved fps and the frames\n"
                     "that missed their deadline (written over one frame period after capture)."),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--source", choices=("synthetic",), default="synthetic",
                   help="frame source: the synthetic capture studio (default)")
    p.add_argument("--identity", default="S1", help="studio identity to capture (default S1)")
    p.add_argument("--seconds", type=float, required=True, help="how long to record")
    p.add_argument("--out", type=Path, required=True, metavar="FILE.hmc",
                   help="recording to write (replaced if it exists, unless --append)")
    p.add_argument("--fps", type=float, default=90.0, help="capture rate (default 90)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic performance (default 0)")
    p.add_argument("--no-ground-truth", action="store_true",
                   help="do not store the studio's per-frame ground truth")
    p.add_argument("--with-vertices", action="store_true",
                   help="also store the mesh vertices in the ground truth (77 KB/frame; "
                        "expression, gaze and keypoints are always stored unless --no-ground-truth)")
    p.add_argument("--append", action="store_true",
                   help="continue an existing recording with the same fps and view size")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from capture.recording import DEFAULT_VIEW_NAMES, HmcWriter, RecordStats, record_session

    try:
        from capture.source import SyntheticHmcSource
    except ModuleNotFoundError as exc:
        if exc.name != "capture.source":
            raise
        print("avcall record: error: the synthetic HMC source (capture.source) is not available "
              "in this installation", file=sys.stderr)
        return 2

    if not args.seconds > 0:
        raise ValueError(f"--seconds must be positive, got {args.seconds}")
    if not args.fps > 0:
        raise ValueError(f"--fps must be positive, got {args.fps}")
    ground_truth = not args.no_ground_truth
    src = SyntheticHmcSource(identity=args.identity, fps=args.fps, seed=args.seed,
                             ground_truth=ground_truth, live=True, with_vertices=args.with_vertices)
    stats = RecordStats()
    interrupted = False
    try:
        frames = iter(src.frames(seconds=args.seconds))
        try:
            first = next(frames)  # the view size comes from the source's first frame
        except StopIteration:
            raise ValueError("the source produced no frames") from None
        meta = {"source": args.source, "identity": args.identity, "seed": args.seed,
                "ground_truth": ground_truth}
        with HmcWriter(args.out, fps=args.fps,
                       view_names=getattr(src, "view_names", DEFAULT_VIEW_NAMES),
                       size=tuple(first[0].shape[1:]), meta=None if args.append else meta,
                       append=args.append) as writer:
            bar = tqdm(itertools.chain([first], frames), total=round(args.seconds * args.fps),
                       unit="frame", desc=f"recording {args.out.name}", file=sys.stderr)
            try:
                record_session(bar, writer, stats=stats)
            except KeyboardInterrupt:
                interrupted = True
            finally:
                bar.close()
    finally:
        src.close()
    print(f"wrote {stats.frames} frames ({stats.bytes_written / 1e6:.1f} MB) to {args.out} in "
          f"{stats.elapsed_s:.2f} s: {stats.achieved_fps:.1f} fps achieved of {args.fps:g}; "
          f"{stats.missed_deadline} frames missed their deadline"
          + (" (interrupted)" if interrupted else ""))
    return 130 if interrupted else 0
