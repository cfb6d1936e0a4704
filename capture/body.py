"""Geometry around the face mesh that a real person has: ears, neck and clothed shoulders.

These meshes are rigid in the head frame (the studio's subject does not turn
the head on the shoulders) and are drawn only by the colour cameras of a
realistic :class:`capture.look.StudioLook`; the decoder's face mesh does not
have them, and the HMC frames never show them.

Every builder returns a :class:`Mesh`: ``vertices`` (N, 3) float32 head frame
(dm), ``normals`` (N, 3) float32 unit, ``uvs`` (N, 2) float32, ``triangles``
(F, 3) uint32 and ``attrs`` (N, 4) float32 (meaning per builder).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .head import HeadModel, VertexNormals

EAR_HEIGHT = 0.60  # dm, top to lobe
EAR_WIDTH = 0.34  # dm, front attachment to the back of the helix
EAR_FLARE_DEG = 24.0  # angle the ear stands off the side of the head

# Clothing colours (linear RGB) picked per identity.
_CLOTH = np.array(
    [[0.16, 0.22, 0.34], [0.55, 0.52, 0.48], [0.30, 0.12, 0.12], [0.12, 0.28, 0.24], [0.62, 0.60, 0.55], [0.20, 0.20, 0.22]],
    np.float32,
)


@dataclass
class Mesh:
    vertices: np.ndarray
    normals: np.ndarray
    uvs: np.ndarray
    triangles: np.ndarray
    attrs: np.ndarray
    tangents: np.ndarray | None = None
    """(N, 3) float32 strand directions (hair only)."""
    grid: tuple[int, int] | None = None
    """(rows, cols) of each layer's vertex grid (hair only)."""

    def __len__(self) -> int:
        return len(self.vertices)

    @staticmethod
    def concat(meshes: list["Mesh"]) -> "Mesh":
        off = np.cumsum([0] + [len(m) for m in meshes])[:-1]
        return Mesh(
            np.concatenate([m.vertices for m in meshes]).astype(np.float32),
            np.concatenate([m.normals for m in meshes]).astype(np.float32),
            np.concatenate([m.uvs for m in meshes]).astype(np.float32),
            np.concatenate([m.triangles + o for m, o in zip(meshes, off)]).astype(np.uint32),
            np.concatenate([m.attrs for m in meshes]).astype(np.float32),
        )


def grid_triangles(rows: int, cols: int, *, wrap: bool = False) -> np.ndarray:
    """Triangles (F, 3) uint32 of a ``rows`` x ``cols`` vertex grid (row-major); ``wrap`` joins the last column to the first."""
    c_end = cols if wrap else cols - 1
    r, c = np.meshgrid(np.arange(rows - 1), np.arange(c_end), indexing="ij")
    a = (r * cols + c).ravel()
    b = (r * cols + (c + 1) % cols).ravel()
    d, e = a + cols, b + cols
    return np.concatenate([np.stack([a, b, e], 1), np.stack([a, e, d], 1)]).astype(np.uint32)


def _ss(e0, e1, x):
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def ear_anchor(head: HeadModel, side: float) -> tuple[float, float]:
    """(θ, φ) on the head where the front edge of the ear attaches; ``side`` +1 left (+x), -1 right."""
    p = head.params
    return side * (np.pi / 2 - 0.02), p.eye_phi - 0.12


def ear_mesh(head: HeadModel, side: float, rows: int = 22, cols: int = 36, flare_deg: float = EAR_FLARE_DEG) -> Mesh:
    """One ear: a flared shell with a rolled helix rim, an antihelix ridge, a concha bowl and a lobe.

    ``flare_deg``: how far the ear stands off the head (long hair presses it flatter).
    ``attrs``: (thinness, 1 at the rim; cavity, darker in the concha; 0; 0).
    """
    th0, ph0 = ear_anchor(head, side)
    anchor = head._skin_points(np.array([th0]), np.array([ph0]), np.zeros(1))[0]
    # Local frame at the anchor: out (surface normal), up, back (towards the back of the head).
    eps = 1e-3
    pu = head._skin_points(np.array([th0]), np.array([ph0 + eps]), np.zeros(1))[0]
    pb = head._skin_points(np.array([th0 + side * eps]), np.array([ph0]), np.zeros(1))[0]
    up = (pu - anchor) / np.linalg.norm(pu - anchor)
    back = pb - anchor
    back -= up * np.dot(back, up)
    back /= np.linalg.norm(back)
    out = np.cross(up, back) * side
    if np.dot(out, anchor) < 0:
        out = -out
    # Ear outline: an ellipse (taller than wide), front edge at the anchor; slight backwards tilt.
    r = np.linspace(0.0, 1.0, rows)
    psi = np.linspace(0, 2 * np.pi, cols, endpoint=False)
    R, S = np.meshgrid(r, psi, indexing="ij")
    a, b = EAR_HEIGHT / 2, EAR_WIDTH / 2
    # Narrower at the bottom (lobe) than at the top.
    shape = 1.0 - 0.22 * _ss(0.0, -1.0, np.sin(S))
    bx = b * (1 + R * np.cos(S) * shape)  # 0 at the front edge, 2b at the back
    by = a * R * np.sin(S) * (1 - 0.08 * R * np.cos(S))
    tilt = np.radians(12.0)
    bx, by = bx * np.cos(tilt) + by * np.sin(tilt), -bx * np.sin(tilt) + by * np.cos(tilt)
    flare = np.tan(np.radians(flare_deg)) * np.maximum(bx, 0)
    relief = (
        0.030 * np.exp(-0.5 * ((R - 0.93) / 0.06) ** 2) * (0.4 + 0.6 * _ss(-0.6, 0.2, np.sin(S)))  # helix rim
        + 0.016 * np.exp(-0.5 * ((R - 0.64) / 0.08) ** 2) * _ss(-0.3, 0.5, np.sin(S))  # antihelix
        - 0.05 * np.exp(-0.5 * (R / 0.42) ** 2)  # concha
        + 0.012 * _ss(-0.6, -0.95, np.sin(S)) * R  # lobe thickens
    )
    P = anchor + bx[..., None] * back + by[..., None] * up + (flare + relief)[..., None] * out
    # Pull the front column into the head a little so no gap shows at the attachment.
    P -= (0.02 * _ss(0.25, 0.0, bx / (2 * b)))[..., None] * out
    verts = P.reshape(-1, 3)
    # Centre row is a single point repeated per column: triangles fan out from it.
    tris = grid_triangles(rows, cols, wrap=True)
    nrm = VertexNormals(tris, len(verts))(verts.astype(np.float32))
    flip = np.einsum("ij,j->i", nrm, out) < 0
    nrm[flip] *= -1
    thin = (0.3 + 0.7 * R**2).reshape(-1)
    cavity = (1.0 - 0.35 * np.exp(-0.5 * (R / 0.45) ** 2) - 0.15 * np.exp(-0.5 * ((R - 0.8) / 0.07) ** 2)).reshape(-1)
    attrs = np.stack([thin, cavity, np.zeros_like(thin), np.zeros_like(thin)], 1)
    uvs = np.stack([R.ravel(), (S / (2 * np.pi)).ravel()], 1)
    return Mesh(verts.astype(np.float32), nrm, uvs.astype(np.float32), tris, attrs.astype(np.float32))


def bust_profile(head: HeadModel, n: int = 40) -> tuple[np.ndarray, ...]:
    """The neck-to-torso loft: per ring (y, half-width, half-depth, centre z, squareness exponent, arc length)."""
    p = head.params
    s = head.params.half_height / 1.08  # scale with the head
    # Control points of the outline seen from the front (x, y): neck top inside the head, neck, trapezius,
    # deltoid, upper arm. Half-depth and centre z per control point.
    ctrl = np.array(
        [  # y,     a,    b,    zc,  exponent
            [-0.45, 0.50, 0.50, -0.10, 2.0],
            [-0.85, 0.50, 0.50, -0.08, 2.0],
            [-1.12, 0.53, 0.52, -0.10, 2.0],
            [-1.28, 0.80, 0.58, -0.14, 2.3],
            [-1.42, 1.25, 0.64, -0.16, 2.8],
            [-1.56, 1.62, 0.70, -0.16, 3.2],
            [-1.74, 1.86, 0.78, -0.14, 3.4],
            [-2.00, 1.98, 0.88, -0.12, 3.4],
            [-2.60, 2.02, 0.95, -0.10, 3.2],
        ]
    )
    ctrl[:, :4] *= np.array([s, s * p.half_width / 0.76, s, s])
    # Resample uniformly in arc length of the (a, y) outline.
    seg = np.hypot(np.diff(ctrl[:, 0]), np.diff(ctrl[:, 1]))
    arc = np.concatenate([[0], np.cumsum(seg)])
    t = np.linspace(0, arc[-1], n)
    cols = [np.interp(t, arc, ctrl[:, k]) for k in range(5)]
    # Smooth the piecewise-linear profile (a few passes of a [1 2 1] filter, ends fixed).
    for _ in range(6):
        for c in cols[1:]:
            c[1:-1] = 0.25 * c[:-2] + 0.5 * c[1:-1] + 0.25 * c[2:]
    return (*cols, t / arc[-1])


def bust_mesh(head: HeadModel, rows: int = 40, cols: int = 72) -> Mesh:
    """Neck and clothed shoulders as a loft of superellipse rings.

    ``uvs`` = (angle / 2π with 0.5 at the front, arc fraction from the neck top); ``attrs`` = (0, material 3,
    signed distance to the neckline in dm (> 0 on the cloth), 0).
    """
    y, a, b, zc, ex, v = bust_profile(head, rows)
    ang = np.linspace(-np.pi, np.pi, cols, endpoint=False)  # 0 = front (+z)
    A, Y = np.meshgrid(ang, y, indexing="ij")
    s_, c_ = np.sin(A), np.cos(A)
    e = ex[None, :]
    # Superellipse: |x/a|^e + |z/b|^e = 1.
    X = a[None, :] * np.sign(s_) * np.abs(s_) ** (2 / e)
    Z = zc[None, :] + b[None, :] * np.sign(c_) * np.abs(c_) ** (2 / e)
    # Collarbones and chest a little forward of a plain loft; shoulder blades behind.
    Z = Z + 0.05 * _ss(-1.15, -1.6, Y) * np.clip(c_, 0, 1) ** 2
    P = np.stack([X, Y, Z], -1).transpose(1, 0, 2)  # (rows, cols, 3): rows go down the body
    # Neckline of a crew-neck top: lower at the front, slightly higher at the back.
    neck_y = -1.16 * head.params.half_height / 1.08 - 0.10 * np.clip(np.cos(ang), 0, 1) ** 1.5
    dist = (neck_y[None, :] - P[..., 1])  # > 0 below the neckline (on the cloth)
    # A knit collar band stands off the neck a little.
    band = np.exp(-0.5 * ((dist - 0.03) / 0.025) ** 2)
    radial = P.copy()
    radial[..., 1] = 0
    radial[..., 2] -= zc[:, None]
    radial /= np.maximum(np.linalg.norm(radial, axis=-1, keepdims=True), 1e-6)
    P = P + (0.012 * band + 0.006 * (dist > 0))[..., None] * radial
    verts = P.reshape(-1, 3).astype(np.float32)
    tris = grid_triangles(rows, cols, wrap=True)
    # Winding: outward normals.
    nrm = VertexNormals(tris, len(verts))(verts)
    if np.einsum("ij,ij->i", nrm, radial.reshape(-1, 3)).mean() < 0:
        tris = tris[:, [0, 2, 1]]
        nrm = -nrm
    U, V = np.meshgrid((ang / (2 * np.pi) + 0.5), v, indexing="xy")
    uvs = np.stack([U.ravel(), V.ravel()], 1).astype(np.float32)
    attrs = np.stack([np.zeros(verts.shape[0]), np.full(verts.shape[0], 3.0), dist.ravel(), np.zeros(verts.shape[0])], 1)
    return Mesh(verts, nrm, uvs, tris, attrs.astype(np.float32))


def cloth_colour(seed: int) -> tuple[float, float, float]:
    """The identity's top (linear RGB)."""
    return tuple(float(x) for x in _CLOTH[(seed - 1) % len(_CLOTH)])
