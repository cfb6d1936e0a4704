"""Identities of the synthetic studio: named subjects S1..S6 and their shape/colour parameters.

Every number that makes one subject look different from another lives in
:class:`IdentityParams`; an identity is fully determined by its name (the
name's number seeds the generator), so S1 is the same head on every machine.
Units are decimetres (the head is about 2.2 dm tall) and radians.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, fields

import numpy as np

IDENTITIES: tuple[str, ...] = ("S1", "S2", "S3", "S4", "S5", "S6")

# Skin tones spread from light to deep so the six subjects are told apart at a glance.
_SKIN_TONES = np.array(
    [
        [0.93, 0.76, 0.64],
        [0.55, 0.37, 0.25],
        [0.80, 0.62, 0.47],
        [0.98, 0.84, 0.74],
        [0.40, 0.26, 0.18],
        [0.86, 0.68, 0.52],
    ],
    np.float32,
)
_HAIR = np.array(
    [[0.30, 0.18, 0.10], [0.05, 0.04, 0.04], [0.55, 0.40, 0.20], [0.75, 0.55, 0.30], [0.08, 0.06, 0.05], [0.35, 0.12, 0.06]],
    np.float32,
)
_IRIS = np.array(
    [[0.25, 0.45, 0.70], [0.30, 0.18, 0.08], [0.35, 0.50, 0.30], [0.45, 0.60, 0.75], [0.22, 0.13, 0.06], [0.50, 0.35, 0.15]],
    np.float32,
)


@dataclass(frozen=True)
class IdentityParams:
    name: str
    # --- head shape (ellipsoid semi-axes, dm) ---
    half_width: float
    """x semi-axis of the skull ellipsoid."""
    half_height: float
    """y semi-axis."""
    half_depth: float
    """z semi-axis (front-back)."""
    jaw_width: float
    """x scale of the lower face relative to the skull (narrow chin < 1)."""
    # --- feature placement (angles on the head, radians) ---
    eye_theta: float
    """azimuth of each eye centre (left eye at +eye_theta)."""
    eye_half_width: float
    """half the azimuthal width of the eye opening."""
    eye_phi: float
    """elevation of the eye line."""
    eye_open: float
    """scale of the palpebral aperture (1 = average)."""
    mouth_phi: float
    """elevation of the mouth line."""
    mouth_half_width: float
    """azimuth of the mouth corners."""
    brow_height: float
    """brow elevation above the eye line."""
    brow_arch: float
    """extra brow elevation at its peak."""
    hairline: float
    """elevation where hair starts on the forehead."""
    # --- relief (dm) ---
    nose_length: float
    nose_depth: float
    nose_width: float
    lip_fullness: float
    chin: float
    cheekbone: float
    brow_ridge: float
    socket_depth: float
    # --- appearance (linear RGB in [0, 1]) ---
    skin: tuple[float, float, float]
    lips: tuple[float, float, float]
    brows: tuple[float, float, float]
    hair: tuple[float, float, float]
    iris: tuple[float, float, float]
    brow_thickness: float
    shininess: float
    specular: float

    @property
    def seed(self) -> int:
        return identity_seed(self.name)


def identity_seed(name: str) -> int:
    m = re.fullmatch(r"S(\d+)", name)
    if not m:
        raise ValueError(f"identity must be named S<number> (e.g. S1), got {name!r}")
    return int(m.group(1))


def check_identity(name: str) -> str:
    """``name`` if it is one of the studio's identities (:data:`IDENTITIES`), else a
    :class:`avcore.errors.UsageError` (a ValueError) whose one-line message lists them. Commands call this before any work; the library itself
    accepts any ``S<number>`` (:func:`make_identity`)."""
    if name not in IDENTITIES:
        from avcore.errors import UsageError

        raise UsageError(f"unknown identity {name!r}: the studio has {', '.join(IDENTITIES)}")
    return name


def make_identity(name: str) -> IdentityParams:
    """Deterministic identity parameters for ``name`` ("S1", "S2", ...)."""
    k = identity_seed(name)
    rng = np.random.default_rng(1000 + k)
    u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    i = (k - 1) % len(_SKIN_TONES)
    skin = _SKIN_TONES[i] * rng.uniform(0.97, 1.03, 3)
    lips = np.clip(skin * np.array([0.95, 0.62, 0.62]) + np.array([0.08, 0.0, 0.02]), 0, 1)
    brows = _HAIR[i] * 0.8
    eye_half = u(0.150, 0.185)
    return IdentityParams(
        name=name,
        half_width=u(0.70, 0.82),
        half_height=u(1.02, 1.18),
        half_depth=u(0.90, 1.02),
        jaw_width=u(0.88, 1.05),
        eye_theta=u(0.31, 0.36),
        eye_half_width=eye_half,
        eye_phi=u(0.03, 0.09),
        eye_open=u(0.85, 1.15),
        mouth_phi=u(-0.48, -0.40),
        mouth_half_width=u(0.23, 0.29),
        brow_height=u(0.17, 0.22),
        brow_arch=u(0.01, 0.05),
        hairline=u(0.62, 0.85),
        nose_length=u(0.30, 0.40),
        nose_depth=u(0.11, 0.17),
        nose_width=u(0.06, 0.095),
        lip_fullness=u(0.025, 0.05),
        chin=u(0.04, 0.10),
        cheekbone=u(0.02, 0.06),
        brow_ridge=u(0.03, 0.06),
        socket_depth=u(0.06, 0.09),
        skin=tuple(float(x) for x in np.clip(skin, 0, 1)),
        lips=tuple(float(x) for x in lips),
        brows=tuple(float(x) for x in brows),
        hair=tuple(float(x) for x in _HAIR[i]),
        iris=tuple(float(x) for x in _IRIS[i]),
        brow_thickness=u(0.035, 0.06),
        shininess=u(18.0, 40.0),
        specular=u(0.18, 0.35),
    )


def identity_dict(p: IdentityParams) -> dict:
    """Plain-data view of the parameters (for JSON next to datasets and weights)."""
    return {f.name: getattr(p, f.name) for f in fields(p)}
