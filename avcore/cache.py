"""Keyed ``.npz`` caches: arrays saved with the key of what made them, reused only while the key matches."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def load_keyed_npz(path: str | Path | None, key: str) -> dict[str, np.ndarray] | None:
    """The arrays cached in ``path`` if it exists and was saved with ``key``, else None."""
    if path is None or not Path(path).is_file():
        return None
    with np.load(path) as z:
        if "key" in z.files and str(z["key"]) == key:
            return {k: z[k] for k in z.files if k != "key"}
    return None


def save_keyed_npz(path: str | Path, key: str, arrays: dict[str, np.ndarray]) -> None:
    """Save ``arrays`` with ``key`` to ``path`` atomically (written beside it, then renamed over it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, key=np.array(key), **arrays)
    tmp.replace(path)
