"""Fixtures shared by every test module (pytest finds them here; nothing imports them by name).

* ``tiny_models``: ``(encoder_dir, avatar_dir)`` of the tiny stand-in models, built once per run.
* ``pattern_hmc``: a small .hmc recording of a moving pattern, made once per run.
* ``workers``: starts sender/receiver processes and kills every one of them after the test.
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


