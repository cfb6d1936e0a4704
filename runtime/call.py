"""A two-party call on one machine: two senders and two receivers, A sees B and B sees A.

Party A's headset (sender ``A``) streams to the receiver on B's side, which
renders A for B's viewer, and the other way round. Each receiver binds a free
loopback port and reports it in its status file; the launcher then starts the
far-end sender connected to it. At the end each party's view is composed with
the far end's HMC input beside it, and one report covers both streams.
"""
from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from .config import ReceiverConfig, SecureConfig, SenderConfig, SourceConfig, ViewerConfig
from .launch import Worker, wait_quiet
from .models import ensure_avatar_dir, ensure_encoder_dir
from .telemetry import Telemetry, format_summary, latency_histogram, percentiles, write_json

log = logging.getLogger(__name__)


@dataclass
class PartyConfig:
    """One participant: who wears the headset and what it captures."""

    name: str
    """Stream id and label (``[A-Za-z0-9._-]``)."""
    identity: str = "S1"
    """Synthetic source: studio identity."""
    seed: int = 0
    """Synthetic source: performance seed (what the face does)."""
    replay: str = ""
    """Use this .hmc recording as the headset instead of the live synthetic studio."""


@dataclass
class CallConfig:
    """A local two-party call."""

    out_dir: str = "call_out"
    """Where videos, reports, logs and the histogram go."""
    seconds: float = 10.0
    """Call length (each sender streams this long)."""
    fps: float = 30.0
    """Headset capture rate."""
    parties: tuple[PartyConfig, PartyConfig] = field(
        default_factory=lambda: (PartyConfig("alice", "S1", 0), PartyConfig("bob", "S1", 1)))
    """The two participants."""
    encoder_dir: str = ""
    latex: bool = False
    """Senders skip encoder runs on redundant frames with LATEX (default target skip ratio)."""
    """Encoder models (empty = the embedded default)."""
    avatar_dir: str = ""
    """Avatar decoder (empty = the embedded default). Both parties use it."""
    size: int = 512
    """Rendered view size."""
    window: bool = False
    """Show each party's view in a window as well."""
    secure: bool = False
    """CurveZMQ on every connection, with fresh keys and allowlists."""
    viewer: ViewerConfig = field(default_factory=ViewerConfig)
    """The viewers' scripted head motion."""
    compose: bool = True
    """Write each party's view beside the far end's HMC input."""
    startup_timeout_s: float = 120.0
    """How long processes may take to come up (model loading, GL)."""


def _keys(out: Path, names: list[str]) -> dict[str, tuple[str, str]]:
    from transport import generate_keypair

    keys = {}
    for n in names:
        pub, sec = generate_keypair(out / "keys", n)
        keys[n] = (str(pub), str(sec))
    return keys


def run_call(cfg: CallConfig) -> dict:
    """Run the call; returns the combined report (also written to ``OUT/call_report.json``)."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    raw = out / "raw"
    raw.mkdir(exist_ok=True)
    encoder_dir = str(ensure_encoder_dir(cfg.encoder_dir))
    avatar_dir = str(ensure_avatar_dir(cfg.avatar_dir))
    a, b = cfg.parties
    links = [(a, b), (b, a)]  # (speaker, viewer): the viewer's receiver renders the speaker
    keys = _keys(out, [f"{v.name}_rx" for _, v in links] + [f"{s.name}_tx" for s, _ in links]) if cfg.secure else {}
    receivers: dict[str, Worker] = {}
    senders: dict[str, Worker] = {}
    t_start = time.monotonic()
    try:
        for speaker, viewer in links:
            sec = SecureConfig()
            if cfg.secure:
                allow = out / "keys" / f"allow_{viewer.name}"
                allow.mkdir(parents=True, exist_ok=True)
                shutil.copy(keys[f"{speaker.name}_tx"][0], allow)
                sec = SecureConfig(secret_key=keys[f"{viewer.name}_rx"][1], allowed_dir=str(allow))
            rc = ReceiverConfig(
                stream_id=speaker.name, endpoint="tcp://127.0.0.1:*", clock_endpoint="tcp://127.0.0.1:*", bind=True,
                avatar_dir=avatar_dir, size=cfg.size, viewer=cfg.viewer, video_path=str(raw / f"{viewer.name}_sees_{speaker.name}.mp4"),
                video_fps=cfg.fps, window=cfg.window, stop_after_idle_s=0.0,
                report_path=str(raw / f"{viewer.name}_receiver.json"), secure=sec)
            receivers[viewer.name] = Worker(f"{viewer.name}_receiver", rc, out / "logs").start()
        endpoints = {n: w.wait_status(lambda s: bool(s.get("endpoint")), cfg.startup_timeout_s) for n, w in receivers.items()}
        for speaker, viewer in links:
            st = endpoints[viewer.name]
            src = SourceConfig(kind="replay" if speaker.replay else "synthetic", identity=speaker.identity,
                               seed=speaker.seed, fps=cfg.fps, path=speaker.replay)
            sec = SecureConfig()
            if cfg.secure:
                sec = SecureConfig(secret_key=keys[f"{speaker.name}_tx"][1], server_key=keys[f"{viewer.name}_rx"][0])
            sc = SenderConfig(
                stream_id=speaker.name, endpoint=st["endpoint"], clock_endpoint=st["clock_endpoint"], bind=False,
                source=src, encoder_dir=encoder_dir, seconds=cfg.seconds, tap_path=str(raw / f"{speaker.name}_hmc.hmc"),
                report_path=str(raw / f"{speaker.name}_sender.json"), secure=sec, latex=cfg.latex)
            senders[speaker.name] = Worker(f"{speaker.name}_sender", sc, out / "logs").start()
        # Senders stop by themselves after cfg.seconds; a generous deadline covers start-up.
        deadline = time.monotonic() + cfg.seconds + cfg.startup_timeout_s
        for name, w in senders.items():
            rc_ = w.wait(max(1.0, deadline - time.monotonic()))
            if rc_ is None:
                log.warning("sender %s overran; stopping it", name)
                w.stop()
            elif rc_ != 0:
                raise RuntimeError(f"sender {name} failed (exit {rc_}):\n{w.log_tail()}")
        # Let the receivers present what is in flight (until their count stops moving), then stop them.
        for w in receivers.values():
            wait_quiet(w)
        for name, w in receivers.items():
            if w.stop() not in (0, None):
                raise RuntimeError(f"receiver {name} failed:\n{w.log_tail()}")
    finally:
        for w in [*senders.values(), *receivers.values()]:
            w.kill()
    models = {"encoder": encoder_dir, "avatar": avatar_dir}
    return _finish(cfg, out, raw, links, time.monotonic() - t_start, models)


def _finish(cfg: CallConfig, out: Path, raw: Path, links, wall_s: float, models: dict) -> dict:
    import json

    report: dict = {"seconds": cfg.seconds, "fps": cfg.fps, "wall_s": wall_s, "secure": cfg.secure, "models": models,
                    "streams": {}}
    tables = {}
    videos = {}
    for speaker, viewer in links:
        rx = json.loads((raw / f"{viewer.name}_receiver.json").read_text())
        tx = json.loads((raw / f"{speaker.name}_sender.json").read_text())
        tel = Telemetry.from_rows(speaker.name, rx.get("frames", []))
        tables[f"{speaker.name} -> {viewer.name}"] = tel.stage_table()
        stream = rx.get("streams", {}).get(speaker.name, {})
        report["streams"][speaker.name] = {
            "viewer": viewer.name,
            "latency": rx["latency"],
            "presented": rx["presented"],
            "dropped": rx["dropped"],
            "sent": tx["frames_sent"],
            "source_dropped": tx["source_dropped"],
            "kbit_per_s": stream.get("kbit_per_s"),
            "sender_kbit_per_s": tx["kbit_per_s"],
            "sender_skip_ratio": tx.get("skip_ratio", 0.0),
            "encoder_compute_ms": tx.get("encoder_compute_ms"),
            "transport": {k: rx["transport"][k] for k in ("received", "bad", "lost", "restarts", "events")},
        }
        video = rx.get("video")
        if cfg.compose and video:
            dst = out / f"{viewer.name}_sees_{speaker.name}.mp4"
            n = compose_call_video_safe(video["path"], video["frame_seqs"], raw / f"{speaker.name}_hmc.hmc", dst, cfg.fps,
                                        f"{viewer.name} sees {speaker.name}", f"{speaker.name}'s headset")
            videos[viewer.name] = {"path": str(dst), "frames": n}
        elif video:
            videos[viewer.name] = {"path": video["path"], "frames": len(video["frame_seqs"])}
    report["videos"] = videos
    e2e = [v for t in tables.values() for v in t["e2e"]]
    over = [v for t in tables.values() for v in t["overhead"]]
    report["e2e_ms"] = percentiles(e2e)
    report["runtime_overhead_ms"] = percentiles(over)
    hist = out / "latency.png"
    if e2e:
        latency_histogram(tables, hist, title=f"{cfg.seconds:g} s call, capture to present")
        report["histogram"] = str(hist)
    report_path = out / "call_report.json"
    report["report"] = str(report_path)
    write_json(report_path, report)
    return report


def compose_call_video_safe(src, seqs, tap, dst, fps, title, input_title) -> int:
    from .compose import compose_call_video

    try:
        return compose_call_video(src, seqs, tap, dst, fps=fps, title=title, input_title=input_title)
    except Exception as exc:  # composing is a convenience; the raw video is still there
        log.warning("could not compose %s: %s", dst, exc)
        return 0


def summary_lines(report: dict) -> list[str]:
    """Human summary of a call report."""
    lines = []
    for name, s in report["streams"].items():
        lines.append(format_summary(f"{name} -> {s['viewer']}", s["latency"]))
        kb = s.get("kbit_per_s")
        d = s["dropped"]
        lines.append(f"  sent {s['sent']}, presented {s['presented']}; dropped: stale {d['stale']}, lost {d['lost_in_network']}, "
                     f"presenter {d['presenter']}, camera late {s['source_dropped']}; bad messages {sum(d['bad_messages'].values())}; "
                     f"bandwidth {kb if kb is None else round(kb, 1)} kbit/s")
    return lines

