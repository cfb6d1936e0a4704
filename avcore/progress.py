"""Progress bars for long jobs (training, rendering data, evaluations, recordings).

On a terminal this is an ordinary tqdm bar. When stderr is redirected (a log
file, CI), tqdm's carriage-return redraws would fill the log with noise, so the
bar writes one plain line at most every ``log_interval_s`` seconds instead.
"""
from __future__ import annotations

import sys
from typing import Any, Iterable

LOG_INTERVAL_S = 15.0
"""Seconds between progress lines when stderr is not a terminal."""


class _LineWriter:
    """A file-like wrapper that turns tqdm's ``\\r``-redraws into whole lines."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, s: str) -> None:
        text = s.replace("\r", "").rstrip()
        if text:
            self._stream.write(text + "\n")

    def flush(self) -> None:
        self._stream.flush()


def is_terminal(stream=None) -> bool:
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def progress(iterable: Iterable | None = None, *, total: float | None = None, desc: str = "", unit: str = "it",
             disable: bool = False, log_interval_s: float = LOG_INTERVAL_S, **kwargs: Any):
    """A tqdm bar over ``iterable`` (or a manual one with ``total``); plain lines when stderr is not a terminal."""
    from tqdm import tqdm

    if not is_terminal():
        kwargs["file"] = _LineWriter(sys.stderr)
        kwargs["mininterval"] = max(float(kwargs.get("mininterval", 0.1)), log_interval_s)
        kwargs["maxinterval"] = max(float(kwargs.get("maxinterval", 10.0)), log_interval_s)
        kwargs.setdefault("ncols", 100)
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, **kwargs)
