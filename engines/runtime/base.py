"""The inference-backend interface shared by the CPU, CUDA and TensorRT runtimes."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from engines.spec import N_MELS, N_VISEMES


class BackendUnavailable(RuntimeError):
    """This backend cannot run here (package, GPU or provider missing); the message says why."""


@runtime_checkable
class InferenceBackend(Protocol):
    """One loaded viseme network; stateless itself, the caller threads the stream state.

    ``run(features (B, T, N_MELS) float32, state (B, S) float32)`` ->
    ``(probs (B, T, N_VISEMES) float32, state (B, S) float32)``. Row ``t`` of ``probs`` is the
    prediction for input hop ``t - lookahead_hops`` of that stream.
    """

    @property
    def name(self) -> str:
        """Short backend name for logs: ``onnxruntime``, ``cuda``, ``tensorrt``."""
        ...

    @property
    def state_size(self) -> int:
        """Floats of streaming state per stream (S)."""
        ...

    @property
    def lookahead_hops(self) -> int:
        """Hops of 10 ms between an input hop and its output row."""
        ...

    def run(
        self, features: NDArray[np.float32], state: NDArray[np.float32]
    ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """One batched step over T hops of B streams; see the class docstring."""
        ...


def check_io(features: NDArray[np.float32], state: NDArray[np.float32], state_size: int) -> tuple[
    NDArray[np.float32], NDArray[np.float32]
]:
    """Validate and make contiguous float32 ``(B, T, N_MELS)`` features and ``(B, S)`` state."""
    f = np.ascontiguousarray(features, dtype=np.float32)
    s = np.ascontiguousarray(state, dtype=np.float32)
    if f.ndim != 3 or f.shape[2] != N_MELS:
        raise ValueError(f"features must be (batch, time, {N_MELS}) float32, got shape {f.shape}")
    if s.ndim != 2 or s.shape[1] != state_size:
        raise ValueError(f"state must be (batch, {state_size}) float32, got shape {s.shape}")
    if f.shape[0] != s.shape[0]:
        raise ValueError(f"batch mismatch: features {f.shape[0]} vs state {s.shape[0]}")
    if f.shape[0] == 0:
        raise ValueError("batch must be >= 1, got 0")
    return f, s


def empty_probs(batch: int) -> NDArray[np.float32]:
    """(batch, 0, N_VISEMES): the answer to a call with zero hops."""
    return np.zeros((batch, 0, N_VISEMES), np.float32)
