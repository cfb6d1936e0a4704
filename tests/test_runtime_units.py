"""Runtime pieces in one process: configs, models, telemetry, presenters, composition, CLI parsing."""
from __future__ import annotations

import math

import numpy as np
import pytest

from runtime.config import (
    ReceiverConfig,
    SecureConfig,
    SenderConfig,
    SourceConfig,
    ViewerConfig,
    clock_endpoint_for,
    load_config,
    save_config,
)
from runtime.receiver import viewer_direction
from runtime.telemetry import FrameRecord, Telemetry, latency_histogram, percentiles
from runtime_support import make_pattern_recording

pytestmark = pytest.mark.timeout(60)


def test_configs_round_trip_through_json(tmp_path):
    s = SenderConfig(stream_id="bob", source=SourceConfig(kind="camera", camera_ids=(0, 1, 2)),
                     secure=SecureConfig(secret_key="a", server_key="b"))
    r = ReceiverConfig(viewer=ViewerConfig(yaw_deg=10.0), seconds=3.0)
    for cfg in (s, r):
        save_config(cfg, tmp_path / "c.json")
        assert load_config(tmp_path / "c.json") == cfg
    with pytest.raises(ValueError):
        from runtime.config import from_dict

        from_dict(SenderConfig, {"nope": 1})


def test_clock_endpoint_next_to_frames_endpoint():
    assert clock_endpoint_for("tcp://10.0.0.2:5555") == "tcp://10.0.0.2:5556"
    assert clock_endpoint_for("tcp://127.0.0.1:*") == "tcp://127.0.0.1:*"
    assert clock_endpoint_for("ipc:///tmp/a") == "ipc:///tmp/a.clock"


def test_viewer_orbit_is_unit_and_within_amplitude():
    cfg = ViewerConfig(yaw_deg=30.0, period_s=8.0)
    yaws = []
    for t in np.linspace(0, 8, 81):
        d = viewer_direction(cfg, float(t))
        assert abs(np.linalg.norm(d) - 1) < 1e-6
        yaws.append(math.degrees(math.atan2(d[0], d[2])))
    assert max(yaws) == pytest.approx(30.0, abs=0.5) and min(yaws) == pytest.approx(-30.0, abs=0.5)
    np.testing.assert_allclose(viewer_direction(ViewerConfig(yaw_deg=0.0), 1.3), [0, 0, 1], atol=1e-7)


def test_tiny_models_run_in_onnxruntime_and_render(tiny_models):
    from runtime.models import load_avatar, load_encoder

    enc = load_encoder(tiny_models[0])
    views = np.random.default_rng(0).integers(0, 255, (3, 192, 192), np.uint8)
    r = enc.encode(views)
    assert r.z.shape == (256,) and r.gaze.shape == (2, 2) and np.isfinite(r.z).all()
    r2 = enc.encode(255 - views)
    assert np.abs(r2.z - r.z).max() > 1e-3  # the code follows the input
    av = load_avatar(tiny_models[1], size=96)
    try:
        v, t = av.decode(r.z, np.array([0, 0, 1.0]))
        assert v.shape == (576, 3) and t.shape == (64, 64, 3)
        img = av.render(v, t, r.gaze, np.array([0, 0, 1.0]))
        assert img.shape == (96, 96, 3) and img.dtype == np.uint8
        assert (img.sum(-1) > 0).mean() > 0.2  # the avatar covers a good part of the frame
        side = av.render(v, t, r.gaze, viewer_direction(ViewerConfig(), 2.0))
        assert np.abs(side.astype(int) - img.astype(int)).mean() > 1  # another viewpoint, another image
    finally:
        av.close()


def _record(seq, capture, stages_ms):
    t = [capture]
    for ms in stages_ms:
        t.append(t[-1] + int(ms * 1e6))
    return FrameRecord("alice", seq, *t)


def test_telemetry_stage_math_and_drift_windows(tmp_path):
    tel = Telemetry()
    for i in range(300):  # 30 s at 10 fps; e2e = 1 + 0.5 + 2 + 3 + 4 + 0.5 = 11 ms
        tel.add(_record(i, i * 100_000_000, [1, 0.5, 2, 3, 4, 0.5]))
    st = tel.stage_table()
    np.testing.assert_allclose(st["e2e"], 11.0)
    np.testing.assert_allclose(st["compute"], 8.0)
    np.testing.assert_allclose(st["overhead"], 3.0)
    s = tel.summary()
    assert s["frames"] == 300 and s["fps"] == pytest.approx(10.0)
    assert s["drift"]["ratio"] == pytest.approx(1.0)
    assert s["stages_ms"]["network"]["p50"] == pytest.approx(2.0)
    rows = [[r.seq, r.capture, r.enc, r.send, r.recv, r.dec, r.ren, r.pres] for r in tel.records]
    again = Telemetry.from_rows("alice", rows)
    np.testing.assert_allclose(again.stage_table()["e2e"], st["e2e"])
    latency_histogram({"alice": st}, tmp_path / "h.png")
    assert (tmp_path / "h.png").stat().st_size > 1000
    assert math.isnan(percentiles([])["p50"])


def test_video_presenter_places_frames_at_presentation_times(tmp_path):
    import cv2

    from runtime.presenters import VideoPresenter

    vp = VideoPresenter(tmp_path / "v.mp4", fps=10.0)
    img = np.zeros((64, 64, 3), np.uint8)
    t0 = 1_000_000_000
    for seq, dt_ms in [(0, 0), (1, 100), (2, 400), (3, 500)]:  # a 200 ms gap after seq 1
        vp.present(img + seq * 50, t0 + dt_ms * 1_000_000, seq)
    vp.close()
    assert vp.frame_seqs == [0, 1, 1, 1, 2, 3]
    cap = cv2.VideoCapture(str(tmp_path / "v.mp4"))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == 6


def test_compose_puts_the_matching_hmc_frame_beside_the_render(tmp_path):
    import cv2

    from capture.recording import HmcReader
    from runtime.compose import compose_call_video

    hmc = make_pattern_recording(tmp_path / "tap.hmc", frames=5)
    src = tmp_path / "r.mp4"
    w = cv2.VideoWriter(str(src), cv2.VideoWriter_fourcc(*"mp4v"), 10, (96, 96))
    for _ in range(4):
        w.write(np.full((96, 96, 3), 128, np.uint8))
    w.release()
    n = compose_call_video(src, [-1, 0, 3, 4], hmc, tmp_path / "out.mp4", fps=10, title="t", input_title="in")
    assert n == 4
    cap = cv2.VideoCapture(str(tmp_path / "out.mp4"))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    assert frames[0].shape == (96, 96 + 32, 3)
    with HmcReader(hmc) as r:
        want = cv2.resize(r[3].views[1], (32, 32), interpolation=cv2.INTER_AREA)
    got = frames[2][32:64, 96:, 1]
    assert np.abs(got.astype(int) - want.astype(int)).mean() < 12  # mp4 is lossy
    assert frames[0][:80, 100:].mean() < 10  # no input before the first frame (seq -1): black


def test_replay_source_stamps_on_the_runtime_clock(pattern_hmc):
    from runtime.sources import open_source
    from transport.clock import now_ns

    src = open_source(SourceConfig(kind="replay", path=str(pattern_hmc), loop=False))
    try:
        before = now_ns()
        caps = [c for _, c in zip(range(4), src)]
        after = now_ns()
    finally:
        src.close()
    ts = [c.capture_ts_ns for c in caps]
    assert before <= ts[0] and ts[-1] <= after and ts == sorted(ts)
    assert caps[0].views.shape == (3, 192, 192) and caps[0].views.dtype == np.uint8


def test_summary_of_a_one_frame_report_read_back_from_json(tmp_path):
    """A very short call presents a frame or two: its fps is NaN, which JSON stores as null; the summary still prints."""
    import json

    from runtime.telemetry import format_summary, write_json

    tel = Telemetry()
    tel.add(_record(0, 0, [1, 0.5, 2, 3, 4, 0.5]))
    write_json(tmp_path / "r.json", tel.summary())
    back = json.loads((tmp_path / "r.json").read_text())
    assert back["fps"] is None
    line = format_summary("alice -> bob", back)
    assert "1 frames, n/a fps" in line and "p50 11.0" in line


# ----------------------------------------------------------------------------------------------- display clock


def _display_record(tick, capture_ms, start_ms, end_ms, pres_ms, flags):
    from runtime.telemetry import FrameRecord

    ns = lambda ms: int(ms * 1e6)  # noqa: E731
    c = ns(capture_ms)
    return FrameRecord("alice", tick, c, c + ns(1), c + ns(1.5), c + ns(3), ns(start_ms), ns(end_ms), ns(pres_ms),
                       flags=flags, play=ns(start_ms), tick=tick, view=ns(100 + tick * 10))


def test_telemetry_splits_display_frames_into_generated_and_warped():
    """Display rows: generate and warp compute per kind, capture-to-present for new-code and warped frames, the age of
    the view when presented and the warp2x synchronisation overhead; a raster report keeps its keys."""
    from runtime.telemetry import GENERATED, NEW_CODE, PARALLEL, WARPED, Telemetry

    tel = Telemetry()
    for tick in range(6):  # ticks every 10 ms from 100 ms; a new code (captured 20 ms before the tick) every 2 ticks
        view = 100 + tick * 10
        if tick % 2 == 0:
            tel.add(_display_record(tick, view - 20, view + 1, view + 9, view + 10, GENERATED | NEW_CODE | PARALLEL))
        else:
            tel.add(_display_record(tick, view - 30, view + 1, view + 3, view + 4, WARPED | PARALLEL))
    tel.missed_ticks = 3
    d = tel.display_table()
    np.testing.assert_allclose(d["generate"], 8.0)
    np.testing.assert_allclose(d["warp"], 2.0)
    np.testing.assert_allclose(d["e2e_new_code"], 30.0)
    np.testing.assert_allclose(d["e2e_warped"], 34.0)
    np.testing.assert_allclose(d["view_to_present"], [10, 4, 10, 4, 10, 4])
    np.testing.assert_allclose(d["sync"], [1, 1, 1, 1, 1, 1])
    s = tel.summary()
    assert s["display"]["generated"] == 3 and s["display"]["warped"] == 3 and s["display"]["missed_ticks"] == 3
    assert s["display"]["fps"] == pytest.approx(5 / 0.044)  # presented from 110 to 154 ms
    assert s["stages_ms"]["generate"]["p50"] == pytest.approx(8.0) and s["stages_ms"]["warp"]["p50"] == pytest.approx(2.0)
    assert s["stages_ms"]["render"]["p50"] == pytest.approx(5.0)  # the engine call, whichever it was
    assert s["stages_ms"]["decode"]["p50"] == pytest.approx(0.0)
    again = Telemetry.from_rows("alice", [r.row() for r in tel.records])  # 12 columns survive a report
    np.testing.assert_allclose(again.display_table()["view_to_present"], d["view_to_present"])
    from runtime.telemetry import format_summary

    assert "2 generated" not in format_summary("a", s) and "3 generated" in format_summary("a", s)
    raster = Telemetry()
    raster.add(_record(0, 0, [1, 0.5, 2, 3, 4, 0.5]))
    rs = raster.summary()
    assert "display" not in rs and set(rs["stages_ms"]) == {"encode", "send", "network", "buffer", "decode", "render",
                                                            "present", "e2e", "compute", "overhead"}
    old = Telemetry.from_rows("alice", [raster.records[0].row()[:10]])  # rows of reports written before the display clock
    assert old.records[0].tick == 0 and old.records[0].view == 0 and not old.records[0].display


def test_render_options_reach_every_receiver_config(tiny_models, tmp_path):
    """``--render`` / ``--display-hz`` of receive, call, demo and bench e2e land in the receiver configs (and survive
    the JSON a worker's config goes through); bad values are one-line errors."""
    from avcall.call_cmds import bench_e2e_config, call_config, receive_config
    from avcall.cli import build_parser
    from avcore.errors import UsageError
    from runtime.call import plan_call
    from runtime.models import MissingModelError
    from runtime_support import neural_avatar

    parse = build_parser().parse_args
    rc = receive_config(parse(["receive", "--bind", "tcp://127.0.0.1:*", "--render", "warp2x", "--display-hz", "90"]))
    assert (rc.render, rc.display_hz) == ("warp2x", 90.0)
    save_config(rc, tmp_path / "rc.json")
    assert load_config(tmp_path / "rc.json") == rc
    assert receive_config(parse(["receive", "--bind", "tcp://127.0.0.1:*"])).render == "raster"  # the default, for now
    be = bench_e2e_config(parse(["bench", "e2e", "--render", "neural", "--display-hz", "72"]))
    assert (be.render, be.display_hz) == ("neural", 72.0)
    avatar = neural_avatar(tiny_models[1], tmp_path / "avatar")
    for command in ("call", "demo"):
        args = parse([command, "--out", str(tmp_path / command), "--encoder", str(tiny_models[0]), "--avatar",
                      str(avatar), "--render", "warp", "--display-hz", "75"])
        cfg = call_config(args)
        links = plan_call(cfg, tmp_path / command)
        assert {(ln.receiver.render, ln.receiver.display_hz) for ln in links} == {("warp", 75.0)}
    cfg = call_config(parse(["call", "--out", str(tmp_path / "bad"), "--encoder", str(tiny_models[0]), "--avatar",
                             str(tiny_models[1]), "--render", "warp2x"]))
    with pytest.raises(MissingModelError, match=r"--render warp2x needs the neural renderer .*renderer\.onnx.*"
                                                r"avcall train renderer --identity S1 --install"):
        plan_call(cfg, tmp_path / "bad")  # refused before any process starts
    with pytest.raises(UsageError, match="unknown render mode 'fancy'"):
        ReceiverConfig(render="fancy")
    with pytest.raises(UsageError, match="display rate"):
        ReceiverConfig(render="warp", display_hz=0.0)
    with pytest.raises(UsageError, match="--display-hz has no effect with --render raster"):
        receive_config(parse(["receive", "--bind", "tcp://127.0.0.1:*", "--display-hz", "90"]))
    with pytest.raises(SystemExit):
        parse(["receive", "--bind", "tcp://127.0.0.1:*", "--render", "fancy"])
