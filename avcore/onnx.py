"""The one place onnxruntime sessions are made (the runtime, evaluations and export checks all use it).

Imports onnxruntime lazily and never torch, so the sender and receiver can use it.
"""
from __future__ import annotations

from pathlib import Path


def inference_session(path: str | Path, threads: int = 1, *, optimize: bool = True):
    """An onnxruntime CPU session for the model at ``path``.

    ``threads`` is the intra-op thread count (1 = the near-sensor setting); inter-op is 1.
    A missing file is a :class:`FileNotFoundError` naming it.
    """
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model {path} missing")
    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, int(threads))
    so.inter_op_num_threads = 1
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    so.log_severity_level = 3  # warnings about unused initializers are not the user's business
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
