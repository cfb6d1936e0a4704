"""Helpers of the runtime tests: configs for tiny-model workers, a moving-pattern recording, status readers.

The fixtures built from them (``tiny_models``, ``pattern_hmc``, ``workers``) live in ``conftest.py``.

Models are the tiny stand-ins of ``tests/tiny_models.py`` (real ONNX graphs run
by onnxruntime, real GL); HMC input is a small .hmc recording of a moving
pattern, replayed at its native rate by the senders.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from runtime.config import ReceiverConfig, SenderConfig, SourceConfig

ANY = "tcp://127.0.0.1:*"


def make_pattern_recording(path: Path, frames: int = 60, fps: float = 30.0, size: int = 192) -> Path:
    """A recording whose views change every frame (a moving bar per view), so codes change too."""
    from capture.recording import HmcWriter

    yy, xx = np.mgrid[0:size, 0:size]
    with HmcWriter(path, fps=fps, size=(size, size)) as w:
        for i in range(frames):
            views = np.stack([(((xx + yy * (v + 1) + 7 * i * (v + 1)) % 64) * 4).astype(np.uint8) for v in range(3)])
            w.append(views, i * int(1e9 / fps))
    return path


def receiver_config(tiny_models, tmp: Path, name: str = "rx", **kw) -> ReceiverConfig:
    kw.setdefault("endpoint", ANY)
    kw.setdefault("clock_endpoint", ANY)
    if tiny_models[0] is not None and (Path(tiny_models[0]) / "codec.json").is_file():
        kw.setdefault("codec_dir", str(tiny_models[0]))  # the encoder's codec tables (coded frames)
    return ReceiverConfig(stream_id=kw.pop("stream_id", "alice"), bind=True, avatar_dir=str(tiny_models[1]), size=kw.pop("size", 128),
                          report_path=str(tmp / f"{name}.report.json"), **kw)


def sender_config(tiny_models, hmc: Path, tmp: Path, rx_status: dict, name: str = "tx", **kw) -> SenderConfig:
    return SenderConfig(stream_id=kw.pop("stream_id", "alice"), endpoint=rx_status["endpoint"],
                        clock_endpoint=rx_status["clock_endpoint"], bind=False,
                        source=SourceConfig(kind="replay", path=str(hmc), loop=True, fps=30.0),
                        encoder_dir=str(tiny_models[0]), report_path=str(tmp / f"{name}.report.json"), **kw)


def presented(st: dict) -> int:
    return int(st.get("presented", 0))


def bad_total(st: dict) -> int:
    return sum(st.get("transport", {}).get("bad", {}).values())


TESTS_DIR = Path(__file__).resolve().parent
"""This directory: on a worker's ``PYTHONPATH``, its receiver can load the fake display engines (``fake_engine``)."""


def neural_avatar(avatar_dir: Path, dst: Path) -> Path:
    """A copy of ``avatar_dir`` with placeholder neural renderer files (what the display-clock modes check for; the
    fake engines read nothing) and a folder where fake engines record their process ids."""
    import shutil

    from fake_engine import PIDS_DIR
    from renderer.engine import RENDERER_FILES

    shutil.copytree(avatar_dir, dst)
    for name in RENDERER_FILES:
        (dst / name).write_bytes(b"placeholder: read by no fake engine")
    (dst / PIDS_DIR).mkdir()
    return dst
