"""Named decoder sizes as data (like the encoder's architecture registry): a large teacher, today's size and students.

A preset is a set of :class:`decoder.config.DecoderConfig` fields over the defaults; every preset builds, trains
(``avcall train decoder --preset NAME``), exports and loads like today's decoder, so a receiver loads a student's
directory unchanged. All presets keep the latent size: students are distilled in the teacher's latent space, so
the same HMC encoders drive them.

The numbers are starting points for the distillation study, sized by what dominates each model: the linear
geometry basis (``geometry_basis`` x vertices x 3 parameters), the texture decoder's first linear layer
(``latent_dim`` x ``texture_channels[0]`` x ``texture_seed``\\ :sup:`2`) and its convolutions, and the mean texture
(3 x ``texture_size``\\ :sup:`2`). :func:`decoder_cost` counts parameters and FLOPs of any configuration.
"""
from __future__ import annotations

from dataclasses import replace

from .config import DecoderConfig

PRESETS: dict[str, dict] = {
    "teacher": dict(geometry_basis=192, geometry_hidden=512, texture_size=256, texture_seed=8,
                    texture_channels=(128, 96, 64, 48, 32), view_inject=2),
    "current": {},
    "student-s": dict(geometry_basis=24, geometry_hidden=96, texture_size=256, texture_seed=4,
                      texture_channels=(32, 24, 16, 12, 8, 8), view_inject=2),
    "student-m": dict(geometry_basis=12, geometry_hidden=64, texture_size=256, texture_seed=4,
                      texture_channels=(16, 12, 8, 8, 6, 4), view_inject=2),
    "student-xs": dict(geometry_basis=8, geometry_hidden=64, texture_size=128, texture_seed=4,
                       texture_channels=(16, 12, 8, 8, 4), view_inject=2),
}
"""Fields over :class:`DecoderConfig`'s defaults; ``current`` is today's embedded decoder size."""


def list_presets() -> list[str]:
    return list(PRESETS)


def preset_config(name: str, *, identity: str = "S1", latent_dim: int = 256, num_vertices: int | None = None) -> DecoderConfig:
    """The :class:`DecoderConfig` of preset ``name`` (``ValueError`` naming the presets if unknown)."""
    if name not in PRESETS:
        raise ValueError(f"unknown decoder preset {name!r}; presets: {', '.join(PRESETS)}")
    cfg = replace(DecoderConfig(), identity=identity, latent_dim=latent_dim, **PRESETS[name])
    if num_vertices is not None:
        cfg.num_vertices = num_vertices
    return cfg


def preset_of(cfg: DecoderConfig) -> str | None:
    """The preset whose sizes ``cfg`` has (identity, latent size and vertex count aside), else None."""
    for name in PRESETS:
        if preset_config(name, identity=cfg.identity, latent_dim=cfg.latent_dim, num_vertices=cfg.num_vertices) == cfg:
            return name
    return None


def decoder_cost(cfg: DecoderConfig) -> dict:
    """Parameters and MFLOPs (2 x multiply-accumulates, counted by ``FlopCounterMode``) of one decode (batch 1)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from .model import AvatarDecoder

    dec = AvatarDecoder(cfg).eval()
    z = torch.zeros(1, cfg.latent_dim)
    v = torch.tensor([[0.0, 0.0, 1.0]])
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        dec(z, v)
    return {"params": int(sum(p.numel() for p in dec.parameters())), "mflops": fc.get_total_flops() / 1e6}
