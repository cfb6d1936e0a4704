"""ONNX export that checks itself: the pieces every model package's ``export_onnx`` shares.

- :func:`export_onnx_model`: ``torch.onnx.export`` (TorchScript exporter, fixed opset, dynamic batch axis),
  optional float16 storage of large weights, then ``onnx.checker.check_model(full_check=True)``.
- :func:`check_parity`: run the file in onnxruntime (through :func:`avcore.onnx.inference_session`) and
  compare every output with torch's within a stated tolerance; a shape mismatch or a larger error raises.
- :func:`round_to_float16` and :func:`compress_initializers`: float16 compaction (weights rounded in torch,
  then stored as float16 initialisers cast back to float32 inside the graph, so the file is half the size
  and holds exactly the rounded torch weights).

Torch and onnx are imported inside the functions; only export and training code imports this module.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

ONNX_OPSET = 17
"""Opset of every exported model (onnxruntime >= 1.14 runs it)."""
FLOAT16_MIN_SIZE = 1024
"""Initialisers with at least this many elements are stored as float16 by :func:`compress_initializers`."""


def round_to_float16(module) -> None:
    """Round every floating parameter and buffer of a torch module to float16 precision in place (kept float32)."""
    import torch

    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            if t.is_floating_point():
                t.copy_(t.half().float())


def compress_initializers(model, min_size: int = FLOAT16_MIN_SIZE):
    """Store an ONNX model's float32 initialisers of ``min_size``+ elements as float16 + a Cast node (halves the file).

    Returns ``model`` (changed in place)."""
    import onnx
    from onnx import helper, numpy_helper

    g = model.graph
    new_inits, casts = [], []
    for init in g.initializer:
        arr = numpy_helper.to_array(init)
        if arr.dtype == np.float32 and arr.size >= min_size:
            half = numpy_helper.from_array(arr.astype(np.float16), init.name + "_f16")
            new_inits.append(half)
            casts.append(helper.make_node("Cast", [half.name], [init.name], to=onnx.TensorProto.FLOAT))
        else:
            new_inits.append(init)
    del g.initializer[:]
    g.initializer.extend(new_inits)
    nodes = list(g.node)
    del g.node[:]
    g.node.extend(casts + nodes)
    return model


def export_onnx_model(module, args: tuple, path: str | Path, input_names: Sequence[str], output_names: Sequence[str], *,
                      opset: int = ONNX_OPSET, float16_weights: bool = False) -> Path:
    """Export ``module(*args)`` to ``path`` with a dynamic batch axis (axis 0 of every input and output).

    ``float16_weights`` stores the large initialisers as float16 (see :func:`compress_initializers`; use it
    on a module already passed through :func:`round_to_float16`). The written model passes
    ``onnx.checker.check_model(full_check=True)`` or this raises. Exporter warnings (tracer notes) are hidden.
    """
    import onnx
    import torch

    path = Path(path)
    tmp = path.with_name(path.stem + ".tmp.onnx")
    names = (*input_names, *output_names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(tmp), dynamo=False, opset_version=opset, input_names=list(input_names),
                          output_names=list(output_names), dynamic_axes={n: {0: "batch"} for n in names},
                          do_constant_folding=True)
    try:
        model = onnx.load(str(tmp))
        if float16_weights:
            model = compress_initializers(model)
        onnx.checker.check_model(model, full_check=True)
        onnx.save(model, str(path))
    finally:
        tmp.unlink(missing_ok=True)
    return path


def check_parity(path: str | Path, feeds: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray],
                 atol: float | Mapping[str, float], *, relative: bool = False, threads: int = 1) -> dict[str, float]:
    """Run ``path`` in onnxruntime on ``feeds`` and compare each output with ``expected`` (torch's, by name).

    The error of an output is ``max |ort - torch|``, or with ``relative`` ``max |ort - torch| / max(1, |torch|)``
    (for outputs in pixels or other large units). ``atol`` is one tolerance or one per output name.
    Returns {output name: error}; raises RuntimeError naming the file, the output and the tolerance when a shape
    differs or an error exceeds its tolerance (NaN counts as exceeding).
    """
    from .onnx import inference_session

    path = Path(path)
    names = list(expected)
    got = inference_session(path, threads).run(names, dict(feeds))
    errors: dict[str, float] = {}
    for n, g in zip(names, got):
        e = np.asarray(expected[n])
        if g.shape != e.shape:
            raise RuntimeError(f"{path.name}:{n}: onnxruntime shape {g.shape} != torch {e.shape}")
        diff = np.abs(g.astype(np.float64) - e)
        if relative:
            diff = diff / np.maximum(1.0, np.abs(e))
        err = float(diff.max()) if diff.size else 0.0
        tol = atol[n] if isinstance(atol, Mapping) else atol
        if not err <= tol:
            raise RuntimeError(f"{path.name}:{n}: onnxruntime differs from torch by {err:.3g} (tolerance {tol:g}"
                               f"{', relative to max(1, |torch|)' if relative else ''})")
        errors[n] = err
    return errors
