"""``avcall search encoder``: the AVE-NAS search (Auto-CARD section 4.2) over :mod:`encoder.search_space`.

Each step alternates, after a warm-up of weight-only steps:

1. **weights**: a path of the supernet (:class:`encoder.supernet.SuperNet`: per-view operators and pooling sampled
   hard by Gumbel-softmax, widths by Gumbel-weighted channel masks, resolutions from their policies) trained on a
   training batch with the encoder's Auto-CARD loss (:func:`encoder.losses.autocard_loss`), re-weighted towards
   extreme expressions: ``exp(||g - g_bar|| / tau)`` with ``g_bar`` the EMA of the gaze (Auto-CARD Eq. 3-4);
2. **architecture**: on a batch of the frames held out for it, the same loss plus the latency term
   ``lam * relu(L / target - 1) + lam_linear * L / target``, where ``L`` is the latency table's prediction for
   the sampled path, with straight-through gradients to the logits (:meth:`SuperNet.expected_latency`); Adam on
   the logits;
3. **resolutions**: REINFORCE with a moving-average baseline: reward ``-(loss + latency term)`` of the sampled
   resolutions, ``grad = -(R - b) grad log p(resolutions)``.

The Gumbel temperature is annealed exponentially from ``gumbel_tau_start`` to ``gumbel_tau_end``. Checkpoints
(``checkpoint.pt``: state dicts and configs, never pickled objects) let a search stop and resume; every step is
logged (``search_log.jsonl``: the sampled resolutions, the most likely architecture, its LUT-predicted latency,
the losses), and the result is ``arch.json`` + ``choice.json`` + ``search_trajectory.png``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avcore.config import ConfigDict, require_positive

from .search_space import SearchSpace, to_arch


@dataclass
class SearchConfig(ConfigDict):
    """What one search optimises, and how long."""

    identity: str = "S1"
    name: str = "AVE"
    """Name of the searched architecture (``arch.json``)."""
    target_ms: float = 8.0
    """Latency target: the whole encoder (three views + fusion), one thread, as the latency table predicts it."""
    lam: float = 1.0
    """Weight of the hinge ``relu(L / target - 1)``."""
    lam_linear: float = 0.05
    """Weight of ``L / target`` (a gentle pull towards faster architectures below the target too)."""
    latency: str = "lut"
    """``lut`` (measured latency table) or ``flops`` (MFLOPs as the cost, the Table 2 ablation)."""
    reweight: bool = True
    """Extreme-expression-aware re-weighting of the loss."""
    shared: bool = False
    """One architecture for all three views (the Table 2 ablation)."""
    fixed_resolution: int = 0
    """Search at this input resolution only (0: the space's resolutions; the Table 2 ablation uses 192)."""
    tau: float = 0.25
    """Temperature of the re-weighting (radians of gaze)."""
    momentum: float = 0.99
    """EMA momentum of the mean gaze."""
    batch_size: int = 16
    lr: float = 1e-3
    """Supernet weights (AdamW)."""
    arch_lr: float = 3e-3
    """Architecture logits (Adam)."""
    res_lr: float = 0.05
    """Resolution policies (Adam on the REINFORCE gradient)."""
    baseline_momentum: float = 0.9
    gumbel_tau_start: float = 5.0
    gumbel_tau_end: float = 0.5
    warmup_frac: float = 0.2
    """Share of the steps that train only the weights (uniformly sampled paths)."""
    arch_every: int = 1
    """Architecture (and resolution) update every this many steps after the warm-up."""
    steps: int = 3000
    time_budget_s: float = 5400.0
    """Wall-clock budget (the schedule runs to whichever of steps / budget comes first)."""
    checkpoint_every_s: float = 120.0
    augment: bool = True
    threads: int = 2
    seed: int = 0
    warm_start: str = ""
    """A search directory whose supernet weights (trained by its warm-up) this search starts from, so several
    latency targets share one weight warm-up; its architecture logits are not taken."""

    def __post_init__(self) -> None:
        require_positive("search", target_ms=self.target_ms, batch_size=self.batch_size, steps=self.steps,
                         time_budget_s=self.time_budget_s)
        if self.latency not in ("lut", "flops"):
            from avcore.errors import UsageError

            raise UsageError(f"search: latency must be lut or flops, got {self.latency!r}")


class FlopTable:
    """The latency table's interface with MFLOPs instead of measured ms (the FLOPs-constrained ablation)."""

    overhead_ms = 0.0

    def __init__(self) -> None:
        self.entries: dict[str, float] = {}

    def get(self, key: str) -> float:
        if key not in self.entries:
            import torch
            from torch.utils.flop_counter import FlopCounterMode

            from .lut import entry_module

            module, example = entry_module(key)
            with torch.no_grad(), FlopCounterMode(display=False) as fc:
                module(example)
            self.entries[key] = fc.get_total_flops() / 1e6
        return self.entries[key]

    def fill(self, keys, progress: bool = True) -> None:
        for k in keys:
            self.get(k)

    def predict(self, arch) -> dict:
        from .flops import analytic_flops

        return {k: v / 1e6 for k, v in analytic_flops(arch).items()}


class _KeyRecorder:
    overhead_ms = 0.0

    def __init__(self) -> None:
        self.keys: set[str] = set()

    def get(self, key: str) -> float:
        self.keys.add(key)
        return 0.0


def latency_keys(net, space: SearchSpace) -> set[str]:
    """Every latency-table key :meth:`SuperNet.expected_latency` can ask for (resolutions x widths x operators)."""
    from .arch import VIEW_NAMES

    rec = _KeyRecorder()
    for r in space.resolutions:
        net.expected_latency(rec, {v: r for v in VIEW_NAMES})
    return rec.keys | {"empty:"}


@dataclass
class SearchResult:
    steps: int
    elapsed_s: float
    choice: dict
    arch: dict
    predicted_ms: float
    out_dir: Path


def run_search(out_dir: str | Path, cfg: SearchConfig, *, data: dict, vae, table, space: SearchSpace | None = None,
               resume: bool = True, progress: bool = True) -> SearchResult:
    """Search on ``data`` (HMC arrays with every target, see :mod:`encoder.data`) against the frozen ``vae``.

    ``table``: a :class:`encoder.lut.LatencyTable` (or :class:`FlopTable`); the entries the search can need are
    measured first (cached in the table's file). Resumes from ``out_dir/checkpoint.pt`` when present."""
    import torch
    from torch.nn import functional as F

    from avcore.training import TrainingLoop, open_run, resumed_config

    from . import codec as _codec
    from .arch import VIEW_NAMES
    from .losses import GazeReweighting, LossWeights, autocard_loss
    from .supernet import SuperNet
    from .train import EncoderTrainConfig, augment_hmc, batch_tensors

    torch.set_num_threads(cfg.threads)
    out_dir, ckpt_path, ckpt = open_run(out_dir, resume)
    if ckpt is not None:
        cfg = resumed_config(SearchConfig, ckpt["search_config"], cfg)
        space = SearchSpace.from_dict(ckpt["space"])
    space = space or SearchSpace()
    if cfg.fixed_resolution:
        space = SearchSpace.from_dict({**space.to_dict(), "resolutions": (cfg.fixed_resolution,)})
    _codec.attach_codes(data, vae)
    z_std = np.maximum(data["z_gt"].std(0), 1e-2).astype(np.float32)
    N = len(data["views"])
    arch_idx = np.arange(N)[np.arange(N) % 10 == 9]  # every 10th frame is held out for the architecture steps
    weight_idx = np.setdiff1d(np.arange(N), arch_idx)
    if len(arch_idx) == 0:
        arch_idx = weight_idx
    torch.manual_seed(cfg.seed)
    dims = {"latent_dim": int(data["z_gt"].shape[1]), "num_keypoints": int(data["keypoints"].shape[2])}
    net = SuperNet(space, **dims, shared=cfg.shared)
    opt_w = torch.optim.AdamW(net.weight_parameters(), lr=cfg.lr, weight_decay=1e-5)
    opt_a = torch.optim.Adam(net.arch_parameters(), lr=cfg.arch_lr, betas=(0.5, 0.999))
    opt_r = torch.optim.Adam(net.resolution_parameters(), lr=cfg.res_lr)
    reweight = GazeReweighting(cfg.tau, cfg.momentum, cfg.reweight)
    step, elapsed0, baseline = 0, 0.0, None
    if ckpt is not None:
        net.load_state_dict(ckpt["model"])
        opt_w.load_state_dict(ckpt["opt_w"])
        opt_a.load_state_dict(ckpt["opt_a"])
        opt_r.load_state_dict(ckpt["opt_r"])
        reweight.load_state_dict(ckpt["reweighting"])
        step, elapsed0, baseline = ckpt["step"], ckpt["elapsed_s"], ckpt["baseline"]
    elif cfg.warm_start:
        load_warm_start(net, opt_w, reweight, cfg, space)
    (out_dir / "search_config.json").write_text(json.dumps({"search": cfg.to_dict(), "space": space.to_dict()}, indent=2))
    table.fill(latency_keys(net, space), progress=progress)
    decoder = vae.decoder
    weights = LossWeights(**EncoderTrainConfig().weights)
    aug = EncoderTrainConfig(augment=cfg.augment)
    zs = torch.from_numpy(z_std)
    coverage = torch.from_numpy(data["coverage"])
    S = float(data["views"].shape[-1])
    rng = np.random.default_rng(cfg.seed * 7919 + step)
    gen = torch.Generator().manual_seed(cfg.seed * 104729 + step)
    log_path = out_dir / "search_log.jsonl"
    scale = 1.0 / cfg.target_ms

    def latency_term(lat):
        return cfg.lam * F.relu(lat * scale - 1.0) + cfg.lam_linear * lat * scale

    def batch(idx_pool):
        b = batch_tensors(data, rng.choice(idx_pool, cfg.batch_size))
        if cfg.augment:
            b["views"], b["keypoints"] = augment_hmc(b["views"], b["keypoints"], gen, aug)
        return b

    def sample_resolutions(uniform: bool) -> tuple[dict, torch.Tensor]:
        drawn, logp = {}, torch.zeros(())
        for key, lgs in net.logits.items():
            lg = lgs.resolution
            p = torch.full_like(lg, 1.0 / len(lg)) if uniform else F.softmax(lg, -1)
            i = int(torch.multinomial(p.detach(), 1, generator=gen))
            drawn[key] = space.resolutions[i]
            logp = logp + F.log_softmax(lg, -1)[i]
        return {v: drawn["shared" if net.shared else v] for v in VIEW_NAMES}, logp

    loop = TrainingLoop(
        ckpt_path, lambda: {"model": net.state_dict(), "opt_w": opt_w.state_dict(), "opt_a": opt_a.state_dict(),
                            "opt_r": opt_r.state_dict(), "reweighting": reweight.state_dict(), "baseline": baseline,
                            "search_config": cfg.to_dict(), "space": space.to_dict()},
        steps=cfg.steps, time_budget_s=cfg.time_budget_s, checkpoint_every_s=cfg.checkpoint_every_s, step=step,
        elapsed_s=elapsed0, desc=f"search encoder {cfg.identity} target {cfg.target_ms:g} ms", progress=progress)
    net.train()
    for step, frac in loop:
        tau = cfg.gumbel_tau_start * (cfg.gumbel_tau_end / cfg.gumbel_tau_start) ** frac
        warm = frac < cfg.warmup_frac
        # 1. weights
        res, _ = sample_resolutions(uniform=warm)
        b = batch(weight_idx)
        out = net(b["views"], res, net.sample(tau, gen))
        losses = autocard_loss(out, b, decoder, zs, coverage, S, weights, reweight(b["gaze"]))
        opt_w.zero_grad(set_to_none=True)
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(net.weight_parameters(), 2.0)
        opt_w.step()
        record = {"step": step, "tau": round(tau, 4), "warmup": warm, "weight_loss": float(losses["total"].detach())}
        # 2 + 3. architecture and resolutions
        if not warm and step % cfg.arch_every == 0:
            res, logp = sample_resolutions(uniform=False)
            b = batch(arch_idx)
            w = net.sample(tau, gen)
            out = net(b["views"], res, w)
            task = autocard_loss(out, b, decoder, zs, coverage, S, weights, reweight(b["gaze"]))["total"]
            lat = net.expected_latency(table, res, w)  # the sampled path's cost (straight-through)
            arch_loss = task + latency_term(lat)
            opt_a.zero_grad(set_to_none=True)
            arch_loss.backward()
            opt_a.step()
            reward = -float(arch_loss.detach())
            baseline = reward if baseline is None else cfg.baseline_momentum * baseline + (1 - cfg.baseline_momentum) * reward
            opt_r.zero_grad(set_to_none=True)
            (-(reward - baseline) * logp).backward()
            opt_r.step()
            opt_w.zero_grad(set_to_none=True)  # the architecture step's weight gradients are not used
            record.update({"arch_loss": float(arch_loss.detach()), "task_loss": float(task.detach()),
                           "expected_ms": float(lat.detach()), "resolutions": res, "reward": reward,
                           "baseline": baseline})
        if step % 10 == 0 or step == 1:
            choice = net.derive(cfg.name)
            record["derived_ms"] = table.predict(to_arch(space, choice, **dims))["total"]
            record["derived"] = {v: {"resolution": c.resolution, "depths": c.depths, "pool": c.pool}
                                 for v, c in choice.views.items()}
            with log_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        loop.report({"loss": f"{record['weight_loss']:.3g}", "tau": f"{tau:.2f}",
                     **({"exp_ms": f"{record['expected_ms']:.1f}"} if "expected_ms" in record else {})})
    choice = net.derive(cfg.name)
    arch = to_arch(space, choice, **dims)
    predicted = table.predict(arch)["total"]
    (out_dir / "arch.json").write_text(arch.to_json())
    (out_dir / "choice.json").write_text(json.dumps({**choice.to_dict(), "predicted_ms": predicted,
                                                     "latency": cfg.latency}, indent=2))
    plot_trajectory(log_path, out_dir / "search_trajectory.png", cfg.target_ms)
    return SearchResult(loop.step, loop.elapsed_s, choice.to_dict(), arch.to_dict(), predicted, out_dir)


def load_warm_start(net, opt_w, reweight, cfg: SearchConfig, space: SearchSpace) -> None:
    """Supernet weights, their optimiser and the gaze EMA from the search in ``cfg.warm_start``; its architecture
    and resolution logits stay behind (the new search starts from uniform ones). The weights are per view either
    way, so a shared-architecture search can start from a per-view warm-up and the other way round."""
    import torch

    from avcore.errors import UsageError

    path = Path(cfg.warm_start) / "checkpoint.pt"
    if not path.is_file():
        raise UsageError(f"--warm-start: {path} missing")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    theirs = SearchConfig.from_dict(ckpt["search_config"])
    other = SearchSpace.from_dict(ckpt["space"])
    same_space = (SearchSpace.from_dict({**other.to_dict(), "resolutions": space.resolutions}) == space
                  and set(space.resolutions) <= set(other.resolutions))  # a fixed resolution may narrow them
    if not same_space or theirs.identity != cfg.identity:
        raise UsageError(f"--warm-start: {cfg.warm_start} searched another space or identity")
    arch = {n for n, p in net.named_parameters() if any(p is q for q in net.arch_parameters() + net.resolution_parameters())}
    net.load_state_dict({k: v for k, v in ckpt["model"].items() if k not in arch}, strict=False)
    try:
        opt_w.load_state_dict(ckpt["opt_w"])  # its moments; the learning rate stays this search's
    except ValueError:  # fewer weights (one resolution's flatten layers): fresh moments
        pass
    for group in opt_w.param_groups:
        group["lr"] = cfg.lr
    reweight.load_state_dict(ckpt["reweighting"])


def read_log(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_trajectory(log_path: Path, path: Path, target_ms: float) -> Path | None:
    """Losses and latencies over the search (from ``search_log.jsonl``)."""
    rows = read_log(log_path)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.plot([r["step"] for r in rows], [r["weight_loss"] for r in rows], label="weights step (training frames)")
    arch = [r for r in rows if "task_loss" in r]
    if arch:
        a.plot([r["step"] for r in arch], [r["task_loss"] for r in arch], label="architecture step (held-out frames)")
        b.plot([r["step"] for r in arch], [r["expected_ms"] for r in arch], label="sampled path (the architecture the step trained)")
    b.plot([r["step"] for r in rows], [r["derived_ms"] for r in rows], label="most likely architecture")
    b.axhline(target_ms, color="gray", ls=":", label=f"target {target_ms:g} ms")
    a.set_xlabel("step")
    a.set_ylabel("Auto-CARD loss (re-weighted)")
    a.set_yscale("log")
    a.legend(fontsize=8)
    b.set_xlabel("step")
    b.set_ylabel("predicted latency (ms, LUT)")
    b.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
