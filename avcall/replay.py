"""``avcall replay``: inspect an HMC session recording (.hmc) or play it back."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from avcall.args import HelpFormatter
from avcore.errors import UsageError

EPILOG = """\
examples:
  avcall replay session.hmc --info            readable summary: frames, fps, duration, errors
  avcall replay session.hmc --info --json     the same as one JSON object on stdout
  avcall replay session.hmc --rate fast --out-dir frames/
                                              write every frame as a PNG (views side by side)
  avcall replay session.hmc --loop            play at the recorded rate until Ctrl-C

Damaged frames are reported by --info and skipped (counted) during replay; every
other frame of a damaged or truncated recording is still read. A file that is
missing or is not an .hmc recording exits with status 2, as do contradictory
options (--info with --rate/--speed/--loop/--out-dir, --speed with --rate fast,
--loop with --out-dir).
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "replay",
        help="inspect or play back an HMC session recording (.hmc)",
        description=("Inspect an HMC session recording (--info) or replay its frames at the\n"
                     "recorded rate (default), as fast as possible, or looped. A replay prints\n"
                     "the frames replayed and skipped and the achieved fps."),
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    p.add_argument("file", type=Path, metavar="FILE.hmc", help="the recording to read")
    p.add_argument("--info", action="store_true",
                   help="print the recording's summary (verifies every frame's checksum) and exit")
    p.add_argument("--json", action="store_true",
                   help="print exactly one JSON object on stdout instead of readable text")
    p.add_argument("--rate", choices=("native", "fast"), default=None,
                   help="native: pace frames by their capture timestamps; "
                        "fast: no waiting (default: native)")
    p.add_argument("--speed", type=float, default=None,
                   help="playback speed factor for --rate native (default: 1.0)")
    p.add_argument("--loop", action="store_true",
                   help="start over after the last frame, until interrupted (Ctrl-C)")
    p.add_argument("--out-dir", type=Path, default=None, metavar="DIR",
                   help="write each replayed frame's views side by side as DIR/frame_NNNNNN.png")
    p.set_defaults(func=run)


def _json_default(obj):
    if isinstance(obj, (bytes, bytearray)):
        return obj.hex()
    return str(obj)


def _info_text(info: dict) -> str:
    gt = "yes" if info["has_ground_truth"] else "no"
    sessions = info.get("sessions", 1)
    lines = [
        f"recording     {info['path']}",
        f"format        .hmc version {info['version']}, {info['bytes']} bytes",
        f"frames        {info['frames']} readable of {info['frame_slots']}"
        + (f", in {sessions} capture sessions" if sessions > 1 else ""),
        f"rate          {info['fps']:g} fps nominal"
        + (f", {info['recorded_fps']:.2f} fps recorded" if info["recorded_fps"] else ""),
        f"duration      {info['duration_s']:.3f} s"
        + (" (captured time; gaps between sessions not counted)" if sessions > 1 else ""),
        f"timestamps    {info.get('clock', 'wall')} clock",
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
    return "\n".join(lines)


def _emit(text: str) -> None:
    """Print ``text`` on stdout; a reader that went away (``| head -1``) ends the output quietly."""
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        # Point stdout at /dev/null so the interpreter's final flush does not complain either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _check_options(args: argparse.Namespace) -> None:
    """Reject option combinations that would silently be ignored."""
    if args.info:
        given = [flag for flag, on in (("--rate", args.rate is not None), ("--speed", args.speed is not None),
                                       ("--loop", args.loop), ("--out-dir", args.out_dir is not None)) if on]
        if given:
            raise UsageError(f"--info only summarises the file; it cannot be combined with {', '.join(given)}")
        return
    if args.speed is not None:
        if not (math.isfinite(args.speed) and args.speed > 0):
            raise UsageError(f"--speed must be a positive, finite number, got {args.speed:g}")
        if args.rate == "fast":
            raise UsageError("--speed applies to --rate native; --rate fast never waits")
    if args.loop and args.out_dir is not None:
        raise UsageError("--loop with --out-dir would rewrite the same PNGs forever; leave one out")


def run(args: argparse.Namespace) -> int:
    from capture.paths import check_output_dir
    from capture.recording import HmcReader, ReplayStats, replay, views_side_by_side

    _check_options(args)
    rate = args.rate or "native"
    speed = 1.0 if args.speed is None else args.speed
    with HmcReader(args.file) as reader:
        if args.info:
            info = reader.info()
            _emit(json.dumps(info, default=_json_default) if args.json else _info_text(info))
            return 0

        out_dir = None
        if args.out_dir is not None:
            import cv2

            out_dir = check_output_dir(args.out_dir, what="PNG directory")

        stats = ReplayStats()
        interrupted = False
        try:
            for frame in replay(reader, rate=rate, loop=args.loop, speed=speed, stats=stats):
                if out_dir is not None:
                    png = out_dir / f"frame_{frame.index:06d}.png"
                    if not cv2.imwrite(str(png), views_side_by_side(frame.views)):
                        raise UsageError(f"could not write {png}")
        except KeyboardInterrupt:
            interrupted = True
        summary = {
            "path": str(args.file), "rate": rate, "speed": speed,
            "frames_replayed": stats.frames, "frames_skipped": stats.skipped,
            "passes": stats.passes, "late_frames": stats.late,
            "elapsed_s": round(stats.elapsed_s, 6), "achieved_fps": round(stats.achieved_fps, 3),
            "recorded_fps": reader.fps, "errors": list(reader.errors),
            "interrupted": interrupted,
        }
    if args.json:
        _emit(json.dumps(summary, default=_json_default))
    else:
        _emit(f"replayed {stats.frames} frames ({stats.skipped} skipped as damaged, "
              f"{stats.late} late) in {stats.elapsed_s:.3f} s: {stats.achieved_fps:.1f} fps "
              f"achieved, recorded at {reader.fps:g} fps"
              + (f"; PNGs in {args.out_dir}" if args.out_dir is not None else ""))
        for e in summary["errors"]:
            print(f"  - {e}", file=sys.stderr)
    return 130 if interrupted else 0
