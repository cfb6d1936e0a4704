"""Per-frame timestamps through every stage, and the latency report built from them.

A presented frame's record holds its stage times on the **receiver's clock**
(sender times are mapped with the clock-exchange offset)::

    capture --encode--> enc --send--> send --network--> recv --decode--> dec --render--> ren --present--> pres

* ``encode``  = enc - capture: per-view encoders + fusion (sender)
* ``send``    = send - enc: message built and handed to ZeroMQ (sender)
* ``network`` = recv - send: wire, ZeroMQ queues and the wait until the
  receiver's loop took the frame off its socket (clock offset corrected)
* ``buffer``  = play - recv: held in the jitter buffer until its slot (0 without one)
* ``decode``  = dec - play: validation already done; the ONNX decoder
* ``render``  = ren - dec: rasterizer (GL draw + read-back)
* ``present`` = pres - ren: frame handed to the presenters
* ``e2e``     = pres - capture
* ``compute`` = encode + decode + render (model and render compute of that frame)
* ``overhead``= e2e - compute: what the runtime itself adds

With a display clock (``--render neural|warp|warp2x``, :mod:`renderer.scheduler`) every record is one display
frame, made on a display tick from the newest code: ``play`` and ``dec`` are when its engine call started (so
``buffer`` is the code's wait for its tick and its worker, ``decode`` is 0), ``ren`` when the call returned
(``render`` = the ``generate`` or ``warp`` time; the flags say which), ``tick`` its display tick and ``view`` when
its view direction was sampled (the tick's time). ``e2e`` is the age of the code it shows; the display summary
splits it into frames that carry a new code and warped frames, and adds ``view_to_present`` (pres - view) and,
for ``warp2x``, the synchronisation overhead ``sync`` (pres - ren: from a worker finishing the frame to the main
process presenting it).
"""
from __future__ import annotations

import json
import math
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

STAGES = ("encode", "send", "network", "buffer", "decode", "render", "present")
"""Stage names, in pipeline order."""
FRAME_COLUMNS = ("seq", "capture", "enc", "send", "recv", "dec", "ren", "pres", "flags", "play", "tick", "view")
"""Columns of a report's ``frames`` rows: stage times (ns, receiver clock), the frame's flags (wire flags
KEYFRAME / EXTRAPOLATED, plus the receiver's :data:`CONCEALED`, :data:`APPROXIMATE` and the display-frame flags) and
``play``, when the jitter buffer released it, then a display frame's ``tick`` and ``view`` (0 for a raster frame).
New columns go last, so rows of older reports, without them, keep their column positions."""
CONCEALED = 1 << 16
"""Row flag (beside the wire flags, above any of them) of a frame the receiver did not get in time and
showed an extrapolation for (:mod:`runtime.playout`). Its ``capture`` is the slot's estimated capture
time; ``enc``, ``send`` and ``recv`` equal ``capture``; such rows are left out of the latency statistics."""
APPROXIMATE = 1 << 17
"""Row flag of a coded frame decoded across a lost reference frame (``transport.LatentStreamDecoder`` ``bridge``):
it arrived and is timed like any other, but its code may be off by the lost frame's step until the next intra."""
GENERATED = 1 << 18
"""Row flag of a display frame the neural renderer G made (``generate``: decode + rasterize + G, cache refreshed)."""
WARPED = 1 << 19
"""Row flag of a display frame the warp network made from the newest cache (``warp``)."""
NEW_CODE = 1 << 20
"""Row flag of the first display frame that shows its code (the others re-show it for newer views)."""
PARALLEL = 1 << 21
"""Row flag of a display frame a ``warp2x`` worker process rendered: its ``present`` stage is the synchronisation
overhead."""
DISPLAY = GENERATED | WARPED
"""Either display-frame flag: the row is a display frame."""


@dataclass
class FrameRecord:
    """Stage times (ns, receiver clock) of one presented frame."""

    stream_id: str
    seq: int
    capture: int
    enc: int
    send: int
    recv: int
    dec: int
    ren: int
    pres: int
    flags: int = 0
    """Wire flags of the frame (``transport.KEYFRAME`` / ``transport.EXTRAPOLATED``), plus :data:`CONCEALED` and
    :data:`APPROXIMATE`."""
    play: int = 0
    """Released by the jitter buffer (0: no buffer; then ``buffer`` is 0 and ``decode`` starts at ``recv``)."""
    tick: int = 0
    """Display frame: its display tick (0 for a raster frame)."""
    view: int = 0
    """Display frame: when its view direction was sampled, its tick's time (0 for a raster frame)."""

    @property
    def concealed(self) -> bool:
        return bool(self.flags & CONCEALED)

    @property
    def display(self) -> bool:
        """Made on a display tick (generated or warped) rather than one frame per arriving code."""
        return bool(self.flags & DISPLAY)

    def row(self) -> list[int]:
        """The frame as a report row, in :data:`FRAME_COLUMNS` order."""
        return [self.seq, self.capture, self.enc, self.send, self.recv, self.dec, self.ren, self.pres, self.flags,
                self.play, self.tick, self.view]

    def stage_ms(self) -> dict[str, float]:
        play = self.play or self.recv
        t = (self.capture, self.enc, self.send, self.recv, play, self.dec, self.ren, self.pres)
        d = {name: (t[i + 1] - t[i]) / 1e6 for i, name in enumerate(STAGES)}
        d["e2e"] = (self.pres - self.capture) / 1e6
        d["compute"] = d["encode"] + d["decode"] + d["render"]
        d["overhead"] = d["e2e"] - d["compute"]
        return d


def percentiles(values, ps=(50, 95, 99)) -> dict[str, float]:
    """``{"p50": .., "p95": .., "p99": .., "mean": .., "max": ..}`` of ``values`` (NaN when empty)."""
    a = np.asarray(values, np.float64)
    if a.size == 0:
        return {**{f"p{p}": math.nan for p in ps}, "mean": math.nan, "max": math.nan}
    out = {f"p{p}": float(np.percentile(a, p)) for p in ps}
    out["mean"] = float(a.mean())
    out["max"] = float(a.max())
    return out


class Telemetry:
    """Collects :class:`FrameRecord` s (bounded) and builds the report."""

    MAX_RECORDS = 200_000
    """About 1.8 hours at 30 fps; older records are discarded beyond it."""

    def __init__(self) -> None:
        self.records: deque[FrameRecord] = deque(maxlen=self.MAX_RECORDS)
        self.discarded = 0
        self.missed_ticks = 0
        """Display ticks that got no frame (the receiver's scheduler keeps it up to date; 0 without a display clock)."""

    @classmethod
    def from_rows(cls, stream_id: str, rows) -> "Telemetry":
        """Rebuild from a report's ``frames`` rows (:data:`FRAME_COLUMNS`; missing trailing columns read as 0)."""
        t = cls()
        for r in rows:
            t.add(FrameRecord(stream_id, *(int(x) for x in r[:len(FRAME_COLUMNS)])))
        return t

    def add(self, rec: FrameRecord) -> None:
        if len(self.records) == self.MAX_RECORDS:
            self.discarded += 1  # the deque drops the oldest
        self.records.append(rec)

    def stage_table(self) -> dict[str, np.ndarray]:
        """Stage name (plus e2e, compute, overhead) -> (N,) float64 ms, over the received frames
        (concealed ones have no stages of their own)."""
        rows = [r.stage_ms() for r in self.records if not r.concealed]
        keys = (*STAGES, "e2e", "compute", "overhead")
        return {k: np.array([row[k] for row in rows], np.float64) for k in keys}

    def display_table(self) -> dict[str, np.ndarray]:
        """Display frames only (ms, (N,) float64 each): ``generate`` and ``warp`` (compute of the frames each made),
        ``view_to_present`` (every display frame), capture-to-present of the frames that carry a new code
        (``e2e_new_code``), of the generated and of the warped ones (``e2e_generated``, ``e2e_warped``; concealed
        codes left out, as in :meth:`stage_table`) and ``sync`` (``warp2x``: worker finished -> presented)."""
        rows = [r for r in self.records if r.display]

        def ms(values) -> np.ndarray:
            return np.array(list(values), np.float64) / 1e6

        timed = [r for r in rows if not r.concealed]
        return {
            "generate": ms(r.ren - r.dec for r in rows if r.flags & GENERATED),
            "warp": ms(r.ren - r.dec for r in rows if r.flags & WARPED),
            "view_to_present": ms(r.pres - r.view for r in rows),
            "e2e_new_code": ms(r.pres - r.capture for r in timed if r.flags & NEW_CODE),
            "e2e_generated": ms(r.pres - r.capture for r in timed if r.flags & GENERATED),
            "e2e_warped": ms(r.pres - r.capture for r in timed if r.flags & WARPED),
            "sync": ms(r.pres - r.ren for r in rows if r.flags & PARALLEL),
        }

    def display_summary(self) -> dict[str, Any] | None:
        """Display-clock figures (None when no record is a display frame): frames generated and warped, the
        presented display fps, missed ticks and the percentiles of :meth:`display_table`."""
        rows = [r for r in self.records if r.display]
        if not rows:
            return None
        table = self.display_table()
        pres = np.array([r.pres for r in rows], np.float64) / 1e9
        span = pres[-1] - pres[0] if len(pres) > 1 else 0.0
        out: dict[str, Any] = {
            "frames": len(rows),
            "generated": int(table["generate"].size),
            "warped": int(table["warp"].size),
            "fps": float((len(rows) - 1) / span) if span > 0 else math.nan,
            "missed_ticks": int(self.missed_ticks),
        }
        for k, v in table.items():
            if k != "sync" or v.size:
                out[f"{k}_ms"] = percentiles(v)
        return out

    def summary(self, window_s: float = 10.0) -> dict[str, Any]:
        """Percentiles per stage, e2e and overhead, and the e2e p99 of the first and last ``window_s``."""
        table = self.stage_table()
        out: dict[str, Any] = {"frames": len(self.records)}
        out["concealed"] = sum(r.concealed for r in self.records)
        out["stages_ms"] = {k: percentiles(v) for k, v in table.items()}
        if self.records:
            pres_all = np.array([r.pres for r in self.records], np.float64) / 1e9
            span = pres_all[-1] - pres_all[0]
            out["duration_s"] = float(span)
            out["fps"] = float((len(pres_all) - 1) / span) if span > 0 else math.nan
            # longest time without a new image on screen (a held frame is no new image; a concealed one is)
            out["freeze_ms_max"] = float(np.diff(pres_all).max() * 1e3) if len(pres_all) > 1 else math.nan
        pres = np.array([r.pres for r in self.records if not r.concealed], np.float64) / 1e9
        if pres.size:
            e2e = table["e2e"]
            first = e2e[pres <= pres[0] + window_s]
            last = e2e[pres >= pres[-1] - window_s]
            out["drift"] = {
                "window_s": window_s,
                "first_p99_ms": percentiles(first)["p99"],
                "last_p99_ms": percentiles(last)["p99"],
                "ratio": percentiles(last)["p99"] / percentiles(first)["p99"] if first.size and last.size else math.nan,
            }
        display = self.display_summary()
        if display is not None:  # display-clock receivers only: raster reports keep their keys
            for k in ("generate", "warp", "view_to_present"):
                out["stages_ms"][k] = display[f"{k}_ms"]
            out["display"] = display
        return out


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as JSON atomically (NaN written as null)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(json_safe(obj), indent=1))
    tmp.replace(path)


def json_safe(obj: Any) -> Any:
    """``obj`` with NaN/Inf as None and numpy scalars as Python numbers (strict JSON)."""
    if isinstance(obj, float):
        return None if not math.isfinite(obj) else obj
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return json_safe(obj.item())
    return obj


def latency_histogram(tables: dict[str, dict[str, np.ndarray]], path: str | Path, title: str = "") -> None:
    """Histogram PNG of capture-to-present latency (one series per stream) with a per-stage p50 bar chart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 2]})
    for name, table in tables.items():
        e2e = table.get("e2e", np.zeros(0))
        if e2e.size:
            p = percentiles(e2e)
            ax.hist(e2e, bins=60, alpha=0.6, label=f"{name}: p50 {p['p50']:.1f} / p99 {p['p99']:.1f} ms")
    ax.set_xlabel("capture-to-present latency (ms)")
    ax.set_ylabel("frames")
    ax.legend(fontsize=8)
    ax.set_title(title or "capture to present")
    width = 0.8 / max(1, len(tables))
    for k, (name, table) in enumerate(tables.items()):
        p50 = [float(np.median(table[s])) if table[s].size else 0.0 for s in STAGES]
        bx.bar(np.arange(len(STAGES)) + k * width, p50, width=width, label=name)
    bx.set_xticks(np.arange(len(STAGES)) + 0.4 - width / 2)
    bx.set_xticklabels(STAGES, rotation=30, fontsize=8)
    bx.set_ylabel("p50 (ms)")
    bx.set_title("per stage")
    bx.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def format_number(v: Any, digits: int = 1) -> str:
    """A number for a summary line; "n/a" for a missing or non-finite one (a report read back from JSON holds
    None where there was too little data, e.g. the fps of a single frame)."""
    if v is None or not isinstance(v, (int, float)) or not math.isfinite(v):
        return "n/a"
    return f"{v:.{digits}f}"


def format_summary(name: str, s: dict[str, Any]) -> str:
    """A few human lines for stdout, from a :meth:`Telemetry.summary` (as computed, or read back from JSON)."""
    st = s.get("stages_ms", {})
    if not s.get("frames"):
        return f"{name}: no frames presented"
    e2e, ov = st["e2e"], st["overhead"]
    n = format_number
    parts = " ".join(f"{k} {n(st[k]['p50'])}" for k in STAGES)
    text = (f"{name}: {s['frames']} frames, {n(s.get('fps'))} fps; capture->present p50 {n(e2e['p50'])} "
            f"p95 {n(e2e['p95'])} p99 {n(e2e['p99'])} ms; runtime overhead p99 {n(ov['p99'], 2)} ms\n"
            f"  stage p50 (ms): {parts}")
    d = s.get("display")
    if d:
        def p(key: str, q: str = "p50") -> str:
            return n((d.get(key) or {}).get(q))

        text += (f"\n  display: {n(d.get('fps'))} fps, {d.get('generated', 0)} generated (p50 {p('generate_ms')} ms), "
                 f"{d.get('warped', 0)} warped (p50 {p('warp_ms')} ms), {d.get('missed_ticks', 0)} ticks missed; "
                 f"capture->present p50 new code {p('e2e_new_code_ms')} / warped {p('e2e_warped_ms')} ms; "
                 f"view->present p50 {p('view_to_present_ms')} p99 {p('view_to_present_ms', 'p99')} ms")
        if d.get("sync_ms"):
            text += f"; warp2x sync p50 {p('sync_ms')} p99 {p('sync_ms', 'p99')} ms"
    return text
