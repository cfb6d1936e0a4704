"""Typed configuration of the codec-avatar VAE and its training.

Both dataclasses round-trip through plain dicts (``to_dict`` / ``from_dict``, the
one rule of :mod:`avcore.config`: unknown keys are an error) so they are saved as
JSON next to the weights: a checkpoint is a ``state_dict``
plus these dicts, never a pickled object.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from avcore.config import ConfigDict


@dataclass
class DecoderConfig(ConfigDict):
    """Architecture of the VAE; everything needed to rebuild the network from its weights."""

    identity: str = "S1"
    """Studio identity the avatar is trained for."""
    latent_dim: int = 256
    """Size of the latent code z."""
    num_vertices: int = 6252
    """Vertices of the head mesh (face + mouth interior)."""
    geometry_basis: int = 64
    """Linear geometry basis size (initialised from PCA of training vertices)."""
    geometry_hidden: int = 256
    """Hidden width of the MLP z -> basis coefficients."""
    texture_size: int = 256
    """Output texture resolution (square)."""
    texture_seed: int = 8
    """Spatial size of the first texture feature map (from a linear layer on z)."""
    texture_channels: tuple[int, ...] = (64, 48, 32, 16, 8)
    """Channels of the texture decoder's feature maps, at seed, 2x seed, ... resolution."""
    view_inject: int = 2
    """Feature maps (counting from the seed) that get the view direction concatenated."""
    encoder_texture_size: int = 64
    """Texture resolution the (training-only) encoder sees."""
    encoder_channels: tuple[int, ...] = (16, 32, 48, 64)
    """Channels of the encoder's stride-2 convolutions."""


    @property
    def texture_feature_size(self) -> int:
        """Resolution of the last feature map (the texture is upsampled from it to ``texture_size``)."""
        return self.texture_seed * 2 ** (len(self.texture_channels) - 1)


@dataclass
class TrainConfig(ConfigDict):
    """Data and optimisation settings of decoder training."""

    num_train_poses: int = 1000
    """Training poses (expression + gaze) sampled from the studio."""
    num_test_poses: int = 48
    """Held-out poses (disjoint seed) used by evaluation."""
    views_per_pose: int = 2
    """Random view directions rendered per training pose."""
    image_size: int = 128
    """Resolution of the rendered-image loss (GT render and UV map)."""
    train_seed: int = 1
    init_seed: int = -1
    """Seed of the weights' initialisation and the batch order (-1: ``train_seed``, which also picks the training
    poses); runs that differ only in it train on the same data (seed-to-seed noise)."""
    test_seed: int = 1_000_003
    batch_size: int = 8
    lr: float = 2e-3
    lr_final: float = 1e-4
    """Cosine decay target learning rate."""
    steps: int = 100000
    """Optimisation steps (the run stops earlier if ``time_budget_s`` is reached)."""
    time_budget_s: float = 1200.0
    """Wall-clock budget; the learning-rate schedule is stretched over it."""
    kl_weight: float = 2e-5
    """Weight of the KL term (KL summed over latent dims)."""
    geometry_weight: float = 20.0
    """Weight of the L1 vertex loss (decimetres)."""
    texture_weight: float = 1.0
    """Weight of the L1 texture loss over covered texels."""
    image_weight: float = 1.0
    """Weight of the L1 rendered-image loss (predicted texture seen through the GT UV map vs the studio render)."""
    checkpoint_every_s: float = 180.0
    """Write a resumable checkpoint this often (seconds)."""
    latent_from: str = ""
    """A decoder model directory whose (frozen) encoder defines the latent space: the decoder is trained on that
    encoder's codes (its means; no KL), so it decodes the same codes as that model and the same HMC encoders
    drive it (teachers and students of the distillation). Empty: train encoder and decoder together (a VAE)."""
    teacher: str = ""
    """Distillation: a decoder model directory whose decoder teaches this one (its encoder's latent space is used,
    ``latent_from`` defaults to it). Empty: no teacher."""
    distill_kl_weight: float = 1.0
    """Weight of L_kl (:func:`decoder.distill.distillation_losses`: texture channel KL + geometry Gaussian KL)."""
    distill_feature_weight: float = 1.0
    """Weight of the feature-consistency loss (1 - cosine of matched, projected features)."""
    distill_temperature: float = 1.0
    """Temperature of the texture's channel-wise softmax."""
    distill_geometry_spread: float = 0.05
    """Spread (decimetres) of the per-vertex Gaussians of the geometry KL."""
    threads: int = 2
    """torch intra-op threads."""
    cache: str = ""
    """Dataset cache (.npz) path; empty = ``<out>/dataset.npz``."""
    extra: dict = field(default_factory=dict)

