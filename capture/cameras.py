"""Pinhole cameras (OpenCV convention: x right, y down, z forward) and their GL matrices.

Images produced through these cameras are stored top row first, so a point's
pixel coordinates from :meth:`Camera.project` index the image as ``img[y, x]``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Camera:
    rotation: np.ndarray
    """(3, 3) world-to-camera rotation."""
    centre: np.ndarray
    """(3,) camera centre in the head frame (dm)."""
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    near: float = 0.05
    far: float = 30.0

    @staticmethod
    def look_at(eye, target, up=(0.0, 1.0, 0.0), fov_deg: float = 60.0, width: int = 192, height: int = 192, near=0.05, far=30.0):
        eye, target, up = (np.asarray(a, np.float64) for a in (eye, target, up))
        z = target - eye
        z /= np.linalg.norm(z)
        x = np.cross(z, up)
        x /= np.linalg.norm(x)
        y = np.cross(z, x)
        f = 0.5 * width / np.tan(np.radians(fov_deg) / 2)
        return Camera(np.stack([x, y, z]), eye, f, f, width / 2, height / 2, width, height, near, far)

    @property
    def forward(self) -> np.ndarray:
        return self.rotation[2]

    def world_to_camera(self, P: np.ndarray) -> np.ndarray:
        return (np.asarray(P, np.float64) - self.centre) @ self.rotation.T

    def project(self, P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates (N, 2) (x, y; pixel centres at .5) and camera depth (N,)."""
        Xc = self.world_to_camera(P)
        z = Xc[:, 2]
        uv = np.stack([self.fx * Xc[:, 0] / z + self.cx, self.fy * Xc[:, 1] / z + self.cy], 1)
        return uv.astype(np.float32), z.astype(np.float32)

    def view_matrix(self) -> np.ndarray:
        V = np.eye(4)
        V[:3, :3] = self.rotation
        V[:3, 3] = -self.rotation @ self.centre
        return V

    def projection_matrix(self) -> np.ndarray:
        """Clip matrix whose NDC y points up in GL while image rows go down: read-back is flipped once."""
        W, Hh, n, f = self.width, self.height, self.near, self.far
        P = np.zeros((4, 4))
        P[0, 0] = 2 * self.fx / W
        P[0, 2] = 2 * self.cx / W - 1
        P[1, 1] = -2 * self.fy / Hh
        P[1, 2] = -(2 * self.cy / Hh - 1)
        P[2, 2] = (f + n) / (f - n)
        P[2, 3] = -2 * f * n / (f - n)
        P[3, 2] = 1
        return P

    def mvp(self) -> np.ndarray:
        return self.projection_matrix() @ self.view_matrix()

    def depth_from_buffer(self, d: np.ndarray) -> np.ndarray:
        """Camera depth from GL depth-buffer values in [0, 1]."""
        n, f = self.near, self.far
        z_ndc = 2 * d - 1
        return 2 * f * n / ((f + n) - z_ndc * (f - n))

    def moved(self, rot: np.ndarray, trans: np.ndarray, origin: np.ndarray) -> "Camera":
        """The camera after a rigid motion of its mount: rotate by ``rot`` about ``origin``, then translate."""
        c = rot @ (self.centre - origin) + origin + trans
        return Camera(self.rotation @ rot.T, c, self.fx, self.fy, self.cx, self.cy, self.width, self.height, self.near, self.far)


def rotation_xyz(rx: float, ry: float, rz: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    Rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    Ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    Rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return Rz @ Ry @ Rx
