"""The ``avcall`` command: one entry point, one subcommand per job.

Each subcommand lives in a module under ``avcall/`` that exposes
``register(subparsers)``; the handler it sets (``func``) parses nothing
itself and calls one library function. Modules are imported when the parser
is built, so they keep heavy imports (torch, moderngl) inside their handlers.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# Order is the order shown by ``avcall --help``.
COMMAND_MODULES = (
    "avcall.call_cmds",
    "avcall.capture",
    "avcall.record",
    "avcall.replay",
    "avcall.train",
    "avcall.eval",
    "avcall.bench",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avcall",
        description=(
            "avcall: real-time codec-avatar telepresence. A sender encodes headset-camera "
            "(HMC) frames into a latent code and streams it; a receiver decodes and renders "
            "the avatar. Run 'avcall COMMAND --help' for each command."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError) as exc:
        # User-facing errors (bad file, bad argument value): one clear line, no traceback.
        print(f"avcall {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
