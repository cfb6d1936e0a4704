"""moderngl rasterizer for the decoded avatar: textured mesh + two explicit eyeballs.

The decoded texture is already shaded for the view direction, so the face
fragment shader only samples it; the eyeballs are shaded like the studio's
colour mode (directional viewer, key + fill light, specular), from the eye
parameters saved with the decoder. GL objects are created once in
``__init__``; :meth:`render` only writes buffers, binds and draws.

Conventions: vertices (V, 3) float32 head frame (dm); texture (T, T, 3)
float32 or uint8, row 0 = v 0 (as the decoder and studio produce it);
images come back (N, N, 3) uint8, top row first.
"""
from __future__ import annotations

import numpy as np

_VS = """
#version 330
uniform mat4 u_mvp;
in vec3 in_pos;
in vec3 in_normal;
in vec2 in_uv;
out vec3 v_normal;
out vec2 v_uv;
void main() {
    v_normal = in_normal;
    v_uv = in_uv;
    gl_Position = u_mvp * vec4(in_pos, 1.0);
}
"""

_FS = """
#version 330
uniform sampler2D u_tex;
uniform int u_material;     // 0 face (pre-shaded texture), 1 eyeball (shaded here), 2/3 UV map face/eye
uniform vec3 u_view_dir;    // unit vector head -> viewer
in vec3 v_normal;
in vec2 v_uv;
out vec4 f_color;
void main() {
    if (u_material == 0) {
        f_color = vec4(texture(u_tex, v_uv).rgb, 1.0);
    } else if (u_material == 1) {
        vec3 n = normalize(v_normal);
        vec3 V = normalize(u_view_dir);
        if (dot(n, V) < 0.0) n = -n;
        vec3 key = normalize(vec3(0.45, 0.55, 0.75));
        vec3 fill = normalize(vec3(-0.65, 0.05, 0.55));
        float diff = 0.22 + 0.72 * max(dot(n, key), 0.0) + 0.28 * max(dot(n, fill), 0.0);
        float spec = 0.9 * pow(max(dot(n, normalize(key + V)), 0.0), 90.0);
        f_color = vec4(texture(u_tex, v_uv).rgb * diff + spec * vec3(1.0, 0.97, 0.92), 1.0);
    } else if (u_material == 2) {
        f_color = vec4(v_uv, 1.0, 1.0);   // UV map: face -> (u, v, 1)
    } else {
        f_color = vec4(0.0);              // UV map: eyeballs occlude -> (0, 0, 0)
    }
}
"""


_FS_FEATURES = """
#version 330
uniform sampler2D u_feat0;
uniform sampler2D u_feat1;
uniform sampler2D u_feat2;
uniform sampler2D u_feat3;
uniform int u_material;     // 2 face: (u, v, 1) + neural texture features, 3 eyeball: zeros (occluder)
in vec3 v_normal;
in vec2 v_uv;
layout(location = 0) out vec4 f_uv;
layout(location = 1) out vec4 f_0;
layout(location = 2) out vec4 f_1;
layout(location = 3) out vec4 f_2;
layout(location = 4) out vec4 f_3;
void main() {
    if (u_material == 2) {
        f_uv = vec4(v_uv, 1.0, 1.0);
        f_0 = texture(u_feat0, v_uv);
        f_1 = texture(u_feat1, v_uv);
        f_2 = texture(u_feat2, v_uv);
        f_3 = texture(u_feat3, v_uv);
    } else {
        f_uv = vec4(0.0); f_0 = vec4(0.0); f_1 = vec4(0.0); f_2 = vec4(0.0); f_3 = vec4(0.0);
    }
}
"""
MAX_FEATURE_CHANNELS = 16
"""Neural texture channels :meth:`AvatarRasterizer.render_uv_features` samples (four RGBA float textures)."""

def _to_texels(img: np.ndarray) -> np.ndarray:
    """float [0, 1] image -> contiguous uint8 texels."""
    return np.ascontiguousarray(np.clip(np.asarray(img, np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8))


def eye_rotations(gaze: np.ndarray) -> np.ndarray:
    """Explicit eye model: gaze (2, 2) [[yaw, pitch] left, right] -> rotations (2, 3, 3) float32."""
    from capture.head import eye_rotation  # pure NumPy; the one definition the studio's ground truth uses

    g = np.asarray(gaze, np.float64).reshape(2, 2)
    return np.stack([eye_rotation(*g[0]), eye_rotation(*g[1])]).astype(np.float32)


def create_context():
    """A headless moderngl context through EGL."""
    import moderngl

    try:
        return moderngl.create_standalone_context(backend="egl")
    except Exception as exc:  # pragma: no cover - depends on the machine
        raise RuntimeError("could not create a headless OpenGL context through EGL (install Mesa's libegl1)") from exc


def look_at_mvp(view_direction, size: int, target=(0.0, -0.12, 0.35), distance: float = 6.0, fov_deg: float = 25.0,
                near: float = 1.0, far: float = 20.0) -> np.ndarray:
    """The dome viewer camera's clip matrix (4, 4) for a unit view direction (head -> viewer).

    OpenCV-style camera (x right, y down) whose projection flips y, so the GL
    read-back is flipped once with ``[::-1]`` to get top-row-first images. Same
    camera as the studio's ``dome_camera``.
    """
    d = np.asarray(view_direction, np.float64).reshape(3)
    d = d / np.linalg.norm(d)
    target = np.asarray(target, np.float64)
    eye = target + distance * d
    zc = target - eye
    zc /= np.linalg.norm(zc)
    xc = np.cross(zc, [0.0, 1.0, 0.0])
    xc /= np.linalg.norm(xc)
    yc = np.cross(zc, xc)
    R = np.stack([xc, yc, zc])
    f = 0.5 * size / np.tan(np.radians(fov_deg) / 2)
    V = np.eye(4)
    V[:3, :3] = R
    V[:3, 3] = -R @ eye
    P = np.zeros((4, 4))
    P[0, 0] = 2 * f / size
    P[1, 1] = -2 * f / size
    P[2, 2] = (far + near) / (far - near)
    P[2, 3] = -2 * far * near / (far - near)
    P[3, 2] = 1
    return P @ V


class AvatarRasterizer:
    """Draws decoded mesh + texture + explicit eyeballs into an offscreen ``size``² image.

    ``uvs`` (V, 2) float32, ``triangles`` (F, 3) uint32: the mesh topology;
    ``eye_mesh`` = (vertices (N, 3), normals (N, 3), uvs (N, 2), triangles (M, 3)) of one
    eyeball at rest; ``eye_centres`` (2, 3); ``eye_texture`` (H, W, >=3) float32.
    """

    def __init__(self, uvs, triangles, eye_mesh, eye_centres, eye_texture, *, size: int = 512,
                 texture_size: int = 256, ctx=None):
        import moderngl

        self.ctx = ctx = ctx or create_context()
        self.size = size
        self.texture_size = texture_size
        self.num_vertices = len(uvs)
        self.prog = ctx.program(vertex_shader=_VS, fragment_shader=_FS)
        self.prog["u_tex"] = 0
        V = self.num_vertices
        self.vbo_pos = ctx.buffer(reserve=V * 12)
        self.vbo_nrm = ctx.buffer(reserve=V * 12)  # unused by the face shader; zeros
        self.vbo_nrm.write(np.zeros((V, 3), np.float32).tobytes())
        self.vbo_uv = ctx.buffer(np.ascontiguousarray(uvs, np.float32).tobytes())
        self.ibo = ctx.buffer(np.ascontiguousarray(triangles, np.uint32).tobytes())
        self.vao_face = self._vao(self.vbo_pos, self.vbo_nrm, self.vbo_uv, self.ibo)
        ev, en, euv, etri = eye_mesh
        self._eye_v = np.asarray(ev, np.float32)
        self._eye_n = np.asarray(en, np.float32)
        self.eye_centres = np.asarray(eye_centres, np.float32).reshape(2, 3)
        n = len(ev)
        self.vbo_eye_pos = ctx.buffer(reserve=2 * n * 12)
        self.vbo_eye_nrm = ctx.buffer(reserve=2 * n * 12)
        self.vbo_eye_uv = ctx.buffer(np.concatenate([euv, euv]).astype(np.float32).tobytes())
        etri = np.asarray(etri, np.uint32)
        self.ibo_eye = ctx.buffer(np.concatenate([etri, etri + n]).astype(np.uint32).tobytes())
        self.vao_eyes = self._vao(self.vbo_eye_pos, self.vbo_eye_nrm, self.vbo_eye_uv, self.ibo_eye)
        et = np.ascontiguousarray(np.asarray(eye_texture, np.float32)[..., :3])
        # 8-bit texels: llvmpipe samples them several times faster than float32 ones.
        self.tex_eye = ctx.texture((et.shape[1], et.shape[0]), 3, _to_texels(et).tobytes())
        self.tex_eye.filter = (moderngl.LINEAR_MIPMAP_LINEAR, moderngl.LINEAR)
        self.tex_eye.build_mipmaps()
        self.tex_eye.repeat_x = self.tex_eye.repeat_y = False
        T = texture_size
        self.tex_face = ctx.texture((T, T), 3)
        self.tex_face.filter = (moderngl.LINEAR, moderngl.LINEAR)
        self.tex_face.repeat_x = self.tex_face.repeat_y = False
        self.fbo = ctx.framebuffer(
            color_attachments=[ctx.renderbuffer((size, size), components=4)],
            depth_attachment=ctx.depth_renderbuffer((size, size)),
        )
        self._uv_fbos: dict[int, object] = {}
        self._feature_fbos: dict[int, object] = {}
        self._feature_prog = None
        self._feature_textures: list = []
        self._feature_vaos = None
        self.feature_channels = 0
        self._last_eye_key = None
        self._moderngl = moderngl

    def _vao(self, pos, nrm, uv, ibo):
        return self.ctx.vertex_array(self.prog, [(pos, "3f", "in_pos"), (nrm, "3f", "in_normal"), (uv, "2f", "in_uv")],
                                     index_buffer=ibo, index_element_size=4)

    def _upload_geometry(self, vertices: np.ndarray, rotations: np.ndarray) -> None:
        self.vbo_pos.write(np.ascontiguousarray(vertices, np.float32).reshape(-1, 3).tobytes())
        key = np.asarray(rotations, np.float32).tobytes()
        if key != self._last_eye_key:
            R = np.asarray(rotations, np.float32)
            ev = np.concatenate([self._eye_v @ R[e].T + self.eye_centres[e] for e in range(2)])
            en = np.concatenate([self._eye_n @ R[e].T for e in range(2)])
            self.vbo_eye_pos.write(ev.astype(np.float32).tobytes())
            self.vbo_eye_nrm.write(en.astype(np.float32).tobytes())
            self._last_eye_key = key

    def render(self, vertices: np.ndarray, texture: np.ndarray, gaze: np.ndarray, view_direction) -> np.ndarray:
        """vertices (V, 3), texture (T, T, 3) or (3, T, T) float in [0, 1], gaze (2, 2) rad,
        view_direction (3,) -> image (size, size, 3) uint8."""
        tex = np.asarray(texture, np.float32)
        if tex.shape[0] == 3 and tex.shape[-1] != 3:
            tex = tex.transpose(1, 2, 0)
        self.tex_face.write(_to_texels(tex).tobytes())
        p = self.prog
        d = self._begin_pass(self.fbo, p, self.size, vertices, gaze, view_direction)
        p["u_view_dir"] = tuple(float(x) for x in d)
        self.tex_face.use(0)
        p["u_material"] = 0
        self.vao_face.render()  # no back-face culling: the mesh's winding is not consistent (mouth interior)
        self.tex_eye.use(0)
        p["u_material"] = 1
        self.vao_eyes.render()
        N = self.size
        img = np.frombuffer(self.fbo.read(components=3, alignment=1), np.uint8).reshape(N, N, 3)
        return img[::-1]

    def render_uv(self, vertices: np.ndarray, gaze: np.ndarray, view_direction, size: int) -> np.ndarray:
        """Per-pixel (u, v, face) map (size, size, 3) float32 of the mesh from ``view_direction``;
        face = 1 where the face mesh is the visible surface (eyeballs occlude with 0)."""
        fbo = self._float_target(self._uv_fbos, size, 1)
        p = self.prog
        self._begin_pass(fbo, p, size, vertices, gaze, view_direction)
        p["u_material"] = 2
        self.vao_face.render()
        p["u_material"] = 3
        self.vao_eyes.render()
        out = np.frombuffer(fbo.read(components=4, dtype="f4", alignment=1), np.float32).reshape(size, size, 4)
        return np.ascontiguousarray(out[::-1, :, :3])

    def _float_target(self, cache: dict, size: int, targets: int):
        """A ``size``² framebuffer with ``targets`` RGBA float32 colour attachments and depth, made on first use."""
        fbo = cache.get(size)
        if fbo is None:
            fbo = cache[size] = self.ctx.framebuffer(
                color_attachments=[self.ctx.renderbuffer((size, size), components=4, dtype="f4") for _ in range(targets)],
                depth_attachment=self.ctx.depth_renderbuffer((size, size)),
            )
        return fbo

    def _begin_pass(self, fbo, prog, size: int, vertices: np.ndarray, gaze: np.ndarray, view_direction) -> np.ndarray:
        """Geometry uploaded, ``fbo`` bound and cleared, depth test on, ``prog``'s camera set for the view; returns
        the unit view direction."""
        mgl = self._moderngl
        self._upload_geometry(vertices, eye_rotations(gaze))
        d = np.asarray(view_direction, np.float64).reshape(3)
        d = d / np.linalg.norm(d)
        fbo.use()
        self.ctx.viewport = (0, 0, size, size)
        self.ctx.enable(mgl.DEPTH_TEST)
        self.ctx.disable(mgl.CULL_FACE)
        fbo.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)
        prog["u_mvp"].write(np.ascontiguousarray(look_at_mvp(d, size).T, np.float32).tobytes())
        return d

    def set_neural_texture(self, texture: np.ndarray) -> None:
        """Upload a neural texture (T, T, C) float32, C <= :data:`MAX_FEATURE_CHANNELS`, row 0 = v 0, for
        :meth:`render_uv_features` (bilinear, clamped at the edges: ``grid_sample``'s ``border`` padding)."""
        mgl = self._moderngl
        tex = np.ascontiguousarray(texture, np.float32)
        T, _, C = tex.shape
        if C > MAX_FEATURE_CHANNELS:
            raise ValueError(f"neural texture: at most {MAX_FEATURE_CHANNELS} channels, got {C}")
        if self._feature_prog is None:
            self._feature_prog = self.ctx.program(vertex_shader=_VS, fragment_shader=_FS_FEATURES)
            for k in range(4):
                self._feature_prog[f"u_feat{k}"] = k
            attrs = lambda pos, uv: [(pos, "3f", "in_pos"), (uv, "2f", "in_uv")]  # noqa: E731  (normals unused)
            self._feature_vaos = (
                self.ctx.vertex_array(self._feature_prog, attrs(self.vbo_pos, self.vbo_uv),
                                      index_buffer=self.ibo, index_element_size=4),
                self.ctx.vertex_array(self._feature_prog, attrs(self.vbo_eye_pos, self.vbo_eye_uv),
                                      index_buffer=self.ibo_eye, index_element_size=4))
        for t in self._feature_textures:
            t.release()
        padded = np.zeros((T, T, MAX_FEATURE_CHANNELS), np.float32)
        padded[..., :C] = tex
        self._feature_textures = []
        for k in range(4):
            t = self.ctx.texture((T, T), 4, np.ascontiguousarray(padded[..., 4 * k:4 * k + 4]).tobytes(), dtype="f4")
            t.filter = (mgl.LINEAR, mgl.LINEAR)
            t.repeat_x = t.repeat_y = False
            self._feature_textures.append(t)
        self.feature_channels = C

    def render_uv_features(self, vertices: np.ndarray, gaze: np.ndarray, view_direction, size: int
                           ) -> tuple[np.ndarray, np.ndarray]:
        """One pass: the (u, v, face) map (size, size, 3) float32 (as :meth:`render_uv`) and the neural texture
        (:meth:`set_neural_texture`) sampled at every face pixel, (size, size, C) float32, zero elsewhere."""
        if not self._feature_textures:
            raise RuntimeError("render_uv_features before set_neural_texture")
        fbo = self._float_target(self._feature_fbos, size, 5)
        p = self._feature_prog
        self._begin_pass(fbo, p, size, vertices, gaze, view_direction)
        for k, t in enumerate(self._feature_textures):
            t.use(k)
        p["u_material"] = 2
        self._feature_vaos[0].render()
        p["u_material"] = 3
        self._feature_vaos[1].render()
        read = lambda a: np.frombuffer(fbo.read(components=4, dtype="f4", alignment=1, attachment=a),  # noqa: E731
                                       np.float32).reshape(size, size, 4)[::-1]
        uv = np.ascontiguousarray(read(0)[..., :3])
        feats = np.concatenate([read(1 + k) for k in range(4)], -1)[..., :self.feature_channels]
        return uv, np.ascontiguousarray(feats)

    def release(self) -> None:
        extra = [*self._feature_textures, *self._feature_fbos.values()]
        if self._feature_prog is not None:
            extra += [*self._feature_vaos, self._feature_prog]
        for obj in extra:
            obj.release()
        self._feature_textures, self._feature_fbos, self._feature_prog = [], {}, None
        for obj in (self.vao_face, self.vao_eyes, self.vbo_pos, self.vbo_nrm, self.vbo_uv, self.ibo, self.vbo_eye_pos,
                    self.vbo_eye_nrm, self.vbo_eye_uv, self.ibo_eye, self.tex_eye, self.tex_face, self.fbo,
                    *self._uv_fbos.values(), self.prog):
            obj.release()
