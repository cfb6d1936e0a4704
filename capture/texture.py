"""Procedural textures: the face albedo atlas, its auxiliary maps, and the eyeball texture.

The atlas is painted in UV space. Each texel of the face region maps back to
canonical (θ, φ) on the head through the grid layout, so features are placed
by the same angles as the geometry. Outputs (all float32 in [0, 1]):

- ``albedo`` (T, T, 3): linear RGB, row 0 = v 0 (the mouth-interior strip).
- ``aux`` (T, T, 4): R specular strength, G forehead wrinkles over the left brow,
  B wrinkles over the right brow, A near-infrared albedo.
- eyeball texture (E, 2E, 4): RGB albedo + near-infrared albedo, u = azimuth
  around the eye axis, v = polar angle from the pupil (0) to the back (1).
"""
from __future__ import annotations

import numpy as np

from . import head as H
from .head import HeadModel

TEXTURE_SIZE = 256
EYE_TEXTURE_SIZE = 64
IRIS_ANGLE = 0.50  # radians from the eye axis to the limbus
PUPIL_ANGLE = 0.19


def _noise(rng, shape, scale):
    """Smooth value noise at roughly ``scale`` texels, zero mean unit std."""
    h, w = shape
    gh, gw = max(2, int(h / scale) + 2), max(2, int(w / scale) + 2)
    g = rng.standard_normal((gh, gw))
    y = np.linspace(0, gh - 1.001, h)
    x = np.linspace(0, gw - 1.001, w)
    y0, x0 = y.astype(int), x.astype(int)
    fy, fx = (y - y0)[:, None], (x - x0)[None, :]
    fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)
    a = g[y0][:, x0] * (1 - fx) + g[y0][:, x0 + 1] * fx
    b = g[y0 + 1][:, x0] * (1 - fx) + g[y0 + 1][:, x0 + 1] * fx
    n = a * (1 - fy) + b * fy
    return (n - n.mean()) / (n.std() + 1e-8)


def _ss(e0, e1, x):
    t = np.clip((x - e0) / (e1 - e0), 0, 1)
    return t * t * (3 - 2 * t)


def paint_face(head: HeadModel, size: int = TEXTURE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Albedo (T, T, 3) and aux (T, T, 4) maps for ``head``'s identity."""
    p = head.params
    rng = np.random.default_rng(p.seed * 7919 + 1)
    T = size
    v, u = np.meshgrid((np.arange(T) + 0.5) / T, (np.arange(T) + 0.5) / T, indexing="ij")
    # Texel -> fractional grid row/col -> canonical angles.
    col = u * H.GRID_COLS
    row = (v - H.UV_MOUTH_STRIP) / (1 - H.UV_MOUTH_STRIP) * (H.GRID_ROWS - 1)
    th = np.interp(col, np.arange(H.GRID_COLS + 1), head.col_theta)
    ph = np.interp(row, np.arange(H.GRID_ROWS), head.row_phi)
    ath = np.abs(th)
    skin = np.array(p.skin)
    n1, n2, n3 = _noise(rng, (T, T), 24), _noise(rng, (T, T), 6), _noise(rng, (T, T), 1.5)
    alb = skin[None, None] * (1 + 0.045 * n1[..., None] + 0.02 * n2[..., None])
    # Blush on the cheeks, darker under the eyes.
    blush = np.exp(-0.5 * (((ath - 0.5) / 0.15) ** 2 + ((ph - (p.mouth_phi + 0.2)) / 0.12) ** 2))
    alb = alb * (1 - 0.10 * blush[..., None]) + 0.10 * blush[..., None] * np.array([0.85, 0.35, 0.35])
    under = np.exp(-0.5 * (((ath - p.eye_theta) / 0.13) ** 2 + ((ph - (p.eye_phi - 0.1)) / 0.04) ** 2))
    alb *= 1 - 0.12 * under[..., None]
    # Freckle-like pores.
    alb *= 1 - 0.05 * np.clip(n3, 1.5, 4)[..., None]
    # Lips: vermilion shape with a cupid's bow; darker inner lip on the slit rows.
    mx = np.clip(ath / p.mouth_half_width, 0, 1.5)
    shape = np.sqrt(np.clip(1 - mx**2, 0, 1))
    up_h = 0.05 * shape * (1 - 0.25 * np.exp(-0.5 * (th / 0.03) ** 2)) + 0.004
    dn_h = 0.065 * shape + 0.004
    lip_up = (row >= H.ROW_UPPER_LIP) & (ph - p.mouth_phi < up_h)
    lip_dn = (row <= H.ROW_LOWER_LIP + 1) & (row > H.ROW_LOWER_LIP - 8) & (p.mouth_phi - ph < dn_h)
    lipm = (lip_up | lip_dn) & (ath < p.mouth_half_width * 1.02)
    lip_soft = lipm.astype(float)
    alb = alb * (1 - lip_soft[..., None]) + lip_soft[..., None] * np.array(p.lips) * (1 + 0.04 * n2[..., None])
    inner = (row > H.ROW_LOWER_LIP - 0.6) & (row < H.ROW_UPPER_LIP + 0.6) & (ath < p.mouth_half_width)
    alb[inner] = np.array(p.lips) * 0.55
    # Nostrils.
    tip_phi = p.mouth_phi + 0.16
    nos = np.exp(-0.5 * (((ath - p.nose_width * 0.45) / 0.022) ** 2 + ((ph - (tip_phi - 0.045)) / 0.014) ** 2))
    alb *= 1 - 0.75 * nos[..., None]
    # Brows: arched band above each eye, hair strands along it.
    brow_phi = p.eye_phi + p.brow_height
    bx = (ath - p.eye_theta) / (p.eye_half_width * 1.5)
    centre = brow_phi + p.brow_arch * (1 - bx**2) - 0.02 * bx
    thick = p.brow_thickness * (1 - 0.45 * np.clip(bx, -1, 1)) * 0.5
    strands = 0.75 + 0.25 * _noise(rng, (T, T), 1.0)
    brow = _ss(thick, thick * 0.55, np.abs(ph - centre)) * _ss(1.1, 0.85, np.abs(bx)) * np.clip(strands, 0, 1)
    alb = alb * (1 - 0.9 * brow[..., None]) + 0.9 * brow[..., None] * np.array(p.brows)
    # Eyelids: lash line on the upper margin, pinkish lower margin, slightly darker lids.
    for sgn in (1, -1):
        ex = (th - sgn * p.eye_theta) / p.eye_half_width
        in_eye = np.abs(ex) < 1.08
        lash = in_eye & (row >= H.ROW_UPPER_LID - 0.5) & (ph - p.eye_phi < 0.006 + 0.004 * (1 - ex**2))
        alb[lash] = np.array(p.brows) * 0.35
        lower = in_eye & (row <= H.ROW_LOWER_LID + 0.5) & (p.eye_phi - ph < 0.012)
        alb[lower] = alb[lower] * 0.6 + 0.4 * np.array([0.75, 0.45, 0.45])
        lid = np.exp(-0.5 * ((ex / 0.9) ** 2 + ((ph - p.eye_phi - 0.06) / 0.05) ** 2))
        alb *= 1 - 0.08 * lid[..., None]
    # Hair: forehead hairline, everything behind the ears up to the crown.
    hairline = p.hairline - 0.25 * _ss(0.9, 1.6, ath) - 0.02 * n1
    behind = _ss(1.7, 2.1, ath) * (ph > -0.35)
    hair = np.maximum(_ss(hairline, hairline + 0.04, ph), behind)
    hair_tex = np.array(p.hair)[None, None] * (0.8 + 0.25 * _noise(rng, (T, T), 1.2)[..., None] * 0.6)
    alb = alb * (1 - hair[..., None]) + hair[..., None] * hair_tex
    # Mouth-interior strip: cavity, teeth, tongue.
    strip = v < H.UV_MOUTH_STRIP
    cav = np.array([0.28, 0.06, 0.07]) * (0.8 + 0.1 * n2[..., None])
    teeth = np.array([0.88, 0.86, 0.78])
    tongue = np.array([0.70, 0.33, 0.35]) * (1 + 0.05 * n2[..., None])
    strip_col = np.where((u < 0.5)[..., None], cav, np.where((u < 0.75)[..., None], teeth, tongue))
    alb = np.where(strip[..., None], strip_col, alb)
    alb = np.clip(alb, 0, 1).astype(np.float32)

    # Aux maps.
    spec = 0.25 + 0.3 * np.exp(-0.5 * ((th / 0.45) ** 2 + ((ph - (brow_phi + 0.2)) / 0.18) ** 2))
    spec += 0.5 * np.exp(-0.5 * ((th / 0.06) ** 2 + ((ph - tip_phi) / 0.15) ** 2))
    spec = np.where(lipm, 0.7, spec)
    spec = spec * (1 - hair) + 0.12 * hair
    spec = np.where(strip, np.where(u < 0.75, np.where(u < 0.5, 0.3, 0.9), 0.5), spec)
    band = _ss(brow_phi + 0.05, brow_phi + 0.12, ph) * _ss(p.hairline - 0.02, p.hairline - 0.12, ph)
    lines = np.clip(np.sin((ph - brow_phi) * 190 + 0.8 * n1) * 1.4 - 0.2, 0, 1) ** 2
    wr = band * lines * _ss(0.75, 0.45, ath) * (0.75 + 0.25 * np.clip(n2, -1, 1))
    wr_left = wr * _ss(-0.08, 0.08, th)
    wr_right = wr * _ss(0.08, -0.08, th)
    # Near-infrared albedo: skin reflects evenly, melanin matters little; hair and brows stay darker.
    nir = 0.45 + 0.45 * (0.65 * alb[..., 0] + 0.25 * alb[..., 1] + 0.10 * alb[..., 2]) / max(float(np.dot(skin, [0.65, 0.25, 0.1])), 0.2) * 0.6
    nir = nir * (1 - 0.6 * brow) * (1 - 0.35 * hair)
    nir = np.where(strip, alb[..., 0] * 0.6, nir)
    lum = alb @ np.array([0.3, 0.55, 0.15])
    nir = np.where(lum < 0.1, lum * 2.5, nir)  # lashes, nostrils
    aux = np.stack([spec, wr_left, wr_right, np.clip(nir, 0, 1)], -1).astype(np.float32)
    return alb, aux


def paint_eyeball(head: HeadModel, size: int = EYE_TEXTURE_SIZE) -> np.ndarray:
    """Eyeball texture (E, 2E, 4): RGB + NIR. Polar angle from the pupil along v."""
    p = head.params
    rng = np.random.default_rng(p.seed * 104729 + 3)
    Hh, W = size, 2 * size
    v, u = np.meshgrid((np.arange(Hh) + 0.5) / Hh, (np.arange(W) + 0.5) / W, indexing="ij")
    ang = v * np.pi
    azi = u * 2 * np.pi
    sclera = np.array([0.92, 0.90, 0.86])
    veins = np.clip(_noise(rng, (Hh, W), 1.5), 1.8, 3) - 1.8
    col = sclera[None, None] * (1 - 0.3 * veins[..., None] * (ang > 0.9)[..., None])
    col = col * (1 - 0.3 * (ang > 1.6)[..., None])  # the back is shadowed anyway
    iris = np.array(p.iris)
    fib = 0.75 + 0.25 * np.sin(azi * 31 + 3 * _noise(rng, (Hh, W), 3))
    iris_col = iris[None, None] * fib[..., None] * (0.7 + 0.6 * (ang / IRIS_ANGLE))[..., None]
    limbus = _ss(IRIS_ANGLE - 0.05, IRIS_ANGLE, ang)
    col = np.where((ang < IRIS_ANGLE)[..., None], iris_col, col)
    col = col * (1 - 0.5 * np.exp(-0.5 * ((ang - IRIS_ANGLE) / 0.03) ** 2))[..., None]
    pupil = _ss(PUPIL_ANGLE + 0.02, PUPIL_ANGLE - 0.02, ang)
    col = col * (1 - 0.97 * pupil[..., None])
    nir = np.where(ang < IRIS_ANGLE, 0.42 * fib, 0.85)
    nir = nir * (1 - 0.95 * pupil) * (1 - 0.2 * limbus * (ang < IRIS_ANGLE + 0.05))
    return np.concatenate([np.clip(col, 0, 1), nir[..., None]], -1).astype(np.float32)
