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
import sys
from dataclasses import dataclass, field
from pathlib import Path

from avcore.config import ConfigDict, require_positive
from avcore.errors import UsageError
from transport.latent_codec import CodecConfig

from .config import (LatexConfig, PlayoutConfig, ReceiverConfig, SecureConfig, SenderConfig, SourceConfig, ViewerConfig,
                     check_impairment, check_render, check_source)
from .models import codec_dir_of, ensure_avatar_dir, ensure_encoder_dir, ensure_render_models
from .session import Link, SessionResult, run_session
from .telemetry import Telemetry, format_number, format_summary, latency_histogram, percentiles, write_json

log = logging.getLogger(__name__)


@dataclass
class PartyConfig(ConfigDict):
    """One participant: who wears the headset and what it captures."""

    name: str
    """Stream id and label (``[A-Za-z0-9._-]``)."""
    identity: str = "S1"
    """Synthetic source: studio identity."""
    seed: int = 0
    """Synthetic source: performance seed (what the face does)."""
    replay: str = ""
    """Use this .hmc recording as the headset instead of the live synthetic studio."""
    encoder_dir: str = ""
    """This party's encoder (empty = the call's ``encoder_dir``, else the embedded one for ``identity``)."""
    avatar_dir: str = ""
    """The decoder that renders this party for the far end (empty = the call's ``avatar_dir``, else the
    embedded one for ``identity``)."""


@dataclass
class CallConfig(ConfigDict):
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
    """Encoder models for both parties (empty = each party's own or the embedded default)."""
    latex: LatexConfig | None = None
    """Senders skip encoder runs on redundant frames with these LATEX settings (None = off)."""
    codec: CodecConfig = field(default_factory=CodecConfig)
    """How both senders put the code on the wire: coded frames (default; ``docs/protocol.md`` 3.7) or plain
    float16 frames (``coded = False``, ``--plain``)."""
    avatar_dir: str = ""
    """Avatar decoder for both parties (empty = each party's own or the embedded default)."""
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
    impair: str = ""
    """Impair both senders' transmit paths (``transport.impair`` spec, e.g. ``loss=5%,jitter=20ms``; empty = none)."""
    playout: PlayoutConfig = field(default_factory=PlayoutConfig)
    """Both receivers' jitter buffer and concealment."""
    render: str = "raster"
    """How both receivers make frames (``ReceiverConfig.render``: ``raster``, ``neural``, ``warp`` or ``warp2x``)."""
    display_hz: float = 60.0
    """Both receivers' display clock in the display-clock render modes."""

    def __post_init__(self) -> None:
        require_positive("call", seconds=self.seconds, fps=self.fps, startup_timeout_s=self.startup_timeout_s)
        check_impairment(self.impair)
        check_render(self.render, self.display_hz)
        # from_dict rebuilds nested configs but not a tuple of them: the parties come back as dicts (strictly)
        self.parties = tuple(PartyConfig.from_dict(p) if isinstance(p, dict) else p for p in self.parties)
        if len(self.parties) != 2 or self.parties[0].name == self.parties[1].name:
            raise UsageError("a call has two parties with different names")
        if self.codec.latex_skip and self.latex is None:
            raise UsageError("latex_skip needs the LATEX gate (latex)")


def _keys(out: Path, names: list[str]) -> dict[str, tuple[str, str]]:
    from transport import generate_keypair

    keys = {}
    for n in names:
        pub, sec = generate_keypair(out / "keys", n, force=True)
        keys[n] = (str(pub), str(sec))
    return keys


def _party_models(cfg: CallConfig, party: PartyConfig) -> tuple[str, str]:
    """(encoder dir, avatar dir) for ``party``: its own, the call's, else the embedded ones of its identity."""
    from decoder.runtime import default_model_dir as default_avatar
    from encoder.runtime import default_model_dir as default_encoder

    enc = party.encoder_dir or cfg.encoder_dir or str(default_encoder(party.identity))
    av = party.avatar_dir or cfg.avatar_dir or str(default_avatar(party.identity))
    return str(ensure_encoder_dir(enc, party.identity)), str(ensure_avatar_dir(av, party.identity))


def plan_call(cfg: CallConfig, out: Path) -> list[Link]:
    """The call's two links with every config filled in and checked (models present and matching each party's
    face, recordings readable) — before any process starts."""
    from .sender import check_sender

    raw = out / "raw"
    a, b = cfg.parties
    keys = _keys(out, [f"{p.name}_{r}" for p in (a, b) for r in ("rx", "tx")]) if cfg.secure else {}
    links = []
    for speaker, viewer in ((a, b), (b, a)):  # the viewer's receiver renders the speaker
        encoder_dir, avatar_dir = _party_models(cfg, speaker)
        ensure_render_models(avatar_dir, cfg.render)  # before any process starts
        rx_sec = tx_sec = SecureConfig()
        if cfg.secure:
            allow = out / "keys" / f"allow_{viewer.name}"
            allow.mkdir(parents=True, exist_ok=True)
            shutil.copy(keys[f"{speaker.name}_tx"][0], allow)
            rx_sec = SecureConfig(secret_key=keys[f"{viewer.name}_rx"][1], allowed_dir=str(allow))
            tx_sec = SecureConfig(secret_key=keys[f"{speaker.name}_tx"][1], server_key=keys[f"{viewer.name}_rx"][0])
        src = SourceConfig(kind="replay" if speaker.replay else "synthetic", identity=speaker.identity,
                           seed=speaker.seed, fps=cfg.fps, path=speaker.replay)
        check_source(src)
        sc = SenderConfig(stream_id=speaker.name, source=src,  # endpoints: filled in by the session
                          encoder_dir=encoder_dir,
                          seconds=cfg.seconds, tap_path=str(raw / f"{speaker.name}_hmc.hmc"),
                          report_path=str(raw / f"{speaker.name}_sender.json"), secure=tx_sec, latex=cfg.latex,
                          impair=cfg.impair, codec=cfg.codec)
        check_sender(sc)
        rc = ReceiverConfig(
            stream_id=speaker.name, endpoint="tcp://127.0.0.1:*", clock_endpoint="tcp://127.0.0.1:*", bind=True,
            avatar_dir=avatar_dir, size=cfg.size, viewer=cfg.viewer,
            video_path=str(raw / f"{viewer.name}_sees_{speaker.name}.mp4"), video_fps=cfg.fps, window=cfg.window,
            report_path=str(raw / f"{viewer.name}_receiver.json"), secure=rx_sec, playout=cfg.playout,
            codec_dir=codec_dir_of(encoder_dir),  # the speaker's codec tables, for an encoder not installed
            render=cfg.render, display_hz=cfg.display_hz)
        links.append(Link(speaker.name, sc, rc, viewer=viewer.name))
    return links


def run_call(cfg: CallConfig) -> dict:
    """Run the call; returns the combined report (also written to ``OUT/call_report.json``).

    Interrupted (Ctrl-C, SIGTERM), it still writes the report and the videos of what was captured."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "raw").mkdir(exist_ok=True)
    links = plan_call(cfg, out)
    a, b = cfg.parties
    print(f"calling: {a.name} ({a.identity}) <-> {b.name} ({b.identity}) for {cfg.seconds:g} s on this machine ...",
          file=sys.stderr, flush=True)
    result = run_session(links, out / "logs", seconds=cfg.seconds, startup_timeout_s=cfg.startup_timeout_s)
    return _finish(cfg, out, result)


def _finish(cfg: CallConfig, out: Path, result: SessionResult) -> dict:
    report: dict = {"seconds": cfg.seconds, "fps": cfg.fps, "wall_s": result.wall_s, "secure": cfg.secure,
                    "interrupted": result.interrupted, "streams": {}, "failures": result.failures()}
    if cfg.render != "raster":
        report["render"] = {"mode": cfg.render, "display_hz": cfg.display_hz}
    tables = {}
    videos = {}
    for lr in result.links:
        ln, rx, tx = lr.link, lr.receiver_report, lr.sender_report
        if rx is None or tx is None:
            continue
        tel = Telemetry.from_rows(ln.name, rx.get("frames", []))
        tables[f"{ln.name} -> {ln.viewer}"] = tel.stage_table()
        stream = rx.get("streams", {}).get(ln.name, {})
        report["streams"][ln.name] = {
            "viewer": ln.viewer,
            "models": {"encoder": ln.sender.encoder_dir, "avatar": ln.receiver.avatar_dir, "model_id": tx.get("model")},
            "latency": rx["latency"],
            "presented": rx["presented"],
            "dropped": rx["dropped"],
            "sent": tx["frames_sent"],
            "frames_to_receiver": tx.get("frames_to_receiver"),
            "source_dropped": tx["source_dropped"],
            "kbit_per_s": stream.get("kbit_per_s"),
            "sender_kbit_per_s": tx["kbit_per_s"],
            "sender_skip_ratio": tx.get("skip_ratio", 0.0),
            "encoder_compute_ms": tx.get("encoder_compute_ms"),
            "coded": tx.get("codec") is not None,  # False: plain frames (--plain, or an encoder without codec tables)
            "transport": {k: rx["transport"][k] for k in ("received", "bad", "lost", "reordered", "restarts", "events")},
        }
        if "display" in rx:  # display-clock receivers: the scheduler's counts (missed ticks, ...)
            report["streams"][ln.name]["display"] = rx["display"]
        video = rx.get("video")
        if not video:
            continue
        tap = Path(ln.sender.tap_path)
        if cfg.compose:
            dst = out / f"{ln.viewer}_sees_{ln.name}.mp4"
            n = compose_call_video_safe(video["path"], video["frame_seqs"], tap, dst, cfg.fps,
                                        f"{ln.viewer} sees {ln.name}", f"{ln.name}'s headset")
            if n:
                videos[ln.viewer] = {"path": str(dst), "frames": n}
                continue
        videos[ln.viewer] = {"path": video["path"], "frames": len(video["frame_seqs"])}
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
                     f"bandwidth {format_number(kb)} kbit/s{'' if s.get('coded', True) else ' (plain frames)'}")
    return lines

