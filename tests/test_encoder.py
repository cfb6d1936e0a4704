"""HMC encoders: architectures as data, the builder over the registry, FLOPs, ONNX export with parity,
the runtime encoder, the Auto-CARD losses and re-weighting, augmentation, and a few-step training run."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from encoder.arch import BlockSpec, EncoderArch, decode_block, get_arch, list_archs
from encoder.export import load_model, save_model
from encoder.flops import analytic_flops, counted_flops
from encoder.losses import (GazeReweighting, LossWeights, autocard_loss, keypoint_loss, latent_loss, rendering_loss,
                            texture_loss)
from encoder.model import build_encoder

torch.set_num_threads(1)


# ---------------------------------------------------------------------------- architectures
def test_block_strings_round_trip_and_reject_bad_ones():
    for s in ("fmb_k3_s2_e4_c48_r2", "conv_k5_s1_c64", "skip", "fmb_k3_s1_e1_c16"):
        assert decode_block(s).to_str() == s
    assert decode_block("fmb_c32") == BlockSpec("fmb", kernel=3, stride=1, expansion=1, channels=32, repeats=1)
    for bad in ("mbconv_k3_c8", "conv_k4_s1_c8", "conv_k3_s3_c8", "conv_k3_s1", "skip_s2", "conv_x3_c8"):
        with pytest.raises(ValueError):
            decode_block(bad)
    with pytest.raises(ValueError):
        get_arch("no-such-arch")


def test_registry_has_the_baselines():
    assert {"EEM", "EEM-ch50", "EEM-res50", "tiny"} <= set(list_archs())


@pytest.mark.parametrize("name", list_archs())
def test_every_registered_arch_builds_runs_and_counts_flops(name):
    arch = get_arch(name)
    again = EncoderArch.from_json(arch.to_json())
    assert again.to_dict() == arch.to_dict()
    model = build_encoder(again).eval()
    if arch.input_size <= 64:  # full-size models run in the FLOP counter below and in the export parity test
        B, S = 2, arch.input_size
        with torch.no_grad():
            out = model(torch.randint(0, 256, (B, 3, S, S), dtype=torch.uint8))
        assert out["z"].shape == (B, arch.latent_dim)
        assert out["gaze"].shape == (B, 2, 2)
        assert out["keypoints"].shape == (B, 3, arch.num_keypoints, 2)
        assert out["features"].shape == (B, 3 * arch.feature_dim)
        assert all(torch.isfinite(v).all() for v in out.values())
    # Analytic FLOPs from the arch data == FlopCounterMode on the built network.
    assert analytic_flops(arch) == counted_flops(model)


@pytest.mark.parametrize("name", list_archs())
def test_every_registered_arch_exports_with_onnx_parity(name, tmp_path):
    from encoder.runtime import HmcEncoder

    torch.manual_seed(0)
    model = build_encoder(name).eval()
    meta = save_model(model, tmp_path, identity="S1")  # export_onnx raises if onnxruntime != torch
    assert set(meta["onnx_parity_max_rel_err"]) == {"left_eye", "right_eye", "mouth", "fusion"}
    S = model.arch.input_size
    views = np.random.default_rng(1).integers(0, 200, (3, S, S), dtype=np.uint8)
    enc = HmcEncoder(tmp_path)
    r = enc.encode(views)
    with torch.no_grad():
        t = model(torch.from_numpy(views)[None])
    assert r.z.shape == (model.arch.latent_dim,) and r.z.dtype == np.float32
    np.testing.assert_allclose(r.z, t["z"][0].numpy(), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(r.gaze, t["gaze"][0].numpy(), rtol=1e-3, atol=1e-4)
    assert r.keypoints.shape == (3, model.arch.num_keypoints, 2)
    np.testing.assert_allclose(r.keypoints, t["keypoints"][0].numpy(), rtol=1e-3, atol=1e-2)
    assert set(r.stage_ms) == {"left_eye", "right_eye", "mouth", "fusion"}
    # Weights + arch data reload into the same network.
    m2, meta2 = load_model(tmp_path)
    assert meta2["arch"] == name
    for a, b in zip(model.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)


def test_flatten_pool_reads_the_whole_map_and_exports(tmp_path):
    from encoder.runtime import HmcEncoder

    arch = get_arch("tiny")
    for v in arch.views.values():
        v.pool = "flatten"
    arch = EncoderArch.from_json(arch.to_json())
    model = build_encoder(arch).eval()
    assert analytic_flops(arch) == counted_flops(model)
    assert analytic_flops(arch)["total"] > analytic_flops(get_arch("tiny"))["total"]
    feature = model.views["left_eye"].feature
    assert feature.in_features == arch.views["left_eye"].head * 2 * 2  # 32 px -> stem s2 -> two s2 blocks: 2x2 map
    save_model(model, tmp_path, identity="S1")  # raises without ONNX parity
    r = HmcEncoder(tmp_path).encode(np.zeros((3, 32, 32), np.uint8))
    assert r.z.shape == (arch.latent_dim,)
    with pytest.raises(ValueError, match="pool"):
        EncoderArch.from_dict({**arch.to_dict(), "views": {k: {**v, "pool": "max"} for k, v in arch.to_dict()["views"].items()}})


#: MFLOPs (3 views + fusion) published in docs/encoder.md, as encoder/flops.py computes them.
PUBLISHED_MFLOPS = {"EEM": 3069, "EEM-ch50": 830, "EEM-res50": 768, "EEM-flat": 3076}


def test_baseline_flops_match_the_published_figures():
    for name, mflops in PUBLISHED_MFLOPS.items():
        assert round(analytic_flops(get_arch(name))["total"] / 1e6) == mflops, name
    assert get_arch("EEM-res50").views["mouth"].resolution == 96


def test_runtime_rejects_bad_input_and_missing_models(tmp_path):
    from encoder.runtime import HmcEncoder

    with pytest.raises(FileNotFoundError):
        HmcEncoder(tmp_path)
    save_model(build_encoder("tiny"), tmp_path)
    enc = HmcEncoder(tmp_path)
    with pytest.raises(ValueError):
        enc.encode(np.zeros((3, 16, 16), np.uint8))
    with pytest.raises(ValueError):
        enc.encode(np.zeros((3, 32, 32), np.float32))


def test_training_and_evaluation_do_not_import_each_other():
    """encoder.train uses encoder.evaluate (test errors); evaluate must not import train back (no cycle), and
    loading the VAE is the decoder package's job."""
    import ast
    from pathlib import Path

    import encoder

    def imported(name):
        tree = ast.parse((Path(encoder.__file__).parent / f"{name}.py").read_text())
        return {(n.module or "") for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | \
            {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}

    assert not {"train", "encoder.train"} & imported("evaluate")
    assert not {"evaluate", "encoder.evaluate"} & imported("codec")
    from decoder.export import load_vae
    from encoder.codec import attach_codes, ground_truth_codes
    from encoder.train import attach_codes as old_name

    assert old_name is attach_codes and callable(load_vae) and callable(ground_truth_codes)


def test_runtime_module_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, encoder.runtime; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------- losses
def test_loss_terms_vanish_at_the_target_and_grow_away_from_it():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, 8, generator=g)
    std = torch.full((8,), 2.0)
    assert torch.allclose(latent_loss(z, z, std), torch.zeros(4))
    assert torch.allclose(latent_loss(z + 2.0, z, std), torch.ones(4))  # standardised by std
    kp = torch.rand(4, 3, 9, 2, generator=g) * 32
    vis = torch.ones(4, 3, 9, dtype=torch.bool)
    assert torch.allclose(keypoint_loss(kp, kp, vis, 32.0), torch.zeros(4))
    off = kp.clone()
    off[:, 0, 0] += 100.0
    vis2 = vis.clone()
    vis2[:, 0, 0] = False
    assert torch.allclose(keypoint_loss(off, kp, vis2, 32.0), torch.zeros(4))  # invisible keypoints ignored
    assert (keypoint_loss(off, kp, vis, 32.0) > 0).all()
    tex = torch.rand(2, 3, 16, 16, generator=g)
    cov = torch.ones(8, 8, dtype=torch.bool)
    assert torch.allclose(texture_loss(tex, torch.nn.functional.avg_pool2d(tex, 2), cov), torch.zeros(2), atol=1e-6)


def test_rendering_loss_samples_the_texture_through_the_uv_map_and_is_differentiable():
    # A texture whose colour encodes (u, v): sampling it at texel centres through a UV map
    # reproduces the UV map itself as an image.
    T, R = 16, 8
    u = (torch.arange(T) + 0.5) / T
    tex = torch.stack([u[None, :].expand(T, T), u[:, None].expand(T, T), torch.zeros(T, T)])[None].clone()  # row = v
    uv = torch.rand(1, R, R, 3)
    uv[..., :2] = (torch.randint(0, T, (1, R, R, 2)) + 0.5) / T
    uv[..., 2] = 1.0
    uv[0, 0, 0, 2] = 0.0  # background pixel: ignored
    image = torch.stack([uv[..., 0], uv[..., 1], torch.zeros(1, R, R)], 1)
    image[0, :, 0, 0] = 5.0
    assert rendering_loss(tex, uv, image).item() < 1e-5
    tex.requires_grad_(True)
    loss = rendering_loss(tex, uv, image + 0.1)
    loss.sum().backward()
    assert tex.grad.abs().sum() > 0


def test_gaze_reweighting_upweights_outlying_gaze_and_tracks_an_ema():
    rw = GazeReweighting(tau=0.25, momentum=0.9)
    g = torch.zeros(8, 2, 2)
    g[0] = 0.4  # one extreme gaze
    w = rw(g)
    assert w.shape == (8,)
    assert abs(w.mean().item() - 1.0) < 1e-5
    # First call: g_bar = batch mean = 0.05 per component, so ||g0 - g_bar|| = 2 * 0.35 = 0.7 and every other
    # sample is 2 * 0.05 = 0.1 away: w0 / w1 = exp((0.7 - 0.1) / 0.25) = e^2.4.
    assert w[0] / w[1] == pytest.approx(np.exp(2.4), rel=1e-5)
    assert torch.allclose(w[1:], w[1].expand(7))
    assert w[0] == pytest.approx(8 * np.exp(2.4) / (np.exp(2.4) + 7), rel=1e-5)  # normalised to batch mean 1
    # EMA: g_bar <- m g_bar + (1 - m) mean(g)
    before = rw.mean.clone()
    rw(torch.ones(8, 2, 2))
    assert torch.allclose(rw.mean, 0.9 * before + 0.1 * torch.ones(4))
    off = GazeReweighting(enabled=False)
    assert torch.equal(off(g), torch.ones(8))
    again = GazeReweighting()
    again.load_state_dict(rw.state_dict())
    assert torch.allclose(again.mean, rw.mean) and again.tau == rw.tau


def test_reweighting_scales_the_extreme_samples_loss_by_its_weight():
    """A batch where only the extreme-gaze sample is mispredicted: the re-weighted total is the plain total times
    that sample's weight 8 e^2.4 / (e^2.4 + 7) (see the test above); the reported per-term means stay unweighted."""
    from decoder.config import DecoderConfig
    from decoder.model import AvatarDecoder

    torch.manual_seed(0)
    dec = AvatarDecoder(DecoderConfig(latent_dim=8, num_vertices=20, geometry_basis=4, geometry_hidden=16, texture_size=16,
                                      texture_seed=4, texture_channels=(8, 8), view_inject=1)).eval().requires_grad_(False)
    B, R = 8, 16
    z_gt = torch.randn(B, 8)
    view = torch.nn.functional.normalize(torch.randn(B, 3) + torch.tensor([0.0, 0.0, 2.0]), dim=1)
    with torch.no_grad():
        verts, tex = dec(z_gt, view)
    gaze = torch.zeros(B, 2, 2)
    gaze[0] = 0.4
    kp = torch.rand(B, 3, 9, 2) * 32
    batch = {"z_gt": z_gt, "gaze": gaze, "keypoints": kp, "keypoints_visible": torch.ones(B, 3, 9, dtype=torch.bool),
             "vertices": verts, "view_direction": view, "texture": tex, "image": torch.zeros(B, 3, R, R),
             "uv_map": torch.zeros(B, R, R, 3)}
    out = {"z": z_gt.clone(), "gaze": gaze.clone(), "keypoints": kp.clone()}
    out["z"][0] += 1.0
    out["gaze"][0] += 0.1
    out["keypoints"][0] += 2.0
    args = (out, batch, dec, torch.ones(8), torch.ones(R, R, dtype=torch.bool), 32.0, LossWeights())
    plain = autocard_loss(*args)
    weighted = autocard_loss(*args, sample_weights=GazeReweighting(tau=0.25)(gaze))
    assert plain["total"] > 0
    assert (weighted["total"] / plain["total"]).item() == pytest.approx(8 * np.exp(2.4) / (np.exp(2.4) + 7), rel=1e-4)
    assert all(torch.equal(weighted[k], plain[k]) for k in plain if k != "total")
    off = autocard_loss(*args, sample_weights=GazeReweighting(enabled=False)(gaze))
    assert torch.equal(off["total"], plain["total"])


def test_augmentation_moves_keypoints_with_the_image():
    from encoder.train import EncoderTrainConfig, augment_hmc

    S = 64
    views = torch.zeros(2, 3, S, S)
    kp = torch.full((2, 3, 1, 2), 0.0)
    rng = np.random.default_rng(0)
    for b in range(2):
        for v in range(3):
            x, y = rng.integers(20, 44, 2)
            views[b, v, y - 1 : y + 2, x - 1 : x + 2] = 200.0
            kp[b, v, 0] = torch.tensor([x + 0.5, y + 0.5])
    cfg = EncoderTrainConfig(slip_rotation_deg=10, slip_translation=0.1, slip_scale=0.1, exposure_gain=(1, 1), exposure_gamma=(1, 1))
    out, kp2 = augment_hmc(views, kp, torch.Generator().manual_seed(3), cfg)
    assert not torch.allclose(kp, kp2)
    for b in range(2):
        for v in range(3):
            img = out[b, v]
            ys, xs = torch.meshgrid(torch.arange(S) + 0.5, torch.arange(S) + 0.5, indexing="ij")
            c = torch.stack([(img * xs).sum() / img.sum(), (img * ys).sum() / img.sum()])
            assert torch.dist(c, kp2[b, v, 0]) < 1.0


# ---------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def tiny_setup(tiny_hmc_setup):
    return tiny_hmc_setup


def test_tiny_rendered_data_has_every_target(tiny_setup):
    data, _ = tiny_setup
    n = len(data["views"])
    assert n > 10 and data["views"].shape == (n, 3, 32, 32) and data["views"].dtype == np.uint8
    assert data["keypoints"].shape == (n, 3, 9, 2) and data["keypoints_visible"].any()
    assert data["uv_map"].shape == (n, 16, 16, 3) and (data["uv_map"][..., 2] > 0.5).any()
    assert data["image"].shape == data["texture"].shape == (n, 16, 16, 3)
    assert not data["test"].any()


def test_few_step_training_lowers_the_loss_and_resumes(tiny_setup, tmp_path):
    from encoder.runtime import HmcEncoder
    from encoder.train import EncoderTrainConfig, train_encoder

    data, vae = tiny_setup
    data = dict(data)
    tcfg = EncoderTrainConfig(batch_size=len(data["views"]), lr=3e-3, lr_final=3e-3, steps=40, augment=False, threads=1,
                              checkpoint_every_s=1e9)
    r = train_encoder(tmp_path / "run", get_arch("tiny"), tcfg, data=data, vae=vae, progress=False, export=False)
    hist = r.loss_history
    first, last = hist[0]["total"], hist[-1]["total"]
    assert r.steps == 40 and last < 0.7 * first, (first, last)
    # Resume: a longer schedule continues from step 40.
    tcfg2 = EncoderTrainConfig(**{**tcfg.__dict__, "steps": 45})
    ck = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    ck["train_config"]["steps"] = 45
    torch.save(ck, tmp_path / "run" / "checkpoint.pt")
    r2 = train_encoder(tmp_path / "run", get_arch("tiny"), tcfg2, data=data, vae=vae, progress=False, export=True)
    assert r2.steps == 45
    assert r2.meta["train"]["steps"] == 45
    res = HmcEncoder(tmp_path / "run").encode(data["views"][0])
    assert res.z.shape == (8,)


def test_training_with_augmentation_and_reweighting_runs(tiny_setup, tmp_path):
    from encoder.train import EncoderTrainConfig, train_encoder

    data, vae = tiny_setup
    for rw in (True, False):
        tcfg = EncoderTrainConfig(batch_size=8, steps=3, reweight=rw, augment=True, threads=1)
        r = train_encoder(tmp_path / f"rw{rw}", get_arch("tiny"), tcfg, data=dict(data), vae=vae, progress=False, export=False)
        assert r.steps == 3 and np.isfinite(r.final_losses["total"])


def test_compact_model_halves_the_files_and_keeps_parity(tmp_path):
    from encoder.runtime import HmcEncoder

    torch.manual_seed(0)
    model = build_encoder("tiny").eval()
    S = model.arch.input_size
    with torch.no_grad():  # trained-looking batch-norm statistics
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    save_model(model, tmp_path / "full")
    meta = save_model(model, tmp_path / "compact", compact=True)
    assert meta["compact"] and max(meta["onnx_parity_max_rel_err"].values()) < 1e-2
    assert (tmp_path / "compact" / "encoder.pt").stat().st_size < 0.7 * (tmp_path / "full" / "encoder.pt").stat().st_size
    views = np.random.default_rng(2).integers(0, 200, (3, S, S), dtype=np.uint8)
    a = HmcEncoder(tmp_path / "full").encode(views)
    b = HmcEncoder(tmp_path / "compact").encode(views)
    np.testing.assert_allclose(a.z, b.z, rtol=2e-2, atol=2e-2)
    m2, _ = load_model(tmp_path / "compact")
    assert all(p.dtype == torch.float32 for p in m2.parameters())


def test_rendered_mse_is_zero_for_true_codes_and_grows_with_code_error(tiny_setup, tmp_path):
    from encoder.evaluate import cached_evaluation, rendered_mse
    from encoder.codec import attach_codes

    data, vae = tiny_setup
    data = attach_codes(dict(data), vae)
    z, g = data["z_gt"][:3], data["gaze"][:3]
    with torch.no_grad():  # a decoder whose geometry depends on z, so code errors move the mesh
        vae.decoder.geometry.basis.normal_(0, 0.02)
    same = rendered_mse("S1", vae, z, g, z, g, size=64)
    assert set(same) == {"whole", "face"}
    assert set(same["face"]) == {"front", "left", "right"} and all(np.all(v == 0) for p in same.values() for v in p.values())
    off = rendered_mse("S1", vae, z + 3.0, g + 0.3, z, g, size=64)
    assert all(np.all(v > 0) for p in off.values() for v in p.values())
    # Face pixels: the ground-truth render's foreground, not the whole frame.
    from avcore.metrics import face_and_frame_mse
    from encoder.evaluate import AvatarRenders

    r = AvatarRenders("S1", vae, 64)
    try:
        ip, ig = r.images(z[:1] + 3.0, g[:1] + 0.3, "left"), r.images(z[:1], g[:1], "left")
    finally:
        r.close()
    face, whole = face_and_frame_mse(ip[0], ig[0])
    assert off["face"]["left"][0] == pytest.approx(face) and off["whole"]["left"][0] == pytest.approx(whole)
    assert face != pytest.approx(whole)
    # The cached evaluation runs the exported model and re-uses its result.
    save_model(build_encoder("tiny"), tmp_path)
    test = {k: (v[:4] if k != "coverage" else v) for k, v in data.items()}
    r1 = cached_evaluation(tmp_path, "S1", test, vae, size=64)
    assert (tmp_path / "eval_S1.json").exists() and r1["frames"] == 4 and set(r1["mse"]) == {"front", "left", "right"}
    assert r1["mse_face_mean"] > r1["mse_mean"] > 0
    assert cached_evaluation(tmp_path, "S1", test, vae, size=64) == r1


def test_data_config_key_ignores_unset_options_and_tracks_set_ones():
    from encoder.data import HmcDataConfig

    base = HmcDataConfig(identity="S1")
    assert "train_extreme_probability" not in base.key()  # caches built before the option existed stay valid
    rom = HmcDataConfig(identity="S1", train_sessions=tuple(range(16)), train_extreme_probability=0.35)
    assert rom.key() != base.key() and "train_extreme_probability" in rom.key()


def test_a_trained_model_records_the_data_it_was_trained_on(tiny_setup, tmp_path):
    from encoder.data import HmcDataConfig
    from encoder.train import EncoderTrainConfig, train_encoder, training_data_of

    data, vae = tiny_setup
    rom = HmcDataConfig(identity="S1", train_sessions=tuple(range(16)), train_extreme_probability=0.35,
                        render_size=16, enc_texture_size=16)
    tcfg = EncoderTrainConfig(batch_size=4, steps=1, augment=False, threads=1)
    train_encoder(tmp_path / "run", get_arch("tiny"), tcfg, data=dict(data), vae=vae, progress=False,
                  data_info=rom.__dict__ | {"path": "runs/encoder/data_S1_rom.npz"})
    path, cfg = training_data_of(tmp_path / "run")
    assert str(path) == "runs/encoder/data_S1_rom.npz" and cfg == rom and cfg.key() == rom.key()


def test_the_senders_default_encoder_is_named_per_identity(tmp_path):
    import json

    from encoder.runtime import default_arch, default_model_dir, set_default_arch
    from runtime.models import DEFAULT_ENCODER_DIR, PACKAGE_ROOT

    # The shipped table names the embedded default, and every runtime path agrees on it.
    assert default_model_dir("S1") == default_model_dir("S1", default_arch("S1"))
    assert PACKAGE_ROOT / DEFAULT_ENCODER_DIR == default_model_dir("S1")
    assert (default_model_dir("S1") / "fusion.onnx").is_file()
    # Switching: only to an encoder that is there; other identities keep theirs.
    (tmp_path / "S1" / "AVE-S").mkdir(parents=True)
    with pytest.raises(FileNotFoundError):
        set_default_arch("S1", "AVE-S", tmp_path)
    (tmp_path / "S1" / "AVE-S" / "fusion.onnx").write_bytes(b"x")
    (tmp_path / "defaults.json").write_text(json.dumps({"S2": "EEM"}))
    set_default_arch("S1", "AVE-S", tmp_path)
    assert default_arch("S1", tmp_path) == "AVE-S" and default_arch("S2", tmp_path) == "EEM"
    assert default_arch("S3", tmp_path) == "EEM"  # none named: EEM
