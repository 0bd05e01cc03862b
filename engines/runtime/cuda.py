"""CUDA backend: onnxruntime-gpu's CUDAExecutionProvider (used where TensorRT is absent)."""

from __future__ import annotations

import logging
from pathlib import Path

from engines.runtime.base import BackendUnavailable
from engines.runtime.onnx_cpu import OrtSessionBackend

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install onnxruntime-gpu (replacing onnxruntime) on a machine with an NVIDIA GPU and CUDA 12"


class CudaBackend(OrtSessionBackend):
    """:class:`engines.runtime.base.InferenceBackend` on onnxruntime's CUDAExecutionProvider."""

    name = "cuda"

    def __init__(self, model_path: str | Path, device_id: int = 0) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:  # pragma: no cover - onnxruntime is a base dependency
            raise BackendUnavailable(f"onnxruntime is not importable ({e}); {INSTALL_HINT}") from e
        available = ort.get_available_providers()
        if "CUDAExecutionProvider" not in available:
            raise BackendUnavailable(
                f"onnxruntime has no CUDAExecutionProvider (available: {available}); {INSTALL_HINT}"
            )
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise FileNotFoundError(f"viseme model not found: {self.model_path}")
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._sess = ort.InferenceSession(
                str(self.model_path), so,
                providers=[("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"],
            )
        except Exception as e:  # onnxruntime raises its own Fail/RuntimeException types
            raise BackendUnavailable(f"CUDAExecutionProvider failed to start: {e}") from e
        if self._sess.get_providers()[0] != "CUDAExecutionProvider":
            raise BackendUnavailable(
                f"CUDAExecutionProvider did not initialise (session providers {self._sess.get_providers()}): "
                "is the CUDA/cuDNN runtime on the library path and a GPU visible?"
            )
        self._read_contract()
