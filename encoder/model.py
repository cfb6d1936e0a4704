"""One builder for every encoder architecture (see :mod:`encoder.arch`).

Shapes: a view is (B, 1, S, S) uint8 (S = ``arch.input_size``, raw HMC pixels);
a per-view encoder returns ``feature`` (B, F) and, if its arch says so,
``gaze`` (B, 2) [yaw, pitch] rad and ``keypoints`` (B, K, 2) pixel (x, y) in the
S x S view. The fusion head maps (B, 3F) -> z (B, Z).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .arch import VIEW_NAMES, BlockSpec, EncoderArch, ViewArch

PIXEL_MEAN = 80.0
PIXEL_STD = 60.0
"""Input normalisation of the near-IR views (their intensities sit low in 0..255)."""


def conv_bn_act(cin: int, cout: int, k: int, s: int, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class FusedMBConv(nn.Module):
    """Fused-MBConv: k x k conv (expansion e, stride s) [+ 1x1 projection when e > 1]; residual when shapes allow."""

    def __init__(self, cin: int, cout: int, k: int, s: int, e: int):
        super().__init__()
        if e == 1:
            self.body = conv_bn_act(cin, cout, k, s)
        else:
            self.body = nn.Sequential(conv_bn_act(cin, cin * e, k, s), conv_bn_act(cin * e, cout, 1, 1, act=False))
        self.residual = s == 1 and cin == cout

    def forward(self, x):
        y = self.body(x)
        return x + y if self.residual else y


class MBConv(nn.Module):
    """MBConv (inverted residual): 1x1 expansion (e) [when e > 1], depthwise k x k (stride s), 1x1 projection;
    residual when shapes allow."""

    def __init__(self, cin: int, cout: int, k: int, s: int, e: int):
        super().__init__()
        mid = cin * e
        layers = [conv_bn_act(cin, mid, 1, 1)] if e > 1 else []
        layers += [nn.Sequential(nn.Conv2d(mid, mid, k, s, k // 2, groups=mid, bias=False), nn.BatchNorm2d(mid),
                                 nn.ReLU(inplace=True)),
                   conv_bn_act(mid, cout, 1, 1, act=False)]
        self.body = nn.Sequential(*layers)
        self.residual = s == 1 and cin == cout

    def forward(self, x):
        y = self.body(x)
        return x + y if self.residual else y


def make_block(b: BlockSpec, cin: int, stride: int) -> tuple[nn.Module, int]:
    """One repeat of ``b`` -> (module, output channels)."""
    if b.op == "skip":
        return nn.Identity(), cin
    if b.op == "conv":
        return conv_bn_act(cin, b.channels, b.kernel, stride), b.channels
    if b.op == "mb":
        return MBConv(cin, b.channels, b.kernel, stride, b.expansion), b.channels
    return FusedMBConv(cin, b.channels, b.kernel, stride, b.expansion), b.channels


def layer_plan(view: ViewArch, input_size: int, feature_dim: int, num_keypoints: int) -> list[dict]:
    """Every conv / linear layer of a per-view encoder with its shapes, from the arch data alone.

    Each entry: ``kind`` (conv/linear), ``cin``, ``cout``, ``k``, ``stride``, ``out_hw`` (output side,
    1 for linear), ``groups`` (``cin`` for a depthwise conv, else 1). Used by the analytic FLOP counter; the
    builder follows the same plan.
    """
    plan = []
    hw = view.resolution
    hw = (hw + 1) // 2
    plan.append(dict(kind="conv", cin=1, cout=view.stem, k=3, stride=2, out_hw=hw))
    c = view.stem
    for b in view.decoded():
        for r in range(b.repeats):
            s = b.stride if r == 0 else 1
            if b.op == "skip":
                continue
            ohw = (hw + s - 1) // s
            if b.op == "mb":
                mid = c * b.expansion
                if b.expansion > 1:
                    plan.append(dict(kind="conv", cin=c, cout=mid, k=1, stride=1, out_hw=hw))
                plan.append(dict(kind="conv", cin=mid, cout=mid, k=b.kernel, stride=s, out_hw=ohw, groups=mid))
                plan.append(dict(kind="conv", cin=mid, cout=b.channels, k=1, stride=1, out_hw=ohw))
            elif b.op == "conv" or b.expansion == 1:
                plan.append(dict(kind="conv", cin=c, cout=b.channels, k=b.kernel, stride=s, out_hw=ohw))
            else:
                plan.append(dict(kind="conv", cin=c, cout=c * b.expansion, k=b.kernel, stride=s, out_hw=ohw))
                plan.append(dict(kind="conv", cin=c * b.expansion, cout=b.channels, k=1, stride=1, out_hw=ohw))
            c, hw = b.channels, ohw
    if view.head:
        plan.append(dict(kind="conv", cin=c, cout=view.head, k=1, stride=1, out_hw=hw))
        c = view.head
    plan.append(dict(kind="linear", cin=c * (hw * hw if view.pool == "flatten" else 1), cout=feature_dim, k=1, stride=1,
                     out_hw=1))
    if view.gaze:
        plan.append(dict(kind="linear", cin=feature_dim, cout=2, k=1, stride=1, out_hw=1))
    if view.keypoints:
        plan.append(dict(kind="linear", cin=feature_dim, cout=2 * num_keypoints, k=1, stride=1, out_hw=1))
    return plan


class ViewEncoder(nn.Module):
    """A near-sensor encoder for one HMC view: uint8 image -> feature [, gaze] [, keypoints]."""

    def __init__(self, view: ViewArch, *, input_size: int, feature_dim: int, num_keypoints: int):
        super().__init__()
        self.input_size, self.resolution = input_size, view.resolution
        self.pool = input_size // view.resolution if input_size % view.resolution == 0 else 0  # 0: resize
        self.num_keypoints = num_keypoints
        self.has_gaze, self.has_keypoints = view.gaze, view.keypoints
        layers = [conv_bn_act(1, view.stem, 3, 2)]
        c = view.stem
        for b in view.decoded():
            for r in range(b.repeats):
                if b.op == "skip" and c != (b.channels or c):
                    raise ValueError("a skip block cannot change the channel count")
                m, c = make_block(b, c, b.stride if r == 0 else 1)
                layers.append(m)
        if view.head:
            layers.append(conv_bn_act(c, view.head, 1, 1))
            c = view.head
        self.features = nn.Sequential(*layers)
        self.flatten = view.pool == "flatten"
        # The plan's first linear layer is the feature layer: c inputs, or c x final side² when flattened.
        feature_in = next(p["cin"] for p in layer_plan(view, input_size, feature_dim, num_keypoints) if p["kind"] == "linear")
        self.feature = nn.Linear(feature_in, feature_dim)
        self.gaze = nn.Linear(feature_dim, 2) if view.gaze else None
        self.keypoints = nn.Linear(feature_dim, 2 * num_keypoints) if view.keypoints else None
        if self.keypoints is not None:
            nn.init.zeros_(self.keypoints.weight)
            nn.init.constant_(self.keypoints.bias, 0.5)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """image (B, 1, S, S) uint8 (or float in 0..255) -> dict of outputs."""
        x = (image.float() - PIXEL_MEAN) / PIXEL_STD
        if self.pool > 1:
            x = F.avg_pool2d(x, self.pool)
        elif self.pool == 0:
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False)
        x = self.features(x)
        x = x.flatten(1) if self.flatten else x.mean((2, 3))
        f = self.feature(x)
        out = {"feature": f}
        h = F.relu(f)
        if self.gaze is not None:
            out["gaze"] = self.gaze(h)
        if self.keypoints is not None:
            # Normalised (0..1) coordinates scaled to pixels of the raw view.
            out["keypoints"] = self.keypoints(h).view(-1, self.num_keypoints, 2) * self.input_size
        return out


class FusionHead(nn.Module):
    """Concatenated per-view features (B, 3F) -> latent code z (B, Z)."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...], latent_dim: int):
        super().__init__()
        layers, c = [], in_dim
        for h in hidden:
            layers += [nn.Linear(c, h), nn.ReLU(inplace=True)]
            c = h
        layers.append(nn.Linear(c, latent_dim))
        self.mlp = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(features)


class HmcEncoderNet(nn.Module):
    """Three view encoders + fusion. ``forward(views (B, 3, S, S) uint8)`` -> dict with
    ``z`` (B, Z), ``gaze`` (B, 2, 2) [left, right eye], ``keypoints`` (B, 3, K, 2) (zeros for a view
    without a keypoint head), ``features`` (B, 3F)."""

    def __init__(self, arch: EncoderArch):
        super().__init__()
        self.arch = arch
        self.views = nn.ModuleDict({
            v: ViewEncoder(arch.views[v], input_size=arch.input_size, feature_dim=arch.feature_dim,
                           num_keypoints=arch.num_keypoints)
            for v in VIEW_NAMES
        })
        self.fusion = FusionHead(3 * arch.feature_dim, arch.fusion_hidden, arch.latent_dim)

    def forward(self, views: torch.Tensor) -> dict[str, torch.Tensor]:
        outs = [self.views[v](views[:, i : i + 1]) for i, v in enumerate(VIEW_NAMES)]
        feats = torch.cat([o["feature"] for o in outs], 1)
        B, K = views.shape[0], self.arch.num_keypoints
        zero_g = views.new_zeros((B, 2), dtype=torch.float32)
        zero_k = views.new_zeros((B, K, 2), dtype=torch.float32)
        return {
            "z": self.fusion(feats),
            "gaze": torch.stack([outs[0].get("gaze", zero_g), outs[1].get("gaze", zero_g)], 1),
            "keypoints": torch.stack([o.get("keypoints", zero_k) for o in outs], 1),
            "features": feats,
        }


def build_encoder(arch: EncoderArch | str) -> HmcEncoderNet:
    """Build any encoder from its data (or a registered name)."""
    from .arch import get_arch

    return HmcEncoderNet(get_arch(arch) if isinstance(arch, str) else arch)
