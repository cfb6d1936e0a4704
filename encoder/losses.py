"""Auto-CARD encoder training losses and the extreme-expression-aware re-weighting.

Per-sample terms (each (B,), so they can be re-weighted):

- latent: MSE between predicted and ground-truth code (the VAE mean), with each
  latent dimension standardised by its training-set std
- gaze: L1 on (yaw, pitch) of both eyes, radians
- geometry: L1 between the decoded mesh D_geo(z_pred) and the true mesh (dm)
- texture: L1 between the decoded texture D_tex(z_pred, v), area-downsampled to R,
  and the true view-dependent texture for v, over covered texels
- keypoints: L1 on visible keypoints, in units of the view size
- rendering: L1 between the studio image from v and the *decoded* texture seen
  through the ground-truth UV map of that view (``grid_sample`` of the texture at the
  per-pixel (u, v) of the true mesh; differentiable in the texture, the geometry
  enters through the geometry term), over face pixels

Extreme-expression-aware re-weighting (Auto-CARD): sample i gets
``w_i = exp(||g_i - g_bar|| / tau)`` where g_i is its true gaze (both eyes, 4-d)
and g_bar an exponential moving average of the gaze with momentum m. Weights are
divided by their batch mean so the loss scale (and learning rate) stays that of the
unweighted objective; switched off, every w_i = 1.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from avcore.config import ConfigDict


@dataclass
class LossWeights(ConfigDict):
    """Weights of the Auto-CARD loss terms."""

    latent: float = 1.0
    gaze: float = 1.0
    geometry: float = 100.0
    """L1 in decimetres: decoded meshes differ by ~1e-3 dm between expressions, so this weight is large."""
    texture: float = 1.0
    keypoints: float = 1.0
    rendering: float = 1.0



class GazeReweighting:
    """Extreme-expression-aware sample weights ``exp(||g - g_bar|| / tau)`` with an EMA ``g_bar``."""

    def __init__(self, tau: float = 0.25, momentum: float = 0.99, enabled: bool = True):
        if tau <= 0 or not 0 <= momentum < 1:
            raise ValueError("tau must be > 0 and momentum in [0, 1)")
        self.tau, self.momentum, self.enabled = tau, momentum, enabled
        self.mean: torch.Tensor | None = None

    def __call__(self, gaze: torch.Tensor) -> torch.Tensor:
        """gaze (B, 2, 2) true gaze -> weights (B,) (mean 1). Updates the EMA after weighting."""
        g = gaze.detach().reshape(gaze.shape[0], -1).float()
        if self.mean is None:
            self.mean = g.mean(0)
        if not self.enabled:
            w = torch.ones(g.shape[0])
        else:
            w = torch.exp((g - self.mean).norm(dim=1) / self.tau)
            w = w / w.mean()
        self.mean = self.momentum * self.mean + (1 - self.momentum) * g.mean(0)
        return w

    def state_dict(self) -> dict:
        return {"tau": self.tau, "momentum": self.momentum, "enabled": self.enabled,
                "mean": None if self.mean is None else self.mean.tolist()}

    def load_state_dict(self, d: dict) -> None:
        self.tau, self.momentum, self.enabled = d["tau"], d["momentum"], d["enabled"]
        self.mean = None if d["mean"] is None else torch.tensor(d["mean"])


def latent_loss(z: torch.Tensor, z_gt: torch.Tensor, z_std: torch.Tensor) -> torch.Tensor:
    return ((z - z_gt) / z_std).pow(2).mean(1)


def gaze_loss(gaze: torch.Tensor, gaze_gt: torch.Tensor) -> torch.Tensor:
    return (gaze - gaze_gt).abs().flatten(1).mean(1)


def keypoint_loss(kp: torch.Tensor, kp_gt: torch.Tensor, visible: torch.Tensor, size: float) -> torch.Tensor:
    """kp, kp_gt (B, 3, K, 2) pixels; visible (B, 3, K) bool -> (B,)."""
    m = visible.float().unsqueeze(-1)
    return ((kp - kp_gt).abs() / size * m).flatten(1).sum(1) / (2 * m.flatten(1).sum(1) + 1.0)


def geometry_loss(verts: torch.Tensor, verts_gt: torch.Tensor) -> torch.Tensor:
    return (verts - verts_gt).abs().flatten(1).mean(1)


def texture_loss(tex: torch.Tensor, tex_gt: torch.Tensor, coverage: torch.Tensor) -> torch.Tensor:
    """tex (B, 3, T, T) decoded; tex_gt (B, 3, R, R); coverage (R, R) -> (B,)."""
    R = tex_gt.shape[-1]
    t = F.adaptive_avg_pool2d(tex, R) if tex.shape[-1] != R else tex
    c = coverage.float()[None, None]
    return ((t - tex_gt).abs() * c).flatten(1).sum(1) / (3 * c.sum() + 1.0)


def rendering_loss(tex: torch.Tensor, uv_map: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Decoded texture through the true UV map of the view vs the studio render.

    tex (B, 3, T, T), row 0 = v 0; uv_map (B, R, R, 3) (u, v, face); image (B, 3, R, R) -> (B,).
    """
    grid = uv_map[..., :2] * 2 - 1  # grid_sample: x <- u (columns), y <- v (rows, row 0 = v 0)
    seen = F.grid_sample(tex, grid, mode="bilinear", padding_mode="border", align_corners=False)
    mask = (uv_map[..., 2] > 0.5).float().unsqueeze(1)
    return ((seen - image).abs() * mask).flatten(1).sum(1) / (3 * mask.flatten(1).sum(1) + 1.0)


def autocard_loss(out: dict, batch: dict, decoder, z_std: torch.Tensor, coverage: torch.Tensor, size: float,
                  weights: LossWeights, sample_weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """All terms for one batch. ``out``: encoder outputs (z, gaze, keypoints); ``batch``: tensors
    z_gt, gaze, keypoints, keypoints_visible, vertices, view_direction, texture, image, uv_map.
    ``decoder``: D(z, view) -> (vertices, texture), frozen (its parameters need no grad).
    Returns {term: batch-mean value, "total": weighted, re-weighted sum}."""
    verts, tex = decoder(out["z"], batch["view_direction"])
    terms = {
        "latent": latent_loss(out["z"], batch["z_gt"], z_std),
        "gaze": gaze_loss(out["gaze"], batch["gaze"]),
        "geometry": geometry_loss(verts, batch["vertices"]),
        "texture": texture_loss(tex, batch["texture"], coverage),
        "keypoints": keypoint_loss(out["keypoints"], batch["keypoints"], batch["keypoints_visible"], size),
        "rendering": rendering_loss(tex, batch["uv_map"], batch["image"]),
    }
    w = weights.to_dict()
    per_sample = sum(w[k] * v for k, v in terms.items())
    sw = torch.ones_like(per_sample) if sample_weights is None else sample_weights.to(per_sample)
    result = {k: v.mean() for k, v in terms.items()}
    result["total"] = (sw * per_sample).mean()
    return result
