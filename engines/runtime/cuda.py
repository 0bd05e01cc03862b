"""CUDA backend: onnxruntime-gpu's CUDAExecutionProvider (used where TensorRT is absent)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from engines.runtime.base import BackendUnavailable, check_io, empty_probs
from engines.runtime.onnx_cpu import read_contract
from engines.spec import ONNX_INPUT_FEATURES, ONNX_INPUT_STATE, ONNX_OUTPUT_PROBS, ONNX_OUTPUT_STATE

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install onnxruntime-gpu (replacing onnxruntime) on a machine with an NVIDIA GPU and CUDA 12"


class CudaBackend:
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
        self._state_size, self._lookahead = read_contract(self._sess, self.model_path)

    @property
    def state_size(self) -> int:
        """Floats of streaming state per stream."""
        return self._state_size

    @property
    def lookahead_hops(self) -> int:
        """From the model's ``lookahead_hops`` metadata."""
        return self._lookahead

    def run(
        self, features: NDArray[np.float32], state: NDArray[np.float32]
    ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """(B, T, 40), (B, S) -> (B, T, 15) probs, (B, S) next state (host arrays)."""
        f, s = check_io(features, state, self._state_size)
        if f.shape[1] == 0:
            return empty_probs(f.shape[0]), s.copy()
        probs, state_out = self._sess.run(
            [ONNX_OUTPUT_PROBS, ONNX_OUTPUT_STATE], {ONNX_INPUT_FEATURES: f, ONNX_INPUT_STATE: s}
        )
        return probs, state_out
