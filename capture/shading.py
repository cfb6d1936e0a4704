"""Realistic colour shading for the studio (:class:`capture.look.StudioLook`): GL passes and their programs.

Everything here serves the colour cameras; the HMC frames use the studio's own program and never see it.

**Per pose** (lazily, on the first colour render after :meth:`capture.studio.Studio.pose`):

- *Key-light shadow map*: face mesh, ears and a coarse hair caster drawn depth-only from the key light
  (orthographic, ``look.shadow_map_size``²). Colour passes filter it with PCF (soft shadows).
- *Ambient occlusion per vertex*, expression-dependent: a linear blend of AO fields precomputed at start-up
  for the neutral face and for each expression parameter at full strength (``ao = ao₀ + Σ eᵢ (aoᵢ - ao₀)``),
  a few multiply-adds per vertex. The eyeballs' AO is precomputed on a grid of directions fixed in the eye
  socket and looked up for each posed eyeball vertex, so it stays put while the eye turns under the lids.

**At start-up**: the AO fields come from depth maps rendered from ``look.ao_directions`` directions spread
over the sphere (one atlas tile each; occluders: the face at that pose, plus the rigid hair, ears and body in
an atlas of their own); a full-screen pass over a texture of sample points averages each point's
cosine-weighted visibility. Hair, ear and body vertices get their AO (and the hair its key-light visibility)
the same way, once.

**Colour programs** are specialised per material and per look at compile time (``#define``): llvmpipe runs
every branch of a shader, so a switch that is off must not be in the code at all. The face, eyeball and ear
programs shade per fragment; the body and hair programs light per vertex (Gouraud) and keep only their
texture work (knit, strand alpha) per fragment.

The face's shading depends only on surface position, normal, UV, per-vertex AO and the directional viewer,
so the UV-space bake (``render_texture``) holds the colour ``render_view`` shows where the face is visible.

Lights (head frame): the studio's key and fill, a hemispherical ambient (bright ceiling, dark floor) and a
rim light from above-behind on the side opposite the key.
"""
from __future__ import annotations

import numpy as np

from .body import Mesh, bust_mesh, cloth_colour, ear_mesh
from .expression import NUM_EXPRESSIONS
from .hair import hair_shells, hair_style, strand_texture
from .look import StudioLook

KEY_DIR = np.array([0.45, 0.55, 0.75]) / np.linalg.norm([0.45, 0.55, 0.75])
FILL_DIR = np.array([-0.65, 0.05, 0.55]) / np.linalg.norm([-0.65, 0.05, 0.55])
RIM_DIR = np.array([-0.40, 0.55, -0.73]) / np.linalg.norm([-0.40, 0.55, -0.73])
SHADOW_CENTRE = np.array([0.0, -0.25, 0.1])  # the key light's map covers head, hair, ears and neck
SHADOW_RADIUS = 1.75
AO_TILE = 112
AO_CENTRE = np.array([0.0, -0.05, 0.1])
AO_RADIUS = 1.45
AO_EVAL_WIDTH = 256
EYE_GRID = (10, 24)  # eyeball AO grid: polar rings from the pupil x azimuth segments
EYE_GRID_MAX_POLAR = 1.35  # radians; the rest of the eyeball never shows

_LIGHTS = """
const vec3 KEY = vec3({key});
const vec3 FILL = vec3({fill});
const vec3 RIM = vec3({rim});
const vec2 POISSON[12] = vec2[](
    vec2(-0.326, -0.406), vec2(-0.840, -0.074), vec2(-0.696, 0.457), vec2(-0.203, 0.621),
    vec2(0.962, -0.195), vec2(0.473, -0.480), vec2(0.519, 0.767), vec2(0.185, -0.893),
    vec2(0.507, 0.064), vec2(0.896, 0.412), vec2(-0.322, -0.933), vec2(-0.792, -0.598));
uniform sampler2DShadow u_shadow;  // key light depth
uniform mat4 u_shadow_mat;         // head frame -> [0, 1]^3 of the shadow map
uniform mat3 u_shadow_nrm;         // inverse transpose of its 3x3 part: normals into map units
uniform float u_shadow_radius;     // PCF radius in shadow-map uv
uniform float u_shadow_texel;      // dm per shadow texel
uniform float u_shadow_bias;       // depth (map units) of one PCF radius

vec3 sky(vec3 d) {{   // studio surroundings seen along d: bright ceiling, dark floor
    return mix(vec3(0.15, 0.145, 0.14), vec3(0.36, 0.36, 0.37), smoothstep(-0.5, 0.7, d.y));
}}

float key_visibility(vec3 p, vec3 n, int taps) {{
#ifdef LOOK_SHADOWS
    // Percentage-closer filtering over a disc of u_shadow_radius (the key light is a softbox: soft edges). Each
    // tap compares against the receiver's tangent plane (receiver-plane depth bias), so a sloped surface does
    // not shadow itself across the kernel.
    vec3 nm = u_shadow_nrm * n;                                       // normal in map units
    vec2 grad = -nm.xy / max(abs(nm.z), 0.25) * sign(nm.z + 1e-6);   // d(depth)/d(uv) along the surface
    vec4 s = u_shadow_mat * vec4(p + n * (1.5 * u_shadow_texel), 1.0);
    float ref = s.z - u_shadow_bias;
    float vis = 0.0;
    for (int i = 0; i < taps; i++) {{
        vec2 o = POISSON[i] * u_shadow_radius;
        vis += texture(u_shadow, vec3(s.xy + o, ref + dot(grad, o)));
    }}
    return vis / float(taps);
#else
    return 1.0;
#endif
}}
"""

_VS_SURFACE = """
uniform mat4 u_mvp;
uniform vec3 u_view_dir;
uniform int u_uv_space;   // 1: place vertices at their UV (texture baking)
in vec3 in_pos;
in vec3 in_normal;
in vec2 in_uv;
in vec4 in_attr;          // face: (thin, cavity, -, -); ears: (thin, -, -, -)
in vec2 in_ao;            // (ambient occlusion, -)
out vec3 v_pos;
out vec3 v_normal;
out vec2 v_uv;
out vec4 v_attr;
out float v_ao;
out float v_vis;
void main() {
    v_pos = in_pos;
    v_normal = in_normal;
    v_uv = in_uv;
    v_attr = in_attr;
    v_ao = in_ao.x;
#ifdef VERTEX_SHADOW
    // Skin: the key light's PCF visibility per vertex, interpolated (soft shadows at a fraction of the cost).
    // The normal faces the viewer as in the fragment shader (the mouth interior is seen from its inside).
    vec3 nv = normalize(in_normal);
    if (dot(nv, u_view_dir) < 0.0) nv = -nv;
    v_vis = mix(1.0, key_visibility(in_pos, nv, 12), smoothstep(0.0, 0.25, dot(nv, KEY)));
#else
    v_vis = 1.0;
#endif
    if (u_uv_space == 1) gl_Position = vec4(in_uv * 2.0 - 1.0, 0.0, 1.0);
    else gl_Position = u_mvp * vec4(in_pos, 1.0);
}
"""

_FS_SURFACE = """
uniform sampler2D u_albedo;        // face: RGB albedo | eye: RGB + NIR
uniform sampler2D u_aux;           // face: spec, wrinkle L, wrinkle R, NIR
uniform sampler2D u_pores;         // face: pore map (R)
uniform vec3 u_view_dir;
uniform float u_brow_l;
uniform float u_brow_r;
uniform float u_shininess;
uniform float u_specular;
uniform vec3 u_skin;
uniform float u_rim;
uniform float u_ao_strength;
in vec3 v_pos;
in vec3 v_normal;
in vec2 v_uv;
in vec4 v_attr;
in float v_ao;
in float v_vis;
out vec4 f_color;

float softbox(vec3 R, vec3 L, float hw, float hh) {   // a rectangular light seen along R
    vec3 bx = normalize(cross(vec3(0.0, 1.0, 0.0), L));
    vec3 by = cross(L, bx);
    float c = max(dot(R, L), 1e-3);
    vec2 q = vec2(dot(R, bx), dot(R, by)) / c;
    return step(0.0, dot(R, L)) * smoothstep(hw, hw * 0.75, abs(q.x)) * smoothstep(hh, hh * 0.75, abs(q.y));
}

void main() {
    vec3 V = normalize(u_view_dir);
    vec3 n = normalize(v_normal);
    if (dot(n, V) < 0.0) n = -n;
    float ao = mix(1.0, clamp(v_ao, 0.0, 1.0), u_ao_strength);
#if defined(MAT_FACE)
    vec4 aux = texture(u_aux, v_uv);
    float wr = clamp(aux.g * u_brow_l + aux.b * u_brow_r, 0.0, 1.0);
    vec3 albedo = texture(u_albedo, v_uv).rgb * (1.0 - 0.45 * wr);
    float spec_k = u_specular * aux.r;
    float shin = u_shininess;
    float thin = v_attr.x;
    ao *= mix(1.0, v_attr.y, u_ao_strength);
    float pores = texture(u_pores, v_uv).r;
#elif defined(MAT_EYE)
    vec3 albedo = texture(u_albedo, v_uv).rgb;
    float spec_k = 0.9;
    float shin = 90.0;
    float thin = 0.0;
    float pores = 0.5;
#else  // MAT_EARS
    vec3 albedo = 0.9 * u_skin * mix(vec3(1.0), vec3(1.0, 0.93, 0.92), 0.5 * v_attr.x);  // ears: a shade deeper
    ao *= v_attr.y;
    float spec_k = u_specular * 0.6;
    float shin = u_shininess * 0.8;
    float thin = v_attr.x;
    float pores = 0.5;
#endif
    float ndl = dot(n, KEY);
    // Cast shadows fade out where the key light grazes the surface: there a small bump would cast a long
    // streak that a real (large, soft) key light blurs away.
#ifdef VERTEX_SHADOW
    float vis = clamp(v_vis, 0.0, 1.0);   // interpolation can overshoot [0, 1] by a rounding error: sqrt below
#else
    float vis = mix(1.0, key_visibility(v_pos, n, PCF_TAPS), smoothstep(0.0, 0.25, ndl));
#endif
#if defined(LOOK_SSS) && !defined(MAT_EYE)
    // Skin: wrap lighting that wraps further in red, red-shifted shadow edges, occlusion that lets red through.
    const vec3 W = vec3(0.32, 0.17, 0.13);
    vec3 dk = clamp((vec3(ndl) + W) / (1.0 + W), 0.0, 1.0);
    float sv = sqrt(vis), sa = sqrt(ao);
    vec3 vis3 = vec3(mix(sv, vis, 0.25), mix(sv, vis, 0.7), vis);   // ~ vis^(0.6, 0.85, 1)
    vec3 df = clamp((vec3(dot(n, FILL)) + W) / (1.0 + W), 0.0, 1.0);
    vec3 ao3 = vec3(mix(sa, ao, 0.5), mix(sa, ao, 0.8), ao);         // ~ ao^(0.7, 0.9, 1)
    vec3 light = 0.74 * dk * vis3 * vec3(1.0, 0.97, 0.93) + 0.26 * df * ao3 * vec3(0.93, 0.96, 1.0) + sky(n) * ao3;
    // Translucency: thin skin (ears, nose wings) glows red when lit from behind.
    float back = clamp(0.22 * clamp(0.25 - ndl, 0.0, 1.0) * vis
                       + 0.3 * u_rim * clamp(0.3 - dot(n, RIM), 0.0, 1.3) * ao, 0.0, 1.0);
    vec3 col = albedo * (light + thin * back * vec3(0.95, 0.32, 0.18));
#else
    vec3 col = albedo * (sky(n) * ao + 0.72 * max(ndl, 0.0) * vis + 0.28 * max(dot(n, FILL), 0.0) * ao);
#endif
#ifdef LOOK_RIM
    float g = 1.0 - max(dot(n, V), 0.0);
    col += u_rim * albedo * max(dot(n, RIM), 0.0) * (0.3 + 0.9 * g * sqrt(g)) * ao;
#endif
    vec3 H = normalize(KEY + V);
    float nh = max(dot(n, H), 0.0);
#if defined(MAT_EYE) && defined(LOOK_EYEFX)
    // Wet cornea: Fresnel-weighted studio reflection, a sharp catchlight of the key's softbox and a dimmer one of
    // the fill; both follow the view. The lids' occlusion and shadow darken the eyeball near them.
    vec3 R = reflect(-V, n);
    float F = 0.02 + 0.98 * pow(1.0 - max(dot(n, V), 0.0), 5.0);
    col *= 0.55 + 0.45 * ao;
    col += (0.05 + 1.5 * F) * sky(R) * ao + 1.1 * softbox(R, KEY, 0.24, 0.17) * vis + 0.35 * softbox(R, FILL, 0.30, 0.28) * ao;
#elif defined(LOOK_SPEC2) && !defined(MAT_EYE)
    // Skin: two Fresnel-weighted lobes broken up by pores, and a faint grazing sheen of the studio.
    float x = 1.0 - max(dot(V, H), 0.0), x2 = x * x;
    float F = 0.028 + 0.972 * x2 * x2 * x;
    float l1 = pow(nh, shin * 0.5);
    float l2 = l1 * l1;
    l2 *= l2;
    float lobes = 0.6 * l1 + 1.0 * l2 * l1;                          // exponents shin / 2 and 5 shin / 2
    float s = spec_k * lobes * (0.5 + 4.0 * F) * (0.3 + 1.4 * pores) * vis * smoothstep(-0.05, 0.3, ndl);
    float y = 1.0 - max(dot(n, V), 0.0), y2 = y * y;
    float Fv = y2 * y2 * y;
    col += s * vec3(1.0, 0.97, 0.92) + (0.6 * spec_k * Fv * ao) * sky(reflect(-V, n));
#else
    col += spec_k * pow(nh, shin) * vis * vec3(1.0, 0.97, 0.92);
#endif
    // Soft shoulder instead of hard clipping for the few hot highlights.
    col = mix(col, 1.0 - 0.25 * exp(-4.0 * (col - 0.75)), step(vec3(0.75), col));
    f_color = vec4(col, 1.0);
}
"""

_VS_BODY = """
uniform mat4 u_mvp;
uniform vec3 u_view_dir;
uniform vec3 u_skin;
uniform vec3 u_cloth;
uniform float u_rim;
uniform float u_ao_strength;
in vec3 in_pos;
in vec3 in_normal;
in vec2 in_uv;
in vec4 in_attr;          // (-, -, signed distance to the neckline in dm (> 0 on the cloth), -)
in vec2 in_ao;
out vec3 v_light_skin;
out vec3 v_light_cloth;
out vec2 v_uv;
out float v_line;
out float v_y;
void main() {
    vec3 n = normalize(in_normal);
    vec3 V = normalize(u_view_dir);
    float ao = mix(1.0, in_ao.x, 0.6 * u_ao_strength);   // coarse maps on a large smooth surface: a lighter hand
    float ndl = dot(n, KEY);
    float vis = mix(1.0, key_visibility(in_pos, n, 12), smoothstep(0.0, 0.25, ndl));
    float fill = max(dot(n, FILL), 0.0);
    vec3 rim = vec3(0.0);
#ifdef LOOK_RIM
    rim = vec3(u_rim * max(dot(n, RIM), 0.0) * (0.3 + 0.9 * pow(1.0 - max(dot(n, V), 0.0), 1.5)) * ao);
#endif
    // Cloth: matte, a little sheen at grazing angles.
    v_light_cloth = 0.74 * max(ndl, 0.0) * vis + 0.26 * fill * ao + sky(n) * ao + rim
                  + vec3(0.05 * pow(1.0 - max(dot(n, V), 0.0), 3.0) * ao);
#ifdef LOOK_SSS
    const vec3 W = vec3(0.32, 0.17, 0.13);
    vec3 dk = clamp((vec3(ndl) + W) / (1.0 + W), 0.0, 1.0);
    vec3 ao3 = vec3(pow(ao, 0.7), pow(ao, 0.9), ao);
    v_light_skin = 0.74 * dk * vec3(pow(vis, 0.6), pow(vis, 0.85), vis) + 0.26 * fill * ao3 + sky(n) * ao3 + rim;
#else
    v_light_skin = 0.72 * max(ndl, 0.0) * vis + 0.28 * fill * ao + sky(n) * ao + rim;
#endif
    v_uv = in_uv;
    v_line = in_attr.z;
    v_y = in_pos.y;
    gl_Position = u_mvp * vec4(in_pos, 1.0);
}
"""

_FS_BODY = """
uniform vec3 u_skin;
uniform vec3 u_cloth;
in vec3 v_light_skin;
in vec3 v_light_cloth;
in vec2 v_uv;
in float v_line;
in float v_y;
out vec4 f_color;
void main() {
    float on_cloth = smoothstep(-0.004, 0.004, v_line);
    float knit = 0.5 + 0.5 * sin(v_uv.x * 1300.0) * sin(v_y * 260.0 + 2.0 * sin(v_uv.x * 60.0));
    float band = exp(-0.5 * pow((v_line - 0.03) / 0.022, 2.0));
    vec3 cloth = u_cloth * (0.9 + 0.1 * knit) * (1.0 - 0.15 * band * (0.5 + 0.5 * sin(v_uv.x * 900.0)));
    vec3 col = mix(u_skin * v_light_skin, cloth * v_light_cloth, on_cloth);
    f_color = vec4(col, 1.0);
}
"""

_VS_HAIR = """
uniform mat4 u_mvp;
uniform vec3 u_view_dir;
uniform vec3 u_hair;
uniform float u_sheen;
uniform float u_rim;
uniform float u_ao_strength;
in vec3 in_pos;
in vec3 in_normal;
in vec2 in_uv;
in vec4 in_attr;          // (shell height 0..1, edge fade 0..1, -, -)
in vec3 in_tangent;
in vec2 in_ao;            // (ambient occlusion, key light visibility)
out vec4 v_uv_attr;       // strand uv, shell height, edge fade
out vec3 v_diffuse;
out vec3 v_spec;
float kk(vec3 T, vec3 H, float e) { float t = dot(T, H); return pow(sqrt(max(1.0 - t * t, 0.0)), e); }
void main() {
    vec3 V = normalize(u_view_dir);
    vec3 n = normalize(in_normal);
    vec3 T = normalize(in_tangent);
    float h = in_attr.x;
    float ao = mix(1.0, in_ao.x, u_ao_strength);
    float vis = in_ao.y;
    float inner = mix(0.4, 1.0, smoothstep(0.0, 1.0, h));   // light scattered away by the hair above
    float ndl = dot(n, KEY);
    float tl = dot(T, KEY);
    float kd = mix(clamp(ndl * 0.5 + 0.5, 0.0, 1.0), sqrt(max(1.0 - tl * tl, 0.0)), 0.35);
    v_diffuse = u_hair * inner * (0.75 * kd * mix(0.25, 1.0, vis) + 0.22 * max(dot(n, FILL), 0.0) * ao + sky(n) * ao * 1.1);
    // Kajiya-Kay: a whitish primary lobe shifted towards the tips and a hair-coloured secondary towards the roots.
    vec3 H = normalize(KEY + V);
    float lit = vis * smoothstep(-0.25, 0.3, ndl) * inner * u_sheen;
    v_spec = lit * (vec3(1.0, 0.95, 0.88) * 0.25 * kk(normalize(T - 0.12 * n), H, 80.0)
                    + (u_hair * 1.6 + 0.04) * 0.7 * kk(normalize(T + 0.15 * n), H, 20.0));
#ifdef LOOK_RIM
    float r = max(dot(n, RIM), 0.0) * pow(1.0 - max(dot(n, V), 0.0), 1.2) * ao;
    v_diffuse += u_rim * (u_hair * 0.9 + 0.06) * r;
    v_spec += u_rim * 0.2 * r * kk(T, normalize(RIM + V), 30.0);
#endif
    v_uv_attr = vec4(in_uv, in_attr.xy);
    gl_Position = u_mvp * vec4(in_pos, 1.0);
}
"""

_FS_HAIR = """
uniform sampler2D u_strands;   // R density, G brightness, B highlight strength, A clump shade
uniform vec2 u_repeat;         // strand texture repeats (around, along)
in vec4 v_uv_attr;
in vec3 v_diffuse;
in vec3 v_spec;
out vec4 f_color;
void main() {
    float h = v_uv_attr.z, edge = v_uv_attr.w;
    vec4 s = texture(u_strands, v_uv_attr.xy * u_repeat + vec2(h * 0.013, 0.0));
    // A shell keeps a fragment where the strands reach its height; near the hair's edge they thin out.
    float need = (h <= 0.0) ? (1.0 - edge) * 0.9 : mix(0.12, 0.95, h * sqrt(h)) + (1.0 - edge) * 0.45;
    if (s.r < need) discard;
    vec3 col = v_diffuse * (0.7 + 0.5 * s.g) * (0.75 + 0.5 * s.a) + v_spec * (0.3 + 1.2 * s.b);
    col = mix(col, 1.0 - 0.25 * exp(-4.0 * (col - 0.75)), step(vec3(0.75), col));
    f_color = vec4(col, 1.0);
}
"""

_VS_DEPTH = """#version 330
uniform mat4 u_mvp;
in vec3 in_pos;
void main() { gl_Position = u_mvp * vec4(in_pos, 1.0); }
"""

_FS_DEPTH = """#version 330
void main() {}
"""

_VS_QUAD = """#version 330
in vec2 in_xy;
void main() { gl_Position = vec4(in_xy, 0.0, 1.0); }
"""

_FS_AO_EVAL = """#version 330
#define K {K}
uniform sampler2D u_points;          // RGB: sample position (head frame)
uniform sampler2D u_normals;         // RGB: normal
uniform sampler2DShadow u_atlas_dyn;
uniform sampler2DShadow u_atlas_static;
uniform sampler2DShadow u_shadow;
uniform mat4 u_dir_mat[K];           // head frame -> tile [0, 1]^3
uniform vec3 u_dirs[K];
uniform vec2 u_tiles;                // tiles per row, rows
uniform float u_offset;              // dm: sample this far towards each direction
uniform float u_bias;
uniform mat4 u_shadow_mat;
uniform float u_shadow_texel;
out vec4 f_out;
const vec3 KEY = vec3({key});
void main() {{
    ivec2 px = ivec2(gl_FragCoord.xy);
    vec3 p = texelFetch(u_points, px, 0).xyz;
    vec3 n = normalize(texelFetch(u_normals, px, 0).xyz);
    float num_p = 0.0, den_p = 0.0, num_m = 0.0, den_m = 0.0;
    for (int k = 0; k < K; k++) {{
        vec3 d = u_dirs[k];
        vec4 s = u_dir_mat[k] * vec4(p + d * u_offset, 1.0);
        vec2 t = vec2(float(k % int(u_tiles.x)), float(k / int(u_tiles.x)));
        vec2 uv = (t + clamp(s.xy, 0.004, 0.996)) / u_tiles;
        float vis = texture(u_atlas_dyn, vec3(uv, s.z - u_bias)) * texture(u_atlas_static, vec3(uv, s.z - u_bias));
        float c = dot(n, d);
        float w = d.y > 0.0 ? 1.0 : 0.6;    // the studio floor is darker than its ceiling
        num_p += w * max(c, 0.0) * vis;  den_p += w * max(c, 0.0);
        num_m += w * max(-c, 0.0) * vis; den_m += w * max(-c, 0.0);
    }}
    // Two-sided: the mouth interior's normals may face away from the opening.
    float ao = max(num_p / max(den_p, 1e-4), num_m / max(den_m, 1e-4));
    vec4 s = u_shadow_mat * vec4(p + n * 2.0 * u_shadow_texel + KEY * 2.0 * u_shadow_texel, 1.0);
    float key = 0.0;
    for (int i = -1; i <= 1; i++)
        for (int j = -1; j <= 1; j++)
            key += texture(u_shadow, vec3(s.xy + vec2(i, j) * 2.0 * u_shadow_texel / {shadow_extent}, s.z - 0.001));
    f_out = vec4(ao, key / 9.0, 0.0, 1.0);
}}
"""


def fibonacci_sphere(k: int) -> np.ndarray:
    """(k, 3) unit directions spread evenly over the sphere."""
    i = np.arange(k) + 0.5
    y = 1 - 2 * i / k
    r = np.sqrt(1 - y * y)
    a = np.pi * (1 + 5**0.5) * i
    return np.stack([r * np.cos(a), y, r * np.sin(a)], 1)


def ortho_towards(d: np.ndarray, centre: np.ndarray, radius: float, depth: float | None = None) -> np.ndarray:
    """(4, 4) matrix taking head-frame points to [0, 1]^3 of an orthographic map of a light in direction ``d``
    (unit, towards the light) covering a sphere of ``radius`` about ``centre``: x, y map coordinates, z depth
    (0 nearest the light)."""
    d = np.asarray(d, np.float64) / np.linalg.norm(d)
    up = np.array([0.0, 1.0, 0.0]) if abs(d[1]) < 0.95 else np.array([1.0, 0.0, 0.0])
    x = np.cross(up, d)
    x /= np.linalg.norm(x)
    y = np.cross(d, x)
    depth = depth or radius
    M = np.eye(4)
    M[0, :3], M[1, :3], M[2, :3] = x / (2 * radius), y / (2 * radius), -d / (2 * depth)
    M[:3, 3] = -M[:3, :3] @ centre + 0.5
    return M


def to_clip(M01: np.ndarray) -> np.ndarray:
    """A [0, 1]^3 map matrix as a GL clip-space matrix ([-1, 1]^3)."""
    S = np.diag([2.0, 2.0, 2.0, 1.0])
    S[:3, 3] = -1
    return S @ M01


def _mat(m: np.ndarray) -> bytes:
    return np.ascontiguousarray(np.asarray(m).T, np.float32).tobytes()


def face_detail(head) -> tuple[np.ndarray, np.ndarray]:
    """Per-vertex (thinness, cavity) of the face mesh (V,) each, from the canonical angles: thin skin (nose wings
    and tip, eyelids) lets light through; cavities (alar crease, mouth corners, lid crease, inner eye corner,
    nasolabial fold) hold fine occlusion the AO maps are too coarse for. Mouth-interior vertices: (0, 1)."""
    p = head.params
    th, ph = head.theta0, head.phi0
    ath = np.abs(th)
    g = lambda dx, dy, sx, sy: np.exp(-0.5 * ((dx / sx) ** 2 + (dy / sy) ** 2))  # noqa: E731
    tip_phi = p.mouth_phi + 0.16
    thin = 0.9 * g(ath - p.nose_width * 0.75, ph - tip_phi + 0.01, p.nose_width * 0.6, 0.06)
    thin += 0.5 * g(th, ph - tip_phi, 0.05, 0.07)
    thin += 0.3 * g(ath - p.eye_theta, ph - p.eye_phi, p.eye_half_width * 1.1, 0.09)
    cav = 1.0 - 0.35 * g(ath - p.nose_width * 1.05, ph - (tip_phi - 0.01), 0.035, 0.06)
    cav -= 0.30 * g(ath - p.mouth_half_width * 1.02, ph - p.mouth_phi, 0.035, 0.035)
    cav -= 0.22 * g(ath - p.eye_theta, ph - (p.eye_phi + 0.16), p.eye_half_width * 0.9, 0.03)
    cav -= 0.18 * g(ath - (p.eye_theta - p.eye_half_width * 0.9), ph - p.eye_phi, 0.05, 0.05)
    cav -= 0.15 * g(ath - (p.mouth_half_width + 0.08), ph - (p.mouth_phi + 0.1), 0.05, 0.1)
    n_int = head.num_vertices - head.num_grid_vertices
    thin = np.concatenate([np.clip(thin, 0, 1), np.zeros(n_int)])
    cav = np.concatenate([np.clip(cav, 0, 1), np.ones(n_int)])
    return thin.astype(np.float32), cav.astype(np.float32)


def skin_albedo(albedo: np.ndarray) -> tuple[float, float, float]:
    """The face texture's typical skin colour (median over the lower cheeks and jaw), for ears and neck so they
    match the face they join."""
    from . import head as H

    T = albedo.shape[0]
    r0 = int(T * (H.UV_MOUTH_STRIP + (1 - H.UV_MOUTH_STRIP) * 4 / (H.GRID_ROWS - 1)))
    r1 = int(T * (H.UV_MOUTH_STRIP + (1 - H.UV_MOUTH_STRIP) * 14 / (H.GRID_ROWS - 1)))
    patch = np.concatenate([albedo[r0:r1, int(T * 0.22):int(T * 0.36)], albedo[r0:r1, int(T * 0.64):int(T * 0.78)]], 1)
    return tuple(float(x) for x in np.median(patch.reshape(-1, 3), 0))


def pore_map(seed: int, size: int = 256) -> np.ndarray:
    """(T, T, 1) float32 pore / micro-roughness map in [0, 1] (modulates skin specular)."""
    from .texture import _noise

    rng = np.random.default_rng(seed * 3571 + 29)
    n = 0.5 + 0.3 * _noise(rng, (size, size), 1.0) + 0.15 * _noise(rng, (size, size), 3.0)
    return np.clip(n, 0, 1)[..., None].astype(np.float32)


def weld_pairs(head) -> tuple[np.ndarray, np.ndarray]:
    """Vertex index pairs (lower row, upper row) of the face grid's two slit rows (lips and lids), all columns."""
    from . import head as H

    C1 = H.GRID_COLS + 1
    cols = np.arange(C1)
    a = np.concatenate([H.ROW_LOWER_LIP * C1 + cols, H.ROW_LOWER_LID * C1 + cols])
    b = np.concatenate([H.ROW_UPPER_LIP * C1 + cols, H.ROW_UPPER_LID * C1 + cols])
    return a, b


def occluder_triangles(head) -> np.ndarray:
    """The face mesh with every other grid column (slit columns are even, so eyes and mouth stay open) plus the
    full mouth interior: about half the triangles, for the AO depth maps."""
    from . import head as H

    C1 = H.GRID_COLS + 1
    keep = []
    for r in range(H.GRID_ROWS - 1):
        if r in (H.ROW_LOWER_LIP, H.ROW_LOWER_LID):
            continue  # the slit rows (and the zero-area quads beside them) have no triangles
        for c in range(0, H.GRID_COLS, 2):
            a = r * C1 + c
            keep.append([a, a + 2, a + C1 + 2])
            keep.append([a, a + C1 + 2, a + C1])
    grid = np.array(keep, np.uint32)
    interior = head.triangles[head.triangles[:, 0] >= head.num_grid_vertices]
    return np.concatenate([grid, interior]).astype(np.uint32)


class RealisticShading:
    """GL resources and passes of a realistic :class:`StudioLook` for one :class:`capture.studio.Studio`.

    Created once with the studio. :meth:`invalidate` (from ``Studio.pose``) marks the pose changed;
    :meth:`draw_view` / :meth:`draw_texture` run the per-pose passes if needed, then the colour draws.
    """

    def __init__(self, studio, look: StudioLook):
        import moderngl

        self.studio = studio
        self.look = look
        self.ctx = ctx = studio.ctx
        self.mgl = moderngl
        head = studio.head
        p = head.params
        self._expr = np.zeros(NUM_EXPRESSIONS, np.float32)
        self._interior = np.arange(head.num_grid_vertices, head.num_vertices)
        self._weld = weld_pairs(head)
        self._eye_rot = np.repeat(np.eye(3, dtype=np.float32)[None], 2, 0)
        # ---- rigid extra geometry ----
        self.style = hair_style(head)
        flare = 6.0 if (look.hair and self.style.length > 0) else 24.0  # long hair lies over flattened ears
        self.ears = None
        if look.ears:
            self.ears = Mesh.concat([ear_mesh(head, 1.0, flare_deg=flare), ear_mesh(head, -1.0, flare_deg=flare)])
        self.body = bust_mesh(head) if look.body else None
        self.hair = hair_shells(head, self.style, look.hair_shells) if look.hair else None
        # ---- programs ----
        fmt = lambda v: ", ".join(f"{x:.6f}" for x in v)  # noqa: E731
        lights = _LIGHTS.format(key=fmt(KEY_DIR), fill=fmt(FILL_DIR), rim=fmt(RIM_DIR))
        defs = ["#define PCF_TAPS 6"]
        for flag, name in ((look.shadows, "SHADOWS"), (look.subsurface, "SSS"), (look.skin_specular, "SPEC2"),
                           (look.rim_light > 0, "RIM"), (look.eye_highlights, "EYEFX")):
            if flag:
                defs.append(f"#define LOOK_{name}")

        def program(vs, fs, material=None):
            head_src = "#version 330\n" + "\n".join(defs + ([f"#define {material}"] if material else [])) + "\n" + lights
            return ctx.program(vertex_shader=head_src + vs, fragment_shader=head_src + fs)

        self.prog_face = program(_VS_SURFACE, _FS_SURFACE, "MAT_FACE\n#define VERTEX_SHADOW")
        self.prog_eye = program(_VS_SURFACE, _FS_SURFACE, "MAT_EYE")
        self.prog_ears = program(_VS_SURFACE, _FS_SURFACE, "MAT_EARS\n#define VERTEX_SHADOW") if self.ears is not None else None
        self.prog_body = program(_VS_BODY, _FS_BODY) if self.body is not None else None
        self.prog_hair = program(_VS_HAIR, _FS_HAIR) if self.hair is not None else None
        self.prog_depth = ctx.program(vertex_shader=_VS_DEPTH, fragment_shader=_FS_DEPTH)
        self._colour_progs = [pr for pr in (self.prog_face, self.prog_eye, self.prog_ears, self.prog_body, self.prog_hair) if pr]
        # ---- textures and shadow map ----
        self.tex_pores = studio._texture(pore_map(p.seed, studio.albedo.shape[0]))
        self.tex_strands = None
        if self.hair is not None:
            self.tex_strands = studio._texture(strand_texture(self.style, p.seed))
            self.tex_strands.repeat_x = True
            # Bilinear only: the shells shade many fragments, and the strand scale is set for the dome's resolution.
            self.tex_strands.filter = (moderngl.LINEAR, moderngl.LINEAR)
        S = look.shadow_map_size
        self.shadow_tex = ctx.depth_texture((S, S))
        self.shadow_tex.repeat_x = self.shadow_tex.repeat_y = False
        self.fbo_shadow = ctx.framebuffer(depth_attachment=self.shadow_tex)
        self.shadow_mat = ortho_towards(KEY_DIR, SHADOW_CENTRE, SHADOW_RADIUS, depth=SHADOW_RADIUS * 1.5)
        self.shadow_texel = 2 * SHADOW_RADIUS / S
        # ---- vertex buffers ----
        V = head.num_vertices
        n_eye = len(studio._eye_local)
        self.vbo_face_ao = ctx.buffer(reserve=V * 8)
        self.vbo_face_nrm = ctx.buffer(reserve=V * 12)   # the studio's normals, welded across the slit rows
        self.vbo_eye_ao = ctx.buffer(reserve=2 * n_eye * 8)
        thin, cav = face_detail(head)
        face_attr = np.zeros((V, 4), np.float32)
        face_attr[:, 0], face_attr[:, 1] = thin, cav
        self.vbo_face_attr = ctx.buffer(face_attr.tobytes())
        sv, suv = studio.vbo_pos, studio.vbo_uv
        self.vao_face = ctx.vertex_array(self.prog_face, [(sv, "3f", "in_pos"), (self.vbo_face_nrm, "3f", "in_normal"),
                                                          (suv, "2f", "in_uv"), (self.vbo_face_attr, "4f", "in_attr"),
                                                          (self.vbo_face_ao, "2f", "in_ao")],
                                         index_buffer=studio.ibo_all, index_element_size=4, skip_errors=True)
        self.vao_eyes = ctx.vertex_array(self.prog_eye, [(studio.vbo_eye_pos, "3f", "in_pos"),
                                                         (studio.vbo_eye_nrm, "3f", "in_normal"),
                                                         (studio.vbo_eye_uv, "2f", "in_uv"), (self.vbo_eye_ao, "2f", "in_ao")],
                                         index_buffer=studio.ibo_eyes, index_element_size=4, skip_errors=True)
        # The key light's face caster: the skin grid only (the mouth interior's rim pokes through the mouth corners
        # edge-on and would cast a thin streak; the lips still shadow the teeth).
        grid_tris = head.triangles[head.triangles[:, 0] < head.num_grid_vertices]
        self.ibo_face_caster = ctx.buffer(np.ascontiguousarray(grid_tris, np.uint32).tobytes())
        self.depth_face = ctx.vertex_array(self.prog_depth, [(sv, "3f", "in_pos")], index_buffer=self.ibo_face_caster,
                                           index_element_size=4, skip_errors=True)
        self.ibo_occluder = ctx.buffer(occluder_triangles(head).tobytes())
        self.depth_face_coarse = ctx.vertex_array(self.prog_depth, [(sv, "3f", "in_pos")], index_buffer=self.ibo_occluder,
                                                  index_element_size=4, skip_errors=True)
        self._buffers = []
        self._ao_vbos = {}
        self.vao_ears = self.depth_ears = self.vao_body = self.depth_body = None
        self.vao_hair = self.depth_hair = None
        self._static_casters = []   # rigid occluders of the AO maps
        self._shadow_casters = [self.depth_face]
        if self.ears is not None:
            self.vao_ears, self.depth_ears, self._ao_vbos["ears"] = self._static_vaos(self.ears, self.prog_ears)
            self._static_casters.append(self.depth_ears)
            self._shadow_casters.append(self.depth_ears)
        if self.body is not None:
            self.vao_body, self.depth_body, self._ao_vbos["body"] = self._static_vaos(self.body, self.prog_body)
            self._static_casters.append(self.depth_body)
        if self.hair is not None:
            self.vao_hair, self.depth_hair, self._ao_vbos["hair"] = self._static_vaos(self.hair, self.prog_hair, hair=True)
            self._static_casters.append(self.depth_hair_base)
            self._shadow_casters.append(self.depth_hair)
        # ---- constant uniforms ----
        extra_skin = skin_albedo(studio.albedo)
        for pr in self._colour_progs:
            self._set(pr, "u_shadow", 3)
            self._set(pr, "u_shadow_mat", _mat(self.shadow_mat))
            self._set(pr, "u_shadow_radius", float(look.shadow_softness / (2 * SHADOW_RADIUS)))
            self._set(pr, "u_shadow_texel", float(self.shadow_texel))
            self._set(pr, "u_shadow_bias", float(1.0 * self.shadow_texel / (2 * SHADOW_RADIUS * 1.5)))
            self._set(pr, "u_shadow_nrm", np.ascontiguousarray(np.linalg.inv(self.shadow_mat[:3, :3]), np.float32).tobytes())
            self._set(pr, "u_rim", float(look.rim_light))
            self._set(pr, "u_ao_strength", float(look.ao_strength if look.ambient_occlusion else 0.0))
            self._set(pr, "u_skin", extra_skin)
            self._set(pr, "u_shininess", float(p.shininess))
            self._set(pr, "u_specular", float(p.specular))
            self._set(pr, "u_albedo", 0)
            self._set(pr, "u_aux", 1)
            self._set(pr, "u_pores", 2)
        if self.prog_body is not None:
            self._set(self.prog_body, "u_cloth", cloth_colour(p.seed))
        if self.prog_hair is not None:
            self._set(self.prog_hair, "u_strands", 0)
            self._set(self.prog_hair, "u_hair", tuple(float(x) for x in self.style.colour))
            self._set(self.prog_hair, "u_sheen", float(self.style.sheen))
            self._set(self.prog_hair, "u_repeat", (2.0, 1.0))
        # ---- start-up: AO fields ----
        self._precompute_occlusion()
        self._dirty = True

    # ------------------------------------------------------------------ set-up helpers
    @staticmethod
    def _set(prog, name, value):
        if name in prog:
            if isinstance(value, bytes):
                prog[name].write(value)
            else:
                prog[name] = value

    def _static_vaos(self, m: Mesh, prog, hair: bool = False):
        ctx = self.ctx
        arrays = [m.vertices, m.normals, m.uvs, m.attrs] + ([m.tangents] if hair else [])
        b = [ctx.buffer(np.ascontiguousarray(a, np.float32).tobytes()) for a in arrays]
        ao = ctx.buffer(reserve=len(m) * 8)
        ibo_tris = m.triangles
        if hair:
            # Outermost shell first: its fragments hide the inner shells' (fewer fragments shaded).
            K = self.look.hair_shells + 1
            per = len(m.triangles) // K
            ibo_tris = np.concatenate([m.triangles[k * per:(k + 1) * per] for k in range(K - 1, -1, -1)])
        ibo = ctx.buffer(np.ascontiguousarray(ibo_tris, np.uint32).tobytes())
        self._buffers += b + [ao, ibo]
        fmt = [(b[0], "3f", "in_pos"), (b[1], "3f", "in_normal"), (b[2], "2f", "in_uv"), (b[3], "4f", "in_attr"),
               (ao, "2f", "in_ao")]
        if hair:
            fmt.append((b[4], "3f", "in_tangent"))
        vao = ctx.vertex_array(prog, fmt, index_buffer=ibo, index_element_size=4, skip_errors=True)
        if not hair:
            depth = ctx.vertex_array(self.prog_depth, [(b[0], "3f", "in_pos")], index_buffer=ibo, index_element_size=4,
                                     skip_errors=True)
            return vao, depth, ao
        # Hair casters: the base layer (AO maps) and a coarse copy of the middle shell (key light shadow map).
        K = self.look.hair_shells + 1
        per = len(m.triangles) // K
        base = m.triangles[:per]
        rows, cols = m.grid
        coarse = _coarse_grid_triangles(rows, cols) + (K // 2) * rows * cols
        b_base = ctx.buffer(np.ascontiguousarray(base, np.uint32).tobytes())
        b_mid = ctx.buffer(np.ascontiguousarray(coarse, np.uint32).tobytes())
        self._buffers += [b_base, b_mid]
        self.depth_hair_base = ctx.vertex_array(self.prog_depth, [(b[0], "3f", "in_pos")], index_buffer=b_base,
                                                index_element_size=4, skip_errors=True)
        depth = ctx.vertex_array(self.prog_depth, [(b[0], "3f", "in_pos")], index_buffer=b_mid, index_element_size=4,
                                 skip_errors=True)
        return vao, depth, ao

    # ------------------------------------------------------------------ passes
    def _render_shadow(self, casters):
        mgl, ctx = self.mgl, self.ctx
        S = self.look.shadow_map_size
        self.fbo_shadow.use()
        ctx.viewport = (0, 0, S, S)
        self.fbo_shadow.clear(depth=1.0)
        ctx.enable(mgl.DEPTH_TEST)
        ctx.disable(mgl.CULL_FACE)
        self.prog_depth["u_mvp"].write(_mat(to_clip(self.shadow_mat)))
        for vao in casters:
            vao.render()

    def _precompute_occlusion(self):
        """Start-up: AO fields of the face (neutral + one per expression parameter), of the eyeball grids, and AO
        plus key-light visibility of the rigid extras."""
        mgl, ctx = self.mgl, self.ctx
        look, studio, head = self.look, self.studio, self.studio.head
        K = look.ao_directions
        cols = int(np.ceil(np.sqrt(K)))
        rows = int(np.ceil(K / cols))
        dirs = fibonacci_sphere(K)
        mats = [ortho_towards(d, AO_CENTRE, AO_RADIUS, depth=3.5) for d in dirs]
        atlas_dyn = ctx.depth_texture((cols * AO_TILE, rows * AO_TILE))
        atlas_static = ctx.depth_texture((cols * AO_TILE, rows * AO_TILE))
        fbo_dyn = ctx.framebuffer(depth_attachment=atlas_dyn)
        fbo_static = ctx.framebuffer(depth_attachment=atlas_static)

        def atlas(fbo, casters):
            fbo.use()
            fbo.clear(depth=1.0)
            ctx.enable(mgl.DEPTH_TEST)
            ctx.disable(mgl.CULL_FACE)
            for k, M in enumerate(mats):
                x, y = (k % cols) * AO_TILE, (k // cols) * AO_TILE
                ctx.viewport = (x, y, AO_TILE, AO_TILE)
                ctx.scissor = (x, y, AO_TILE, AO_TILE)
                self.prog_depth["u_mvp"].write(_mat(to_clip(M)))
                for vao in casters:
                    vao.render()
            ctx.scissor = None

        # Sample points: face vertices, eyeball grid points, then the extras' vertices.
        V = head.num_vertices
        eye_pts, eye_nrm = self._eye_grid_points()
        extras_ao = [(m, vbo) for m, vbo in ((self.ears, self._ao_vbos.get("ears")), (self.body, self._ao_vbos.get("body")),
                                              (self.hair, self._ao_vbos.get("hair"))) if m is not None]
        extras = [m for m, _ in extras_ao]
        n_extra = sum(len(m) for m in extras)
        N = V + len(eye_pts) + n_extra
        W = AO_EVAL_WIDTH
        Hh = -(-N // W)
        tex_p = ctx.texture((W, Hh), 3, dtype="f4")
        tex_n = ctx.texture((W, Hh), 3, dtype="f4")
        for t in (tex_p, tex_n):
            t.filter = (mgl.NEAREST, mgl.NEAREST)
        out = ctx.texture((W, Hh), 4, dtype="f4")
        fbo_out = ctx.framebuffer(color_attachments=[out])
        prog = ctx.program(vertex_shader=_VS_QUAD, fragment_shader=_FS_AO_EVAL.format(
            K=K, key=", ".join(f"{x:.6f}" for x in KEY_DIR), shadow_extent=f"{2 * SHADOW_RADIUS:.6f}"))
        quad = ctx.buffer(np.array([[-1, -1], [3, -1], [-1, 3]], np.float32).tobytes())
        vao_quad = ctx.vertex_array(prog, [(quad, "2f", "in_xy")], skip_errors=True)
        prog["u_points"], prog["u_normals"], prog["u_atlas_dyn"], prog["u_atlas_static"], prog["u_shadow"] = 0, 1, 5, 6, 3
        prog["u_dir_mat"].write(b"".join(_mat(m) for m in mats))
        prog["u_dirs"].write(np.ascontiguousarray(dirs, np.float32).tobytes())
        prog["u_tiles"] = (float(cols), float(rows))
        prog["u_offset"] = float(2.5 * 2 * AO_RADIUS / AO_TILE)
        prog["u_bias"] = 0.002
        prog["u_shadow_mat"].write(_mat(self.shadow_mat))
        prog["u_shadow_texel"] = float(self.shadow_texel)

        def evaluate(points, normals):
            rows_used = -(-len(points) // W)
            pad = np.zeros((W * rows_used - len(points), 3), np.float32)
            vp = (0, 0, W, rows_used)
            tex_p.write(np.concatenate([points.astype(np.float32), pad]).tobytes(), viewport=vp)
            nrm = np.concatenate([normals.astype(np.float32), pad + np.array([0, 0, 1], np.float32)])
            tex_n.write(nrm.tobytes(), viewport=vp)
            fbo_out.use()
            ctx.viewport = vp
            ctx.disable(mgl.DEPTH_TEST)
            tex_p.use(0)
            tex_n.use(1)
            atlas_dyn.use(5)
            atlas_static.use(6)
            self.shadow_tex.use(3)
            vao_quad.render()
            res = np.frombuffer(fbo_out.read(viewport=vp, components=4, dtype="f4"), np.float32).reshape(-1, 4)
            return res[: len(points)]

        atlas(fbo_static, self._static_casters)
        # Neutral pose first: also the extras' AO and key visibility (shadow map of everything at rest).
        basis_exprs = [np.zeros(NUM_EXPRESSIONS, np.float32)] + list(np.eye(NUM_EXPRESSIONS, dtype=np.float32))
        gz = np.zeros((2, 2), np.float32)
        face_ao, eye_ao = [], []
        for b, e in enumerate(basis_exprs):
            st = studio.pose(e, gz)
            atlas(fbo_dyn, [self.depth_face_coarse])
            nrm = self._welded_normals(st.vertices, studio.normals)
            pts = [st.vertices, eye_pts]
            nrms = [nrm, eye_nrm]
            if b == 0 and extras:
                everything = self._shadow_casters + ([self.depth_body] if self.depth_body else [])
                self._render_shadow(everything)
                pts += [m.vertices for m in extras]
                nrms += [m.normals for m in extras]
            res = evaluate(np.concatenate(pts), np.concatenate(nrms))
            a = res[:V, 0].copy()
            pa, pb = self._weld
            a[pa] = a[pb] = 0.5 * (a[pa] + a[pb])
            face_ao.append(a)
            eye_ao.append(res[V:V + len(eye_pts), 0])
            if b == 0 and extras:
                off = V + len(eye_pts)
                for m, vbo in extras_ao:
                    vbo.write(np.ascontiguousarray(res[off:off + len(m), :2]).tobytes())
                    off += len(m)
        self.face_ao0 = face_ao[0]
        self.face_ao_delta = np.stack(face_ao[1:]) - face_ao[0]  # (E, V)
        self.eye_ao0 = eye_ao[0]
        self.eye_ao_delta = np.stack(eye_ao[1:]) - eye_ao[0]  # (E, 2 * rings * segments)
        for obj in (vao_quad, quad, prog, fbo_out, out, tex_p, tex_n, fbo_dyn, fbo_static, atlas_dyn, atlas_static):
            obj.release()
        studio._state_key = None  # the studio's geometry buffers hold a basis pose: re-upload on the next pose()

    def _eye_grid_points(self) -> tuple[np.ndarray, np.ndarray]:
        """Points just outside each eyeball on a (polar, azimuth) grid around its rest axis, and their normals."""
        head = self.studio.head
        R, A = EYE_GRID
        pol = np.linspace(0, EYE_GRID_MAX_POLAR, R)
        azi = np.linspace(0, 2 * np.pi, A, endpoint=False)
        P, Az = np.meshgrid(pol, azi, indexing="ij")
        d = np.stack([np.sin(P) * np.cos(Az), np.sin(P) * np.sin(Az), np.cos(P)], -1).reshape(-1, 3)
        pts = np.concatenate([head.eye_centres[k] + d * head.eye_radius for k in range(2)])
        return pts.astype(np.float32), np.concatenate([d, d]).astype(np.float32)

    def _eye_vertex_ao(self, grid_ao: np.ndarray) -> np.ndarray:
        """Per posed eyeball vertex AO (2N,) by bilinear lookup of the socket-fixed grid at its world direction."""
        R, A = EYE_GRID
        local = self.studio._eye_nrm_local
        out = []
        for k in range(2):
            w = local @ self._eye_rot[k].T
            pol = np.arccos(np.clip(w[:, 2], -1, 1)) / EYE_GRID_MAX_POLAR * (R - 1)
            azi = (np.arctan2(w[:, 1], w[:, 0]) % (2 * np.pi)) / (2 * np.pi) * A
            g = grid_ao[k * R * A:(k + 1) * R * A].reshape(R, A)
            p0 = np.clip(np.floor(pol).astype(int), 0, R - 1)
            p1 = np.clip(p0 + 1, 0, R - 1)
            fp = np.clip(pol - p0, 0, 1)
            a0 = np.floor(azi).astype(int) % A
            a1 = (a0 + 1) % A
            fa = azi - np.floor(azi)
            v = (g[p0, a0] * (1 - fa) + g[p0, a1] * fa) * (1 - fp) + (g[p1, a0] * (1 - fa) + g[p1, a1] * fa) * fp
            v = np.where(pol > R - 1, g[R - 1].mean() * 0.5, v)  # the back of the eyeball: deep in the socket
            out.append(v)
        return np.concatenate(out).astype(np.float32)

    def _welded_normals(self, vertices: np.ndarray, normals: np.ndarray) -> np.ndarray:
        """The studio's vertex normals with the two rows of each slit row joined where they coincide (outside the
        eye and mouth openings the mesh has two rows at one place, each with a one-sided normal: a seam), and
        no zero normals (NaN in a shader)."""
        a, b = self._weld
        same = np.abs(vertices[a] - vertices[b]).max(1) < 1e-5
        a, b = a[same], b[same]
        n = normals.copy()
        m = n[a] + n[b]
        m /= np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)
        n[a] = m
        n[b] = m
        # A few vertices lie only on zero-area triangles (normal 0): point them away from the skull's centre.
        bad = np.einsum("ij,ij->i", n, n) < 0.25
        if bad.any():
            r = vertices[bad].astype(np.float32)
            n[bad] = r / np.maximum(np.linalg.norm(r, axis=1, keepdims=True), 1e-6)
        return n

    # ------------------------------------------------------------------ per pose
    def invalidate(self, expr: np.ndarray, eye_rotations: np.ndarray):
        self._expr = np.clip(np.asarray(expr, np.float32), 0, 1)
        self._eye_rot = np.asarray(eye_rotations, np.float32)
        self._dirty = True

    def prepare(self):
        """Per-pose work, once per pose: AO blend (NumPy) and the key light's shadow map."""
        if not self._dirty:
            return
        e = self._expr
        st = self.studio.state
        self.vbo_face_nrm.write(self._welded_normals(st.vertices, self.studio.normals).tobytes())
        ao = np.clip(self.face_ao0 + e @ self.face_ao_delta, 0, 1)
        ao[self._interior] = 0.3 + 0.7 * ao[self._interior]  # light bounces around inside an open mouth
        ao2 = np.zeros((len(ao), 2), np.float32)
        ao2[:, 0] = ao
        self.vbo_face_ao.write(ao2.tobytes())
        eye = self._eye_vertex_ao(np.clip(self.eye_ao0 + e @ self.eye_ao_delta, 0, 1))
        eye2 = np.zeros((len(eye), 2), np.float32)
        eye2[:, 0] = eye
        self.vbo_eye_ao.write(eye2.tobytes())
        if self.look.shadows:
            self._render_shadow(self._shadow_casters)
        self._dirty = False

    # ------------------------------------------------------------------ colour draws
    def _per_view(self, prog, d, mvp=None):
        self._set(prog, "u_view_dir", tuple(float(x) for x in d))
        if mvp is not None:
            self._set(prog, "u_mvp", _mat(mvp))

    def _draw_face(self, d, mvp, uv_space: int):
        s = self.studio
        pr = self.prog_face
        self._per_view(pr, d, mvp)
        pr["u_uv_space"] = uv_space
        self._set(pr, "u_brow_l", s.prog["u_brow_l"].value)
        self._set(pr, "u_brow_r", s.prog["u_brow_r"].value)
        s.tex_albedo.use(0)
        s.tex_aux.use(1)
        self.tex_pores.use(2)
        self.shadow_tex.use(3)
        self.vao_face.render()

    def draw_view(self, mvp: np.ndarray, d: np.ndarray):
        """Colour draws into the studio's dome framebuffer (bound, cleared, depth test on)."""
        self.prepare()
        s, ctx, mgl = self.studio, self.ctx, self.mgl
        s.fbo_dome.use()
        ctx.viewport = (0, 0, s.dome_size, s.dome_size)
        ctx.enable(mgl.DEPTH_TEST)
        ctx.disable(mgl.CULL_FACE)
        self._draw_face(d, mvp, 0)
        self._per_view(self.prog_eye, d, mvp)
        self.prog_eye["u_uv_space"] = 0
        s.tex_eye.use(0)
        self.vao_eyes.render()
        if self.vao_ears is not None:
            self._per_view(self.prog_ears, d, mvp)
            self.prog_ears["u_uv_space"] = 0
            self.vao_ears.render()
        if self.vao_body is not None:
            self._per_view(self.prog_body, d, mvp)
            self.vao_body.render()
        if self.vao_hair is not None:
            self._per_view(self.prog_hair, d, mvp)
            self.tex_strands.use(0)
            self.vao_hair.render()

    def release(self):
        """Free this look's GL objects (the studio's own buffers are the studio's)."""
        objs = []
        for name, v in list(vars(self).items()):
            if name in ("ctx", "studio", "mgl"):
                continue
            for o in (v if isinstance(v, (list, tuple)) else [v]):
                if type(o).__module__.startswith("moderngl") and hasattr(o, "release"):
                    objs.append(o)
        objs += list(self._ao_vbos.values())
        for o in {id(o): o for o in objs}.values():
            o.release()

    def draw_texture(self, d: np.ndarray):
        """The face's colour for view ``d`` baked in UV space into the studio's UV framebuffer (bound, cleared)."""
        self.prepare()
        s = self.studio
        T = s.albedo.shape[0]
        s.fbo_uv.use()
        self.ctx.viewport = (0, 0, T, T)
        self.ctx.disable(self.mgl.DEPTH_TEST)
        self.ctx.disable(self.mgl.CULL_FACE)
        self._draw_face(d, None, 1)


def _coarse_grid_triangles(rows: int, cols: int) -> np.ndarray:
    """Every other row and column of a wrapped ``rows`` x ``cols`` vertex grid (cols even)."""
    r, c = np.meshgrid(np.arange(0, rows - 2, 2), np.arange(0, cols, 2), indexing="ij")
    a = (r * cols + c).ravel()
    b = (r * cols + (c + 2) % cols).ravel()
    d, e = a + 2 * cols, b + 2 * cols
    return np.concatenate([np.stack([a, b, e], 1), np.stack([a, e, d], 1)]).astype(np.uint32)
