"""`avcall train codec`: fit the latent stream codec (step sizes, alphabets, probability tables) of an encoder.

The fit needs what the sender will code: the encoder's own outputs (code and gaze) on the identity's
training sessions (the headset sessions and performance seeds the encoder was trained on, train segments,
at the performance rate so that frame-to-frame residuals are real), and how much each element matters to
the picture: the rendered face-pixel MSE per unit² of each code dimension and gaze angle (finite
differences through the receiver's ONNX decoder and rasterizer at a few training codes).

Step sizes then spend one rendered-MSE budget equally over the elements (reverse water-filling):
``step_i = delta / sqrt(w_i)``, with ``delta`` chosen so that ``sum_i min(delta² / 12, w_i var_i)``, the
predicted face-pixel MSE the quantisation adds, equals the budget. An element whose spread is below its
step (a dimension the decoder ignores, or one the encoder never moves) gets a one-symbol alphabet and
costs nothing. Alphabets and frequency tables come from the training indices and residuals. The result
is :class:`transport.latent_codec.CodecTables`, written as ``codec.json`` + ``codec.npz`` next to the
encoder (never pickled). Nothing here imports torch.
"""
from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from avcore.cache import load_keyed_npz, save_keyed_npz
from avcore.progress import progress as progress_bar
from transport.latent_codec import GAZE_ELEMENTS, PREDICTORS, CodecTables

DEFAULT_BUDGET_PCT = 2.0
"""Default quantisation budget: predicted face-pixel MSE added, in % of the encoder's own face-pixel MSE on
held-out frames (``reference_mse``); the operating point ``avcall eval codec`` chose for the default encoder
(docs/results/codec.md; EEM's tables were fitted at 0.5, its own chosen point)."""
REFERENCE_FACE_MSE = {("S1", "EEM"): 135.82165442360773, ("S1", "AVE-S"): 80.04638037272137}
"""Held-out face-pixel MSE of the embedded encoders, by (identity, architecture name), each the float16 row's
``mse_face`` of ``avcall eval codec`` on that encoder (``docs/results/codec.json``); an encoder not listed has
none, and its budget is taken relative to the decoder sensitivity-weighted code variance."""


def reference_face_mse(identity: str, model_dir: str | Path) -> float:
    """:data:`REFERENCE_FACE_MSE` of the encoder in ``model_dir`` (its ``arch.json`` name), 0.0 when unknown."""
    try:
        name = json.loads((Path(model_dir) / "arch.json").read_text()).get("name")
    except (OSError, ValueError):
        return 0.0
    return REFERENCE_FACE_MSE.get((identity, name), 0.0)


@dataclass
class CodecFitConfig:
    """What the codec is fitted on, and how."""

    identity: str = "S1"
    sessions: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7)
    """Training headset sessions (those of :class:`encoder.data.HmcDataConfig`)."""
    seconds: float = 16.0
    """Length of each session's performance (its train segments are used)."""
    fps: float = 30.0
    hmc_size: int = 192
    """HMC view size the studio renders (the sender's default source size); views are resized to the encoder's input."""
    seed: int = 0
    """Performance seeds are ``seed * 1000 + k + 1`` for the k-th session, as in the encoder's training data."""
    budget_pct: float = DEFAULT_BUDGET_PCT
    """Face-pixel MSE the quantisation may add, in % of ``reference_mse``."""
    reference_mse: float = 0.0
    """The encoder's own held-out face-pixel MSE (0 = :func:`reference_face_mse` of the encoder)."""
    predictor: str = "auto"
    """``previous``, ``extrapolate`` or ``auto`` (the one with the smaller training entropy)."""
    history: int = 5
    """T of the extrapolation (LATEX's default)."""
    sensitivity_codes: int = 4
    """Training codes the decoder's sensitivity is averaged over."""
    size: int = 256
    """Render size of the sensitivity measurement."""
    range_margin: float = 1.5
    """The intra alphabet covers the training range widened by this share of its span on each side: held-out
    sessions reach well beyond the training range (extreme expressions), and a clamped code costs far more
    than the few extra table entries (their symbols are rare, so the range coder spends little on them)."""


def fit_views(views: np.ndarray, size: int) -> np.ndarray:
    """(3, S, S) uint8 views resized to the encoder's input side as the sender does (``runtime.sender.fit_views``)."""
    if views.shape[-1] == size:
        return views
    import cv2

    return np.stack([cv2.resize(v, (size, size), interpolation=cv2.INTER_AREA) for v in views])


def performance_frames(cfg: CodecFitConfig) -> list[tuple[int, int, object, np.ndarray]]:
    """(session, perf seed, performance, train frame indices) of every training session."""
    from capture.performance import PerformanceConfig, generate_performance

    out = []
    for k, s in enumerate(cfg.sessions):
        seed = cfg.seed * 1000 + k + 1
        perf = generate_performance(seed, cfg.seconds, PerformanceConfig(fps=cfg.fps))
        out.append((s, seed, perf, perf.split("train")))
    return out


def model_key(model_dir: str | Path) -> tuple:
    """What identifies an exported encoder's outputs for a cache: its directory and the size and time of each of
    its ONNX models and LATEX settings (a retrained or replaced encoder gets a new key)."""
    model_dir = Path(model_dir)
    files = sorted(p for p in model_dir.iterdir() if p.suffix == ".onnx" or p.name == "latex.json")
    return (str(model_dir.resolve()), *((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files))


def training_codes(model_dir: str | Path, cfg: CodecFitConfig, *, progress: bool = True, cache: Path | None = None) -> dict:
    """The encoder's code and gaze on every train frame of the training sessions (HMC views rendered by the
    studio, encoded by the exported ONNX encoder the sender runs): ``z`` (M, D), ``gaze`` (M, 2, 2),
    ``session``, ``frame`` (M,). Cached in ``cache`` (keyed by the settings and the encoder directory)."""
    from capture.look import CODE_LOOK
    from capture.rig import HmcRigConfig
    from capture.studio import Studio

    from .runtime import HmcEncoder

    model_dir = Path(model_dir)
    key = repr((model_key(model_dir), cfg.identity, cfg.sessions, cfg.seconds, cfg.fps, cfg.seed))
    cached = load_keyed_npz(cache, key)
    if cached is not None:
        return cached
    enc = HmcEncoder(model_dir)
    zs, gs, ss, fs = [], [], [], []
    for s, _seed, perf, idx in progress_bar(performance_frames(cfg), desc=f"training codes {cfg.identity}", unit="session",
                                            disable=not progress):
        studio = Studio(cfg.identity, session=s, dome_size=64, rig=HmcRigConfig(size=cfg.hmc_size), look=CODE_LOOK)
        try:
            for i in idx:
                views, _ = studio.hmc_frame(perf.expression[i], perf.gaze[i], t=float(perf.t[i]), frame_index=int(i),
                                            ground_truth=False)
                r = enc.encode(fit_views(views, enc.input_size))
                zs.append(r.z), gs.append(r.gaze), ss.append(s), fs.append(int(i))
        finally:
            studio.release()
    out = {"z": np.stack(zs).astype(np.float32), "gaze": np.stack(gs).astype(np.float32),
           "session": np.asarray(ss, np.int32), "frame": np.asarray(fs, np.int32)}
    if cache is not None:
        save_keyed_npz(cache, key, out)
    return out


def decoder_sensitivity(avatar_dir: str | Path | None, x: np.ndarray, latent_dim: int, *, identity: str = "S1",
                        codes: int = 4, size: int = 256, progress: bool = True) -> np.ndarray:
    """(N,) face-pixel MSE (0..255 scale) per unit² of each element (z dims, then gaze), by central
    differences of ±half a training standard deviation through the ONNX decoder and rasterizer (front
    view), averaged over ``codes`` training codes spread over ``x`` (M, N). Face pixels: where the
    unperturbed render is not background."""
    from capture.rig import view_direction
    from decoder.runtime import Avatar, default_model_dir

    avatar = Avatar(avatar_dir or default_model_dir(identity), size=size)
    view = view_direction("front").astype(np.float32)
    std = x.std(0)
    eps = np.maximum(0.5 * std, 1e-3)
    N = x.shape[1]
    w = np.zeros(N)
    picks = np.linspace(0, len(x) - 1, codes).round().astype(int)

    def render(v: np.ndarray) -> np.ndarray:
        return avatar.render_code(v[:latent_dim], v[latent_dim:].reshape(2, 2), view).astype(np.float32)

    try:
        for j in progress_bar(picks, desc="decoder sensitivity", unit="code", disable=not progress):
            base = x[j].astype(np.float64)
            mask = render(base).max(-1) > 0
            for i in range(N):
                hi, lo = base.copy(), base.copy()
                hi[i] += eps[i]
                lo[i] -= eps[i]
                d = (render(hi) - render(lo))[mask] / (2 * eps[i])
                w[i] += float((d**2).mean()) / len(picks)
    finally:
        avatar.close()
    return w


def predicted_rise(delta: float, w: np.ndarray, var: np.ndarray) -> float:
    """Face-pixel MSE the quantisation adds at ``delta`` (high-rate approximation, reverse water-filling)."""
    return float(np.minimum(delta**2 / 12.0, w * var).sum())


def solve_delta(budget: float, w: np.ndarray, var: np.ndarray) -> float:
    """The ``delta`` whose :func:`predicted_rise` is ``budget`` (bisection in log space)."""
    if budget >= float((w * var).sum()):
        return float(np.sqrt(12.0 * (w * var).max()) * 4 + 1.0)
    lo, hi = 1e-9, float(np.sqrt(12.0 * max((w * var).max(), 1e-12))) * 4 + 1.0
    for _ in range(200):
        mid = np.sqrt(lo * hi)
        if predicted_rise(mid, w, var) < budget:
            lo = mid
        else:
            hi = mid
    return float(np.sqrt(lo * hi))


def sequence_breaks(session: np.ndarray, frame: np.ndarray) -> np.ndarray:
    """(M,) True where a frame does not follow the previous one (a new sequence)."""
    starts = np.ones(len(session), bool)
    starts[1:] = (session[1:] != session[:-1]) | (frame[1:] != frame[:-1] + 1)
    return starts


def _residuals(tables_like: CodecTables, q: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """(M', N) residuals of every frame that has a predecessor in its sequence, with the tables' predictor."""
    out = []
    hist: list[np.ndarray] = []
    for t in range(len(q)):
        if starts[t]:
            hist = []
        if hist:
            out.append(q[t] - tables_like.predict(hist))
        hist.append(q[t])
        del hist[: -tables_like.history]
    return np.asarray(out, np.int64).reshape(-1, q.shape[1])


def _freq(symbols: np.ndarray, n: np.ndarray, width: int, smoothing: float = 0.5) -> np.ndarray:
    """(N, width) frequency tables: counts of each element's symbols + ``smoothing`` on its alphabet."""
    N = len(n)
    f = np.zeros((N, width))
    for i in range(N):
        col = symbols[:, i]
        col = col[(col >= 0) & (col < n[i])]  # out of the alphabet: coded as an intra frame instead
        f[i, : n[i]] = np.bincount(col, minlength=int(n[i]))[: n[i]] + smoothing
    return f


def _entropy_bits(symbols: np.ndarray, freq: np.ndarray) -> float:
    """Mean ideal code length (bits per frame) of ``symbols`` (M, N) under ``freq``."""
    p = freq / freq.sum(1, keepdims=True)
    rows = np.arange(freq.shape[0])
    symbols = np.clip(symbols, 0, (freq > 0).sum(1)[None, :] - 1)
    return float(-np.log2(p[rows[None, :], symbols]).sum(1).mean())


def fit_tables(z: np.ndarray, gaze: np.ndarray, starts: np.ndarray, w: np.ndarray, budget: float, *,
               predictor: str = "auto", history: int = 5, range_margin: float = 1.5, meta: dict | None = None) -> CodecTables:
    """Codec tables for codes ``z`` (M, D) and gaze (M, 2, 2) of training sequences (``starts`` marks each
    sequence's first frame), decoder sensitivity ``w`` (N,) and the face-pixel MSE ``budget`` the
    quantisation may add."""
    D = z.shape[1]
    x = np.concatenate([z.astype(np.float64), gaze.reshape(len(gaze), -1).astype(np.float64)], 1)
    mean, var = x.mean(0), x.var(0)
    delta = solve_delta(budget, w, var)
    span = x.max(0) - x.min(0)
    with np.errstate(divide="ignore"):
        step = np.where(w > 0, delta / np.sqrt(np.maximum(w, 1e-300)), np.inf)
    step = np.minimum(step, 4 * span + 1.0)  # an element the decoder ignores: one symbol
    lo = np.rint((x.min(0) - range_margin * span - mean) / step).astype(np.int64)
    hi = np.rint((x.max(0) + range_margin * span - mean) / step).astype(np.int64)
    lo, hi = np.minimum(lo, 0), np.maximum(hi, 0)
    q = np.clip(np.rint((x - mean) / step), lo, hi).astype(np.int64)
    n_intra = hi - lo + 1
    intra_freq = _freq(q - lo, n_intra, int(n_intra.max()))
    candidates = PREDICTORS if predictor == "auto" else (predictor,)
    best = None
    for name in candidates:
        probe = CodecTables(latent_dim=D, mean=mean, step=step, lo=lo, hi=hi, res_max=np.zeros(len(mean), np.int64),
                            intra_freq=intra_freq, res_freq=np.ones((len(mean), 1)), predictor=name, history=history)
        u = _residuals(probe, q, starts)
        # residuals beyond twice the 99.9th percentile are rare: the sender codes such a frame as intra
        res_max = np.minimum(np.ceil(2 * np.quantile(np.abs(u), 0.999, axis=0)).astype(np.int64) + (n_intra > 1), hi - lo)
        n_res = 2 * res_max + 1
        res_freq = _freq(u + res_max, n_res, int(n_res.max()))
        bits = _entropy_bits(u + res_max, res_freq)
        if best is None or bits < best[0]:
            best = (bits, name, res_max, res_freq)
    bits, name, res_max, res_freq = best
    info = {"delta": delta, "budget_mse": budget, "predicted_rise_mse": predicted_rise(delta, w, var),
            "training_frames": int(len(x)), "active_elements_intra": int((n_intra > 1).sum()),
            "active_elements_predicted": int((2 * res_max + 1 > 1).sum()),
            "ideal_bits_intra": _entropy_bits(q - lo, intra_freq), "ideal_bits_predicted": bits,
            **(meta or {})}
    return CodecTables(latent_dim=D, mean=mean, step=step, lo=lo, hi=hi, res_max=res_max, intra_freq=intra_freq,
                       res_freq=res_freq, predictor=name, history=history, meta=info)


def fit_codec(model_dir: str | Path, cfg: CodecFitConfig, *, avatar_dir: str | Path | None = None, progress: bool = True,
              cache_dir: Path | None = Path("runs") / "codec", write: bool = True, command: str = "") -> CodecTables:
    """The whole fit (see the module docstring); writes ``codec.json`` + ``codec.npz`` into ``model_dir``."""
    from transport.latent_codec import save_codec

    model_dir = Path(model_dir)
    stats = fit_statistics(model_dir, cfg, avatar_dir=avatar_dir, progress=progress, cache_dir=cache_dir)
    ref = cfg.reference_mse or reference_face_mse(cfg.identity, model_dir)
    budget = budget_for(cfg.budget_pct, ref, stats)
    tables = fit_tables(stats["z"], stats["gaze"], stats["starts"], stats["w"], budget, predictor=cfg.predictor,
                        history=cfg.history, range_margin=cfg.range_margin,
                        meta={"budget_pct": cfg.budget_pct, "reference_face_mse": ref})
    conceal = fit_concealment(stats["z"], stats["gaze"], stats["starts"], stats["w"])
    tables.meta["conceal"] = conceal
    if write:
        save_codec(tables, model_dir, {"fit": {**{k: v for k, v in tables.meta.items() if k != "conceal"},
                                               "config": {**asdict(cfg), "sessions": list(cfg.sessions)},
                                               "command": command, "python": platform.python_version()},
                                       "conceal": conceal})
    return tables


def budget_for(budget_pct: float, reference_mse: float, stats: dict) -> float:
    """Absolute face-pixel MSE budget: ``budget_pct`` % of the reference MSE (or, unknown, of the
    sensitivity-weighted code variance ``sum w var``)."""
    ref = reference_mse if reference_mse > 0 else float((stats["w"] * stats["var"]).sum())
    return budget_pct / 100.0 * ref


def fit_statistics(model_dir: str | Path, cfg: CodecFitConfig, *, avatar_dir=None, progress: bool = True,
                   cache_dir: Path | None = None) -> dict:
    """Training codes, sequence starts and the decoder sensitivity (cached under ``cache_dir``)."""
    cache = None if cache_dir is None else Path(cache_dir) / f"train_codes_{cfg.identity}.npz"
    codes = training_codes(model_dir, cfg, progress=progress, cache=cache)
    D = codes["z"].shape[1]
    x = np.concatenate([codes["z"], codes["gaze"].reshape(len(codes["gaze"]), -1)], 1).astype(np.float64)
    w_cache = None if cache_dir is None else Path(cache_dir) / f"sensitivity_{cfg.identity}.npz"
    key = repr((cfg.sensitivity_codes, cfg.size, str(avatar_dir), x.shape, float(x.sum())))
    cached = load_keyed_npz(w_cache, key)
    w = None if cached is None else cached["w"]
    if w is None:
        w = decoder_sensitivity(avatar_dir, x, D, identity=cfg.identity, codes=cfg.sensitivity_codes, size=cfg.size,
                                progress=progress)
        if w_cache is not None:
            save_keyed_npz(w_cache, key, {"w": w})
    assert len(w) == D + GAZE_ELEMENTS
    return {"z": codes["z"], "gaze": codes["gaze"], "starts": sequence_breaks(codes["session"], codes["frame"]),
            "w": w, "var": x.var(0)}


CONCEAL_ORDER = 4
"""Values a concealment prediction looks at (the last one shown and ``CONCEAL_ORDER - 1`` steps back)."""
CONCEAL_STEPS = 5
"""Frames in a row the receiver predicts (``runtime.playout.PlayoutConfig.max_concealed``); one set of weights each."""


def fit_concealment(z: np.ndarray, gaze: np.ndarray, starts: np.ndarray, w: np.ndarray, *,
                    order: int = CONCEAL_ORDER, steps: int = CONCEAL_STEPS) -> dict:
    """Weights of the receiver's loss concealment (``runtime.playout.LinearPredictor``), fitted on the training codes.

    The value ``k`` frames after the last one shown is predicted as ``h_0 + sum_j a_kj (h_j - h_{j+1})``
    (``h_0`` the last value shown, ``h_j`` the one ``j`` frames before it, ``j < order - 1``): the last value plus
    a learned mix of the recent steps. Holding the last frame is the special case ``a = 0`` and the LATEX
    extrapolation another (``a_1j = 1 / (T - 1)``), so on the training sequences this is never worse than either;
    the encoder's frame-to-frame noise makes the fitted weights negative (the prediction leans back towards the
    recent mean rather than running along a noisy slope). One weight vector per ``k`` and per part (code, gaze),
    shared across the part's elements, fitted by least squares weighted by the decoder sensitivity ``w``
    (rendered face-pixel MSE per unit² of each element). Returns the ``conceal`` entry of ``codec.json``."""
    D = z.shape[1]
    x = np.concatenate([z, gaze.reshape(len(gaze), -1)], 1).astype(np.float64)
    seq_id = np.cumsum(starts) - 1
    out: dict = {"order": int(order), "steps": int(steps)}
    for part, cols in (("z", slice(0, D)), ("gaze", slice(D, D + GAZE_ELEMENTS))):
        v, wp = x[:, cols], np.asarray(w, np.float64)[cols]
        sw = np.sqrt(np.maximum(wp, 0.0))
        weights = []
        for k in range(1, steps + 1):
            rows = []
            targets = []
            for t in range(order - 1 + k, len(v)):
                if seq_id[t] != seq_id[t - k - order + 1]:  # the history must lie in the frame's own sequence
                    continue
                h = v[t - k - np.arange(order)]  # (order, E) newest first
                rows.append((h[:-1] - h[1:]).T * sw[:, None])  # (E, order - 1)
                targets.append((v[t] - h[0]) * sw)
            if not rows:
                raise ValueError(f"no training sequence is longer than {order + k} frames")
            A, b = np.concatenate(rows), np.concatenate(targets)
            weights.append([round(float(c), 6) for c in np.linalg.lstsq(A, b, rcond=None)[0]])
        out[part] = weights
    return out
