"""Encoder evaluation: code/gaze/keypoint errors, and the Auto-CARD rendered-avatar MSE.

Rendered MSE (Auto-CARD Table 1): for each test frame, the avatar is decoded from the
predicted code (and predicted gaze for the explicit eyes) and from the ground-truth
code (the VAE mean of the true frame, with the true gaze), rasterised from the
front, left and right dome views at ``size``² and compared: mean squared error over
all pixels and channels, on the 0..255 scale, and over the face pixels only (the
ground-truth render's foreground, :func:`avcore.metrics.face_and_frame_mse`: most of a
frame is black background). Subsets: the extreme-expression frames, and the *hard*
frames (asymmetric or extreme). Predicted codes come from the exported ONNX models
through :class:`encoder.runtime.HmcEncoder`, i.e. what the sender runs.
"""
from __future__ import annotations

import numpy as np

from capture.rig import HMC_VIEWS as VIEW_NAMES

EVAL_VIEWS: tuple[str, ...] = ("front", "left", "right")


def code_errors(model, data: dict, z_std: np.ndarray, batch: int = 32) -> dict:
    """Torch model on (unaugmented) test frames -> latent MSE (standardised), gaze MAE (deg),
    keypoint MAE (px, visible only), overall and on the extreme subset."""
    import torch

    zs, gs, ks = [], [], []
    with torch.no_grad():
        for a in range(0, len(data["views"]), batch):
            o = model(torch.from_numpy(data["views"][a : a + batch]))
            zs.append(o["z"].numpy())
            gs.append(o["gaze"].numpy())
            ks.append(o["keypoints"].numpy())
    z, g, k = np.concatenate(zs), np.concatenate(gs), np.concatenate(ks)
    lat = (((z - data["z_gt"]) / z_std) ** 2).mean(1)
    gz = np.degrees(np.abs(g - data["gaze"])).reshape(len(g), -1).mean(1)
    vis = data["keypoints_visible"][..., None]
    kp = (np.abs(k - data["keypoints"]) * vis).reshape(len(k), -1).sum(1) / np.maximum(2 * vis.reshape(len(k), -1).sum(1), 1)
    ex = data["extreme"]
    r = {"frames": int(len(z)), "latent_mse": float(lat.mean()), "gaze_mae_deg": float(gz.mean()), "keypoint_mae_px": float(kp.mean())}
    if ex.any():
        r |= {"latent_mse_extreme": float(lat[ex].mean()), "gaze_mae_deg_extreme": float(gz[ex].mean())}
    return r


def predict_codes(model_dir, views: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The exported encoder in onnxruntime on frames (N, 3, S, S) uint8 -> z (N, Z), gaze (N, 2, 2)."""
    from .runtime import HmcEncoder

    enc = HmcEncoder(model_dir)
    zs, gs = [], []
    for v in views:
        r = enc.encode(v)
        zs.append(r.z)
        gs.append(r.gaze)
    return np.stack(zs), np.stack(gs)


class AvatarRenders:
    """Decode codes with the frozen VAE decoder and rasterise them from a dome view (torch + GL).

    ``images(z (B, Z), gaze (B, 2, 2), view)`` -> (B, size, size, 3) float32 on 0..255. ``close()`` frees GL."""

    def __init__(self, identity: str, vae, size: int = 256):
        from capture.look import CODE_LOOK
        from capture.studio import Studio
        from decoder.data import make_rasterizer

        self.vae = vae
        self.studio = Studio(identity, dome_size=64, look=CODE_LOOK)  # only its mesh topology is used
        self.rast = make_rasterizer(self.studio, size=size, texture_size=vae.cfg.texture_size)

    def images(self, z: np.ndarray, gaze: np.ndarray, view: str) -> np.ndarray:
        import torch

        from capture.rig import view_direction

        d = view_direction(view).astype(np.float32)
        with torch.no_grad():
            zt = torch.from_numpy(np.asarray(z, np.float32))
            verts, tex = self.vae.decoder(zt, torch.from_numpy(d).expand(len(zt), 3))
        return np.stack([self.rast.render(verts[i].numpy(), tex[i].clamp(0, 1).numpy(), gaze[i], d).astype(np.float32)
                         for i in range(len(zt))])

    def close(self) -> None:
        self.rast.release()
        self.studio.release()


def rendered_mse(identity: str, vae, z_pred: np.ndarray, gaze_pred: np.ndarray, z_gt: np.ndarray, gaze_gt: np.ndarray,
                 *, size: int = 256, views: tuple[str, ...] = EVAL_VIEWS, batch: int = 16,
                 progress: bool = False) -> dict[str, dict[str, np.ndarray]]:
    """Per-frame MSE (0..255 scale) between avatars from predicted and ground-truth codes, per view, over the
    whole frame and over the face pixels: ``{"whole": {view: (N,)}, "face": {view: (N,)}}``."""
    from avcore.metrics import face_and_frame_mse
    from avcore.progress import progress as progress_bar

    r = AvatarRenders(identity, vae, size)
    out = {part: {v: np.zeros(len(z_pred)) for v in views} for part in ("whole", "face")}
    try:
        for a in progress_bar(range(0, len(z_pred), batch), desc=f"render {identity}", unit="batch", disable=not progress):
            s = slice(a, a + batch)
            for v in views:
                ip = r.images(z_pred[s], gaze_pred[s], v)
                ig = r.images(z_gt[s], gaze_gt[s], v)
                for k in range(len(ip)):
                    out["face"][v][a + k], out["whole"][v][a + k] = face_and_frame_mse(ip[k], ig[k])
    finally:
        r.close()
    return out


def hard_frames(test: dict) -> np.ndarray:
    """(N,) bool: the asymmetric or extreme frames of a test set (caches without ``asymmetric`` have none)."""
    asym = test.get("asymmetric")
    return np.asarray(test["extreme"], bool) | (np.zeros(len(test["extreme"]), bool) if asym is None else np.asarray(asym, bool))


def summarise_mse(per: dict[str, dict[str, np.ndarray]], extreme: np.ndarray, hard: np.ndarray) -> dict:
    """Means of :func:`rendered_mse`'s per-frame errors: per view, over the three views, on the extreme and the
    hard (asymmetric or extreme) subsets, whole frame and face pixels."""
    whole = np.mean([per["whole"][v] for v in EVAL_VIEWS], 0)
    face = np.mean([per["face"][v] for v in EVAL_VIEWS], 0)
    sub = lambda x, m: float(x[m].mean()) if m.any() else None  # noqa: E731
    return {
        "mse": {v: float(per["whole"][v].mean()) for v in EVAL_VIEWS},
        "mse_mean": float(whole.mean()),
        "mse_extreme": sub(whole, extreme),
        "mse_asym_extreme": sub(whole, hard),
        "mse_face": {v: float(per["face"][v].mean()) for v in EVAL_VIEWS},
        "mse_face_mean": float(face.mean()),
        "mse_face_extreme": sub(face, extreme),
        "mse_face_asym_extreme": sub(face, hard),
    }


def evaluate_model_dir(model_dir, identity: str, test: dict, vae, *, size: int = 256, max_frames: int | None = None,
                       progress: bool = False, attribute: bool = False) -> dict:
    """Rendered MSE per view and on the extreme subset for one exported encoder on one identity's test set.

    ``attribute``: also render with only the predicted code (true gaze) and with only the predicted gaze
    (true code), so the error can be split between the two (``attribution``; three times the renders)."""
    from avcore.errors import UsageError

    from .codec import attach_codes

    if max_frames is not None and max_frames < 1:
        raise UsageError(f"frames must be >= 1 (got {max_frames})")
    if len(test["views"]) == 0:
        raise UsageError("the test set has no frames")
    attach_codes(test, vae)
    n = len(test["views"]) if max_frames is None else min(max_frames, len(test["views"]))
    sel = np.linspace(0, len(test["views"]) - 1, n).astype(int) if n < len(test["views"]) else np.arange(n)
    z_pred, g_pred = predict_codes(model_dir, test["views"][sel])
    per = rendered_mse(identity, vae, z_pred, g_pred, test["z_gt"][sel], test["gaze"][sel], size=size, progress=progress)
    ex, hard = np.asarray(test["extreme"], bool)[sel], hard_frames(test)[sel]
    gz = np.degrees(np.abs(g_pred - test["gaze"][sel])).reshape(n, -1).mean(1)
    r = {"frames": int(n), "extreme_frames": int(ex.sum()), "asym_extreme_frames": int(hard.sum()),
         **summarise_mse(per, ex, hard),
         "gaze_mae_deg": float(gz.mean()),
         "gaze_mae_deg_extreme": float(gz[ex].mean()) if ex.any() else None}
    if attribute:
        allv = np.mean([per["whole"][v] for v in EVAL_VIEWS], 0)
        z_gt, g_gt = test["z_gt"][sel], test["gaze"][sel]
        r["attribution"] = {}
        for name, (z, g) in {"code_only": (z_pred, g_gt), "gaze_only": (z_gt, g_pred)}.items():
            part = rendered_mse(identity, vae, z, g, z_gt, g_gt, size=size, progress=progress)
            m = np.mean([part["whole"][v] for v in EVAL_VIEWS], 0)
            r["attribution"][name] = {**summarise_mse(part, ex, hard),
                                      "mse_not_extreme": float(m[~ex].mean()) if (~ex).any() else None}
        r["mse_not_extreme"] = float(allv[~ex].mean()) if (~ex).any() else None
    return r


def _fingerprint(model_dir, vae, identity: str, test: dict, size: int, max_frames: int | None) -> str:
    """Hash of everything an evaluation depends on: the ONNX models, the decoder weights, the test frames, settings."""
    import hashlib
    from pathlib import Path

    h = hashlib.sha1()
    for name in (*VIEW_NAMES, "fusion"):
        h.update((Path(model_dir) / f"{name}.onnx").read_bytes())
    for t in vae.state_dict().values():
        h.update(t.detach().float().numpy().tobytes()[:4096])
        h.update(repr(float(t.float().sum())).encode())
    h.update(test["views"][:: max(1, len(test["views"]) // 16)].tobytes())
    h.update(f"{identity}|{len(test['views'])}|{size}|{max_frames}".encode())
    return h.hexdigest()


def cached_evaluation(model_dir, identity: str, test: dict, vae, *, size: int = 256, max_frames: int | None = None,
                      progress: bool = False, tag: str = "") -> dict:
    """:func:`evaluate_model_dir`, remembered in ``model_dir/eval_IDENTITY[_TAG].json`` under a fingerprint of the
    models, decoder, test data and settings, so re-running a table re-uses unchanged results (``tag``: one file
    per kind of test data)."""
    import json
    from pathlib import Path

    from .codec import attach_codes

    attach_codes(test, vae)
    path = Path(model_dir) / f"eval_{identity}{'_' + tag if tag else ''}.json"
    fp = _fingerprint(model_dir, vae, identity, test, size, max_frames)
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("fingerprint") == fp:
            return old["result"]
    r = evaluate_model_dir(model_dir, identity, test, vae, size=size, max_frames=max_frames, progress=progress)
    path.write_text(json.dumps({"fingerprint": fp, "result": r}, indent=2))
    return r
