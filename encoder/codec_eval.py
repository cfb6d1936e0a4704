"""`avcall eval codec`: rate vs rendered distortion of the latent stream coding on held-out sessions.

The held-out sequences, the encoder runs (full encoder and LATEX early model on every frame) and the
renders come from :mod:`encoder.latex_eval` (same sessions, same ground truth). For each quantisation
budget the codec tables are fitted on the training sessions (:mod:`encoder.codec_fit`), and the real
sender-side :class:`transport.latent_codec.LatentStreamEncoder` codes every held-out frame: the bytes
counted are those of the real messages (header included), and every message is decoded again by the
receiver-side :class:`~transport.latent_codec.LatentStreamDecoder`, which must reproduce the sender's
reconstruction exactly. Rows:

* ``float16``: today's plain frames (float16 code and gaze, stage mark, model id once a second);
* ``quantised``: intra frames only, fixed-width symbols (``raw`` coder);
* ``predictive``: + temporal prediction (intra every ``intra_interval`` frames), still fixed-width;
* ``entropy``: + the range coder with the fitted tables (``coder: range``); also zstd, with a dictionary
  trained on training-session payloads and without, in place of the range-coded payload
  (``coder: zstd-dict`` / ``zstd``; measured, not a wire format);
* ``entropy+latex-skip``: the LATEX gate (default settings) decides which frames the encoder runs; the
  frames it extrapolated are not sent and the receiver shows the extrapolation of its decoded indices.

Distortion: MSE (0..255) of the avatar rendered from the front dome view, from the decoded code and
gaze, against the render of the ground-truth code and gaze: over the ground-truth render's face
(foreground) pixels, and over the whole frame; the rise is relative to the float16 row.
"""
from __future__ import annotations

import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from avcore.cache import load_keyed_npz, save_keyed_npz
from avcore.metrics import face_and_frame_mse
from avcore.progress import progress as progress_bar
from transport.latent_codec import CodecConfig, LatentStreamDecoder, LatentStreamEncoder
from transport.wire import KEYFRAME, EXTRAPOLATED, FrameMessage, decode_message, encode_frame

from .codec_fit import CodecFitConfig, fit_statistics, fit_tables, model_key
from .latex import LatexConfig, apply_schedule, gate_distances, gate_schedule, load_latex_settings, resolve_threshold, sequence_starts
from .latex_eval import LatexEvalConfig, build_sequences, run_encoders

RATE_LIMIT_KBIT = 16.0
"""The rate the default operating point must stay under (issue 16)."""
RISE_LIMIT_PCT = 1.0
"""... at no more than this face-pixel MSE rise over float16 codes."""
_T0 = 400_000_000_000_000
"""Capture time of the first evaluated frame (ns): a monotonic clock some days after boot, as on a real host."""
_ENC_NS, _SEND_NS = 25_000_000, 25_200_000
"""Stage mark and send time after capture (the EEM encoder's time on this machine)."""
MODEL_ID = "S1/z256"


@dataclass
class CodecEvalConfig:
    held_out: LatexEvalConfig = field(default_factory=LatexEvalConfig)
    """Held-out sequences (those of ``avcall eval latex``)."""
    budgets_pct: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0, 2.0)
    """Quantisation budgets (predicted face-pixel MSE added, % of the float16 face-pixel MSE)."""
    intra_interval: int = CodecConfig.intra_interval
    mse_stride: int = 2
    """Render every k-th held-out frame for the MSE (the rate always counts every frame)."""


class FaceMse:
    """Front-view renders of the ground truth on every ``stride``-th frame; MSE of other codes against them."""

    def __init__(self, identity: str, vae, seq: dict, size: int, stride: int, progress: bool):
        from .evaluate import AvatarRenders

        self.r = AvatarRenders(identity, vae, size)
        self.idx = np.arange(0, len(seq["views"]), stride)
        self.gt = np.zeros((len(self.idx), size, size, 3), np.uint8)
        for a in progress_bar(range(0, len(self.idx), 16), desc="render ground truth", unit="batch", disable=not progress,
                              mininterval=5.0):
            s = self.idx[a : a + 16]
            self.gt[a : a + len(s)] = self.r.images(seq["z_gt"][s], seq["gaze"][s], "front").astype(np.uint8)

    def measure(self, z: np.ndarray, gaze: np.ndarray, progress: bool = False, desc: str = "render") -> dict:
        face, whole = np.zeros(len(self.idx)), np.zeros(len(self.idx))
        for a in progress_bar(range(0, len(self.idx), 16), desc=desc, unit="batch", disable=not progress, mininterval=5.0):
            s = self.idx[a : a + 16]
            img = self.r.images(np.asarray(z[s], np.float32), np.asarray(gaze[s], np.float32), "front")
            for k in range(len(s)):
                face[a + k], whole[a + k] = face_and_frame_mse(img[k], self.gt[a + k])
        return {"mse_face": float(face.mean()), "mse_whole": float(whole.mean())}

    def close(self) -> None:
        self.r.close()


def float16_messages(z: np.ndarray, gaze: np.ndarray, key: np.ndarray, fps: float) -> list[bytes]:
    """Today's plain frames of the held-out stream, as the sender builds them."""
    out, model_due = [], 0
    for i in range(len(z)):
        tc = _T0 + round(i * 1e9 / fps)
        msg = FrameMessage("alice", i, tc, tc + _SEND_NS, z[i].astype(np.float16), gaze[i].astype(np.float16),
                           flags=int(KEYFRAME if key[i] else EXTRAPOLATED), stage_ts_ns={"enc": tc + _ENC_NS},
                           model=MODEL_ID if tc >= model_due else None)
        if tc >= model_due:
            model_due = tc + 1_000_000_000
        out.append(encode_frame(msg))
    return out


def coded_stream(tables, z: np.ndarray, gaze: np.ndarray, starts: np.ndarray, fps: float, cfg: CodecConfig,
                 key: np.ndarray | None = None) -> dict:
    """The real sender coder over the held-out frames (reset at each sequence start), every message decoded
    by a real receiver decoder. -> messages (None = skipped), what the receiver shows (z, gaze), symbols."""
    enc = LatentStreamEncoder(tables, "alice", cfg)
    dec = LatentStreamDecoder({tables.codec_id: tables})
    n = len(z)
    shown_z, shown_g = np.zeros_like(z, np.float32), np.zeros_like(gaze, np.float32)
    msgs: list[bytes | None] = []
    model_due = 0
    for i in range(n):
        if starts[i]:
            enc.reset()
        tc = _T0 + round(i * 1e9 / fps)
        kf = True if key is None else bool(key[i])
        data = enc.encode(i, tc, tc + _SEND_NS, z[i], gaze[i], flags=int(KEYFRAME if kf else EXTRAPOLATED),
                          enc_ts_ns=tc + _ENC_NS, model=MODEL_ID if tc >= model_due else None,
                          skip=cfg.latex_skip and not kf)
        if enc.last_intra and tc >= model_due:
            model_due = tc + 1_000_000_000
        msgs.append(data)
        shown_z[i], shown_g[i] = enc.decoded()
        if data is not None:
            got = dec.decode(decode_message(data))
            if not (np.array_equal(got.z, shown_z[i]) and np.array_equal(got.gaze, shown_g[i])):
                raise RuntimeError(f"frame {i}: the receiver's decoded code differs from the sender's reconstruction")
            if got.seq != i:
                raise RuntimeError(f"frame {i}: decoded as sequence number {got.seq}")
    return {"messages": msgs, "z": shown_z, "gaze": shown_g, "intra": enc.intra_frames, "escapes": enc.escapes,
            "skipped": enc.skipped_frames}


def _symbols(tables, q: np.ndarray, starts: np.ndarray, interval: int) -> list[bytes]:
    """The symbols the range coder codes, frame by frame (same intra schedule), as bytes for zstd."""
    out, hist, since = [], [], interval
    wide = max(int(tables.n_intra.max()), int(tables.n_res.max())) > 256
    for t in range(len(q)):
        if starts[t]:
            hist, since = [], interval
        intra = not hist or since + 1 >= interval
        if not intra:
            u = q[t] - tables.predict(hist)
            intra = bool(np.any(np.abs(u) > tables.res_max))
        if intra:
            s, since = (q[t] - tables.lo)[tables.intra_active], 0
        else:
            s, since = (u + tables.res_max)[tables.res_active], since + 1
        out.append(s.astype("<u2" if wide else np.uint8).tobytes())
        hist = (hist + [q[t]])[-tables.history :]
    return out


def zstd_payloads(tables, q_train: np.ndarray, train_starts: np.ndarray, q: np.ndarray, starts: np.ndarray,
                  interval: int) -> dict[str, list[int]]:
    """Payload sizes (bytes) of each held-out frame's symbols through zstd (level 19, no magic, checksum,
    size or dictionary id), with a dictionary trained on the training frames' symbols, and without."""
    import zstandard

    train = _symbols(tables, q_train, train_starts, interval)
    held = _symbols(tables, q, starts, interval)
    try:
        d = zstandard.train_dictionary(2048, train)
    except zstandard.ZstdError:
        d = None
    out = {}
    for name, kw in (("zstd-dict", {"dict_data": d} if d is not None else {}), ("zstd", {})):
        c = zstandard.ZstdCompressor(level=19, write_checksum=False, write_content_size=False, write_dict_id=False, **kw)
        out[name] = [max(0, len(c.compress(b)) - 4) if b else 0 for b in held]  # - the 4-byte magic number
    return out


def evaluate_codec(model_dir: str | Path, vae, cfg: CodecEvalConfig, *, fit: CodecFitConfig | None = None,
                   command: str = "", progress: bool = True, cache: Path | None = None,
                   cache_dir: Path | None = Path("runs") / "codec") -> dict:
    model_dir = Path(model_dir)
    fit = fit or CodecFitConfig(identity=cfg.held_out.identity)
    ho = cfg.held_out
    seq = build_sequences(ho, vae, progress=progress, cache=cache)
    starts = sequence_starts(seq["session"], seq["frame"])
    n = len(seq["views"])
    enc_cache = None if cache_dir is None else Path(cache_dir) / f"heldout_codes_{ho.identity}.npz"
    enc_key = repr((model_key(model_dir), repr(ho)))
    full = load_keyed_npz(enc_cache, enc_key)
    if full is None:
        full = run_encoders(model_dir, seq["views"], progress=progress)
        if enc_cache is not None:
            save_keyed_npz(enc_cache, enc_key, {k: np.asarray(v) for k, v in full.items()})
    z, g = full["z"].astype(np.float32), full["gaze"].astype(np.float32)
    stats = fit_statistics(model_dir, fit, progress=progress, cache_dir=cache_dir)
    settings = load_latex_settings(model_dir)
    lcfg = LatexConfig()
    thr = resolve_threshold(settings, lcfg)
    key = gate_schedule(gate_distances(full["z_early"], full["gaze_early"], full["z_scale"], full["gaze_scale"], starts),
                        thr, lcfg.history, lcfg.max_skips, starts)
    z_lat, g_lat = apply_schedule(key, z, lcfg.history, starts), apply_schedule(key, g, lcfg.history, starts)
    seconds = n / ho.fps
    kbit = lambda nbytes: nbytes * 8 / 1000 / seconds

    mse = FaceMse(ho.identity, vae, seq, ho.size, cfg.mse_stride, progress)
    rows: list[dict] = []
    try:
        f32 = mse.measure(z, g, progress, "render float32")
        f16 = mse.measure(z.astype(np.float16), g.astype(np.float16), progress, "render float16")
        base_face, base_whole = f16["mse_face"], f16["mse_whole"]

        def rise(m: dict) -> dict:
            return {**m, "mse_face_rise_pct": 100 * (m["mse_face"] / base_face - 1),
                    "mse_whole_rise_pct": 100 * (m["mse_whole"] / base_whole - 1)}

        msgs16 = float16_messages(z, g, np.ones(n, bool), ho.fps)
        rows.append({"name": "float16", "coder": "float16", "budget_pct": None, **rise(f16),
                     "kbit_per_s": kbit(sum(map(len, msgs16))), "bytes_per_frame": sum(map(len, msgs16)) / n,
                     "messages": n})
        train_x = np.concatenate([stats["z"], stats["gaze"].reshape(len(stats["gaze"]), -1)], 1)
        for pct in progress_bar(cfg.budgets_pct, desc="budgets", unit="budget", disable=not progress):
            tables = fit_tables(stats["z"], stats["gaze"], stats["starts"], stats["w"], pct / 100 * base_face,
                                predictor=fit.predictor, history=fit.history, range_margin=fit.range_margin)
            common = {"budget_pct": pct, "codec_id": tables.codec_id, "predictor": tables.predictor,
                      "active_elements": int(len(tables.intra_active)),
                      "predicted_rise_pct": 100 * tables.meta["predicted_rise_mse"] / base_face}
            streams = {
                "quantised": coded_stream(tables, z, g, starts, ho.fps, CodecConfig(coder="raw", intra_interval=1)),
                "predictive": coded_stream(tables, z, g, starts, ho.fps, CodecConfig(coder="raw", intra_interval=cfg.intra_interval)),
                "entropy": coded_stream(tables, z, g, starts, ho.fps, CodecConfig(coder="range", intra_interval=cfg.intra_interval)),
            }
            m = rise(mse.measure(streams["entropy"]["z"], streams["entropy"]["gaze"], False))
            for name, st in streams.items():
                nbytes = sum(len(b) for b in st["messages"] if b is not None)
                rows.append({"name": name, "coder": "range" if name == "entropy" else "raw", **common, **m,
                             "kbit_per_s": kbit(nbytes), "bytes_per_frame": nbytes / n, "messages": n,
                             "intra_frames": st["intra"], "escapes": st["escapes"]})
            # zstd in place of the range-coded payload (same header, same frames)
            q = np.stack([tables.quantise(z[i], g[i]) for i in range(n)])
            q_train = np.clip(np.rint((train_x - tables.mean) / tables.step), tables.lo, tables.hi).astype(np.int64)
            zs = zstd_payloads(tables, q_train, stats["starts"], q, starts, cfg.intra_interval)
            ent = streams["entropy"]["messages"]
            for coder, sizes in zs.items():
                nbytes = sum(len(b) - (len(_payload(b))) + s for b, s in zip(ent, sizes))
                rows.append({"name": "entropy", "coder": coder, **common, **m, "kbit_per_s": kbit(nbytes),
                             "bytes_per_frame": nbytes / n, "messages": n})
            sk = coded_stream(tables, z_lat, g_lat, starts, ho.fps,
                              CodecConfig(coder="range", intra_interval=cfg.intra_interval, latex_skip=True), key=key)
            msk = rise(mse.measure(sk["z"], sk["gaze"], False))
            nbytes = sum(len(b) for b in sk["messages"] if b is not None)
            rows.append({"name": "entropy+latex-skip", "coder": "range", **common, **msk, "kbit_per_s": kbit(nbytes),
                         "bytes_per_frame": nbytes / n, "messages": int(sum(b is not None for b in sk["messages"])),
                         "intra_frames": sk["intra"], "skip_ratio": float(1 - key.mean()), "latex_threshold": thr})
    finally:
        mse.close()
    ok = [r for r in rows if r["name"] == "entropy" and r["coder"] == "range"
          and r["kbit_per_s"] <= RATE_LIMIT_KBIT and r["mse_face_rise_pct"] <= RISE_LIMIT_PCT]
    default = min(ok, key=lambda r: r["mse_face_rise_pct"]) if ok else None
    return {
        "machine": _machine(), "python": platform.python_version(), "command": command,
        "identity": ho.identity, "model_dir": str(model_dir), "frames": n, "sequences": int(starts.sum()),
        "fps": ho.fps, "seconds": seconds, "mse_stride": cfg.mse_stride, "intra_interval": cfg.intra_interval,
        "float32": f32, "float16": f16, "rows": rows,
        "default": "entropy" if default else None,
        "default_budget_pct": default["budget_pct"] if default else None,
        "default_row": default,
        "limits": {"kbit_per_s": RATE_LIMIT_KBIT, "mse_face_rise_pct": RISE_LIMIT_PCT},
        "fit": {**asdict(fit), "sessions": list(fit.sessions), "training_frames": int(len(stats["z"]))},
        "latex": {**lcfg.to_dict(), "threshold": thr, "skip_ratio": float(1 - key.mean())},
    }


def _payload(message: bytes) -> bytes:
    from transport.wire import CodedFrame

    cf = decode_message(message)
    assert isinstance(cf, CodedFrame)
    return cf.payload


def _machine() -> str:
    from .bench import machine_description

    return machine_description()


def render_markdown(r: dict) -> str:
    lines = ["# Latent stream coding: rate vs rendered distortion", "", f"Machine: {r['machine']}", "",
             f"Command: `{r['command']}`", "",
             f"Identity {r['identity']}, encoder `{r['model_dir']}`; {r['frames']} held-out frames in {r['sequences']} "
             f"sequences ({r['seconds']:.0f} s at {r['fps']:g} fps); MSE on every {r['mse_stride']}nd frame, front view; "
             f"intra frame every {r['intra_interval']} frames ({r['intra_interval'] / r['fps']:.2f} s). kbit/s counts every "
             "byte of every message (msgpack body, header included; ZeroMQ adds 2 bytes per message under 256 bytes).",
             "", f"float32 codes: face MSE {r['float32']['mse_face']:.2f}, whole frame {r['float32']['mse_whole']:.2f}; "
             f"float16: {r['float16']['mse_face']:.2f} / {r['float16']['mse_whole']:.2f} (the reference of every rise).", ""]
    if r["default_row"]:
        d = r["default_row"]
        lines += [f"**Default: `{r['default']}` (range coder) at budget {d['budget_pct']:g}%: {d['kbit_per_s']:.2f} kbit/s, "
                  f"{d['bytes_per_frame']:.1f} bytes per frame, face-pixel MSE {d['mse_face_rise_pct']:+.2f}% "
                  f"(whole frame {d['mse_whole_rise_pct']:+.2f}%)** — within ≤ {r['limits']['kbit_per_s']:g} kbit/s at "
                  f"≤ +{r['limits']['mse_face_rise_pct']:g}%. The default is the `entropy` row with the smallest face-MSE rise "
                  "among those within both limits; at these budgets the quantisation error is small next to the "
                  "encoder's own, so rises of a few tenths of a percent either way are frame-to-frame noise.", ""]
    lines += ["| name | coder | budget % | kbit/s | bytes/frame | face MSE | rise | whole MSE | rise | intra | skip |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for x in r["rows"]:
        b = "–" if x["budget_pct"] is None else f"{x['budget_pct']:g}"
        lines.append(f"| {x['name']} | {x['coder']} | {b} | {x['kbit_per_s']:.2f} | {x['bytes_per_frame']:.1f} | "
                     f"{x['mse_face']:.2f} | {x['mse_face_rise_pct']:+.2f}% | {x['mse_whole']:.2f} | "
                     f"{x['mse_whole_rise_pct']:+.2f}% | {x.get('intra_frames', '–')} | "
                     f"{x['skip_ratio']:.1%} |" if "skip_ratio" in x else
                     f"| {x['name']} | {x['coder']} | {b} | {x['kbit_per_s']:.2f} | {x['bytes_per_frame']:.1f} | "
                     f"{x['mse_face']:.2f} | {x['mse_face_rise_pct']:+.2f}% | {x['mse_whole']:.2f} | "
                     f"{x['mse_whole_rise_pct']:+.2f}% | {x.get('intra_frames', '–')} | – |")
    lines += ["", "budget %: the face-pixel MSE the quantisation is allowed to add by the fit, in % of the float16 face MSE "
              "(step sizes equalise the rendered cost per element; elements below their step cost nothing). "
              "`quantised`, `predictive` and `entropy` at one budget show the same decoded codes (quantisation does not "
              "depend on prediction), so their MSE is the same. zstd rows: the same messages with the range-coded payload "
              "replaced by zstd (level 19, magic number, checksum, size and dictionary id left out) of the symbols, "
              "with a 2 KiB dictionary trained on training-session frames and without; measured, not a wire format. "
              "latex-skip: LATEX gate at its default settings (T = "
              f"{r['latex']['history']}, at most {r['latex']['max_skips']} skips, threshold {r['latex']['threshold']:.4f}, "
              f"{r['latex']['skip_ratio']:.1%} of frames extrapolated and not sent).", ""]
    return "\n".join(lines)


def plot_codec(r: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    styles = {("quantised", "raw"): "s--", ("predictive", "raw"): "^--", ("entropy", "range"): "o-",
              ("entropy", "zstd-dict"): "v:", ("entropy", "zstd"): "x:", ("entropy+latex-skip", "range"): "D-"}
    for (name, coder), st in styles.items():
        pts = sorted((x["kbit_per_s"], x["mse_face_rise_pct"]) for x in r["rows"] if x["name"] == name and x["coder"] == coder)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], st, label=f"{name} ({coder})")
    f16 = next(x for x in r["rows"] if x["name"] == "float16")
    ax.plot([f16["kbit_per_s"]], [0.0], "k*", ms=10, label=f"float16 ({f16['kbit_per_s']:.0f} kbit/s)")
    ax.axvline(r["limits"]["kbit_per_s"], color="gray", lw=0.8, ls=":")
    ax.axhline(r["limits"]["mse_face_rise_pct"], color="gray", lw=0.8, ls=":")
    if r["default_row"]:
        d = r["default_row"]
        ax.plot([d["kbit_per_s"]], [d["mse_face_rise_pct"]], "ro", mfc="none", ms=14, label="default")
    ax.set_xscale("log")
    ax.set_xlabel("kbit/s per stream at 30 fps (whole messages)")
    ax.set_ylabel("face-pixel MSE rise vs float16 (%)")
    ax.set_title(f"{r['identity']}: latent stream coding, held-out sessions")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_results(r: dict, out_dir: str | Path) -> list[Path]:
    from avcore.results import write_json_and_markdown

    write_json_and_markdown(out_dir, "codec", r, render_markdown(r))
    out = Path(out_dir)
    return [out / "codec.json", out / "codec.md", plot_codec(r, out / "codec.png")]
