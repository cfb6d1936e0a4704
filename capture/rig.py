"""The HMC rig (three near-IR cameras on the headset) and the dome / viewer cameras.

HMC cameras sit low on the headset, a few centimetres from the face, and look
up and inward at the eyes and up at the mouth: close, oblique, partial views.
Each session the headset sits slightly differently (``slip``) and the sensor
gain differs (``exposure``); both are drawn from the session seed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .cameras import Camera, rotation_xyz
from .head import HeadModel

HMC_VIEWS: tuple[str, ...] = ("left_eye", "right_eye", "mouth")
DOME_VIEWS: dict[str, tuple[float, float]] = {
    # name: (yaw, pitch) of the camera around the head, radians; +yaw = subject's left.
    "front": (0.0, 0.0),
    "left": (np.radians(40.0), 0.0),
    "right": (np.radians(-40.0), 0.0),
}
DOME_TARGET = np.array([0.0, -0.12, 0.35])
DOME_DISTANCE = 6.0


@dataclass
class HmcRigConfig:
    size: int = 192
    """Width and height of each HMC view in pixels."""
    eye_fov_deg: float = 58.0
    """Field of view of the eye cameras."""
    mouth_fov_deg: float = 80.0
    """Field of view of the mouth camera."""
    eye_offset: tuple[float, float, float] = (0.12, -0.24, 0.30)
    """Eye camera position relative to the eyeball centre (dm): outward, down, forward."""
    mouth_offset: tuple[float, float, float] = (0.0, -0.50, 0.52)
    """Mouth camera position relative to the mouth centre (dm): down and forward."""
    slip_rotation_deg: float = 1.5
    """Max headset slip rotation per axis, degrees."""
    slip_translation: float = 0.03
    """Max headset slip translation per axis, dm (3 mm)."""
    exposure_range: tuple[float, float] = (0.8, 1.25)
    """Per-session sensor gain range."""
    noise_sigma: float = 0.018
    """Read noise (fraction of full scale)."""


@dataclass
class HmcSession:
    """Per-session headset placement and sensor settings."""

    slip_rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    slip_translation: np.ndarray = field(default_factory=lambda: np.zeros(3))
    exposure: float = 1.0
    exposure_drift_hz: float = 0.1
    seed: int = 0

    @staticmethod
    def sample(seed: int, cfg: HmcRigConfig) -> "HmcSession":
        if seed == 0:
            return HmcSession(seed=0)  # session 0 = the headset as designed
        rng = np.random.default_rng(seed * 31 + 5)
        r = np.radians(cfg.slip_rotation_deg)
        return HmcSession(
            slip_rotation=rotation_xyz(*rng.uniform(-r, r, 3)),
            slip_translation=rng.uniform(-cfg.slip_translation, cfg.slip_translation, 3),
            exposure=float(rng.uniform(*cfg.exposure_range)),
            exposure_drift_hz=float(rng.uniform(0.03, 0.2)),
            seed=seed,
        )

    def gain(self, t: float) -> float:
        """Exposure at time ``t`` seconds: the session gain with a slow auto-exposure wobble."""
        return self.exposure * (1 + 0.05 * np.sin(2 * np.pi * self.exposure_drift_hz * t + self.seed))


def hmc_cameras(head: HeadModel, cfg: HmcRigConfig, session: HmcSession | None = None) -> list[Camera]:
    """The three HMC cameras for ``head`` (left eye, right eye, mouth), after the session's slip."""
    ec = head.eye_centres.astype(np.float64)
    cams = []
    for e, sgn in ((0, 1.0), (1, -1.0)):
        off = np.array(cfg.eye_offset) * np.array([sgn, 1, 1])
        target = ec[e] + np.array([sgn * 0.02, 0.0, head.eye_radius])  # the fissure, in front of the eyeball
        cams.append(Camera.look_at(ec[e] + off, target, fov_deg=cfg.eye_fov_deg, width=cfg.size, height=cfg.size, near=0.02))
    mouth = head.mouth_centre()
    cams.append(Camera.look_at(mouth + np.array(cfg.mouth_offset), mouth + np.array([0, 0.05, -0.05]), fov_deg=cfg.mouth_fov_deg, width=cfg.size, height=cfg.size, near=0.02))
    if session is not None:
        origin = ec.mean(0) + np.array([0, -0.2, 0.35])  # roughly where the headset rests
        cams = [c.moved(session.slip_rotation, session.slip_translation, origin) for c in cams]
    return cams


def view_direction(name_or_dir) -> np.ndarray:
    """Unit vector from the head towards the viewer, from a named dome view or any 3-vector."""
    if isinstance(name_or_dir, str):
        if name_or_dir not in DOME_VIEWS:
            raise ValueError(f"unknown view {name_or_dir!r}; named views: {', '.join(DOME_VIEWS)}")
        yaw, pitch = DOME_VIEWS[name_or_dir]
        return direction_from_angles(yaw, pitch)
    d = np.asarray(name_or_dir, np.float64).reshape(3)
    n = np.linalg.norm(d)
    if not np.isfinite(n) or n < 1e-8:
        raise ValueError("view direction must be a finite non-zero 3-vector")
    return d / n


def direction_from_angles(yaw: float, pitch: float) -> np.ndarray:
    return np.array([np.sin(yaw) * np.cos(pitch), np.sin(pitch), np.cos(yaw) * np.cos(pitch)])


def dome_camera(view_dir: np.ndarray, size: int = 512, fov_deg: float = 25.0) -> Camera:
    """A viewer camera looking at the head from direction ``view_dir`` (unit, head frame)."""
    d = view_direction(view_dir)
    return Camera.look_at(DOME_TARGET + DOME_DISTANCE * d, DOME_TARGET, fov_deg=fov_deg, width=size, height=size, near=1.0, far=20.0)
