"""The AVE-NAS search space: per-view encoder architectures as choices, sampled into :class:`EncoderArch` data.

Each HMC view (left eye, right eye, mouth) gets its own architecture, chosen independently:

* input **resolution** (the raw 192x192 view brought down inside the network);
* **stem** width (a stride-2 3x3 conv);
* up to :data:`MAX_LAYERS` layers in each of five **stages** (strides 1, 2, 2, 2, 2; the first stage may be empty,
  so a view has 4 or 5 stages): the stage's **width** from a small per-stage set, then per layer an **operator**
  (plain conv, Fused-MBConv with expansion 4, depthwise MBConv with expansion 3 or 6) and a **kernel** (3 or 5);
  the stage's **depth** (1 to 3) decides how many of its layers exist, the rest are skipped (the FBNet way of
  searching depth: "skip" is an operator of every layer but a stage's first);
* a 1x1 **head** width (0 = none) and the **pooling** (``mean``, or ``flatten``: a linear layer over every
  position, the finding of ``docs/encoder.md``).

The fusion MLP's hidden width is a choice too. A point of the space is a :class:`Choice` (plain data, JSON),
:func:`to_arch` turns it into the architecture the builder, exporter, FLOP counter and latency table read.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from avcore.config import ConfigDict

from .arch import VIEW_NAMES, EncoderArch, ViewArch

OPERATORS: tuple[str, ...] = ("conv", "fmb4", "mb3", "mb6")
"""Operators of a layer (``skip`` is expressed by the stage depth)."""
MAX_LAYERS = 3
"""Layers per stage."""


OPERATOR_BLOCKS: dict[str, tuple[str, int]] = {"conv": ("conv", 1), "fmb4": ("fmb", 4), "mb3": ("mb", 3), "mb6": ("mb", 6)}
"""Operator -> (block op of :mod:`encoder.arch`, expansion)."""


def block_string(op: str, kernel: int, stride: int, channels: int) -> str:
    """One layer as a block string of :mod:`encoder.arch`."""
    if op not in OPERATOR_BLOCKS:
        raise ValueError(f"unknown operator {op!r}; expected one of {OPERATORS}")
    name, e = OPERATOR_BLOCKS[op]
    return f"{name}_k{kernel}_s{stride}" + (f"_e{e}" if name != "conv" else "") + f"_c{channels}"


@dataclass
class SearchSpace(ConfigDict):
    """The choices of every view (and the fusion)."""

    resolutions: tuple[int, ...] = (96, 128, 160, 192)
    stem_widths: tuple[int, ...] = (16, 24, 32)
    stage_strides: tuple[int, ...] = (1, 2, 2, 2, 2)
    stage_widths: tuple[tuple[int, ...], ...] = ((16, 24, 32), (24, 32, 48), (32, 48, 64), (48, 64, 96),
                                                 (64, 96, 128))
    operators: tuple[str, ...] = OPERATORS
    kernels: tuple[int, ...] = (3, 5)
    depths: tuple[int, ...] = (1, 2, 3)
    first_stage_depths: tuple[int, ...] = (0, 1, 2)
    """The stride-1 first stage may be left out (a view of 4 stages)."""
    head_widths: tuple[int, ...] = (0, 128, 256)
    pools: tuple[str, ...] = ("mean", "flatten")
    fusion_widths: tuple[int, ...] = (128, 256, 512)
    feature_dim: int = 128
    input_size: int = 192

    def __post_init__(self) -> None:
        self.stage_widths = tuple(tuple(w) for w in self.stage_widths)
        for name in ("resolutions", "stem_widths", "stage_strides", "operators", "kernels", "depths",
                     "first_stage_depths", "head_widths", "pools", "fusion_widths"):
            setattr(self, name, tuple(getattr(self, name)))
        if len(self.stage_widths) != len(self.stage_strides):
            raise ValueError("search space: one width set per stage")
        if max(self.depths) > MAX_LAYERS or max(self.first_stage_depths) > MAX_LAYERS or min(self.depths) < 1:
            raise ValueError(f"search space: depths must be within 1..{MAX_LAYERS} (the first stage's within 0..)")
        for op in self.operators:
            block_string(op, 3, 1, 8)


@dataclass
class ViewChoice(ConfigDict):
    """One view's point of the space."""

    resolution: int
    stem: int
    widths: list[int]
    """Per stage."""
    depths: list[int]
    """Per stage (0 only for the first)."""
    ops: list[list[str]]
    """Per stage, per layer (``MAX_LAYERS`` each; layers beyond the depth are ignored)."""
    kernels: list[list[int]]
    head: int
    pool: str


@dataclass
class Choice(ConfigDict):
    """A whole encoder's point of the space: one :class:`ViewChoice` per view and the fusion width."""

    views: dict[str, ViewChoice]
    fusion: int
    name: str = "sampled"

    def __post_init__(self) -> None:
        self.views = {k: (v if isinstance(v, ViewChoice) else ViewChoice.from_dict(v)) for k, v in self.views.items()}


def sample_view(space: SearchSpace, rng: np.random.Generator) -> ViewChoice:
    pick = lambda xs: xs[int(rng.integers(len(xs)))]  # noqa: E731
    n = len(space.stage_strides)
    return ViewChoice(
        resolution=int(pick(space.resolutions)), stem=int(pick(space.stem_widths)),
        widths=[int(pick(space.stage_widths[s])) for s in range(n)],
        depths=[int(pick(space.first_stage_depths if s == 0 else space.depths)) for s in range(n)],
        ops=[[str(pick(space.operators)) for _ in range(MAX_LAYERS)] for _ in range(n)],
        kernels=[[int(pick(space.kernels)) for _ in range(MAX_LAYERS)] for _ in range(n)],
        head=int(pick(space.head_widths)), pool=str(pick(space.pools)))


def sample_choice(space: SearchSpace, rng: np.random.Generator, name: str = "sampled") -> Choice:
    """A uniformly random point of the space (views independent)."""
    views = {v: sample_view(space, rng) for v in VIEW_NAMES}
    return Choice(views=views, fusion=int(space.fusion_widths[int(rng.integers(len(space.fusion_widths)))]), name=name)


def view_arch(space: SearchSpace, c: ViewChoice, *, gaze: bool) -> ViewArch:
    blocks = []
    for s, stride in enumerate(space.stage_strides):
        for layer in range(c.depths[s]):
            blocks.append(block_string(c.ops[s][layer], c.kernels[s][layer], stride if layer == 0 else 1, c.widths[s]))
    return ViewArch(resolution=c.resolution, stem=c.stem, blocks=blocks, head=c.head, gaze=gaze, keypoints=True,
                    pool=c.pool)


def to_arch(space: SearchSpace, choice: Choice, *, latent_dim: int = 256, num_keypoints: int = 9) -> EncoderArch:
    """The architecture (``arch.json`` data) of a point of the space."""
    return EncoderArch(name=choice.name,
                       views={v: view_arch(space, choice.views[v], gaze=v != "mouth") for v in VIEW_NAMES},
                       feature_dim=space.feature_dim, fusion_hidden=(choice.fusion,), latent_dim=latent_dim,
                       num_keypoints=num_keypoints, input_size=space.input_size)

