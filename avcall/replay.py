"""``avcall replay``: inspect an HMC session recording (.hmc) or play it back."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EPILOG = """\
examples:
  avcall replay session.hmc --info            readable summary: frames, fps, duration, errors
  avcall replay session.hmc --info --json     the same as one JSON object on stdout
  avcall replay session.hmc --rate fast --out-dir frames/
                                              write every frame as a PNG (views side by side)
  avcall replay session.hmc --loop            play at the recorded rate until Ctrl-C

Damaged frames are reported by --info and skipped (counted) during replay; every
other frame of a damaged or truncated recording is still read. A file that is
missing or is not an .hmc recording exits with status 2.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "replay",
        help="inspect or play back an HMC session recording (.hmc)",
        description=("Inspect an HMC session recording (--info) or replay its frames at the\n"
                     "recorded rate (default), as fast as possible, or looped. A replay prints\n"
                     "the frames replayed and skipped and the achieved fps."),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", type=Path, metavar="FILE.hmc", help="the recording to read")
    p.add_argument("--info", action="store_true",
                   help="print the recording's summary (verifies every frame's checksum) and exit")
    p.add_argument("--json", action="store_true",
                   help="print exactly one JSON object on stdout instead of readable text")
    p.add_argument("--rate", choices=("native", "fast"), default="native",
                   help="native: pace frames by their capture timestamps (default); "
                        "fast: no waiting")
    p.add_argument("--speed", type=float, default=1.0,
                   help="playback speed factor for --rate native (default 1.0)")
    p.add_argument("--loop", action="store_true",
                   help="start over after the last frame, until interrupted (Ctrl-C)")
    p.add_argument("--out-dir", type=Path, default=None, metavar="DIR",
                   help="write each replayed frame's views side by side as DIR/frame_NNNNNN.png")
    p.set_defaults(func=run)


def _json_default(obj):
    if isinstance(obj, (bytes, bytearray)):
        return obj.hex()
    return str(obj)


def _print_info(info: dict) -> None:
    gt = "yes" if info["has_ground_truth"] else "no"
    lines = [
        f"recording     {info['path']}",
        f"format        .hmc version {info['version']}, {info['bytes']} bytes",
        f"frames        {info['frames']} readable of {info['frame_slots']}",
        f"rate          {info['fps']:g} fps nominal"
        + (f", {info['recorded_fps']:.2f} fps recorded" if info["recorded_fps"] else ""),
        f"duration      {info['duration_s']:.3f} s",
        f"views         {', '.join(info['views'])} ({info['size'][0]}x{info['size'][1]} each)",
        f"ground truth  {gt}",
    ]
    if info["meta"]:
        lines.append("meta          " + ", ".join(f"{k}={v}" for k, v in info["meta"].items()))
    if info["errors"]:
        lines.append(f"errors        {len(info['errors'])}:")
        lines += [f"  - {e}" for e in info["errors"]]
    else:
        lines.append("errors        none")
    print("\n".join(lines))


def run(args: argparse.Namespace) -> int:
    from capture.recording import HmcReader, ReplayStats, replay, views_side_by_side

    if args.speed <= 0:
        raise ValueError(f"--speed must be positive, got {args.speed}")
    with HmcReader(args.file) as reader:
        if args.info:
            info = reader.info()
            if args.json:
                print(json.dumps(info, default=_json_default))
            else:
                _print_info(info)
            return 0

        write_png = None
        if args.out_dir is not None:
            import cv2

            args.out_dir.mkdir(parents=True, exist_ok=True)

            def write_png(frame):
                path = args.out_dir / f"frame_{frame.index:06d}.png"
                if not cv2.imwrite(str(path), views_side_by_side(frame.views)):
                    raise ValueError(f"could not write {path}")

        stats = ReplayStats()
        interrupted = False
        try:
            for frame in replay(reader, rate=args.rate, loop=args.loop, speed=args.speed,
                                stats=stats):
                if write_png is not None:
                    write_png(frame)
        except KeyboardInterrupt:
            interrupted = True
        summary = {
            "path": str(args.file), "rate": args.rate, "speed": args.speed,
            "frames_replayed": stats.frames, "frames_skipped": stats.skipped,
            "passes": stats.passes, "late_frames": stats.late,
            "elapsed_s": round(stats.elapsed_s, 6), "achieved_fps": round(stats.achieved_fps, 3),
            "recorded_fps": reader.fps, "errors": list(reader.errors),
            "interrupted": interrupted,
        }
    if args.json:
        print(json.dumps(summary, default=_json_default))
    else:
        print(f"replayed {stats.frames} frames ({stats.skipped} skipped as damaged, "
              f"{stats.late} late) in {stats.elapsed_s:.3f} s: {stats.achieved_fps:.1f} fps "
              f"achieved, recorded at {reader.fps:g} fps"
              + (f"; PNGs in {args.out_dir}" if args.out_dir is not None else ""))
        for e in summary["errors"]:
            print(f"  - {e}", file=sys.stderr)
    return 130 if interrupted else 0
