"""Rasterizer against a NumPy reference on a tiny mesh (real EGL context)."""
from __future__ import annotations

import numpy as np
import pytest

moderngl = pytest.importorskip("moderngl")

from renderer.rasterizer import AvatarRasterizer, eye_rotations, look_at_mvp  # noqa: E402

N, T = 64, 16


def _quad_rasterizer():
    # A unit quad facing +z (the front viewer), uv = (x + 0.5, y + 0.5).
    verts = np.array([[-0.5, -0.5, 0.4], [0.5, -0.5, 0.4], [0.5, 0.5, 0.4], [-0.5, 0.5, 0.4]], np.float32)
    uvs = (verts[:, :2] + 0.5).astype(np.float32)
    tris = np.array([[0, 1, 2], [0, 2, 3]], np.uint32)
    # One tiny eyeball far off-screen so only the quad is visible.
    ev = np.array([[0, 0, 0], [0.01, 0, 0], [0, 0.01, 0]], np.float32)
    eye = (ev, np.tile([[0, 0, 1.0]], (3, 1)).astype(np.float32), np.zeros((3, 2), np.float32), np.array([[0, 1, 2]], np.uint32))
    centres = np.array([[50.0, 0, 0], [-50.0, 0, 0]], np.float32)
    rast = AvatarRasterizer(uvs, tris, eye, centres, np.ones((4, 8, 4), np.float32), size=N, texture_size=T)
    return rast, verts


def _linear_texture():
    # Texel centres carry (u, v, 0.5); row 0 = v 0. Bilinear sampling reproduces (u, v) exactly inside.
    c = (np.arange(T) + 0.5) / T
    u, v = np.meshgrid(c, c)
    return np.stack([u, v, np.full_like(u, 0.5)], -1).astype(np.float32)


def test_rasterizer_matches_numpy_reference():
    rast, verts = _quad_rasterizer()
    view = np.array([0.0, 0.0, 1.0])
    img = rast.render(verts, _linear_texture(), np.zeros((2, 2)), view).astype(np.float64) / 255
    assert img.shape == (N, N, 3) and rast.ctx.error == "GL_NO_ERROR"
    # NumPy reference: project the corners; a camera-facing plane maps affinely to NDC.
    P = look_at_mvp(view, N)
    h = np.c_[verts, np.ones(4)] @ P.T
    ndc = h[:, :2] / h[:, 3:]
    x0, x1 = ndc[0, 0], ndc[1, 0]
    y0, y1 = ndc[0, 1], ndc[3, 1]
    rows, cols = np.mgrid[0:N, 0:N]
    xn = 2 * (cols + 0.5) / N - 1
    yn = 2 * ((N - 1 - rows) + 0.5) / N - 1  # image row 0 is the top; GL's y_ndc decreases down the rows
    u = (xn - x0) / (x1 - x0)
    v = (yn - y0) / (y1 - y0)
    inside = (u > 0) & (u < 1) & (v > 0) & (v < 1)
    ref = np.stack([u, v, np.full_like(u, 0.5)], -1)
    lo, hi = 0.5 / T + 0.02, 1 - 0.5 / T - 0.02
    check = (u > lo) & (u < hi) & (v > lo) & (v < hi)
    assert check.sum() > 100
    np.testing.assert_allclose(img[check], ref[check], atol=3 / 255)
    # Outside the quad: background. Coverage agrees away from the edges.
    edge = (np.abs(u) < 0.03) | (np.abs(u - 1) < 0.03) | (np.abs(v) < 0.03) | (np.abs(v - 1) < 0.03)
    covered = img.sum(-1) > 0
    assert np.array_equal(covered[~edge], inside[~edge])
    rast.release()


def test_uv_map_and_gl_objects_reused():
    rast, verts = _quad_rasterizer()
    uvm = rast.render_uv(verts, np.zeros((2, 2)), [0, 0, 1], 32)
    assert uvm.shape == (32, 32, 3) and uvm.dtype == np.float32
    face = uvm[..., 2] > 0.5
    assert 0.05 < face.mean() < 0.9
    assert np.all((uvm[face, :2] >= 0) & (uvm[face, :2] <= 1))
    fbo, tex = rast.fbo, rast.tex_face
    for _ in range(3):
        rast.render(verts, _linear_texture(), np.zeros((2, 2)), [0.3, 0.1, 1.0])
    assert rast.fbo is fbo and rast.tex_face is tex and rast.ctx.error == "GL_NO_ERROR"
    rast.release()


def test_look_at_matches_studio_dome_camera():
    from capture.rig import dome_camera, view_direction

    for v in ("front", "left", [0.2, 0.4, 0.9]):
        d = view_direction(v)
        np.testing.assert_allclose(look_at_mvp(d, 512), dome_camera(d, size=512).mvp(), atol=1e-9)


def test_explicit_eye_model():
    R = eye_rotations(np.zeros((2, 2)))
    np.testing.assert_allclose(R, np.stack([np.eye(3)] * 2), atol=1e-7)
    R = eye_rotations(np.array([[0.5, 0.0], [0.0, 0.3]]))
    axis_l, axis_r = R[0] @ [0, 0, 1], R[1] @ [0, 0, 1]
    assert axis_l[0] > 0.4 and abs(axis_l[1]) < 1e-6  # yaw turns the pupil toward +x
    assert axis_r[1] > 0.25 and abs(axis_r[0]) < 1e-6  # pitch turns it up
    # Same rotations as the studio's ground-truth eyes.
    from capture.head import eye_rotation

    for yaw, pitch in ((0.3, -0.2), (-0.5, 0.35)):
        np.testing.assert_allclose(eye_rotations(np.array([[yaw, pitch]] * 2))[0], eye_rotation(yaw, pitch), atol=1e-6)
