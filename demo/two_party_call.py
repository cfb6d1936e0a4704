"""A two-party call on this machine, from Python: ``python -m demo.two_party_call [SECONDS] [OUT_DIR]``.

The same as ``avcall call``: alice and bob each wear a synthetic headset; each
sees the other's avatar. Prints where the videos and the latency report are.
"""
from __future__ import annotations

import logging
import sys

from runtime.call import CallConfig, run_call, summary_lines


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING)
    seconds = float(argv[0]) if argv else 8.0
    out = argv[1] if len(argv) > 1 else "avcall_demo"
    report = run_call(CallConfig(out_dir=out, seconds=seconds))
    print("\n".join(summary_lines(report)))
    for viewer, video in report["videos"].items():
        print(f"{viewer}'s view: {video['path']}")
    print(f"latency report: {report['report']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
