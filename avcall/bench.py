"""``avcall bench``: timed benchmarks that print JSON or a table (warm-up, then percentiles)."""
from __future__ import annotations

import argparse
import json


def register(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks (capture studio, models, end-to-end)", description="Benchmarks: warm up, time many runs, report percentiles.")
    bs = p.add_subparsers(dest="bench_command", metavar="WHAT")
    bs.required = True
    from avcall.args import HelpFormatter

    c = bs.add_parser(
        "capture",
        help="HMC frames/s (3 views + ground truth) and 512x512 dome renders/s",
        description="Throughput of the synthetic studio: hmc_fps counts HMC frames (all three 192x192 views with "
        "ground truth) per second; dome_fps counts 512x512 colour renders per second.",
        epilog="example:\n  avcall bench capture --identity S2 --frames 300 --dome-frames 60 --json",
        formatter_class=HelpFormatter,
    )
    c.add_argument("--identity", default="S1", help="studio identity S1..S6")
    c.add_argument("--frames", type=int, default=300, help="timed HMC frames, >= 1")
    c.add_argument("--dome-frames", type=int, default=60, help="timed dome renders, >= 1")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.set_defaults(func=_capture)
    for mod in _EXTENSIONS:
        mod.add_bench(bs)


def _capture(args: argparse.Namespace) -> int:
    from avcall.capture import check_number
    from capture.bench import bench_capture
    from capture.identity import check_identity

    check_identity(args.identity)
    check_number("--frames", args.frames, low=1)
    check_number("--dome-frames", args.dome_frames, low=1)
    r = bench_capture(args.identity, frames=args.frames, dome_frames=args.dome_frames)
    if args.json:
        from encoder.bench import machine_description

        from .args import command_line

        print(json.dumps(r | {"machine": machine_description(), "command": command_line("capture", "avcall bench capture")}))
    else:
        print(f"HMC  {r['hmc_fps']:.1f} frames/s  (p50 {r['hmc_ms']['p50']:.2f} ms, p99 {r['hmc_ms']['p99']:.2f} ms)")
        print(f"dome {r['dome_fps']:.1f} renders/s (p50 {r['dome_ms']['p50']:.2f} ms, p99 {r['dome_ms']['p99']:.2f} ms)")
    return 0


from . import call_cmds, decoder_cmds, encoder_cmds, network_cmds  # noqa: E402

_EXTENSIONS: list = [decoder_cmds, encoder_cmds, call_cmds, network_cmds]
