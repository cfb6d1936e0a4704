"""Training datasets from the studio: an HMC session recording with ground truth plus per-frame labels.

Layout of a dataset directory::

    DIR/meta.json        identity parameters, fps, seed, frame count, split sizes, files, the dome renders' look
    DIR/hmc.hmc          HMC frames (3 views) with ground truth (expression, gaze, keypoints, vertices);
                         capture timestamps are performance time (header clock "session": ns from frame 0)
    DIR/labels.npz       t, expression, gaze, segment, test, extreme for every frame
    DIR/dome/NNNNNN_<view>.png   optional colour renders (``dome_views``)
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from .identity import identity_dict
from .performance import PerformanceConfig, generate_performance
from .recording import HmcWriter
from .look import StudioLook
from .studio import Studio


def generate_dataset(
    identity: str,
    frames: int,
    out: str | Path,
    *,
    fps: float = 90.0,
    seed: int = 0,
    session: int | None = None,
    dome_views: tuple[str, ...] = (),
    dome_size: int = 256,
    progress: bool = True,
) -> dict:
    """Render ``frames`` frames of a performance of ``identity`` into ``out``. Returns meta."""
    if isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or frames <= 0:
        raise ValueError(f"frames must be a positive integer, got {frames!r}")
    if not (np.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be positive and finite, got {fps!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "hmc.hmc").exists():
        raise ValueError(f"{out} already holds a dataset ({out / 'hmc.hmc'} exists); choose an empty directory")
    perf = generate_performance(seed, frames / fps, PerformanceConfig(fps=fps))
    # The colour look only matters for the dome renders; without them the plain look skips its set-up.
    studio = Studio(identity, session=seed if session is None else session, dome_size=dome_size,
                    look=None if dome_views else StudioLook.plain())
    if dome_views:
        (out / "dome").mkdir(exist_ok=True)
    from avcore.progress import progress as progress_bar

    it = progress_bar(range(frames), desc=f"generate {identity}", unit="frame", disable=not progress)
    with HmcWriter(out / "hmc.hmc", fps=fps, size=(studio.rig_config.size,) * 2, clock="session",
                   meta={"identity": identity, "seed": seed, "source": "synthetic"}) as w:
        for i in it:
            views, gt = studio.hmc_frame(perf.expression[i], perf.gaze[i], t=float(perf.t[i]), frame_index=i)
            gt["frame"] = np.array(i, np.int64)
            gt["test"] = np.array(perf.test[i])
            gt["extreme"] = np.array(perf.extreme[i])
            w.append(views, int(perf.t[i] * 1e9), gt)
            for name in dome_views:
                img = studio.render_view(perf.expression[i], perf.gaze[i], name)
                png = out / "dome" / f"{i:06d}_{name}.png"
                if not cv2.imwrite(str(png), cv2.cvtColor(img, cv2.COLOR_RGB2BGR)):
                    raise ValueError(f"could not write {png}")
    np.savez_compressed(
        out / "labels.npz",
        t=perf.t,
        expression=perf.expression[:frames],
        gaze=perf.gaze[:frames],
        segment=perf.segment[:frames],
        test=perf.test[:frames],
        extreme=perf.extreme[:frames],
    )
    meta = {
        "identity": identity_dict(studio.head.params),
        "fps": fps,
        "seed": seed,
        "session": studio.session.seed,
        "frames": frames,
        "train_frames": int((~perf.test[:frames]).sum()),
        "test_frames": int(perf.test[:frames].sum()),
        "extreme_frames": int(perf.extreme[:frames].sum()),
        "dome_views": list(dome_views),
        "look": studio.look.to_dict() if dome_views else None,
        "files": ["hmc.hmc", "labels.npz"] + (["dome/"] if dome_views else []),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    studio.release()
    return meta
