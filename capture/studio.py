"""The synthetic capture studio: renders one identity's head with moderngl.

Three kinds of image come out of it:

- HMC frames: three near-IR grayscale views (left eye, right eye, mouth),
  ``(3, S, S)`` uint8, lit by LEDs beside each camera, with vignetting,
  exposure and sensor noise, plus per-frame ground truth.
- Dome / viewer colour renders from any view direction: ``(N, N, 3)`` uint8.
- The view-dependent texture in UV space for a view direction: ``(T, T, 3)``
  float32, i.e. the shaded surface colour a decoder has to reproduce.

Colour shading uses a *directional* view vector (the unit vector from the
head towards the viewer), the same for every pixel, so a render equals the
UV-space texture for that direction rasterised through the mesh.

How the colour cameras look is a :class:`capture.look.StudioLook` (``look=``):
the default is realistic (soft key-light shadows, per-pose ambient occlusion,
subsurface-scattering skin, wet eyes, and hair, ears, neck and clothed
shoulders around the face mesh; see :mod:`capture.shading`), and
``StudioLook.plain()`` gives the original textured-mesh renders byte for byte.
The HMC frames never depend on the look.

What ``render_texture`` holds under a realistic look: the face surface's colour
for the view, shadows and occlusion included, *also* those cast by the hair,
ears and body (they are rigid in the head frame, so the face texture carries
them like any other shading). What it cannot hold is their *occlusion*: where
hair, an ear, the neck or the shoulders cover the face in ``render_view``, the
render shows them and the texture shows the face underneath. So a render and
its texture rasterised through the mesh agree on every face pixel that no extra
geometry covers, and nowhere else need to.

GL objects are created once in ``__init__``; per frame only buffers are
written and draws issued.
"""
from __future__ import annotations

import numpy as np

from .cameras import Camera
from .expression import INDEX, NAMED_POSES
from .eyes import eyeball_mesh, posed_eyeballs
from .head import HeadModel, HeadState, VertexNormals
from .identity import IdentityParams, make_identity
from .look import DEFAULT_LOOK, StudioLook
from .rig import HmcRigConfig, HmcSession, dome_camera, hmc_cameras, view_direction
from .texture import paint_eyeball, paint_face

_VS = """
#version 330
uniform mat4 u_mvp;
uniform int u_uv_space;   // 1: place vertices at their UV (texture baking)
in vec3 in_pos;
in vec3 in_normal;
in vec2 in_uv;
out vec3 v_pos;
out vec3 v_normal;
out vec2 v_uv;
void main() {
    v_pos = in_pos;
    v_normal = in_normal;
    v_uv = in_uv;
    if (u_uv_space == 1) gl_Position = vec4(in_uv * 2.0 - 1.0, 0.0, 1.0);
    else gl_Position = u_mvp * vec4(in_pos, 1.0);
}
"""

_FS = """
#version 330
uniform sampler2D u_albedo;    // face: RGB albedo   | eye: RGB albedo + NIR in A
uniform sampler2D u_aux;       // face: spec, wrinkle L, wrinkle R, NIR
uniform int u_material;        // 0 face, 1 eyeball
uniform int u_mode;            // 0 colour (directional viewer), 1 near-infrared headset camera
uniform vec3 u_view_dir;       // colour: unit vector head -> viewer
uniform vec3 u_cam_pos;        // NIR: camera == LED position
uniform float u_brow_l;
uniform float u_brow_r;
uniform float u_shininess;
uniform float u_specular;
uniform float u_exposure;
uniform float u_noise_sigma;
uniform float u_seed;
uniform vec4 u_intr;           // NIR: fx, fy, cx, cy of the view
uniform vec2 u_origin;         // NIR: lower-left pixel of the view in the framebuffer
uniform float u_size;          // NIR: view height in pixels
uniform float u_dref;          // NIR: LED distance that gives full illumination
in vec3 v_pos;
in vec3 v_normal;
in vec2 v_uv;
out vec4 f_color;

float hash(vec2 p) {
    p = fract(p * vec2(443.897, 441.423) + u_seed);
    p += dot(p, p.yx + 19.19);
    return fract((p.x + p.y) * p.x);
}

void main() {
    vec3 n = normalize(v_normal);
    vec3 albedo;
    float nir, spec_k, shin;
    if (u_material == 0) {
        vec4 aux = texture(u_aux, v_uv);
        float wr = clamp(aux.g * u_brow_l + aux.b * u_brow_r, 0.0, 1.0);
        albedo = texture(u_albedo, v_uv).rgb * (1.0 - 0.45 * wr);
        nir = aux.a * (1.0 - 0.45 * wr);
        spec_k = u_specular * aux.r;
        shin = u_shininess;
    } else {
        vec4 e = texture(u_albedo, v_uv);
        albedo = e.rgb;
        nir = e.a;
        spec_k = 0.9;
        shin = 90.0;
    }
    if (u_mode == 0) {
        vec3 V = normalize(u_view_dir);
        if (dot(n, V) < 0.0) n = -n;
        vec3 key = normalize(vec3(0.45, 0.55, 0.75));
        vec3 fill = normalize(vec3(-0.65, 0.05, 0.55));
        float diff = 0.22 + 0.72 * max(dot(n, key), 0.0) + 0.28 * max(dot(n, fill), 0.0);
        float spec = spec_k * pow(max(dot(n, normalize(key + V)), 0.0), shin);
        f_color = vec4(albedo * diff + spec * vec3(1.0, 0.97, 0.92), 1.0);
    } else {
        vec3 L = u_cam_pos - v_pos;
        float d = length(L);
        L /= d;
        if (dot(n, L) < 0.0) n = -n;
        float fall = clamp(0.8 * u_dref * u_dref / (d * d), 0.0, 3.0);
        float ndl = max(dot(n, L), 0.0);
        float I = u_exposure * fall * (nir * (0.05 + 0.95 * ndl) + spec_k * pow(ndl, shin * 1.5));
        vec2 px = gl_FragCoord.xy - u_origin;
        vec2 q = vec2((px.x - u_intr.z) / u_intr.x, ((u_size - px.y) - u_intr.w) / u_intr.y);
        float r2 = dot(q, q);
        I *= 1.0 / ((1.0 + r2) * (1.0 + r2));
        float g = (hash(px) + hash(px + 17.3) + hash(px + 41.7) - 1.5) * 2.0;
        I += g * sqrt(u_noise_sigma * u_noise_sigma + 0.004 * max(I, 0.0));
        f_color = vec4(I, I, I, 1.0);
    }
}
"""


_VS_UV = """
#version 330
uniform mat4 u_mvp;
in vec3 in_pos;
in vec2 in_uv;
out vec2 v_uv;
void main() {
    v_uv = in_uv;
    gl_Position = u_mvp * vec4(in_pos, 1.0);
    gl_Position.z -= 1e-5 * gl_Position.w;   // wins the depth tie with the colour pass's own face fragments
}
"""

_FS_UV = """
#version 330
in vec2 v_uv;
out vec4 f_uv;
void main() { f_uv = vec4(v_uv, 1.0, 1.0); }
"""


def create_context(ctx=None):
    """A headless moderngl context (EGL), or ``ctx`` if one is given."""
    if ctx is not None:
        return ctx
    import moderngl

    try:
        return moderngl.create_standalone_context(backend="egl")
    except Exception as exc:  # pragma: no cover - depends on the machine
        raise RuntimeError(
            "could not create a headless OpenGL context through EGL; install Mesa's EGL "
            "(Debian: apt-get install libegl1 libgl1-mesa-dri)"
        ) from exc


def _make_current(ctx) -> None:
    """Make ``ctx`` the thread's current GL context. moderngl issues every call to whatever context is current,
    and creating a context makes it current: a studio that shares a process with other contexts must bind its
    own before drawing (idempotent and cheap when it already is current)."""
    ctx.__enter__()


def _mat(m: np.ndarray) -> bytes:
    return np.ascontiguousarray(m.T, np.float32).tobytes()


class Studio:
    """One identity in the studio: head model, textures, HMC rig and GL resources.

    ``session`` seeds the headset slip and exposure; session 0 is the rig as designed.
    ``look`` sets how the colour cameras render (default: the realistic :data:`capture.look.DEFAULT_LOOK`;
    ``StudioLook.plain()`` for the original renders); it never changes the HMC frames.
    """

    def __init__(
        self,
        identity: str | IdentityParams = "S1",
        *,
        session: int = 0,
        rig: HmcRigConfig | None = None,
        dome_size: int = 512,
        ctx=None,
        look: StudioLook | None = None,
    ):
        import moderngl

        params = make_identity(identity) if isinstance(identity, str) else identity
        self.head = head = HeadModel(params)
        self.rig_config = rig = rig or HmcRigConfig()
        self.session = HmcSession.sample(session, rig)
        self.cameras = hmc_cameras(head, rig, self.session)
        self.dome_size = dome_size
        self._owns_ctx = ctx is None
        self.ctx = ctx = create_context(ctx)
        _make_current(ctx)
        self._moderngl = moderngl
        self.albedo, self.aux = paint_face(head)
        self.eye_texture = paint_eyeball(head)
        self.prog = ctx.program(vertex_shader=_VS, fragment_shader=_FS)
        self.tex_albedo = self._texture(self.albedo)
        self.tex_aux = self._texture(self.aux)
        self.tex_eye = self._texture(self.eye_texture)
        # Face + mouth interior: positions and normals change per frame, UVs are fixed.
        V = head.num_vertices
        self.vbo_pos = ctx.buffer(reserve=V * 12)
        self.vbo_nrm = ctx.buffer(reserve=V * 12)
        self.vbo_uv = ctx.buffer(head.uvs.tobytes())
        self._normals = VertexNormals(head.triangles, V)
        self.ibo_all = ctx.buffer(head.triangles.tobytes())
        self.vao_all = self._vao(self.vbo_pos, self.vbo_nrm, self.vbo_uv, self.ibo_all)
        # Eyeballs.
        self._eye_local, self._eye_nrm_local, eye_uv, eye_tris = eyeball_mesh(head.eye_radius)
        n_eye = len(self._eye_local)
        self.vbo_eye_pos = ctx.buffer(reserve=2 * n_eye * 12)
        self.vbo_eye_nrm = ctx.buffer(reserve=2 * n_eye * 12)
        self.vbo_eye_uv = ctx.buffer(np.concatenate([eye_uv, eye_uv]).tobytes())
        self._eye_tris = eye_tris
        self.ibo_eyes = ctx.buffer(np.concatenate([eye_tris, eye_tris + n_eye]).astype(np.uint32).tobytes())
        self.vao_eyes = self._vao(self.vbo_eye_pos, self.vbo_eye_nrm, self.vbo_eye_uv, self.ibo_eyes)
        # Per-HMC-view draw lists: only the triangles that view can see.
        self._hmc_vaos = []
        for v, cam in enumerate(self.cameras):
            tris = self._visible_triangles(cam)
            ibo = ctx.buffer(tris.astype(np.uint32).tobytes())
            eye_ibo = None
            if v < 2:
                eye_ibo = ctx.buffer((eye_tris + v * n_eye).astype(np.uint32).tobytes())
            self._hmc_vaos.append(
                (
                    self._vao(self.vbo_pos, self.vbo_nrm, self.vbo_uv, ibo),
                    None if eye_ibo is None else self._vao(self.vbo_eye_pos, self.vbo_eye_nrm, self.vbo_eye_uv, eye_ibo),
                )
            )
        self._led_distance = [float(np.linalg.norm(c.centre - t)) for c, t in zip(self.cameras, self._view_targets())]
        S = rig.size
        self.fbo_hmc = ctx.framebuffer(
            color_attachments=[ctx.renderbuffer((3 * S, S), components=1)],
            depth_attachment=ctx.depth_renderbuffer((3 * S, S)),
        )
        self.fbo_dome = ctx.framebuffer(
            color_attachments=[ctx.renderbuffer((dome_size, dome_size), components=4)],
            depth_attachment=ctx.depth_renderbuffer((dome_size, dome_size)),
        )
        T = self.albedo.shape[0]
        self.fbo_uv = ctx.framebuffer(color_attachments=[ctx.renderbuffer((T, T), components=4, dtype="f4")])
        # Face UV map of a colour render: shares the dome's depth buffer, never clears or writes it.
        self.prog_uvmap = ctx.program(vertex_shader=_VS_UV, fragment_shader=_FS_UV)
        self.vao_uvmap = ctx.vertex_array(self.prog_uvmap, [(self.vbo_pos, "3f", "in_pos"), (self.vbo_uv, "2f", "in_uv")],
                                          index_buffer=self.ibo_all, index_element_size=4)
        self.fbo_uvmap = ctx.framebuffer(
            color_attachments=[ctx.renderbuffer((dome_size, dome_size), components=4, dtype="f4")],
            depth_attachment=self.fbo_dome.depth_attachment,
        )
        self.fbo_uvmap.depth_mask = False
        self._state_key = None
        self.state: HeadState | None = None
        self.normals: np.ndarray | None = None
        """Vertex normals (V, 3) of the current pose's face mesh."""
        self.prog["u_albedo"] = 0
        self.prog["u_aux"] = 1
        self.prog["u_shininess"] = params.shininess
        self.prog["u_specular"] = params.specular
        self.prog["u_noise_sigma"] = rig.noise_sigma
        self.look = look = DEFAULT_LOOK if look is None else look
        """How the colour cameras render (:class:`capture.look.StudioLook`)."""
        self._shading = None
        if not look.is_plain:
            from .shading import RealisticShading

            self._shading = RealisticShading(self, look)

    # ------------------------------------------------------------------ setup helpers
    def _texture(self, img: np.ndarray):
        # 8-bit texels: llvmpipe filters them several times faster than float32 ones.
        h, w, c = img.shape
        texels = np.clip(np.rint(np.asarray(img, np.float32) * 255.0), 0, 255).astype(np.uint8)
        tex = self.ctx.texture((w, h), c, np.ascontiguousarray(texels).tobytes())
        tex.filter = (self._moderngl.LINEAR_MIPMAP_LINEAR, self._moderngl.LINEAR)
        tex.build_mipmaps()
        tex.repeat_x = False
        tex.repeat_y = False
        return tex

    def _vao(self, pos, nrm, uv, ibo):
        return self.ctx.vertex_array(
            self.prog, [(pos, "3f", "in_pos"), (nrm, "3f", "in_normal"), (uv, "2f", "in_uv")], index_buffer=ibo, index_element_size=4
        )

    def _view_targets(self):
        h = self.head
        front = np.array([0, 0, h.eye_radius])
        return [h.eye_centres[0] + front, h.eye_centres[1] + front, h.mouth_centre()]

    def _visible_triangles(self, cam: Camera) -> np.ndarray:
        """Triangles ``cam`` can see over the range of expressions: inside the image (small
        margin) and facing the camera in some pose. Mouth-interior triangles, seen from
        inside, are kept whenever they are in the image."""
        tris = self.head.triangles
        interior = tris[:, 0] >= self.head.num_grid_vertices
        keep = np.zeros(len(tris), bool)
        for expr, gz in NAMED_POSES.values():
            verts = self.head.state(expr, gz).vertices
            uv, z = cam.project(verts)
            m = 0.08 * cam.width
            inside = (z > cam.near) & (uv[:, 0] > -m) & (uv[:, 0] < cam.width + m) & (uv[:, 1] > -m) & (uv[:, 1] < cam.height + m)
            a, b, c = verts[tris[:, 0]], verts[tris[:, 1]], verts[tris[:, 2]]
            facing = np.einsum("ij,ij->i", np.cross(b - a, c - a), cam.centre - (a + b + c) / 3) > 0
            keep |= inside[tris].any(1) & (facing | interior)
        return tris[keep]

    # ------------------------------------------------------------------ geometry
    def pose(self, expr: np.ndarray, gaze: np.ndarray) -> HeadState:
        """Compute and upload the geometry for (expr, gaze); cached for repeated renders."""
        key = (np.asarray(expr, np.float32).tobytes(), np.asarray(gaze, np.float32).tobytes())
        if key == self._state_key:
            return self.state
        _make_current(self.ctx)
        st = self.head.state(expr, gaze)
        nrm = self._normals(st.vertices)
        self.normals = nrm
        self.vbo_pos.write(st.vertices.tobytes())
        self.vbo_nrm.write(nrm.tobytes())
        ev, en = posed_eyeballs(self._eye_local, self._eye_nrm_local, self.head.eye_centres, st.eye_rotations)
        self.vbo_eye_pos.write(ev.tobytes())
        self.vbo_eye_nrm.write(en.tobytes())
        e = np.asarray(expr, np.float32)
        self.prog["u_brow_l"] = float(np.clip(e[INDEX["brow_raise_left"]], 0, 1))
        self.prog["u_brow_r"] = float(np.clip(e[INDEX["brow_raise_right"]], 0, 1))
        self._state_key, self.state = key, st
        if self._shading is not None:
            self._shading.invalidate(e, st.eye_rotations)
        return st

    def _draw(self, vao_face, vao_eyes):
        self.tex_albedo.use(0)
        self.tex_aux.use(1)
        self.prog["u_material"] = 0
        vao_face.render()
        if vao_eyes is not None:
            self.tex_eye.use(0)
            self.prog["u_material"] = 1
            vao_eyes.render()

    # ------------------------------------------------------------------ HMC
    def hmc_frame(self, expr, gaze, *, t: float = 0.0, frame_index: int = 0, ground_truth: bool = True):
        """Render the three HMC views for (expr, gaze) at session time ``t`` seconds.

        Returns ``views`` (3, S, S) uint8 and, if ``ground_truth``, a dict with
        ``expression`` (E,), ``gaze`` (2, 2), ``keypoints`` (3, 9, 2) pixel (x, y),
        ``keypoints_visible`` (3, 9) bool and ``vertices`` (V, 3) float32.
        """
        mgl = self._moderngl
        _make_current(self.ctx)
        st = self.pose(expr, gaze)
        S = self.rig_config.size
        ctx = self.ctx
        self.fbo_hmc.use()
        ctx.enable(mgl.DEPTH_TEST)
        ctx.disable(mgl.CULL_FACE)
        self.fbo_hmc.clear(0.012, 0.012, 0.012, 1.0, depth=1.0)
        p = self.prog
        p["u_mode"] = 1
        p["u_uv_space"] = 0
        p["u_exposure"] = float(self.session.gain(t))
        p["u_seed"] = float((frame_index * 0.6180339887 + self.session.seed * 0.137) % 1.0)
        p["u_size"] = float(S)
        for v, cam in enumerate(self.cameras):
            ctx.viewport = (v * S, 0, S, S)
            p["u_mvp"].write(_mat(cam.mvp()))
            p["u_cam_pos"] = tuple(float(x) for x in cam.centre)
            p["u_intr"] = (cam.fx, cam.fy, cam.cx, cam.cy)
            p["u_origin"] = (float(v * S), 0.0)
            p["u_dref"] = self._led_distance[v]
            self._draw(*self._hmc_vaos[v])
        raw = np.frombuffer(self.fbo_hmc.read(components=1, alignment=1), np.uint8).reshape(S, 3 * S)[::-1]
        views = np.ascontiguousarray(raw.reshape(S, 3, S).transpose(1, 0, 2))
        if not ground_truth:
            return views, None
        kp3 = self.head.keypoints_3d(st)
        kps = np.zeros((3, 9, 2), np.float32)
        vis = np.zeros((3, 9), bool)
        for v, cam in enumerate(self.cameras):
            uv, z = cam.project(kp3[v])
            kps[v] = uv
            xi, yi = np.floor(uv[:, 0]).astype(int), np.floor(uv[:, 1]).astype(int)
            inside = (xi >= 0) & (xi < S) & (yi >= 0) & (yi < S) & (z > 0)
            for k in np.flatnonzero(inside):
                # One depth texel per keypoint: far cheaper than reading the whole depth buffer.
                raw_d = self.fbo_hmc.read(viewport=(v * S + xi[k], S - 1 - yi[k], 1, 1), components=1, attachment=-1, dtype="f4")
                zb = cam.depth_from_buffer(np.frombuffer(raw_d, np.float32)[0])
                vis[v, k] = z[k] <= zb + 0.003  # dm: 0.3 mm, below the lid-to-eyeball gap
        gt = {
            "expression": np.asarray(expr, np.float32),
            "gaze": np.asarray(gaze, np.float32),
            "keypoints": kps,
            "keypoints_visible": vis,
            "vertices": st.vertices,
        }
        return views, gt

    # ------------------------------------------------------------------ colour
    def render_view(self, expr, gaze, view="front", *, size: int | None = None, with_alpha: bool = False) -> np.ndarray:
        """Colour render (N, N, 3) uint8 of the head seen from ``view`` (name or direction).

        With ``with_alpha`` returns (N, N, 4), alpha 255 where the head covers the pixel (under a realistic look
        also its hair, ears, neck and shoulders), 0 elsewhere; the background is black.
        """
        mgl = self._moderngl
        _make_current(self.ctx)
        self.pose(expr, gaze)
        d = view_direction(view)
        cam = dome_camera(d, size=self.dome_size)
        ctx = self.ctx
        self.fbo_dome.use()
        ctx.viewport = (0, 0, self.dome_size, self.dome_size)
        ctx.enable(mgl.DEPTH_TEST)
        ctx.disable(mgl.CULL_FACE)
        self.fbo_dome.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)
        if self._shading is not None:
            self._shading.draw_view(cam.mvp(), d)
        else:
            p = self.prog
            p["u_mode"] = 0
            p["u_uv_space"] = 0
            p["u_view_dir"] = tuple(float(x) for x in d)
            p["u_mvp"].write(_mat(cam.mvp()))
            self._draw(self.vao_all, self.vao_eyes)
        N = self.dome_size
        img = np.frombuffer(self.fbo_dome.read(components=4, alignment=1), np.uint8).reshape(N, N, 4)[::-1]
        img = np.ascontiguousarray(img if with_alpha else img[..., :3])
        if size is not None and size != N:
            import cv2

            img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
        return img

    def render_uv(self, expr, gaze, view="front") -> np.ndarray:
        """Where the face mesh is what :meth:`render_view` shows: (N, N, 3) float32 (u, v, 1) there, zeros where
        the eyeballs, hair, ears, neck, shoulders or the background are (N = ``dome_size``, top row first).

        Sampling ``render_texture(expr, gaze, view)`` at these (u, v) gives the render's colour on those pixels.
        """
        mgl = self._moderngl
        self.render_view(expr, gaze, view)  # leaves the scene's depth in the shared depth buffer
        cam = dome_camera(view_direction(view), size=self.dome_size)
        ctx = self.ctx
        self.fbo_uvmap.use()
        ctx.viewport = (0, 0, self.dome_size, self.dome_size)
        self.fbo_uvmap.clear(0.0, 0.0, 0.0, 0.0)  # colour only: the depth mask is off
        ctx.enable(mgl.DEPTH_TEST)
        ctx.disable(mgl.CULL_FACE)
        ctx.depth_func = "<="
        self.prog_uvmap["u_mvp"].write(_mat(cam.mvp()))
        self.vao_uvmap.render()
        ctx.depth_func = "<"
        N = self.dome_size
        out = np.frombuffer(self.fbo_uvmap.read(components=4, dtype="f4", alignment=1), np.float32).reshape(N, N, 4)[::-1]
        return np.ascontiguousarray(out[..., :3])

    def dome_camera(self, view="front") -> Camera:
        return dome_camera(view_direction(view), size=self.dome_size)

    def render_texture(self, expr, gaze, view="front") -> tuple[np.ndarray, np.ndarray]:
        """The view-dependent surface colour baked into UV space.

        Returns ``texture`` (T, T, 3) float32 (row 0 = v 0) and ``coverage`` (T, T) bool. Under a realistic look
        the colour includes shadows, occlusion and scattering (see the module docstring for hair and body).
        """
        mgl = self._moderngl
        _make_current(self.ctx)
        self.pose(expr, gaze)
        d = view_direction(view)
        T = self.albedo.shape[0]
        ctx = self.ctx
        self.fbo_uv.use()
        ctx.viewport = (0, 0, T, T)
        ctx.disable(mgl.DEPTH_TEST)
        ctx.disable(mgl.CULL_FACE)
        self.fbo_uv.clear(0.0, 0.0, 0.0, 0.0)
        if self._shading is not None:
            self._shading.draw_texture(d)
        else:
            p = self.prog
            p["u_mode"] = 0
            p["u_uv_space"] = 1
            p["u_view_dir"] = tuple(float(x) for x in d)
            self.tex_albedo.use(0)
            self.tex_aux.use(1)
            p["u_material"] = 0
            self.vao_all.render()
            p["u_uv_space"] = 0
        out = np.frombuffer(self.fbo_uv.read(components=4, dtype="f4", alignment=1), np.float32).reshape(T, T, 4)
        return np.ascontiguousarray(out[..., :3]), out[..., 3] > 0.5

    def release(self):
        """Free the GL context if this studio created it (a shared context is left to its owner); a realistic
        look's GL objects are freed either way."""
        if self._shading is not None:
            _make_current(self.ctx)
            self._shading.release()
            self._shading = None
        if self._owns_ctx:
            self.ctx.release()
            self._owns_ctx = False
