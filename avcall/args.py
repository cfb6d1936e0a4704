"""Argument helpers shared by the command modules: help layout, value types, the LATEX options."""
from __future__ import annotations

import argparse
import math
import shlex
import sys

from avcore.errors import UsageError


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Descriptions and epilogs as written (examples keep their lines); every option shows its default."""

    def _get_help_string(self, action):  # no "(default: None/False)" noise on flags and empty options
        if action.default in (None, False, "", argparse.SUPPRESS) or "%(default)" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _finite(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return v


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    v = _finite(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return v


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    v = _finite(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return v


def _int_at_least(text: str, low: int) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}, got {text}")
    return v


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0)


def int_list(text: str) -> tuple[int, ...]:
    """argparse type: comma-separated integers >= 0 (camera device numbers)."""
    try:
        values = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected device numbers like 0 or 0,1,2, got {text!r}") from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"device numbers are >= 0, got {text!r}")
    return values


def add_latex_args(p: argparse.ArgumentParser) -> None:
    """``--latex`` and its gate settings; defaults from :class:`encoder.latex.LatexConfig`."""
    from encoder.latex import LatexConfig

    d = LatexConfig()
    p.add_argument("--latex", action="store_true",
                   help="skip encoder runs on redundant frames (LATEX gate; the encoder directory needs early.onnx "
                   "and latex.json from 'avcall train latex'); skipped frames carry extrapolated codes")
    p.add_argument("--latex-skip-ratio", type=float, default=d.skip_ratio, metavar="R",
                   help="--latex: target share of skipped frames, via the calibrated threshold")
    p.add_argument("--latex-threshold", type=float, default=None, metavar="D",
                   help="--latex: gate threshold (overrides --latex-skip-ratio)")
    p.add_argument("--latex-history", type=int, default=d.history, metavar="T", help="--latex: codes extrapolated from")
    p.add_argument("--latex-max-skips", type=int, default=d.max_skips, metavar="N",
                   help="--latex: most frames skipped in a row (0 = no bound)")


def latex_from_args(args: argparse.Namespace):
    """The :class:`encoder.latex.LatexConfig` the options ask for, or None without ``--latex``."""
    from encoder.latex import LatexConfig

    given = [f for f in ("latex_threshold",) if getattr(args, f) is not None]
    if not args.latex:
        if given:
            raise UsageError("--latex-threshold has no effect without --latex")
        return None
    return LatexConfig(history=args.latex_history, threshold=args.latex_threshold, skip_ratio=args.latex_skip_ratio,
                       max_skips=args.latex_max_skips)


def command_line(word: str, fallback: str) -> str:
    """The command that made a result, for its file: this process's own ``avcall …`` line when it ran the
    command (``word`` is among its arguments), else ``fallback`` (called from Python)."""
    argv = sys.argv[1:]
    return "avcall " + " ".join(shlex.quote(a) for a in argv) if word in argv else fallback
