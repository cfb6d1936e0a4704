"""Saving an encoder: architecture data + state_dict + one ONNX model per view and the fusion head.

Model directory layout::

    DIR/arch.json         EncoderArch.to_dict()
    DIR/encoder.pt        state_dict of HmcEncoderNet (tensors only; float16 in a compact model)
    DIR/left_eye.onnx     image (B,1,S,S) uint8 -> feature (B,F), gaze (B,2), keypoints (B,K,2)
    DIR/right_eye.onnx    same
    DIR/mouth.onnx        image -> feature [, keypoints]
    DIR/fusion.onnx       features (B,3F) float32 -> z (B,Z)
    DIR/meta.json         identity, FLOPs, ONNX parity errors, training summary

Every ONNX file is checked with ``onnx.checker`` (full check) and its
onnxruntime outputs are compared with torch before the export counts as done.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from avcore import export as _avexport

from .arch import VIEW_NAMES, EncoderArch

ONNX_OPSET = _avexport.ONNX_OPSET
PARITY_ATOL = 1e-3
"""Max |onnxruntime - torch| allowed, relative to max(1, |torch|) (keypoints are in pixels)."""
COMPACT_PARITY_ATOL = 1e-2
"""Same, for compact models whose ONNX weights are stored as float16 (conv+BN fused before rounding)."""


def view_output_names(arch: EncoderArch, view: str) -> list[str]:
    v = arch.views[view]
    return ["feature"] + (["gaze"] if v.gaze else []) + (["keypoints"] if v.keypoints else [])


class _ViewExport:
    """Wraps a ViewEncoder so it returns a tuple in :func:`view_output_names` order."""

    def __new__(cls, module, names):
        import torch

        class W(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.m = module

            def forward(self, image):
                o = self.m(image)
                return tuple(o[n] for n in names)

        return W()


def _export(module, args, path: Path, input_names, output_names, *, float16_weights: bool = False) -> None:
    """:func:`avcore.export.export_onnx_model` at :data:`ONNX_OPSET` ."""
    _avexport.export_onnx_model(module, args, path, input_names, output_names, opset=ONNX_OPSET,
                                float16_weights=float16_weights)


def _check_parity(path: Path, feeds: dict, expected: list[np.ndarray], names: list[str], atol: float = PARITY_ATOL) -> float:
    """Max relative error of onnxruntime vs torch over ``names`` (:func:`avcore.export.check_parity`); raises beyond ``atol``."""
    errors = _avexport.check_parity(path, feeds, dict(zip(names, expected)), atol, relative=True, threads=1)
    return max(errors.values(), default=0.0)


def export_onnx(model, out_dir: str | Path, *, batch: int = 2, seed: int = 0, compact: bool = False) -> dict[str, float]:
    """Export the three view encoders and the fusion head of ``model`` (an HmcEncoderNet) to
    ``out_dir`` and verify each against torch. Returns {model name: max relative error}.

    ``compact`` stores large ONNX weights as float16 (half the files) and checks parity at
    :data:`COMPACT_PARITY_ATOL`."""
    import torch

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    arch: EncoderArch = model.arch
    was_training = model.training
    model.eval()
    S = arch.input_size
    atol = COMPACT_PARITY_ATOL if compact else PARITY_ATOL
    g = torch.Generator().manual_seed(seed)
    errors = {}
    with torch.no_grad():
        for v in VIEW_NAMES:
            names = view_output_names(arch, v)
            w = _ViewExport(model.views[v], names).eval()
            x = torch.randint(0, 256, (batch, 1, S, S), dtype=torch.uint8, generator=g)
            path = out_dir / f"{v}.onnx"
            _export(w, (x,), path, ["image"], names, float16_weights=compact)
            expected = [t.numpy() for t in w(x)]
            errors[v] = _check_parity(path, {"image": x.numpy()}, expected, names, atol)
        f = torch.randn(batch, 3 * arch.feature_dim, generator=g)
        path = out_dir / "fusion.onnx"
        _export(model.fusion, (f,), path, ["features"], ["z"], float16_weights=compact)
        errors["fusion"] = _check_parity(path, {"features": f.numpy()}, [model.fusion(f).numpy()], ["z"], atol)
    model.train(was_training)
    return errors


def save_model(model, out_dir: str | Path, *, identity: str = "", train_info: dict | None = None, onnx: bool = True,
               compact: bool = False) -> dict:
    """Write the model directory (see the module docstring). Returns meta.

    ``compact`` (the embedded default): weights rounded to float16 first, ``encoder.pt`` stored as
    float16 and the ONNX weights as float16, which roughly halves the directory."""
    import torch

    from .flops import analytic_flops

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "arch.json").write_text(model.arch.to_json())
    sd = model.state_dict()
    if compact:
        _avexport.round_to_float16(model)
        sd = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    torch.save(sd, out_dir / "encoder.pt")
    meta = {
        "arch": model.arch.name,
        "identity": identity,
        "flops": analytic_flops(model.arch),
        "train": train_info or {},
        "compact": compact,
    }
    if onnx:
        meta["onnx_parity_max_rel_err"] = export_onnx(model, out_dir, compact=compact)
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta


def load_model(model_dir: str | Path):
    """(HmcEncoderNet with weights, meta dict) from a model directory."""
    import torch

    from .model import build_encoder

    model_dir = Path(model_dir)
    arch = EncoderArch.from_json((model_dir / "arch.json").read_text())
    model = build_encoder(arch)
    sd = torch.load(model_dir / "encoder.pt", map_location="cpu", weights_only=True)
    model.load_state_dict({k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()})
    model.eval()
    meta_path = model_dir / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    return model, meta
