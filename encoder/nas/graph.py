"""An encoder architecture as one graph: the three per-view networks and the fusion, nodes = operators.

Nodes, per view in frame order: the input (its resolution), the stem, every layer (block repeats expanded; a
``skip`` layer is left out, it computes nothing), the 1x1 head (when there is one) and the pooling; then the
fusion MLP and the output. Edges follow the data: each view is a chain, every view's pooling feeds the fusion,
the fusion feeds the output. Node features (:data:`FEATURES`): a one-hot operator type, a one-hot view (none for
the fusion and the output) and numbers scaled to about [0, 1]: output width, kernel, stride, expansion, the
spatial side the node works at, the input resolution of its view.

Graphs are padded to :data:`MAX_NODES` so a batch is two dense tensors ``x (B, N, F)`` and ``adj (B, N, N)``
(directed, ``adj[b, i, j] = 1`` for an edge i -> j) plus ``mask (B, N)``.
"""
from __future__ import annotations

import numpy as np

from ..arch import VIEW_NAMES, EncoderArch

TYPES: tuple[str, ...] = ("input", "stem", "conv", "fmb", "mb", "head", "pool_mean", "pool_flatten", "fusion", "output")
NUMERIC: tuple[str, ...] = ("width", "kernel", "stride", "expansion", "side", "resolution")
FEATURES: tuple[str, ...] = TYPES + tuple(f"view_{v}" for v in VIEW_NAMES) + NUMERIC
MAX_NODES = 3 * (5 + 15) + 2
"""Per view: input, stem, up to 15 layers (5 stages x 3), head, pooling; plus fusion and output."""
_SCALE = {"width": 256.0, "kernel": 5.0, "stride": 2.0, "expansion": 6.0, "side": 96.0, "resolution": 192.0}


def arch_graph(arch: EncoderArch) -> tuple[np.ndarray, np.ndarray, int]:
    """``(x (MAX_NODES, F) float32, adj (MAX_NODES, MAX_NODES) float32, number of nodes)`` of ``arch``."""
    nodes: list[dict] = []
    edges: list[tuple[int, int]] = []

    def add(kind: str, view: str | None, prev: int | None, **num) -> int:
        nodes.append({"type": kind, "view": view, **num})
        i = len(nodes) - 1
        if prev is not None:
            edges.append((prev, i))
        return i

    pools = []
    for v in VIEW_NAMES:
        va = arch.views[v]
        r = va.resolution
        side = (r + 1) // 2
        last = add("input", v, None, width=1, side=r / 2, resolution=r)
        last = add("stem", v, last, width=va.stem, kernel=3, stride=2, side=side, resolution=r)
        for b in va.decoded():
            for k in range(b.repeats):
                if b.op == "skip":
                    continue
                stride = b.stride if k == 0 else 1
                side = (side + stride - 1) // stride
                last = add(b.op, v, last, width=b.channels, kernel=b.kernel, stride=stride,
                           expansion=b.expansion if b.op != "conv" else 1, side=side, resolution=r)
        if va.head:
            last = add("head", v, last, width=va.head, kernel=1, stride=1, side=side, resolution=r)
        pools.append(add(f"pool_{va.pool}", v, last, width=arch.feature_dim, side=side, resolution=r))
    fusion = add("fusion", None, None, width=arch.fusion_hidden[0] if arch.fusion_hidden else arch.feature_dim)
    edges += [(p, fusion) for p in pools]
    add("output", None, fusion, width=arch.latent_dim)
    n = len(nodes)
    if n > MAX_NODES:
        raise ValueError(f"{arch.name}: {n} nodes, more than the {MAX_NODES} a graph holds")
    x = np.zeros((MAX_NODES, len(FEATURES)), np.float32)
    for i, d in enumerate(nodes):
        x[i, TYPES.index(d["type"])] = 1.0
        if d["view"] is not None:
            x[i, len(TYPES) + VIEW_NAMES.index(d["view"])] = 1.0
        for j, name in enumerate(NUMERIC):
            x[i, len(TYPES) + len(VIEW_NAMES) + j] = float(d.get(name, 0)) / _SCALE[name]
    adj = np.zeros((MAX_NODES, MAX_NODES), np.float32)
    for a, b in edges:
        adj[a, b] = 1.0
    return x, adj, n


def batch_graphs(archs: list[EncoderArch]) -> dict[str, np.ndarray]:
    """``{"x": (B, N, F), "adj": (B, N, N), "mask": (B, N)}`` of several architectures."""
    gs = [arch_graph(a) for a in archs]
    mask = np.zeros((len(gs), MAX_NODES), np.float32)
    for i, (_, _, n) in enumerate(gs):
        mask[i, :n] = 1.0
    return {"x": np.stack([g[0] for g in gs]), "adj": np.stack([g[1] for g in gs]), "mask": mask}
