"""The deferred neural renderer G (DNR+ of the neural-caching paper): rasterized buffers in, the final image out.

Torch: training and export only (the receiver runs the exported ONNX model with onnxruntime).

Inputs, at G's working resolution, from the rasterizer (:class:`renderer.rasterizer.AvatarRasterizer`) of the
decoded avatar:

- ``raster`` (B, 3, H, W) in [0, 1]: the decoder's view-dependent texture rasterized (today's receiver image);
- ``uv`` (B, 3, H, W): per pixel (u, v, face), ``face`` = 1 where the face mesh is the visible surface
  (:meth:`~renderer.rasterizer.AvatarRasterizer.render_uv`);
- ``view`` (B, 3): unit direction head -> viewer.

A learned multi-scale **neural texture** (``channels`` feature channels at ``texture_levels`` resolutions,
bilinearly sampled at ``uv`` and summed, as a Laplacian pyramid) gives per-pixel features; the view direction's
9 real spherical-harmonics coefficients (bands 0-2) multiply feature channels 4-12 (``SH_CHANNELS``, 0-based
3..11), so those channels can carry view-dependent effects. Features, raster colour, the face mask, the pixel's
image-plane position and the view direction go through a U-Net (``widths`` per level, stride-2 down, nearest-upsample + conv up, skip connections) to RGB.

``forward`` also returns G's last three feature maps (the decoder maps at S/4, S/2 and S): with the view
direction, its SH, the code, the gaze and the UV map they are the *neural cache* a shallow warp network turns
into the next display frames.

``modulated`` makes it the avatar-compression paper's enhanced renderer: a mapping MLP turns the code ``z`` into a
style vector ``w`` and every U-Net convolution is modulated and demodulated by an affine map of ``w`` (StyleGAN2's
weight demodulation, :class:`ModulatedConv`); the last convolution to RGB is modulated without demodulation. The
exported model then takes ``z`` as a fifth input.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .config import SH_CHANNELS, NeuralRendererConfig

EXTRA_INPUTS = 9
"""G's input channels besides the neural texture: raster colour (3), face mask (1), image-plane x, y (2), view (3)."""


def sh_basis(d: torch.Tensor) -> torch.Tensor:
    """(B, 3) unit directions -> (B, 9) real spherical harmonics of bands 0, 1, 2 (the usual normalisation)."""
    x, y, z = d[:, 0], d[:, 1], d[:, 2]
    c0, c1 = 0.5 * math.sqrt(1 / math.pi), math.sqrt(3 / (4 * math.pi))
    c2, c3, c4 = 0.5 * math.sqrt(15 / math.pi), 0.25 * math.sqrt(5 / math.pi), 0.25 * math.sqrt(15 / math.pi)
    return torch.stack([torch.full_like(x, c0), c1 * y, c1 * z, c1 * x, c2 * x * y, c2 * y * z,
                        c3 * (3 * z * z - 1), c2 * x * z, c4 * (x * x - y * y)], 1)


class NeuralTexture(nn.Module):
    """A learned multi-scale neural texture: levels of decreasing size (a Laplacian pyramid) whose bilinear
    upsamplings to the finest level sum to one (C, T, T) texture, sampled bilinearly at the UV map. The receiver's
    rasterizer samples that same texture in GL (:meth:`full`, saved with G), so G's exported network starts from
    the sampled features."""

    def __init__(self, channels: int, levels: tuple[int, ...]):
        super().__init__()
        self.levels = nn.ParameterList([nn.Parameter(torch.zeros(1, channels, s, s)) for s in levels])
        nn.init.normal_(self.levels[-1], 0.0, 0.1)  # the coarsest level starts the pyramid

    def full(self) -> torch.Tensor:
        """(1, C, T, T): the pyramid summed at the finest level (row 0 = v 0)."""
        T = max(t.shape[-1] for t in self.levels)
        return sum(t if t.shape[-1] == T else F.interpolate(t, size=(T, T), mode="bilinear", align_corners=False)
                   for t in self.levels)

    def forward(self, uv: torch.Tensor) -> torch.Tensor:
        """uv (B, 2, H, W) in [0, 1] (row 0 of the texture is v = 0) -> (B, C, H, W)."""
        grid = (uv.permute(0, 2, 3, 1) * 2 - 1).clamp(-1, 1)
        return F.grid_sample(self.full().expand(len(uv), -1, -1, -1), grid, mode="bilinear", padding_mode="border",
                             align_corners=False)


def _conv(i: int, o: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(i, o, 3, stride, 1), nn.LeakyReLU(0.2))


class ModulatedConv(nn.Module):
    """A 3x3 convolution whose weights are scaled per input channel by a style ``s = A(w)`` (initialised to 1) and,
    with ``demodulate``, renormalised per output channel to unit expected norm (StyleGAN2):
    ``y = d * conv(x * s, W) + b`` with ``d_o = 1 / sqrt(sum_{i,k} (W_oik s_i)^2 + eps)``, the form that is the same
    as convolving with the modulated weight and exports to ONNX as plain operators. LeakyReLU after unless
    ``act=False``."""

    def __init__(self, i: int, o: int, style_dim: int, stride: int = 1, *, demodulate: bool = True,
                 act: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(i, o, 3, stride, 1)
        self.affine = nn.Linear(style_dim, i)
        nn.init.zeros_(self.affine.weight)
        nn.init.ones_(self.affine.bias)
        self.demodulate, self.act = demodulate, act

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        s = self.affine(w)  # (B, I)
        y = F.conv2d(x * s[:, :, None, None], self.conv.weight, None, self.conv.stride, self.conv.padding)
        if self.demodulate:
            wsq = self.conv.weight.pow(2).sum((2, 3))  # (O, I)
            y = y * torch.rsqrt(s.pow(2) @ wsq.t() + 1e-8)[:, :, None, None]
        y = y + self.conv.bias[None, :, None, None]
        return F.leaky_relu(y, 0.2) if self.act else y


class MappingNetwork(nn.Module):
    """The code ``z`` -> style ``w``: ``layers`` linear layers with LeakyReLU, on the code normalised to unit RMS."""

    def __init__(self, latent_dim: int, dim: int, layers: int) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        for k in range(layers):
            mods += [nn.Linear(latent_dim if k == 0 else dim, dim), nn.LeakyReLU(0.2)]
        self.net = nn.Sequential(*mods)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z * torch.rsqrt(z.pow(2).mean(1, keepdim=True) + 1e-8))


class NeuralRenderer(nn.Module):
    """G: (raster, uv, view[, z]) -> {"image": (B, 3, H, W) in [0, 1], "logits": the image before its sigmoid,
    "features": [S/4, S/2, S maps]}; ``z`` (B, Z) is needed by a ``modulated`` G and ignored by a plain one."""

    def __init__(self, cfg: NeuralRendererConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or NeuralRendererConfig()
        self.texture = NeuralTexture(cfg.channels, cfg.texture_levels)
        w = cfg.widths
        if cfg.modulated:
            sd = cfg.mapping_dim
            self.mapping = MappingNetwork(cfg.latent_dim, sd, cfg.mapping_layers)
            conv = lambda i, o, stride=1: ModulatedConv(i, o, sd, stride)  # noqa: E731
            self.out = ModulatedConv(w[0], 3, sd, demodulate=False, act=False)
        else:
            self.mapping = None
            conv = _conv
            self.out = nn.Conv2d(w[0], 3, 3, 1, 1)
        self.down = nn.ModuleList([conv(cfg.channels + EXTRA_INPUTS, w[0])]
                                  + [conv(w[i - 1], w[i], 2) for i in range(1, len(w))])
        self.up = nn.ModuleList([conv(w[i] + w[i - 1], w[i - 1]) for i in range(len(w) - 1, 0, -1)])

    def network_params(self) -> int:
        """Parameters of the network G runs per frame (the neural texture, sampled by the rasterizer, excluded)."""
        texture = {id(p) for p in self.texture.parameters()}
        return int(sum(p.numel() for p in self.parameters() if id(p) not in texture))

    def buffers_to_input(self, raster: torch.Tensor, uv: torch.Tensor, view: torch.Tensor,
                         sampled: torch.Tensor | None = None) -> torch.Tensor:
        """G's input: the neural texture at ``uv`` (or ``sampled``: already sampled there, as the receiver's
        rasterizer does), masked to the face and SH-modulated, then raster colour, mask, the pixel's image-plane
        position and the view direction (off the face mesh, where hair volume, ears, neck and shoulders are, that
        is all G knows)."""
        mask = uv[:, 2:3]
        feats = (self.texture(uv[:, :2]) if sampled is None else sampled) * mask
        a, b = SH_CHANNELS
        feats = torch.cat([feats[:, :a], feats[:, a:b] * sh_basis(view)[:, :, None, None], feats[:, b:]], 1)
        n, _, h, w = raster.shape
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h, dtype=raster.dtype), torch.linspace(-1, 1, w, dtype=raster.dtype),
                                indexing="ij")
        pos = torch.stack([xs, ys])[None].expand(n, -1, -1, -1)
        return torch.cat([feats, raster, mask, pos, view[:, :, None, None].expand(-1, -1, h, w)], 1)

    def forward(self, raster: torch.Tensor, uv: torch.Tensor, view: torch.Tensor,
                sampled: torch.Tensor | None = None, z: torch.Tensor | None = None) -> dict:
        x = self.buffers_to_input(raster, uv, view, sampled)
        if self.mapping is not None:
            if z is None:
                raise ValueError("a modulated neural renderer needs the code z")
            style = self.mapping(z)
            run = lambda layer, t: layer(t, style)  # noqa: E731
        else:
            run = lambda layer, t: layer(t)  # noqa: E731
        skips = []
        for layer in self.down:
            x = run(layer, x)
            skips.append(x)
        features = [x]
        for layer, skip in zip(self.up, reversed(skips[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = run(layer, torch.cat([x, skip], 1))
            features.append(x)
        logits = run(self.out, x)
        return {"image": torch.sigmoid(logits), "logits": logits, "features": features[-3:]}


class FlatOutputs(nn.Module):
    """G as exported: the neural texture comes in already sampled at the UV map (``features``, (B, C, H, W), by the
    receiver's rasterizer from :meth:`NeuralTexture.full`), a modulated G also takes the code ``z`` (B, Z), and the
    outputs are a flat tuple (``image``, then the cache features, coarsest first), as ONNX wants them."""

    def __init__(self, g: NeuralRenderer):
        super().__init__()
        self.g = g

    def forward(self, raster: torch.Tensor, uv: torch.Tensor, view: torch.Tensor, features: torch.Tensor,
                z: torch.Tensor | None = None) -> tuple:
        o = self.g(raster, uv, view, features, z)
        return (o["image"], *o["features"])


def ssim_loss(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """1 - mean SSIM of two image batches (B, C, H, W) in [0, 1] (Gaussian window, as :func:`avcore.metrics.ssim`):
    the image-structure term of G's loss (no downloaded perceptual network is available here)."""
    g = torch.exp(-((torch.arange(window) - window // 2) ** 2) / (2 * sigma * sigma))
    g = (g / g.sum()).to(a.dtype)
    k = (g[:, None] * g[None, :]).expand(a.shape[1], 1, window, window)
    blur = lambda x: F.conv2d(x, k, groups=a.shape[1])  # noqa: E731  (valid region only, as the metric)
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    ma, mb = blur(a), blur(b)
    saa, sbb, sab = blur(a * a) - ma * ma, blur(b * b) - mb * mb, blur(a * b) - ma * mb
    s = ((2 * ma * mb + c1) * (2 * sab + c2)) / ((ma * ma + mb * mb + c1) * (saa + sbb + c2))
    return 1 - s.mean()
