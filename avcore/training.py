"""The training scaffold every trainer shares: checkpoints, resume, limits, progress, Ctrl-C.

A trainer owns its model, data and loss; this module owns the loop around them::

    ckpt = load_checkpoint(path) if resume else None          # None: start fresh
    ... build model/optimizer, load their state_dicts from ckpt ...
    loop = TrainingLoop(path, lambda: {"model": model.state_dict(), "optimizer": opt.state_dict(), ...},
                        steps=cfg.steps, time_budget_s=cfg.time_budget_s, checkpoint_every_s=cfg.checkpoint_every_s,
                        step=ckpt["step"] if ckpt else 0, elapsed_s=ckpt["elapsed_s"] if ckpt else 0.0,
                        desc="train decoder S1", progress=True)
    for step, frac in loop:      # step: 1, 2, ... (counting resumed ones); frac in [0, 1]: how far along the
        ... one optimisation step (learning rate from frac) ...      # nearer limit (steps or time) the run is
        loop.report({"total": f"{loss:.4g}"})   # progress-bar postfix
    # here: limit reached, final checkpoint written; a SIGINT raised KeyboardInterrupt after checkpointing

Checkpoints are ``torch.save`` of a dict of tensors, state_dicts and JSON-able values (never a pickled
object: :func:`save_checkpoint` refuses anything else, and :func:`load_checkpoint` reads with
``weights_only=True``), written atomically (temporary file, then rename), with ``step`` and ``elapsed_s``
(training seconds so far, summed over resumed runs) added by the loop.

Torch is imported inside the functions; only training code imports this module.
"""
from __future__ import annotations

import math
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from .errors import UsageError

CHECKPOINT_FILE = "checkpoint.pt"
"""Name of the resumable checkpoint inside a run directory."""


def _check_plain(value, where: str = "checkpoint") -> None:
    """Raise TypeError unless ``value`` is tensors / numbers / strings / None in dicts, lists and tuples."""
    import torch

    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where}: key {k!r} is a {type(k).__name__}; checkpoint keys are str or int")
            _check_plain(v, f"{where}[{k!r}]")
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    raise TypeError(f"{where} is a {type(value).__name__}; checkpoints hold only tensors, state_dicts and "
                    "JSON-able values (convert it, e.g. numpy -> torch.from_numpy, dataclass -> dict)")


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write ``state`` (tensors, state_dicts, JSON-able values) to ``path`` atomically.

    The file is written next to ``path`` first and renamed over it, so an interrupted save never leaves a
    truncated checkpoint. Raises TypeError (before writing) for anything ``weights_only`` loading would refuse.
    """
    import torch

    _check_plain(state)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


RUN_LENGTH_FIELDS = ("steps", "time_budget_s", "checkpoint_every_s", "threads")
"""Settings of a resumed run that come from the caller (how long to go on, on how many threads); the others
(data, architecture, losses) come from the checkpoint."""


def open_run(out_dir: str | Path, resume: bool) -> tuple[Path, Path, dict | None]:
    """(``out_dir``, its checkpoint path, the checkpoint when resuming and there is one): the directory is made."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / CHECKPOINT_FILE
    return out_dir, path, load_checkpoint(path) if resume else None


def resumed_config(cls, saved: dict, current):
    """``cls.from_dict(saved)`` with the :data:`RUN_LENGTH_FIELDS` of ``current`` (the caller's config)."""
    return cls.from_dict({**saved, **{k: getattr(current, k) for k in RUN_LENGTH_FIELDS if hasattr(current, k)}})


def load_checkpoint(path: str | Path) -> dict | None:
    """The checkpoint at ``path`` (CPU tensors, ``weights_only=True``), or None if there is none."""
    import torch

    path = Path(path)
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


class TrainingLoop:
    """A step loop bounded by ``steps`` and ``time_budget_s`` (whichever comes first), checkpointing.

    Iterating yields, before each step, ``(step, frac)``: the number the step will have once taken (1 for the
    first step of a fresh run) and ``frac`` = max(steps done / steps, elapsed / budget) clipped to 1, the share
    of the nearer limit used so far (trainers stretch their learning-rate schedule over it). After each
    step the loop counts it, moves the progress bar (per mille of the nearer limit, so the ETA is real) and
    writes a checkpoint when ``checkpoint_every_s`` have passed since the last one. When a limit is reached
    it writes the final checkpoint and stops.

    ``snapshot()`` returns the checkpoint's content (state_dicts, configs as dicts, history); the loop adds
    ``step`` and ``elapsed_s``. While iterating in the main thread, SIGINT (Ctrl-C) lets the current step
    finish, writes the checkpoint, prints where it is on stderr and raises KeyboardInterrupt; a second SIGINT
    interrupts at once. If the loop body raises, nothing is written.
    """

    def __init__(self, checkpoint_path: str | Path, snapshot: Callable[[], dict], *, steps: int, time_budget_s: float,
                 checkpoint_every_s: float = math.inf, step: int = 0, elapsed_s: float = 0.0, desc: str = "train",
                 progress: bool = True, handle_sigint: bool = True):
        if steps < 0 or not time_budget_s >= 0:
            raise UsageError(f"steps ({steps}) and time_budget_s ({time_budget_s}) must be >= 0")
        self.checkpoint_path = Path(checkpoint_path)
        self.snapshot = snapshot
        self.steps = int(steps)
        self.time_budget_s = float(time_budget_s)
        self.checkpoint_every_s = float(checkpoint_every_s)
        self.step = int(step)
        """Steps taken so far, counting those before a resume."""
        self.elapsed_s = float(elapsed_s)
        """Training seconds so far, counting those before a resume (updated every step)."""
        self.desc = desc
        self.progress = progress
        self.handle_sigint = handle_sigint
        self.interrupted = False
        """True once a SIGINT asked the loop to stop."""
        self.stopped_by: str | None = None
        """Why the loop ended: "steps", "time" or "interrupt"."""
        self._postfix: dict = {}

    # ------------------------------------------------------------------ used by the loop body
    def report(self, postfix: dict) -> None:
        """Values shown after the bar (with the step number) once the current step is counted."""
        self._postfix = postfix

    def save(self) -> None:
        """Write the checkpoint now (``snapshot()`` + step + elapsed_s)."""
        save_checkpoint(self.checkpoint_path, {**self.snapshot(), "step": self.step, "elapsed_s": self.elapsed_s})

    # ------------------------------------------------------------------ the loop
    def _on_sigint(self, signum, frame) -> None:
        if self.interrupted:  # second Ctrl-C: stop now, without a checkpoint
            raise KeyboardInterrupt
        self.interrupted = True

    def __iter__(self) -> Iterator[tuple[int, float]]:
        from .progress import progress

        previous = None
        if self.handle_sigint and threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGINT, self._on_sigint)
        bar = progress(total=1000, desc=self.desc, unit="‰", disable=not self.progress, mininterval=5.0,
                       dynamic_ncols=True, bar_format="{l_bar}{bar}| {elapsed}<{remaining}{postfix}")
        elapsed0 = self.elapsed_s
        t_start = time.perf_counter()
        last_ckpt = t_start
        try:
            while True:
                if self.interrupted:
                    self.stopped_by = "interrupt"
                    break
                if self.step >= self.steps:
                    self.stopped_by = "steps"
                    break
                self.elapsed_s = elapsed0 + time.perf_counter() - t_start
                if self.elapsed_s >= self.time_budget_s:
                    self.stopped_by = "time"
                    break
                frac = min(1.0, max(self.step / self.steps, self.elapsed_s / self.time_budget_s))
                yield self.step + 1, frac
                self.step += 1
                bar.update(int(1000 * frac) - bar.n)
                bar.set_postfix({"step": self.step, **self._postfix}, refresh=False)
                now = time.perf_counter()
                if now - last_ckpt >= self.checkpoint_every_s:
                    self.elapsed_s = elapsed0 + now - t_start
                    self.save()
                    last_ckpt = now
            self.elapsed_s = elapsed0 + time.perf_counter() - t_start
            self.save()
        finally:
            bar.close()
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        if self.stopped_by == "interrupt":
            print(f"{self.desc}: interrupted at step {self.step}; checkpoint saved to {self.checkpoint_path} "
                  "(run the same command to resume)", file=sys.stderr)
            raise KeyboardInterrupt(f"interrupted at step {self.step}")
