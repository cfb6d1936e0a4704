"""Tiny models in the runtime's model-directory layouts, built with ``onnx.helper`` (no torch), for tests.

:func:`build_tiny` writes a random-projection encoder in the real per-view
layout (three view models: pooled HMC pixels -> feature [+ gaze]; fusion:
features -> z) and a dome-shaped mesh whose relief and colour follow z: tiny, fast and
deterministic, so runtime tests run real onnxruntime sessions, real GL and real
sockets in seconds. The avatar is written exactly as
``decoder.export.save_model`` writes a trained one (see :mod:`decoder.runtime`).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from capture.eyes import eyeball_mesh

OPSET = 17
IR_VERSION = 8
"""IR version written (onnxruntime >= 1.18 reads it; newer onnx defaults to IRs older runtimes refuse)."""


def _onnx():
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    return onnx, TensorProto, helper, numpy_helper


def _init(name: str, array: np.ndarray):
    _, _, _, numpy_helper = _onnx()
    return numpy_helper.from_array(np.ascontiguousarray(array), name)


def view_graph(feat_mean: np.ndarray, feat_scale: np.ndarray, gaze_weights: np.ndarray | None, *, size: int, pool: int):
    """One near-sensor view model in the layout of ``encoder.export`` (read by ``encoder.runtime.HmcEncoder``):
    image (1, 1, size, size) uint8 -> /255 -> AveragePool(size/pool) -> standardise -> feature (1, pool²)
    [-> gaze (1, 2) = feature @ gaze_weights for an eye view]."""
    onnx, TP, h, _ = _onnx()
    k = size // pool
    F = pool * pool
    nodes = [
        h.make_node("Cast", ["image"], ["image_f"], to=TP.FLOAT),
        h.make_node("Mul", ["image_f", "inv255"], ["x"]),
        h.make_node("AveragePool", ["x"], ["pooled"], kernel_shape=[k, k], strides=[k, k]),
        h.make_node("Reshape", ["pooled", "flat_shape"], ["flat"]),
        h.make_node("Sub", ["flat", "feat_mean"], ["centred"]),
        h.make_node("Mul", ["centred", "feat_scale"], ["feature"]),
    ]
    inits = [
        _init("inv255", np.array(1.0 / 255.0, np.float32)),
        _init("flat_shape", np.array([1, F], np.int64)),
        _init("feat_mean", feat_mean.astype(np.float32).reshape(1, F)),
        _init("feat_scale", feat_scale.astype(np.float32).reshape(1, F)),
    ]
    outputs = [h.make_tensor_value_info("feature", TP.FLOAT, [1, F])]
    if gaze_weights is not None:
        nodes.append(h.make_node("MatMul", ["feature", "Wg"], ["gaze"]))
        inits.append(_init("Wg", gaze_weights.astype(np.float32).reshape(F, 2)))
        outputs.append(h.make_tensor_value_info("gaze", TP.FLOAT, [1, 2]))
    graph = h.make_graph(nodes, "tiny_view", [h.make_tensor_value_info("image", TP.UINT8, [1, 1, size, size])],
                         outputs, inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model, full_check=True)
    return model


def fusion_graph(weights: np.ndarray, bias: np.ndarray):
    """features (1, 3F) float32 -> z (1, Z) = features @ weights + bias."""
    onnx, TP, h, _ = _onnx()
    F3, Z = weights.shape
    graph = h.make_graph(
        [h.make_node("MatMul", ["features", "W"], ["lin"]), h.make_node("Add", ["lin", "b"], ["z"])], "tiny_fusion",
        [h.make_tensor_value_info("features", TP.FLOAT, [1, F3])], [h.make_tensor_value_info("z", TP.FLOAT, [1, Z])],
        [_init("W", weights.astype(np.float32)), _init("b", bias.astype(np.float32).reshape(1, Z))])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model, full_check=True)
    return model


def write_encoder(out: Path, *, latent_dim: int, size: int, pool: int, rng: np.random.Generator, identity: str = "") -> Path:
    """A tiny encoder in the real per-view layout: arch.json, meta.json, left_eye/right_eye/mouth.onnx, fusion.onnx."""
    import onnx

    from encoder.runtime import VIEW_NAMES

    out.mkdir(parents=True, exist_ok=True)
    F = pool * pool
    for k, view in enumerate(VIEW_NAMES):
        gaze_w = rng.normal(0, 0.3 / np.sqrt(F), (F, 2)) if k < 2 else None
        onnx.save(view_graph(np.full(F, 0.2), np.full(F, 4.0), gaze_w, size=size, pool=pool), str(out / f"{view}.onnx"))
    W = rng.normal(0, 1.0 / np.sqrt(3 * F), (3 * F, latent_dim))
    onnx.save(fusion_graph(W, np.zeros(latent_dim)), str(out / "fusion.onnx"))
    (out / "arch.json").write_text(json.dumps({"name": "tiny", "input_size": size, "latent_dim": latent_dim,
                                               "num_keypoints": 0, "standin": True}))
    (out / "meta.json").write_text(json.dumps({"arch": "tiny", "identity": identity, "standin": True}))
    return out


def write_codec(enc_dir: Path, *, frames: int = 90, size: int = 192, budget: float = 1e-4) -> Path:
    """Codec tables for the tiny encoder in the real layout (``codec.json`` + ``codec.npz``), fitted with
    :func:`encoder.codec_fit.fit_tables` on its codes of moving-bar views (the pattern the runtime tests
    replay, at several speeds) with a flat decoder sensitivity."""
    from encoder.codec_fit import fit_tables
    from encoder.runtime import HmcEncoder
    from transport.latent_codec import save_codec

    enc = HmcEncoder(enc_dir)
    yy, xx = np.mgrid[0:size, 0:size]
    zs, gs, starts = [], [], []
    for speed in (5, 7, 9):
        for i in range(frames // 3):
            views = np.stack([(((xx + yy * (v + 1) + speed * i * (v + 1)) % 64) * 4).astype(np.uint8) for v in range(3)])
            r = enc.encode(views)
            zs.append(r.z), gs.append(r.gaze), starts.append(i == 0)
    z, g = np.stack(zs), np.stack(gs)
    w = np.ones(z.shape[1] + 4)
    tables = fit_tables(z, g, np.asarray(starts), w, budget * float(np.concatenate([z, g.reshape(len(g), -1)], 1).var(0).sum()),
                        predictor="extrapolate", history=5, range_margin=0.5)
    save_codec(tables, enc_dir, {"standin": True})
    return enc_dir


def decoder_graph(mean_vertices: np.ndarray, basis: np.ndarray, texture: np.ndarray, colour: np.ndarray,
                  view_colour: np.ndarray, latent_dim: int | None = None):
    """z (1, Z), view_direction (1, 3) -> vertices (1, V, 3) = mean + z[:K] @ basis (K = basis rows),
    texture (1, 3, T, T) = texture + z @ colour + view_direction @ view_colour (per channel)."""
    onnx, TP, h, _ = _onnx()
    V = mean_vertices.shape[0]
    K = basis.shape[0]
    Z = latent_dim or K
    T = texture.shape[-1]
    nodes = [
        h.make_node("Slice", ["z", "k_start", "k_end", "k_axis"], ["z_geo"]),
        h.make_node("MatMul", ["z_geo", "basis"], ["offsets"]),
        h.make_node("Add", ["offsets", "mean"], ["flat_vertices"]),
        h.make_node("Reshape", ["flat_vertices", "v_shape"], ["vertices"]),
        h.make_node("MatMul", ["z", "colour"], ["tint_z"]),
        h.make_node("MatMul", ["view_direction", "view_colour"], ["tint_v"]),
        h.make_node("Add", ["tint_z", "tint_v"], ["tint"]),
        h.make_node("Reshape", ["tint", "t_shape"], ["tint4"]),
        h.make_node("Add", ["base_texture", "tint4"], ["texture"]),
    ]
    inits = [
        _init("k_start", np.array([0], np.int64)),
        _init("k_end", np.array([K], np.int64)),
        _init("k_axis", np.array([1], np.int64)),
        _init("basis", basis.astype(np.float32).reshape(K, V * 3)),
        _init("mean", mean_vertices.astype(np.float32).reshape(1, V * 3)),
        _init("v_shape", np.array([1, V, 3], np.int64)),
        _init("colour", colour.astype(np.float32).reshape(Z, 3)),
        _init("view_colour", view_colour.astype(np.float32).reshape(3, 3)),
        _init("t_shape", np.array([1, 3, 1, 1], np.int64)),
        _init("base_texture", texture.astype(np.float32).reshape(1, 3, T, T)),
    ]
    graph = h.make_graph(
        nodes, "standin_decoder",
        [h.make_tensor_value_info("z", TP.FLOAT, [1, Z]), h.make_tensor_value_info("view_direction", TP.FLOAT, [1, 3])],
        [h.make_tensor_value_info("vertices", TP.FLOAT, [1, V, 3]), h.make_tensor_value_info("texture", TP.FLOAT, [1, 3, T, T])],
        inits,
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model, full_check=True)
    return model


def _eye_texture(size: int = 64) -> np.ndarray:
    v = np.linspace(0, 1, size)[:, None] * np.ones((1, size))
    tex = np.ones((size, size, 3), np.float32) * np.array([0.92, 0.9, 0.88], np.float32)
    tex[v < 0.12] = (0.25, 0.45, 0.6)
    tex[v < 0.05] = (0.02, 0.02, 0.02)
    return tex


def _write_avatar(out: Path, model, uvs, triangles, eye_mesh, centres, eye_radius, eye_texture, info: dict) -> None:
    """The layout of ``decoder.export.save_model`` (config.json, decoder.onnx, assets.npz), read by
    ``decoder.runtime.OnnxAvatarDecoder``; ``config.json["standin"]`` says what this model is."""
    import onnx

    out.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out / "decoder.onnx"))
    ev, en, euv, et = eye_mesh
    np.savez_compressed(out / "assets.npz", uvs=np.asarray(uvs, np.float32), triangles=np.asarray(triangles, np.uint32),
                        eye_centres=np.asarray(centres, np.float32), eye_radius=np.float32(eye_radius),
                        eye_texture=np.asarray(eye_texture, np.float32), eye_vertices=ev, eye_normals=en, eye_uvs=euv,
                        eye_triangles=et)
    texture_size = int(model.graph.output[1].type.tensor_type.shape.dim[-1].dim_value)
    latent_dim = int(model.graph.input[0].type.tensor_type.shape.dim[-1].dim_value)
    meta = {
        "decoder": {"identity": info.get("identity", ""), "latent_dim": latent_dim, "num_vertices": len(uvs),
                    "texture_size": texture_size},
        "onnx": {"file": "decoder.onnx", "inputs": ["z", "view_direction"], "outputs": ["vertices", "texture"]},
        "assets": "assets.npz",
        "standin": info,
    }
    (out / "config.json").write_text(json.dumps(meta, indent=1))


def build_tiny(out_dir: str | Path, *, latent_dim: int = 256, size: int = 192, pool: int = 8, grid: int = 24,
               texture_size: int = 64, seed: int = 0, identity: str = "") -> tuple[Path, Path]:
    """Tiny random stand-ins. Returns ``(encoder_dir, avatar_dir)`` under ``out_dir``; both name ``identity``
    (their model id on the wire is ``IDENTITY/zDIM``, ``unknown/zDIM`` when empty)."""
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    enc_dir, av_dir = out / "encoder", out / "avatar"
    enc_dir.mkdir(parents=True, exist_ok=True)
    write_encoder(enc_dir, latent_dim=latent_dim, size=size, pool=pool, rng=rng, identity=identity)
    write_codec(enc_dir, size=size)
    # A dome facing +z (the viewer's front), radius 1 dm, centred like the studio head.
    th, ph = np.meshgrid(np.linspace(-1.3, 1.3, grid), np.linspace(-1.0, 1.1, grid), indexing="ij")
    normal = np.stack([np.sin(th) * np.cos(ph), np.sin(ph), np.cos(th) * np.cos(ph)], -1).reshape(-1, 3)
    mean = normal * 1.0 + np.array([0.0, -0.12, 0.0])
    uvs = np.stack([(th.ravel() + 1.3) / 2.6, (ph.ravel() + 1.0) / 2.1], -1)
    i, j = np.meshgrid(np.arange(grid - 1), np.arange(grid - 1), indexing="ij")
    a = (i * grid + j).ravel()
    tris = np.concatenate([np.stack([a, a + grid, a + grid + 1], 1), np.stack([a, a + grid + 1, a + 1], 1)])
    freq = rng.normal(0, 2.0, (latent_dim, 3))
    phase = rng.uniform(0, 2 * np.pi, (latent_dim, 1))
    relief = np.sin(freq @ mean.T + phase)  # (Z, V): smooth per-latent relief along the normal
    basis = 0.01 * relief[:, :, None] * normal[None]
    tex = np.ones((3, texture_size, texture_size), np.float32) * np.array([0.8, 0.6, 0.5], np.float32)[:, None, None]
    uu, vv = np.meshgrid(np.linspace(0, 1, texture_size), np.linspace(0, 1, texture_size))
    tex *= (0.75 + 0.25 * np.cos(6 * uu) * np.cos(6 * vv))[None]
    dec = decoder_graph(mean, basis, tex, rng.normal(0, 0.02, (latent_dim, 3)), 0.05 * np.eye(3))
    eye = eyeball_mesh(0.12, rings=10, segments=16)
    centres = np.array([[0.33, 0.15, 0.9], [-0.33, 0.15, 0.9]])
    _write_avatar(av_dir, dec, uvs, tris, eye, centres, 0.12, _eye_texture(), {"kind": "tiny", "seed": seed, "identity": identity})
    return enc_dir, av_dir
