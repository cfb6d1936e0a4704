"""Contact sheet: every identity in a few poses, three HMC views above front/left/right colour views."""
from __future__ import annotations

import cv2
import numpy as np

from .expression import NAMED_POSES
from .identity import IDENTITIES
from .rig import DOME_VIEWS
from .studio import Studio, create_context

SHEET_POSES = ("neutral", "smile", "jaw_open", "wink_wide", "gaze_up_right", "pucker_furrow")


def _label(img, text, org, scale=0.45):
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)


def contact_sheet(identities=IDENTITIES, poses=SHEET_POSES, tile: int = 112, session: int = 0, progress=None) -> np.ndarray:
    """RGB uint8 image: one row per identity, one 3x2-tile cell per pose."""
    for p in poses:
        if p not in NAMED_POSES:
            raise ValueError(f"unknown pose {p!r}; known: {', '.join(NAMED_POSES)}")
    ctx = create_context()
    head_h = 22
    cell_w, cell_h = 3 * tile, 2 * tile
    pad = 6
    W = len(poses) * (cell_w + pad) + pad
    H = head_h + len(identities) * (cell_h + head_h + pad) + pad
    sheet = np.full((H, W, 3), 40, np.uint8)
    for c, pose in enumerate(poses):
        _label(sheet, pose, (pad + c * (cell_w + pad) + 4, 16), 0.5)
    try:
        for r, ident in enumerate(identities):
            studio = Studio(ident, session=session, ctx=ctx, dome_size=2 * tile)
            y0 = head_h + r * (cell_h + head_h + pad)
            _label(sheet, f"{ident}", (pad + 2, y0 + 16), 0.55)
            for c, pose in enumerate(poses):
                expr, gaze = NAMED_POSES[pose]
                views, _ = studio.hmc_frame(expr, gaze, ground_truth=False)
                x0 = pad + c * (cell_w + pad)
                yy = y0 + head_h
                for v in range(3):
                    t = cv2.resize(views[v], (tile, tile), interpolation=cv2.INTER_AREA)
                    sheet[yy : yy + tile, x0 + v * tile : x0 + (v + 1) * tile] = t[..., None]
                for v, name in enumerate(DOME_VIEWS):
                    img = studio.render_view(expr, gaze, name, size=tile)
                    sheet[yy + tile : yy + 2 * tile, x0 + v * tile : x0 + (v + 1) * tile] = img
                if progress is not None:
                    progress.update(1)
            studio.release()
    finally:
        ctx.release()
    return sheet
