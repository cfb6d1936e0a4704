"""The deferred neural renderer G: spherical harmonics, neural texture sampling, ONNX parity, a few training steps."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from renderer.neural import SH_CHANNELS, NeuralRenderer, NeuralRendererConfig, sh_basis, ssim_loss

TINY = NeuralRendererConfig(channels=12, texture_levels=(16, 8), widths=(8, 12, 16))


def _buffers(b: int = 2, s: int = 24, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    raster = torch.rand(b, 3, s, s, generator=g)
    uv = torch.rand(b, 3, s, s, generator=g)
    uv[:, 2] = (uv[:, 2] > 0.3).float()
    view = torch.nn.functional.normalize(torch.randn(b, 3, generator=g), dim=1)
    return raster, uv, view


def test_sh_basis_is_orthonormal_over_the_sphere():
    rng = np.random.default_rng(0)
    d = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(200000, 3))).float(), dim=1)
    y = sh_basis(d).double()
    gram = (y.T @ y) * (4 * math.pi / len(d))  # Monte-Carlo integral over the sphere
    assert torch.allclose(gram, torch.eye(9, dtype=torch.float64), atol=0.03)


def test_the_view_modulates_only_the_sh_channels_and_the_mask_gates_the_texture():
    torch.manual_seed(0)
    g = NeuralRenderer(TINY)
    for t in g.texture.levels:
        torch.nn.init.normal_(t)
    raster, uv, view = _buffers()
    a = g.buffers_to_input(raster, uv, view)
    b = g.buffers_to_input(raster, uv, -view)
    lo, hi = SH_CHANNELS
    assert torch.equal(a[:, :lo], b[:, :lo]) and not torch.allclose(a[:, lo:hi], b[:, lo:hi])
    assert torch.equal(a[:, hi:], b[:, hi:])  # raster colour and mask do not depend on the view
    off = uv[:, 2:3].expand_as(a[:, :TINY.channels]) == 0
    assert torch.all(a[:, :TINY.channels][off] == 0)  # no face there: no texture features


def test_g_exports_to_onnx_with_parity_and_returns_its_cache_features(tmp_path):
    import onnxruntime as ort

    torch.manual_seed(1)
    g = NeuralRenderer(TINY).eval()
    raster, uv, view = _buffers(1, 32)
    with torch.no_grad():
        ref = g(raster, uv, view)
    assert ref["image"].shape == (1, 3, 32, 32) and 0 <= float(ref["image"].min()) and float(ref["image"].max()) <= 1
    assert [f.shape[1] for f in ref["features"]] == [16, 12, 8] and ref["features"][-1].shape[-1] == 32

    from renderer.neural import FlatOutputs

    path = tmp_path / "g.onnx"
    torch.onnx.export(FlatOutputs(g), (raster, uv, view), str(path), input_names=["raster", "uv", "view"],
                      output_names=["image", "f0", "f1", "f2"], opset_version=17, dynamo=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"raster": raster.numpy(), "uv": uv.numpy(), "view": view.numpy()})
    np.testing.assert_allclose(out[0], ref["image"].numpy(), atol=1e-4)
    for o, f in zip(out[1:], ref["features"]):
        np.testing.assert_allclose(o, f.numpy(), atol=1e-3)


def test_a_few_training_steps_lower_l1_plus_structure_loss():
    torch.manual_seed(2)
    g = NeuralRenderer(TINY)
    raster, uv, view = _buffers(4, 24, seed=3)
    target = torch.flip(raster, dims=[-1]) * 0.5 + 0.25 * uv[:, 2:3]  # something G must learn to produce
    opt = torch.optim.Adam(g.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        img = g(raster, uv, view)["image"]
        loss = (img - target).abs().mean() + 0.5 * ssim_loss(img, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0]


def test_the_structure_loss_matches_the_ssim_metric():
    from avcore.metrics import ssim

    rng = np.random.default_rng(4)
    a = rng.random((24, 28, 3))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    t = lambda x: torch.from_numpy(x).permute(2, 0, 1)[None].double()  # noqa: E731
    assert float(ssim_loss(t(a), t(a))) == pytest.approx(0.0, abs=1e-9)
    assert 1 - float(ssim_loss(t(a), t(b))) == pytest.approx(ssim(a, b, peak=1.0), abs=2e-3)


def test_renderer_data_and_training_on_a_tiny_decoder(tmp_path):
    """Buffers of the decoded avatar against the studio's truth; a short run exports G and compares it with the
    raster on held-out poses; a second run resumes."""
    from decoder.config import DecoderConfig, TrainConfig
    from decoder.data import build_dataset
    from decoder.train import train_decoder
    from renderer.data import RendererDataConfig, build_renderer_data
    from renderer.train import RendererTrainConfig, train_renderer

    dcfg = DecoderConfig(identity="S1", latent_dim=8, geometry_basis=4, geometry_hidden=16, texture_seed=4,
                         texture_channels=(8, 8), view_inject=1, encoder_texture_size=16, encoder_channels=(4, 8))
    tcfg = TrainConfig(num_train_poses=4, views_per_pose=1, image_size=32, batch_size=4, steps=3, time_budget_s=120.0,
                       checkpoint_every_s=1e9, threads=1)
    train_decoder(tmp_path / "dec", dcfg, tcfg, progress=False, data=build_dataset("S1", 4, 5, dcfg, tcfg, progress=False))
    train = build_renderer_data(RendererDataConfig(poses=3, views_per_pose=2, size=32), decoder_dir=tmp_path / "dec",
                                cache=tmp_path / "train.npz", progress=False)
    assert train["raster"].shape == (6, 32, 32, 3) and train["uv"].shape == (6, 32, 32, 3) and train["z"].shape == (6, 8)
    face = train["uv"][..., 2] > 0.5
    assert face.any() and (train["raster"][face].max(-1) > 0).mean() > 0.9  # the avatar is drawn where the face is
    assert (train["target"].max(-1) > 0).mean() > 0.05  # the studio's truth is not blank
    again = build_renderer_data(RendererDataConfig(poses=3, views_per_pose=2, size=32), decoder_dir=tmp_path / "dec",
                                cache=tmp_path / "train.npz", progress=False)
    assert np.array_equal(again["target"], train["target"])  # from the cache
    test = build_renderer_data(RendererDataConfig(poses=2, views_per_pose=1, size=32, seed=99),
                               decoder_dir=tmp_path / "dec", progress=False)
    gcfg = NeuralRendererConfig(channels=12, texture_levels=(16, 8), widths=(8, 12))
    meta = train_renderer(tmp_path / "g", train, test, gcfg, RendererTrainConfig(steps=3, batch_size=2, threads=1,
                                                                                 checkpoint_every_s=1e9), progress=False)
    assert (tmp_path / "g" / "renderer.onnx").is_file() and meta["train"]["steps_done"] == 3
    assert set(meta["heldout"]) == {"G", "raster"} and all(math.isfinite(v["psnr_face"]) for v in meta["heldout"].values())
    more = train_renderer(tmp_path / "g", train, test, None, RendererTrainConfig(steps=5, batch_size=2, threads=1),
                          progress=False)
    assert more["train"]["steps_done"] == 5 and more["renderer"] == gcfg.to_dict()  # resumed with its own config
