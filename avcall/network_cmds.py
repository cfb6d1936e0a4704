"""Network options and ``avcall bench network``.

``--impair SPEC`` (a sender's transmit path, :mod:`transport.impair`) and the receiver's jitter
buffer and concealment options (:class:`runtime.playout.PlayoutConfig`) are shared by ``send``,
``receive``, ``call``, ``demo`` and ``bench e2e``; ``bench network`` measures both
(:mod:`runtime.netbench`). Nothing here imports torch.
"""
from __future__ import annotations

import argparse
import json
import sys

from runtime.playout import PlayoutConfig

from .args import HelpFormatter, command_line, non_negative_float

IMPAIR_HELP = ("impair {who} transmit path in-process, e.g. loss=5%%,burst=3,jitter=20ms,reorder=1%%,dup=1%%,seed=7 "
               "(loss in %%; burst = mean loss-run length, 1 = independent losses; jitter = mean extra delay, "
               "uniform 0..2x; same seed, same drops and delays)")


def add_impair_arg(p: argparse.ArgumentParser, who: str = "this sender's") -> None:
    p.add_argument("--impair", default="", metavar="SPEC", help=IMPAIR_HELP.format(who=who))


def add_playout_args(p: argparse.ArgumentParser) -> None:
    """The jitter buffer and concealment options; defaults from :class:`runtime.playout.PlayoutConfig`."""
    d = PlayoutConfig()
    p.add_argument("--conceal", action=argparse.BooleanOptionalAction, default=d.conceal,
                   help="conceal losses: decode coded frames across a lost one (approximately, until the intra frame "
                        "asked for) and, with the jitter buffer, predict or interpolate a missing frame "
                        "(--no-conceal: hold the last frame; default: %(default)s)")
    p.add_argument("--max-concealed", type=int, default=d.max_concealed, metavar="N",
                   help="most frames predicted in a row, then the last one is held (default: %(default)s)")
    p.add_argument("--jitter-max-ms", type=non_negative_float, default=d.max_delay_ms, metavar="MS",
                   help="jitter buffer: largest target delay (default: %(default)s = no buffer: show the newest frame "
                        "that arrived; the network bench uses 100)")
    p.add_argument("--jitter-min-ms", type=non_negative_float, default=d.min_delay_ms, metavar="MS",
                   help="jitter buffer: smallest target delay (default: %(default)s)")


def playout_from_args(args: argparse.Namespace) -> PlayoutConfig:
    return PlayoutConfig(max_delay_ms=args.jitter_max_ms, min_delay_ms=args.jitter_min_ms, conceal=args.conceal,
                         max_concealed=args.max_concealed)


def add_bench(bench_sub) -> None:
    from runtime.netbench import NetworkBenchConfig

    d = NetworkBenchConfig()
    n = bench_sub.add_parser(
        "network", help="loss, jitter and concealment: fps, freezes, rendered-avatar MSE, capture-to-present",
        description="The receiver under injected network impairment, with concealment on and off. Quality (MSE of "
        "the presented avatars vs the ground-truth code's, face pixels and whole frame) is measured in-process over "
        "held-out recordings with the same impairment and jitter-buffer classes the processes run; fps, freeze time "
        "and capture-to-present latency with real sender and receiver processes over loopback.",
        epilog="examples:\n  avcall bench network --json\n  avcall bench network --quick --out-dir /tmp/net",
        formatter_class=HelpFormatter)
    n.add_argument("--seconds", type=non_negative_float, default=d.seconds,
                   help="measured seconds per real-process run (0 = skip the process runs)")
    n.add_argument("--identity", default=d.identity, help="held-out recordings of this identity (its models)")
    n.add_argument("--quick", action="store_true", help="a small grid (the done-when row and its neighbours)")
    n.add_argument("--out-dir", default="", metavar="DIR",
                   help="write network.json, network.md and network.png here (e.g. docs/results)")
    n.add_argument("--json", action="store_true", help="print the JSON result")
    n.set_defaults(func=_bench_network)


def _bench_network(args: argparse.Namespace) -> int:
    from encoder.heldout import heldout_codes
    from runtime.netbench import NetworkBenchConfig, bench_network, heldout_caches, render_markdown, write_results
    from runtime.telemetry import json_safe

    cfg = NetworkBenchConfig(seconds=args.seconds, identity=args.identity, quick=args.quick)
    command = command_line("network", "avcall bench network")
    sequences, codes = heldout_caches(cfg)
    data = heldout_codes(cfg.identity, cfg.sessions, cfg.clip_s, cfg.fps, sequence_cache=sequences, codes_cache=codes,
                         progress=True)
    r = bench_network(cfg, data, command=command, progress=True)
    if args.out_dir:
        for path in write_results(r, args.out_dir):
            print(f"wrote {path}", file=sys.stderr)
    if args.json:
        print(json.dumps(json_safe(r)))
    else:
        print(render_markdown(r))
    return 0
