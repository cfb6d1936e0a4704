"""One session runner: a topology of sender → receiver links, run as worker processes, one merged result.

``avcall call``, ``avcall demo`` and ``avcall bench e2e`` are all a list of
:class:`Link` s (a speaker's sender streaming to a viewer's receiver). The
runner starts every receiver on a free loopback port, waits for the ports,
starts the senders connected to them, waits for the senders to finish (or
stops them at a deadline), lets the receivers present what is in flight, stops
them, and reads each worker's report exactly once.

Ctrl-C or SIGTERM while it runs stops the workers in the same order (senders
first, so the receivers see the end of the stream), keeps every report that was
written and marks the result ``interrupted``: what was captured is kept.
"""
from __future__ import annotations

import json
import logging
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .config import ReceiverConfig, SenderConfig
from .launch import Worker, wait_quiet

log = logging.getLogger(__name__)

RECEIVER_IDLE_STOP_S = 30.0
"""Receivers a session starts stop by themselves after this long without frames (a bound, should the launcher hang)."""


@dataclass
class Link:
    """One stream: ``sender`` (the speaker's headset) → ``receiver`` (rendered for the viewer)."""

    name: str
    """Stream id (the speaker)."""
    sender: SenderConfig
    """Endpoints are filled in from the receiver's bound ports."""
    receiver: ReceiverConfig
    """Should bind a wildcard port (``tcp://127.0.0.1:*``)."""
    viewer: str = ""
    """Who sees this stream (a label)."""


@dataclass
class LinkResult:
    link: Link
    sender_report: dict | None
    """The sender's report (None if it wrote none: it failed or was killed)."""
    receiver_report: dict | None
    sender_exit: int | None
    receiver_exit: int | None
    sender_log: str = ""
    receiver_log: str = ""


@dataclass
class SessionResult:
    links: list[LinkResult] = field(default_factory=list)
    wall_s: float = 0.0
    interrupted: bool = False
    """Ctrl-C / SIGTERM ended the session early; the reports hold what was captured until then."""

    def failures(self) -> list[str]:
        """Readable lines for workers that failed (non-zero exit or no report), with their log tails."""
        out = []
        for r in self.links:
            for role, rep, code, tail in (("sender", r.sender_report, r.sender_exit, r.sender_log),
                                          ("receiver", r.receiver_report, r.receiver_exit, r.receiver_log)):
                if rep is None or (code not in (0, None) and not self.interrupted):
                    out.append(f"{r.link.name} {role} failed (exit {code}):\n{tail}")
        return out


@contextmanager
def sigterm_as_interrupt():
    """Within the block, SIGTERM raises KeyboardInterrupt in the main thread (so cleanup runs as for Ctrl-C)."""
    def _raise(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, _raise)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _read(path: str) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _wait_for_senders(senders: dict[str, Worker], receivers: dict[str, Worker], seconds: float, deadline: float,
                      progress: bool) -> None:
    """Wait until every sender has exited (stopping those still running at ``deadline``), showing progress."""
    from avcore.progress import progress as bar

    started = time.monotonic()
    with bar(total=round(seconds, 1), desc="streaming", unit="s", disable=not progress,
             bar_format="{desc}: {n:.1f}/{total:.1f} s |{bar}| {postfix}") as b:
        while any(w.alive() for w in senders.values()):
            if time.monotonic() > deadline:
                for name, w in senders.items():
                    if w.alive():
                        log.warning("sender %s overran; stopping it", name)
                        w.stop()
                break
            time.sleep(0.2)
            b.n = min(seconds, round(time.monotonic() - started, 1))
            shown = {n: (w.status() or {}).get("presented", 0) for n, w in receivers.items()}
            b.set_postfix_str("presented " + ", ".join(f"{n} {v}" for n, v in shown.items()), refresh=True)


def run_session(links: list[Link], workdir: str | Path, *, seconds: float, startup_timeout_s: float = 120.0,
                idle_stop_s: float = RECEIVER_IDLE_STOP_S, progress: bool = True) -> SessionResult:
    """Run ``links`` as worker processes (logs, configs and reports in ``workdir``); see the module doc.

    With ``progress``, a bar on stderr follows the streaming seconds (frames presented so far in its label)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    receivers: dict[str, Worker] = {}
    senders: dict[str, Worker] = {}
    interrupted = False
    t_start = time.monotonic()
    for ln in links:
        ln.receiver.report_path = ln.receiver.report_path or str(workdir / f"{ln.name}_receiver.json")
        ln.sender.report_path = ln.sender.report_path or str(workdir / f"{ln.name}_sender.json")
        if not ln.receiver.stop_after_idle_s:
            ln.receiver.stop_after_idle_s = idle_stop_s
    try:
        with sigterm_as_interrupt():
            for ln in links:
                receivers[ln.name] = Worker(f"{ln.name}_receiver", ln.receiver, workdir).start()
            for ln in links:
                st = receivers[ln.name].wait_status(lambda s: bool(s.get("endpoint")), startup_timeout_s)
                ln.sender.endpoint, ln.sender.clock_endpoint, ln.sender.bind = st["endpoint"], st["clock_endpoint"], False
                senders[ln.name] = Worker(f"{ln.name}_sender", ln.sender, workdir).start()
            # Senders stop by themselves after ``seconds``; a generous deadline covers start-up.
            _wait_for_senders(senders, receivers, seconds, time.monotonic() + seconds + startup_timeout_s, progress)
            # Let the receivers present what is in flight (until their count stops moving), then stop them. A
            # display-clock receiver keeps presenting (new views of the last code): its count of codes shown is
            # what stops moving.
            for ln in links:
                wait_quiet(receivers[ln.name], key="presented" if ln.receiver.render == "raster" else "codes_presented")
    except KeyboardInterrupt:
        interrupted = True
        log.warning("interrupted: stopping the session and keeping what was captured")
    finally:
        with sigterm_as_interrupt():
            try:
                for w in [*senders.values(), *receivers.values()]:
                    w.stop()  # SIGTERM: a clean stop, reports and videos written
            except KeyboardInterrupt:  # a second Ctrl-C: no more patience
                interrupted = True
            finally:
                for w in [*senders.values(), *receivers.values()]:
                    w.kill()
    result = SessionResult(wall_s=time.monotonic() - t_start, interrupted=interrupted)
    for ln in links:
        tx, rx = senders.get(ln.name), receivers.get(ln.name)
        result.links.append(LinkResult(
            link=ln, sender_report=_read(ln.sender.report_path), receiver_report=_read(ln.receiver.report_path),
            sender_exit=tx.proc.returncode if tx is not None and tx.proc is not None else None,
            receiver_exit=rx.proc.returncode if rx is not None and rx.proc is not None else None,
            sender_log=tx.log_tail() if tx is not None else "", receiver_log=rx.log_tail() if rx is not None else ""))
    return result
