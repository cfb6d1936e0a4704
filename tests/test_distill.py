"""Decoder presets and the distillation losses (known values, a tiny teacher -> student run)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from decoder.distill import FeatureProjector, channel_kl, cosine_loss, distillation_losses, gaussian_kl, match_features
from decoder.model import AvatarDecoder
from decoder.presets import decoder_cost, list_presets, preset_config


def test_channel_kl_and_cosine_give_known_values():
    # one sample, one channel, two positions: P = (1/4, 3/4), Q = (1/2, 1/2)
    t = torch.tensor([[[0.0, math.log(3.0)]]])
    s = torch.zeros(1, 1, 2)
    want = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert float(channel_kl(t, s)) == pytest.approx(want, abs=1e-6)
    assert float(channel_kl(t, t)) == pytest.approx(0.0, abs=1e-7)
    # temperature 2: P = softmax(t / 2) and the T**2 factor
    p = torch.softmax(t / 2, -1)[0, 0]
    want2 = 4 * float((p * torch.log(p / 0.5)).sum())
    assert float(channel_kl(t, s, temperature=2.0)) == pytest.approx(want2, abs=1e-6)
    assert float(gaussian_kl(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 1.5]), spread=0.5)) == pytest.approx(
        (0.0 + 0.25) / 2 / (2 * 0.25))
    a = torch.tensor([[1.0, 0.0]])
    assert float(cosine_loss(a, a * 3)) == pytest.approx(0.0, abs=1e-7)
    assert float(cosine_loss(a, torch.tensor([[0.0, 2.0]]))) == pytest.approx(1.0)
    assert float(cosine_loss(a, -a)) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        channel_kl(torch.zeros(1, 1, 2), torch.zeros(1, 1, 3))


def test_every_preset_builds_and_is_sized_as_the_study_needs():
    costs = {n: decoder_cost(preset_config(n)) for n in list_presets()}
    assert costs["teacher"]["params"] > costs["current"]["params"] > costs["student-s"]["params"]
    xs, te = costs["student-xs"], costs["teacher"]
    assert xs["params"] <= 0.05 * te["params"] and xs["mflops"] <= 0.10 * te["mflops"]
    m = costs["student-m"]  # the face's own detail (256² texture, 12 geometry modes) in under 8% of the teacher
    assert xs["params"] < m["params"] <= 0.08 * te["params"] and m["mflops"] <= 0.05 * te["mflops"]
    assert preset_config("student-m").texture_size == preset_config("teacher").texture_size
    assert preset_config("current").to_dict() == preset_config("current", identity="S1").to_dict()
    with pytest.raises(ValueError, match="presets"):
        preset_config("huge")


def _tiny(channels, basis):
    from decoder.config import DecoderConfig

    return DecoderConfig(latent_dim=8, num_vertices=30, geometry_basis=basis, geometry_hidden=16 * len(channels) // 2,
                         texture_size=16, texture_seed=2, texture_channels=channels, view_inject=1)


def test_features_are_returned_without_changing_the_outputs():
    torch.manual_seed(0)
    dec = AvatarDecoder(_tiny((8, 6, 4), 4)).eval()
    z, v = torch.randn(2, 8), torch.nn.functional.normalize(torch.randn(2, 3), dim=1)
    with torch.no_grad():
        verts, tex = dec(z, v)
        verts2, tex2, feats = dec(z, v, features=True)
    assert torch.equal(verts, verts2) and torch.equal(tex, tex2)
    assert [f.shape for f in feats["texture"]] == [(2, 8, 2, 2), (2, 6, 4, 4), (2, 4, 8, 8)]
    assert feats["geometry"][0].shape == (2, 24)


def test_a_tiny_distillation_run_lowers_the_distillation_loss():
    torch.manual_seed(0)
    teacher = AvatarDecoder(_tiny((16, 12, 8), 6)).eval().requires_grad_(False)
    with torch.no_grad():
        teacher.geometry.basis.normal_(0, 0.1)
        teacher.texture.head.weight.normal_(0, 0.1)
    student = AvatarDecoder(_tiny((6, 4), 3))
    z = torch.randn(64, 8)
    v = torch.nn.functional.normalize(torch.randn(64, 3) + torch.tensor([0.0, 0.0, 2.0]), dim=1)
    with torch.no_grad():
        t_out = teacher(z, v, features=True)
    projector = FeatureProjector(t_out[2], student(z[:1], v[:1], features=True)[2])
    assert [p[0] for p in match_features(t_out[2], student(z[:1], v[:1], features=True)[2])] == ["geometry", "texture", "texture"]
    opt = torch.optim.Adam([*student.parameters(), *projector.parameters()], lr=3e-3)

    def loss():
        d = distillation_losses(t_out, student(z, v, features=True), projector)
        return d["kl"] + d["feature"], d

    first = float(loss()[0].detach())
    for _ in range(150):
        total, _ = loss()
        opt.zero_grad()
        total.backward()
        opt.step()
    last, parts = loss()
    assert float(last.detach()) < 0.5 * first, (first, float(last))
    assert set(parts) == {"kl", "feature"} and all(np.isfinite(float(x.detach())) for x in parts.values())


def test_teacher_targets_are_the_teacher_s_outputs_computed_once(tmp_path):
    """What a student reads instead of running its teacher: the teacher's forward pass on every (pose, view), equal
    to running it (float16 storage aside), reopened without recomputing while the key holds, rebuilt when not."""
    from decoder.distill import TeacherTargets

    torch.manual_seed(0)
    teacher = AvatarDecoder(_tiny((16, 12, 8), 6)).eval().requires_grad_(False)
    z = torch.randn(5, 3, 8)  # 5 poses x 3 views
    v = torch.nn.functional.normalize(torch.randn(5, 3, 3) + torch.tensor([0.0, 0.0, 2.0]), dim=-1)
    calls = []

    def inputs(pi, vi):
        calls.append(len(pi))
        return z[pi, vi], v[pi, vi]

    targets = TeacherTargets.open(tmp_path / "t", "k1", teacher, inputs, (5, 3), batch=4, progress=False)
    assert sum(calls) == 15
    pi, vi = np.array([4, 0, 2, 4]), np.array([0, 2, 1, 2])
    with torch.no_grad():
        verts, tex, feats = teacher(z[pi, vi], v[pi, vi], features=True)
    tv, tt, tf = targets.lookup(pi, vi)
    assert torch.equal(tv, verts)
    torch.testing.assert_close(tt, tex, atol=2e-3, rtol=2e-3)
    assert len(tf["texture"]) == len(feats["texture"]) == 3 and len(tf["geometry"]) == 1
    for a, b in zip(tf["texture"] + tf["geometry"], feats["texture"] + feats["geometry"]):
        torch.testing.assert_close(a, b, atol=2e-3, rtol=2e-3)
    TeacherTargets.open(tmp_path / "t", "k1", teacher, inputs, (5, 3), progress=False)
    assert sum(calls) == 15  # the same key: read from disk
    TeacherTargets.open(tmp_path / "t", "k2", teacher, inputs, (5, 3), progress=False)
    assert sum(calls) == 30 and sorted(p.name for p in tmp_path.iterdir()) == ["t"]


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_exports_with_onnx_parity(name, tmp_path):
    from decoder.export import export_onnx

    torch.manual_seed(0)
    dec = AvatarDecoder(preset_config(name, num_vertices=200)).eval()
    with torch.no_grad():  # non-trivial outputs: a random basis and texture head
        dec.geometry.basis.normal_(0, 0.01)
        dec.texture.head.weight.normal_(0, 0.01)
    diffs = export_onnx(dec, tmp_path / "decoder.onnx")  # raises when onnxruntime and torch disagree
    assert set(diffs) == {"vertices", "texture"}


def test_the_receiver_loads_a_student_directory(tmp_path):
    from capture.head import HeadModel
    from capture.identity import make_identity
    from decoder.export import save_model
    from decoder.runtime import Avatar

    torch.manual_seed(0)
    cfg = preset_config("student-xs", num_vertices=len(HeadModel(make_identity("S1")).uvs))
    save_model(AvatarDecoder(cfg).eval(), tmp_path, studio_identity="S1")
    av = Avatar(tmp_path, size=64)
    try:
        img = av.render_code(np.zeros(256, np.float32), np.zeros((2, 2), np.float32), np.array([0, 0, 1], np.float32))
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8 and img.max() > 0
    finally:
        av.close()


def test_train_decoder_builds_the_named_preset():
    from avcall.cli import build_parser
    from avcall.decoder_cmds import decoder_config
    from avcore.errors import UsageError

    parse = lambda *a: build_parser().parse_args(["train", "decoder", "--out", "/tmp/unused", *a])  # noqa: E731
    assert decoder_config(parse("--preset", "student-xs", "--identity", "S2")).to_dict() == \
        preset_config("student-xs", identity="S2").to_dict()
    assert decoder_config(parse()).to_dict() == preset_config("current").to_dict()
    with pytest.raises(UsageError, match="presets"):
        decoder_config(parse("--preset", "huge"))


def test_distilling_a_student_from_a_trained_teacher_lowers_the_distillation_loss_and_resumes(tmp_path):
    """The real training loop: a tiny teacher is trained and exported, a smaller student is trained against it
    (in its latent space) with L_kl and the feature loss; both fall, the student's directory carries the teacher's
    encoder, and a resumed run keeps the projector."""
    from decoder.data import build_dataset
    from decoder.export import load_torch_encoder
    from decoder.train import train_decoder
    from test_decoder import tiny_config, tiny_train_config

    data = build_dataset("S1", 6, 5, tiny_config(), tiny_train_config(), progress=False)
    train_decoder(tmp_path / "teacher", tiny_config(geometry_hidden=64, texture_channels=(16, 12)),
                  tiny_train_config(steps=30), progress=False, data=data)
    student = tiny_config(geometry_hidden=16, texture_channels=(6, 4))
    tcfg = tiny_train_config(steps=60, teacher=str(tmp_path / "teacher"), distill_feature_weight=0.5)
    r = train_decoder(tmp_path / "student", student, tcfg, progress=False, data=data)
    first, last = r.loss_history[0], r.loss_history[-1]
    assert {"distill_kl", "distill_feature"} <= set(first)
    distill = lambda h: h["distill_kl"] + 0.5 * h["distill_feature"]  # noqa: E731  (as weighted in the total)
    assert distill(last) < 0.7 * distill(first), (first, last)
    a, b = load_torch_encoder(tmp_path / "teacher"), load_torch_encoder(tmp_path / "student")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    ck = torch.load(tmp_path / "student" / "checkpoint.pt", weights_only=True)
    assert "projector" in ck and ck["train_config"]["teacher"] == str(tmp_path / "teacher")
    r2 = train_decoder(tmp_path / "student", student, tiny_train_config(steps=65), progress=False, data=data)
    assert r2.steps == 65 and "distill_kl" in r2.loss_history[-1]  # the teacher came back from the checkpoint
    # without a teacher (training from scratch) there are no distillation terms
    r3 = train_decoder(tmp_path / "scratch", student, tiny_train_config(steps=5, latent_from=str(tmp_path / "teacher")),
                       progress=False, data=data, export=False)
    assert "distill_kl" not in r3.loss_history[-1]
    # the ablation "from scratch" (--no-kl --no-feature) is exactly that run: the teacher only names the latent space
    r4 = train_decoder(tmp_path / "scratch-ablation", student,
                       tiny_train_config(steps=5, teacher=str(tmp_path / "teacher"), distill_kl_weight=0.0,
                                         distill_feature_weight=0.0), progress=False, data=data, export=False)
    assert r4.loss_history == r3.loss_history


def test_distill_decoder_arguments_make_the_student_and_its_ablations():
    from avcall.cli import build_parser
    from avcall.distill import distill_config
    from avcore.errors import UsageError

    parse = lambda *a: build_parser().parse_args(["distill", "decoder", "--teacher", "T", "--out", "/tmp/o", *a])  # noqa: E731
    d, t = distill_config(parse("--preset", "student-xs", "--seed", "2"))
    assert d.to_dict() == preset_config("student-xs").to_dict()
    assert (t.teacher, t.distill_kl_weight, t.distill_feature_weight, t.init_seed) == ("T", 1.0, 1.0, 2)
    _, t = distill_config(parse("--preset", "student-xs", "--no-kl", "--no-feature"))
    assert (t.distill_kl_weight, t.distill_feature_weight) == (0.0, 0.0)
    with pytest.raises(UsageError):
        distill_config(parse("--preset", "huge"))


def test_the_studio_data_is_resampled_to_a_preset_s_texture_size():
    """The studio's textures are 256²: a 128² student learns from them area-averaged (coverage resized with
    them), the teacher from them unchanged."""
    from decoder.config import TrainConfig
    from decoder.data import build_dataset
    from decoder.presets import preset_config

    tcfg = TrainConfig(views_per_pose=1, image_size=32)
    big = build_dataset("S1", 2, 5, preset_config("teacher"), tcfg, progress=False)
    small = build_dataset("S1", 2, 5, preset_config("student-xs"), tcfg, progress=False)
    assert big["texture"].shape[2:4] == (256, 256) and small["texture"].shape[2:4] == (128, 128)
    assert small["coverage"].shape == (128, 128) and abs(small["coverage"].mean() - big["coverage"].mean()) < 0.02
    pooled = big["texture"].astype(np.float32).reshape(2, 1, 128, 2, 128, 2, 3).mean((3, 5))
    assert np.abs(pooled - small["texture"]).mean() < 1.0  # 2x2 averages of the same texels
