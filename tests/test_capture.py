"""The synthetic studio: head model, HMC rig, ground truth, performances (real headless GL)."""
from __future__ import annotations

import numpy as np
import pytest

from capture import head as H
from capture.expression import NAMED_POSES, NUM_EXPRESSIONS, expression, gaze
from capture.identity import IDENTITIES, make_identity
from capture.performance import PerformanceConfig, generate_performance
from capture.studio import Studio


@pytest.fixture(scope="module")
def studio():
    s = Studio("S1")
    yield s
    s.release()


def _lid_gap(head, expr, g, side="left"):
    """Distance between the upper and lower lid margins at the middle of the fissure."""
    st = head.state(expr, g)
    c0, c1 = H.COL_EYE_LEFT if side == "left" else H.COL_EYE_RIGHT
    c = (c0 + c1) // 2
    C1 = H.GRID_COLS + 1
    return float(np.linalg.norm(st.vertices[H.ROW_UPPER_LID * C1 + c] - st.vertices[H.ROW_LOWER_LID * C1 + c]))


def test_identities_are_deterministic_and_distinct():
    assert make_identity("S3") == make_identity("S3")
    params = [make_identity(i) for i in IDENTITIES]
    assert len(IDENTITIES) >= 6
    skins = np.array([p.skin for p in params])
    # Every pair differs visibly in colouring or shape.
    for a in range(len(params)):
        for b in range(a + 1, len(params)):
            shape = abs(params[a].half_width - params[b].half_width) + abs(params[a].eye_theta - params[b].eye_theta)
            assert np.abs(skins[a] - skins[b]).max() > 0.03 or shape > 0.02
    with pytest.raises(ValueError):
        make_identity("bob")


def test_mesh_topology_and_uvs():
    head = H.HeadModel(make_identity("S2"))
    assert 3000 < head.num_vertices < 10000
    assert head.triangles.max() < head.num_vertices
    assert head.uvs.min() >= 0 and head.uvs.max() <= 1
    # Slits: no triangle joins the upper and lower lid margins or the two lips.
    C1 = H.GRID_COLS + 1
    rows = head.triangles[head.triangles < head.num_grid_vertices].reshape(-1) // C1
    tri_rows = np.where(head.triangles < head.num_grid_vertices, head.triangles // C1, -1)
    joins = lambda r0, r1: np.any((tri_rows == r0).any(1) & (tri_rows == r1).any(1))  # noqa: E731
    assert not joins(H.ROW_LOWER_LID, H.ROW_UPPER_LID)
    assert not joins(H.ROW_LOWER_LIP, H.ROW_UPPER_LIP)
    assert len(rows)


def test_blink_closes_the_eyelids():
    head = H.HeadModel(make_identity("S1"))
    open_gap = _lid_gap(head, expression(), gaze())
    shut_gap = _lid_gap(head, expression(blink_left=1.0), gaze())
    other = _lid_gap(head, expression(blink_left=1.0), gaze(), side="right")
    assert open_gap > 0.05  # dm: about 5 mm open
    assert shut_gap < 1e-4
    assert other > 0.05  # asymmetric: the right eye stays open


def test_closed_lids_cover_the_eyeball():
    head = H.HeadModel(make_identity("S1"))
    st = head.state(expression(blink_left=1, blink_right=1), gaze())
    C1 = H.GRID_COLS + 1
    for k, (c0, c1) in enumerate((H.COL_EYE_LEFT, H.COL_EYE_RIGHT)):
        cols = np.arange(min(c0, c1), max(c0, c1) + 1)
        idx = np.add.outer(np.arange(H.ROW_LOWER_LID - 3, H.ROW_UPPER_LID + 4) * C1, cols).ravel()
        d = np.linalg.norm(st.vertices[idx] - head.eye_centres[k], axis=1)
        assert d.min() >= head.eye_radius * 0.999, "eyeball pokes through the lid skin"


def test_jaw_opens_the_mouth():
    head = H.HeadModel(make_identity("S4"))
    C1 = H.GRID_COLS + 1
    mid = H.COL_CENTRE
    for jaw, lo, hi in ((0.0, 0.0, 1e-6), (1.0, 0.15, 1.0)):
        v = head.state(expression(jaw_open=jaw), gaze()).vertices
        gap = v[H.ROW_UPPER_LIP * C1 + mid, 1] - v[H.ROW_LOWER_LIP * C1 + mid, 1]
        assert lo <= gap <= hi


def test_hmc_views_look_like_headset_cameras(studio):
    views, gt = studio.hmc_frame(*NAMED_POSES["neutral"])
    assert views.shape == (3, 192, 192) and views.dtype == np.uint8
    for v in views:
        assert 20 < v.mean() < 200  # lit, not saturated
        assert v.std() > 15  # structure, not a flat field
        assert (v < 10).mean() > 0.02  # dark surroundings beyond the LED reach
    assert gt["keypoints"].shape == (3, 9, 2)
    assert gt["vertices"].shape == (studio.head.num_vertices, 3)


def _patch(img, xy, r=2):
    x, y = int(round(xy[0])), int(round(xy[1]))
    return img[max(y - r, 0) : y + r + 1, max(x - r, 0) : x + r + 1].astype(float)


def test_keypoints_land_on_rendered_features(studio):
    views, gt = studio.hmc_frame(*NAMED_POSES["neutral"])
    kp, vis = gt["keypoints"], gt["keypoints_visible"]
    for v in (0, 1):
        assert vis[v].all()
        iris = _patch(views[v], kp[v, 8]).mean()
        lids = np.mean([_patch(views[v], kp[v, k], 1).mean() for k in (0, 1)])
        skin_above = _patch(views[v], kp[v, 3] - np.array([0, 12])).mean()
        assert iris < 0.6 * skin_above, "iris keypoint is not on the dark pupil/iris"
        assert lids < skin_above
        # Keypoints are inside the image and ordered: corners left/right of the iris.
        assert (kp[v] >= 0).all() and (kp[v] < 192).all()
    views, gt = studio.hmc_frame(*NAMED_POSES["jaw_open"])
    kp = gt["keypoints"][2]
    upper, lower = kp[3], kp[6]
    inside = (upper + lower) / 2
    assert lower[1] - upper[1] > 15  # lips apart in the mouth view
    assert _patch(views[2], inside).mean() < 0.5 * _patch(views[2], upper - np.array([0, 6])).mean()


def test_gaze_moves_the_iris_keypoint(studio):
    xs = []
    for yaw in (-0.4, 0.0, 0.4):
        _, gt = studio.hmc_frame(expression(), gaze((yaw, 0.0)))
        xs.append(gt["keypoints"][0, 8, 0])
    assert xs[0] < xs[1] < xs[2] or xs[0] > xs[1] > xs[2]
    assert abs(xs[2] - xs[0]) > 10  # pixels
    _, gt_up = studio.hmc_frame(expression(), gaze((0.0, 0.3)))
    _, gt_dn = studio.hmc_frame(expression(), gaze((0.0, -0.3)))
    assert gt_up["keypoints"][0, 8, 1] < gt_dn["keypoints"][0, 8, 1]  # looking up moves the iris up in the image


def test_blink_hides_the_iris(studio):
    _, gt = studio.hmc_frame(expression(blink_left=1.0), gaze())
    assert not gt["keypoints_visible"][0, 8]
    assert gt["keypoints_visible"][1, 8]


def test_session_slip_exposure_and_noise():
    a = Studio("S1", session=0)
    b = Studio("S1", session=7, ctx=a.ctx)
    e, g = NAMED_POSES["neutral"]
    va, gta = a.hmc_frame(e, g, frame_index=0)
    va2, _ = a.hmc_frame(e, g, frame_index=1)
    vb, gtb = b.hmc_frame(e, g, frame_index=0)
    assert np.abs(gta["keypoints"] - gtb["keypoints"]).max() > 1.0  # the headset slipped
    assert np.abs(va.astype(int) - va2.astype(int)).mean() > 0.5  # fresh sensor noise each frame
    assert np.abs(va.astype(int) - va2.astype(int)).mean() < 8
    assert abs(float(va.mean()) - float(vb.mean())) > 1.0  # exposure differs between sessions
    b.release()
    a.release()


def test_colour_views_and_view_dependent_texture(studio):
    e, g = NAMED_POSES["neutral"]
    img = studio.render_view(e, g, "front", with_alpha=True)
    assert img.shape == (512, 512, 4)
    cover = (img[..., 3] > 0).mean()
    assert 0.1 < cover < 0.8
    left = studio.render_view(e, g, "left")
    assert np.abs(left.astype(int) - img[..., :3].astype(int)).mean() > 5
    tf, cov = studio.render_texture(e, g, "front")
    tl, _ = studio.render_texture(e, g, "left")
    assert tf.shape == (256, 256, 3) and cov.mean() > 0.5
    # Specular highlights move with the viewpoint: same surface, different colour.
    assert np.abs(tf - tl)[cov].max() > 0.1
    # Expression-dependent appearance: raised brows wrinkle the forehead texture.
    tw, _ = studio.render_texture(expression(brow_raise_left=1, brow_raise_right=1), g, "front")
    forehead = np.zeros_like(cov)
    forehead[int(0.80 * 256) : int(0.90 * 256), 100:156] = True
    assert np.abs(tw - tf)[forehead & cov].mean() > 0.01


def test_open_mouth_shows_the_dark_interior(studio):
    e, g = NAMED_POSES["jaw_open"]
    img = studio.render_view(e, g, "front").astype(float)
    closed = studio.render_view(*NAMED_POSES["neutral"], "front").astype(float)
    cam = studio.dome_camera("front")
    pt = cam.project(studio.head.mouth_centre()[None] + np.array([[0, -0.12, 0]]))[0][0]
    x, y = int(pt[0]), int(pt[1])
    # Teeth, tongue and cavity replace the skin of the closed mouth.
    assert np.abs(img[y - 2 : y + 3, x - 2 : x + 3] - closed[y - 2 : y + 3, x - 2 : x + 3]).mean() > 30


def test_performance_is_deterministic_with_segment_split():
    cfg = PerformanceConfig(fps=60)
    a = generate_performance(3, 120, cfg)
    b = generate_performance(3, 120, cfg)
    assert np.array_equal(a.expression, b.expression) and np.array_equal(a.gaze, b.gaze)
    assert len(a) == 7200 and a.expression.shape == (7200, NUM_EXPRESSIONS)
    for s in np.unique(a.segment):
        assert len(np.unique(a.test[a.segment == s])) == 1
    assert 0.05 < a.test.mean() < 0.5
    assert a.extreme.any()
    assert (a.expression[:, 8] > 0.99).any()  # blinks happen
    # Saccades: gaze jumps fast between fixations.
    speed = np.abs(np.diff(a.gaze[:, 0, 0])) * cfg.fps
    assert speed.max() > 3.0
    assert 0 <= a.expression.min() and a.expression.max() <= 1
    with pytest.raises(ValueError):
        generate_performance(0, -1)


def test_performances_cover_asymmetric_and_fast_extreme_expressions():
    from capture.expression import INDEX as X

    base = generate_performance(5, 90, PerformanceConfig(fps=30))
    assert not base.asymmetric.any() and "asymmetric" not in set(base.segment_kind)
    cfg = PerformanceConfig(fps=30, asymmetric_probability=0.4, extreme_probability=0.35, fast_extreme_fraction=1.0)
    p = generate_performance(5, 90, cfg)
    assert np.array_equal(p.segment_kind == "asymmetric", p.asymmetric) and 0.1 < p.asymmetric.mean() < 0.6
    assert not (p.asymmetric & p.extreme).any()
    # Asymmetric: one side of the face does what the other does not (beyond blinks, which come from events).
    pairs = [("smile_left", "smile_right"), ("brow_raise_left", "brow_raise_right"), ("squint_left", "squint_right")]
    lr = lambda perf, sel: np.max([np.abs(perf.expression[sel, X[a]] - perf.expression[sel, X[b]]) for a, b in pairs], 0)  # noqa: E731
    assert np.median(lr(p, p.asymmetric)) > 0.4 > np.median(lr(base, np.ones(len(base), bool)))
    # Fast extremes: the expression moves several times faster in extreme segments than in the slow ones.
    def speed(perf, sel):
        d = np.abs(np.diff(perf.expression[:, [X["jaw_open"], X["smile_left"], X["brow_furrow"], X["lip_pucker"]]], axis=0))
        return np.percentile(d.max(1)[sel[1:] & sel[:-1]] * perf.fps, 99)
    assert speed(p, p.extreme) > 2 * speed(base, base.extreme)
    # Switched off (the default), a seed gives the performance it gave before these kinds existed, so recordings
    # and models made from it stay reproducible (sums recorded with the earlier generator).
    assert float(base.expression.sum()) == pytest.approx(2135.455078125, rel=1e-6)
    assert float(base.gaze.sum()) == pytest.approx(-179.27456665039062, rel=1e-6)


def test_check_identity_accepts_only_the_studio_identities():
    from avcore.errors import UsageError
    from capture.identity import check_identity

    for name in IDENTITIES:
        assert check_identity(name) == name
    for bad in ("S9", "S0", "s1", "bob", ""):
        with pytest.raises(UsageError, match="S1, S2, S3, S4, S5, S6"):
            check_identity(bad)


def test_output_checks_create_parents_and_leave_nothing_behind(tmp_path):
    from capture.paths import IMAGE_SUFFIXES, OutputPathError, check_output_dir, check_output_file

    target = tmp_path / "a" / "b" / "rec.hmc"
    assert check_output_file(target) == target
    assert target.parent.is_dir() and list(target.parent.iterdir()) == []  # the probe is gone
    existing = tmp_path / "keep.hmc"
    existing.write_bytes(b"data")
    check_output_file(existing, append=True)
    check_output_file(existing)
    assert existing.read_bytes() == b"data"  # checked, not truncated
    with pytest.raises(OutputPathError, match="extension"):
        check_output_file(tmp_path / "sheet.txt", suffixes=IMAGE_SUFFIXES)
    with pytest.raises(OutputPathError, match="not a directory"):
        check_output_file(existing / "x.hmc")
    with pytest.raises(OutputPathError, match="directory"):
        check_output_file(tmp_path)
    with pytest.raises(OutputPathError, match="/sys/avcall-probe.hmc"):
        check_output_file("/sys/avcall-probe.hmc")
    d = check_output_dir(tmp_path / "out" / "pngs")
    assert d.is_dir() and list(d.iterdir()) == []
    with pytest.raises(OutputPathError, match="not a directory"):
        check_output_dir(existing)
