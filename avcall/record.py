"""``avcall record``: record a live HMC session into an .hmc file as it is captured."""
from __future__ import annotations

import argparse
import math
import signal
import threading
from pathlib import Path

from avcall.args import HelpFormatter
from avcore.errors import UsageError

EPILOG = """\
examples:
  avcall record --source synthetic --identity S1 --seconds 10 --out s1.hmc
  avcall record --identity S2 --seconds 5 --fps 60 --seed 3 --no-ground-truth --out s2.hmc
  avcall record --identity S1 --out long.hmc          record until Ctrl-C
  avcall record --identity S1 --seconds 5 --append --out s1.hmc
  avcall replay s1.hmc --info

Every frame is written to disk as soon as it is captured, so a recording that is
killed keeps every completed frame. Ctrl-C stops the recording after the frame
being captured and keeps every frame (without --seconds, Ctrl-C is the normal way
to stop and exits 0). --append continues a recording of the same identity, source,
fps and view size; only captured time counts in its duration. Capture timestamps
are wall-clock (the header says clock=wall).
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "record",
        help="record a live HMC session (three headset views per frame) to an .hmc file",
        description=("Capture a live HMC session at --fps for --seconds (or until Ctrl-C) and write\n"
                     "each frame (views, capture timestamp, optional ground truth) to an .hmc\n"
                     "recording as it arrives. Prints frames written, the achieved fps, the frames\n"
                     "the source dropped (rendering slower than --fps) and the frames that missed\n"
                     "their deadline (written over one frame period after capture)."),
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    p.add_argument("--source", choices=("synthetic",), default="synthetic",
                   help="frame source: the synthetic capture studio")
    p.add_argument("--identity", default="S1", help="studio identity to capture, S1..S6")
    p.add_argument("--seconds", type=float, default=None,
                   help="how long to record (default: until Ctrl-C)")
    p.add_argument("--out", type=Path, required=True, metavar="FILE.hmc",
                   help="recording to write (replaced if it exists, unless --append)")
    p.add_argument("--fps", type=float, default=90.0, help="capture rate in frames per second")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic performance (default: %(default)s)")
    p.add_argument("--no-ground-truth", action="store_true",
                   help="do not store the studio's per-frame ground truth")
    p.add_argument("--with-vertices", action="store_true",
                   help="also store the mesh vertices in the ground truth (77 KB/frame; "
                        "expression, gaze and keypoints are always stored unless --no-ground-truth)")
    p.add_argument("--append", action="store_true",
                   help="continue an existing recording of the same identity, source, fps and view size")
    p.set_defaults(func=run)


def _positive(name: str, value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise UsageError(f"{name} must be a positive, finite number, got {value:g}")
    return value


class _StopFlag:
    """SIGINT/SIGTERM set a flag that the capture loop checks between frames, so the frame
    being captured is still written and the file is closed cleanly."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict = {}

    def __enter__(self) -> "_StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._set)
        return self

    def _set(self, signum, _frame) -> None:
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)

    def __bool__(self) -> bool:
        return self.signum is not None


def run(args: argparse.Namespace) -> int:
    from avcore.progress import progress
    from capture.identity import check_identity
    from capture.paths import check_output_file
    from capture.recording import (DEFAULT_VIEW_NAMES, HmcWriter, RecordStats, check_append,
                                   record_session)

    try:
        from capture.source import SyntheticHmcSource
    except ModuleNotFoundError as exc:
        if exc.name != "capture.source":
            raise
        raise UsageError("the synthetic HMC source (capture.source) is not available "
                          "in this installation") from None

    # Everything a user can get wrong is checked before the studio starts.
    if args.seconds is not None:
        _positive("--seconds", args.seconds)
    _positive("--fps", args.fps)
    check_identity(args.identity)
    check_output_file(args.out, what="recording", append=args.append)
    ground_truth = not args.no_ground_truth
    meta = {"source": args.source, "identity": args.identity, "seed": args.seed,
            "ground_truth": ground_truth}
    match = {"identity": args.identity, "source": args.source}
    continuing = args.append and args.out.is_file() and args.out.stat().st_size > 0
    if continuing:
        check_append(args.out, fps=args.fps, clock=SyntheticHmcSource.clock, match_meta=match)

    src = SyntheticHmcSource(identity=args.identity, fps=args.fps, seed=args.seed,
                             ground_truth=ground_truth, live=True, with_vertices=args.with_vertices)
    stats = RecordStats()
    total = None if args.seconds is None else int(round(args.seconds * args.fps))
    period_ns = 1e9 / args.fps
    try:
        size = int(src.studio.rig_config.size)
        with HmcWriter(args.out, fps=args.fps, clock=src.clock,
                       view_names=getattr(src, "view_names", DEFAULT_VIEW_NAMES),
                       size=(size, size), meta=None if continuing else meta,
                       match_meta=match if continuing else None,
                       append=args.append) as writer, _StopFlag() as stop:
            bar = progress(total=total, unit="frame", desc=f"recording {args.out.name}")

            def frames():
                first_ts = None
                for views, ts, gt in src.frames(seconds=args.seconds):
                    yield views, ts, gt
                    # The bar counts frame slots of the capture schedule (written or dropped by
                    # the source), so a completed recording ends at exactly 100%.
                    first_ts = ts if first_ts is None else first_ts
                    bar.update(int(round((ts - first_ts) / period_ns)) + 1 - bar.n)
                    bar.set_postfix(written=stats.frames, dropped=src.dropped, refresh=False)
                    if stop:
                        return

            try:
                record_session(frames(), writer, stats=stats)
            finally:
                bar.close()
    finally:
        src.close()
    interrupted = bool(stop)
    print(f"wrote {stats.frames} frames ({stats.bytes_written / 1e6:.1f} MB) to {args.out} in "
          f"{stats.elapsed_s:.2f} s: {stats.achieved_fps:.1f} fps achieved of {args.fps:g}; "
          f"{src.dropped} frames dropped by the source (rendering slower than --fps); "
          f"{stats.missed_deadline} frames missed their deadline"
          + (" (stopped by Ctrl-C)" if interrupted else ""))
    return 130 if interrupted and args.seconds is not None else 0
