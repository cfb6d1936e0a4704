"""Typed configuration of the sender and receiver processes.

Every knob of the runtime lives here, one dataclass per component, a docstring
under each field. Configs round-trip through plain dicts (JSON) by the one rule
of :mod:`avcore.config` (unknown keys are an error), which is how ``avcall
call`` hands them to the processes it starts: no pickling. Each config checks
its values in ``__post_init__``, so a bad number fails where it is set (command
line, JSON or code) with one clear line, before any process starts.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avcore.config import ConfigDict, from_dict, require_non_negative, require_positive, to_dict
from avcore.errors import UsageError
from encoder.latex import LatexConfig
from transport import CodecConfig, check_clock_endpoint, clock_endpoint_for, parse_endpoint

from renderer.scheduler import RENDER_MODES

from .playout import PlayoutConfig

__all__ = ["LatexConfig", "PlayoutConfig", "RENDER_MODES", "ReceiverConfig", "SecureConfig", "SenderConfig", "SourceConfig", "ViewerConfig",
           "check_clock_endpoint", "clock_endpoint_for", "from_dict", "load_config", "save_config", "to_dict"]

STREAM_ID = re.compile(r"^[A-Za-z0-9._-]{1,32}$")
"""What a stream id may be (``docs/protocol.md``)."""
MAX_IMAGE_SIZE = 4096
"""Largest rendered view side the receiver accepts."""
MAX_DISPLAY_HZ = 1000.0
"""Fastest display clock accepted."""
ENGINE_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
"""What ``ReceiverConfig.engine_module`` may be: a dotted module name."""



@dataclass
class SourceConfig(ConfigDict):
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
    replay_fps: float = 0.0
    """Replay: delivery rate. 0 = the recording's own capture timestamps (a 90 Hz
    recording plays at 90 Hz); > 0 = resample to this rate by timestamp (at each
    tick the recorded frame nearest in time). Either way the replay keeps real time: frames whose
    time passed while the encoder was busy are dropped (the sender's
    ``source_dropped``), never played late. ``fps`` does not apply to a replay."""


@dataclass
class SecureConfig(ConfigDict):
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
class SenderConfig(ConfigDict):
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
    latex: LatexConfig | None = None
    """Skip encoder runs on redundant frames with these LATEX gate settings (None = encode every frame).
    Needs ``early.onnx`` + ``latex.json`` in the encoder directory (``avcall train latex``); skipped
    frames carry extrapolated codes."""
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
    codec: CodecConfig = field(default_factory=CodecConfig)
    """How the code goes on the wire: coded frames (default; quantised, predicted, range-coded with the
    encoder directory's ``codec.json``) or plain float frames (``coded = False``, ``--plain``)."""
    impair: str = ""
    """Impair this sender's transmit path in-process (``transport.impair``): e.g.
    ``loss=5%,burst=3,jitter=20ms,reorder=1%,dup=1%,seed=7``; empty = none."""

    def __post_init__(self) -> None:
        _check_endpoints(self.endpoint, self.clock_endpoint, self.bind)
        _check_stream_id(self.stream_id, empty_ok=False)
        check_impairment(self.impair)
        if self.latent_dtype not in LATENT_DTYPES:
            raise UsageError(f"latent_dtype must be one of {', '.join(LATENT_DTYPES)}, got {self.latent_dtype!r}")
        if self.codec.coded and self.latent_dtype != "<f2":
            raise UsageError("float32 codes are plain frames: pass --plain with --f32")
        if self.codec.latex_skip and self.latex is None:
            raise UsageError("--latex-skip needs the LATEX gate (--latex)")
        require_non_negative("sender", seconds=self.seconds)
        _check_threads(self.threads)
        check_source(self.source)


@dataclass
class ViewerConfig(ConfigDict):
    """The receiver's viewer: the direction the avatar is rendered from, per frame."""

    yaw_deg: float = 30.0
    """Amplitude of the scripted orbit: yaw oscillates within +-yaw_deg."""
    period_s: float = 8.0
    """Period of the orbit."""
    pitch_deg: float = 0.0
    """Constant pitch of the viewer (positive = from above)."""

    def __post_init__(self) -> None:
        for name in ("yaw_deg", "pitch_deg"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or abs(v) > 90:
                raise UsageError(f"viewer: {name} must be within +-90 degrees, got {v!r}")
        require_non_negative("viewer", period_s=self.period_s)


@dataclass
class ReceiverConfig(ConfigDict):
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
    """Write the presented frames to this mp4 file (H.264 where available)."""
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
    codec_dir: str = ""
    """A directory with codec tables (``codec.json`` + ``codec.npz``) for coded frames, besides those installed
    next to the encoders of this receiver's model (``runtime.models.codecs_for``)."""
    playout: PlayoutConfig = field(default_factory=PlayoutConfig)
    """Jitter buffer and loss concealment (``max_delay_ms`` 0 = off: show the newest frame that arrived). With a
    display clock the buffer's output is the newest code the display ticks render."""
    render: str = "raster"
    """How frames are made (:data:`renderer.scheduler.RENDER_MODES`): ``raster`` presents one frame per arriving
    code (decode -> rasterize -> present, at the sender's rate); ``neural``, ``warp`` and ``warp2x`` run a display
    clock at ``display_hz`` and render every tick for the view of that moment from the newest code: ``neural``
    runs the neural renderer G on every tick, ``warp`` runs G when a new code arrived and the warp network from
    G's newest cache otherwise, ``warp2x`` does that in two worker processes taking turns (neural caching,
    Fig. 4). Those three need ``renderer.onnx`` (and ``warp.onnx``) in the avatar directory
    (``avcall train renderer``)."""
    display_hz: float = 60.0
    """Display clock of ``neural``/``warp``/``warp2x`` (a VR headset's refresh rate); ``raster`` has none."""
    engine_module: str = "renderer.engine"
    """Module with the display engine of the display-clock modes (``EngineSpec``, ``open_engine``); tests name a
    module of fakes."""

    def __post_init__(self) -> None:
        _check_endpoints(self.endpoint, self.clock_endpoint, self.bind)
        _check_stream_id(self.stream_id, empty_ok=True)
        if not isinstance(self.size, int) or not 16 <= self.size <= MAX_IMAGE_SIZE:
            raise UsageError(f"receiver: size must be an integer from 16 to {MAX_IMAGE_SIZE} pixels, got {self.size!r}")
        check_render(self.render, self.display_hz)
        if not isinstance(self.engine_module, str) or not ENGINE_MODULE.match(self.engine_module):
            raise UsageError(f"receiver: engine_module must be a dotted module name, got {self.engine_module!r}")
        require_positive("receiver", video_fps=self.video_fps)
        require_non_negative("receiver", seconds=self.seconds, stop_after_idle_s=self.stop_after_idle_s,
                             latent_dim=self.latent_dim)
        _check_threads(self.threads)


LATENT_DTYPES = ("<f2", "<f4")
"""Dtypes of the code on the wire: float16 (default) or float32 (``--f32``)."""
SOURCE_KINDS = ("synthetic", "replay", "camera")
"""What an HMC source can be."""


def _check_endpoints(endpoint: str, clock_endpoint: str, bind: bool) -> None:
    """The frames and clock addresses are usable addresses (syntax, port range, clock port), before anything starts.
    Host names are resolved later, when the socket connects."""
    parse_endpoint(endpoint, bind, resolve=False)
    clock = clock_endpoint or clock_endpoint_for(endpoint)
    parse_endpoint(clock, bind, resolve=False)
    check_clock_endpoint(endpoint, clock)


def _check_stream_id(stream_id: str, *, empty_ok: bool) -> None:
    if (stream_id or not empty_ok) and not STREAM_ID.match(stream_id or ""):
        raise UsageError(f"stream id must be 1-32 characters of A-Z a-z 0-9 . _ -, got {stream_id!r}")


def check_impairment(spec: str) -> None:
    """A transmit-path impairment spec that parses (``transport.impair``), else one clear line."""
    from transport.impair import ImpairmentError, ImpairmentModel, parse_impairment

    try:
        ImpairmentModel(parse_impairment(spec))  # also refuses loss/burst pairs no chain can make
    except ImpairmentError as exc:
        raise UsageError(str(exc)) from None


def check_render(render: str, display_hz: float) -> None:
    """A render mode and display rate that exist, else one clear line."""
    if render not in RENDER_MODES:
        raise UsageError(f"unknown render mode {render!r}; one of {', '.join(RENDER_MODES)}")
    if (not isinstance(display_hz, (int, float)) or isinstance(display_hz, bool) or not math.isfinite(display_hz)
            or not 0 < display_hz <= MAX_DISPLAY_HZ):
        raise UsageError(f"display rate must be a number of Hz above 0 and at most {MAX_DISPLAY_HZ:g}, got {display_hz!r}")


def _check_threads(threads: int) -> None:
    if not isinstance(threads, int) or threads < 1:
        raise UsageError(f"threads must be an integer >= 1, got {threads!r}")


def check_source(src: SourceConfig) -> None:
    """A clear one-line error for a source that cannot work: unknown kind or identity, bad rate or size."""
    if src.kind not in SOURCE_KINDS:
        raise UsageError(f"unknown source kind {src.kind!r}; one of {', '.join(SOURCE_KINDS)}")
    require_positive("source", fps=src.fps)
    if not isinstance(src.size, int) or not 16 <= src.size <= 1024:
        raise UsageError(f"source: view size must be an integer from 16 to 1024 pixels, got {src.size!r}")
    if src.kind == "synthetic":
        from capture.identity import check_identity

        try:
            check_identity(src.identity)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if src.kind == "replay":
        if not src.path:
            raise UsageError("a replay source needs an .hmc recording")
        if not Path(src.path).is_file():
            raise UsageError(f"no such recording: {src.path}")
    if src.kind == "camera" and (len(src.camera_ids) not in (1, 3) or not all(isinstance(i, int) and i >= 0 for i in src.camera_ids)):
        raise UsageError(f"camera source needs 1 or 3 device numbers >= 0, got {src.camera_ids!r}")


# --------------------------------------------------------------------------- (de)serialisation


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(json.dumps({"kind": type(cfg).__name__, "config": to_dict(cfg)}, indent=1))


def load_config(path: str | Path) -> Any:
    d = json.loads(Path(path).read_text())
    kinds = {"SenderConfig": SenderConfig, "ReceiverConfig": ReceiverConfig}
    if d.get("kind") not in kinds:
        raise UsageError(f"{path}: not a sender or receiver config (kind {d.get('kind')!r})")
    return from_dict(kinds[d["kind"]], d["config"])
