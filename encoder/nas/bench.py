"""The avatar-encoder benchmark: architectures of the AVE-NAS space with their measured quality, for predictors.

``avcall nas bench`` samples ``archs`` architectures of :class:`encoder.search_space.SearchSpace` (seeded) and
gives every one:

- cheap proxies: MFLOPs, parameters, the latency table's prediction (one thread, this machine);
- a **supernet-inherited** quality: the architecture's path through a trained AVE-NAS supernet (a search
  directory, e.g. the weight warm-up ``runs/search/S1-warm``), its batch-norm statistics re-estimated on a few
  training batches, evaluated on held-out frames of the range-of-motion test split (standardised latent MSE and
  gaze error);

and the first ``trained`` of them (a random subset, since the sample is) a **standalone training** with a short
fixed schedule (``steps`` steps, batch 8, no re-weighting, range-of-motion data, seed 0) and its ground truth:
face-pixel MSE of the rendered avatar on ``eval_frames`` frames of the test split, and the measured latency of
the exported encoder (onnxruntime, one thread, all in one run at the end).

Every training and every chunk of inherited evaluations is one **Ray** task (one CPU each): ``ray.init()``
starts a local Ray on this machine, ``--address`` joins an existing cluster (``ray start --head`` on one machine,
``ray start --address HEAD:6379`` on the others, avcall installed on each), so more machines run more trials
at once with the same command. Results are appended to ``OUT/trials.jsonl`` / ``OUT/inherited.jsonl`` as they
finish; a stopped run resumes (finished trials are skipped, an interrupted training resumes from its
checkpoint in ``OUT/trials/ID``). The benchmark is written to a versioned data file
(``docs/results/ave_bench.json``, :data:`VERSION`) with the command and machine.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from avcore.config import ConfigDict

VERSION = 1
"""Version of the benchmark file's format."""

MODEL_FILES = (".onnx", ".json")
"""What of a trial's directory makes its exported encoder (the latency measurement loads it)."""


@dataclass
class BenchConfig(ConfigDict):
    identity: str = "S1"
    archs: int = 300
    """Architectures sampled from the space (all get proxies and the supernet-inherited quality)."""
    trained: int = 80
    """How many of them are trained standalone (the first ones of the random sample)."""
    seed: int = 0
    steps: int = 150
    """Standalone training schedule: steps (batch ``batch_size``, ``lr``, no re-weighting)."""
    batch_size: int = 8
    lr: float = 2e-3
    eval_frames: int = 96
    """Test-split frames of the ground truth (evenly spaced)."""
    render_size: int = 128
    supernet: str = "runs/search/S1-warm"
    """Search directory whose supernet gives the inherited quality ("" = none)."""
    inherit_frames: int = 64
    calib_batches: int = 4
    """Training batches (16 frames) that re-estimate batch-norm statistics of an inherited path."""
    chunk: int = 25
    """Architectures per inherited-evaluation task."""
    data_path: str = ""
    """HMC data cache (``train_*`` / ``test_*`` arrays) instead of the identity's range-of-motion data (tests)."""
    decoder_dir: str = ""
    """Trained decoder instead of the embedded one (tests)."""
    space: dict = field(default_factory=dict)
    """The search space (empty: the default :class:`encoder.search_space.SearchSpace`)."""
    latent_dim: int = 256
    """The decoder's code size (the architectures' output)."""


def search_space(cfg: BenchConfig):
    from ..search_space import SearchSpace

    return SearchSpace.from_dict(cfg.space) if cfg.space else SearchSpace()


def sample_pool(cfg: BenchConfig) -> list[dict]:
    """``cfg.archs`` distinct architectures: ``{"id", "choice", "arch"}`` (plain data)."""
    from ..search_space import sample_choice, to_arch

    space = search_space(cfg)
    rng = np.random.default_rng(cfg.seed)
    pool, seen = [], set()
    tries = 0
    while len(pool) < cfg.archs:
        tries += 1
        if tries > 50 * cfg.archs:
            raise ValueError(f"the space has fewer than {cfg.archs} distinct architectures")
        c = sample_choice(space, rng, name=f"bench-{len(pool):03d}")
        a = to_arch(space, c, latent_dim=cfg.latent_dim)
        key = json.dumps({**a.to_dict(), "name": ""}, sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        pool.append({"id": c.name, "choice": c.to_dict(), "arch": a.to_dict()})
    return pool


def proxies(entry: dict, lut) -> dict:
    """MFLOPs, parameter count and (with a latency table) the predicted ms of one pool entry."""
    from ..arch import EncoderArch
    from ..flops import analytic_flops
    from ..model import build_encoder

    arch = EncoderArch.from_dict(entry["arch"])
    out = {"mflops": analytic_flops(arch)["total"] / 1e6,
           "params": int(sum(p.numel() for p in build_encoder(arch).parameters()))}
    if lut is not None:
        out["lut_ms"] = lut.predict(arch)["total"]
    return out


# ---------------------------------------------------------------------------------------------- worker side
_CACHE: dict = {}


def _data(cfg: BenchConfig):
    """(train, test, vae) of the benchmark's identity, loaded once per worker process."""
    key = (cfg.identity, cfg.data_path, cfg.decoder_dir)
    if _CACHE.get("key") != key:
        from decoder.export import load_vae

        from ..codec import attach_codes
        from ..train import load_rom_data

        if cfg.data_path:
            with np.load(cfg.data_path) as z:
                train = {k[6:]: z[k] for k in z.files if k.startswith("train_")}
                test = {k[5:]: z[k] for k in z.files if k.startswith("test_")}
        else:
            train, test = load_rom_data(cfg.identity, progress=False)
        vae = load_vae(cfg.identity, cfg.decoder_dir or None)
        n = len(test["views"])
        sel = np.linspace(0, n - 1, min(n, max(cfg.eval_frames, cfg.inherit_frames))).astype(int)
        test = attach_codes({k: (v[sel] if k != "coverage" else v) for k, v in test.items()}, vae)
        some = np.random.default_rng(0).choice(len(train["views"]), min(512, len(train["views"])), replace=False)
        sub = attach_codes({k: train[k][some] for k in ("vertices", "enc_texture")}, vae)
        _CACHE.clear()
        _CACHE.update(key=key, train=train, test=test, vae=vae, z_std=np.maximum(sub["z_gt"].std(0), 1e-2))
    return _CACHE["train"], _CACHE["test"], _CACHE["vae"]


def inherited_chunk(entries: list[dict], cfg_dict: dict) -> list[dict]:
    """Supernet-inherited quality of several pool entries (one Ray task)."""
    import torch

    from ..search_space import Choice, SearchSpace
    from ..supernet import SuperNet

    torch.set_num_threads(1)
    cfg = BenchConfig.from_dict(cfg_dict)
    train, test, vae = _data(cfg)
    ckpt = torch.load(Path(cfg.supernet) / "checkpoint.pt", map_location="cpu", weights_only=True)
    space = SearchSpace.from_dict(ckpt["space"])
    net = SuperNet(space, latent_dim=int(test["z_gt"].shape[1]), num_keypoints=int(test["keypoints"].shape[2]),
                   shared=bool(ckpt["search_config"].get("shared", False)))
    net.load_state_dict(ckpt["model"])
    bns = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    rng = np.random.default_rng(cfg.seed)
    calib = [torch.from_numpy(train["views"][rng.choice(len(train["views"]), 16)]) for _ in range(cfg.calib_batches)]
    n = min(cfg.inherit_frames, len(test["views"]))
    sel = np.linspace(0, len(test["views"]) - 1, n).astype(int)
    views = torch.from_numpy(test["views"][sel])
    z_gt = test["z_gt"][sel]
    z_std = _CACHE["z_std"]
    out = []
    for e in entries:
        choice = Choice.from_dict(e["choice"])
        w = net.path_weights(choice)
        res = {v: c.resolution for v, c in choice.views.items()}
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
        net.train()
        with torch.no_grad():
            for b in calib:
                net(b, res, w)
            net.eval()
            o = net(views, res, w)
        lat = float((((o["z"].numpy() - z_gt) / z_std) ** 2).mean())
        gz = float(np.degrees(np.abs(o["gaze"].numpy() - test["gaze"][sel])).mean())
        out.append({"id": e["id"], "latent_mse": lat, "gaze_mae_deg": gz})
    return out


def train_trial(entry: dict, cfg_dict: dict, run_dir: str) -> dict:
    """Standalone training of one pool entry with the benchmark's schedule and its ground truth (one Ray task;
    resumes from ``run_dir/checkpoint.pt``)."""
    import time

    import torch

    from ..arch import EncoderArch
    from ..evaluate import evaluate_model_dir
    from ..train import EncoderTrainConfig, train_encoder

    torch.set_num_threads(1)
    cfg = BenchConfig.from_dict(cfg_dict)
    train, test, vae = _data(cfg)
    t0 = time.time()
    arch = EncoderArch.from_dict(entry["arch"])
    tcfg = EncoderTrainConfig(identity=cfg.identity, batch_size=cfg.batch_size, lr=cfg.lr, steps=cfg.steps,
                              time_budget_s=1e9, reweight=False, threads=1, seed=0)
    r = train_encoder(run_dir, arch, tcfg, data=train, vae=vae, resume=True, progress=False)
    ev = evaluate_model_dir(r.model_dir, cfg.identity, test, vae, size=cfg.render_size, max_frames=cfg.eval_frames)
    # The exported encoder travels back with the result: on a cluster the trial ran on another machine, and the
    # driver measures every trained encoder's latency itself, on one machine, in one sitting.
    files = {f.name: f.read_bytes() for f in Path(r.model_dir).iterdir() if f.is_file() and f.suffix in MODEL_FILES}
    return {"id": entry["id"], "steps": r.steps, "train_s": round(time.time() - t0, 1),
            **{k: ev[k] for k in ("mse_face_mean", "mse_mean", "mse_face_asym_extreme", "mse_face_extreme",
                                  "gaze_mae_deg")}, "files": files}


def _store_model(result: dict, trial_dir: Path) -> dict:
    """Write a finished trial's exported encoder into ``trial_dir`` (unless it is already there, as when the
    trial ran on this machine); returns the result without the files."""
    files = result.pop("files", {})
    trial_dir.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        path = trial_dir / name
        if not path.is_file() or path.read_bytes() != data:
            path.write_bytes(data)
    return result


# ---------------------------------------------------------------------------------------------- driver side
def _read_jsonl(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    rows = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            rows[r["id"]] = r
    return rows


def _append(path: Path, rows: list[dict]) -> None:
    with path.open("a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def run_benchmark(cfg: BenchConfig, out_dir: str | Path, *, address: str | None = None, workers: int = 2,
                  lut_path: str | Path | None = None, progress: bool = True) -> dict:
    """Sample the pool, run the missing inherited evaluations and trainings as Ray tasks (results appended as
    they finish), measure the trained encoders' latency; returns the benchmark (see :func:`assemble`)."""
    import ray

    from avcore.errors import UsageError
    from avcore.progress import progress as progress_bar

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = out_dir / "bench_config.json"
    if cfg_path.is_file():
        old = BenchConfig.from_dict(json.loads(cfg_path.read_text()))
        free = {"archs", "trained"}
        if not _read_jsonl(out_dir / "inherited.jsonl"):
            free.add("supernet")  # nothing inherited yet: a benchmark started without a supernet can gain one
        diff = [k for k in cfg.to_dict() if getattr(old, k) != getattr(cfg, k) and k not in free]
        if diff:
            raise UsageError(f"{out_dir} holds a benchmark with other settings ({', '.join(diff)}); use another --out")
    cfg_path.write_text(json.dumps(cfg.to_dict(), indent=2))
    if cfg.trained > cfg.archs:
        raise UsageError(f"--trained ({cfg.trained}) cannot exceed --archs ({cfg.archs})")
    if cfg.supernet and not (Path(cfg.supernet) / "checkpoint.pt").is_file():
        raise UsageError(f"supernet {cfg.supernet}/checkpoint.pt missing: run 'avcall search encoder' first "
                         "(e.g. the --warmup-frac 1 weight warm-up), or give --supernet ''")
    pool = sample_pool(cfg)
    inherited_path, trials_path = out_dir / "inherited.jsonl", out_dir / "trials.jsonl"
    inherited, trials = _read_jsonl(inherited_path), _read_jsonl(trials_path)
    todo_inh = [e for e in pool if e["id"] not in inherited] if cfg.supernet else []
    todo_tr = [e for e in pool[: cfg.trained] if e["id"] not in trials]
    if todo_inh or todo_tr:
        if address:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        try:
            cd = cfg.to_dict()
            inh_task = ray.remote(num_cpus=1)(inherited_chunk)
            tr_task = ray.remote(num_cpus=1, max_retries=1)(train_trial)
            futures = {}
            # The trainings (the ground truth) are queued first: a benchmark cut short has them, and the
            # trained architectures are the first of the pool, whose inherited chunks come next.
            for e in todo_tr:
                futures[tr_task.remote(e, cd, str(out_dir / "trials" / e["id"]))] = ("trial", 1)
            for a in range(0, len(todo_inh), cfg.chunk):
                futures[inh_task.remote(todo_inh[a: a + cfg.chunk], cd)] = ("inherited", len(todo_inh[a: a + cfg.chunk]))
            bar = progress_bar(total=len(todo_inh) + len(todo_tr), desc=f"benchmark {cfg.identity}", unit="arch",
                               disable=not progress)
            pending = list(futures)
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                kind, n = futures[done[0]]
                result = ray.get(done[0])
                if kind == "trial":
                    result = _store_model(result, out_dir / "trials" / result["id"])
                _append(inherited_path if kind == "inherited" else trials_path, result if kind == "inherited" else [result])
                bar.update(n)
            bar.close()
        finally:
            ray.shutdown()
    return assemble(cfg, out_dir, pool, lut_path=lut_path, progress=progress)


def assemble(cfg: BenchConfig, out_dir: Path, pool: list[dict], *, lut_path=None, progress: bool = True) -> dict:
    """Pool + proxies + inherited + trials (+ the trained encoders' latency, measured here once) as one dict."""
    from ..bench import bench_model_dir

    lut = None
    if lut_path:
        from ..lut import LatencyTable

        lut = LatencyTable(lut_path)
    inherited, trials = _read_jsonl(out_dir / "inherited.jsonl"), _read_jsonl(out_dir / "trials.jsonl")
    lat_path = out_dir / "latency.json"
    measured = json.loads(lat_path.read_text()) if lat_path.is_file() else {}
    for i in trials:
        if i not in measured:
            measured[i] = bench_model_dir(out_dir / "trials" / i, runs=60)["encode_ms_p50"]["total"]
    lat_path.write_text(json.dumps(measured, indent=2))
    archs = []
    for e in pool:
        row = {**e, **proxies(e, lut)}
        if e["id"] in inherited:
            row["supernet"] = {k: v for k, v in inherited[e["id"]].items() if k != "id"}
        if e["id"] in trials:
            row["trained"] = {**{k: v for k, v in trials[e["id"]].items() if k != "id"}, "measured_ms": measured[e["id"]]}
        archs.append(row)
    return {"version": VERSION, "config": cfg.to_dict(), "space": search_space(cfg).to_dict(), "archs": archs}


def write_bench(bench: dict, path: str | Path, *, machine: str, command: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**bench, "machine": machine, "command": command}, indent=1))
    return path


def read_bench(path: str | Path) -> dict:
    from avcore.errors import UsageError

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"benchmark file {path} missing: run 'avcall search bench' first")
    b = json.loads(path.read_text())
    if b.get("version") != VERSION:
        raise UsageError(f"{path}: benchmark format version {b.get('version')}, this avcall reads {VERSION}")
    return b
