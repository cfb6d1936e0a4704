"""Start sender/receiver processes and watch their status files (used by ``avcall call``, the bench and tests).

Processes are ``python -m runtime.proc CONFIG.json`` children. Coordination is
through the JSON status files they rewrite a few times a second: a launcher
polls them with a deadline (never sleeps a guessed time), e.g. to learn the port
a receiver bound before starting the sender that connects to it.

Children never outlive their launcher: each runs in its own session (a Ctrl-C
at the terminal reaches the launcher, which stops them in order) and asks the
kernel for SIGTERM when its parent dies (``PR_SET_PDEATHSIG``), so a launcher
that is killed, even with SIGKILL, takes its workers with it.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from .config import ReceiverConfig, SenderConfig, save_config

PARENT_PID_ENV = "AVCALL_PARENT_PID"
"""Environment variable with the launcher's pid (see :func:`die_with_parent`)."""


def die_with_parent() -> None:
    """In a worker: ask for SIGTERM when the launcher dies; exit now if it already has (Linux; elsewhere a no-op)."""
    expected = os.environ.get(PARENT_PID_ENV)
    if not expected or not sys.platform.startswith("linux"):
        return
    import ctypes

    PR_SET_PDEATHSIG = 1
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - no prctl
        return
    if os.getppid() != int(expected):  # the launcher died before the request was armed
        os._exit(3)


class WorkerFailed(RuntimeError):
    """A worker process exited or did not come up in time; ``log_path`` holds its output."""

    def __init__(self, message: str, log_path: Path | None = None, log_tail: str = "") -> None:
        super().__init__(message)
        self.log_path = log_path
        self.log_tail = log_tail


class Worker:
    """One child process running a sender or receiver config."""

    def __init__(self, name: str, cfg: SenderConfig | ReceiverConfig, workdir: str | Path, *, log_to_file: bool = True,
                 env: dict | None = None) -> None:
        self.name = name
        self.cfg = cfg
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / f"{name}.config.json"
        self.log_path = self.workdir / f"{name}.log"
        if not cfg.status_path:
            cfg.status_path = str(self.workdir / f"{name}.status.json")
        self.proc: subprocess.Popen | None = None
        self._log_to_file = log_to_file
        self._env = env

    @property
    def status_path(self) -> Path:
        return Path(self.cfg.status_path)

    def start(self) -> "Worker":
        save_config(self.cfg, self.config_path)
        Path(self.cfg.status_path).unlink(missing_ok=True)
        env = dict(os.environ if self._env is None else self._env)
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env[PARENT_PID_ENV] = str(os.getpid())  # the child checks it is still ours after arming PDEATHSIG
        out = open(self.log_path, "ab") if self._log_to_file else None
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "runtime.proc", str(self.config_path)], env=env,
                                         stdout=out, stderr=subprocess.STDOUT if out else None,
                                         start_new_session=True)
        finally:
            if out is not None:
                out.close()
        return self

    def status(self) -> dict[str, Any] | None:
        """The latest status, or None if there is none yet."""
        try:
            return json.loads(self.status_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def wait_status(self, predicate: Callable[[dict], bool], timeout_s: float, poll_s: float = 0.05) -> dict:
        """Poll the status file until ``predicate(status)``; raises :class:`WorkerFailed` (with the log tail) if the
        process exits first or the condition is not reached in ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            st = self.status()
            if st is not None and predicate(st):
                return st
            if self.proc is not None and self.proc.poll() is not None:
                tail = self.log_tail()
                last = next((ln for ln in reversed(tail.splitlines()) if ln.strip()), "")
                raise WorkerFailed(f"{self.name} exited with {self.proc.returncode}: {last} (log: {self.log_path})",
                                   self.log_path, tail)
            if time.monotonic() > deadline:
                raise WorkerFailed(f"{self.name} did not come up in {timeout_s:.0f} s (log: {self.log_path})",
                                   self.log_path, self.log_tail())
            time.sleep(poll_s)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM (clean stop, reports written), SIGKILL if it does not exit in ``timeout_s``."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: what a crash looks like."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def wait(self, timeout_s: float) -> int | None:
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None


def wait_quiet(worker: Worker, key: str = "presented", quiet_s: float = 0.5, timeout_s: float = 10.0) -> None:
    """Wait until ``status[key]`` has not changed for ``quiet_s`` (frames in flight were presented)."""
    deadline = time.monotonic() + timeout_s
    last, since = object(), time.monotonic()
    while worker.alive() and time.monotonic() < deadline:
        value = (worker.status() or {}).get(key)
        if value != last:
            last, since = value, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.05)
