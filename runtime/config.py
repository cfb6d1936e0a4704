"""Typed configuration of the sender and receiver processes.

Every knob of the runtime lives here, one dataclass per component, a docstring
under each field. Configs round-trip through plain dicts (JSON), which is how
``avcall call`` hands them to the processes it starts: no pickling.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from encoder.latex import LatexConfig

DEFAULT_ENCODER_DIR = "encoder/models/S1/EEM"
"""Default per-view encoder models (relative to the installed package root)."""
DEFAULT_AVATAR_DIR = "decoder/models/S1"
"""Default codec-avatar decoder + topology (relative to the installed package root)."""


@dataclass
class SourceConfig:
    """Where the sender's HMC frames come from."""

    kind: str = "synthetic"
    """``synthetic`` (the studio renders a live performance), ``replay`` (an .hmc
    recording, paced at its native rate) or ``camera`` (OpenCV capture devices)."""
    identity: str = "S1"
    """Synthetic: studio identity wearing the headset."""
    seed: int = 0
    """Synthetic: seed of the performance (expressions and gaze over time)."""
    fps: float = 30.0
    """Capture rate (synthetic and camera; a replay keeps its recorded rate)."""
    path: str = ""
    """Replay: the .hmc recording."""
    loop: bool = True
    """Replay: start over at the end."""
    camera_ids: tuple[int, ...] = (0,)
    """Camera: OpenCV device indices. Three devices give (left eye, right eye,
    mouth); one device is split into three equal vertical strips."""
    size: int = 192
    """HMC view size in pixels (square); camera frames are resized to it."""


@dataclass
class SecureConfig:
    """CurveZMQ key files (see ``docs/protocol.md`` section 9). Empty = no security."""

    secret_key: str = ""
    """This process's ``*.key_secret`` certificate."""
    server_key: str = ""
    """Sender only: the receiver's public ``*.key`` certificate."""
    allowed_dir: str = ""
    """Receiver only: directory of the public ``*.key`` files of the senders it accepts."""

    @property
    def enabled(self) -> bool:
        return bool(self.secret_key)


@dataclass
class SenderConfig:
    """One sender process: HMC source -> per-view encoders + fusion -> PUB."""

    stream_id: str = "alice"
    """Stream id on the wire (1-32 chars of ``[A-Za-z0-9._-]``)."""
    endpoint: str = "tcp://127.0.0.1:5555"
    """ZeroMQ endpoint of the frames channel."""
    bind: bool = False
    """Bind ``endpoint`` (else connect to it)."""
    clock_endpoint: str = ""
    """Endpoint of the clock channel (ROUTER here); empty = derived from ``endpoint``
    (TCP port + 1, or ``ipc://PATH.clock``)."""
    source: SourceConfig = field(default_factory=SourceConfig)
    """The HMC source."""
    encoder_dir: str = ""
    """Encoder model directory; empty = the embedded default encoder."""
    latent_dtype: str = "<f2"
    """Dtype of ``z`` and gaze on the wire (``<f2`` keeps a 256-d code under 150 kbit/s at 30 fps)."""
    seconds: float = 0.0
    """Stop after this long (0 = until SIGINT/SIGTERM)."""
    threads: int = 1
    """onnxruntime intra-op threads for the encoders."""
    latex: bool = False
    """Skip encoder runs on redundant frames with LATEX (needs ``early.onnx`` + ``latex.json`` in the
    encoder directory: ``avcall train latex``); skipped frames carry extrapolated codes."""
    latex_threshold: float = -1.0
    """LATEX gate threshold; negative = the threshold calibrated for ``latex_skip_ratio``."""
    latex_skip_ratio: float = 0.3
    """Target share of skipped frames (calibrated on training sequences) when no threshold is given."""
    latex_history: int = LatexConfig.history
    """T: past codes the extrapolation uses."""
    latex_max_skips: int = LatexConfig.max_skips
    """Most frames skipped in a row before a keyframe is forced."""
    tap_path: str = ""
    """If set, every sent HMC frame is also appended to this .hmc recording, its
    frame index equal to the frame's sequence number (to show the input beside
    the far end's rendering)."""
    status_path: str = ""
    """If set, a JSON status (frames sent, endpoint) is rewritten here about twice a second."""
    report_path: str = ""
    """If set, the final sender report is written here as JSON."""
    secure: SecureConfig = field(default_factory=SecureConfig)
    """CurveZMQ keys (the sender is the CURVE client)."""


@dataclass
class ViewerConfig:
    """The receiver's viewer: the direction the avatar is rendered from, per frame."""

    yaw_deg: float = 30.0
    """Amplitude of the scripted orbit: yaw oscillates within +-yaw_deg."""
    period_s: float = 8.0
    """Period of the orbit."""
    pitch_deg: float = 0.0
    """Constant pitch of the viewer (positive = from above)."""


@dataclass
class ReceiverConfig:
    """One receiver process: SUB -> validate -> decode -> rasterize -> present."""

    stream_id: str = ""
    """Only accept frames of this stream (empty = any stream)."""
    endpoint: str = "tcp://127.0.0.1:5555"
    """ZeroMQ endpoint of the frames channel; ``tcp://127.0.0.1:*`` with ``bind`` picks a free port."""
    bind: bool = True
    """Bind ``endpoint`` (else connect to it)."""
    clock_endpoint: str = ""
    """Clock channel endpoint (DEALER here); empty = derived from ``endpoint``."""
    avatar_dir: str = ""
    """Decoder model directory; empty = the embedded default avatar."""
    size: int = 512
    """Rendered image size (square)."""
    viewer: ViewerConfig = field(default_factory=ViewerConfig)
    """Viewer direction over time."""
    video_path: str = ""
    """Write the presented frames to this mp4 file (mp4v)."""
    video_fps: float = 30.0
    """Frame rate of the video; frames are placed at their presentation times."""
    png_dir: str = ""
    """Write every presented frame as a PNG into this directory."""
    window: bool = False
    """Show an OpenCV window (needs a display)."""
    seconds: float = 0.0
    """Stop after this long (0 = until SIGINT/SIGTERM)."""
    stop_after_idle_s: float = 0.0
    """Stop when no valid frame arrived for this long after the first one (0 = never)."""
    threads: int = 1
    """onnxruntime intra-op threads for the decoder."""
    latent_dim: int = 0
    """Accept only codes of this size (0 = the decoder's input size)."""
    status_path: str = ""
    """If set, a JSON status (frames presented, bad messages by kind, bound
    endpoints) is rewritten here about twice a second."""
    report_path: str = ""
    """Telemetry report (JSON) written at the end."""
    histogram_path: str = ""
    """Latency histogram (PNG) written at the end."""
    secure: SecureConfig = field(default_factory=SecureConfig)
    """CurveZMQ keys (the receiver is the CURVE server with an allowlist)."""


# --------------------------------------------------------------------------- (de)serialisation


def to_dict(cfg: Any) -> dict:
    """A config dataclass as a JSON-friendly dict."""
    return dataclasses.asdict(cfg)


def from_dict(cls: type, d: dict) -> Any:
    """Rebuild config dataclass ``cls`` from :func:`to_dict` output; unknown keys are errors."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(d) - set(fields)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    kw = {}
    for name, value in d.items():
        ftype = fields[name].type
        sub = _NESTED.get(ftype if isinstance(ftype, str) else getattr(ftype, "__name__", ""))
        if sub is not None and isinstance(value, dict):
            value = from_dict(sub, value)
        elif isinstance(value, list):
            value = tuple(value)
        kw[name] = value
    return cls(**kw)


_NESTED = {"SourceConfig": SourceConfig, "SecureConfig": SecureConfig, "ViewerConfig": ViewerConfig}


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(json.dumps({"kind": type(cfg).__name__, "config": to_dict(cfg)}, indent=1))


def load_config(path: str | Path) -> Any:
    d = json.loads(Path(path).read_text())
    cls = {"SenderConfig": SenderConfig, "ReceiverConfig": ReceiverConfig}[d["kind"]]
    return from_dict(cls, d["config"])


def clock_endpoint_for(frames_endpoint: str) -> str:
    """The clock channel's endpoint next to a frames endpoint: TCP port + 1, ``ipc://P.clock``.

    A wildcard port (``*``) stays a wildcard (the binding side reports what it got).
    """
    if frames_endpoint.startswith("ipc://"):
        return frames_endpoint + ".clock"
    head, sep, port = frames_endpoint.rpartition(":")
    if not sep or not head.startswith(("tcp://", "tcp:")):
        raise ValueError(f"cannot derive a clock endpoint from {frames_endpoint!r}; pass it explicitly")
    if port == "*":
        return frames_endpoint
    return f"{head}:{int(port) + 1}"
