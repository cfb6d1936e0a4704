"""The procedural parametric head: topology, UV layout and expression-driven geometry.

The face is one grid mesh in (azimuth θ, elevation φ) around a skull
ellipsoid, with two kinds of slits where quads are left out so the surface
can open: the two eye fissures and the mouth. Eyelids are skin rows that
slide over a recessed eyeball; the mouth opens onto a separate interior mesh
(cavity, teeth, tongue) carried by the jaw. Eyeballs are explicit spheres
rotated by gaze (:mod:`capture.eyes`).

Head frame: +x is the subject's left, +y up, +z forward (out of the face);
units are decimetres. The grid is canonical: its row/column indices, UVs and
slits are the same for every identity; only the angles the rows and columns
sit at, and the relief, change with the identity.

Shapes: ``vertices`` (V, 3) float32 with V = grid vertices + mouth-interior
vertices; ``uvs`` (V, 2) float32 in [0, 1]; ``triangles`` (F, 3) uint32.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .expression import INDEX as X
from .identity import IdentityParams

# ---- canonical grid layout (identical for every identity) -------------------------------
GRID_COLS = 96  # segments around the head; vertices per row = GRID_COLS + 1 (UV seam at the back)
COL_SEGMENTS_HALF = (4, 4, 8, 14, 18)  # centre→inner eye corner→mouth corner→outer eye corner→1.5 rad→π
ROWS_LOWER = 22  # neck .. lower-lip margin
ROWS_MIDDLE = 16  # upper-lip margin .. lower-lid margin
ROWS_UPPER = 25  # upper-lid margin .. crown
GRID_ROWS = ROWS_LOWER + ROWS_MIDDLE + ROWS_UPPER
ROW_LOWER_LIP = ROWS_LOWER - 1
ROW_UPPER_LIP = ROWS_LOWER
ROW_LOWER_LID = ROWS_LOWER + ROWS_MIDDLE - 1
ROW_UPPER_LID = ROWS_LOWER + ROWS_MIDDLE
COL_CENTRE = GRID_COLS // 2
_c = np.cumsum(COL_SEGMENTS_HALF)
COL_MOUTH = (COL_CENTRE - int(_c[1]), COL_CENTRE + int(_c[1]))  # mouth corner columns
COL_EYE_LEFT = (COL_CENTRE + int(_c[0]), COL_CENTRE + int(_c[2]))  # (inner, outer) corner columns, +x side
COL_EYE_RIGHT = (COL_CENTRE - int(_c[2]), COL_CENTRE - int(_c[0]))  # (outer, inner) corner columns, -x side
UV_MOUTH_STRIP = 0.0625  # texture rows v < this hold the mouth interior
NECK_PHI = -1.30
CROWN_PHI = np.pi / 2 - 1e-3

# Eyelid extents (radians of elevation above/below the eye line).
LID_UP = 0.15
LID_DOWN = 0.11
LID_GAP = 1.04  # lid radius around the eyeball centre, in eyeball radii
EYE_RADIUS_FACTOR = 1.0  # eyeball radius relative to the fissure half-width on the skull
JAW_MAX_ANGLE = 0.38  # radians at jaw_open = 1


def _smoothstep(e0, e1, x):
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _gauss(dx, dy, sx, sy):
    return np.exp(-0.5 * ((dx / sx) ** 2 + (dy / sy) ** 2))


@dataclass
class HeadState:
    """Geometry of one frame. ``vertices`` (V, 3) include the mouth interior;
    ``eye_rotations`` (2, 3, 3) rotate each eyeball's rest pose (left, right)."""

    vertices: np.ndarray
    eye_rotations: np.ndarray
    jaw_angle: float


class HeadModel:
    """One identity's head: fixed topology and UVs, geometry as a function of expression and gaze."""

    def __init__(self, params: IdentityParams):
        self.params = p = params
        self.col_theta = self._column_angles(p)  # (C+1,)
        self.row_phi = self._row_angles(p)  # (R,)
        R, C1 = GRID_ROWS, GRID_COLS + 1
        self.num_grid_vertices = R * C1
        th, ph = np.meshgrid(self.col_theta, self.row_phi)  # (R, C1)
        self.theta0 = th.ravel().astype(np.float64)
        self.phi0 = ph.ravel().astype(np.float64)
        rows, cols = np.meshgrid(np.arange(R), np.arange(C1), indexing="ij")
        self.row = rows.ravel()
        self.col = cols.ravel()
        self._build_deformation_fields()
        self._neutral_skin = self._skin_points(self.theta0, self.phi0, np.zeros_like(self.theta0))
        self._build_eyes()
        self._build_mouth_interior()
        self.uvs = np.concatenate([self._grid_uvs(), self.mouth_uvs]).astype(np.float32)
        self.triangles = np.concatenate([self._grid_triangles(), self.mouth_triangles + self.num_grid_vertices]).astype(
            np.uint32
        )
        self.num_vertices = len(self.uvs)
        self.keypoint_spec = self._keypoint_spec()

    # ------------------------------------------------------------------ layout
    @staticmethod
    def _column_angles(p: IdentityParams) -> np.ndarray:
        knots = [0.0, p.eye_theta - p.eye_half_width, p.mouth_half_width, p.eye_theta + p.eye_half_width, 1.5, np.pi]
        half = [0.0]
        for (a, b), n in zip(zip(knots[:-1], knots[1:]), COL_SEGMENTS_HALF):
            half.extend(np.linspace(a, b, n + 1)[1:])
        half = np.array(half)
        return np.concatenate([-half[::-1], half[1:]])

    @staticmethod
    def _row_angles(p: IdentityParams) -> np.ndarray:
        x = np.linspace(0, 1, ROWS_LOWER)
        lower = p.mouth_phi - (p.mouth_phi - NECK_PHI) * x**1.35
        x = np.linspace(0, 1, ROWS_MIDDLE)
        middle = p.mouth_phi + (p.eye_phi - p.mouth_phi) * (0.45 * x + 0.55 * (0.5 - 0.5 * np.cos(np.pi * x)))
        x = np.linspace(0, 1, ROWS_UPPER)
        upper = p.eye_phi + (CROWN_PHI - p.eye_phi) * x**1.55
        return np.concatenate([lower[::-1], middle, upper])

    def _grid_uvs(self) -> np.ndarray:
        u = self.col / GRID_COLS
        v = UV_MOUTH_STRIP + (1 - UV_MOUTH_STRIP) * self.row / (GRID_ROWS - 1)
        return np.stack([u, v], 1)

    def _grid_triangles(self) -> np.ndarray:
        C1 = GRID_COLS + 1
        r, c = np.meshgrid(np.arange(GRID_ROWS - 1), np.arange(GRID_COLS), indexing="ij")
        r, c = r.ravel(), c.ravel()
        slit = np.zeros_like(r, bool)
        slit |= (r == ROW_LOWER_LIP) & (c >= COL_MOUTH[0]) & (c < COL_MOUTH[1])
        for c0, c1 in (COL_EYE_LEFT, COL_EYE_RIGHT):
            slit |= (r == ROW_LOWER_LID) & (c >= c0) & (c < c1)
        # Rows that coincide outside the slits give zero-area quads: leave them out too.
        slit |= (r == ROW_LOWER_LIP) | (r == ROW_LOWER_LID)
        r, c = r[~slit], c[~slit]
        a = r * C1 + c
        b, d, e = a + 1, a + C1, a + C1 + 1
        # Counter-clockwise seen from outside the head.
        return np.concatenate([np.stack([a, b, e], 1), np.stack([a, e, d], 1)])

    # ------------------------------------------------------------------ relief
    def _skin_points(self, theta, phi, dr):
        """Skull ellipsoid + identity relief + extra radial offset ``dr`` at (θ, φ). Returns (N, 3)."""
        p = self.params
        cp, sp, ct, st = np.cos(phi), np.sin(phi), np.cos(theta), np.sin(theta)
        below = _smoothstep(p.mouth_phi + 0.25, p.mouth_phi - 0.35, phi)  # 0 above cheeks, 1 at the chin
        xscale = 1.0 + (p.jaw_width - 1.0) * below
        neck = _smoothstep(p.mouth_phi - 0.45, NECK_PHI, phi)  # pull the bottom in to a neck
        xscale = xscale * (1 - 0.38 * neck)
        zscale = 1 - 0.30 * neck
        x = p.half_width * cp * st * xscale
        y = p.half_height * sp
        z = p.half_depth * cp * ct * zscale
        n = np.stack([x / p.half_width**2, y / p.half_height**2, z / p.half_depth**2], 1)
        n /= np.linalg.norm(n, axis=1, keepdims=True)
        relief = self._relief(theta, phi) + dr
        return np.stack([x, y, z], 1) + n * relief[:, None]

    def _relief(self, th, ph):
        p = self.params
        front = _smoothstep(1.4, 0.6, np.abs(th))
        d = np.zeros_like(th)
        # Nose: a ridge from between the eyes down to the tip, nostril wings beside the tip.
        tip_phi = p.mouth_phi + 0.16
        along = np.clip((p.eye_phi - ph) / max(p.eye_phi - tip_phi, 1e-3), 0, 1.15)
        ridge_w = 0.035 + 0.05 * along
        ridge = p.nose_depth * (0.25 + 0.75 * along**1.6) * np.exp(-0.5 * (th / ridge_w) ** 2)
        ridge *= _smoothstep(tip_phi - 0.09, tip_phi - 0.01, ph) * _smoothstep(p.eye_phi + 0.1, p.eye_phi - 0.03, ph)
        d += ridge
        d += 0.55 * p.nose_depth * _gauss(np.abs(th) - p.nose_width * 0.6, ph - tip_phi + 0.02, p.nose_width * 0.55, 0.04)
        # Brow ridge, cheekbones, chin, jaw line.
        d += p.brow_ridge * _gauss(np.abs(th) - p.eye_theta * 0.8, ph - (p.eye_phi + p.brow_height), 0.25, 0.06)
        d += p.cheekbone * _gauss(np.abs(th) - 0.55, ph - (p.eye_phi - 0.22), 0.16, 0.08)
        d += p.chin * _gauss(th, ph - (p.mouth_phi - 0.27), 0.16, 0.07)
        # Lips.
        d += p.lip_fullness * _gauss(th, ph - p.mouth_phi, p.mouth_half_width * 0.85, 0.07)
        d += 0.4 * p.lip_fullness * _gauss(th, ph - (p.mouth_phi - 0.12), 0.12, 0.04)  # under-lip chin fold
        # Eye sockets.
        d -= p.socket_depth * _gauss(np.abs(th) - p.eye_theta, ph - p.eye_phi, p.eye_half_width * 1.25, 0.13)
        # Ears: small bumps at the sides.
        d += 0.06 * _gauss(np.abs(th) - np.pi / 2, ph - (p.eye_phi - 0.15), 0.06, 0.16)
        return d * (0.3 + 0.7 * front) + (1 - front) * 0.0

    # ------------------------------------------------------------------ expression fields
    def _build_deformation_fields(self):
        """Per-vertex influence weights in canonical coordinates (fixed per identity)."""
        p, th, ph = self.params, self.theta0, self.phi0
        self._w = w = {}
        for side, sgn in (("left", 1.0), ("right", -1.0)):
            # Eye-local coordinates: ex in [-1, 1] across the fissure; eye_cols marks the lid columns.
            ex = (th - sgn * p.eye_theta) / p.eye_half_width
            eye_cols = np.abs(ex) < 1.0 + 1e-9
            upper = (self.row >= ROW_UPPER_LID) & eye_cols & (ph - p.eye_phi < LID_UP)
            lower = (self.row <= ROW_LOWER_LID) & (self.row > ROW_UPPER_LIP) & eye_cols & (p.eye_phi - ph < LID_DOWN)
            w[f"ex_{side}"] = ex
            w[f"lid_up_{side}"] = upper
            w[f"lid_down_{side}"] = lower
            w[f"ey_up_{side}"] = np.clip((ph - p.eye_phi) / LID_UP, 0, 1)
            w[f"ey_down_{side}"] = np.clip((p.eye_phi - ph) / LID_DOWN, 0, 1)
            ey = np.where(ph > p.eye_phi, w[f"ey_up_{side}"], w[f"ey_down_{side}"])
            w[f"lid_wrap_{side}"] = (1 - _smoothstep(0.55, 1.0, np.abs(ex))) * (1 - _smoothstep(0.45, 1.0, ey))
            bx = np.abs(th) * (np.sign(th) == sgn)
            brow_phi = p.eye_phi + p.brow_height
            w[f"brow_{side}"] = _gauss(bx - p.eye_theta, np.maximum(ph - brow_phi, -np.maximum(brow_phi - ph, 0) * 2.0), 0.28, 0.22) * (
                ph > p.eye_phi
            ) * _smoothstep(0.0, 0.06, ph - p.eye_phi - 0.02)
            w[f"inner_brow_{side}"] = _gauss(bx - 0.10, ph - brow_phi, 0.09, 0.08) * (ph > p.eye_phi)
            w[f"smile_{side}"] = _gauss(bx - p.mouth_half_width, ph - p.mouth_phi, 0.13, 0.11)
            w[f"cheek_{side}"] = _gauss(bx - 0.48, ph - (p.mouth_phi + 0.12), 0.17, 0.13)
            w[f"squint_{side}"] = _gauss(bx - p.eye_theta, ph - (p.eye_phi - 0.13), 0.2, 0.07) * (self.row <= ROW_LOWER_LID)
        w["mouth_x"] = th / p.mouth_half_width
        w["lips"] = _gauss(th, ph - p.mouth_phi, p.mouth_half_width * 1.1, 0.10)
        # Jaw weight: the chin and lower lip follow the jaw, the lip corners stay joined.
        mx = np.clip(np.abs(th) / p.mouth_half_width, 0, 1)
        lip = np.where(np.abs(th) < p.mouth_half_width, np.sqrt(1 - mx**2), 0.0)
        below_mouth = self.row <= ROW_LOWER_LIP
        depth = (p.mouth_phi - ph) / 0.20 + lip
        jaw = _smoothstep(0.0, 1.0, depth) * below_mouth
        jaw *= 1 - _smoothstep(0.8, 1.6, np.abs(th))
        jaw *= 1 - 0.65 * _smoothstep(p.mouth_phi - 0.45, NECK_PHI, ph)
        w["jaw"] = jaw
        # Jaw hinge: a transverse axis near the ears.
        self.jaw_pivot = np.array([0.0, p.half_height * np.sin(p.eye_phi - 0.25), -0.15])

    def _lid_margins(self, ex, open_up, open_down, blink):
        """Elevation offsets (rad) of the upper and lower lid margins along the fissure."""
        p = self.params
        shape = np.clip(1 - ex**2, 0, 1) ** 0.55
        y_down = -LID_DOWN * 0.38 * p.eye_open * open_down * shape
        y_up_open = LID_UP * 0.45 * p.eye_open * open_up * shape
        y_up = y_up_open + (y_down - y_up_open) * blink
        return y_up, y_down

    def state(self, expr: np.ndarray, gaze: np.ndarray) -> HeadState:
        """Geometry for expression ``expr`` (E,) and gaze (2, 2) [[yaw, pitch] left, right]."""
        p, w = self.params, self._w
        e = np.clip(np.asarray(expr, np.float64), 0.0, 1.0)
        g = np.asarray(gaze, np.float64)
        th = self.theta0.copy()
        ph = self.phi0.copy()
        dr = np.zeros_like(th)
        # Brows: raise slides the forehead skin up; furrow pulls the inner brows down and together.
        for side, sgn, i_raise in (("left", 1.0, X["brow_raise_left"]), ("right", -1.0, X["brow_raise_right"])):
            ph += 0.075 * e[i_raise] * w[f"brow_{side}"]
            ph -= 0.05 * e[X["brow_furrow"]] * w[f"inner_brow_{side}"]
            th -= sgn * 0.035 * e[X["brow_furrow"]] * w[f"inner_brow_{side}"]
            dr += 0.012 * e[X["brow_furrow"]] * w[f"inner_brow_{side}"]
            # Smile: lip corners up and back, cheeks lift and bulge.
            i_smile = X[f"smile_{side}"]
            ph += 0.075 * e[i_smile] * w[f"smile_{side}"]
            th += sgn * 0.055 * e[i_smile] * w[f"smile_{side}"]
            dr -= 0.012 * e[i_smile] * w[f"smile_{side}"]
            ph += 0.03 * e[i_smile] * w[f"cheek_{side}"]
            dr += 0.02 * e[i_smile] * w[f"cheek_{side}"]
            # Squint: lower lid and cheek rise.
            ph += 0.035 * e[X[f"squint_{side}"]] * w[f"squint_{side}"]
        # Pucker: lips forward and narrower.  Cheek puff: cheeks out.
        th *= 1 - 0.38 * e[X["lip_pucker"]] * w["lips"]
        dr += 0.07 * e[X["lip_pucker"]] * w["lips"]
        dr += 0.11 * e[X["cheek_puff"]] * (w["cheek_left"] + w["cheek_right"])
        # Eyelids: remap lid rows between the moving margins and the fixed lid borders.
        for k, (side, yaw_pitch) in enumerate((("left", g[0]), ("right", g[1]))):
            ex = w[f"ex_{side}"]
            pitch = float(np.clip(yaw_pitch[1], -0.5, 0.5))
            squint = e[X[f"squint_{side}"]]
            open_up = (1 - 0.35 * squint) * (1 + 0.9 * pitch)
            open_down = (1 - 0.75 * squint) * (1 - 0.6 * pitch)
            y_up, y_down = self._lid_margins(ex, open_up, open_down, e[X[f"blink_{side}"]])
            up, dn = w[f"lid_up_{side}"], w[f"lid_down_{side}"]
            eu, ed = w[f"ey_up_{side}"], w[f"ey_down_{side}"]
            ph[up] = p.eye_phi + y_up[up] + (LID_UP - y_up[up]) * eu[up]
            ph[dn] = p.eye_phi + y_down[dn] - (LID_DOWN + y_down[dn]) * ed[dn]
        grid = self._skin_points(th, ph, dr)
        # Eyelids wrap the eyeball: near the fissure the lid skin lies on a sphere just outside it,
        # and nowhere in the lid area may the eyeball show through the skin.
        for k, side in enumerate(("left", "right")):
            lid = w[f"lid_up_{side}"] | w[f"lid_down_{side}"]
            d = grid[lid] - self.eye_centres[k]
            rho = np.linalg.norm(d, axis=1)
            target = LID_GAP * self.eye_radius
            wl = w[f"lid_wrap_{side}"][lid]
            new = np.maximum(rho + wl * (target - rho), target)
            grid[lid] = self.eye_centres[k] + d * (new / rho)[:, None]
        # Jaw: rotate the lower face about the hinge.
        jaw_angle = JAW_MAX_ANGLE * e[X["jaw_open"]]
        grid = _rotate_x_about(grid, self.jaw_pivot, jaw_angle * w["jaw"])
        mouth = self._mouth_interior(jaw_angle)
        verts = np.concatenate([grid, mouth]).astype(np.float32)
        rots = np.stack([eye_rotation(*g[0]), eye_rotation(*g[1])]).astype(np.float32)
        return HeadState(vertices=verts, eye_rotations=rots, jaw_angle=float(jaw_angle))

    # ------------------------------------------------------------------ eyes
    def _build_eyes(self):
        p = self.params
        self.eye_radius = EYE_RADIUS_FACTOR * p.eye_half_width * p.half_width * 1.05
        centres = []
        for sgn in (1.0, -1.0):
            th = np.array([sgn * p.eye_theta])
            ph = np.array([p.eye_phi])
            skin = self._skin_points(th, ph, np.zeros(1))[0]
            n = skin / np.linalg.norm(skin)
            n = 0.3 * n + 0.7 * np.array([0, 0, 1.0])
            n /= np.linalg.norm(n)
            centres.append(skin - n * (0.92 * self.eye_radius))
        self.eye_centres = np.array(centres, np.float32)  # (2, 3): left, right

    # ------------------------------------------------------------------ mouth interior
    def _build_mouth_interior(self):
        """Cavity (a bag open to the front), teeth and tongue. Parts below the mouth follow the jaw."""
        p = self.params
        m = np.abs(self.theta0) <= p.mouth_half_width + 1e-9
        lip_row = m & (self.row == ROW_UPPER_LIP)
        lipline = self._neutral_skin[lip_row]
        cx = float(lipline[:, 0].max()) * 1.1
        y0 = float(lipline[:, 1].mean())
        z_front = float(lipline[:, 2].min()) - 0.04
        verts, uvs, tris, lower = [], [], [], []

        def add_grid(P, U, lower_mask):
            nr, nc = P.shape[:2]
            base = sum(len(v) for v in verts)
            verts.append(P.reshape(-1, 3))
            uvs.append(U.reshape(-1, 2))
            lower.append(lower_mask.reshape(-1))
            r, c = np.meshgrid(np.arange(nr - 1), np.arange(nc - 1), indexing="ij")
            a = (r * nc + c).ravel() + base
            tris.append(np.concatenate([np.stack([a, a + 1, a + nc + 1], 1), np.stack([a, a + nc + 1, a + nc], 1)]))

        # Cavity: rings around the mouth axis, from a front rim just behind the skin back to a closed end.
        psi = np.linspace(0, 2 * np.pi, 25)
        dep = np.linspace(0, 1, 7)
        D, S = np.meshgrid(dep, psi, indexing="ij")
        prof = np.sqrt(np.clip(1 - D**2, 0, 1)) * 0.9 + 0.1
        px, py = cx * np.cos(S) * prof, y0 + 0.17 * np.sin(S) * prof
        # z of the skin in front of each rim point (nearest neutral front vertex in x, y).
        front = self._neutral_skin[self._neutral_skin[:, 2] > 0.3]
        d2 = (px[0][:, None] - front[None, :, 0]) ** 2 + (py[0][:, None] - front[None, :, 1]) ** 2
        rim_z = front[np.argmin(d2, 1), 2] - 0.045
        P = np.stack([px, py, rim_z[None, :] - 0.30 * D], -1)
        # Teeth: curved bands following the dental arch, upper fixed, lower on the jaw.
        xs = np.linspace(-0.8, 0.8, 13) * cx
        for k, (ytop, ybot) in enumerate(((y0 + 0.03, y0 - 0.035), (y0 - 0.045, y0 - 0.11))):
            hs = np.linspace(0, 1, 3)
            Hh, Xx = np.meshgrid(hs, xs, indexing="ij")
            zz = z_front - 0.01 - 0.55 * (Xx / cx) ** 2 * 0.1 - 0.02 * k
            P = np.stack([Xx, ytop + (ybot - ytop) * Hh, zz], -1)
            U = np.stack([0.52 + 0.2 * (Xx / cx + 0.8) / 1.6, 0.004 + 0.05 * Hh], -1)
            add_grid(P, U, np.full(Hh.shape, k == 1))
        # Tongue: a flattened dome on the floor of the mouth.
        a, b = np.meshgrid(np.linspace(0, np.pi, 7), np.linspace(-1, 1, 9), indexing="ij")
        P = np.stack([0.75 * cx * b * np.sin(a) ** 0.5, y0 - 0.14 + 0.07 * np.sin(a) * np.sqrt(1 - b**2 * 0.8), z_front - 0.05 - 0.18 * (1 - np.cos(a)) / 2], -1)
        U = np.stack([0.78 + 0.2 * (b + 1) / 2, 0.004 + 0.05 * a / np.pi], -1)
        add_grid(P, U, np.ones(a.shape, bool))
        self._mouth_rest = np.concatenate(verts).astype(np.float64)
        self.mouth_uvs = np.concatenate(uvs)
        self.mouth_triangles = np.concatenate(tris)
        self._mouth_lower = np.concatenate(lower).astype(np.float64)

    def _mouth_interior(self, jaw_angle: float) -> np.ndarray:
        return _rotate_x_about(self._mouth_rest, self.jaw_pivot, jaw_angle * self._mouth_lower)

    def mouth_centre(self) -> np.ndarray:
        """Centre of the closed mouth on the skin (3,)."""
        return self._skin_points(np.array([0.0]), np.array([self.params.mouth_phi]), np.zeros(1))[0]

    # ------------------------------------------------------------------ keypoints
    def _keypoint_spec(self) -> dict:
        """Grid-vertex indices (or 'iris') of the 9 keypoints of each HMC view."""
        C1 = GRID_COLS + 1

        def vid(row, col):
            return int(row * C1 + col)

        def along(c0, c1, frac):
            return int(round(c0 + (c1 - c0) * frac))

        spec = {}
        for side, (c0, c1) in (("left", COL_EYE_LEFT), ("right", COL_EYE_RIGHT)):
            pts = [vid(ROW_UPPER_LID, c0), vid(ROW_UPPER_LID, c1)]
            pts += [vid(ROW_UPPER_LID, along(c0, c1, f)) for f in (0.25, 0.5, 0.75)]
            pts += [vid(ROW_LOWER_LID, along(c0, c1, f)) for f in (0.25, 0.5, 0.75)]
            spec[side] = pts + ["iris"]
        c0, c1 = COL_MOUTH
        pts = [vid(ROW_UPPER_LIP, c0), vid(ROW_UPPER_LIP, c1)]
        pts += [vid(ROW_UPPER_LIP, along(c0, c1, f)) for f in (0.25, 0.5, 0.75)]
        pts += [vid(ROW_LOWER_LIP, along(c0, c1, f)) for f in (0.25, 0.5, 0.75)]
        chin_row = int(np.argmin(np.abs(self.row_phi - (self.params.mouth_phi - 0.27))))
        spec["mouth"] = pts + [vid(chin_row, COL_CENTRE)]
        return spec

    def keypoints_3d(self, state: HeadState) -> np.ndarray:
        """(3, 9, 3) keypoints in the head frame for the left-eye, right-eye and mouth views."""
        out = np.zeros((3, 9, 3), np.float32)
        for v, side in enumerate(("left", "right", "mouth")):
            for k, idx in enumerate(self.keypoint_spec[side]):
                if idx == "iris":
                    e = 0 if side == "left" else 1
                    out[v, k] = self.eye_centres[e] + state.eye_rotations[e] @ np.array([0, 0, self.eye_radius], np.float32)
                else:
                    out[v, k] = state.vertices[idx]
        return out


KEYPOINT_NAMES = {
    "eye": ("corner_inner", "corner_outer", "upper_lid_a", "upper_lid_mid", "upper_lid_b", "lower_lid_a", "lower_lid_mid", "lower_lid_b", "iris_centre"),
    "mouth": ("corner_right", "corner_left", "upper_lip_a", "upper_lip_mid", "upper_lip_b", "lower_lip_a", "lower_lip_mid", "lower_lip_b", "chin"),
}


def eye_rotation(yaw: float, pitch: float) -> np.ndarray:
    """Rotation taking the eyeball's rest axis (+z) to the gaze direction (yaw toward +x, pitch up)."""
    cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
    r_yaw = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    r_pitch = np.array([[1, 0, 0], [0, cp, sp], [0, -sp, cp]])
    return r_yaw @ r_pitch


def _rotate_x_about(P: np.ndarray, pivot: np.ndarray, angle) -> np.ndarray:
    """Rotate points (N, 3) about the x axis through ``pivot`` by per-point ``angle`` (opening the jaw: chin goes down)."""
    angle = np.broadcast_to(np.asarray(angle, np.float64), (len(P),))
    c, s = np.cos(angle), np.sin(angle)
    y = P[:, 1] - pivot[1]
    z = P[:, 2] - pivot[2]
    out = P.astype(np.float64, copy=True)
    out[:, 1] = pivot[1] + c * y - s * z
    out[:, 2] = pivot[2] + s * y + c * z
    return out


class VertexNormals:
    """Area-weighted vertex normals for a fixed triangle list: (V, 3) float32 per call."""

    def __init__(self, triangles: np.ndarray, num_vertices: int):
        self.t0, self.t1, self.t2 = (np.ascontiguousarray(triangles[:, k], np.int64) for k in range(3))
        self.num_vertices = num_vertices

    def __call__(self, vertices: np.ndarray) -> np.ndarray:
        v = vertices.astype(np.float32, copy=False)
        a = v[self.t0]
        e1 = v[self.t1] - a
        e2 = v[self.t2] - a
        # Cross product written out: several times faster than np.cross on (F, 3).
        fn = (
            e1[:, 1] * e2[:, 2] - e1[:, 2] * e2[:, 1],
            e1[:, 2] * e2[:, 0] - e1[:, 0] * e2[:, 2],
            e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0],
        )
        V = self.num_vertices
        n = np.empty((V, 3), np.float32)
        for d in range(3):
            n[:, d] = np.bincount(self.t0, fn[d], V) + np.bincount(self.t1, fn[d], V) + np.bincount(self.t2, fn[d], V)
        n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
        return n


def vertex_normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals (V, 3) float32 (one-off; use :class:`VertexNormals` per frame)."""
    return VertexNormals(triangles, len(vertices))(vertices)
