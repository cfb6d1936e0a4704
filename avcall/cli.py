"""The ``avcall`` command: one entry point, one subcommand per job.

Each subcommand lives in a module under ``avcall/`` that exposes
``register(subparsers)``; the handler it sets (``func``) parses nothing
itself and calls one library function. Modules are imported when the parser
is built, so they keep heavy imports (torch, moderngl) inside their handlers.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from avcore.errors import UsageError
from runtime.launch import WorkerFailed

__all__ = ["UsageError", "build_parser", "main"]

# Order is the order shown by ``avcall --help``.
COMMAND_MODULES = (
    "avcall.call_cmds",
    "avcall.capture",
    "avcall.record",
    "avcall.replay",
    "avcall.train",
    "avcall.eval",
    "avcall.bench",
    "avcall.search",
    "avcall.distill",
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
    parser.add_argument("--version", action="version", version=f"avcall {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def version() -> str:
    """The installed package's version (the source tree's when it is not installed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as _version

    try:
        return _version("avcall")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0+unknown"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (UsageError, FileNotFoundError) as exc:
        # A bad input the user can fix: one clear line, no traceback. Anything else is a bug and keeps its traceback.
        msg = str(exc) if not isinstance(exc, FileNotFoundError) or not exc.filename else f"{exc.strerror}: {exc.filename}"
        print(f"avcall {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except WorkerFailed as exc:
        # A sender or receiver process of a call/bench failed: its last log line and where the whole log is.
        print(f"avcall {args.command}: failed: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (``avcall ... | head``): stop quietly, and keep Python from complaining at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
