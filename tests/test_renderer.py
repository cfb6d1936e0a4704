"""Rasterizer against a NumPy reference on a tiny mesh (real EGL context)."""
from __future__ import annotations

import numpy as np
import pytest

moderngl = pytest.importorskip("moderngl")

from renderer.rasterizer import AvatarRasterizer, eye_rotations, look_at_mvp  # noqa: E402

N, T = 64, 16


def _quad_rasterizer(ctx=None):
    # A unit quad facing +z (the front viewer), uv = (x + 0.5, y + 0.5).
    verts = np.array([[-0.5, -0.5, 0.4], [0.5, -0.5, 0.4], [0.5, 0.5, 0.4], [-0.5, 0.5, 0.4]], np.float32)
    uvs = (verts[:, :2] + 0.5).astype(np.float32)
    tris = np.array([[0, 1, 2], [0, 2, 3]], np.uint32)
    # One tiny eyeball far off-screen so only the quad is visible.
    ev = np.array([[0, 0, 0], [0.01, 0, 0], [0, 0.01, 0]], np.float32)
    eye = (ev, np.tile([[0, 0, 1.0]], (3, 1)).astype(np.float32), np.zeros((3, 2), np.float32), np.array([[0, 1, 2]], np.uint32))
    centres = np.array([[50.0, 0, 0], [-50.0, 0, 0]], np.float32)
    rast = AvatarRasterizer(uvs, tris, eye, centres, np.ones((4, 8, 4), np.float32), size=N, texture_size=T,
                            ctx=ctx)
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


class _CountingContext:
    """A moderngl context that counts every GL object made through it (buffers, textures, renderbuffers,
    framebuffers, programs, vertex arrays, samplers, queries...): any call returning a ``moderngl`` object
    (one with an ``mglo``) is counted under its type. moderngl makes GL objects only through the context."""

    def __init__(self, ctx):
        object.__setattr__(self, "_ctx", ctx)
        object.__setattr__(self, "made", [])

    def __getattr__(self, name):
        attr = getattr(self._ctx, name)
        if not callable(attr) or name.startswith("__"):
            return attr

        def call(*args, **kwargs):
            out = attr(*args, **kwargs)
            if type(out).__module__.split(".")[0] == "moderngl" and hasattr(out, "mglo"):
                self.made.append(type(out).__name__)
            return out

        return call

    def __setattr__(self, name, value):
        setattr(self._ctx, name, value)


def _counting_quad_rasterizer():
    from renderer.rasterizer import create_context

    ctx = _CountingContext(create_context())
    rast, verts = _quad_rasterizer(ctx=ctx)
    return rast, verts, ctx


def test_uv_map():
    rast, verts = _quad_rasterizer()
    uvm = rast.render_uv(verts, np.zeros((2, 2)), [0, 0, 1], 32)
    assert uvm.shape == (32, 32, 3) and uvm.dtype == np.float32
    face = uvm[..., 2] > 0.5
    assert 0.05 < face.mean() < 0.9
    assert np.all((uvm[face, :2] >= 0) & (uvm[face, :2] <= 1))
    rast.release()


def test_gl_objects_are_allocated_once_not_per_frame():
    rast, verts, ctx = _counting_quad_rasterizer()
    made = list(ctx.made)
    # The counter sees allocation: __init__ makes the program, buffers, vertex arrays, textures, framebuffer.
    for kind in ("Program", "Buffer", "VertexArray", "Texture", "Renderbuffer", "Framebuffer"):
        assert kind in made, (kind, made)
    rast.render_uv(verts, np.zeros((2, 2)), [0, 0, 1], 32)  # a UV map size is set up once, on first use
    assert ctx.made[len(made):] == ["Renderbuffer", "Renderbuffer", "Framebuffer"]
    made = list(ctx.made)
    rng = np.random.default_rng(0)
    for k in range(6):  # frames with new geometry, texture, gaze (eye buffers rewritten) and view
        gaze = rng.uniform(-0.3, 0.3, (2, 2))
        view = [0.3 * np.sin(k), 0.1, 1.0]
        img = rast.render(verts + rng.normal(0, 0.01, verts.shape).astype(np.float32), rng.random((T, T, 3)), gaze, view)
        assert img.shape == (N, N, 3)
        rast.render_uv(verts, gaze, view, 32)
    assert ctx.made == made, f"GL objects made per frame: {ctx.made[len(made):]}"
    assert rast.ctx.error == "GL_NO_ERROR"
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


def test_neural_texture_sampled_in_gl_matches_torch_grid_sample():
    """The receiver samples G's neural texture in GL; torch's G samples it with grid_sample in training: the same
    features per face pixel (bilinear, clamped at the edges), zero off the face, and no GL object made per frame."""
    torch = pytest.importorskip("torch")
    rast, verts, ctx = _counting_quad_rasterizer()
    rng = np.random.default_rng(1)
    tex = rng.normal(0, 1, (T, T, 14)).astype(np.float32)  # 14 channels: the last RGBA texture half used
    rast.set_neural_texture(tex)
    view = [0.2, -0.1, 1.0]
    uv, feats = rast.render_uv_features(verts, np.zeros((2, 2)), view, 32)
    assert uv.shape == (32, 32, 3) and feats.shape == (32, 32, 14)
    np.testing.assert_allclose(uv, rast.render_uv(verts, np.zeros((2, 2)), view, 32), atol=1e-6)
    face = uv[..., 2] > 0.5
    assert face.mean() > 0.05 and np.all(feats[~face] == 0)
    grid = torch.from_numpy(uv[None, ..., :2] * 2 - 1)
    ref = torch.nn.functional.grid_sample(torch.from_numpy(tex).permute(2, 0, 1)[None], grid, mode="bilinear",
                                          padding_mode="border", align_corners=False)[0].permute(1, 2, 0).numpy()
    err = np.abs(ref[face] - feats[face])
    assert err.max() < 0.02 * np.abs(tex).max(), err.max()
    made = list(ctx.made)
    for k in range(3):
        rast.render_uv_features(verts, np.zeros((2, 2)), [0.1 * k, 0.0, 1.0], 32)
    assert ctx.made == made and rast.ctx.error == "GL_NO_ERROR"
    rast.release()
