"""ONNX Runtime CPU backend: one intra-op thread, no spinning (many sessions share cores)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from engines.runtime.base import check_io, empty_probs
from engines.spec import (
    N_MELS,
    N_VISEMES,
    ONNX_INPUT_FEATURES,
    ONNX_INPUT_STATE,
    ONNX_META_LOOKAHEAD,
    ONNX_OUTPUT_PROBS,
    ONNX_OUTPUT_STATE,
)

log = logging.getLogger(__name__)


def read_contract(sess: object, path: Path) -> tuple[int, int]:
    """Check an onnxruntime session's names/shapes against engines/spec.py -> (state_size, lookahead)."""
    ins = {i.name: i for i in sess.get_inputs()}  # type: ignore[attr-defined]
    outs = {o.name: o for o in sess.get_outputs()}  # type: ignore[attr-defined]
    if set(ins) != {ONNX_INPUT_FEATURES, ONNX_INPUT_STATE}:
        raise ValueError(f"{path}: inputs must be {ONNX_INPUT_FEATURES!r}, {ONNX_INPUT_STATE!r}; got {sorted(ins)}")
    if set(outs) != {ONNX_OUTPUT_PROBS, ONNX_OUTPUT_STATE}:
        raise ValueError(f"{path}: outputs must be {ONNX_OUTPUT_PROBS!r}, {ONNX_OUTPUT_STATE!r}; got {sorted(outs)}")
    fshape = ins[ONNX_INPUT_FEATURES].shape
    if len(fshape) != 3 or fshape[2] != N_MELS:
        raise ValueError(f"{path}: features input must be (batch, time, {N_MELS}), got {fshape}")
    pshape = outs[ONNX_OUTPUT_PROBS].shape
    if len(pshape) != 3 or pshape[2] != N_VISEMES:
        raise ValueError(f"{path}: probs output must be (batch, time, {N_VISEMES}), got {pshape}")
    sshape = ins[ONNX_INPUT_STATE].shape
    if len(sshape) != 2 or not isinstance(sshape[1], int):
        raise ValueError(f"{path}: state input must be (batch, S) with a fixed S, got {sshape}")
    meta = sess.get_modelmeta().custom_metadata_map  # type: ignore[attr-defined]
    if ONNX_META_LOOKAHEAD not in meta:
        raise ValueError(f"{path}: metadata {ONNX_META_LOOKAHEAD!r} missing (have {sorted(meta)})")
    return int(sshape[1]), int(meta[ONNX_META_LOOKAHEAD])


class OrtSessionBackend:
    """Shared part of the onnxruntime backends: the contract read from ``_sess`` and ``run``.

    Subclasses build ``self._sess`` (an ``onnxruntime.InferenceSession``) and then call
    :meth:`_read_contract`.
    """

    model_path: Path
    _sess: Any  # onnxruntime.InferenceSession (imported lazily)
    _state_size: int
    _lookahead: int

    def _read_contract(self) -> None:
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


class OnnxCpuBackend(OrtSessionBackend):
    """:class:`engines.runtime.base.InferenceBackend` on onnxruntime's CPUExecutionProvider."""

    name = "onnxruntime"

    def __init__(self, model_path: str | Path, threads: int = 1) -> None:
        import onnxruntime as ort

        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise FileNotFoundError(f"viseme model not found: {self.model_path}")
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self._sess = ort.InferenceSession(str(self.model_path), so, providers=["CPUExecutionProvider"])
        self._read_contract()
        log.debug("onnxruntime CPU backend: %s (state %d, lookahead %d hops)",
                  self.model_path, self._state_size, self._lookahead)
