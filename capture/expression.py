"""Expression parameters of the synthetic head and per-eye gaze.

An expression is a float32 vector of ``len(EXPRESSION_NAMES)`` weights, each in
[0, 1] (0 = neutral). Left/right always mean the *subject's* left/right: the
subject's left is +x in the head frame. Gaze is a (2, 2) float32 array,
rows = (left eye, right eye), columns = (yaw, pitch) in radians; +yaw turns
the eye toward +x (subject's left), +pitch looks up.
"""
from __future__ import annotations

import numpy as np

EXPRESSION_NAMES: tuple[str, ...] = (
    "jaw_open",
    "smile_left",
    "smile_right",
    "lip_pucker",
    "cheek_puff",
    "brow_raise_left",
    "brow_raise_right",
    "brow_furrow",
    "blink_left",
    "blink_right",
    "squint_left",
    "squint_right",
)
NUM_EXPRESSIONS = len(EXPRESSION_NAMES)
INDEX = {name: i for i, name in enumerate(EXPRESSION_NAMES)}

#: Gaze limits in radians (|yaw|, |pitch|) the studio generates.
MAX_GAZE_YAW = 0.55
MAX_GAZE_PITCH = 0.40


def expression(**weights: float) -> np.ndarray:
    """Build an expression vector from named weights, e.g. ``expression(jaw_open=1)``."""
    e = np.zeros(NUM_EXPRESSIONS, np.float32)
    for name, w in weights.items():
        if name not in INDEX:
            raise ValueError(f"unknown expression parameter {name!r}; known: {', '.join(EXPRESSION_NAMES)}")
        e[INDEX[name]] = w
    return e


def gaze(left: tuple[float, float] = (0.0, 0.0), right: tuple[float, float] | None = None) -> np.ndarray:
    """Per-eye gaze array (2, 2): [[yaw_l, pitch_l], [yaw_r, pitch_r]]; right defaults to left."""
    right = left if right is None else right
    return np.array([left, right], np.float32)


#: Named poses used by the contact sheet and tests: (expression, gaze).
NAMED_POSES: dict[str, tuple[np.ndarray, np.ndarray]] = {
    "neutral": (expression(), gaze()),
    "smile": (expression(smile_left=1, smile_right=1, squint_left=0.3, squint_right=0.3, cheek_puff=0.1), gaze()),
    "jaw_open": (expression(jaw_open=1.0, brow_raise_left=0.4, brow_raise_right=0.4), gaze((0.0, 0.15))),
    "blink": (expression(blink_left=1, blink_right=1), gaze()),
    "wink_wide": (expression(blink_left=1, brow_raise_right=1), gaze((0.0, 0.0), (0.0, 0.3))),
    "gaze_left": (expression(), gaze((0.5, 0.0))),
    "gaze_up_right": (expression(brow_raise_left=0.6, brow_raise_right=0.6), gaze((-0.45, 0.35))),
    "pucker_furrow": (expression(lip_pucker=1, brow_furrow=1), gaze((0.0, -0.2))),
    "puff": (expression(cheek_puff=1, squint_left=0.5), gaze((0.2, 0.0))),
}
