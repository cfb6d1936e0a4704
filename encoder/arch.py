"""Encoder architectures as data, and the registry of named ones.

An architecture is a small JSON-able dict, saved next to its weights, from which
:func:`encoder.model.build_encoder` builds the network. Baselines (EEM and its
ablations) and, later, searched AVE-NAS architectures use the same format.

A per-view encoder is a stem convolution followed by blocks, each written as a
short string (the timm habit of ``'er_r2_k3_s2_e4_c48'``)::

    fmb_k3_s2_e4_c48_r2   Fused-MBConv, kernel 3, stride 2, expansion 4, 48 channels, repeated twice
    mb_k5_s2_e6_c48       MBConv: 1x1 expansion (6x), depthwise 5x5 (stride 2), 1x1 projection
    conv_k3_s1_c64        plain conv + BN + ReLU
    skip                  identity (a removed layer; needs stride 1 and unchanged channels)

``s`` applies to the first repeat only; ``e`` defaults to 1, ``k`` to 3, ``s`` to 1,
``r`` to 1. The view image (``input_size``² uint8) is brought to the view's
``resolution`` inside the network (average-pooled when the resolution divides the
input size, else resized bilinearly), so every exported model takes the raw HMC
view and the runtime needs no per-model preprocessing.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from avcore.config import ConfigDict
from capture.rig import HMC_VIEWS

VIEW_NAMES: tuple[str, ...] = HMC_VIEWS
"""HMC views in frame order (the rig's :data:`capture.rig.HMC_VIEWS`)."""

OPS: tuple[str, ...] = ("fmb", "mb", "conv", "skip")
"""Operator vocabulary of a block."""


@dataclass(frozen=True)
class BlockSpec:
    """One decoded block string."""

    op: str
    """``fmb`` (Fused-MBConv), ``mb`` (depthwise MBConv), ``conv`` (plain conv) or ``skip`` (identity)."""
    kernel: int = 3
    stride: int = 1
    expansion: int = 1
    """Expansion of ``fmb`` and ``mb`` blocks (``mb``: 3 or 6 in the search space); ignored by ``conv``."""
    channels: int = 0
    """Output channels; 0 = unchanged (``skip``)."""
    repeats: int = 1

    def to_str(self) -> str:
        if self.op == "skip":
            return "skip" + (f"_r{self.repeats}" if self.repeats != 1 else "")
        s = f"{self.op}_k{self.kernel}_s{self.stride}"
        if self.op in ("fmb", "mb"):
            s += f"_e{self.expansion}"
        s += f"_c{self.channels}"
        if self.repeats != 1:
            s += f"_r{self.repeats}"
        return s


_TOKEN = re.compile(r"^([a-z])(\d+)$")


def decode_block(s: str) -> BlockSpec:
    """Parse a block string (see the module docstring) into a :class:`BlockSpec`."""
    parts = s.strip().split("_")
    op = parts[0]
    if op not in OPS:
        raise ValueError(f"unknown block op {op!r} in {s!r}; expected one of {OPS}")
    kw: dict[str, int] = {}
    keys = {"k": "kernel", "s": "stride", "e": "expansion", "c": "channels", "r": "repeats"}
    for tok in parts[1:]:
        m = _TOKEN.match(tok)
        if not m or m.group(1) not in keys:
            raise ValueError(f"bad token {tok!r} in block {s!r}")
        kw[keys[m.group(1)]] = int(m.group(2))
    b = BlockSpec(op, **kw)
    if b.op != "skip" and b.channels <= 0:
        raise ValueError(f"block {s!r} needs a channel count (c..)")
    if b.kernel % 2 == 0 or b.kernel < 1 or b.stride not in (1, 2) or b.repeats < 1 or b.expansion < 1:
        raise ValueError(f"block {s!r}: kernel must be odd, stride 1 or 2, repeats and expansion >= 1")
    if b.op == "skip" and b.stride != 1:
        raise ValueError(f"block {s!r}: a skip cannot change the stride")
    return b


POOLS = ("mean", "flatten")


@dataclass
class ViewArch(ConfigDict):
    """Architecture of one near-sensor per-view encoder."""

    resolution: int = 192
    """Side of the image the convolutions see (the view is average-pooled from ``input_size``)."""
    stem: int = 32
    """Channels of the stride-2 3x3 stem convolution."""
    blocks: list[str] = field(default_factory=list)
    """Block strings, in order."""
    head: int = 256
    """Channels of the final 1x1 conv before global pooling (0 = none)."""
    gaze: bool = False
    """Regress this eye's gaze (yaw, pitch)."""
    keypoints: bool = True
    """Regress the view's 2D keypoints."""
    pool: str = "mean"
    """How the final map becomes a vector: ``mean`` (global average pooling) or ``flatten`` (a linear layer over
    every position, as the Codec Avatar HMC encoder does; keeps where things are, e.g. the pupil)."""

    def decoded(self) -> list[BlockSpec]:
        return [decode_block(b) for b in self.blocks]


@dataclass
class EncoderArch(ConfigDict):
    """A whole HMC encoder: three per-view encoders and the fusion head."""

    name: str
    views: dict[str, ViewArch]
    """Per-view architectures keyed by :data:`VIEW_NAMES`."""
    feature_dim: int = 128
    """Per-view feature size; the fusion head sees ``3 * feature_dim``."""
    fusion_hidden: tuple[int, ...] = (512,)
    """Hidden widths of the fusion MLP."""
    latent_dim: int = 256
    """Size of the decoder's latent code z."""
    num_keypoints: int = 9
    """Keypoints per view."""
    input_size: int = 192
    """Side of the raw HMC view fed to every per-view model."""

    def __post_init__(self):
        self.views = {k: (v if isinstance(v, ViewArch) else ViewArch.from_dict(v)) for k, v in self.views.items()}
        self.fusion_hidden = tuple(self.fusion_hidden)
        if tuple(self.views) != VIEW_NAMES:
            raise ValueError(f"architecture {self.name!r} must define views {VIEW_NAMES} in that order")
        for k, v in self.views.items():
            v.decoded()
            if v.pool not in POOLS:
                raise ValueError(f"{self.name}/{k}: pool {v.pool!r} is not one of {', '.join(POOLS)}")
            if not 8 <= v.resolution <= self.input_size:
                raise ValueError(f"{self.name}/{k}: resolution {v.resolution} must be from 8 to the input size {self.input_size}")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, s: str) -> "EncoderArch":
        return cls.from_dict(json.loads(s))


# ---------------------------------------------------------------------------- registry
_REGISTRY: dict[str, callable] = {}


def register_arch(name: str):
    """Decorator: register a zero-argument function returning an :class:`EncoderArch`."""

    def deco(fn):
        if name in _REGISTRY:
            raise ValueError(f"architecture {name!r} registered twice")
        _REGISTRY[name] = fn
        return fn

    return deco


ARCHS_DIR = Path(__file__).resolve().parent / "archs"
"""Searched architectures shipped as data: ``NAME.json`` (an :class:`EncoderArch`) registers ``NAME``."""


def register_arch_file(path: str | Path) -> str:
    """Register the architecture in ``path`` (``arch.json`` format) under its file name; returns the name."""
    path = Path(path)
    name = path.stem
    arch = EncoderArch.from_json(path.read_text())
    if arch.name != name:
        raise ValueError(f"{path}: the architecture is named {arch.name!r}, the file {name!r}")
    text = arch.to_json()
    register_arch(name)(lambda: EncoderArch.from_json(text))
    return name


def install_arch(arch_json: str | Path, name: str, directory: str | Path = ARCHS_DIR) -> Path:
    """Copy a searched ``arch.json`` into the registry's directory as ``name`` (and register it now)."""
    arch = EncoderArch.from_json(Path(arch_json).read_text())
    arch.name = name
    if name in _REGISTRY:
        raise ValueError(f"architecture {name!r} is already registered")
    out = Path(directory) / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(arch.to_json())
    register_arch_file(out)
    return out


def list_archs() -> list[str]:
    return list(_REGISTRY)


def get_arch(name: str) -> EncoderArch:
    """A fresh copy of the registered architecture ``name``, or the one in the ``arch.json`` file ``name`` (a path
    ending in ``.json``: a searched architecture trained without registering it)."""
    if name.endswith(".json") and name not in _REGISTRY:
        path = Path(name)
        if not path.is_file():
            raise ValueError(f"architecture file {name} missing")
        return EncoderArch.from_json(path.read_text())
    if name not in _REGISTRY:
        raise ValueError(f"unknown encoder architecture {name!r}; registered: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]()


def _scale(c: int, f: float) -> int:
    return max(8, int(c * f / 8 + 0.5) * 8)


def eem_view(width: float = 1.0, resolution: int = 192, *, gaze: bool) -> ViewArch:
    """The hand-designed EEM per-view encoder (a plain-conv VGG-like stack, as in the Codec
    Avatar HMC encoder): a stride-2 stem and four stride-2 stages of two 3x3 convs."""
    c = [_scale(x, width) for x in (48, 72, 96, 128, 160)]
    blocks = [f"conv_k3_s1_c{c[0]}"]
    for ch in c[1:]:
        blocks += [f"conv_k3_s2_c{ch}", f"conv_k3_s1_c{ch}"]
    return ViewArch(resolution=resolution, stem=c[0], blocks=blocks, head=_scale(256, width), gaze=gaze, keypoints=True)


def _eem(name: str, width: float = 1.0, resolution: int = 192) -> EncoderArch:
    return EncoderArch(
        name=name,
        views={v: eem_view(width, resolution, gaze=v != "mouth") for v in VIEW_NAMES},
    )


@register_arch("EEM")
def eem() -> EncoderArch:
    """Hand-designed baseline, ~1 GFLOP per view at 192x192 (~3 GFLOPs for the three views)."""
    return _eem("EEM")


@register_arch("EEM-ch50")
def eem_ch50() -> EncoderArch:
    """EEM with half the channels in every layer."""
    return _eem("EEM-ch50", width=0.5)


@register_arch("EEM-res50")
def eem_res50() -> EncoderArch:
    """EEM at half the input resolution (96x96)."""
    return _eem("EEM-res50", resolution=96)


@register_arch("EEM-flat")
def eem_flat() -> EncoderArch:
    """EEM whose per-view heads read the final 6x6 map with a linear layer instead of averaging it away."""
    a = _eem("EEM-flat")
    for v in a.views.values():
        v.pool = "flatten"
    return a


@register_arch("tiny")
def tiny() -> EncoderArch:
    """A few-kFLOP architecture for tests: every operator once, 32x32 input."""
    view = lambda g: ViewArch(resolution=16, stem=8, blocks=["fmb_k3_s2_e4_c16", "skip", "fmb_k3_s1_e1_c16", "conv_k3_s2_c16"],
                              head=16, gaze=g, keypoints=True)
    return EncoderArch(name="tiny", views={v: view(v != "mouth") for v in VIEW_NAMES}, feature_dim=16,
                       fusion_hidden=(32,), latent_dim=8, num_keypoints=9, input_size=32)


@register_arch("tiny-search")
def tiny_search() -> EncoderArch:
    """A few-kFLOP architecture for tests of the search space's grammar: depthwise MBConv (kernel 5, expansion 3 and
    6), a different architecture and resolution per view (24 is resized from the 32x32 input, 16 pooled)."""
    eye = lambda g: ViewArch(resolution=24, stem=8, blocks=["mb_k5_s2_e6_c16", "mb_k3_s1_e3_c16", "skip", "fmb_k5_s2_e4_c16"],
                             head=16, gaze=g, keypoints=True, pool="flatten")
    mouth = ViewArch(resolution=16, stem=8, blocks=["conv_k5_s2_c16", "mb_k3_s2_e3_c24_r2"], head=0, gaze=False,
                     keypoints=True)
    return EncoderArch(name="tiny-search", views={"left_eye": eye(True), "right_eye": eye(True), "mouth": mouth},
                       feature_dim=16, fusion_hidden=(24,), latent_dim=8, num_keypoints=9, input_size=32)


for _path in sorted(ARCHS_DIR.glob("*.json")):  # searched architectures (AVE-S, AVE-M, AVE-L, ...)
    register_arch_file(_path)
