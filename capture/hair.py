"""Hair with volume: a cap of offset shells over the scalp with a strand texture.

A hair *style* is drawn from the identity's seed (length, volume, curl,
colour shift), so S1, S2, S3... wear different hair. The cap is a grid over
(θ, t) of the head's canonical angles: t runs from the hair's lower edge
(forehead hairline, above or over the ears, nape or hanging ends) up to the
crown. Shell k of K sits ``k / K`` of the hair's thickness above the scalp;
shell 0 is an opaque base layer, the others keep a fragment only where the
strand texture is dense enough for their height, so the outer shells thin
out into strands and a ragged silhouette. Below the widest part of the head,
long hair falls straight down instead of following the skull into the neck.

The hair is rigid in the head frame and built once per identity. It is drawn
only by a realistic look's colour cameras (not the HMC, not the UV texture).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .body import Mesh, _ss, ear_anchor, grid_triangles
from .head import HeadModel, VertexNormals

STYLES = ("short", "voluminous", "long")


@dataclass(frozen=True)
class HairStyle:
    kind: str
    """One of :data:`STYLES`."""
    thickness: float
    """Hair depth above the scalp on top of the head (dm)."""
    nape: float
    """Elevation (rad) of the hair's lower edge at the back of the head (short styles)."""
    length: float
    """How far below the widest part of the head hanging hair reaches (dm; 0 = follows the skull)."""
    curl: float
    """0 straight strands .. 1 frizzy curls (strand waviness and clumping)."""
    colour: tuple[float, float, float]
    """Linear RGB albedo of the hair (the identity's hair colour)."""
    sheen: float
    """Strength of the primary Kajiya-Kay highlight."""


def hair_style(head: HeadModel) -> HairStyle:
    """The identity's hair: kind cycles with the identity number (S1 short, S2 voluminous, S3 long, ...)."""
    p = head.params
    rng = np.random.default_rng(p.seed * 6007 + 11)
    kind = STYLES[(p.seed - 1) % len(STYLES)]
    if kind == "short":
        return HairStyle(kind, float(rng.uniform(0.07, 0.10)), float(rng.uniform(-0.50, -0.42)), 0.0,
                         float(rng.uniform(0.05, 0.2)), p.hair, 0.55)
    if kind == "voluminous":
        return HairStyle(kind, float(rng.uniform(0.20, 0.26)), float(rng.uniform(-0.62, -0.55)), 0.0,
                         float(rng.uniform(0.75, 0.95)), p.hair, 0.35)
    return HairStyle(kind, float(rng.uniform(0.09, 0.12)), -0.2, float(rng.uniform(0.85, 1.05)),
                     float(rng.uniform(0.1, 0.3)), p.hair, 0.7)


def _lower_edge(head: HeadModel, style: HairStyle, ath: np.ndarray) -> np.ndarray:
    """Elevation (rad) of the hair's lower edge at |θ| ``ath`` (before any hanging)."""
    p = head.params
    hl = p.hairline
    ear_top = p.eye_phi - 0.12 + 0.34
    if style.kind == "long":
        knots = [(0.0, hl + 0.01), (0.8, hl - 0.02), (1.05, hl - 0.12), (1.25, 0.0), (1.45, -0.25), (np.pi, -0.25)]
    else:
        drop = 0.0 if style.kind == "short" else -0.08
        knots = [(0.0, hl + 0.01), (0.8, hl - 0.02), (1.2, hl - 0.16), (1.42, ear_top + 0.02 + drop),
                 (1.75, ear_top + 0.0 + drop), (1.95, ear_top - 0.08 + drop), (2.08, -0.25), (2.3, style.nape),
                 (np.pi, style.nape - 0.03)]
    k = np.array(knots)
    # Smooth the piecewise-linear edge a little (in θ, over a fine table).
    tab = np.linspace(0, np.pi, 721)
    e = np.interp(tab, k[:, 0], k[:, 1])
    for _ in range(25):
        e[1:-1] = 0.25 * e[:-2] + 0.5 * e[1:-1] + 0.25 * e[2:]
    return np.interp(ath, tab, e)


def hair_shells(head: HeadModel, style: HairStyle, shells: int, cols: int = 80, rows: int = 22) -> Mesh:
    """Base layer + ``shells`` shells, one :class:`Mesh` (shell after shell, base first).

    ``uvs`` = (θ fraction around the head, t from the lower edge to the crown); ``attrs`` = (shell height 0..1,
    edge fade 0 at the lower edge .. 1 inside, 0, 0); ``mesh.tangents`` (N, 3): strand direction (edge to crown).
    """
    th = np.linspace(-np.pi, np.pi, cols, endpoint=False) + np.pi / cols
    crown = np.pi / 2 - 1e-3
    t = np.linspace(0, 1, rows)
    T, TH = np.meshgrid(t, th, indexing="ij")  # (rows, cols)
    E = _lower_edge(head, style, np.abs(TH))
    fall_phi = 0.02  # hanging hair leaves the skull here (about its widest part)
    w_hang = _ss(0.95, 1.35, np.abs(TH)) if style.length > 0 else np.zeros_like(T)
    hang_t = 0.4 * w_hang  # rows below this t hang
    start = E * (1 - w_hang) + fall_phi * w_hang
    on_skull = T >= hang_t
    s = np.clip((T - hang_t) / np.maximum(1 - hang_t, 1e-6), 0, 1)
    PH = start + (crown - start) * s**1.15
    n_pts = TH.size
    base = head._skin_points(TH.ravel(), PH.ravel(), np.zeros(n_pts)).reshape(rows, cols, 3)
    eps = 2e-3
    pa = head._skin_points(TH.ravel() + eps, PH.ravel(), np.zeros(n_pts)).reshape(rows, cols, 3)
    pb = head._skin_points(TH.ravel(), PH.ravel() + eps, np.zeros(n_pts)).reshape(rows, cols, 3)
    n = np.cross(pa - base, pb - base)
    n /= np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-9)
    n *= np.sign(np.einsum("rci,rci->rc", n, base))[..., None]
    # Edge band: strands thin out over the last ~0.08 rad above the lower edge (or the last bit of hanging ends).
    edge_fade = np.where(on_skull, _ss(0.0, 0.08, PH - E), 1.0) if style.length == 0 else _ss(0.0, 0.08, T)
    edge_fade = np.where(on_skull & (w_hang < 1), np.minimum(edge_fade, _ss(0.0, 0.08, PH - E) + w_hang), edge_fade)
    thick = style.thickness * (0.18 + 0.82 * np.where(on_skull, _ss(0.0, 0.25, PH - E), 1.0))
    if style.length == 0:
        thick = thick * (0.55 + 0.45 * _ss(-0.3, 0.5, PH))
    thick = thick * (1 + 0.12 * np.sin(3 * TH + 1.3) * np.sin(5 * PH))  # not a perfect shell
    if style.length > 0:
        # Hanging rows drop straight down from the fall point, ends curling in a little; hair over the ears stands off.
        hang = ~on_skull
        frac = np.clip(1 - T / np.maximum(hang_t, 1e-6), 0, 1)  # 0 at the fall point .. 1 at the ends
        fall_pts = head._skin_points(TH.ravel(), start.ravel(), np.zeros(n_pts)).reshape(rows, cols, 3)
        hp = fall_pts.copy()
        hp[..., 1] -= style.length * frac * w_hang
        radial = np.stack([fall_pts[..., 0], np.zeros_like(frac), fall_pts[..., 2]], -1)
        hp -= radial * (0.08 * frac**2 * w_hang)[..., None]
        base = np.where(hang[..., None], hp, base)
        hn = n.copy()
        hn[..., 1] *= 0.2
        hn /= np.linalg.norm(hn, axis=-1, keepdims=True)
        n = np.where(hang[..., None], hn, n)
        ear = np.zeros_like(T)
        for side in (1.0, -1.0):
            eth, eph = ear_anchor(head, side)
            c = head._skin_points(np.array([eth + side * 0.2]), np.array([eph]), np.zeros(1))[0]
            ear += np.exp(-0.5 * (np.linalg.norm(base - c, axis=-1) / 0.4) ** 2)
        base = base + n * (0.19 * ear * w_hang)[..., None]  # the whole curtain stands off over the ears
        thick = thick + 0.04 * ear * w_hang
    tang = np.gradient(base, axis=0)
    tang /= np.maximum(np.linalg.norm(tang, axis=-1, keepdims=True), 1e-9)
    tris = grid_triangles(rows, cols, wrap=True)
    uvs = np.stack([(TH / (2 * np.pi) + 0.5).ravel(), T.ravel()], 1).astype(np.float32)
    K = max(shells, 1)
    meshes = []
    for k in range(shells + 1):
        h = k / K
        verts = (base + n * (0.004 + thick * h)[..., None]).reshape(-1, 3).astype(np.float32)
        nrm = VertexNormals(tris, len(verts))(verts)
        tri_k = tris
        if np.einsum("ij,ij->i", nrm, n.reshape(-1, 3)).mean() < 0:
            nrm, tri_k = -nrm, tris[:, [0, 2, 1]]
        attrs = np.zeros((len(verts), 4), np.float32)
        attrs[:, 0] = h
        attrs[:, 1] = edge_fade.ravel()
        meshes.append(Mesh(verts, nrm, uvs, tri_k, attrs))
    mesh = Mesh.concat(meshes)
    mesh.tangents = np.tile(tang.reshape(-1, 3), (shells + 1, 1)).astype(np.float32)
    mesh.grid = (rows, cols)
    return mesh


def strand_texture(style: HairStyle, seed: int, width: int = 512, height: int = 128) -> np.ndarray:
    """(H, W, 4) float32: R strand density (a shell keeps a fragment where R > its height), G strand
    brightness, B highlight shift, A clump shading. u runs around the head (strands), v along them."""
    rng = np.random.default_rng(seed * 92821 + 17)
    W, H = width, height
    u = np.arange(W) / W
    v = np.arange(H) / H
    # Per-strand (column) properties, smoothed a touch so strands are 1-3 texels wide.
    def smooth_noise(n, w):
        x = rng.standard_normal(n)
        m = int(np.ceil(3 * w))
        k = np.exp(-0.5 * (np.arange(-m, m + 1) / w) ** 2)
        k /= k.sum()
        return np.convolve(np.concatenate([x[-m:], x, x[:m]]), k, mode="same")[m: m + n]

    strand = smooth_noise(W, 1.0)
    strand = (strand - strand.mean()) / strand.std()
    clump = smooth_noise(W, 3)
    clump = (clump - clump.mean()) / clump.std()
    V, U = np.meshgrid(v, u, indexing="ij")
    # Waviness: strands drift sideways along v (more for curly hair).
    phase = 6.28 * rng.random(W)
    wave = style.curl * 0.012 * np.sin(2 * np.pi * V * (2 + 10 * style.curl) + phase[None, :])
    cols = ((U + wave) * W).astype(int) % W
    s = strand[cols]
    c = clump[cols]
    # Strand ends: each strand fades at its own places along v (short hair: often, long hair: rarely).
    n_seg = 3 if style.length > 0 else (10 if style.kind == "short" else 6)
    ends = rng.random((n_seg + 1, W))
    t = V * n_seg
    k = np.floor(t).astype(int)
    f = t - k
    f = f * f * (3 - 2 * f)
    along = ends[k, cols] * (1 - f) + ends[np.minimum(k + 1, n_seg), cols] * f
    density = 0.5 + 0.2 * s + 0.1 * c + (0.1 + 0.1 * style.curl) * (along - 0.5) * 2
    density = np.clip(density, 0, 1)
    bright = np.clip(0.6 + 0.12 * s + 0.06 * c + 0.06 * rng.standard_normal((H, W)) * style.curl, 0, 1)
    shift = np.clip(0.5 + 0.2 * smooth_noise(W, 1.5)[cols], 0, 1)
    clump_shade = np.clip(0.5 + 0.15 * c, 0, 1)
    return np.stack([density, bright, shift, clump_shade], -1).astype(np.float32)
