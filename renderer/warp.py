"""The neural cache and the implicit warp network W (the neural-caching paper's section 4, Eq. 1-3).

Torch: training and export only (the receiver runs the exported ONNX model with onnxruntime).

**Cache** C_t (what G leaves behind when it renders display frame t): G's last three feature maps ``f0``
(S/4), ``f1`` (S/2), ``f2`` (S) (:class:`renderer.neural.NeuralRenderer`), and the inputs they were
made for: the view direction, the expression code ``z``, the gaze and the UV map (``uv``: (u, v, face) per pixel).
The SH of the cached view is recomputed from its direction. The explicit-warp baseline also keeps G's image.

**W** turns C_t and the state of a later display frame t' (its view direction, the newest code and gaze, and the
UV map of the cached mesh rasterized from the new view: cheap, no decode) into the image of t':

- a single-layer MLP M over (view', Δview, z', Δz, gaze', Δgaze, SH(view')), its output broadcast over f0;
- SH-change modulation: the first 9 channels of f0 times SH(view') − SH(view), appended to f0;
- ΔUV = uv' − uv (at S/4, S/2 and S: the image-space motion of every surface point);
- W1: a 1x1 conv at S/4 over [f0, modulated f0, M, ΔUV], up to S/2, 3x3 conv over [·, f1, ΔUV];
  W2: up to S, 3x3 conv over [·, f2, ΔUV] to RGB.

With ``image_flow`` W also moves G's cached image along a flow it predicts at S/4 and W2 adds a correction to it
(W synthesizes what the flow cannot move; the motion itself reaches any distance for the price of resampling three
channels).

The ablation switches of :class:`WarpConfig` (the paper's Table 3) drop one input each; ``explicit`` is the
explicit-warp baseline instead: the same trunk predicts a flow field at S/4 and the cached image is resampled
along it (no image synthesis).

Inputs of the exported model (ONNX names, shapes for one frame; S = G's working size, Z = code size):
``f0`` (1, C0, S/4, S/4), ``f1`` (1, C1, S/2, S/2), ``f2`` (1, C2, S, S), ``image`` (1, 3, S, S) [explicit and
image_flow only],
``uv`` (1, 3, S, S), ``view`` (1, 3), ``z`` (1, Z), ``gaze`` (1, 4) [the cache]; ``uv_new``, ``view_new``,
``z_new``, ``gaze_new`` [the new display frame]. Output ``image`` is renamed ``warped``: (1, 3, S, S) in [0, 1].
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .neural import sh_basis
from .config import WarpConfig


def _c(i: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(i, o, 3, 1, 1), nn.LeakyReLU(0.2))


class ImplicitWarp(nn.Module):
    """W (module docstring). ``feature_channels`` = (C0, C1, C2) of G's cache; ``latent_dim`` = Z."""

    def __init__(self, feature_channels: tuple[int, int, int], latent_dim: int, cfg: WarpConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or WarpConfig()
        c0, c1, c2 = feature_channels
        self.latent_dim = latent_dim
        n_in = 9 + (2 * (3 + latent_dim + 4) if cfg.code_pose else 9)
        self.mlp = nn.Linear(n_in, cfg.hidden) if cfg.mlp else None
        duv = 3 if cfg.duv else 0
        trunk_in = c0 + (9 if cfg.sh_modulation else 0) + (cfg.hidden if cfg.mlp else 0) + duv
        w1, w2 = cfg.widths
        self.w1a = nn.Sequential(nn.Conv2d(trunk_in, w1, 1), nn.LeakyReLU(0.2))  # per pixel: the inputs are
        # broadcast (MLP, SH) or already local (ΔUV); the 3x3 convolutions at S/2 and S move features
        if cfg.explicit or cfg.feature_flow or cfg.image_flow:
            self.flow = nn.Conv2d(w1, 2, 3, 1, 1)  # starts as no motion
            nn.init.zeros_(self.flow.weight)
            nn.init.zeros_(self.flow.bias)
        if not cfg.explicit:
            self.w1b = _c(w1 + c1 + duv, w2)
            self.w2 = nn.Conv2d(w2 + c2 + duv + (3 if cfg.image_flow else 0), 3, cfg.w2_kernel, 1, cfg.w2_kernel // 2)
            if cfg.image_flow:  # no correction at the start
                nn.init.zeros_(self.w2.weight)
                nn.init.zeros_(self.w2.bias)

    def forward(self, f0, f1, f2, image, uv, view, z, gaze, uv_new, view_new, z_new, gaze_new) -> torch.Tensor:
        cfg = self.cfg
        sh_new = sh_basis(view_new)
        parts = [f0]
        if cfg.sh_modulation:
            parts.append(f0[:, :9] * (sh_new - sh_basis(view))[:, :, None, None])
        if self.mlp is not None:
            x = [sh_new] + ([view_new, view_new - view, z_new, z_new - z, gaze_new, gaze_new - gaze] if cfg.code_pose
                            else [sh_new - sh_basis(view)])
            m = F.leaky_relu(self.mlp(torch.cat(x, 1)), 0.2)
            parts.append(m[:, :, None, None].expand(-1, -1, f0.shape[2], f0.shape[3]))
        duv = uv_new - uv
        if cfg.duv:
            parts.append(F.avg_pool2d(duv, 4))
        x = self.w1a(torch.cat(parts, 1))
        flow = self.flow(x) if cfg.explicit or cfg.image_flow or cfg.feature_flow else None
        moved = resample(image, _upsampled(flow, image)) if cfg.explicit or cfg.image_flow else None
        if cfg.explicit:
            return moved
        if cfg.feature_flow:
            f1, f2 = resample(f1, _upsampled(flow, f1)), resample(f2, _upsampled(flow, f2))
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = self.w1b(torch.cat([x, f1] + ([F.avg_pool2d(duv, 2)] if cfg.duv else []), 1))
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = self.w2(torch.cat([x, f2] + ([duv] if cfg.duv else []) + ([moved] if moved is not None else []), 1))
        return (moved + x).clamp(0, 1) if moved is not None else torch.sigmoid(x)


def _upsampled(flow: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``flow`` (normalised image units, so the values need no scaling) bilinearly resized to ``like``'s size."""
    return F.interpolate(flow, size=like.shape[-2:], mode="bilinear", align_corners=False)


def resample(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """image (B, C, H, W) sampled at pixel + flow; flow (B, 2, H, W) in normalised [-1, 1] image units (x, y).

    Bilinear, positions clamped to the image (``F.grid_sample(..., padding_mode="border", align_corners=False)``,
    which it equals), written with gathers: the exported graph then runs about twice as fast in onnxruntime as its
    GridSample operator, and this sits on the receiver's warp path."""
    b, c, h, w = image.shape
    px = (torch.arange(w, dtype=image.dtype).view(1, 1, w) + flow[:, 0] * (w / 2)).clamp(0, w - 1)
    py = (torch.arange(h, dtype=image.dtype).view(1, h, 1) + flow[:, 1] * (h / 2)).clamp(0, h - 1)
    x0, y0 = px.floor(), py.floor()
    wx, wy = (px - x0).unsqueeze(1), (py - y0).unsqueeze(1)
    x0, y0 = x0.long(), y0.long()
    x1, y1 = (x0 + 1).clamp(max=w - 1), (y0 + 1).clamp(max=h - 1)
    flat = image.reshape(b, c, h * w)

    def at(yi: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        return flat.gather(2, (yi * w + xi).reshape(b, 1, h * w).expand(b, c, h * w)).reshape(b, c, h, w)

    return (at(y0, x0) * (1 - wx) + at(y0, x1) * wx) * (1 - wy) + (at(y1, x0) * (1 - wx) + at(y1, x1) * wx) * wy


WARP_INPUTS = ("f0", "f1", "f2", "image", "uv", "view", "z", "gaze", "uv_new", "view_new", "z_new", "gaze_new")
"""Input order of :meth:`ImplicitWarp.forward` and the exported model."""


def export_warp(w: ImplicitWarp, path, example: dict) -> None:
    """ONNX export (opset 17) of W with a parity check against torch. ``example``: :data:`WARP_INPUTS` -> tensors
    (batch 1). Inputs the configuration does not use are pruned by the exporter; the receiver feeds only the
    inputs the model declares."""
    import numpy as np
    import onnxruntime as ort

    w.eval()
    args = tuple(example[k] for k in WARP_INPUTS)
    with torch.no_grad():
        ref = w(*args).numpy()
    torch.onnx.export(w, args, str(path), input_names=list(WARP_INPUTS), output_names=["warped"], opset_version=17,
                      dynamo=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {i.name: example[i.name].numpy() for i in sess.get_inputs()}
    got = sess.run(["warped"], feed)[0]
    if not np.allclose(got, ref, atol=1e-3):
        raise RuntimeError(f"warp ONNX parity failed: max |diff| {np.abs(got - ref).max():.2e}")
