"""``avcall send | receive | call | demo | keys | models`` and ``avcall bench e2e``.

Each handler turns its arguments into a config dataclass (whose ``__post_init__``
checks the values) and calls one library function (:mod:`runtime.sender`,
:mod:`runtime.receiver`, :mod:`runtime.call`, :mod:`runtime.bench`). Defaults
shown in ``--help`` come from those dataclasses. Heavy imports stay inside the
handlers; nothing here imports torch.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from avcore.errors import UsageError
from runtime.bench import E2EBenchConfig
from runtime.call import CallConfig, PartyConfig
from runtime.config import RENDER_MODES, ReceiverConfig, SenderConfig, SourceConfig, ViewerConfig

from .args import HelpFormatter, add_latex_args, command_line, int_list, latex_from_args, non_negative_float, positive_float
from transport.latent_codec import CodecConfig

from .network_cmds import add_impair_arg, add_playout_args, playout_from_args

SEND_EPILOG = """\
examples:
  avcall receive --bind tcp://0.0.0.0:5555 --out alice.mp4          # on the viewer's machine
  avcall send --source synthetic --identity S1 --connect tcp://VIEWER:5555
  avcall send --source replay session.hmc --connect tcp://VIEWER:5555
  avcall send --source camera --camera 0,1,2 --bind tcp://0.0.0.0:5555

The clock channel uses the next TCP port (5556 here) unless --clock is given.
With --secure: avcall keys new --name alice; give alice.key to the receiver (its
--allow directory) and pass the receiver's public key with --server-key.
Exit status: 0 when frames reached a receiver, 3 when none did, 2 on a bad argument.
"""

RECEIVE_EPILOG = """\
examples:
  avcall receive --bind tcp://0.0.0.0:5555 --out alice.mp4 --seconds 60
  avcall receive --connect tcp://SENDER:5555 --png-dir frames/

Exit status: 0 when frames were presented, 3 when none arrived, 2 on a bad argument.
"""

CALL_EPILOG = """\
examples:
  avcall call --seconds 20 --out call_out
  avcall call --latex --secure --identity-b S1 --seed-b 4
  avcall call --replay-a alice.hmc --replay-b bob.hmc
  avcall call --plain                 # plain float16 frames instead of the coded stream

Ctrl-C ends the call early and still writes the report and the videos of what was captured.
"""


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")


def _endpoint_args(p: argparse.ArgumentParser, seconds_default: float) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--connect", metavar="ADDR", help="connect the frames socket to ADDR (tcp://host:port, ipc://path)")
    g.add_argument("--bind", metavar="ADDR", help="bind the frames socket to ADDR (tcp://127.0.0.1:* picks a free port)")
    p.add_argument("--clock", metavar="ADDR", default="", help="clock-channel address (default: frames port + 1)")
    p.add_argument("--stream-id", default="", help="stream id (sender default 'alice'; receiver: accept only this stream)")
    p.add_argument("--seconds", type=non_negative_float, default=seconds_default, help="stop after this long (0 = until Ctrl-C)")
    p.add_argument("--secure", action="store_true", help="CurveZMQ encryption and authentication (needs --key)")
    p.add_argument("--key", default="", metavar="FILE.key_secret", help="this side's secret key file (avcall keys new)")
    p.add_argument("--report", default="", metavar="FILE.json", help="write the final report here")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress")


def add_render_args(p: argparse.ArgumentParser, who: str = "the receiver") -> None:
    """``--render`` and ``--display-hz``; defaults from :class:`runtime.config.ReceiverConfig`."""
    d = ReceiverConfig()
    p.add_argument("--render", choices=RENDER_MODES, default=d.render,
                   help=f"how {who} makes frames: raster = one decoded and rasterized frame per arriving code (the "
                        "sender's rate); neural = a display clock (--display-hz), the neural renderer G on every tick; "
                        "warp = G when a new code arrived, else the warp network from G's cache; warp2x = the same in "
                        "two worker processes taking turns. neural/warp/warp2x need the trained renderer in the avatar "
                        "directory ('avcall train renderer --install') (default: %(default)s)")
    p.add_argument("--display-hz", type=positive_float, default=d.display_hz, metavar="HZ",
                   help="display clock of --render neural/warp/warp2x: a frame every tick, for the view of that "
                        "moment (default: %(default)g)")


def _check_display_hz(args) -> None:
    if args.render == "raster" and args.display_hz != ReceiverConfig.display_hz:
        raise UsageError("--display-hz has no effect with --render raster (one frame per arriving code)")


def _secure(args, role: str):
    from runtime.config import SecureConfig

    if not args.secure:
        if args.key or getattr(args, "server_key", "") or getattr(args, "allow", ""):
            raise UsageError("--key, --server-key and --allow need --secure")
        return SecureConfig()
    if not args.key:
        raise UsageError("--secure needs --key FILE.key_secret")
    if role == "sender":
        if not args.server_key:
            raise UsageError("--secure sender needs --server-key (the receiver's public .key)")
        return SecureConfig(secret_key=args.key, server_key=args.server_key)
    if not args.allow:
        raise UsageError("--secure receiver needs --allow DIR (public .key files of allowed senders)")
    return SecureConfig(secret_key=args.key, allowed_dir=args.allow)


def register(sub) -> None:
    src, snd, rcv, vw = SourceConfig(), SenderConfig(), ReceiverConfig(), ViewerConfig()
    # ---- send
    p = sub.add_parser("send", help="stream a headset (HMC) source as latent codes to a receiver",
                       description="The sender: HMC source -> per-view encoders + fusion -> ZeroMQ PUB.",
                       epilog=SEND_EPILOG, formatter_class=HelpFormatter)
    p.add_argument("--source", nargs="+", default=[src.kind], metavar="KIND",
                   help="synthetic | replay FILE.hmc | camera")
    p.add_argument("--identity", default=src.identity, help="synthetic: studio identity (S1..S6)")
    p.add_argument("--seed", type=int, default=src.seed, help="synthetic: performance seed")
    p.add_argument("--fps", type=positive_float, default=None,
                   help=f"capture rate (synthetic and camera: default {src.fps:g}; replay: default the recording's "
                   "own timing, a value resamples it)")
    p.add_argument("--camera", type=int_list, default=src.camera_ids, metavar="IDS",
                   help="camera: device numbers, 0 or 0,1,2 (default 0)")
    p.add_argument("--no-loop", action="store_true", help="replay: stop at the end of the recording")
    p.add_argument("--encoder", default="", metavar="DIR", help="encoder model directory (default: installed model)")
    p.add_argument("--server-key", default="", metavar="FILE.key", help="--secure: the receiver's public key")
    p.add_argument("--tap", default="", metavar="FILE.hmc", help="also record every sent HMC frame (index = seq)")
    p.add_argument("--f32", action="store_true", help="send plain float32 codes (implies --plain; for measurements)")
    p.add_argument("--plain", action="store_true",
                   help="send plain float16 frames (~147 kbit/s) instead of coded frames (default: coded, ~9 kbit/s; "
                        "docs/protocol.md 3.7)")
    p.add_argument("--latex-skip", action="store_true",
                   help="with --latex: do not send the frames the gate extrapolated (the receiver extrapolates them)")
    p.add_argument("--codec-coder", default=CodecConfig.coder, choices=("range", "raw"),
                   help="payload coder of coded frames (default: %(default)s)")
    p.add_argument("--intra-interval", type=int, default=CodecConfig.intra_interval, metavar="N",
                   help="frames between intra frames of coded streams (default: %(default)s = 0.5 s at 30 fps)")
    add_latex_args(p)
    add_impair_arg(p)
    _endpoint_args(p, snd.seconds)
    p.set_defaults(func=_send)

    # ---- receive
    r = sub.add_parser("receive", help="receive a latent stream, render the avatar, show/record it",
                       description="The receiver: ZeroMQ SUB -> validate -> decode -> rasterize -> present. "
                       "Renders for a viewer orbiting +-30 degrees (yaw) by default.",
                       epilog=RECEIVE_EPILOG, formatter_class=HelpFormatter)
    _endpoint_args(r, rcv.seconds)
    r.add_argument("--out", default="", metavar="VIDEO.mp4", help="write the presented frames to an H.264 mp4 file")
    r.add_argument("--png-dir", default="", metavar="DIR", help="write every presented frame as PNG")
    r.add_argument("--window", action="store_true", help="show an OpenCV window (needs a display)")
    r.add_argument("--avatar", default="", metavar="DIR", help="decoder model directory (default: installed avatar)")
    r.add_argument("--codec", default="", metavar="DIR",
                   help="codec tables (codec.json + codec.npz) for coded frames, besides those installed next to the "
                        "encoders of the avatar's model")
    r.add_argument("--size", type=int, default=rcv.size, help="rendered image size in pixels")
    r.add_argument("--yaw", type=float, default=vw.yaw_deg, help="viewer orbit amplitude, degrees (0 = fixed front view)")
    r.add_argument("--period", type=non_negative_float, default=vw.period_s, help="viewer orbit period, seconds")
    r.add_argument("--idle-stop", type=non_negative_float, default=rcv.stop_after_idle_s, metavar="S",
                   help="stop after S seconds without frames once the stream has started (0 = never)")
    r.add_argument("--allow", default="", metavar="DIR", help="--secure: directory of allowed senders' public keys")
    r.add_argument("--histogram", default="", metavar="FILE.png", help="write the latency histogram here")
    r.add_argument("--status", default="", metavar="FILE.json", help="rewrite a live status JSON here")
    add_render_args(r)
    add_playout_args(r)
    r.set_defaults(func=_receive)

    # ---- call
    c = sub.add_parser("call", help="a two-party call on this machine (2 senders + 2 receivers)",
                       description="A sees B and B sees A. Headless by default: writes each party's view (with the far "
                       "end's headset input beside it), the latency report (JSON) and a histogram (PNG).",
                       epilog=CALL_EPILOG, formatter_class=HelpFormatter)
    _call_args(c, default_seconds=CallConfig.seconds, default_out=CallConfig.out_dir)
    c.set_defaults(func=_call)

    # ---- demo
    d = sub.add_parser("demo", help="a short two-party call on the default avatar; prints where the results are",
                       description="The README's first command: a short call between two synthetic headset wearers.",
                       epilog=CALL_EPILOG.replace("avcall call", "avcall demo"), formatter_class=HelpFormatter)
    _call_args(d, default_seconds=8.0, default_out="avcall_demo")
    d.set_defaults(func=_call)

    # ---- keys
    k = sub.add_parser("keys", help="CurveZMQ key pairs for --secure")
    ks = k.add_subparsers(dest="keys_command", metavar="WHAT")
    ks.required = True
    kn = ks.add_parser("new", help="write NAME.key (public, give it to the other side) and NAME.key_secret (mode 0600)")
    kn.add_argument("--name", required=True, help="key pair name, e.g. alice: letters, digits, . _ -, not starting with '.'")
    kn.add_argument("--dir", default="keys", help="directory (default ./keys)")
    kn.add_argument("--force", action="store_true",
                    help="replace an existing key pair of this name (every allowlist holding the old public key "
                         "must then get the new one)")
    kn.set_defaults(func=_keys_new)

    # ---- models
    m = sub.add_parser("models", help="list the installed (embedded) encoders and decoders",
                       description="The models shipped with this installation: encoders (per identity and "
                       "architecture, with or without a LATEX early model) and avatar decoders, with the model id "
                       "their codes carry on the wire.", formatter_class=HelpFormatter)
    m.add_argument("--json", action="store_true", help="print a JSON list")
    m.set_defaults(func=_models)


def _call_args(c: argparse.ArgumentParser, default_seconds: float, default_out: str) -> None:
    cc = CallConfig()
    a, b = cc.parties
    c.add_argument("--seconds", type=positive_float, default=default_seconds, help="call length in seconds")
    c.add_argument("--fps", type=positive_float, default=cc.fps, help="headset rate")
    c.add_argument("--out", default=default_out, metavar="DIR", help="output directory")
    c.add_argument("--window", action="store_true", help="also show each party's view in a window")
    c.add_argument("--secure", action="store_true", help="CurveZMQ with fresh keys and allowlists")
    c.add_argument("--encoder", default="", metavar="DIR", help="encoder models for both parties (default: installed)")
    c.add_argument("--avatar", default="", metavar="DIR", help="avatar decoder for both parties (default: installed)")
    c.add_argument("--size", type=int, default=cc.size, help="rendered view size in pixels")
    c.add_argument("--plain", action="store_true",
                   help="both senders send plain float16 frames (~147 kbit/s) instead of coded frames (default: coded, "
                        "~9 kbit/s; docs/protocol.md 3.7)")
    for party, x in ((a, "a"), (b, "b")):
        c.add_argument(f"--identity-{x}", default=party.identity, metavar="ID",
                       help=f"party {x.upper()} ({party.name})'s studio identity (S1..S6)")
        c.add_argument(f"--seed-{x}", type=int, default=party.seed, metavar="N",
                       help=f"party {x.upper()}'s performance seed (what the face does)")
        c.add_argument(f"--replay-{x}", default="", metavar="FILE.hmc", help=f"party {x.upper()}'s headset: this recording")
    add_latex_args(c)
    add_impair_arg(c, who="both senders'")
    add_render_args(c, who="both receivers")
    add_playout_args(c)
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c.add_argument("-v", "--verbose", action="store_true", help="log progress")


def add_bench(bench_sub) -> None:
    bc = E2EBenchConfig()
    e = bench_sub.add_parser(
        "e2e", help="end-to-end latency over loopback: capture to present, per stage, overhead, bandwidth",
        description="Real sender and receiver processes over loopback TCP. Reports e2e_ms_p50/p99 (capture to "
        "present), <stage>_ms_p50, runtime_overhead_ms_p99 (capture-to-present minus the encoder, decoder and "
        "render compute of the same frame), bandwidth_kbps per stream, fps and dropped frames.",
        epilog="examples:\n  avcall bench e2e --two-way --json\n  avcall bench e2e --latex --seconds 60 --out bench_out",
        formatter_class=HelpFormatter)
    e.add_argument("--seconds", type=positive_float, default=bc.seconds,
                   help=f"measured seconds (after {bc.warmup_s:g} s warm-up)")
    e.add_argument("--fps", type=positive_float, default=bc.fps, help="headset rate")
    e.add_argument("--source", choices=("replay", "synthetic"), default=bc.source,
                   help="replay (a pre-recorded synthetic session) or the live studio")
    e.add_argument("--two-way", action="store_true", help="two streams, as in a call")
    e.add_argument("--plain", action="store_true",
                   help="senders send plain float16 frames instead of the coded stream (default: coded)")
    e.add_argument("--video", action="store_true", help="receivers also write mp4")
    e.add_argument("--encoder", default="", metavar="DIR", help="encoder models (default: installed)")
    e.add_argument("--avatar", default="", metavar="DIR", help="avatar decoder (default: installed)")
    e.add_argument("--size", type=int, default=bc.size, help="rendered view size in pixels")
    add_latex_args(e)
    add_impair_arg(e, who="the senders'")
    add_render_args(e, who="the receivers")
    add_playout_args(e)
    e.add_argument("--out", default="", metavar="DIR", help="keep logs and raw reports here (default: a temporary "
                   "directory, removed afterwards)")
    e.add_argument("--floor-seconds", type=non_negative_float, default=bc.floor_s, metavar="S",
                   help="first measure a bare ZeroMQ hop between two processes for S seconds (transport_floor_ms_*), "
                   "the machine's own floor to compare runtime_overhead_ms with")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.set_defaults(func=_bench_e2e)


# --------------------------------------------------------------------------- handlers


def send_config(args) -> SenderConfig:
    """The sender config the ``send`` arguments describe."""
    kind, *rest = args.source
    if kind not in ("synthetic", "replay", "camera"):
        raise UsageError(f"--source must be synthetic, replay FILE.hmc or camera, got {kind!r}")
    if (kind == "replay") != bool(rest) or len(rest) > 1:
        raise UsageError("--source replay takes exactly one FILE.hmc; synthetic and camera take none")
    path = rest[0] if rest else ""
    src = SourceConfig(kind=kind, identity=args.identity, seed=args.seed, path=path, loop=not args.no_loop,
                       camera_ids=tuple(args.camera))
    if args.fps is not None:
        src = _with_fps(src, args.fps)
    return SenderConfig(stream_id=args.stream_id or SenderConfig.stream_id, endpoint=args.bind or args.connect,
                        bind=bool(args.bind), clock_endpoint=args.clock, source=src, encoder_dir=args.encoder,
                        latent_dtype="<f4" if args.f32 else "<f2", seconds=args.seconds, tap_path=args.tap,
                        report_path=args.report, secure=_secure(args, "sender"), latex=latex_from_args(args),
                        impair=args.impair,
                        codec=CodecConfig(coded=not (args.plain or args.f32), coder=args.codec_coder,
                                          intra_interval=args.intra_interval, latex_skip=args.latex_skip))


def _with_fps(src: SourceConfig, fps: float) -> SourceConfig:
    """``--fps`` for a source: the capture rate, or for a replay the rate it is resampled to."""
    from dataclasses import replace

    if src.kind == "replay":
        return replace(src, replay_fps=fps)
    return replace(src, fps=fps)


def _send(args) -> int:
    from runtime.proc import run_config

    _setup_logging(args.verbose)
    cfg = send_config(args)
    rep = run_config(cfg)
    print(f"sent {rep['frames_sent']} frames in {rep['elapsed_s']:.1f} s ({rep['fps']:.1f} fps, "
          f"{rep['kbit_per_s']:.1f} kbit/s); encode p50 {rep['encode_ms']['p50']:.2f} ms; encoder compute "
          f"{rep['encoder_compute_ms']['mean']:.2f} ms/frame; skipped {rep['skip_ratio']:.1%}; "
          f"camera frames dropped {rep['source_dropped']}")
    if not rep["receiver_seen"]:
        why = rep.get("refused") or f"no receiver answered at {cfg.endpoint}"
        print(f"avcall send: nothing was delivered: {why}", file=sys.stderr)
        return 3
    print(f"{rep['frames_to_receiver']} of them while a receiver was connected")
    return 0


def receive_config(args) -> ReceiverConfig:
    """The receiver config the ``receive`` arguments describe (output paths checked before anything starts)."""
    from runtime.presenters import check_output_dir, check_video_path

    if args.out:
        check_video_path(args.out)
    if args.png_dir:
        check_output_dir(args.png_dir)
    _check_display_hz(args)
    if args.window:
        from runtime.presenters import has_display

        if not has_display():
            raise UsageError("--window needs a display (DISPLAY is unset); use --out VIDEO.mp4")
    return ReceiverConfig(stream_id=args.stream_id, endpoint=args.bind or args.connect, bind=bool(args.bind),
                          codec_dir=args.codec,
                          clock_endpoint=args.clock, avatar_dir=args.avatar, size=args.size,
                          viewer=ViewerConfig(yaw_deg=args.yaw, period_s=args.period), video_path=args.out,
                          png_dir=args.png_dir, window=args.window, seconds=args.seconds,
                          stop_after_idle_s=args.idle_stop, status_path=args.status, report_path=args.report,
                          histogram_path=args.histogram, secure=_secure(args, "receiver"),
                          playout=playout_from_args(args), render=args.render, display_hz=args.display_hz)


def _receive(args) -> int:
    from runtime.proc import run_config
    from runtime.telemetry import format_summary

    _setup_logging(args.verbose)
    cfg = receive_config(args)
    rep = run_config(cfg)
    print(format_summary(args.stream_id or "stream", rep["latency"]))
    d = rep["dropped"]
    print(f"dropped: stale {d['stale']}, lost {d['lost_in_network']}, presenter {d['presenter']}; "
          f"bad messages {dict(d['bad_messages'])}")
    for sid, s in rep["streams"].items():
        kb = s["kbit_per_s"]
        print(f"stream {sid}: {s['frames_received']} frames, {kb:.1f} kbit/s" if kb else f"stream {sid}: {s['frames_received']} frames")
    if rep.get("video"):
        print(f"video: {rep['video']['path']} ({rep['video']['frames']} frames)")
    elif args.out:
        print(f"no video written: {rep.get('video_error') or 'no frame arrived'}", file=sys.stderr)
    if rep.get("png"):
        print(f"frames: {rep['png']['path']} ({rep['png']['frames']} PNGs)")
    if not rep["presented"]:
        why = rep.get("refused") or "no frame arrived"
        print(f"avcall receive: nothing was presented: {why}", file=sys.stderr)
        return 3
    return 0


def call_config(args) -> CallConfig:
    """The call config the ``call``/``demo`` arguments describe."""
    from runtime.presenters import check_output_dir

    if args.window:
        from runtime.presenters import has_display

        if not has_display():
            raise UsageError("--window needs a display (DISPLAY is unset); the call is recorded to video anyway")
    check_output_dir(args.out)
    _check_display_hz(args)
    a, b = CallConfig().parties
    parties = (PartyConfig(a.name, args.identity_a, args.seed_a, args.replay_a),
               PartyConfig(b.name, args.identity_b, args.seed_b, args.replay_b))
    return CallConfig(out_dir=args.out, seconds=args.seconds, fps=args.fps, encoder_dir=args.encoder,
                      latex=latex_from_args(args), avatar_dir=args.avatar, size=args.size, window=args.window,
                      secure=args.secure, parties=parties, impair=args.impair, playout=playout_from_args(args),
                      codec=CodecConfig(coded=not args.plain), render=args.render, display_hz=args.display_hz)


def _call(args) -> int:
    from runtime.call import run_call, summary_lines

    _setup_logging(args.verbose)
    cfg = call_config(args)
    rep = run_call(cfg)
    if args.json:
        print(json.dumps(rep, indent=1, default=str))
    else:
        for line in summary_lines(rep):
            print(line)
        for viewer, v in rep["videos"].items():
            print(f"{viewer}'s view: {v['path']} ({v['frames']} frames)")
        print(f"latency report: {rep['report']}")
        if rep.get("histogram"):
            print(f"latency histogram: {rep['histogram']}")
    for f in rep["failures"]:
        print(f"avcall {args.command}: {f.splitlines()[0]}", file=sys.stderr)
    if rep["interrupted"]:
        print(f"avcall {args.command}: interrupted; kept what was captured", file=sys.stderr)
        return 130
    if rep["failures"] or not all(s["presented"] for s in rep["streams"].values()) or len(rep["streams"]) < 2:
        print(f"avcall {args.command}: error: not every stream was presented (logs in {cfg.out_dir}/logs)", file=sys.stderr)
        return 1
    return 0


def _keys_new(args) -> int:
    from transport import KeyPairError, generate_keypair

    try:
        pub, sec = generate_keypair(args.dir, args.name, force=args.force)
    except KeyPairError as exc:  # existing key pair without --force, or a bad --name: one line, no traceback
        raise UsageError(str(exc)) from None
    print(f"public key: {pub}  (give this to the other side)")
    print(f"secret key: {sec}  (keep private; mode 0600)")
    return 0


def _models(args) -> int:
    from runtime.models import installed_models

    models = installed_models()
    if args.json:
        print(json.dumps([{"kind": m.kind, "identity": m.identity, "name": m.name, "path": str(m.path),
                           "latent_dim": m.latent_dim, "model_id": m.model_id, "latex": m.latex,
                           **({"default": m.default} if m.kind == "encoder" else {})} for m in models]))
        return 0
    if not models:
        print("no models installed; train them with 'avcall train decoder' and 'avcall train encoder'")
        return 0
    for m in models:
        extra = (" (+LATEX)" if m.latex else "") + (", sender's default" if m.default else "")
        print(f"{m.kind:8s} {m.identity:4s} {m.name + extra:32s} {m.model_id:8s} {m.path}")
    return 0


def bench_e2e_config(args) -> E2EBenchConfig:
    """The bench config the ``bench e2e`` arguments describe."""
    _check_display_hz(args)
    return E2EBenchConfig(seconds=args.seconds, fps=args.fps, source=args.source, two_way=args.two_way,
                          video=args.video, encoder_dir=args.encoder, avatar_dir=args.avatar, size=args.size,
                          out_dir=args.out, floor_s=args.floor_seconds, latex=latex_from_args(args),
                          impair=args.impair, playout=playout_from_args(args), codec=CodecConfig(coded=not args.plain),
                          render=args.render, display_hz=args.display_hz)


def _bench_e2e(args) -> int:
    from runtime.bench import bench_e2e

    cfg = bench_e2e_config(args)
    print(f"bench e2e: {'two streams' if cfg.two_way else 'one stream'} for {cfg.seconds + cfg.warmup_s:g} s ...",
          file=sys.stderr)
    r = bench_e2e(cfg)
    if args.json:
        from encoder.bench import machine_description
        from runtime.telemetry import json_safe

        r |= {"machine": machine_description(), "command": command_line("e2e", "avcall bench e2e")}
        print(json.dumps(json_safe(r)))
        return 0
    print(f"capture->present p50 {r['e2e_ms_p50']:.2f} ms, p99 {r['e2e_ms_p99']:.2f} ms; runtime overhead p99 "
          f"{r['runtime_overhead_ms_p99']:.2f} ms; {r['fps']:.1f} fps; dropped {r['dropped']}")
    print("stage p50 (ms): " + ", ".join(f"{s} {r[f'{s}_ms_p50']:.2f}" for s in
                                         ("encode", "send", "network", "decode", "render", "present")))
    print("bandwidth (kbit/s): " + ", ".join(f"{k} {v:.1f}" for k, v in r["bandwidth_kbps"].items() if v is not None))
    if r.get("render_mode", "raster") != "raster":
        from runtime.telemetry import format_number as n

        line = (f"render {r['render_mode']} at {r['display_hz']:g} Hz: {n(r['display_fps'])} display fps, "
                f"{r['missed_ticks']} ticks missed; generate p50 {n(r['generate_ms_p50'], 2)} ms "
                f"({r['frames_generated']} frames), warp p50 {n(r['warp_ms_p50'], 2)} ms ({r['frames_warped']}); "
                f"view->present p50 {n(r['view_to_present_ms_p50'], 2)} p99 {n(r['view_to_present_ms_p99'], 2)} ms; "
                f"capture->present p50 new code {n(r['e2e_new_code_ms_p50'], 2)} / warped {n(r['e2e_warped_ms_p50'], 2)} ms")
        if "sync_ms_p50" in r:
            line += f"; warp2x sync p50 {n(r['sync_ms_p50'], 2)} p99 {n(r['sync_ms_p99'], 2)} ms"
        print(line)
    if "transport_floor_ms_p99" in r:
        print(f"bare ZeroMQ hop on this machine: p50 {r['transport_floor_ms_p50']:.2f} ms, p99 {r['transport_floor_ms_p99']:.2f} ms")
    return 0
