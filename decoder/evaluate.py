"""Decoder evaluation and benchmark.

- :func:`evaluate_decoder`: held-out poses (seed disjoint from training); the training
  encoder gives each frame's code (VAE mean), onnxruntime decodes it for the front, left
  and right dome views, the rasterizer draws it and the image is compared with the
  studio's ground-truth render (MSE over the 512×512 image in [0, 1], PSNR = -10 log10 MSE,
  SSIM with a Gaussian window 11, σ 1.5; :mod:`avcore.metrics`).
  Also the latent-linearity check (Auto-CARD §4.3.1) and a side-by-side PNG.
- :func:`bench_decoder`: decode (onnxruntime, one code) and render (512², read back) percentiles.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

VIEWS = ("front", "left", "right")
LINEARITY_WINDOW = 8
"""Frames per latent-linearity window (the first and last code are interpolated)."""


def _encode(encoder, vertices: np.ndarray, front_texture: np.ndarray, tex_size: int) -> np.ndarray:
    """GT geometry (V, 3) + front texture (T, T, 3) float -> VAE mean code (Z,)."""
    import cv2
    import torch

    t = cv2.resize(np.clip(front_texture, 0, 1), (tex_size, tex_size), interpolation=cv2.INTER_AREA)
    t = np.rint(t * 255) / 255.0  # same quantisation as the training cache
    with torch.no_grad():
        mu, _ = encoder(torch.from_numpy(vertices[None]).float(), torch.from_numpy(t).permute(2, 0, 1)[None].float())
    return mu[0].numpy()


def smooth_performance(n_frames: int, seed: int, fps: float = 30.0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth synthetic performance: expressions (n, E) and gaze (n, 2, 2) from sums of slow sinusoids."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_frames) / fps
    E = 12
    f = rng.uniform(0.15, 0.8, (2, E))
    ph = rng.uniform(0, 2 * np.pi, (2, E))
    raw = 0.5 * np.sin(2 * np.pi * f[0] * t[:, None] + ph[0]) + 0.5 * np.sin(2 * np.pi * f[1] * t[:, None] + ph[1])
    active = rng.uniform(size=E) < 0.5
    expr = np.clip(raw, 0, 1) * active
    gy = 0.4 * np.sin(2 * np.pi * 0.3 * t + rng.uniform(0, 6))
    gp = 0.25 * np.sin(2 * np.pi * 0.2 * t + rng.uniform(0, 6))
    gaze = np.stack([gy, gp], 1)[:, None].repeat(2, 1)
    return expr.astype(np.float32), gaze.astype(np.float32)


def latent_linearity(codes: np.ndarray, render, targets: list, window: int = 8) -> dict:
    """Auto-CARD §4.3.1: per window of ``window`` frames, replace the inner codes by linear
    interpolation of the first and last, render, and compare the image MSE against ``targets``
    with the MSE of the true codes. ``render(z, frame_index) -> float image``."""
    m_true, m_interp = [], []
    for s in range(0, len(codes) - window + 1, window):
        z0, z1 = codes[s], codes[s + window - 1]
        for i in range(1, window - 1):
            a = i / (window - 1)
            zi = (1 - a) * z0 + a * z1
            m_true.append(float(np.mean((render(codes[s + i], s + i) - targets[s + i]) ** 2)))
            m_interp.append(float(np.mean((render(zi, s + i) - targets[s + i]) ** 2)))
    mt, mi = float(np.mean(m_true)), float(np.mean(m_interp))
    return {"linearity_window": window, "linearity_mse_true": mt, "linearity_mse_interp": mi,
            "linearity_mse_change": mi - mt, "linearity_mse_ratio": mi / max(mt, 1e-12)}


class HeldOutProbe:
    """A decoder directory on held-out poses: ``code(expr, gaze)`` (its training encoder's VAE mean of the true
    frame), ``render(z, gaze, view)`` (onnxruntime decode + rasterise, uint8) and ``truth(expr, gaze, view)``
    (the studio's render), all at the studio's dome size. ``close()`` frees GL."""

    def __init__(self, model_dir: Path, identity: str | None = None, *, threads: int = 2, size: int | None = None):
        from capture.look import CODE_LOOK
        from capture.studio import Studio

        from .export import load_torch_encoder
        from .runtime import OnnxAvatarDecoder

        self.model_dir = Path(model_dir)
        self.decoder = OnnxAvatarDecoder(self.model_dir, threads=threads)
        self.identity = identity or self.decoder.config["identity"]
        self.encoder = load_torch_encoder(self.model_dir)
        if self.encoder is None:
            raise FileNotFoundError(f"{model_dir} has no encoder.pt; evaluation needs the training encoder for GT codes")
        self.studio = Studio(self.identity)
        """The colour cameras (the truth, in the studio's default look)."""
        self.code_studio = Studio(self.identity, look=CODE_LOOK, ctx=self.studio.ctx)
        """The encoder's input texture (:data:`capture.look.CODE_LOOK`): codes mean what the HMC encoders predict."""
        self.size = size or self.studio.dome_size
        """Side of ``render`` / ``render_uv`` / ``truth`` (the studio's dome size unless given)."""
        self.rast = self.decoder.make_rasterizer(size=self.size, ctx=self.studio.ctx)
        self.tsize = int(self.decoder.config["encoder_texture_size"])

    def code(self, expr, gaze) -> np.ndarray:
        st = self.code_studio.pose(expr, gaze)
        tex, _ = self.code_studio.render_texture(expr, gaze, "front")
        return _encode(self.encoder, st.vertices, tex, self.tsize)

    def render(self, z, gaze, view) -> np.ndarray:
        """The decoded avatar rasterized from ``view`` (name or direction)."""
        return self.render_buffers(z, gaze, view)[0]

    def render_buffers(self, z, gaze, view) -> tuple[np.ndarray, np.ndarray]:
        """(raster (S, S, 3) uint8, uv (S, S, 3) float32 (u, v, face)) of the decoded avatar from ``view``."""
        from capture.rig import view_direction

        d = view_direction(view)
        v, t = self.decoder.decode(z, d)
        return self.rast.render(v, np.clip(t, 0, 1), gaze, d), self.rast.render_uv(v, gaze, d, self.size)

    def head_mask(self, expr, gaze, view) -> np.ndarray:
        """(S, S) bool at :attr:`size`: the pixels of the studio's own head mesh from ``view``, the face a decoder
        models (the studio's foreground also has hair volume, ears, neck and shoulders, which no decoder mesh has)."""
        from capture.rig import view_direction

        st = self.studio.pose(expr, gaze)
        return self.rast.render_uv(st.vertices, gaze, view_direction(view), self.size)[..., 2] > 0.5

    def truth(self, expr, gaze, view, size: int | None = None) -> np.ndarray:
        """The studio's render from ``view`` at ``size`` (default :attr:`size`)."""
        return self.studio.render_view(expr, gaze, view, size=size or self.size)

    def close(self) -> None:
        self.rast.release()
        self.code_studio.release()
        self.studio.release()


def evaluate_decoder(model_dir: Path, *, identity: str | None = None, num_test: int = 48, test_seed: int = 1_000_003,
                     linearity_frames: int = 48, sheet: Path | None = None, progress: bool = True) -> dict:
    """Held-out reconstruction metrics (see module docstring). Returns a JSON-able dict.

    ``num_test`` >= 1 held-out frames; ``linearity_frames`` 0 skips the linearity check, else >= 8 (one window).
    ``progress`` shows a bar on stderr."""
    import torch

    from avcore.errors import UsageError
    from avcore.metrics import psnr_from_mse, ssim
    from avcore.progress import progress as progress_bar
    from capture.expression import NAMED_POSES

    from .data import sample_poses

    if num_test < 1:
        raise UsageError(f"frames must be >= 1 (got {num_test})")
    if linearity_frames and linearity_frames < LINEARITY_WINDOW:
        raise UsageError(f"linearity frames must be 0 (skip) or >= {LINEARITY_WINDOW} (got {linearity_frames})")
    torch.set_num_threads(2)
    model_dir = Path(model_dir)
    probe = HeldOutProbe(model_dir, identity)
    identity, studio, code, render = probe.identity, probe.studio, probe.code, probe.render

    bar = progress_bar(total=num_test + linearity_frames, desc=f"eval decoder {identity}", unit="frame",
                       disable=not progress)
    expr, gaze = sample_poses(num_test, test_seed)
    mse = {v: [] for v in VIEWS}
    ssims = {v: [] for v in VIEWS}
    for i in range(num_test):
        z = code(expr[i], gaze[i])
        for v in VIEWS:
            gt = studio.render_view(expr[i], gaze[i], v).astype(np.float32) / 255
            pr = render(z, gaze[i], v).astype(np.float32) / 255
            mse[v].append(float(np.mean((gt - pr) ** 2)))
            ssims[v].append(ssim(gt, pr, peak=1.0))
        bar.update(1)
    out = {"identity": identity, "model_dir": str(model_dir), "num_test_frames": num_test, "test_seed": test_seed,
           "image_size": studio.dome_size}
    for v in VIEWS:
        m = float(np.mean(mse[v]))
        out[f"mse_{v}"] = m
        out[f"psnr_{v}"] = psnr_from_mse(m, peak=1.0)
        out[f"psnr_{v}_per_frame_mean"] = float(np.mean([psnr_from_mse(max(x, 1e-12), peak=1.0) for x in mse[v]]))
        out[f"ssim_{v}"] = float(np.mean(ssims[v]))
    # Latent linearity over a smooth held-out performance (front view).
    if linearity_frames:
        pe, pg = smooth_performance(linearity_frames, test_seed + 1)
        codes, targets = [], []
        for i in range(linearity_frames):
            codes.append(code(pe[i], pg[i]))
            targets.append(studio.render_view(pe[i], pg[i], "front").astype(np.float32) / 255)
            bar.update(1)
        out.update(latent_linearity(np.stack(codes), lambda z, i: render(z, pg[i], "front").astype(np.float32) / 255,
                                    targets, window=LINEARITY_WINDOW))
    bar.close()
    if sheet is not None:
        names = ["neutral", "smile", "jaw_open", "wink_wide", "pucker_furrow", "puff", "gaze_up_right"]
        rows = []
        for n in names:
            e, g = NAMED_POSES[n]
            z = code(e, g)
            row = []
            for v in ("front", "left"):
                row += [studio.render_view(e, g, v, size=256), _resize(render(z, g, v), 256)]
            rows.append(np.concatenate(row, 1))
        save_sheet(Path(sheet), np.concatenate(rows, 0), names)
        out["sheet"] = str(sheet)
    probe.close()
    return out


def _resize(img, s):
    import cv2

    return cv2.resize(img, (s, s), interpolation=cv2.INTER_AREA)


def save_sheet(path: Path, grid: np.ndarray, names: list[str]) -> None:
    """Write the side-by-side grid (rows = poses; columns GT front | decoded front | GT left | decoded left)."""
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.ascontiguousarray(grid[..., ::-1])
    h = img.shape[0] // len(names)
    for i, n in enumerate(names):
        cv2.putText(img, n, (6, i * h + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    for j, lab in enumerate(("GT front", "decoded front", "GT left", "decoded left")):
        cv2.putText(img, lab, (j * 256 + 6, h - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (200, 255, 200), 1, cv2.LINE_AA)
    cv2.imwrite(str(path), img)


def bench_decoder(model_dir: Path, *, iters: int = 100, warmup: int = 10, size: int = 512, threads: int = 2) -> dict:
    """decode_ms (onnxruntime, batch 1) and render_ms (rasterise ``size``² + read back) percentiles."""
    from .runtime import OnnxAvatarDecoder

    dec = OnnxAvatarDecoder(model_dir, threads=threads)
    rast = dec.make_rasterizer(size=size)
    rng = np.random.default_rng(0)
    z = rng.normal(size=(iters + warmup, dec.latent_dim)).astype(np.float32)
    view = np.array([0.2, 0.1, 1.0])
    gaze = np.zeros((2, 2), np.float32)
    td, tr = [], []
    for i in range(iters + warmup):
        t0 = time.perf_counter()
        v, t = dec.decode(z[i], view)
        t1 = time.perf_counter()
        rast.render(v, t, gaze, view)
        t2 = time.perf_counter()
        if i >= warmup:
            td.append((t1 - t0) * 1e3)
            tr.append((t2 - t1) * 1e3)
    tot = np.add(td, tr)
    res = {"model_dir": str(model_dir), "iters": iters, "image_size": size, "threads": threads}
    for name, arr in (("decode_ms", td), ("render_ms", tr), ("total_ms", tot)):
        for q in (50, 95, 99):
            res[f"{name}_p{q}"] = float(np.percentile(arr, q))
    rast.release()
    return res
