"""Entry point of one sender or receiver process: ``python -m runtime.proc CONFIG.json``.

The config file is written by :func:`runtime.config.save_config` (JSON, never
pickled). SIGTERM and SIGINT stop the loop cleanly, so reports are written;
SIGKILL is what a crash looks like.
"""
from __future__ import annotations

import logging
import signal
import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m runtime.proc CONFIG.json", file=sys.stderr)
        return 2
    from .config import load_config
    from .launch import die_with_parent

    die_with_parent()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    from avcore.errors import UsageError

    try:
        run_config(load_config(argv[0]))
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def run_config(cfg) -> dict:
    """Run a sender or receiver config in this process until it ends or SIGTERM/SIGINT; returns its report."""
    from .config import ReceiverConfig, SenderConfig

    stop = {"flag": False}

    def _stop(signum, frame):  # noqa: ARG001
        stop["flag"] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    if isinstance(cfg, SenderConfig):
        from .sender import run_sender

        return run_sender(cfg, lambda: stop["flag"])
    if isinstance(cfg, ReceiverConfig):
        from .receiver import run_receiver

        return run_receiver(cfg, lambda: stop["flag"])
    raise TypeError(f"not a sender or receiver config: {type(cfg).__name__}")


if __name__ == "__main__":
    sys.exit(main())
