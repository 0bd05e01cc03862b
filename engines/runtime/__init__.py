"""Inference backends for the exported viseme network, behind one interface.

``load_backend("auto", path)`` picks TensorRT, then CUDA (onnxruntime-gpu), then the
onnxruntime CPU backend, logging why each faster one was skipped.
"""

from __future__ import annotations

import logging
from pathlib import Path

from engines.runtime.base import BackendUnavailable, InferenceBackend

log = logging.getLogger(__name__)

ENGINES = ("auto", "tensorrt", "cuda", "onnxruntime")


def load_backend(engine: str = "auto", model_path: str | Path = "") -> InferenceBackend:
    """Load ``model_path`` (an .onnx file) on ``engine``: auto | tensorrt | cuda | onnxruntime."""
    if engine not in ENGINES:
        raise ValueError(f"unknown inference engine {engine!r}; choose one of {ENGINES}")
    path = Path(model_path)
    if not path.is_file():
        raise FileNotFoundError(f"viseme model not found: {path}")
    if engine == "tensorrt":
        from engines.runtime.tensorrt import TensorRTBackend

        return TensorRTBackend(path)
    if engine == "cuda":
        from engines.runtime.cuda import CudaBackend

        return CudaBackend(path)
    if engine == "onnxruntime":
        from engines.runtime.onnx_cpu import OnnxCpuBackend

        return OnnxCpuBackend(path)
    reasons = []
    try:
        from engines.runtime.tensorrt import TensorRTBackend

        return TensorRTBackend(path)
    except BackendUnavailable as e:
        reasons.append(f"tensorrt: {e}")
    except Exception as e:  # installed but failing (parser/build/CUDA error): still serve on CPU
        log.exception("TensorRT backend failed; falling back")
        reasons.append(f"tensorrt failed: {e}")
    try:
        from engines.runtime.cuda import CudaBackend

        return CudaBackend(path)
    except BackendUnavailable as e:
        reasons.append(f"cuda: {e}")
    except Exception as e:
        log.exception("CUDA backend failed; falling back")
        reasons.append(f"cuda failed: {e}")
    from engines.runtime.onnx_cpu import OnnxCpuBackend

    log.warning("viseme model on onnxruntime CPU; faster backends unavailable: %s", "; ".join(reasons))
    return OnnxCpuBackend(path)


__all__ = ["ENGINES", "BackendUnavailable", "InferenceBackend", "load_backend"]
