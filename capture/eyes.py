"""Explicit eyeballs: a sphere mesh around the eye's rest axis (+z), posed by gaze.

The same model serves the studio (ground truth) and, through its saved
parameters, the receiver's explicit eye model: an eyeball is its centre (3,),
its radius and a texture; gaze only rotates it (see ``capture.head.eye_rotation``).
"""
from __future__ import annotations

import numpy as np


def eyeball_mesh(radius: float, rings: int = 14, segments: int = 24):
    """Local sphere mesh. Returns vertices (N, 3), normals (N, 3), uvs (N, 2), triangles (F, 3) uint32.

    v = polar angle / π measured from the pupil (+z), u = azimuth / 2π.
    """
    # Denser near the front so the iris and pupil are round.
    pol = np.pi * (np.linspace(0, 1, rings + 1) ** 1.6)
    azi = np.linspace(0, 2 * np.pi, segments + 1)
    P, A = np.meshgrid(pol, azi, indexing="ij")
    n = np.stack([np.sin(P) * np.cos(A), np.sin(P) * np.sin(A), np.cos(P)], -1).reshape(-1, 3)
    uv = np.stack([A / (2 * np.pi), P / np.pi], -1).reshape(-1, 2)
    r, c = np.meshgrid(np.arange(rings), np.arange(segments), indexing="ij")
    a = (r * (segments + 1) + c).ravel()
    s1 = segments + 1
    tris = np.concatenate([np.stack([a, a + s1, a + s1 + 1], 1), np.stack([a, a + s1 + 1, a + 1], 1)])
    return (n * radius).astype(np.float32), n.astype(np.float32), uv.astype(np.float32), tris.astype(np.uint32)


def posed_eyeballs(local_vertices, local_normals, centres, rotations):
    """Place both eyeballs. centres (2, 3), rotations (2, 3, 3) -> vertices, normals (2N, 3)."""
    verts = np.concatenate([local_vertices @ rotations[e].T + centres[e] for e in range(2)])
    norms = np.concatenate([local_normals @ rotations[e].T for e in range(2)])
    return verts.astype(np.float32), norms.astype(np.float32)
