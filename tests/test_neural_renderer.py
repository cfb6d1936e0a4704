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
    assert torch.equal(a[:, hi:-3], b[:, hi:-3])  # raster colour, mask and pixel position do not depend on the view
    assert torch.equal(a[:, -3:], view[:, :, None, None].expand_as(a[:, -3:]))  # the view, broadcast (off-face pixels)
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
    with torch.no_grad():
        sampled = g.texture(uv[:, :2])  # the exported G starts from the texture sampled outside (by GL)
    torch.onnx.export(FlatOutputs(g), (raster, uv, view, sampled), str(path),
                      input_names=["raster", "uv", "view", "features"],
                      output_names=["image", "f0", "f1", "f2"], opset_version=17, dynamo=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"raster": raster.numpy(), "uv": uv.numpy(), "view": view.numpy(), "features": sampled.numpy()})
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


def _tiny_decoder(path):
    from decoder.config import DecoderConfig, TrainConfig
    from decoder.data import build_dataset
    from decoder.train import train_decoder

    dcfg = DecoderConfig(identity="S1", latent_dim=8, geometry_basis=4, geometry_hidden=16, texture_seed=4,
                         texture_channels=(8, 8), view_inject=1, encoder_texture_size=16, encoder_channels=(4, 8))
    tcfg = TrainConfig(num_train_poses=4, views_per_pose=1, image_size=32, batch_size=4, steps=3, time_budget_s=120.0,
                       checkpoint_every_s=1e9, threads=1)
    train_decoder(path, dcfg, tcfg, progress=False, data=build_dataset("S1", 4, 5, dcfg, tcfg, progress=False))
    return path


def test_the_clip_cache_key_changes_when_the_decoder_is_retrained_in_place(tmp_path):
    """Clips hold the decoder's codes and rasters: a decoder retrained into the same directory must not be served
    the old clips."""
    from renderer.data import RendererDataConfig, _model_dir_and_key

    (tmp_path / "decoder.onnx").write_bytes(b"weights one")
    _, first = _model_dir_and_key(RendererDataConfig(), tmp_path)
    assert _model_dir_and_key(RendererDataConfig(), tmp_path)[1] == first  # same decoder, same key
    (tmp_path / "decoder.onnx").write_bytes(b"weights two")
    assert _model_dir_and_key(RendererDataConfig(), tmp_path)[1] != first


def test_renderer_clips_training_export_and_the_engine_on_a_tiny_decoder(tmp_path):
    """Clips of the decoded avatar against the studio's truth; a short run of G and W exports both and compares them
    on held-out clips; a second run resumes; the receiver's engine runs the exported pair (generate, then warp)."""
    from avcore.errors import UsageError
    from renderer.config import WarpConfig
    from renderer.data import RendererDataConfig, build_renderer_data
    from renderer.engine import EngineSpec, open_engine
    from renderer.train import RendererTrainConfig, install_renderer, train_renderer

    dec = _tiny_decoder(tmp_path / "dec")
    dcfg = RendererDataConfig(clips=3, size=32, max_view_speed_dps=600.0)
    train = build_renderer_data(dcfg, decoder_dir=dec, cache=tmp_path / "train.npz", progress=False)
    assert train["raster"].shape == (3, 32, 32, 3) and train["uv"].shape == (3, 3, 32, 32, 3)
    assert train["target"].shape == (3, 3, 32, 32, 3) and train["z"].shape == (3, 3, 8)
    face = train["uv"][:, 0, ..., 2] > 0.5
    assert face.any() and (train["raster"][face].max(-1) > 0).mean() > 0.9  # the avatar is drawn where the face is
    assert (train["target"].max(-1) > 0).mean() > 0.05  # the studio's truth is not blank
    turned = np.degrees(np.arccos(np.clip((train["view"][:, 0] * train["view"][:, 2]).sum(-1), -1, 1)))
    assert turned.max() > 1.0 and turned.max() < 2 * 600 / 60 + 0.5  # the viewer turns, at most 2 frames' worth
    # frame t+2's UV map is the same mesh seen from the turned view: the surface moved in the image
    assert not np.array_equal(train["uv"][:, 0], train["uv"][:, 2])
    again = build_renderer_data(dcfg, decoder_dir=dec, cache=tmp_path / "train.npz", progress=False)
    assert np.array_equal(again["target"], train["target"])  # from the cache
    test = build_renderer_data(RendererDataConfig(clips=2, size=32, seed=99), decoder_dir=dec, progress=False)
    gcfg = NeuralRendererConfig(channels=12, texture_levels=(16, 8), widths=(8, 12, 16))
    wcfg = WarpConfig(hidden=4, widths=(8, 6), image_flow=True, w2_kernel=1)  # the embedded W's kind: the engine feeds G's image
    meta = train_renderer(tmp_path / "g", train, test, gcfg, RendererTrainConfig(steps=3, batch_size=2, threads=1,
                          checkpoint_every_s=1e9), wcfg=wcfg, progress=False)
    assert (tmp_path / "g" / "renderer.onnx").is_file() and (tmp_path / "g" / "warp.onnx").is_file()
    assert meta["train"]["steps_done"] == 3
    assert set(meta["heldout"]) == {"G", "raster", "warp_t+1", "warp_t+2", "naive_t+1", "naive_t+2"}
    assert all(math.isfinite(v["psnr_face"]) for v in meta["heldout"].values())
    more = train_renderer(tmp_path / "g", train, test, None, RendererTrainConfig(steps=5, batch_size=2, threads=1),
                          progress=False)
    assert more["train"]["steps_done"] == 5 and more["renderer"] == gcfg.to_dict() and more["warp"] == wcfg.to_dict()
    again = train_renderer(tmp_path / "g", train, test, None, RendererTrainConfig(steps=5, batch_size=2, threads=1),
                           progress=False)  # a finished run: nothing to train, and its record stays what it was
    assert again["train"]["steps_done"] == 5 and math.isfinite(again["train"]["final_loss_w"])
    assert again["train"]["final_loss_w"] == more["train"]["final_loss_w"]
    # an ablation: W alone on the frozen G, which it copies
    abl = train_renderer(tmp_path / "noduv", train, test, None, RendererTrainConfig(steps=2, batch_size=2, threads=1),
                         wcfg=WarpConfig(hidden=4, widths=(8, 6), duv=False), frozen_g=tmp_path / "g", progress=False)
    assert abl["generator_from"] and (tmp_path / "noduv" / "renderer.onnx").read_bytes() == \
        (tmp_path / "g" / "renderer.onnx").read_bytes()

    with pytest.raises(UsageError, match="avcall train renderer"):
        open_engine(EngineSpec(str(dec), size=48))  # the tiny avatar has no renderer yet: one clear line
    install_renderer(tmp_path / "g", dec)
    eng = open_engine(EngineSpec(str(dec), size=48, threads=1))
    try:
        z, gaze = test["z"][0, 0], test["gaze"][0, 0]
        with pytest.raises(RuntimeError, match="no cache"):
            eng.warp(z, gaze, test["view"][0, 1])
        a = eng.generate(z, gaze, test["view"][0, 0])
        assert a.shape == (48, 48, 3) and a.dtype == np.uint8 and eng.has_cache
        assert eng.last_ms["decode"] > 0 and eng.last_ms["network"] > 0
        b = eng.warp(test["z"][0, 1], test["gaze"][0, 1], test["view"][0, 1])
        assert b.shape == (48, 48, 3) and eng.last_ms["decode"] == 0.0  # the warp path decodes nothing
        assert not np.array_equal(a, b)  # a turned view and a new code: a new image
    finally:
        eng.close()
    # the receiver's path (GL-sampled neural texture, onnxruntime) gives torch G's image on the same buffers
    from renderer.neural import NeuralRenderer

    g = NeuralRenderer(gcfg)
    g.load_state_dict(torch.load(tmp_path / "g" / "checkpoint.pt", weights_only=True)["model"])
    g.eval()
    eng = open_engine(EngineSpec(str(dec), size=32, threads=1))  # G's working size: no resize
    try:
        view0 = np.asarray(test["view"][0, 0], np.float32)
        a = eng.generate(z, gaze, view0)
        raster = torch.from_numpy(eng.rasterize(z, gaze, view0)).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            ref = g(raster, torch.from_numpy(eng.cache["uv"]), torch.from_numpy(view0[None]))["image"]
        ref_img = (ref[0].permute(1, 2, 0).numpy() * 255).round()
        assert np.abs(ref_img - a.astype(float)).max() <= 3
    finally:
        eng.close()


WARP_TINY = dict(hidden=4, widths=(8, 6))


def _cache(b: int = 2, s: int = 32, z: int = 5, seed: int = 0):
    torch.manual_seed(seed)
    g = NeuralRenderer(TINY)
    raster, uv, view = _buffers(b, s, seed)
    out = g(raster, uv, view)
    new_view = torch.nn.functional.normalize(view + 0.05 * torch.randn(b, 3), dim=1)
    uv_new = torch.roll(uv, 1, dims=-1)
    return g, out, {"uv": uv, "view": view, "z": torch.randn(b, z), "gaze": torch.randn(b, 4) * 0.1,
                    "uv_new": uv_new, "view_new": new_view, "z_new": torch.randn(b, z), "gaze_new": torch.randn(b, 4) * 0.1}


@pytest.mark.parametrize("variant", ["full", "no-duv", "no-code-pose", "no-mlp", "no-sh-modulation", "explicit",
                                     "feature-flow", "image-flow", "image-flow-narrow"])
def test_every_warp_variant_exports_to_onnx_with_parity(tmp_path, variant):
    from renderer.config import ABLATIONS, WarpConfig
    from renderer.warp import WARP_INPUTS, ImplicitWarp, export_warp

    kw = {"explicit": {"explicit": True}, "feature-flow": {"feature_flow": True},
          "image-flow": {"image_flow": True}, "image-flow-narrow": {"image_flow": True, "widths": (4, 3), "w2_kernel": 1}}.get(variant, ABLATIONS.get(variant, {}))
    _, out, s = _cache(1)
    w = ImplicitWarp((16, 12, 8), 5, WarpConfig(**{**WARP_TINY, **kw}))
    ex = dict(zip(("f0", "f1", "f2"), [f.detach() for f in out["features"]]), image=out["image"].detach(),
              **{k: v.detach() for k, v in s.items()})
    export_warp(w, tmp_path / "w.onnx", {k: ex[k] for k in WARP_INPUTS})  # raises on a parity failure
    import onnxruntime as ort

    names = {i.name for i in ort.InferenceSession(str(tmp_path / "w.onnx")).get_inputs()}
    assert ("uv_new" in names) == (variant != "no-duv")  # a switched-off input is really not used
    assert ("z_new" in names) == (variant not in ("no-code-pose", "no-mlp"))
    assert ("image" in names) == (variant in ("explicit", "image-flow", "image-flow-narrow"))


def test_the_warp_sees_the_view_change_the_uv_change_and_the_code():
    """W's output depends on each input the paper gives it, and an ablation removes exactly that dependence."""
    from renderer.warp import ImplicitWarp, WarpConfig

    _, out, s = _cache(2)
    f = [x.detach() for x in out["features"]]
    img = out["image"].detach()

    def run(w, **change):
        a = {**s, **change}
        return w(*f, img, a["uv"], a["view"], a["z"], a["gaze"], a["uv_new"], a["view_new"], a["z_new"], a["gaze_new"])

    torch.manual_seed(3)
    full = ImplicitWarp((16, 12, 8), 5, WarpConfig(**WARP_TINY))
    base = run(full)
    assert not torch.allclose(base, run(full, uv_new=s["uv"]))
    assert not torch.allclose(base, run(full, z_new=s["z_new"] + 1))
    assert not torch.allclose(base, run(full, view_new=s["view"]))
    no_duv = ImplicitWarp((16, 12, 8), 5, WarpConfig(**WARP_TINY, duv=False))
    assert torch.equal(run(no_duv), run(no_duv, uv_new=s["uv"]))
    no_code = ImplicitWarp((16, 12, 8), 5, WarpConfig(**WARP_TINY, code_pose=False))
    assert torch.equal(run(no_code), run(no_code, z_new=s["z_new"] + 1, gaze_new=s["gaze"]))
    assert not torch.equal(run(no_code), run(no_code, view_new=s["view"]))  # it still sees the view (SH)


def test_the_explicit_warp_starts_as_the_cached_image_and_moves_it_along_its_flow():
    from renderer.warp import ImplicitWarp, WarpConfig, resample

    _, out, s = _cache(1)
    img = out["image"].detach()
    w = ImplicitWarp((16, 12, 8), 5, WarpConfig(**WARP_TINY, explicit=True))
    f = [x.detach() for x in out["features"]]
    got = w(*f, img, s["uv"], s["view"], s["z"], s["gaze"], s["uv_new"], s["view_new"], s["z_new"], s["gaze_new"])
    assert torch.allclose(got, img, atol=1e-5)  # zero flow at the start: the naive reuse of the last frame
    ramp = torch.linspace(0, 1, 32).expand(1, 1, 32, 32).repeat(1, 3, 1, 1)
    shifted = resample(ramp, torch.full((1, 2, 32, 32), 0.0).index_fill(1, torch.tensor([0]), 2 / 32))
    assert torch.allclose(shifted[..., 4:-4], ramp[..., 5:-3], atol=1e-4)  # one pixel to the left


def test_the_feature_flow_warp_starts_as_the_plain_warp_and_moves_the_cached_maps_along_its_flow():
    from renderer.warp import ImplicitWarp, WarpConfig

    _, out, s = _cache(1)
    f = [x.detach() for x in out["features"]]
    args = (*f, out["image"].detach(), s["uv"], s["view"], s["z"], s["gaze"], s["uv_new"], s["view_new"], s["z_new"],
            s["gaze_new"])
    torch.manual_seed(4)
    w = ImplicitWarp((16, 12, 8), 5, WarpConfig(**WARP_TINY, feature_flow=True))
    with torch.no_grad():
        moved = w(*args)
        w.cfg.feature_flow = False
        plain = w(*args)
        assert torch.allclose(moved, plain, atol=1e-6)  # zero-initialised flow: no motion yet
        w.cfg.feature_flow = True
        w.flow.bias.copy_(torch.tensor([4 / 32, 0.0]))  # two pixels at S/2... four at S
        assert not torch.allclose(w(*args), plain, atol=1e-3)


def test_resample_is_grid_sample_with_border_clamping():
    from renderer.warp import resample

    torch.manual_seed(7)
    img = torch.rand(2, 3, 20, 24)
    ys, xs = torch.meshgrid(torch.linspace(-1 + 1 / 20, 1 - 1 / 20, 20), torch.linspace(-1 + 1 / 24, 1 - 1 / 24, 24),
                            indexing="ij")
    flow = torch.randn(2, 2, 20, 24) * 0.4  # up to a few pixels, some past the border
    grid = torch.stack([xs, ys], -1)[None] + flow.permute(0, 2, 3, 1)
    ref = torch.nn.functional.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)
    assert torch.allclose(resample(img, flow), ref, atol=1e-5)
    assert torch.equal(resample(img, torch.zeros(2, 2, 20, 24)), img)


def test_the_image_flow_warp_starts_as_the_cached_image_then_moves_it_and_corrects_it():
    from renderer.warp import ImplicitWarp, WarpConfig, resample

    _, out, s = _cache(1)
    f = [x.detach() for x in out["features"]]
    img = out["image"].detach()
    args = (*f, img, s["uv"], s["view"], s["z"], s["gaze"], s["uv_new"], s["view_new"], s["z_new"], s["gaze_new"])
    torch.manual_seed(6)
    w = ImplicitWarp((16, 12, 8), 5, WarpConfig(**WARP_TINY, image_flow=True))
    with torch.no_grad():
        assert torch.allclose(w(*args), img, atol=1e-6)  # zero flow, zero correction: the naive reuse
        w.flow.bias.copy_(torch.tensor([2 / 32, 0.0]))  # one pixel at S
        shifted = resample(img, torch.zeros(1, 2, 32, 32).index_fill(1, torch.tensor([0]), 2 / 32))
        assert torch.allclose(w(*args), shifted, atol=1e-6)  # the cached image moved along the flow
        w.w2.bias.fill_(0.1)
        assert torch.allclose(w(*args), (shifted + 0.1).clamp(0, 1), atol=1e-6)  # W's correction on top
        torch.nn.init.normal_(w.w2.weight, std=0.1)
        before = w(*args)
        assert not torch.allclose(before, w(*args[:-4], s["uv"], *args[-3:]), atol=1e-4)  # the correction sees ΔUV


def test_w_learns_with_the_code_the_receiver_has_by_each_display_frame():
    """Codes every second display tick: W renders frame t + 1 with frame t's code and gaze (none newer has arrived)
    and frame t + 2 with its own; the view and the UV map are always the frame's own."""
    from renderer.train import warp_inputs

    out = {"features": [torch.zeros(1)] * 3, "image": torch.zeros(1)}
    b = {k: torch.arange(3.0).view(1, 3, 1) * torch.ones(1, 3, 4) for k in ("uv", "view", "z", "gaze")}
    for k, code in ((1, 0.0), (2, 2.0)):
        *_, uv, view, z, gaze = warp_inputs(out, b, k, code_every=2)
        assert float(uv[0, 0]) == float(view[0, 0]) == k and float(z[0, 0]) == float(gaze[0, 0]) == code
    assert float(warp_inputs(out, b, 1, code_every=1)[-2][0, 0]) == 1.0  # every frame's own code


def test_a_few_end_to_end_steps_lower_both_losses():
    """G and W trained together: W's loss on the later frame falls as G's does (gradients reach G through the cache)."""
    from renderer.train import image_loss, warp_inputs
    from renderer.warp import ImplicitWarp, WarpConfig

    torch.manual_seed(5)
    g = NeuralRenderer(TINY)
    w = ImplicitWarp((16, 12, 8), 5, WarpConfig(**WARP_TINY))
    raster, uv, view = _buffers(4, 24, seed=6)
    b = {"raster": raster, "uv": torch.stack([uv, torch.roll(uv, 1, -1)], 1),
         "view": torch.stack([view, view], 1), "z": torch.zeros(4, 2, 5), "gaze": torch.zeros(4, 2, 4)}
    t0 = torch.flip(raster, dims=[-1]) * 0.5 + 0.25 * uv[:, 2:3]
    t1 = torch.roll(t0, 1, -1)
    opt = torch.optim.Adam(list(g.parameters()) + list(w.parameters()), lr=3e-3)
    hist = []
    for _ in range(40):
        out = g(b["raster"], b["uv"][:, 0], b["view"][:, 0])
        lg, lw = image_loss(out["image"], t0, 0.5), image_loss(w(*warp_inputs(out, b, 1)), t1, 0.5)
        opt.zero_grad()
        (lg + lw).backward()
        opt.step()
        hist.append((float(lg.detach()), float(lw.detach())))
    assert hist[-1][0] < 0.7 * hist[0][0] and hist[-1][1] < 0.7 * hist[0][1]
    g_grad = [p.grad for p in g.parameters() if p.grad is not None]
    assert g_grad  # the warp loss trains G too


def test_the_renderer_evaluation_on_tiny_models(tmp_path):
    """``avcall eval renderer``'s table on a tiny avatar: every row with quality, latency and measured fps (the
    schedulers for real, the parallel one with two worker processes), the online runs, an ablation row, and the
    picture; warp rows do warp and the naive row shows frames again."""
    from renderer.config import WarpConfig
    from renderer.data import RendererDataConfig, SequenceDataConfig, build_renderer_data
    from renderer.evaluate import ROWS, evaluate_renderer, render_markdown, schedule, write_results
    from renderer.train import RendererTrainConfig, install_renderer, train_renderer

    assert schedule("warp1x", 6) == ["generate", "warp"] * 3
    assert schedule("warp2x", 6) == ["generate", "warp", "warp"] * 2
    assert schedule("naive", 4) == ["generate", "reuse"] * 2
    dec = _tiny_decoder(tmp_path / "dec")
    data = build_renderer_data(RendererDataConfig(clips=2, size=32), decoder_dir=dec, progress=False)
    gcfg = NeuralRendererConfig(channels=12, texture_levels=(16, 8), widths=(8, 12, 16))
    tcfg = RendererTrainConfig(steps=2, batch_size=2, threads=1, checkpoint_every_s=1e9)
    train_renderer(tmp_path / "g", data, data, gcfg, tcfg, wcfg=WarpConfig(hidden=4, widths=(8, 6)), progress=False)
    install_renderer(tmp_path / "g", dec)
    train_renderer(tmp_path / "g-no-duv", data, data, None, tcfg, wcfg=WarpConfig(hidden=4, widths=(8, 6), duv=False),
                   frozen_g=tmp_path / "g", progress=False)
    table = evaluate_renderer("S1", dec, runs=tmp_path / "g", seq_cfg=SequenceDataConfig(seconds=0.1, sequences=1, size=32),
                              picture_path=tmp_path / "nc.png", timed_seconds=1.0, online_seconds=1.0, progress=False,
                              command="test")
    names = [r["name"] for r in table["rows"]]
    assert names == [r for r in ROWS if r != "explicit-warp"] and "explicit" in table["missing"]
    for r in table["rows"]:
        assert all(np.isfinite(r[k]) for k in ("psnr", "psnr_face", "ssim", "l1", "latency_ms")), r
        assert r["fps"] > 0 and r["timed"]["presented"] > 0, r
    by = {r["name"]: r for r in table["rows"]}
    assert by["warp1x"]["warped"] == 3 and by["G"]["warped"] == 0 and by["warp2x"]["warped"] == 4
    assert by["warp1x"]["timed"]["warped"] > 0 and by["G"]["timed"]["warped"] == 0
    assert by["warp2x-parallel"]["timed"]["sync_ms_p50"] is not None  # two worker processes really ran
    assert [r["name"] for r in table["ablation"]] == ["no-duv"]
    assert {o["mode"] for o in table["online"]} == {"raster", "neural", "warp", "warp2x"}
    assert set(table["checks"]) >= {"warp_to_generate_latency", "warp1x_psnr_loss_pct", "parallel_fps_ratio"}
    write_results(table, tmp_path)
    assert "warp2x-parallel" in render_markdown(table) and (tmp_path / "nc.png").stat().st_size > 1000


# ------------------------------------------------------------------------------ distilled / modulated G


def test_the_modulated_convolution_is_a_convolution_with_modulated_and_demodulated_weights():
    """StyleGAN2's weight (de)modulation, written as scale-convolve-rescale, against the per-sample weights
    ``W_oik * s_i / sqrt(sum_ik (W_oik s_i)^2)`` applied one sample at a time."""
    from torch.nn import functional as F

    from renderer.neural import ModulatedConv

    torch.manual_seed(0)
    m = ModulatedConv(5, 4, style_dim=3, stride=2)
    torch.nn.init.normal_(m.affine.weight)
    x, w = torch.randn(2, 5, 9, 9), torch.randn(2, 3)
    with torch.no_grad():
        got = m(x, w)
        s = m.affine(w)
        for b in range(2):
            wb = m.conv.weight * s[b][None, :, None, None]
            wb = wb / torch.sqrt(wb.pow(2).sum((1, 2, 3), keepdim=True) + 1e-8)
            ref = F.leaky_relu(F.conv2d(x[b:b + 1], wb, m.conv.bias, 2, 1), 0.2)
            assert torch.allclose(got[b:b + 1], ref, atol=1e-5)
        plain = ModulatedConv(5, 4, style_dim=3, demodulate=False, act=False)
        plain.conv.load_state_dict(m.conv.state_dict())
        # a fresh affine gives s = 1: without demodulation that is the plain convolution
        assert torch.allclose(plain(x, w), F.conv2d(x, m.conv.weight, m.conv.bias, 1, 1), atol=1e-5)


MOD_TINY = NeuralRendererConfig(channels=12, texture_levels=(16, 8), widths=(6, 8, 10), modulated=True, mapping_dim=8,
                                latent_dim=8)


def test_a_modulated_g_takes_the_code_exports_it_as_an_input_and_a_plain_g_ignores_it(tmp_path):
    import onnxruntime as ort

    from renderer.train import export_renderer

    torch.manual_seed(2)
    g = NeuralRenderer(MOD_TINY).eval()
    for layer in [*g.down, *g.up, g.out]:
        torch.nn.init.normal_(layer.affine.weight, 0, 0.5)  # styles that depend on the code
    raster, uv, view = _buffers(1, 24)
    z1, z2 = torch.randn(1, 8), torch.randn(1, 8)
    with torch.no_grad():
        a, b = g(raster, uv, view, z=z1)["image"], g(raster, uv, view, z=z2)["image"]
    assert not torch.allclose(a, b, atol=1e-4)  # the code reaches the image
    with pytest.raises(ValueError, match="needs the code"):
        g(raster, uv, view)
    export_renderer(g, tmp_path / "renderer.onnx", 24)  # parity checked inside
    sess = ort.InferenceSession(str(tmp_path / "renderer.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["raster", "uv", "view", "features", "z"]
    plain = NeuralRenderer(TINY).eval()
    with torch.no_grad():
        assert torch.equal(plain(raster, uv, view, z=z1)["image"], plain(raster, uv, view, z=z2)["image"])
    assert g.network_params() < sum(p.numel() for p in g.parameters())  # the neural texture is counted apart


def test_distilling_a_modulated_student_g_lowers_its_distillation_loss_and_the_receiver_runs_it(tmp_path):
    """A tiny teacher G, then a modulated student distilled from it: the distillation terms on a fixed batch fall,
    the student exports with the code as G's input, the receiver's engine feeds it the code, and the comparison
    reports both rows."""
    from renderer.compare import compare_renderers
    from renderer.config import WarpConfig
    from renderer.data import RendererDataConfig, build_renderer_data, clip_tensors
    from renderer.engine import EngineSpec, open_engine
    from renderer.train import RendererDistillation, RendererTrainConfig, install_renderer, load_generator, train_renderer

    dec = _tiny_decoder(tmp_path / "dec")
    train = build_renderer_data(RendererDataConfig(clips=6, size=24), decoder_dir=dec, progress=False)
    test = build_renderer_data(RendererDataConfig(clips=2, size=24, seed=99), decoder_dir=dec, progress=False)
    wcfg = WarpConfig(hidden=4, widths=(6, 4), image_flow=True, w2_kernel=1)
    quick = dict(batch_size=2, threads=1, checkpoint_every_s=1e9)
    train_renderer(tmp_path / "teacher", train, test, TINY, RendererTrainConfig(steps=20, **quick), wcfg=wcfg,
                   progress=False)
    tcfg = RendererTrainConfig(steps=40, lr=5e-3, teacher=str(tmp_path / "teacher"), **quick)
    batch = clip_tensors(train, [0, 1, 2, 3])

    def distill_loss(student, projector_state=None):
        d = RendererDistillation(load_generator(tmp_path / "teacher"), student, batch, tcfg)
        if projector_state is not None:
            d.projector.load_state_dict(projector_state)
        with torch.no_grad():
            out = student(batch["raster"], batch["uv"][:, 0], batch["view"][:, 0], z=batch["z"][:, 0])
            return {k: float(v) for k, v in d.losses(batch, out).items()}

    torch.manual_seed(tcfg.seed)
    before = distill_loss(NeuralRenderer(MOD_TINY))
    meta = train_renderer(tmp_path / "student", train, test, MOD_TINY, tcfg, wcfg=wcfg, progress=False)
    assert meta["train"]["teacher"] == str(tmp_path / "teacher") and meta["renderer"]["modulated"]
    ckpt = torch.load(tmp_path / "student" / "checkpoint.pt", weights_only=True)
    after = distill_loss(load_generator(tmp_path / "student"), ckpt["projector"])
    assert after["kl"] + after["feature"] < 0.8 * (before["kl"] + before["feature"]), (before, after)

    install_renderer(tmp_path / "student", dec)
    eng = open_engine(EngineSpec(str(dec), size=24, threads=1))
    try:
        z, gaze, view = test["z"][0, 0], test["gaze"][0, 0], test["view"][0, 0]
        a = eng.generate(z, gaze, view)
        b = eng.generate(z + 3.0, gaze, view)  # the code drives the modulated G beyond the decoded avatar
        assert a.shape == (24, 24, 3) and eng.has_cache and not np.array_equal(a, b)
        assert eng.warp(z, gaze, test["view"][0, 1]).shape == (24, 24, 3)
    finally:
        eng.close()

    table = compare_renderers([("teacher", [tmp_path / "teacher"]), ("mod", [tmp_path / "student"])], test,
                              sheet=tmp_path / "sheet.png", progress=False)
    t, s = table["rows"]
    assert (t["modulated"], s["modulated"], t["distilled"], s["distilled"]) == (False, True, False, True)
    assert t["params"] > s["params"] > 0 and t["mflops"] > s["mflops"] > 0 and s["g_ms"] > 0
    assert all(math.isfinite(r["psnr_face_mean"]) for r in table["rows"]) and (tmp_path / "sheet.png").is_file()
