"""``avcall send | receive | call | demo | keys`` and ``avcall bench e2e``.

Each handler turns its arguments into a config dataclass and calls one library
function (:mod:`runtime.sender`, :mod:`runtime.receiver`, :mod:`runtime.call`,
:mod:`runtime.bench`). Heavy imports stay inside the handlers; nothing here
imports torch.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from encoder.latex import LatexConfig

SEND_EPILOG = """\
examples:
  avcall receive --bind tcp://0.0.0.0:5555 --out alice.mp4          # on the viewer's machine
  avcall send --source synthetic --identity S1 --connect tcp://VIEWER:5555
  avcall send --source replay session.hmc --connect tcp://VIEWER:5555
  avcall send --source camera --camera 0,1,2 --bind tcp://0.0.0.0:5555

The clock channel uses the next TCP port (5556 here) unless --clock is given.
With --secure: avcall keys new --name alice; give alice.key to the receiver (its
--allow directory) and pass the receiver's public key with --server-key.
"""


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")


def _endpoint_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--connect", metavar="ADDR", help="connect the frames socket to ADDR (tcp://host:port, ipc://path)")
    g.add_argument("--bind", metavar="ADDR", help="bind the frames socket to ADDR (tcp://127.0.0.1:* picks a free port)")
    p.add_argument("--clock", metavar="ADDR", default="", help="clock-channel address (default: frames port + 1)")
    p.add_argument("--stream-id", default="", help="stream id (sender default 'alice'; receiver: accept only this stream)")
    p.add_argument("--seconds", type=float, default=0.0, help="stop after this long (default: until Ctrl-C)")
    p.add_argument("--secure", action="store_true", help="CurveZMQ encryption and authentication (needs --key)")
    p.add_argument("--key", default="", metavar="FILE.key_secret", help="this side's secret key file (avcall keys new)")
    p.add_argument("--report", default="", metavar="FILE.json", help="write the final report here")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress")


def _secure(args, role: str):
    from runtime.config import SecureConfig

    if not args.secure:
        return SecureConfig()
    if not args.key:
        raise ValueError("--secure needs --key FILE.key_secret")
    if role == "sender":
        if not args.server_key:
            raise ValueError("--secure sender needs --server-key (the receiver's public .key)")
        return SecureConfig(secret_key=args.key, server_key=args.server_key)
    if not args.allow:
        raise ValueError("--secure receiver needs --allow DIR (public .key files of allowed senders)")
    return SecureConfig(secret_key=args.key, allowed_dir=args.allow)


def register(sub) -> None:
    # ---- send
    p = sub.add_parser("send", help="stream a headset (HMC) source as latent codes to a receiver",
                       description="The sender: HMC source -> per-view encoders + fusion -> ZeroMQ PUB.",
                       epilog=SEND_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", nargs="+", default=["synthetic"], metavar="KIND",
                   help="synthetic | replay FILE.hmc | camera (default synthetic)")
    p.add_argument("--identity", default="S1", help="synthetic: studio identity (default S1)")
    p.add_argument("--seed", type=int, default=0, help="synthetic: performance seed")
    p.add_argument("--fps", type=float, default=30.0, help="capture rate (default 30)")
    p.add_argument("--camera", default="0", help="camera: device ids, '0' or '0,1,2' (default 0)")
    p.add_argument("--no-loop", action="store_true", help="replay: stop at the end of the recording")
    p.add_argument("--encoder", default="", metavar="DIR", help="encoder model directory (default: installed model)")
    p.add_argument("--server-key", default="", metavar="FILE.key", help="--secure: the receiver's public key")
    p.add_argument("--tap", default="", metavar="FILE.hmc", help="also record every sent HMC frame (index = seq)")
    p.add_argument("--f32", action="store_true", help="send float32 codes (default float16)")
    p.add_argument("--latex", action="store_true",
                   help="skip encoder runs on redundant frames (LATEX gate; the encoder directory needs early.onnx "
                   "and latex.json from 'avcall train latex'); skipped frames carry extrapolated codes")
    p.add_argument("--latex-skip-ratio", type=float, default=0.3, metavar="R",
                   help="--latex: target share of skipped frames, via the calibrated threshold (default 0.3)")
    p.add_argument("--latex-threshold", type=float, default=-1.0, metavar="D",
                   help="--latex: gate threshold (overrides --latex-skip-ratio)")
    p.add_argument("--latex-history", type=int, default=LatexConfig.history, metavar="T",
                   help=f"--latex: codes extrapolated from (default {LatexConfig.history})")
    p.add_argument("--latex-max-skips", type=int, default=LatexConfig.max_skips, metavar="N",
                   help=f"--latex: most frames skipped in a row (default {LatexConfig.max_skips})")
    _endpoint_args(p)
    p.set_defaults(func=_send)

    # ---- receive
    r = sub.add_parser("receive", help="receive a latent stream, render the avatar, show/record it",
                       description="The receiver: ZeroMQ SUB -> validate -> decode -> rasterize -> present. "
                       "Renders for a viewer orbiting +-30 degrees (yaw) by default.")
    _endpoint_args(r)
    r.add_argument("--out", default="", metavar="VIDEO.mp4", help="write the presented frames to an mp4 file")
    r.add_argument("--png-dir", default="", metavar="DIR", help="write every presented frame as PNG")
    r.add_argument("--window", action="store_true", help="show an OpenCV window (needs a display)")
    r.add_argument("--avatar", default="", metavar="DIR", help="decoder model directory (default: installed avatar)")
    r.add_argument("--size", type=int, default=512, help="rendered image size (default 512)")
    r.add_argument("--yaw", type=float, default=30.0, help="viewer orbit amplitude, degrees (0 = fixed front view)")
    r.add_argument("--period", type=float, default=8.0, help="viewer orbit period, seconds")
    r.add_argument("--allow", default="", metavar="DIR", help="--secure: directory of allowed senders' public keys")
    r.add_argument("--histogram", default="", metavar="FILE.png", help="write the latency histogram here")
    r.add_argument("--status", default="", metavar="FILE.json", help="rewrite a live status JSON here")
    r.set_defaults(func=_receive)

    # ---- call
    c = sub.add_parser("call", help="a two-party call on this machine (2 senders + 2 receivers)",
                       description="A sees B and B sees A. Headless by default: writes each party's view (with the far "
                       "end's headset input beside it), the latency report (JSON) and a histogram (PNG).")
    _call_args(c, default_seconds=10.0, default_out="call_out")
    c.set_defaults(func=_call)

    # ---- demo
    d = sub.add_parser("demo", help="a short two-party call on the default avatar; prints where the results are",
                       description="The README's first command: a short call between two synthetic headset wearers.")
    _call_args(d, default_seconds=8.0, default_out="avcall_demo")
    d.set_defaults(func=_call)

    # ---- keys
    k = sub.add_parser("keys", help="CurveZMQ key pairs for --secure")
    ks = k.add_subparsers(dest="keys_command", metavar="WHAT")
    ks.required = True
    kn = ks.add_parser("new", help="write NAME.key (public, give it to the other side) and NAME.key_secret (mode 0600)")
    kn.add_argument("--name", required=True, help="key pair name, e.g. alice")
    kn.add_argument("--dir", default="keys", help="directory (default ./keys)")
    kn.set_defaults(func=_keys_new)


def _call_args(c: argparse.ArgumentParser, default_seconds: float, default_out: str) -> None:
    c.add_argument("--seconds", type=float, default=default_seconds, help=f"call length (default {default_seconds:g})")
    c.add_argument("--fps", type=float, default=30.0, help="headset rate (default 30)")
    c.add_argument("--out", default=default_out, metavar="DIR", help=f"output directory (default {default_out})")
    c.add_argument("--window", action="store_true", help="also show each party's view in a window")
    c.add_argument("--secure", action="store_true", help="CurveZMQ with fresh keys and allowlists")
    c.add_argument("--encoder", default="", metavar="DIR", help="encoder models (default: installed)")
    c.add_argument("--latex", action="store_true", help="senders skip encoder runs on redundant frames (LATEX, ~30%%)")
    c.add_argument("--avatar", default="", metavar="DIR", help="avatar decoder (default: installed)")
    c.add_argument("--size", type=int, default=512, help="rendered view size (default 512)")
    c.add_argument("--replay-a", default="", metavar="FILE.hmc", help="party A's headset: this recording")
    c.add_argument("--replay-b", default="", metavar="FILE.hmc", help="party B's headset: this recording")
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c.add_argument("-v", "--verbose", action="store_true", help="log progress")


def add_bench(bench_sub) -> None:
    e = bench_sub.add_parser(
        "e2e", help="end-to-end latency over loopback: capture to present, per stage, overhead, bandwidth",
        description="Real sender and receiver processes over loopback TCP. Reports e2e_ms_p50/p99 (capture to "
        "present), <stage>_ms_p50, runtime_overhead_ms_p99 (capture-to-present minus the encoder, decoder and "
        "render compute of the same frame), bandwidth_kbps per stream, fps and dropped frames.")
    e.add_argument("--seconds", type=float, default=20.0, help="measured seconds (default 20, after 2 s warm-up)")
    e.add_argument("--fps", type=float, default=30.0)
    e.add_argument("--source", choices=("replay", "synthetic"), default="replay",
                   help="replay (default; a pre-recorded synthetic session) or the live studio")
    e.add_argument("--two-way", action="store_true", help="two streams, as in a call")
    e.add_argument("--video", action="store_true", help="receivers also write mp4")
    e.add_argument("--encoder", default="", metavar="DIR")
    e.add_argument("--latex", action="store_true", help="senders skip encoder runs with LATEX")
    e.add_argument("--latex-skip-ratio", type=float, default=0.3, metavar="R", help="--latex target skip ratio (default 0.3)")
    e.add_argument("--avatar", default="", metavar="DIR")
    e.add_argument("--size", type=int, default=512)
    e.add_argument("--out", default="", metavar="DIR", help="keep logs and raw reports here")
    e.add_argument("--floor-seconds", type=float, default=0.0, metavar="S",
                   help="first measure a bare ZeroMQ hop between two processes for S seconds (transport_floor_ms_*), "
                   "the machine's own floor to compare runtime_overhead_ms with")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.set_defaults(func=_bench_e2e)


# --------------------------------------------------------------------------- handlers


def _send(args) -> int:
    from runtime.config import SenderConfig, SourceConfig
    from runtime.proc import run_config

    _setup_logging(args.verbose)
    kind, *rest = args.source
    if kind not in ("synthetic", "replay", "camera"):
        raise ValueError(f"--source must be synthetic, replay FILE.hmc or camera, got {kind!r}")
    if (kind == "replay") != bool(rest) or len(rest) > 1:
        raise ValueError("--source replay takes exactly one FILE.hmc; synthetic and camera take none")
    path = rest[0] if rest else ""
    if path and not Path(path).is_file():
        raise FileNotFoundError(f"no such recording: {path}")
    src = SourceConfig(kind=kind, identity=args.identity, seed=args.seed, fps=args.fps, path=path, loop=not args.no_loop,
                       camera_ids=tuple(int(x) for x in args.camera.split(",")))
    cfg = SenderConfig(stream_id=args.stream_id or "alice", endpoint=args.bind or args.connect, bind=bool(args.bind),
                       clock_endpoint=args.clock, source=src, encoder_dir=args.encoder,
                       latent_dtype="<f4" if args.f32 else "<f2", seconds=args.seconds, tap_path=args.tap,
                       report_path=args.report, secure=_secure(args, "sender"), latex=args.latex,
                       latex_threshold=args.latex_threshold, latex_skip_ratio=args.latex_skip_ratio,
                       latex_history=args.latex_history, latex_max_skips=args.latex_max_skips)
    rep = run_config(cfg)
    print(f"sent {rep['frames_sent']} frames in {rep['elapsed_s']:.1f} s ({rep['fps']:.1f} fps, "
          f"{rep['kbit_per_s']:.1f} kbit/s); encode p50 {rep['encode_ms']['p50']:.2f} ms; encoder compute "
          f"{rep['encoder_compute_ms']['mean']:.2f} ms/frame; skipped {rep['skip_ratio']:.1%}; "
          f"camera frames dropped {rep['source_dropped']}")
    return 0


def _receive(args) -> int:
    from runtime.config import ReceiverConfig, ViewerConfig
    from runtime.proc import run_config
    from runtime.telemetry import format_summary

    _setup_logging(args.verbose)
    cfg = ReceiverConfig(stream_id=args.stream_id, endpoint=args.bind or args.connect, bind=bool(args.bind),
                         clock_endpoint=args.clock, avatar_dir=args.avatar, size=args.size,
                         viewer=ViewerConfig(yaw_deg=args.yaw, period_s=args.period), video_path=args.out,
                         png_dir=args.png_dir, window=args.window, seconds=args.seconds, status_path=args.status,
                         report_path=args.report, histogram_path=args.histogram, secure=_secure(args, "receiver"))
    if args.window:
        from runtime.presenters import has_display

        if not has_display():
            raise ValueError("--window needs a display (DISPLAY is unset); use --out VIDEO.mp4")
    rep = run_config(cfg)
    print(format_summary(args.stream_id or "stream", rep["latency"]))
    d = rep["dropped"]
    print(f"dropped: stale {d['stale']}, lost {d['lost_in_network']}, presenter {d['presenter']}; "
          f"bad messages {dict(d['bad_messages'])}")
    for sid, s in rep["streams"].items():
        kb = s["kbit_per_s"]
        print(f"stream {sid}: {s['frames_received']} frames, {kb:.1f} kbit/s" if kb else f"stream {sid}: {s['frames_received']} frames")
    if args.out:
        print(f"video: {args.out}")
    return 0


def _call(args) -> int:
    from runtime.call import CallConfig, PartyConfig, run_call, summary_lines

    _setup_logging(args.verbose)
    if args.window:
        from runtime.presenters import has_display

        if not has_display():
            raise ValueError("--window needs a display (DISPLAY is unset); the call is recorded to video anyway")
    cfg = CallConfig(out_dir=args.out, seconds=args.seconds, fps=args.fps, encoder_dir=args.encoder, latex=args.latex,
                     avatar_dir=args.avatar, size=args.size, window=args.window, secure=args.secure,
                     parties=(PartyConfig("alice", "S1", 0, args.replay_a), PartyConfig("bob", "S1", 1, args.replay_b)))
    print(f"calling: alice <-> bob for {args.seconds:g} s on this machine ...", file=sys.stderr)
    rep = run_call(cfg)
    if args.json:
        print(json.dumps(rep, indent=1, default=str))
        return 0
    for line in summary_lines(rep):
        print(line)
    for viewer, v in rep["videos"].items():
        print(f"{viewer}'s view: {v['path']} ({v['frames']} frames)")
    print(f"latency report: {rep['report']}")
    if rep.get("histogram"):
        print(f"latency histogram: {rep['histogram']}")
    return 0


def _keys_new(args) -> int:
    from transport import generate_keypair

    pub, sec = generate_keypair(args.dir, args.name)
    print(f"public key: {pub}  (give this to the other side)")
    print(f"secret key: {sec}  (keep private; mode 0600)")
    return 0


def _bench_e2e(args) -> int:
    from runtime.bench import E2EBenchConfig, bench_e2e

    r = bench_e2e(E2EBenchConfig(seconds=args.seconds, fps=args.fps, source=args.source, two_way=args.two_way,
                                 video=args.video, encoder_dir=args.encoder, avatar_dir=args.avatar, size=args.size,
                                 out_dir=args.out, floor_s=args.floor_seconds, latex=args.latex,
                                 latex_skip_ratio=args.latex_skip_ratio))
    if args.json:
        from runtime.telemetry import json_safe

        print(json.dumps(json_safe(r)))
        return 0
    print(f"capture->present p50 {r['e2e_ms_p50']:.2f} ms, p99 {r['e2e_ms_p99']:.2f} ms; runtime overhead p99 "
          f"{r['runtime_overhead_ms_p99']:.2f} ms; {r['fps']:.1f} fps; dropped {r['dropped']}")
    print("stage p50 (ms): " + ", ".join(f"{s} {r[f'{s}_ms_p50']:.2f}" for s in
                                         ("encode", "send", "network", "decode", "render", "present")))
    print("bandwidth (kbit/s): " + ", ".join(f"{k} {v:.1f}" for k, v in r["bandwidth_kbps"].items() if v is not None))
    if "transport_floor_ms_p99" in r:
        print(f"bare ZeroMQ hop on this machine: p50 {r['transport_floor_ms_p50']:.2f} ms, p99 {r['transport_floor_ms_p99']:.2f} ms")
    return 0
