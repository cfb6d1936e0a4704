"""Image-quality metrics shared by every evaluation: MSE, PSNR, SSIM (numpy + OpenCV, no torch).

Conventions: images are arrays of the same shape, (H, W) or (H, W, C), on a scale whose maximum is
``peak`` (255 for uint8 images, 1 for images in [0, 1]).

- MSE: mean of the squared difference over all pixels and channels.
- PSNR: ``10 log10(peak² / MSE)`` dB; infinite for identical images.
- SSIM (Wang et al. 2004): Gaussian window 11×11, σ 1.5, K1 = 0.01, K2 = 0.03, per channel, averaged over
  the pixels at least 5 px from the border (where the window fits) and over channels.
"""
from __future__ import annotations

import math

import numpy as np

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    if a.size == 0:
        raise ValueError("empty images")
    return a, b


def mse(a, b, mask=None) -> float:
    """Mean squared difference of two images; with ``mask`` (H, W) bool, over those pixels only (0 if none)."""
    a, b = _pair(a, b)
    d = (a - b) ** 2
    if mask is None:
        return float(d.mean())
    mask = np.asarray(mask, bool)
    return float(d[mask].mean()) if mask.any() else 0.0


def face_and_frame_mse(img, gt) -> tuple[float, float]:
    """(MSE over the face pixels, MSE over the whole frame) of ``img`` against the ground-truth render ``gt``
    (H, W, 3), on the images' own scale. Face pixels are the ground truth's foreground: any channel > 0 (the
    studio renders on black). A ground truth with no foreground gives a face MSE of 0."""
    return mse(img, gt, face_mask(gt)), mse(img, gt)


def psnr_from_mse(m: float, peak: float = 255.0) -> float:
    """``10 log10(peak² / m)`` (dB); ``inf`` for ``m`` = 0."""
    if m < 0 or not math.isfinite(m):
        raise ValueError(f"MSE must be finite and >= 0, got {m}")
    return math.inf if m == 0 else 10.0 * math.log10(peak * peak / m)


def psnr(a, b, peak: float = 255.0) -> float:
    """PSNR (dB) of image ``b`` against ``a`` on a scale whose maximum is ``peak``."""
    return psnr_from_mse(mse(a, b), peak)


def ssim(a, b, peak: float = 255.0, mask=None) -> float:
    """Mean SSIM of two images (H, W) or (H, W, C), H and W >= 11 (see the module docstring); with ``mask``
    (H, W) bool, the mean over the masked pixels only (e.g. the face: :func:`face_mask`)."""
    import cv2

    a, b = _pair(a, b)
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    if a.ndim != 3 or min(a.shape[:2]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs (H, W) or (H, W, C) images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {a.shape}")
    c1, c2 = (SSIM_K1 * peak) ** 2, (SSIM_K2 * peak) ** 2
    blur = lambda x: cv2.GaussianBlur(x, (SSIM_WINDOW, SSIM_WINDOW), SSIM_SIGMA, borderType=cv2.BORDER_REFLECT)
    r = SSIM_WINDOW // 2
    inner = None if mask is None else np.asarray(mask, bool)[r:-r, r:-r]
    if inner is not None and not inner.any():
        raise ValueError("SSIM mask selects no pixel away from the border")
    vals = []
    for ch in range(a.shape[2]):
        x, y = np.ascontiguousarray(a[..., ch]), np.ascontiguousarray(b[..., ch])
        mx, my = blur(x), blur(y)
        sxx = blur(x * x) - mx * mx
        syy = blur(y * y) - my * my
        sxy = blur(x * y) - mx * my
        s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
        s = s[r:-r, r:-r]
        vals.append(s.mean() if inner is None else s[inner].mean())
    return float(np.mean(vals))


def face_mask(gt) -> np.ndarray:
    """(H, W) bool: the ground-truth render's foreground (any channel > 0; the studio renders on black)."""
    return np.asarray(gt).max(-1) > 0


def error_map(img, gt, gain: float = 4.0) -> np.ndarray:
    """A picture of where ``img`` (H, W, 3) uint8 differs from ``gt``: the largest channel's |difference| times
    ``gain``, coloured with OpenCV's inferno map, (H, W, 3) uint8 RGB."""
    import cv2

    err = np.abs(np.asarray(img, np.int16) - np.asarray(gt, np.int16)).max(-1) * gain
    return np.ascontiguousarray(cv2.applyColorMap(np.clip(err, 0, 255).astype(np.uint8), cv2.COLORMAP_INFERNO)[..., ::-1])
