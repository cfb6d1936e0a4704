"""Decoder VAE: ONNX/torch parity, a few training steps whose loss falls, checkpoint resume,
eval output schema. Tiny configs; real studio data, real onnxruntime sessions, real GL."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from decoder.config import DecoderConfig, TrainConfig  # noqa: E402
from decoder.model import AvatarDecoder, CodecAvatarVAE  # noqa: E402

torch.set_num_threads(1)


def tiny_config(**kw) -> DecoderConfig:
    base = dict(identity="S1", latent_dim=16, geometry_basis=8, geometry_hidden=32, texture_seed=4,
                texture_channels=(8, 8), view_inject=1, encoder_texture_size=16, encoder_channels=(4, 8))
    base.update(kw)
    return DecoderConfig(**base)


def tiny_train_config(**kw) -> TrainConfig:
    base = dict(num_train_poses=6, views_per_pose=1, image_size=32, batch_size=4, lr=3e-3, lr_final=3e-3,
                steps=40, time_budget_s=120.0, checkpoint_every_s=1e9, threads=1)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def tiny_data():
    from decoder.data import build_dataset

    return build_dataset("S1", 6, 5, tiny_config(), tiny_train_config(), progress=False)


def test_dataset_arrays(tiny_data):
    d = tiny_data
    assert d["vertices"].shape[0] == 6 and d["vertices"].shape[2] == 3
    assert d["texture"].shape == (6, 1, 256, 256, 3) and d["texture"].dtype == np.uint8
    assert d["image"].shape == (6, 1, 32, 32, 3) and d["uv_map"].shape == (6, 1, 32, 32, 3)
    np.testing.assert_allclose(np.linalg.norm(d["view_direction"], axis=-1), 1.0, atol=1e-5)
    assert 0.5 < d["coverage"].mean() <= 1.0


def test_onnx_matches_torch(tmp_path):
    import onnxruntime as ort

    from decoder.export import PARITY_ATOL, export_onnx

    torch.manual_seed(0)
    dec = AvatarDecoder(tiny_config(num_vertices=50))
    with torch.no_grad():  # non-trivial weights everywhere (the head starts at zero)
        for p in dec.parameters():
            p.normal_(0, 0.1)
    diffs = export_onnx(dec, tmp_path / "d.onnx")
    assert diffs["vertices"] <= PARITY_ATOL["vertices"] and diffs["texture"] <= PARITY_ATOL["texture"]
    sess = ort.InferenceSession(str(tmp_path / "d.onnx"), providers=["CPUExecutionProvider"])
    z = np.random.default_rng(1).normal(size=(3, 16)).astype(np.float32)
    v = np.tile(np.array([[0.0, 0.6, 0.8]], np.float32), (3, 1))
    verts, tex = sess.run(None, {"z": z, "view_direction": v})
    with torch.no_grad():
        rv, rt = dec(torch.from_numpy(z), torch.from_numpy(v))
    assert verts.shape == (3, 50, 3) and tex.shape == (3, 3, 256, 256)
    np.testing.assert_allclose(verts, rv.numpy(), atol=PARITY_ATOL["vertices"])
    np.testing.assert_allclose(tex, rt.numpy(), atol=PARITY_ATOL["texture"])
    # The texture depends on the view direction.
    t2 = sess.run(None, {"z": z, "view_direction": np.tile(np.array([[0.6, 0.0, 0.8]], np.float32), (3, 1))})[1]
    assert np.abs(t2 - tex).max() > 1e-4


def _full_loss(model, data, tcfg):
    from decoder.train import batch_tensors, vae_losses

    cov = torch.from_numpy(data["coverage"].astype(np.float32))[None, None]
    n = len(data["vertices"])
    with torch.no_grad():
        losses = vae_losses(model, batch_tensors(data, np.arange(n), np.zeros(n, int)), cov, tcfg, sample=False)
    # Reconstruction only: the KL term starts at ~0 from the data-driven init and may rise while it learns.
    return float(losses["geometry"] + losses["texture"] + losses["image"])


def test_training_loss_falls_and_resumes(tmp_path, tiny_data):
    from decoder.train import init_from_data, train_decoder

    dcfg, tcfg = tiny_config(), tiny_train_config()
    torch.manual_seed(tcfg.train_seed)
    model0 = CodecAvatarVAE(tiny_config(num_vertices=tiny_data["vertices"].shape[1]))
    init_from_data(model0, tiny_data)
    before = _full_loss(model0, tiny_data, tcfg)

    r = train_decoder(tmp_path, dcfg, tcfg, progress=False, export=False, data=tiny_data)
    assert r.steps == 40
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ck["step"] == 40 and ck["decoder_config"]["latent_dim"] == 16
    model1 = CodecAvatarVAE(DecoderConfig.from_dict(ck["decoder_config"]))
    model1.load_state_dict(ck["model"])
    after = _full_loss(model1, tiny_data, tcfg)
    assert after < 0.9 * before, (before, after)  # measured: 0.096 -> 0.080

    # Resume: a second call with a larger step budget continues from step 40.
    r2 = train_decoder(tmp_path, dcfg, tiny_train_config(steps=50), progress=False, export=False, data=tiny_data)
    assert r2.steps == 50
    ck2 = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ck2["step"] == 50 and ck2["elapsed_s"] >= ck["elapsed_s"]
    assert ck2["loss_history"][: len(ck["loss_history"])] == ck["loss_history"]


def test_eval_output_schema(tmp_path, capsys):
    from decoder.export import save_model
    from decoder.model import AvatarEncoder
    from avcall.decoder_cmds import add_bench, add_eval

    cfg = tiny_config()
    torch.manual_seed(0)
    save_model(AvatarDecoder(cfg), tmp_path, studio_identity="S1", encoder=AvatarEncoder(cfg))
    assert {"config.json", "weights.pt", "encoder.pt", "decoder.onnx", "assets.npz"} <= {p.name for p in tmp_path.iterdir()}

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    ev = sub.add_parser("eval").add_subparsers()
    add_eval(ev)
    be = sub.add_parser("bench").add_subparsers()
    add_bench(be)

    out = tmp_path / "eval.json"
    args = parser.parse_args(["eval", "decoder", "--model", str(tmp_path), "--frames", "2", "--linearity-frames", "8", "--json", "--out", str(out)])
    assert args.func(args) == 0
    res = json.loads(capsys.readouterr().out)
    for k in ("psnr_front", "psnr_left", "psnr_right", "mse_front", "mse_left", "mse_right", "linearity_mse_ratio"):
        assert isinstance(res[k], float) and np.isfinite(res[k]), k
    assert json.loads(out.read_text()) == res

    args = parser.parse_args(["bench", "decoder", "--model", str(tmp_path), "--iters", "3", "--json"])
    assert args.func(args) == 0
    b = json.loads(capsys.readouterr().out)
    assert b["decode_ms_p50"] > 0 and b["render_ms_p50"] > 0
    assert b["command"].startswith("avcall bench decoder") and b["machine"]  # where the numbers came from


def test_psnr_of_images_differing_by_a_constant():
    """What ``avcall eval decoder`` reports: PSNR = 10 log10(peak^2 / MSE), on 0..255 and on 0..1 images."""
    from avcore.metrics import mse, psnr, psnr_from_mse

    a = np.random.default_rng(0).integers(10, 240, (32, 40, 3)).astype(np.uint8)
    for c in (1, 5, 10):
        b = a.astype(np.int16) + c
        assert mse(a, b) == c * c
        assert psnr(a, b) == pytest.approx(10 * np.log10(255.0**2 / c**2), abs=1e-9)
        assert psnr(a / 255.0, b / 255.0, peak=1.0) == pytest.approx(10 * np.log10(255.0**2 / c**2), abs=1e-6)
    assert psnr(a, a) == float("inf") and psnr_from_mse(1e-4, peak=1.0) == pytest.approx(40.0)
    with pytest.raises(ValueError, match="shape"):
        psnr(a, a[:-1])


def test_face_mse_counts_only_the_ground_truth_foreground():
    from avcore.metrics import face_and_frame_mse

    gt = np.zeros((4, 4, 3), np.uint8)
    gt[1:3, 1:3] = 100  # a 2x2 face on black
    img = gt.copy()
    img[0, 0] = 40  # a change off the face: whole frame only
    img[1, 1, 0] = 110  # a change on it
    face, frame = face_and_frame_mse(img, gt)
    assert face == pytest.approx(10**2 / (4 * 3))  # one channel of one face pixel, over 4 pixels x 3 channels
    assert frame == pytest.approx((3 * 40**2 + 10**2) / (16 * 3))


def test_ssim_is_one_for_identical_images_and_follows_the_formula():
    from avcore.metrics import ssim

    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (48, 40, 3)).astype(np.float64)
    assert ssim(img, img) == pytest.approx(1.0, abs=1e-9)
    assert ssim(img[..., 0], img[..., 0]) == pytest.approx(1.0, abs=1e-9)
    # Two flat images a and b: no variance, so SSIM is the luminance term (2ab + C1) / (a^2 + b^2 + C1), C1 = (0.01 L)^2.
    a, b, c1 = 100.0, 140.0, (0.01 * 255) ** 2
    flat = np.full((16, 16), a), np.full((16, 16), b)
    assert ssim(*flat) == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-9)
    # More noise, lower SSIM.
    noisy = [ssim(img, np.clip(img + rng.normal(0, s, img.shape), 0, 255)) for s in (2, 10, 40)]
    assert 1 > noisy[0] > noisy[1] > noisy[2] > 0
    with pytest.raises(ValueError, match="11"):
        ssim(np.zeros((8, 8)), np.zeros((8, 8)))
    # A mask averages only its pixels: noise outside it does not count, an all-true mask is the plain mean.
    left = np.zeros((48, 40), bool)
    left[:, :14] = True  # windows of these pixels end before column 20
    half = img.copy()
    half[:, 20:] = np.clip(half[:, 20:] + rng.normal(0, 40, half[:, 20:].shape), 0, 255)
    assert ssim(img, half, mask=left) == pytest.approx(1.0, abs=1e-9)
    assert ssim(img, half) < 0.97  # unmasked, the noisy half counts
    assert ssim(img, half, mask=np.ones((48, 40), bool)) == pytest.approx(ssim(img, half))
    with pytest.raises(ValueError, match="mask"):
        ssim(img, half, mask=np.zeros((48, 40), bool))


def test_receiver_path_does_not_import_torch():
    """The embedded S1 model decodes (onnxruntime) and renders (moderngl) in a process without torch."""
    import subprocess
    import sys

    from decoder.runtime import default_model_dir

    if not (default_model_dir("S1") / "config.json").exists():
        pytest.skip("embedded S1 model not present")
    code = (
        "import sys, numpy as np\n"
        "from decoder.runtime import Avatar\n"
        "p = Avatar(size=128)\n"
        "z = np.zeros(p.latent_dim, np.float32)\n"
        "img = p.render_code(z, np.zeros((2, 2), np.float32), [0.0, 0.0, 1.0])\n"
        "assert img.shape == (128, 128, 3) and img.dtype == np.uint8 and img.max() > 50\n"
        "assert 'torch' not in sys.modules, 'receiver path imported torch'\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


def test_a_decoder_trained_into_another_models_latent_space_keeps_its_encoder(tmp_path, tiny_data):
    """``latent_from``: a larger decoder learns to decode the codes of an existing model's frozen encoder (the
    teacher and students of the distillation), its loss falls, and its directory carries that same encoder, with
    the encoder's own sizes: the decoder's geometry basis differs, and every reader rebuilds the encoder."""
    from decoder.export import load_torch_encoder, load_vae, save_from_checkpoint
    from decoder.train import train_decoder

    base = tmp_path / "base"
    train_decoder(base, tiny_config(), tiny_train_config(steps=5), progress=False, data=tiny_data)
    bigger = tiny_config(geometry_basis=12, geometry_hidden=64, texture_channels=(16, 8))
    r = train_decoder(tmp_path / "big", bigger, tiny_train_config(steps=40, latent_from=str(base)), progress=False,
                      data=tiny_data)
    hist = r.loss_history
    assert hist[-1]["total"] < 0.9 * hist[0]["total"], (hist[0], hist[-1])
    a, b = load_torch_encoder(base), load_torch_encoder(tmp_path / "big")
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)  # the latent space is the base model's, untouched
    assert b.cfg.geometry_basis == 8
    resaved = save_from_checkpoint(tmp_path / "big" / "checkpoint.pt", tmp_path / "resaved")
    assert resaved["decoder"]["geometry_basis"] == 12
    for source in (tmp_path / "big", tmp_path / "resaved"):
        vae = load_vae(model_dir=source)
        assert vae.decoder.cfg.geometry_basis == 12 and vae.encoder.cfg.geometry_basis == 8
        for (ka, va), (kb, vb) in zip(a.state_dict().items(), vae.encoder.state_dict().items()):
            assert ka == kb and torch.equal(va, vb)
    with pytest.raises(Exception, match="latent_dim"):
        train_decoder(tmp_path / "bad", tiny_config(latent_dim=8), tiny_train_config(steps=1, latent_from=str(base)),
                      progress=False, data=tiny_data)
