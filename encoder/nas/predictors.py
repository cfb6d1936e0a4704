"""Architecture performance predictors: a plain GCN and CARL (causality-guided architecture representation learning).

Both read an architecture graph (:mod:`encoder.nas.graph`) and predict a *score* (higher = better; the benchmark
uses ``-log`` of the face-pixel MSE, standardised), trained with a pairwise ranking loss, since a search only needs
the order (judged by Kendall's tau).

**GCN**: graph convolutions ``H' = relu(Â H W)`` (``Â``: the symmetrically normalised adjacency of the undirected
graph with self-loops), a readout of the mean and the sum over the nodes, an MLP regressor.

**CARL**: the same GCN encodes the nodes; an MLP gives every node a soft mask ``m_v`` and every edge one
``m_uv`` (from its two endpoints). The *critical* substructure is the graph with node features ``m_v h_v`` and
edges ``m_uv``, the *redundant* one its complement (``1 - m``); one more graph convolution and a readout give
``z_c`` and ``z_r``. Three heads:

- the causal regressor ``f_c(z_c)``: the prediction, trained with the ranking loss;
- the redundant head ``f_r(z_r)``: logits over ``bins`` quantile bins of the score, pushed towards the uniform
  distribution (``KL(U || softmax)``): the redundant part must not tell good from bad;
- the whole-graph head ``f_i(z_c + z_r)``, which sees both parts and is trained to rank as well; on an
  *intervention* ``f_i(z_c[i] + z_r[π(i)])`` (the critical part of architecture i with the redundant part of
  another, π a random permutation of the batch) it must keep the prediction of the architecture whose critical
  part it carries: the intervention loss is ``mean_i (f_i(z_c[i] + z_r[π(i)]) − f_i(z_c[i] + z_r[i]))²``. It is
  zero where the swapped redundant parts match, and it can only be zero across different architectures if what
  ranks them lives in the critical part.

Loss = ranking(f_c) + λ1 · uniform(f_r) + λ2 · (ranking(f_i) + intervention) + λ_ratio · (mean node mask −
ratio)², the last keeping the critical part a real subset (without it all-critical masks satisfy everything).
Defaults: λ1 = 0.5, λ2 = 0.5, ratio 0.5, λ_ratio = 1. The critical and redundant masks sum to one on every node
and every edge.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from avcore.config import ConfigDict

from .graph import FEATURES


@dataclass
class PredictorConfig(ConfigDict):
    kind: str = "carl"
    """``carl`` or ``gcn``."""
    hidden: int = 64
    layers: int = 2
    """Graph convolutions of the encoder."""
    epochs: int = 300
    lr: float = 2e-3
    weight_decay: float = 1e-4
    lambda_uniform: float = 0.5
    """λ1: weight of the redundant head's uniform loss (CARL)."""
    lambda_intervention: float = 0.5
    """λ2: weight of the intervention ranking loss (CARL)."""
    ratio: float = 0.5
    """Target share of critical nodes (CARL)."""
    lambda_ratio: float = 1.0
    bins: int = 4
    """Score bins of the redundant head (CARL)."""
    seed: int = 0


def normalized_adjacency(adj: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``D^-1/2 (A + Aᵀ + I) D^-1/2`` over the valid nodes; ``adj`` (B, N, N) may be soft (masked edges)."""
    a = adj + adj.transpose(1, 2) + torch.diag_embed(mask)
    d = a.sum(-1).clamp(min=1e-6).pow(-0.5) * mask
    return d[..., :, None] * a * d[..., None, :]


def readout(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean and (scaled) sum over the valid nodes: the sum keeps how much an architecture computes in total."""
    s = (h * mask[..., None]).sum(1)
    return torch.cat([s / mask.sum(1, keepdim=True).clamp(min=1.0), s / 16.0], -1)


class GCNEncoder(nn.Module):
    def __init__(self, features: int, hidden: int, layers: int):
        super().__init__()
        self.lins = nn.ModuleList([nn.Linear(features if i == 0 else hidden, hidden) for i in range(layers)])

    def forward(self, x: torch.Tensor, adj: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        a = normalized_adjacency(adj, mask)
        h = x
        for lin in self.lins:
            h = F.relu(a @ lin(h)) * mask[..., None]
        return h


def _mlp(i: int, h: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, h), nn.ReLU(), nn.Linear(h, o))


def ranking_loss(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pairwise logistic loss: ``softplus(-(p_i - p_j))`` over the pairs with ``y_i > y_j``."""
    dy = y[:, None] - y[None, :]
    dp = pred[:, None] - pred[None, :]
    pairs = dy > 0
    if not pairs.any():
        return pred.sum() * 0.0
    return F.softplus(-dp[pairs]).mean()


class GCNPredictor(nn.Module):
    def __init__(self, cfg: PredictorConfig):
        super().__init__()
        self.enc = GCNEncoder(len(FEATURES), cfg.hidden, cfg.layers)
        self.head = _mlp(2 * cfg.hidden, cfg.hidden, 1)

    def forward(self, g: dict) -> dict:
        h = self.enc(g["x"], g["adj"], g["mask"])
        return {"pred": self.head(readout(h, g["mask"])).squeeze(-1)}

    def loss(self, g: dict, y: torch.Tensor, cfg: PredictorConfig, generator: torch.Generator) -> torch.Tensor:
        return ranking_loss(self(g)["pred"], y)


class CARLPredictor(nn.Module):
    def __init__(self, cfg: PredictorConfig):
        super().__init__()
        H = cfg.hidden
        self.enc = GCNEncoder(len(FEATURES), H, cfg.layers)
        self.node_mask = _mlp(H, H // 2, 1)
        self.edge_mask = _mlp(2 * H, H // 2, 1)
        self.conv_c = nn.Linear(H, H)
        self.conv_r = nn.Linear(H, H)
        self.f_c = _mlp(2 * H, H, 1)
        self.f_r = _mlp(2 * H, H, cfg.bins)
        self.f_i = _mlp(2 * H, H, 1)

    def parts(self, g: dict) -> dict:
        x, adj, mask = g["x"], g["adj"], g["mask"]
        h = self.enc(x, adj, mask)
        mv = torch.sigmoid(self.node_mask(h)).squeeze(-1) * mask  # (B, N)
        b, i, j = adj.nonzero(as_tuple=True)  # the existing edges only
        me = torch.zeros_like(adj)
        me[b, i, j] = torch.sigmoid(self.edge_mask(torch.cat([h[b, i], h[b, j]], -1))).squeeze(-1) * adj[b, i, j]
        out = {"node_mask": mv, "edge_mask": me, "node_mask_r": (1 - mv) * mask, "edge_mask_r": adj - me}
        for name, m_n, m_e, conv in (("c", mv, me, self.conv_c), ("r", out["node_mask_r"], out["edge_mask_r"], self.conv_r)):
            a = normalized_adjacency(m_e, mask)
            z = F.relu(a @ conv(h * m_n[..., None])) * mask[..., None]
            out[f"z_{name}"] = readout(z, mask)
        return out

    def forward(self, g: dict) -> dict:
        p = self.parts(g)
        return {"pred": self.f_c(p["z_c"]).squeeze(-1), **p}

    def loss(self, g: dict, y: torch.Tensor, cfg: PredictorConfig, generator: torch.Generator) -> torch.Tensor:
        p = self.parts(g)
        rank = ranking_loss(self.f_c(p["z_c"]).squeeze(-1), y)
        logits = self.f_r(p["z_r"])
        uniform = F.kl_div(F.log_softmax(logits, -1), torch.full_like(logits, 1.0 / logits.shape[-1]),
                           reduction="batchmean")
        perm = torch.randperm(len(y), generator=generator)
        f_whole = self.f_i(p["z_c"] + p["z_r"]).squeeze(-1)
        whole = ranking_loss(f_whole, y)
        inter = self.intervention_loss(p, perm, f_whole)
        share = p["node_mask"].sum(1) / g["mask"].sum(1)
        ratio = ((share - cfg.ratio) ** 2).mean()
        return (rank + cfg.lambda_uniform * uniform + cfg.lambda_intervention * (whole + inter)
                + cfg.lambda_ratio * ratio)

    def intervention_loss(self, parts: dict, perm: torch.Tensor, f_whole: torch.Tensor | None = None) -> torch.Tensor:
        """``mean_i (f_i(z_c[i] + z_r[perm[i]]) − f_i(z_c[i] + z_r[i]))²``: how far swapping in another
        architecture's redundant part moves the prediction of the architecture whose critical part it keeps
        (``f_whole``: the second term, ``f_i(z_c + z_r)`` of shape (B,), if the caller has it)."""
        z_c, z_r = parts["z_c"], parts["z_r"]
        if f_whole is None:
            f_whole = self.f_i(z_c + z_r).squeeze(-1)
        return ((self.f_i(z_c + z_r[perm]).squeeze(-1) - f_whole) ** 2).mean()


PREDICTORS = {"carl": CARLPredictor, "gcn": GCNPredictor}


def _tensors(graphs: dict) -> dict:
    return {k: torch.as_tensor(v, dtype=torch.float32) for k, v in graphs.items()}


def fit_predictor(graphs: dict, scores: np.ndarray, cfg: PredictorConfig | None = None) -> nn.Module:
    """Train a predictor on a batch of graphs (:func:`encoder.nas.graph.batch_graphs`) and their scores (higher =
    better), full batch (the benchmark has tens of trained architectures)."""
    cfg = cfg or PredictorConfig()
    if cfg.kind not in PREDICTORS:
        raise ValueError(f"predictor kind must be one of {', '.join(PREDICTORS)}, got {cfg.kind!r}")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = PREDICTORS[cfg.kind](cfg)
    g = _tensors(graphs)
    y = torch.as_tensor(np.asarray(scores, np.float32))
    y = (y - y.mean()) / y.std().clamp(min=1e-6)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model.train()
    for _ in range(cfg.epochs):
        opt.zero_grad(set_to_none=True)
        model.loss(g, y, cfg, gen).backward()
        opt.step()
    model.eval()
    return model


def predict(model: nn.Module, graphs: dict) -> np.ndarray:
    with torch.no_grad():
        return model(_tensors(graphs))["pred"].numpy()


def kendall_tau(a, b) -> float:
    """Kendall's tau-b of two score lists (scipy's, ties handled)."""
    from scipy.stats import kendalltau

    t = kendalltau(np.asarray(a), np.asarray(b)).statistic
    return float(t) if np.isfinite(t) else 0.0
