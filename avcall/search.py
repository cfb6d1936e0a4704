"""``avcall search``: encoder architecture search (AVE-NAS) and its latency lookup table."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .args import HelpFormatter, command_line, non_negative_int, positive_int

LUT_EPILOG = """\
examples:
  avcall search lut --json --out-dir docs/results
  avcall search lut --archs 8 --table /tmp/lut.json --out-dir /tmp/lut
"""

DEFAULT_TABLE = Path("runs") / "ave" / "lut_1thread.json"


def register(sub) -> None:
    p = sub.add_parser("search", help="encoder architecture search (AVE-NAS): latency table",
                       description="Searching per-view HMC encoders: the latency lookup table the search costs "
                                   "architectures with.")
    ss = p.add_subparsers(dest="search_command", metavar="WHAT")
    ss.required = True
    t = ss.add_parser(
        "lut", help="fill the latency lookup table and check it against whole architectures",
        description="Times every building block the sampled architectures need (each its own ONNX model, "
                    "onnxruntime, one intra-op thread), predicts whole encoders' latency from the table, and "
                    "measures them: Pearson r and mean absolute error in percent, plus a scatter plot.",
        epilog=LUT_EPILOG, formatter_class=HelpFormatter)
    t.add_argument("--archs", type=positive_int, default=24, help="random architectures of the search space "
                   "(the EEM baselines are always added) (default: %(default)s)")
    t.add_argument("--seed", type=non_negative_int, default=0, help="sampling seed (default: %(default)s)")
    t.add_argument("--table", default=str(DEFAULT_TABLE), metavar="PATH",
                   help="the table's JSON cache: entries measured before are reused (default: %(default)s)")
    t.add_argument("--out-dir", default="", metavar="DIR",
                   help="write ave_lut.json and ave_lut.png here (default: print only)")
    t.add_argument("--json", action="store_true", help="print one JSON object")
    t.set_defaults(func=_lut)


def _lut(args: argparse.Namespace) -> int:
    from encoder.lut import LatencyTable, check_lut, plot_lut

    table = LatencyTable(args.table)
    cmd = command_line("search", "avcall search lut --json --out-dir docs/results")
    r = check_lut(args.archs, seed=args.seed, table=table, progress=True, command=cmd)
    if args.out_dir:
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        from runtime.telemetry import json_safe

        (out / "ave_lut.json").write_text(json.dumps(json_safe(r), indent=1))
        plot_lut(r, out / "ave_lut.png")
    if args.json:
        print(json.dumps({k: v for k, v in r.items() if k != "points"}))
    else:
        print(f"latency table: {r['n']} architectures, Pearson r {r['pearson_r']:.3f}, mean |error| "
              f"{r['mean_abs_pct_error']:.1f}% ({r['entries']} entries in {args.table})")
    if args.out_dir:
        print(f"wrote {Path(args.out_dir) / 'ave_lut.json'} and {Path(args.out_dir) / 'ave_lut.png'}")
    return 0
