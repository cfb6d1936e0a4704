"""avcall transport: wire format, ZeroMQ sockets, clock offset, stream statistics.

Never imports torch: the sender and receiver runtime stay light.
"""
from .clock import ClockClient, ClockSample, ClockServer, OffsetEstimator, now_ns, offset_and_delay
from .sockets import CurveConfig, FramePublisher, FrameSubscriber, SocketOptions, generate_keypair
from .stats import BandwidthMeter, SendStats, StreamStats
from .wire import (
    EXTRAPOLATED,
    KEYFRAME,
    PROTOCOL_VERSION,
    WIRE_ERROR_KINDS,
    ClockReply,
    ClockRequest,
    FrameFlags,
    FrameMessage,
    WireError,
    WireLimits,
    decode_clock_reply,
    decode_clock_request,
    decode_frame,
    encode_clock_reply,
    encode_clock_request,
    encode_frame,
)

__all__ = [
    "BandwidthMeter",
    "ClockClient",
    "ClockReply",
    "ClockRequest",
    "ClockSample",
    "ClockServer",
    "CurveConfig",
    "EXTRAPOLATED",
    "FrameFlags",
    "FrameMessage",
    "FramePublisher",
    "FrameSubscriber",
    "KEYFRAME",
    "OffsetEstimator",
    "PROTOCOL_VERSION",
    "SendStats",
    "SocketOptions",
    "StreamStats",
    "WIRE_ERROR_KINDS",
    "WireError",
    "WireLimits",
    "decode_clock_reply",
    "decode_clock_request",
    "decode_frame",
    "encode_clock_reply",
    "encode_clock_request",
    "encode_frame",
    "generate_keypair",
    "now_ns",
    "offset_and_delay",
]
