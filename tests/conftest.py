"""Fixtures shared by every test module (pytest finds them here; nothing imports them by name).

* ``tiny_models``: ``(encoder_dir, avatar_dir)`` of the tiny stand-in models, built once per run.
* ``pattern_hmc``: a small .hmc recording of a moving pattern, made once per run.
* ``workers``: starts sender/receiver processes and kills every one of them after the test.
* ``tiny_hmc_setup``: ``(data, vae)``: a few rendered 32x32 HMC frames of S1 with every training target and a
  tiny random VAE (latent 8), for encoder training and search tests.
"""
from __future__ import annotations

import pytest

from runtime.launch import Worker
from runtime_support import make_pattern_recording


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """(encoder_dir, avatar_dir) of the tiny stand-in models, latent_dim 256."""
    from tiny_models import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(scope="session")
def pattern_hmc(tmp_path_factory):
    return make_pattern_recording(tmp_path_factory.mktemp("hmc") / "pattern.hmc")


@pytest.fixture(scope="session")
def tiny_hmc_setup():
    import torch

    from decoder.config import DecoderConfig
    from decoder.model import CodecAvatarVAE
    from encoder.data import HmcDataConfig, render_session

    cfg = HmcDataConfig(render_size=16, enc_texture_size=16)
    data = render_session("S1", 3, 11, 1.2, 30.0, "train", cfg, hmc_size=32)
    dcfg = DecoderConfig(latent_dim=8, num_vertices=data["vertices"].shape[1], geometry_basis=4, geometry_hidden=16,
                         texture_size=16, texture_seed=4, texture_channels=(8, 8), view_inject=1,
                         encoder_texture_size=16, encoder_channels=(4, 8))
    torch.manual_seed(0)
    vae = CodecAvatarVAE(dcfg).eval().requires_grad_(False)
    with torch.no_grad():
        vae.encoder.geo_proj.normal_(0, 0.01)
        vae.decoder.geometry.basis.normal_(0, 0.01)
    return data, vae


@pytest.fixture
def workers():
    """Kills (SIGKILL) every worker a test started, whatever happened."""
    started: list[Worker] = []

    def start(name, cfg, workdir):
        w = Worker(name, cfg, workdir).start()
        started.append(w)
        return w

    yield start
    for w in started:
        w.kill()
        # captured: pytest shows it with a failing test's report (what the worker said before it failed)
        print(f"--- {w.name} (exit {w.proc.returncode if w.proc else None}), end of {w.log_path} ---\n{w.log_tail(40)}")


