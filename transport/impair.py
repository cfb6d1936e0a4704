"""Network impairment on a transmit path, in-process: loss (random or bursty), jitter, reordering, duplication.

This machine cannot shape its interfaces (no ``tc netem``), so a sender can impair its own
transmit path instead: ``--impair loss=5%,burst=3,jitter=20ms,reorder=1%,dup=1%,seed=7``.
Every message gets one :class:`Verdict` from :class:`ImpairmentModel`, which is a pure
function of the seed and the message's position in the sequence: the same seed gives the
same drops, delays and copies for the same message sequence, on any machine.

The model (``docs/runtime.md``, "Network impairment"):

* **loss** ``L`` with **burst** ``B``: ``B == 1`` (default) drops each message independently
  with probability ``L``; ``B > 1`` is a Gilbert–Elliott chain (good state: nothing lost,
  bad state: everything lost) whose loss runs last ``B`` messages on average and whose
  stationary loss is ``L`` (``P(bad -> good) = 1/B``, ``P(good -> bad) = L / (B (1 - L))``);
* **jitter** ``J`` ms: each message is held an extra delay drawn uniformly from ``[0, 2J]``
  (mean ``J``), on top of a constant **delay** (default 0); messages therefore overtake
  each other when ``J`` is comparable with the frame interval;
* **reorder** ``R``: a share ``R`` of messages is held a further 1-3 x ``reorder_ms``
  (default 33 ms, one frame at 30 fps), so they arrive after their successors;
* **dup** ``D``: a share ``D`` of messages is sent twice, the copy with its own jitter.

:class:`DelayLine` applies the verdicts to real sends: a thread that owns the send function
(a ZeroMQ socket is used by one thread only) and releases each message at its due time.
numpy-free and torch-free; the standard library only.
"""
from __future__ import annotations

import heapq
import itertools
import math
import random
import re
import threading
import time
from dataclasses import asdict, dataclass
from typing import Callable

__all__ = ["DelayLine", "ImpairmentModel", "ImpairmentSpec", "ImpairmentStats", "Verdict", "parse_impairment"]

SPEC_HELP = "loss=P%,burst=N,jitter=Nms,delay=Nms,reorder=P%,reorder_ms=N,dup=P%,seed=N (every key optional)"
"""The grammar of an impairment spec, for error messages and ``--help``."""


class ImpairmentError(ValueError):
    """An impairment spec that cannot be parsed; the message is one line."""


@dataclass(frozen=True)
class ImpairmentSpec:
    """What to do to a message stream. All-zero (the default) changes nothing."""

    loss: float = 0.0
    """Stationary share of messages dropped, 0..1 (written in percent: ``loss=5%``)."""
    burst: float = 1.0
    """Mean length of a run of lost messages; 1 = independent (Bernoulli) loss, > 1 = Gilbert–Elliott."""
    jitter_ms: float = 0.0
    """Mean extra delay per message; the delay is uniform in ``[0, 2 jitter_ms]``."""
    delay_ms: float = 0.0
    """Constant delay added to every message."""
    reorder: float = 0.0
    """Share of messages held back a further 1-3 x ``reorder_ms`` (they arrive after later ones)."""
    reorder_ms: float = 33.0
    """Unit of the extra hold of a reordered message (one frame at 30 fps)."""
    dup: float = 0.0
    """Share of messages sent twice (the copy with its own jitter)."""
    seed: int = 1
    """Seed of the decisions: the same seed gives the same verdicts for the same message sequence."""

    def __post_init__(self) -> None:
        for name in ("loss", "reorder", "dup"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0 or math.isnan(v):
                raise ImpairmentError(f"impairment {name} must be 0..100%, got {v!r}")
        if self.loss >= 1.0:
            raise ImpairmentError("impairment loss must be below 100%")
        if not isinstance(self.burst, (int, float)) or not 1.0 <= self.burst <= 1000.0:
            raise ImpairmentError(f"impairment burst must be a mean run length from 1 to 1000 messages, got {self.burst!r}")
        for name in ("jitter_ms", "delay_ms", "reorder_ms"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0.0 <= v <= 10_000.0:
                raise ImpairmentError(f"impairment {name.replace('_ms', '')} must be 0..10000 ms, got {v!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ImpairmentError(f"impairment seed must be an integer >= 0, got {self.seed!r}")

    @property
    def active(self) -> bool:
        """True when the spec changes anything."""
        return bool(self.loss or self.jitter_ms or self.delay_ms or self.reorder or self.dup)

    def describe(self) -> str:
        """The spec in its own grammar (parses back to an equal spec)."""
        parts = [f"loss={100 * self.loss:g}%", f"burst={self.burst:g}", f"jitter={self.jitter_ms:g}ms"]
        if self.delay_ms:
            parts.append(f"delay={self.delay_ms:g}ms")
        parts += [f"reorder={100 * self.reorder:g}%"]
        if self.reorder_ms != ImpairmentSpec.reorder_ms:
            parts.append(f"reorder_ms={self.reorder_ms:g}")
        parts += [f"dup={100 * self.dup:g}%", f"seed={self.seed}"]
        return ",".join(parts)

    def to_dict(self) -> dict:
        return asdict(self)


_NUM = r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_PCT = re.compile(rf"^{_NUM}%?$")
_MS = re.compile(rf"^{_NUM}(ms|s)?$")
_INT = re.compile(r"^[0-9]+$")


def parse_impairment(text: str) -> ImpairmentSpec:
    """``"loss=5%,burst=3,jitter=20ms,reorder=1%,dup=1%,seed=7"`` -> :class:`ImpairmentSpec`.

    Shares are percentages (the ``%`` is optional: ``loss=5`` is 5%); times are milliseconds
    (``20ms``, ``20`` or ``0.02s``). Keys may come in any order, each at most once; an empty
    string is no impairment. Anything else raises :class:`ImpairmentError` with one line."""
    text = (text or "").strip()
    if not text:
        return ImpairmentSpec()
    kw: dict = {}
    keys = {"loss": ("loss", "pct"), "burst": ("burst", "float"), "jitter": ("jitter_ms", "ms"),
            "delay": ("delay_ms", "ms"), "reorder": ("reorder", "pct"), "reorder_ms": ("reorder_ms", "ms"),
            "dup": ("dup", "pct"), "seed": ("seed", "int")}
    for item in text.split(","):
        key, sep, value = (s.strip().lower() for s in item.partition("="))
        if not sep or not key or not value:
            raise ImpairmentError(f"impairment spec {text!r}: expected KEY=VALUE items, got {item.strip()!r}; {SPEC_HELP}")
        if key not in keys:
            raise ImpairmentError(f"impairment spec {text!r}: unknown key {key!r}; {SPEC_HELP}")
        field, kind = keys[key]
        if field in kw:
            raise ImpairmentError(f"impairment spec {text!r}: {key} given twice")
        m = {"pct": _PCT, "ms": _MS, "int": _INT, "float": _PCT}[kind].match(value)
        if m is None or (kind == "float" and value.endswith("%")):
            raise ImpairmentError(f"impairment spec {text!r}: bad value for {key}: {value!r}; {SPEC_HELP}")
        if kind == "pct":
            kw[field] = float(m.group(1)) / 100.0
        elif kind == "ms":
            kw[field] = float(m.group(1)) * (1000.0 if m.group(2) == "s" else 1.0)
        elif kind == "int":
            kw[field] = int(value)
        else:
            kw[field] = float(value)
    return ImpairmentSpec(**kw)


@dataclass(frozen=True)
class Verdict:
    """What happens to one message: dropped, or sent after ``delays_ms`` (one entry per copy)."""

    dropped: bool
    delays_ms: tuple[float, ...]
    """Delay of each copy sent (empty when dropped; two entries when duplicated)."""
    reordered: bool = False


@dataclass
class ImpairmentStats:
    """Counts of what an :class:`ImpairmentModel` did."""

    messages: int = 0
    dropped: int = 0
    duplicated: int = 0
    reordered: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class ImpairmentModel:
    """The seeded decision for each message in order (see the module doc for the model).

    Every message consumes the same count of random numbers whatever the outcome, so the
    verdict of message ``k`` depends only on the seed, ``k`` and the spec."""

    def __init__(self, spec: ImpairmentSpec) -> None:
        self.spec = spec
        self._rng = random.Random(spec.seed)
        self._bad = False
        self.stats = ImpairmentStats()
        if spec.burst > 1.0 and spec.loss > 0:
            self._p_good_bad = spec.loss / (spec.burst * (1.0 - spec.loss))
            self._p_bad_good = 1.0 / spec.burst
            if self._p_good_bad > 1.0:
                raise ImpairmentError(f"impairment loss {100 * spec.loss:g}% with burst {spec.burst:g} is impossible "
                                      "(the loss runs would overlap); lower one of them")
        else:
            self._p_good_bad = self._p_bad_good = 0.0

    def next(self) -> Verdict:
        """The verdict of the next message."""
        s, r = self.spec, self._rng
        u_loss, u_jit, u_reo, u_reo_n, u_dup, u_dup_jit = (r.random() for _ in range(6))
        self.stats.messages += 1
        if s.burst > 1.0 and s.loss > 0:
            self._bad = (u_loss >= self._p_bad_good) if self._bad else (u_loss < self._p_good_bad)
            lost = self._bad
        else:
            lost = u_loss < s.loss
        if lost:
            self.stats.dropped += 1
            return Verdict(True, ())
        delay = s.delay_ms + 2.0 * s.jitter_ms * u_jit
        reordered = u_reo < s.reorder
        if reordered:
            delay += s.reorder_ms * (1.0 + 2.0 * u_reo_n)
            self.stats.reordered += 1
        delays = (delay,)
        if u_dup < s.dup:
            delays = (delay, s.delay_ms + 2.0 * s.jitter_ms * u_dup_jit)
            self.stats.duplicated += 1
        return Verdict(False, delays, reordered)


class DelayLine:
    """Applies an :class:`ImpairmentModel` to a send function: ``send(data)`` returns at once; a thread
    calls ``sink(data)`` for each surviving copy at its due time (with no delay, at once, in order).

    The thread is the only caller of ``sink`` from the first message on: give it a socket no other
    thread uses. ``close()`` stops the thread; messages still waiting are discarded (counted in
    ``discarded``), as a network loses what is in flight when a link goes down."""

    def __init__(self, spec: ImpairmentSpec, sink: Callable[[bytes], None], clock: Callable[[], float] = time.monotonic,
                 on_error: Callable[[BaseException], None] | None = None) -> None:
        self.model = ImpairmentModel(spec)
        self.sink = sink
        self.clock = clock
        self.on_error = on_error
        self.discarded = 0
        self.errors = 0
        self._heap: list[tuple[float, int, bytes]] = []
        self._order = itertools.count()
        self._cv = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="avcall-impair", daemon=True)
        self._thread.start()

    @property
    def stats(self) -> ImpairmentStats:
        return self.model.stats

    def send(self, data: bytes) -> None:
        v = self.model.next()
        if v.dropped:
            return
        now = self.clock()
        with self._cv:
            for d in v.delays_ms:
                heapq.heappush(self._heap, (now + d / 1000.0, next(self._order), data))
            self._cv.notify()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._closed and (not self._heap or self._heap[0][0] > self.clock()):
                    self._cv.wait(None if not self._heap else max(0.0, self._heap[0][0] - self.clock()))
                if self._closed:
                    return
                _, _, data = heapq.heappop(self._heap)
            try:
                self.sink(data)
            except Exception as exc:  # a full PUB queue or a closed peer: the message is lost, as on a network
                self.errors += 1
                if self.on_error is not None:
                    self.on_error(exc)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self.discarded = len(self._heap)
            self._heap.clear()
            self._cv.notify()
        self._thread.join(timeout=5.0)

    def report(self) -> dict:
        return {"spec": self.model.spec.describe(), **self.stats.to_dict(), "discarded_at_close": self.discarded,
                "send_errors": self.errors}
