"""The AVE-NAS supernet: one weight-sharing network per HMC view over the search space, and its architecture parameters.

Every choice of :class:`encoder.search_space.SearchSpace` becomes a set of logits (:class:`ViewLogits`):

* **operator and kernel** of every layer (plus ``skip`` for the layers a stage may drop): Gumbel-softmax with a
  hard, straight-through sample (GDAS): each step runs only the sampled candidate, scaled by its one-hot weight,
  whose gradient reaches the logits through the softmax;
* **widths** (stem, each stage, head, fusion) by channel masking, as FBNetV2 does: every candidate runs at the
  largest width, and its output is multiplied by ``sum_i g_i m_i``, the Gumbel-softmax weights ``g`` of the widths
  times masks ``m_i`` that keep the first ``w_i`` channels. The weights are sampled hard (one-hot, straight-through
  gradients), so every step trains and costs one real architecture: with soft weights the latency term costs a
  mixture of widths while the most likely architecture takes the narrowest of each, and searches ended far below
  their latency target;
* **pooling** (mean or flatten): Gumbel-softmax, hard;
* **input resolution**: not differentiable through the network; sampled from its own categorical policy and
  trained by REINFORCE (:mod:`encoder.search`).

:meth:`SuperNet.derive` reads the most likely choice as a :class:`encoder.search_space.Choice`, and
:meth:`SuperNet.expected_latency` is the latency table's prediction averaged over the operator, width, head and
pooling distributions (differentiable), at the sampled resolutions.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .arch import VIEW_NAMES, BlockSpec
from .model import PIXEL_MEAN, PIXEL_STD, conv_bn_act, make_block
from .lut import block_key, fusion_key, head_key, input_key, out_key, stem_key
from .search_space import MAX_LAYERS, OPERATOR_BLOCKS, Choice, SearchSpace, ViewChoice

SKIP = "skip"


def candidates(space: SearchSpace, allow_skip: bool) -> list[tuple[str, int]]:
    """(operator, kernel) candidates of one layer; ``("skip", 0)`` last when allowed."""
    out = [(op, k) for op in space.operators for k in space.kernels]
    return out + [(SKIP, 0)] if allow_skip else out


def gumbel(logits: torch.Tensor, tau: float, hard: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """Gumbel-softmax weights of ``logits`` (1-D): soft, or one-hot with straight-through gradients."""
    u = torch.rand(logits.shape, generator=generator).clamp_(1e-9, 1 - 1e-9)
    y = F.softmax((logits - torch.log(-torch.log(u))) / tau, -1)
    if not hard:
        return y
    one = torch.zeros_like(y)
    one[int(y.argmax())] = 1.0
    return one - y.detach() + y


def width_mask(weights: torch.Tensor, widths: tuple[int, ...], max_width: int) -> torch.Tensor:
    """(1, max_width, 1, 1): ``sum_i weights_i * [channel < widths_i]``."""
    idx = torch.arange(max_width)
    masks = torch.stack([(idx < w).float() for w in widths])  # (n, C)
    return (weights[:, None] * masks).sum(0).view(1, max_width, 1, 1)


def _op_module(op: str, k: int, cin: int, cout: int, stride: int) -> nn.Module:
    name, e = OPERATOR_BLOCKS[op]
    return make_block(BlockSpec(name, kernel=k, stride=stride, expansion=e, channels=cout), cin, stride)[0]


class SuperLayer(nn.Module):
    def __init__(self, space: SearchSpace, cin: int, cout: int, stride: int, allow_skip: bool):
        super().__init__()
        self.cands = candidates(space, allow_skip)
        self.ops = nn.ModuleList([nn.Identity() if op == SKIP else _op_module(op, k, cin, cout, stride)
                                  for op, k in self.cands])

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        i = int(w.detach().argmax())
        return w[i] * self.ops[i](x)


class SuperView(nn.Module):
    """All architectures of one view's search space, sharing weights."""

    def __init__(self, space: SearchSpace, *, gaze: bool, feature_dim: int, num_keypoints: int):
        super().__init__()
        self.space = space
        self.has_gaze = gaze
        self.num_keypoints = num_keypoints
        self.max_stem = max(space.stem_widths)
        self.stem = conv_bn_act(1, self.max_stem, 3, 2)
        self.stage_max = [max(w) for w in space.stage_widths]
        layers = []
        cin = self.max_stem
        for s, stride in enumerate(space.stage_strides):
            row = []
            for layer in range(MAX_LAYERS):
                skip_ok = layer > 0 or (s == 0 and 0 in space.first_stage_depths and cin == self.stage_max[s])
                row.append(SuperLayer(space, cin if layer == 0 else self.stage_max[s], self.stage_max[s],
                                      stride if layer == 0 else 1, skip_ok))
            layers.append(nn.ModuleList(row))
            cin = self.stage_max[s]
        self.layers = nn.ModuleList(layers)
        self.max_head = max(max(space.head_widths), cin)
        self.head = conv_bn_act(cin, self.max_head, 1, 1)
        self.mean_fc = nn.Linear(self.max_head, feature_dim)
        self.flat_fc = nn.ModuleDict({str(r): nn.Linear(self.max_head * self.final_side(r) ** 2, feature_dim)
                                      for r in space.resolutions})
        self.gaze = nn.Linear(feature_dim, 2) if gaze else None
        self.keypoints = nn.Linear(feature_dim, 2 * num_keypoints)
        nn.init.zeros_(self.keypoints.weight)
        nn.init.constant_(self.keypoints.bias, 0.5)

    def final_side(self, resolution: int) -> int:
        hw = (resolution + 1) // 2
        for s in self.space.stage_strides:
            hw = (hw + s - 1) // s
        return hw

    def forward(self, image: torch.Tensor, resolution: int, w: dict) -> dict[str, torch.Tensor]:
        """image (B, 1, S, S) 0..255; ``w``: this view's sampled weights (see :meth:`ViewLogits.sample`)."""
        sp = self.space
        x = (image.float() - PIXEL_MEAN) / PIXEL_STD
        S = x.shape[-1]
        if resolution != S:
            if S % resolution == 0:
                x = F.avg_pool2d(x, S // resolution)
            else:
                x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
        x = self.stem(x) * width_mask(w["stem"], sp.stem_widths, self.max_stem)
        for s, row in enumerate(self.layers):
            m = width_mask(w["width"][s], sp.stage_widths[s], self.stage_max[s])
            for layer, sl in enumerate(row):
                x = sl(x, w["op"][s][layer]) * m  # every candidate outputs the stage's largest width
        hw_ = w["head"]  # weights over space.head_widths (0 = no head: the last stage's output, zero-padded)
        h = self.head(x) * width_mask(hw_, sp.head_widths, self.max_head)
        if 0 in sp.head_widths:
            pad = F.pad(x, (0, 0, 0, 0, 0, self.max_head - x.shape[1]))
            h = h + hw_[sp.head_widths.index(0)] * pad
        p = w["pool"]
        i = int(p.detach().argmax())
        f = p[i] * (self.mean_fc(h.mean((2, 3))) if sp.pools[i] == "mean" else self.flat_fc[str(resolution)](h.flatten(1)))
        out = {"feature": f}
        g = F.relu(f)
        if self.gaze is not None:
            out["gaze"] = self.gaze(g)
        out["keypoints"] = self.keypoints(g).view(-1, self.num_keypoints, 2) * S
        return out


class ViewLogits(nn.Module):
    """Architecture parameters of one view."""

    def __init__(self, space: SearchSpace):
        super().__init__()
        n = len(space.stage_strides)
        z = lambda k: nn.Parameter(torch.zeros(k))  # noqa: E731
        self.space = space
        self.stem = z(len(space.stem_widths))
        self.width = nn.ParameterList([z(len(space.stage_widths[s])) for s in range(n)])
        self.op = nn.ParameterList()
        for s in range(n):
            for layer in range(MAX_LAYERS):
                allow = layer > 0 or (s == 0 and 0 in space.first_stage_depths)
                self.op.append(z(len(candidates(space, allow))))
        self.head = z(len(space.head_widths))
        self.pool = z(len(space.pools))
        self.resolution = z(len(space.resolutions))
        """Policy logits of the resolution (REINFORCE, not Gumbel)."""

    def op_logits(self, s: int, layer: int) -> nn.Parameter:
        return self.op[s * MAX_LAYERS + layer]

    def sample(self, tau: float, generator: torch.Generator | None = None) -> dict:
        n = len(self.space.stage_strides)
        return {"stem": gumbel(self.stem, tau, True, generator),
                "width": [gumbel(self.width[s], tau, True, generator) for s in range(n)],
                "op": [[gumbel(self.op_logits(s, layer), tau, True, generator) for layer in range(MAX_LAYERS)]
                       for s in range(n)],
                "head": gumbel(self.head, tau, True, generator),
                "pool": gumbel(self.pool, tau, True, generator)}

    def arch_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if name != "resolution"]


def layer_choice(logits: torch.Tensor, cands: list[tuple[str, int]]) -> int:
    """Index of the most likely candidate of a layer, deciding first whether the layer exists: it is skipped only
    if ``skip`` holds at least half the probability. (A plain argmax over skip and the eight operator/kernel
    candidates drops a layer that is more likely there than not whenever its probability is split among the
    operators: the searched encoders came out far shallower, and cheaper, than the paths the search trained.)"""
    p = F.softmax(logits.detach(), -1)
    if cands[-1][0] != SKIP:
        return int(p.argmax())
    if float(p[-1]) >= 0.5:
        return len(cands) - 1
    return int(p[:-1].argmax())


class SuperNet(nn.Module):
    """Three :class:`SuperView` s, the fusion MLP at its largest width, and the architecture parameters."""

    def __init__(self, space: SearchSpace, *, latent_dim: int, num_keypoints: int = 9, shared: bool = False):
        super().__init__()
        self.space = space
        self.shared = shared
        """One architecture for all three views (the Table 2 ablation); the weights stay per view."""
        self.latent_dim = latent_dim
        self.num_keypoints = num_keypoints
        self.views = nn.ModuleDict({v: SuperView(space, gaze=v != "mouth", feature_dim=space.feature_dim,
                                                 num_keypoints=num_keypoints) for v in VIEW_NAMES})
        self.logits = nn.ModuleDict({v: ViewLogits(space) for v in (("shared",) if shared else VIEW_NAMES)})
        self.fusion_logits = nn.Parameter(torch.zeros(len(space.fusion_widths)))
        fmax = max(space.fusion_widths)
        self.fc1 = nn.Linear(3 * space.feature_dim, fmax)
        self.fc2 = nn.Linear(fmax, latent_dim)

    def view_logits(self, view: str) -> ViewLogits:
        return self.logits["shared" if self.shared else view]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()} | {id(p) for p in self.resolution_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def arch_parameters(self) -> list[nn.Parameter]:
        return [p for lg in self.logits.values() for p in lg.arch_parameters()] + [self.fusion_logits]

    def resolution_parameters(self) -> list[nn.Parameter]:
        return [lg.resolution for lg in self.logits.values()]

    def sample(self, tau: float, generator: torch.Generator | None = None) -> dict:
        """Gumbel weights of every choice but the resolutions (one draw for all views when shared)."""
        draws = {k: lg.sample(tau, generator) for k, lg in self.logits.items()}
        return {"views": {v: draws["shared" if self.shared else v] for v in VIEW_NAMES},
                "fusion": gumbel(self.fusion_logits, tau, True, generator)}

    def forward(self, views: torch.Tensor, resolutions: dict[str, int], w: dict) -> dict[str, torch.Tensor]:
        """views (B, 3, S, S) 0..255 -> the encoder's outputs (z, gaze (B, 2, 2), keypoints (B, 3, K, 2))."""
        outs = [self.views[v](views[:, i: i + 1], resolutions[v], w["views"][v]) for i, v in enumerate(VIEW_NAMES)]
        feats = torch.cat([o["feature"] for o in outs], 1)
        fm = width_mask(w["fusion"], self.space.fusion_widths, max(self.space.fusion_widths)).view(1, -1)
        z = self.fc2(F.relu(self.fc1(feats)) * fm)
        return {"z": z, "gaze": torch.stack([outs[0]["gaze"], outs[1]["gaze"]], 1),
                "keypoints": torch.stack([o["keypoints"] for o in outs], 1), "features": feats}

    def path_weights(self, choice: Choice) -> dict:
        """One-hot weights (the shape of :meth:`sample`) that run exactly the architecture ``choice``: the supernet
        with inherited weights as a stand-in for that architecture (benchmark proxies)."""
        sp = self.space

        def one(options, value) -> torch.Tensor:
            w = torch.zeros(len(options))
            w[list(options).index(value)] = 1.0
            return w

        views = {}
        for v in VIEW_NAMES:
            c = choice.views[v]
            n = len(sp.stage_strides)
            ops = []
            for s in range(n):
                row = []
                for layer in range(MAX_LAYERS):
                    cands = candidates(sp, layer > 0 or (s == 0 and 0 in sp.first_stage_depths))
                    pick = (c.ops[s][layer], c.kernels[s][layer]) if layer < c.depths[s] else (SKIP, 0)
                    row.append(one(cands, pick))
                ops.append(row)
            views[v] = {"stem": one(sp.stem_widths, c.stem), "width": [one(sp.stage_widths[s], c.widths[s]) for s in range(n)],
                        "op": ops, "head": one(sp.head_widths, c.head), "pool": one(sp.pools, c.pool)}
        return {"views": views, "fusion": one(sp.fusion_widths, choice.fusion)}

    # ------------------------------------------------------------------ reading the architecture

    def derive(self, name: str = "searched") -> Choice:
        """The most likely point of the space (a layer exists if it is more likely there than skipped,
        :func:`layer_choice`)."""
        sp = self.space
        views = {}
        for v in VIEW_NAMES:
            lg = self.view_logits(v)
            arg = lambda p: int(p.detach().argmax())  # noqa: E731
            n = len(sp.stage_strides)
            widths = [sp.stage_widths[s][arg(lg.width[s])] for s in range(n)]
            ops, kernels, depths = [], [], []
            for s in range(n):
                row_ops, row_k = [], []
                for layer in range(MAX_LAYERS):
                    cands = candidates(sp, layer > 0 or (s == 0 and 0 in sp.first_stage_depths))
                    op, k = cands[layer_choice(lg.op_logits(s, layer), cands)]
                    if op != SKIP:
                        row_ops.append(op)
                        row_k.append(k)
                lo = 0 if s == 0 else 1
                if len(row_ops) < lo:  # a stage's first layer cannot be skipped (but the first stage's)
                    row_ops, row_k = [sp.operators[0]], [sp.kernels[0]]
                depths.append(len(row_ops))
                pad = MAX_LAYERS - len(row_ops)
                ops.append(row_ops + [sp.operators[0]] * pad)
                kernels.append(row_k + [sp.kernels[0]] * pad)
            views[v] = ViewChoice(resolution=sp.resolutions[arg(lg.resolution)], stem=sp.stem_widths[arg(lg.stem)],
                                  widths=widths, depths=depths, ops=ops, kernels=kernels,
                                  head=sp.head_widths[arg(lg.head)], pool=sp.pools[arg(lg.pool)])
        return Choice(views=views, fusion=sp.fusion_widths[int(self.fusion_logits.detach().argmax())], name=name)

    def expected_latency(self, table, resolutions: dict[str, int], weights: dict | None = None) -> torch.Tensor:
        """The latency table's prediction (ms) weighted by the choices' probabilities, the other choices of each
        entry at their most likely value; the resolution is the sampled one. Differentiable in the architecture
        logits.

        ``weights`` (a :meth:`sample`): the sampled path's weights instead of the softmax of the logits -- hard
        one-hot operators and pooling with straight-through gradients, Gumbel-softmax widths -- so the cost is
        that of the architecture the step trained, not an average over every candidate. With many candidates per
        layer the plain average stays far above any single architecture's cost, and a hinge on it drives the most
        likely architecture well below the target."""
        sp = self.space
        ov = table.overhead_ms
        lat = lambda key: max(table.get(key) - ov, 0.0)  # noqa: E731
        total = torch.zeros(())
        for v in VIEW_NAMES:
            lg = self.view_logits(v)
            wv = None if weights is None else weights["views"][v]
            prob = lambda logits, sampled: F.softmax(logits, -1) if wv is None else sampled  # noqa: E731
            r = resolutions[v]
            total = total + lat(input_key(sp.input_size, r)) + ov
            ps = prob(lg.stem, None if wv is None else wv["stem"])
            hw = (r + 1) // 2
            total = total + sum(ps[i] * lat(stem_key(r, c)) for i, c in enumerate(sp.stem_widths))
            cin = sp.stem_widths[int(ps.argmax())]
            for s, stride in enumerate(sp.stage_strides):
                pw = prob(lg.width[s], None if wv is None else wv["width"][s])
                wmax = sp.stage_widths[s][int(pw.argmax())]
                for layer in range(MAX_LAYERS):
                    cands = candidates(sp, layer > 0 or (s == 0 and 0 in sp.first_stage_depths))
                    po = prob(lg.op_logits(s, layer), None if wv is None else wv["op"][s][layer])
                    st = stride if layer == 0 else 1
                    for j, (op, k) in enumerate(cands):
                        if op == SKIP:
                            continue
                        for i, w in enumerate(sp.stage_widths[s]):
                            name, e = OPERATOR_BLOCKS[op]
                            key = block_key(name, k, st, e, cin if layer == 0 else w, w, hw)
                            total = total + po[j] * pw[i] * lat(key)
                    if layer == 0:
                        hw, cin = (hw + st - 1) // st, wmax
            ph = prob(lg.head, None if wv is None else wv["head"])
            pp = prob(lg.pool, None if wv is None else wv["pool"])
            for i, c in enumerate(sp.head_widths):
                if c:
                    total = total + ph[i] * lat(head_key(cin, c, hw))
                cout = c or cin
                for j, pool in enumerate(sp.pools):
                    key = out_key(pool, cout, hw, sp.feature_dim, v != "mouth", self.num_keypoints)
                    total = total + ph[i] * pp[j] * lat(key)
        pf = F.softmax(self.fusion_logits, -1) if weights is None else weights["fusion"]
        total = total + sum(pf[i] * (lat(fusion_key(3 * sp.feature_dim, (f,), self.latent_dim)) + ov)
                            for i, f in enumerate(sp.fusion_widths))
        return total

