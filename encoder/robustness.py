"""Robustness of an encoder to the expressions people really make: held-out performances as a new user would do them.

The test split of the range-of-motion data (:func:`encoder.data.rom_data_config`) is the reference. Each
*condition* is a different kind of performance, recorded in headset sessions and with performance seeds that
neither training nor the test split used (a new user, a new fit of the headset):

- ``frequent-fast``: half the segments extreme, all of them fast bursts (30-50 ms onsets, 0.1-0.3 s holds);
- ``asymmetric``: half the segments asymmetric (one side of the face doing what the other does not).

For each, the rendered MSE (whole frame and face pixels; :mod:`encoder.evaluate`) over every frame of the
performances, on the extreme / asymmetric frames, and its ratio to the test split's MSE. A robust encoder keeps
the ratio near 1 (the aim: <= 1.3).
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from avcore.cache import load_keyed_npz, save_keyed_npz
from avcore.progress import progress as progress_bar

CONDITIONS: dict[str, dict] = {
    "frequent-fast": {"extreme_probability": 0.5, "fast_extreme_fraction": 1.0},
    "asymmetric": {"asymmetric_probability": 0.5},
}
"""Performance settings (:class:`capture.performance.PerformanceConfig` fields) of each condition."""
HARD_FRAMES = {"frequent-fast": "mse_face_extreme", "asymmetric": "mse_face_asym_extreme"}
"""The face-pixel MSE of each condition's own kind of frames (its hard-frame ratio)."""
SESSIONS = (301, 302, 303)
"""Headset sessions (slip + exposure) no dataset of the encoders uses."""
SEED = 9000
"""Performance seeds SEED + k: apart from the datasets' (``seed * 1000 + k``, ``+ 500 + k``)."""
_KEEP = ("views", "gaze", "expression", "extreme", "asymmetric", "vertices", "enc_texture", "session", "frame")


def condition_data(identity: str, condition: str, *, seconds: float = 12.0, fps: float = 30.0,
                   sessions: tuple[int, ...] = SESSIONS, cache: Path | None = None, progress: bool = True,
                   hmc_size: int = 192, data_cfg=None) -> dict:
    """Every frame of ``condition``'s performances (one per session), with the targets the evaluation needs
    (``data_cfg``: an :class:`encoder.data.HmcDataConfig` for the render sizes; default the datasets')."""
    from avcore.errors import UsageError
    from capture.performance import PerformanceConfig

    from .data import HmcDataConfig, render_session

    if condition not in CONDITIONS:
        raise UsageError(f"unknown condition {condition!r}; known: {', '.join(CONDITIONS)}")
    pcfg = PerformanceConfig(fps=fps, **CONDITIONS[condition])
    dcfg = data_cfg or HmcDataConfig(identity=identity, fps=fps)
    key = repr((identity, condition, sorted(asdict(pcfg).items()), seconds, tuple(sessions), hmc_size,
                dcfg.render_size, dcfg.enc_texture_size))
    cached = load_keyed_npz(cache, key)
    if cached is not None:
        return cached
    parts = [render_session(identity, s, SEED + k, seconds, fps, "all", dcfg, hmc_size=hmc_size, performance=pcfg)
             for k, s in enumerate(progress_bar(sessions, desc=f"{condition} performances {identity}", unit="session",
                                                disable=not progress))]
    data = {k: np.concatenate([p[k] for p in parts]) for k in _KEEP}
    data["coverage"] = np.logical_or.reduce([p["coverage"] for p in parts])
    if cache is not None:
        save_keyed_npz(cache, key, data)
    return data


def evaluate_robustness(model_dir, identity: str, vae, test: dict, *, conditions=tuple(CONDITIONS), frames: int = 240,
                        size: int = 256, cache_dir: Path | None = None, progress: bool = True,
                        seconds: float = 12.0, sessions: tuple[int, ...] = SESSIONS, hmc_size: int = 192,
                        data_cfg=None, test_tag: str = "") -> dict:
    """The test split's MSE and each condition's, with the ratios (condition / test) of every mean. ``test_tag``:
    the test split's evaluation cache tag (:data:`encoder.train.ROM_TAG` for the range-of-motion split, whose
    evaluation Table 1 shares)."""
    from .evaluate import cached_evaluation

    ref = cached_evaluation(model_dir, identity, test, vae, size=size, max_frames=frames, progress=progress,
                            tag=test_tag)
    out = {"model_dir": str(model_dir), "identity": identity, "test": ref, "conditions": {}}
    for c in conditions:
        data = condition_data(identity, c, seconds=seconds, sessions=sessions, progress=progress, hmc_size=hmc_size,
                              data_cfg=data_cfg, cache=None if cache_dir is None else Path(cache_dir) / f"robust_{identity}_{c}.npz")
        r = cached_evaluation(model_dir, identity, data, vae, size=size, max_frames=frames, progress=progress, tag=c)
        r["ratio"] = {k: (r[k] / ref[k] if r.get(k) is not None and ref.get(k) else None)
                      for k in ("mse_mean", "mse_face_mean")}
        hard = r.get(HARD_FRAMES[c])
        r["ratio"]["mse_face_hard"] = hard / ref["mse_face_mean"] if hard is not None else None
        out["conditions"][c] = r
    return out


def render_markdown(results: list[dict], *, machine: str, command: str) -> str:
    lines = ["# Encoder robustness: held-out performances of a new user", "", f"Machine: {machine}", "",
             f"Command: `{command}`", "",
             "Rendered MSE (0..255, 256² renders, front/left/right averaged) of the avatar from the encoder's code and "
             "gaze against the one from the true code and gaze. *test*: the range-of-motion test split (held-out "
             "segments of held-out sessions). The conditions are whole performances in headset sessions and with "
             "performance seeds no dataset uses: *frequent-fast*: half the segments extreme, all as fast bursts; "
             "*asymmetric*: half the segments one-sided expressions. *ratio*: condition / test (face pixels; "
             "*hard*: the condition's extreme resp. asymmetric-or-extreme frames over the test split's mean).", "",
             "| encoder | identity | test face MSE | test MSE | condition | face MSE | ratio | hard-frame ratio | MSE | ratio |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    f = lambda x: "–" if x is None else f"{x:.2f}"  # noqa: E731
    for r in results:
        t = r["test"]
        for c, x in r["conditions"].items():
            lines.append(f"| {Path(r['model_dir']).name} | {r['identity']} | {f(t['mse_face_mean'])} | {f(t['mse_mean'])} | "
                         f"{c} | {f(x['mse_face_mean'])} | {f(x['ratio']['mse_face_mean'])} | "
                         f"{f(x['ratio']['mse_face_hard'])} | {f(x['mse_mean'])} | {f(x['ratio']['mse_mean'])} |")
    return "\n".join(lines) + "\n"


def write_results(results: list[dict], out_dir: Path, *, machine: str, command: str, name: str = "robustness") -> Path:
    from avcore.results import write_json_and_markdown

    return write_json_and_markdown(out_dir, name, {"machine": machine, "command": command, "results": results},
                                   render_markdown(results, machine=machine, command=command))
