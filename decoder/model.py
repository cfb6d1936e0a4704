"""The per-identity codec-avatar VAE.

- :class:`AvatarEncoder` (training only): ground-truth geometry and texture ->
  mean and log-std of the latent code ``z``.
- :class:`AvatarDecoder` ``D(z, view_direction)``: vertex positions in the head
  frame and a view-dependent RGB texture. Eyeballs are *not* decoded from z;
  they come from gaze through the explicit eye model (:mod:`decoder.eyes`).

Shapes: z (B, Z) float32; view_direction (B, 3) unit, head -> viewer;
vertices (B, V, 3) decimetres; texture (B, 3, T, T) in [0, 1]-ish, row 0 = v 0.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .config import DecoderConfig


class GeometryDecoder(nn.Module):
    """z -> MLP -> K basis coefficients -> mean + coefficients @ basis (linear, PCA-initialised)."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        K, V = cfg.geometry_basis, cfg.num_vertices
        self.mlp = nn.Sequential(
            nn.Linear(cfg.latent_dim, cfg.geometry_hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(cfg.geometry_hidden, cfg.geometry_hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(cfg.geometry_hidden, K),
        )
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)
        # Linear skip: the first K latent dims start as the (normalised) PCA coefficients.
        self.skip = nn.Linear(cfg.latent_dim, K, bias=False)
        with torch.no_grad():
            self.skip.weight.zero_()
            k = min(K, cfg.latent_dim)
            self.skip.weight[:k, :k] = torch.eye(k)
        self.mean = nn.Parameter(torch.zeros(V * 3))
        self.basis = nn.Parameter(torch.zeros(K, V * 3))

    def forward(self, z: torch.Tensor, features: list | None = None) -> torch.Tensor:  # (B, Z) -> (B, V, 3)
        h = self.mlp[:-1](z)
        if features is not None:
            features.append(h)  # (B, geometry_hidden): the MLP's last hidden layer
        coef = self.skip(z) + self.mlp[-1](h)
        return (self.mean + coef @ self.basis).view(z.shape[0], -1, 3)


class TextureDecoder(nn.Module):
    """z (+ view direction) -> a narrow upsampling conv net -> per-texel gain and offset
    over a learned mean texture: texture = mean * (1 + gain) + offset.

    The net stops at ``2 * texture_feature_size``; gain and offset are bilinearly
    upsampled to ``texture_size`` while the mean texture keeps full detail, so the
    expensive channels never run at full resolution.
    """

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        ch = cfg.texture_channels
        self.seed, self.c0, self.view_inject = cfg.texture_seed, ch[0], cfg.view_inject
        self.size = cfg.texture_size
        self.fc = nn.Linear(cfg.latent_dim, ch[0] * cfg.texture_seed ** 2)
        convs = []
        for i in range(len(ch)):
            cin = ch[i - 1] if i else ch[0]
            cin += 3 if i < cfg.view_inject else 0
            convs.append(nn.Conv2d(cin, ch[i], 3, padding=1))
        self.convs = nn.ModuleList(convs)
        self.head = nn.Conv2d(ch[-1], 6, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.mean = nn.Parameter(torch.full((1, 3, cfg.texture_size, cfg.texture_size), 0.5))

    def forward(self, z: torch.Tensor, view_direction: torch.Tensor, features: list | None = None) -> torch.Tensor:
        B = z.shape[0]
        x = F.leaky_relu(self.fc(z), 0.2).view(B, self.c0, self.seed, self.seed)
        for i, conv in enumerate(self.convs):
            if i:
                x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            if i < self.view_inject:
                v = view_direction.view(B, 3, 1, 1).expand(B, 3, x.shape[2], x.shape[3])
                x = torch.cat([x, v], 1)
            x = F.leaky_relu(conv(x), 0.2)
            if features is not None:
                features.append(x)  # (B, texture_channels[i], seed * 2**i, seed * 2**i)
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        x = self.head(x)  # (B, 6, T/2, T/2)
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        gain, offset = x[:, :3], x[:, 3:]
        return self.mean * (1.0 + gain) + offset


class AvatarDecoder(nn.Module):
    """D(z, view_direction) -> (vertices (B, V, 3), texture (B, 3, T, T))."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        self.geometry = GeometryDecoder(cfg)
        self.texture = TextureDecoder(cfg)

    def forward(self, z: torch.Tensor, view_direction: torch.Tensor, features: bool = False):
        """(vertices, texture), or with ``features`` (vertices, texture, {"geometry": [hidden (B, H)], "texture":
        [feature maps (B, C_i, S_i, S_i), one per conv]}) for feature-consistency distillation."""
        if not features:
            return self.geometry(z), self.texture(z, view_direction)
        geo: list = []
        tex: list = []
        return self.geometry(z, geo), self.texture(z, view_direction, tex), {"geometry": geo, "texture": tex}


class AvatarEncoder(nn.Module):
    """(vertices (B, V, 3), texture (B, 3, t, t) at ``encoder_texture_size``) -> (mu, log_std) (B, Z) each.

    Geometry enters through its projection on the (fixed, PCA) geometry basis.
    """

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        K = cfg.geometry_basis
        self.register_buffer("geo_mean", torch.zeros(cfg.num_vertices * 3))
        self.register_buffer("geo_proj", torch.zeros(cfg.num_vertices * 3, K))
        layers, cin = [], 3
        for c in cfg.encoder_channels:
            layers += [nn.Conv2d(cin, c, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            cin = c
        self.tex = nn.Sequential(*layers)
        s = cfg.encoder_texture_size // 2 ** len(cfg.encoder_channels)
        self.fuse = nn.Sequential(
            nn.Linear(cin * s * s + K, 512),
            nn.LeakyReLU(0.2),
            nn.Linear(512, 2 * cfg.latent_dim),
        )
        # Start with mu[:K] = normalised PCA coefficients of the geometry and a small std, so the
        # geometry is right from the first step (matches the decoder's linear skip).
        self.geo_skip = nn.Linear(K, 2 * cfg.latent_dim, bias=False)
        with torch.no_grad():
            self.geo_skip.weight.zero_()
            k = min(K, cfg.latent_dim)
            self.geo_skip.weight[:k, :k] = torch.eye(k)
            self.fuse[-1].weight.mul_(0.1)
            self.fuse[-1].bias.zero_()
            self.fuse[-1].bias[cfg.latent_dim:] = -4.0

    def forward(self, vertices: torch.Tensor, texture: torch.Tensor):
        g = (vertices.reshape(vertices.shape[0], -1) - self.geo_mean) @ self.geo_proj
        t = self.tex(texture).flatten(1)
        mu, log_std = (self.fuse(torch.cat([g, t], 1)) + self.geo_skip(g)).chunk(2, 1)
        return mu, log_std.clamp(-8.0, 2.0)


class CodecAvatarVAE(nn.Module):
    """Encoder + decoder; ``forward`` samples z with the reparameterisation trick.

    ``encoder_cfg``: the encoder's own sizes when they differ from the decoder's (a decoder trained into another
    model's latent space keeps that model's encoder: ``--latent-from``, distilled students)."""

    def __init__(self, cfg: DecoderConfig, encoder_cfg: DecoderConfig | None = None):
        super().__init__()
        self.cfg = cfg
        self.encoder = AvatarEncoder(encoder_cfg or cfg)
        self.decoder = AvatarDecoder(cfg)

    def forward(self, vertices, enc_texture, view_direction, sample: bool = True):
        mu, log_std = self.encoder(vertices, enc_texture)
        z = mu + torch.randn_like(mu) * log_std.exp() if sample else mu
        verts, tex = self.decoder(z, view_direction)
        return verts, tex, mu, log_std


def kl_divergence(mu: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, std^2) || N(0, 1)), summed over latent dims, averaged over the batch."""
    return 0.5 * (mu.pow(2) + (2 * log_std).exp() - 2 * log_std - 1).sum(1).mean()
