"""The neural renderer G's and the implicit warp network W's shapes, and W's ablation switches.

:mod:`renderer.neural` builds G and :mod:`renderer.warp` builds W from them. Torch-free, so the command line offers
their options without importing torch.
"""
from __future__ import annotations

from dataclasses import dataclass

from avcore.config import ConfigDict

SH_CHANNELS = (3, 12)
"""Feature channels [start, stop) multiplied by the view's 9 SH coefficients (the paper's channels 4-12)."""


@dataclass
class NeuralRendererConfig(ConfigDict):
    channels: int = 16
    """Neural texture feature channels (at least 12: channels 4-12 carry the SH modulation)."""
    texture_levels: tuple[int, ...] = (256, 128, 64, 32)
    """Side of each level of the neural texture pyramid."""
    widths: tuple[int, ...] = (24, 48, 64, 96)
    """U-Net channels per level (full resolution first; the last three decoder maps, at S/4, S/2 and S, are the
    cache): about 0.7 GMAC per frame at 128 px."""
    modulated: bool = False
    """Convolutions modulated by the code through a mapping MLP (the enhanced renderer), else a plain U-Net."""
    mapping_dim: int = 32
    """``modulated``: width of the mapping MLP's layers and of the style vector ``w``."""
    mapping_layers: int = 2
    """``modulated``: linear layers of the mapping MLP (code -> w)."""
    latent_dim: int = 256
    """``modulated``: size of the code the mapping MLP takes."""

    def __post_init__(self) -> None:
        self.texture_levels = tuple(self.texture_levels)
        self.widths = tuple(self.widths)
        if self.channels < SH_CHANNELS[1]:
            raise ValueError(f"neural renderer: channels must be >= {SH_CHANNELS[1]} (SH-modulated channels 4-12)")
        if len(self.widths) < 3:
            raise ValueError("neural renderer: at least three U-Net levels (the cache holds maps at S/4, S/2, S)")


ABLATIONS = {
    "no-duv": {"duv": False},
    "no-code-pose": {"code_pose": False},
    "no-mlp": {"mlp": False},
    "no-sh-modulation": {"sh_modulation": False},
}
"""The paper's Table 3 rows: :class:`WarpConfig` fields switched off. The explicit-warp baseline is
``WarpConfig(explicit=True)``."""


@dataclass
class WarpConfig(ConfigDict):
    hidden: int = 32
    """Channels of the MLP's output broadcast over the S/4 features."""
    widths: tuple[int, ...] = (32, 16)
    """Channels after the S/4 and S/2 convolutions (W1), before W2 maps to RGB at S."""
    duv: bool = True
    """Give W the UV change ΔUV (ablation: without ΔUV)."""
    code_pose: bool = True
    """Give the MLP the view, code, gaze and their changes (ablation: only the SH of the new view)."""
    mlp: bool = True
    """Use the MLP at all (ablation: without the MLP)."""
    sh_modulation: bool = True
    """Modulate 9 cached channels by the SH change (ablation: without SH modulation)."""
    explicit: bool = False
    """Explicit-warp baseline: predict a flow field and resample the cached image."""
    feature_flow: bool = False
    """W also predicts a flow field at S/4 (from the same trunk) and resamples the cached S/2 and S maps along it
    before its convolutions, so the cached features can move further than the convolutions reach; W still
    synthesizes the image (view-dependent shading, disocclusions), unlike the explicit baseline."""
    image_flow: bool = False
    """W also predicts a flow field at S/4 (from the same trunk), resamples G's cached image along it (three channels:
    cheap, unlike ``feature_flow``, which makes W about as slow as G) and adds its own synthesis to that: W2 sees the
    moved image and outputs a correction (view-dependent shading, disocclusions, what the flow cannot move). Starts
    as the naive reuse of the cached image (zero flow, zero correction)."""
    w2_kernel: int = 3
    """Kernel of W2, the last convolution (at S, to RGB): 3, or 1 (per pixel: about a tenth of the cost; the image
    flow and W1's 3x3 convolution at S/2 do the moving)."""

    def __post_init__(self) -> None:
        self.widths = tuple(self.widths)
        if self.w2_kernel not in (1, 3):
            raise ValueError("warp: w2_kernel is 1 or 3")
        if len(self.widths) != 2:
            raise ValueError("warp: widths needs two entries (S/4 and S/2 convolutions)")
