"""``avcall bench network``: the receiver under injected loss and jitter, with concealment on and off.

Two measurements, each where it can be made well on this 2-core machine:

* **quality, in-process** (every grid row): the held-out recordings of an identity (sessions the
  encoder never saw, with ground-truth codes) are encoded once by the sender's encoder (ONNX, the
  float16 codes of the wire); for each condition the sender's :class:`transport.impair.ImpairmentModel`
  decides each frame's fate and delay, and the receiver's :class:`runtime.playout.PlayoutBuffer` is
  driven with those arrival times on a 1 ms clock — the same classes the processes run, deterministic.
  What is on screen at every frame slot (a received code, a concealed one, or the held last one) is
  rendered by the receiver's avatar (ONNX decoder + rasterizer, front view) and compared with the render
  of that frame's ground-truth code: MSE over face pixels (the ground truth's foreground) and over
  the whole frame. ``mse_face_rise_pct`` is relative to the unimpaired stream of the same run.
* **timing, real processes** (a subset of rows): ``bench e2e`` sessions (sender and receiver processes
  over loopback, replayed headset) with ``--impair`` on the sender: presented fps, freeze time (the longest
  time without a new image), capture-to-present p50/p99 and the jitter buffer's target delay.

The held-out data (ground-truth codes from the VAE, so torch) is made by
:func:`encoder.heldout.heldout_codes` and handed in by the command; this module imports no torch and no
training or evaluation code.
"""
from __future__ import annotations

import math
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avcore.config import ConfigDict, require_non_negative
from avcore.metrics import face_and_frame_mse
from avcore.progress import progress as progress_bar

from .models import cache_dir
from .playout import BUFFERED_MAX_DELAY_MS, PlayoutBuffer, PlayoutConfig
from .receiver import BRIDGE_FRAMES, INTRA_REQUEST_GAP_S

FULL_GRID = [(0.0, 1, 0.0)] + [(loss, burst, jit) for loss in (1.0, 5.0, 10.0) for burst in (1, 3)
                                for jit in (0.0, 10.0, 20.0, 40.0)] + [(0.0, 1, j) for j in (10.0, 20.0, 40.0)]
"""(loss %, mean burst length, jitter ms) of the quality grid; burst 1 = independent losses."""
QUICK_GRID = [(0.0, 1, 0.0), (5.0, 1, 20.0), (5.0, 3, 20.0), (0.0, 1, 20.0), (10.0, 1, 40.0)]
PROCESS_GRID = [(0.0, 1, 0.0), (5.0, 1, 20.0), (1.0, 1, 10.0), (5.0, 3, 20.0), (10.0, 1, 40.0)]
"""Rows also run with real processes (each twice: concealment on and off)."""
QUICK_PROCESS_GRID = [(0.0, 1, 0.0), (5.0, 1, 20.0)]
DONE_WHEN = (5.0, 1, 20.0)
"""The acceptance row: 5% random loss + 20 ms jitter."""
CONCEAL_VARIANTS = [
    ("bridge + interpolate + predict (default)", PlayoutConfig(max_delay_ms=BUFFERED_MAX_DELAY_MS)),
    ("bridge + predict", PlayoutConfig(max_delay_ms=BUFFERED_MAX_DELAY_MS, interpolate=False)),
    ("bridge + LATEX formula (T = 5)", PlayoutConfig(max_delay_ms=BUFFERED_MAX_DELAY_MS, interpolate=False, method="latex")),
    ("hold last frame", PlayoutConfig(max_delay_ms=BUFFERED_MAX_DELAY_MS, conceal=False)),
]
"""Concealment variants compared on the acceptance row."""


@dataclass
class NetworkBenchConfig(ConfigDict):
    """What ``bench network`` runs."""

    identity: str = "S1"
    """Identity of the held-out recordings and of the models."""
    sessions: tuple[int, ...] = (201, 202)
    """Held-out headset sessions (one performance each; the ``eval latex`` sessions)."""
    clip_s: float = 20.0
    """Seconds of each held-out performance."""
    seconds: float = 12.0
    """Measured seconds per real-process run (0 = no process runs)."""
    fps: float = 30.0
    size: int = 256
    """Rendered side for the MSE (front view)."""
    seed: int = 7
    """Impairment seed (the same drops and delays for concealment on and off)."""
    quick: bool = False
    """Small grids (the done-when row and a few neighbours)."""

    def __post_init__(self) -> None:
        require_non_negative("bench network", seconds=self.seconds)


def spec_string(loss: float, burst: int, jitter: float, seed: int) -> str:
    return f"loss={loss:g}%,burst={burst:g},jitter={jitter:g}ms,seed={seed}" if (loss or jitter) else ""


# --------------------------------------------------------------------------- data


class Renders:
    """Front-view renders by the receiver's avatar; ground truth and the unimpaired stream kept in memory.

    The stream is what the runtime sends by default: the coded stream of the identity's embedded encoder
    (its codec tables; each frame's values are the quantised code, whatever the prediction) when they exist
    and ``coded`` is set, float16 codes otherwise."""

    def __init__(self, data: dict, identity: str, size: int, progress: bool, coded: bool = True):
        from decoder.runtime import default_model_dir
        from encoder.runtime import default_model_dir as default_encoder_dir
        from transport.latent_codec import CODEC_JSON, load_codec

        from .models import load_avatar
        from .playout import predictor_from_codecs

        enc_dir = default_encoder_dir(identity)
        self.codec = load_codec(enc_dir) if coded and (enc_dir / CODEC_JSON).is_file() else None
        self.predictor = predictor_from_codecs({self.codec.codec_id: self.codec}) if self.codec is not None else None
        if self.codec is not None:  # what a receiver of the coded stream decodes, frame by frame
            data = dict(data)
            qv = [self.codec.values(self.codec.quantise(z, g)) for z, g in zip(data["z"], data["g"])]
            data["z"] = np.stack([v[0] for v in qv]).astype(np.float32)
            data["g"] = np.stack([v[1] for v in qv]).astype(np.float32).reshape(-1, 2, 2)
        self._avatar_dir, self._size = default_model_dir(identity), size
        self.avatar = load_avatar(self._avatar_dir, size=size)
        self.view = np.array([0.0, 0.0, 1.0], np.float32)
        n = len(data["z"])
        self.gt = np.zeros((n, size, size, 3), np.uint8)
        self.stream = np.zeros((n, size, size, 3), np.uint8)
        for i in progress_bar(range(n), desc="render ground truth + stream", unit="frame", disable=not progress,
                              mininterval=5.0):
            self.gt[i] = self.avatar.render_code(data["z_gt"][i], data["gaze"][i], self.view)
            self.stream[i] = self.avatar.render_code(data["z"][i], data["g"][i], self.view)

    def render(self, z: np.ndarray, g: np.ndarray) -> np.ndarray:
        return self.avatar.render_code(z, g, self.view)

    def mse(self, img: np.ndarray, i: int) -> tuple[float, float]:
        """(face-pixel MSE, whole-frame MSE) of ``img`` against frame ``i``'s ground truth (0..255 scale)."""
        return face_and_frame_mse(img, self.gt[i])

    def close(self) -> None:
        self.avatar.close()


# --------------------------------------------------------------------------- in-process simulation


def simulate(data: dict, renders: Renders, spec: str, playout: PlayoutConfig, fps: float,
             base_ms: float = 20.0) -> dict:
    """One condition over every held-out sequence, on a 1 ms clock, with the receiver's classes.

    The sender codes each frame (the coded stream when ``renders.codec`` is set, with the runtime's defaults;
    float16 codes otherwise); the impairment model decides each message's fate and delay; the receiver's
    :class:`transport.latent_codec.ReorderingDecoder` decodes what arrives, a frame whose reference has not arrived
    waiting for it until its own slot. A frame whose reference was lost is decoded across the gap
    (concealment on: up to :data:`runtime.receiver.BRIDGE_FRAMES` frames, flagged approximate) or dropped until an
    intra frame (off); either way the receiver asks for an intra frame (at most every
    :data:`runtime.receiver.INTRA_REQUEST_GAP_S`), which reaches the sender ``base_ms`` later (the back channel is
    not impaired). The playout buffer releases a frame per slot; what is on screen at each slot is compared with
    the ground truth."""
    import heapq

    from transport.impair import ImpairmentModel, parse_impairment
    from transport.latent_codec import LatentStreamEncoder, ReorderingDecoder
    from transport.wire import FrameMessage, WireError, decode_message

    period = int(round(1e9 / fps))
    base = int(base_ms * 1e6)
    sessions = data["session"]
    face, frame_mse, freeze_slots, e2e_extra = [], [], [], []
    counts: dict[str, int] = {"undecodable": 0, "intra_requests": 0, "intra_frames": 0}
    targets = []
    model = ImpairmentModel(parse_impairment(spec))  # one model across sequences: one seeded network
    codec = renders.codec
    for sess in np.unique(sessions):
        idx = np.flatnonzero(sessions == sess)
        enc = LatentStreamEncoder(codec, "bench") if codec is not None else None
        dec = (ReorderingDecoder({codec.codec_id: codec}, bridge=BRIDGE_FRAMES if playout.conceal else 0)
               if codec is not None else None)
        pb = PlayoutBuffer(playout, renders.predictor)
        arrivals: list[tuple[int, int, int, object]] = []  # (time, order, frame index, message or None)
        requests: list[int] = []  # when intra requests reach the sender
        last_request = -(10**18)
        shown: dict[int, tuple] = {}  # slot k -> ("frame", i) or ("conc", z, g)
        order = 0
        k_next, now, end = 0, 0, (len(idx) + 10) * period + int((base_ms + 500) * 1e6)
        while now <= end:
            while k_next < len(idx) and k_next * period <= now:  # the sender captures, codes and sends frame k
                k, i = k_next, int(idx[k_next])
                msg = None
                if enc is not None:
                    if requests and requests[0] <= now:
                        enc.request_intra()
                        requests = [t for t in requests if t > now]
                    before = enc.intra_frames
                    msg = enc.encode(k, k * period, k * period, data["z"][i], data["g"][i])
                    counts["intra_frames"] += enc.intra_frames - before
                for d in model.next().delays_ms:
                    heapq.heappush(arrivals, (k * period + base + int(d * 1e6), order, k, msg))
                    order += 1
                k_next += 1
            results = []
            if dec is not None:
                dec.deadline = pb.slot_ns  # as the receiver: a frame may wait for its reference until its slot
                results += dec.expire(now)
            while arrivals and arrivals[0][0] <= now:
                t, _, k, msg = heapq.heappop(arrivals)
                if dec is None:
                    i = int(idx[k])
                    pb.push(k, k * period, t, data["z"][i], data["g"][i], frame=i)
                    continue
                try:
                    cf = decode_message(msg)
                except WireError:
                    continue
                results += dec.push(cf, t, tag=k)
            for k, res, _ in results:
                fm = res if isinstance(res, FrameMessage) else None
                counts["undecodable"] += fm is None
                if fm is None or fm.approximate:  # the receiver asks for an intra frame
                    counts["bridged"] = counts.get("bridged", 0) + (fm is not None)
                    if now - last_request >= INTRA_REQUEST_GAP_S * 1e9:
                        last_request = now
                        requests.append(now + base)
                        counts["intra_requests"] += 1
                if fm is not None:
                    pb.push(fm.seq, fm.capture_ts_ns, now, fm.z, fm.gaze, frame=int(idx[fm.seq]))
            o = pb.pop(now)
            if o is not None and o.seq < len(idx):
                shown[o.seq] = ("conc", o.z, o.gaze) if o.concealed else ("frame", o.frame)
                e2e_extra.append((now - o.seq * period) / 1e6)
                targets.append(o.target_delay_ms)
            now += 1_000_000
        for key, v in pb.counts.items():
            counts[key] = counts.get(key, 0) + v
        counts["concealed_in"] = counts.get("concealed_in", 0) + sum(v[0] == "conc" for v in shown.values())
        counts["held_in"] = counts.get("held_in", 0) + sum(k not in shown for k in range(len(idx)))
        # what is on screen at slot k: the newest output at or before k (nothing before the first)
        cur, run, longest = None, 0, 0
        for k in range(len(idx)):
            new = shown.get(k)
            if new is not None:
                cur, run = new, 0
            else:
                run += 1
                longest = max(longest, run)
            if cur is None:
                continue
            i = int(idx[k])
            if cur[0] == "frame":
                img = renders.stream[cur[1]]
            else:
                img = renders.render(cur[1], cur[2])
            f, w = renders.mse(img, i)
            face.append(f)
            frame_mse.append(w)
        freeze_slots.append(longest)
    return {"mse_face": float(np.mean(face)), "mse_frame": float(np.mean(frame_mse)),
            "freeze_ms_max": (max(freeze_slots) + 1) * period / 1e6, "counts": counts,
            "slots": sum(int((sessions == s).sum()) for s in np.unique(sessions)),
            "target_delay_ms_p50": float(np.median(targets)) if targets else math.nan,
            "release_after_capture_ms_p99": float(np.percentile(e2e_extra, 99)) if e2e_extra else math.nan}


def unimpaired_mse(data: dict, renders: Renders) -> tuple[float, float]:
    f, w = zip(*(renders.mse(renders.stream[i], i) for i in range(len(data["z"]))))
    return float(np.mean(f)), float(np.mean(w))


# --------------------------------------------------------------------------- real processes


def process_run(spec: str, playout: PlayoutConfig, seconds: float) -> dict:
    """One ``bench e2e`` session with the impairment on the sender: the timing figures of the row."""
    from .bench import E2EBenchConfig, bench_e2e

    r = bench_e2e(E2EBenchConfig(seconds=seconds, impair=spec, playout=playout))
    st = r["streams"]["alice"]
    po = st.get("playout") or {}
    return {"fps": r["fps"], "e2e_ms_p50": r["e2e_ms_p50"], "e2e_ms_p99": r["e2e_ms_p99"],
            "freeze_ms_max": st.get("freeze_ms_max"), "target_delay_ms": po.get("target_delay_ms_p50"),
            "concealed": po.get("concealed"), "held": po.get("held"), "late": po.get("late"),
            "frames": st["frames"], "lost_in_network": st["dropped"]["lost_in_network"],
            "buffer_ms_p50": r.get("buffer_ms_p50")}


# --------------------------------------------------------------------------- the bench


def heldout_caches(cfg: NetworkBenchConfig) -> tuple[Path, Path]:
    """Where the held-out sequences and their codes are cached (the avcall cache directory)."""
    return cache_dir() / f"network_seq_{cfg.identity}.npz", cache_dir() / f"network_codes_{cfg.identity}.npz"


def bench_network(cfg: NetworkBenchConfig, data: dict, command: str = "", progress: bool = True) -> dict:
    """The bench over ``data``: held-out frames with ground-truth codes (``z_gt``, ``gaze``), the sender's float16
    codes (``z``, ``g``), ``session`` and ``frame`` (:func:`encoder.heldout.heldout_codes` makes them)."""
    from encoder.bench import machine_description

    grid = QUICK_GRID if cfg.quick else FULL_GRID
    pgrid = (QUICK_PROCESS_GRID if cfg.quick else PROCESS_GRID) if cfg.seconds > 0 else []
    renders = Renders(data, cfg.identity, cfg.size, progress)
    base_face, base_frame = unimpaired_mse(data, renders)
    rows = []
    try:
        for loss, burst, jit in progress_bar(grid, desc="in-process conditions", unit="condition", disable=not progress):
            spec = spec_string(loss, burst, jit, cfg.seed)
            for conceal in (True, False):
                sim = simulate(data, renders, spec, PlayoutConfig(max_delay_ms=BUFFERED_MAX_DELAY_MS, conceal=conceal), cfg.fps)
                n = sim["slots"]
                rows.append({
                    "loss_pct": loss, "burst": burst, "jitter_ms": jit, "concealment": conceal, "impair": spec,
                    "mse_face": sim["mse_face"], "mse_frame": sim["mse_frame"],
                    "mse_face_rise_pct": 100 * (sim["mse_face"] / base_face - 1),
                    "mse_frame_rise_pct": 100 * (sim["mse_frame"] / base_frame - 1),
                    "concealed_pct": 100 * sim["counts"].get("concealed_in", 0) / n,
                    "interpolated_pct": 100 * sim["counts"].get("interpolated", 0) / n,
                    "undecodable_pct": 100 * sim["counts"].get("undecodable", 0) / n,
                    "intra_requests": sim["counts"].get("intra_requests", 0),
                    "bridged_pct": 100 * sim["counts"].get("bridged", 0) / n,
                    "held_pct": 100 * sim["counts"].get("held_in", 0) / n,
                    "late_pct": 100 * sim["counts"].get("late", 0) / n,
                    "freeze_ms_max_sim": sim["freeze_ms_max"], "freeze_ms_max": sim["freeze_ms_max"],
                    "target_delay_ms_sim": sim["target_delay_ms_p50"],
                    "fps": None, "e2e_ms_p50": None, "e2e_ms_p99": None, "target_delay_ms": None,
                    "measured": "in-process",
                })
        variants = []
        if DONE_WHEN in grid:  # which part of the concealment does what, on the acceptance row
            spec = spec_string(*DONE_WHEN, cfg.seed)
            for name, pc in CONCEAL_VARIANTS:
                sim = simulate(data, renders, spec, pc, cfg.fps)
                variants.append({"name": name, "playout": pc.to_dict(), "mse_face": sim["mse_face"],
                                 "mse_face_rise_pct": 100 * (sim["mse_face"] / base_face - 1),
                                 "mse_frame_rise_pct": 100 * (sim["mse_frame"] / base_frame - 1)})
    finally:
        renders.close()
    unimpaired_p99 = {}
    process_errors: list[str] = []
    for loss, burst, jit in progress_bar(pgrid, desc="process runs", unit="condition", disable=not progress):
        spec = spec_string(loss, burst, jit, cfg.seed)
        for conceal in (True, False):
            try:
                pr = process_run(spec, PlayoutConfig(max_delay_ms=BUFFERED_MAX_DELAY_MS, conceal=conceal), cfg.seconds)
            except RuntimeError as exc:  # a worker failed: keep the in-process rows, say why this one is missing
                process_errors.append(f"{spec or 'unimpaired'}, conceal {conceal}: {exc}")
                continue
            if not spec:
                unimpaired_p99[conceal] = pr["e2e_ms_p99"]
            for row in rows:
                if (row["loss_pct"], row["burst"], row["jitter_ms"], row["concealment"]) == (loss, burst, jit, conceal):
                    row.update({"fps": pr["fps"], "e2e_ms_p50": pr["e2e_ms_p50"], "e2e_ms_p99": pr["e2e_ms_p99"],
                                "freeze_ms_max": pr["freeze_ms_max"], "target_delay_ms": pr["target_delay_ms"],
                                "process": pr, "measured": "in-process + processes"})
                    if conceal in unimpaired_p99 and pr["e2e_ms_p99"] is not None:
                        row["e2e_p99_rise_ms"] = pr["e2e_ms_p99"] - unimpaired_p99[conceal]
    done = {r["concealment"]: r for r in rows if (r["loss_pct"], r["burst"], r["jitter_ms"]) == DONE_WHEN}
    verdict = {}
    if done:
        on, off = done.get(True), done.get(False)
        verdict = {"mse_face_rise_pct_concealed": on["mse_face_rise_pct"],
                   "mse_face_rise_pct_hold": off["mse_face_rise_pct"],
                   "mse_rise_within_3pct": on["mse_face_rise_pct"] <= 3.0,
                   "concealment_beats_hold": on["mse_face_rise_pct"] < off["mse_face_rise_pct"]}
        if on.get("e2e_p99_rise_ms") is not None and on.get("target_delay_ms") is not None:
            verdict["e2e_p99_rise_ms"] = on["e2e_p99_rise_ms"]
            verdict["target_delay_ms"] = on["target_delay_ms"]
            verdict["p99_rise_within_target_delay"] = on["e2e_p99_rise_ms"] <= on["target_delay_ms"]
    return {"rows": rows, "unimpaired": {"mse_face": base_face, "mse_frame": base_frame,
                                         "e2e_ms_p99": unimpaired_p99.get(True)},
            "done_when": verdict, "variants": variants, "stream": "coded" if renders.codec is not None else "float16",
            "process_errors": process_errors, "frames": int(len(data["z"])), "sessions": list(cfg.sessions),
            "identity": cfg.identity, "playout": PlayoutConfig(max_delay_ms=BUFFERED_MAX_DELAY_MS).to_dict(), "seed": cfg.seed,
            "machine": machine_description(), "python": platform.python_version(), "command": command}


# --------------------------------------------------------------------------- results


def _f(v, fmt="{:.1f}"):
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else fmt.format(v)


def render_markdown(r: dict) -> str:
    pc = r["playout"]
    lines = [
        "# Loss, jitter and concealment",
        "",
        f"Machine: {r['machine']}",
        "",
        f"Command: `{r['command']}`",
        "",
        f"Held-out {r['identity']} sessions {', '.join(map(str, r['sessions']))} ({r['frames']} frames at 30 fps), "
        f"embedded {r['identity']} encoder and avatar, the {r.get('stream', 'float16')} stream; impairment seed "
        f"{r['seed']}. Jitter buffer: target = p{pc['jitter_percentile']:g} of the recent transit jitter, bounded to "
        f"{pc['min_delay_ms']:g}-{pc['max_delay_ms']:g} ms. Concealment on: a coded frame whose reference was lost is "
        f"decoded on a guess of it (flagged approximate) across up to {BRIDGE_FRAMES} lost frames; a missing frame is "
        "interpolated towards a later frame when one is already buffered, else predicted by the weights fitted on the "
        f"encoder's training codes (`codec.json`), for at most {pc['max_concealed']} frames in a row. Concealment off: "
        "the last frame is held, and frames after a lost one wait for an intra frame. Either way the receiver asks the "
        "sender for an intra frame when it cannot decode (or decodes approximately); the request reaches the sender "
        "20 ms later (the in-process runs: the back channel unimpaired, one-way delay 20 ms plus the jitter).",
        "",
        "**How each column was measured.** MSE, concealed/held/late shares and `freeze sim` come from the "
        "in-process run: the sender's impairment model and the receiver's playout buffer (the classes the processes "
        "run) driven over the held-out sequences on a 1 ms clock, what is on screen at every frame slot rendered "
        "by the receiver's avatar (front view, 256²) and compared with the render of the frame's ground-truth "
        "code. fps, freeze, e2e p50/p99 and the target delay come from real sender and receiver processes "
        "(`bench e2e` sessions over loopback with `--impair`), only on the rows that show them.",
        "",
        f"Unimpaired stream: face-pixel MSE {r['unimpaired']['mse_face']:.2f}, whole-frame MSE "
        f"{r['unimpaired']['mse_frame']:.2f} (0..255 scale); the rises below are relative to it.",
        "",
        "| loss | burst | jitter ms | conceal | face MSE rise | frame MSE rise | concealed | approx. | undecodable | held "
        "| late | freeze sim ms | fps | freeze ms | e2e p50 / p99 ms | target ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        e2e = (f"{_f(row['e2e_ms_p50'])} / {_f(row['e2e_ms_p99'])}" if row["e2e_ms_p50"] is not None else "–")
        lines.append(
            f"| {row['loss_pct']:g}% | {'random' if row['burst'] == 1 else row['burst']} | {row['jitter_ms']:g} | "
            f"{'on' if row['concealment'] else 'off'} | {row['mse_face_rise_pct']:+.2f}% | {row['mse_frame_rise_pct']:+.2f}% | "
            f"{row['concealed_pct']:.1f}% | {row.get('bridged_pct', 0.0):.1f}% | {row.get('undecodable_pct', 0.0):.1f}% | "
            f"{row['held_pct']:.1f}% | {row['late_pct']:.1f}% | "
            f"{row['freeze_ms_max_sim']:.0f} | {_f(row['fps'])} | "
            f"{_f(row['freeze_ms_max'] if row['fps'] is not None else None, '{:.0f}')} | {e2e} | "
            f"{_f(row['target_delay_ms'])} |")
    if r.get("process_errors"):
        lines += ["", "Process runs that failed (their timing columns are empty):", ""]
        lines += [f"* {e}" for e in r["process_errors"]]
    v = r.get("done_when") or {}
    if v:
        lines += ["", "## Done-when row: 5% random loss + 20 ms jitter", "",
                  f"* face-pixel MSE rise with concealment {v['mse_face_rise_pct_concealed']:+.2f}% "
                  f"(≤ 3%: {'yes' if v['mse_rise_within_3pct'] else 'no'}), holding the last frame "
                  f"{v['mse_face_rise_pct_hold']:+.2f}% (concealment better: "
                  f"{'yes' if v['concealment_beats_hold'] else 'no'});"]
        if "e2e_p99_rise_ms" in v:
            lines.append(f"* capture-to-present p99 rose {v['e2e_p99_rise_ms']:+.1f} ms over the unimpaired run, "
                         f"the jitter buffer's target delay was {v['target_delay_ms']:.1f} ms (within it: "
                         f"{'yes' if v['p99_rise_within_target_delay'] else 'no'}).")
    if r.get("variants"):
        lines += ["", "## Concealment variants on the done-when row", "",
                  "Same impairment, same frames; each row changes one setting of the receiver.", "",
                  "| variant | face MSE rise | frame MSE rise |", "|---|---|---|"]
        lines += [f"| {v['name']} | {v['mse_face_rise_pct']:+.2f}% | {v['mse_frame_rise_pct']:+.2f}% |" for v in r["variants"]]
    lines += ["", "burst: mean length of a loss run (random = independent losses); jitter J: extra delay per "
              "message uniform in 0..2J ms. concealed: slots shown as a prediction or interpolation; approx.: frames "
              "decoded across a lost reference; undecodable: frames that arrived but could not be decoded (waiting for "
              "an intra frame); held: slots with nothing new. freeze: the longest time without a new image on screen. "
              "late: frames that arrived after their slot (never shown; they correct the next prediction).", ""]
    return "\n".join(lines)


def plot(r: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, burst in zip(axes, (1, 3)):
        for conceal, style in ((True, "-"), (False, "--")):
            for loss, color in ((1.0, "C0"), (5.0, "C1"), (10.0, "C3")):
                pts = sorted((row["jitter_ms"], row["mse_face_rise_pct"]) for row in r["rows"]
                             if row["loss_pct"] == loss and row["burst"] == burst and row["concealment"] == conceal)
                if pts:
                    ax.plot(*zip(*pts), style, color=color, marker="o",
                            label=f"{loss:g}% loss, {'concealed' if conceal else 'hold last'}")
        ax.axhline(3.0, color="gray", lw=0.8, ls=":")
        ax.set_xlabel("jitter (ms, mean extra delay)")
        ax.set_title("random loss" if burst == 1 else f"bursty loss (mean run {burst})")
    axes[0].set_ylabel("face-pixel MSE rise vs unimpaired (%)")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_results(r: dict, out_dir: str | Path) -> list[Path]:
    from avcore.results import write_json_and_markdown

    from .telemetry import json_safe

    write_json_and_markdown(out_dir, "network", json_safe(r), render_markdown(r), indent=1)
    out = Path(out_dir)
    return [out / "network.json", out / "network.md", plot(r, out / "network.png")]
