"""``avcall bench e2e``: capture-to-present latency, per-stage times, overhead, bandwidth, fps, drops.

Runs real processes over loopback TCP: one sender (or two, ``two_way``) and
its receiver, for ``seconds``, with the configured models. The default HMC
source is a replay of a short synthetic recording made once beforehand, so the
studio's rendering does not compete with the pipeline for the CPU (the replay
is paced at the recorded rate, like a camera). Warm-up frames (the first
``warmup_s``) are left out of the statistics.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from avcore.config import ConfigDict, require_non_negative, require_positive
from avcore.errors import UsageError

from .config import (CodecConfig, LatexConfig, PlayoutConfig, ReceiverConfig, SenderConfig, SourceConfig, check_impairment,
                     check_render)
from .models import cache_dir, codec_dir_of, ensure_avatar_dir, ensure_encoder_dir, ensure_render_models
from .session import Link, SessionResult, run_session
from .telemetry import STAGES, Telemetry, percentiles


@dataclass
class E2EBenchConfig(ConfigDict):
    """What ``bench e2e`` runs."""

    seconds: float = 20.0
    """Streaming time per run."""
    warmup_s: float = 2.0
    """Leading seconds excluded from the statistics."""
    fps: float = 30.0
    """Headset rate."""
    source: str = "replay"
    """``replay`` (a pre-recorded synthetic session, cheap to produce) or ``synthetic`` (live studio)."""
    two_way: bool = False
    """Two streams (a call) instead of one."""
    video: bool = False
    """Receivers also write mp4 (a presenter thread competing for the CPU)."""
    encoder_dir: str = ""
    avatar_dir: str = ""
    size: int = 512
    """Rendered view size."""
    out_dir: str = ""
    """Where logs and raw reports go (default: a temporary directory, removed afterwards)."""
    latex: LatexConfig | None = None
    """Senders skip encoder runs with these LATEX settings (None = off)."""
    floor_s: float = 0.0
    """If > 0, first measure this long the bare floor of the machine: a timestamp sent PUB -> SUB
    between two processes at ``fps`` with no pipeline around it (``transport_floor_ms_*``)."""
    impair: str = ""
    """Impair the senders' transmit paths (``transport.impair`` spec; empty = none)."""
    playout: PlayoutConfig = field(default_factory=PlayoutConfig)
    """The receivers' jitter buffer and concealment."""
    codec: CodecConfig = field(default_factory=CodecConfig)
    """The senders' stream format (coded by default; ``coded=False``: plain float16 frames, ``--plain``)."""
    render: str = "raster"
    """How the receivers make frames (``ReceiverConfig.render``)."""
    display_hz: float = 60.0
    """The receivers' display clock in the display-clock render modes."""
    engine_module: str = "renderer.engine"
    """The receivers' display engine module (``ReceiverConfig.engine_module``; tests name fakes)."""

    def __post_init__(self) -> None:
        require_positive("bench e2e", seconds=self.seconds, fps=self.fps)
        check_impairment(self.impair)
        check_render(self.render, self.display_hz)
        require_non_negative("bench e2e", warmup_s=self.warmup_s, floor_s=self.floor_s)
        if self.source not in ("replay", "synthetic"):
            raise UsageError(f"bench e2e: source must be replay or synthetic, got {self.source!r}")


def _recording(fps: float, seconds: float = 4.0) -> Path:
    """A short synthetic HMC session for the replay source, recorded once (not live: no frames dropped)."""
    path = cache_dir() / f"bench_S1_{fps:g}fps.hmc"
    if path.is_file():
        return path
    from capture.recording import HmcWriter
    from capture.source import SyntheticHmcSource

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    src = SyntheticHmcSource("S1", fps=fps, seed=0, ground_truth=False, live=False)
    try:
        with HmcWriter(tmp, fps=fps, meta={"identity": "S1", "source": "synthetic"}) as w:
            for views, ts, _ in src.frames(seconds=seconds):
                w.append(views, ts)
    finally:
        src.close()
    tmp.replace(path)
    return path


def bench_e2e(cfg: E2EBenchConfig) -> dict:
    """Run the benchmark's sender/receiver pairs for ``seconds`` and summarise; see the module doc."""
    import shutil
    import tempfile

    floor = transport_floor(cfg.floor_s, cfg.fps) if cfg.floor_s > 0 else None
    enc = str(ensure_encoder_dir(cfg.encoder_dir))
    av = str(ensure_avatar_dir(cfg.avatar_dir))
    ensure_render_models(av, cfg.render)  # before any process starts
    keep = bool(cfg.out_dir)
    out = Path(cfg.out_dir or tempfile.mkdtemp(prefix="avcall-bench-"))
    try:
        src = SourceConfig(kind=cfg.source, fps=cfg.fps, loop=True,
                           path=str(_recording(cfg.fps)) if cfg.source == "replay" else "")
        names = ["alice", "bob"] if cfg.two_way else ["alice"]
        links = []
        for k, name in enumerate(names):
            rc = ReceiverConfig(stream_id=name, endpoint="tcp://127.0.0.1:*", clock_endpoint="tcp://127.0.0.1:*",
                                bind=True, avatar_dir=av, size=cfg.size, report_path=str(out / f"{name}_rx.json"),
                                video_path=str(out / f"{name}.mp4") if cfg.video else "", playout=cfg.playout,
                                codec_dir=codec_dir_of(enc),  # the sender's codec tables, for an encoder not installed
                                render=cfg.render, display_hz=cfg.display_hz, engine_module=cfg.engine_module)
            sc = SenderConfig(stream_id=name, source=SourceConfig(**{**src.__dict__, "seed": k}), encoder_dir=enc,
                              seconds=cfg.seconds + cfg.warmup_s, report_path=str(out / f"{name}_tx.json"),
                              latex=cfg.latex, impair=cfg.impair, codec=cfg.codec)
            links.append(Link(name, sc, rc))
        session = run_session(links, out, seconds=cfg.seconds + cfg.warmup_s)
        if session.interrupted:
            raise KeyboardInterrupt
        failures = session.failures()
        if failures:
            raise RuntimeError("; ".join(f.splitlines()[0] for f in failures) + f" (logs in {out})")
        result = summarise(session, cfg)
    finally:
        if not keep:
            shutil.rmtree(out, ignore_errors=True)
    if floor is not None:
        result.update({f"transport_floor_ms_{k}": v for k, v in floor.items() if k in ("p50", "p95", "p99")})
    result["out_dir"] = str(out) if keep else ""
    return result


def transport_floor(seconds: float, fps: float) -> dict:
    """Latency percentiles (ms) of a bare PUB -> SUB hop between this process and a child at ``fps``:
    what the machine's scheduler and loopback cost without any pipeline (:func:`transport.floor.measure_pubsub_floor`;
    its first second, connection set-up, is left out)."""
    from transport.floor import measure_pubsub_floor

    return percentiles(measure_pubsub_floor(seconds, fps))


def summarise(session: SessionResult, cfg: E2EBenchConfig) -> dict:
    """The bench's figures from the session's reports (each read once, by the session)."""
    result: dict = {"seconds": cfg.seconds, "fps_target": cfg.fps, "source": cfg.source, "two_way": cfg.two_way,
                    "render_mode": cfg.render,
                    "latex": cfg.latex.to_dict() if cfg.latex is not None else None,
                    "stream_format": "coded" if cfg.codec.coded else "plain",
                    "bandwidth_kbps": {}, "streams": {}}
    all_tables, display_tables = [], []
    fps, dropped, missed = [], 0, 0
    for lr in session.links:
        name, rx, tx = lr.link.name, lr.receiver_report, lr.sender_report
        rows = rx.get("frames", [])
        if rows:
            t_first = rows[0][7]
            rows = [r for r in rows if r[7] - t_first >= cfg.warmup_s * 1e9]
        tel = Telemetry.from_rows(name, rows)
        table = tel.stage_table()
        all_tables.append(table)
        display_tables.append(tel.display_table())
        missed += (rx.get("display") or {}).get("missed_ticks", 0)
        summ = tel.summary()
        fps.append(summ.get("fps", float("nan")))
        d = rx["dropped"]
        n_drop = d["stale"] + d["lost_in_network"] + d["presenter"] + tx["source_dropped"]
        dropped += n_drop
        result["bandwidth_kbps"][name] = rx["streams"].get(name, {}).get("kbit_per_s")
        result["streams"][name] = {"frames": summ["frames"], "fps": summ.get("fps"), "drift": summ.get("drift"),
                                   "dropped": {**d, "camera_late": tx["source_dropped"]},
                                   "bad_messages": sum(d["bad_messages"].values()),
                                   "sender_skip_ratio": tx.get("skip_ratio", 0.0),
                                   "encoder_compute_ms_mean": tx.get("encoder_compute_ms", {}).get("mean"),
                                   "freeze_ms_max": summ.get("freeze_ms_max"), "playout": rx.get("playout"),
                                   "impairment": tx.get("impairment")}
    cat = {k: np.concatenate([t[k] for t in all_tables]) for k in all_tables[0]} if all_tables else {}
    e2e = percentiles(cat.get("e2e", []))
    result["e2e_ms_p50"] = e2e["p50"]
    result["e2e_ms_p95"] = e2e["p95"]
    result["e2e_ms_p99"] = e2e["p99"]
    for s in (*STAGES, "compute"):
        result[f"{s}_ms_p50"] = percentiles(cat.get(s, []))["p50"]
    ov = percentiles(cat.get("overhead", []))
    result["runtime_overhead_ms_p50"] = ov["p50"]
    result["runtime_overhead_ms_p99"] = ov["p99"]
    ratios = [st["drift"]["ratio"] for st in result["streams"].values() if st.get("drift")]
    result["latency_drift_ratio"] = float(max(ratios)) if ratios else float("nan")
    # e2e p99 of the last 10 s over that of the first 10 s (worst stream): ~1 when latency does not grow
    result["fps"] = float(np.nanmean(fps)) if fps else float("nan")
    result["dropped"] = dropped
    if cfg.render != "raster":
        result.update(display_figures(display_tables, result["fps"], missed, cfg))
    return result


def display_figures(tables: list[dict], fps: float, missed: int, cfg: E2EBenchConfig) -> dict:
    """The display-clock figures of ``bench e2e`` from the streams' :meth:`Telemetry.display_table` s (warm-up left
    out): display fps, generate and warp compute, view-to-present, capture-to-present of new-code and warped frames,
    missed ticks (whole run) and, for ``warp2x``, the synchronisation overhead."""
    cat = {k: np.concatenate([t[k] for t in tables]) for k in tables[0]} if tables else {}
    p = {k: percentiles(cat.get(k, [])) for k in ("generate", "warp", "view_to_present", "e2e_new_code", "e2e_warped",
                                                   "sync")}
    out = {"display_hz": cfg.display_hz, "display_fps": fps, "missed_ticks": int(missed),
           "generate_ms_p50": p["generate"]["p50"], "warp_ms_p50": p["warp"]["p50"],
           "frames_generated": int(cat["generate"].size) if cat else 0,
           "frames_warped": int(cat["warp"].size) if cat else 0,
           "view_to_present_ms_p50": p["view_to_present"]["p50"], "view_to_present_ms_p99": p["view_to_present"]["p99"],
           "e2e_new_code_ms_p50": p["e2e_new_code"]["p50"], "e2e_warped_ms_p50": p["e2e_warped"]["p50"]}
    if cfg.render == "warp2x":
        out["sync_ms_p50"], out["sync_ms_p99"] = p["sync"]["p50"], p["sync"]["p99"]
    return out
