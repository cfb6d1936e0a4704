"""FLOPs of encoder models, counted two independent ways.

Convention (the one ``torch.utils.flop_counter`` uses): FLOPs = 2 x the
multiply-accumulates of convolutions and linear layers. Batch norm (folded into
the convolutions at export), activations, pooling and residual additions are
not counted; they are <1% of any model here.

- :func:`analytic_flops` works from the architecture data alone (the
  :func:`encoder.model.layer_plan` of each view), no network built.
- :func:`counted_flops` runs the built torch module once under
  ``torch.utils.flop_counter.FlopCounterMode``.
"""
from __future__ import annotations

from .arch import VIEW_NAMES, EncoderArch
from .model import layer_plan


def plan_flops(plan: list[dict]) -> int:
    total = 0
    for layer in plan:
        macs = layer["cin"] // layer.get("groups", 1) * layer["cout"] * layer["k"] ** 2 * layer["out_hw"] ** 2
        total += 2 * macs
    return total


def fusion_flops(arch: EncoderArch) -> int:
    dims = [3 * arch.feature_dim, *arch.fusion_hidden, arch.latent_dim]
    return sum(2 * a * b for a, b in zip(dims[:-1], dims[1:]))


def analytic_flops(arch: EncoderArch) -> dict[str, int]:
    """{view name: FLOPs, ..., "fusion": FLOPs, "total": FLOPs} for one frame."""
    out = {v: plan_flops(layer_plan(arch.views[v], arch.input_size, arch.feature_dim, arch.num_keypoints)) for v in VIEW_NAMES}
    out["fusion"] = fusion_flops(arch)
    out["total"] = sum(out.values())
    return out


def counted_flops(model) -> dict[str, int]:
    """Same keys as :func:`analytic_flops`, measured with FlopCounterMode on ``model`` (an HmcEncoderNet)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    arch = model.arch
    S = arch.input_size
    out = {}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for v in VIEW_NAMES:
            with FlopCounterMode(display=False) as fc:
                model.views[v](torch.zeros(1, 1, S, S, dtype=torch.uint8))
            out[v] = int(fc.get_total_flops())
        with FlopCounterMode(display=False) as fc:
            model.fusion(torch.zeros(1, 3 * arch.feature_dim))
        out["fusion"] = int(fc.get_total_flops())
    model.train(was_training)
    out["total"] = sum(out.values())
    return out
