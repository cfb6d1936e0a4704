"""Side-by-side videos: what a party saw (the far end's rendered avatar) next to the far end's HMC input.

The receiver's video records which frame (sequence number) each video frame
shows; the far-end sender tapped every HMC frame it sent into an .hmc
recording indexed by the same sequence number. Composing after the call puts
the exact input that produced each rendered frame beside it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def compose_call_video(rendered_video: str | Path, frame_seqs: list[int], hmc_tap: str | Path, out_path: str | Path,
                       *, fps: float, title: str = "", input_title: str = "") -> int:
    """Write ``out_path``: rendered frame on the left, the three HMC views (stacked) on the right.

    Written with the receiver's :class:`runtime.presenters.VideoWriter` (H.264 mp4 when PyAV is there).
    Returns the number of frames written (0: nothing read, no file).
    """
    import cv2

    from capture.recording import HmcReader

    from .presenters import VideoWriter

    cap = cv2.VideoCapture(str(rendered_video))
    if not cap.isOpened():
        raise FileNotFoundError(f"cannot read {rendered_video}")
    reader = HmcReader(hmc_tap) if Path(hmc_tap).is_file() else None
    writer = None
    written = 0
    try:
        for seq in frame_seqs:
            ok, frame = cap.read()
            if not ok:
                break
            S = frame.shape[0]
            side = S // 3
            strip = np.zeros((3 * side, side, 3), np.uint8)
            if reader is not None and 0 <= seq < len(reader) and reader.has_record(seq):
                views = reader[seq].views
                for k in range(min(3, len(views))):
                    v = cv2.resize(views[k], (side, side), interpolation=cv2.INTER_AREA)
                    strip[k * side:(k + 1) * side] = v[:, :, None]
            strip = np.pad(strip, ((0, S - 3 * side), (0, 0), (0, 0)))
            canvas = np.concatenate([frame, strip], axis=1)
            if title:
                cv2.putText(canvas, title, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
            label = f"{input_title} #{seq}" if seq >= 0 else input_title
            cv2.putText(canvas, label, (S + 4, S - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
            if writer is None:
                writer = VideoWriter(out_path, fps, pixel_format="bgr24")
            writer.write(canvas)
            written += 1
    finally:
        cap.release()
        if writer is not None:
            writer.close()
        if reader is not None:
            reader.close()
    return written
