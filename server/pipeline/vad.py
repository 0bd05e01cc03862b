"""Silero VAD through onnxruntime (no torch): one shared session, per-stream state + hysteresis."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnxruntime as ort

from engines.spec import SAMPLE_RATE
from server.config import VadConfig
from server.errors import BackendError
from server.pipeline.types import AudioChunk, VadChunk

WINDOW = 512  # samples per silero call at 16 kHz (32 ms)
CONTEXT = 64  # samples of the previous window prepended to each call
WINDOW_S = WINDOW / SAMPLE_RATE


def silero_onnx_path() -> Path:
    """The ONNX file shipped in the silero-vad package's data folder (the package is not imported)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise BackendError("silero-vad is not installed: pip install --no-deps silero-vad==6.2.3")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad.onnx"
    if not path.exists():
        raise BackendError(f"Silero VAD model file not found: {path}")
    return path


class SileroVad:
    """The shared VAD model. ``stream()`` gives each session its own state."""

    def __init__(self, path: Path | None = None) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path = path or silero_onnx_path()
        self._session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)

    def stream(self, config: VadConfig) -> VadStream:
        """A new per-session stream."""
        return VadStream(self, config)

    def infer(self, window: np.ndarray, state: np.ndarray) -> tuple[float, np.ndarray]:
        """(1, CONTEXT + WINDOW) float32, state (2, 1, 128) → (speech probability, new state)."""
        out, new_state = self._session.run(None, {"input": window, "state": state, "sr": self._sr})
        return float(out[0, 0]), new_state


class VadStream:
    """Stage: :class:`AudioChunk` → :class:`VadChunk`, annotating without delaying audio.

    The audio is passed on at once with the latest decision; the model runs whenever a full
    512-sample window has accumulated. Hysteresis: speech starts at ``threshold_on`` and ends
    after ``hangover_ms`` below ``threshold_off``.
    """

    _state: np.ndarray  # (2, 1, 128) silero recurrent state
    _context: np.ndarray  # (CONTEXT,) last samples of the previous window
    _pending: np.ndarray  # samples not yet filling a window
    _below: int  # windows below threshold_off while speaking
    prob: float  # latest speech probability
    speaking: bool  # hysteresis state

    def __init__(self, model: SileroVad, config: VadConfig) -> None:
        self._model = model
        self._cfg = config
        self._hangover_windows = max(1, int(round(config.hangover_ms / 1000 / WINDOW_S)))
        self.reset()

    def reset(self) -> None:
        """Zero the model state and the hysteresis."""
        self._state = np.zeros((2, 1, 128), np.float32)
        self._context = np.zeros(CONTEXT, np.float32)
        self._pending = np.zeros(0, np.float32)
        self._below = 0
        self.prob = 0.0
        self.speaking = False

    def push(self, item: AudioChunk) -> list[VadChunk]:
        """Consume a chunk; return it annotated with the latest decision."""
        buf = np.concatenate([self._pending, item.samples])
        n = buf.size // WINDOW
        for i in range(n):
            win = buf[i * WINDOW : (i + 1) * WINDOW]
            x = np.concatenate([self._context, win])[None, :]
            self.prob, self._state = self._model.infer(x, self._state)
            self._context = win[-CONTEXT:]
            self._update(self.prob)
        self._pending = buf[n * WINDOW :].copy()
        return [VadChunk(chunk=item, speech_prob=self.prob, speaking=self.speaking)]

    def _update(self, p: float) -> None:
        if self.speaking:
            if p < self._cfg.threshold_off:
                self._below += 1
                if self._below >= self._hangover_windows:
                    self.speaking = False
                    self._below = 0
            else:
                self._below = 0
        elif p >= self._cfg.threshold_on:
            self.speaking = True
            self._below = 0
