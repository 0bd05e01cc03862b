"""The neural viseme model behind the :mod:`engines.predictor` protocol.

``load_viseme_model("default")`` loads ``engines/weights/visemes.onnx`` on the best available
backend (TensorRT > CUDA > onnxruntime CPU); ``"energy"`` gives the heuristic baseline; any
other value is a path to an exported ``.onnx`` file. One :class:`NeuralVisemeModel` is shared
by all sessions; each session's :class:`NeuralVisemeStream` owns only its state vector.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from engines.features import logmel
from engines.predictor import EnergyVisemeModel, VisemeModel
from engines.runtime import load_backend
from engines.runtime.base import InferenceBackend
from engines.spec import HOP_LENGTH, N_MELS, N_VISEMES

DEFAULT_MODEL_PATH = Path(__file__).resolve().parent / "weights" / "visemes.onnx"


def silence_hops(n: int) -> NDArray[np.float32]:
    """(n, N_MELS) features of digital silence (what :func:`logmel` gives for zeros)."""
    one = logmel(np.zeros(HOP_LENGTH, np.float32))  # (1, N_MELS): log(LOG_FLOOR) per band
    return np.repeat(one, n, axis=0)


class NeuralVisemeStream:
    """Per-session stream: the (1, S) state, and how many leading rows are still to drop."""

    def __init__(self, backend: InferenceBackend) -> None:
        self._backend = backend
        self._state = np.zeros((1, backend.state_size), np.float32)
        self._to_drop = backend.lookahead_hops
        self._pending = 0  # hops pushed whose prediction has not been returned yet

    @property
    def lookahead_hops(self) -> int:
        """Future hops the model sees before predicting a hop."""
        return self._backend.lookahead_hops

    def reset(self) -> None:
        """Zero the state: the next push starts a new stream."""
        self._state = np.zeros_like(self._state)
        self._to_drop = self._backend.lookahead_hops
        self._pending = 0

    def _check(self, features: NDArray[np.float32]) -> NDArray[np.float32]:
        f = np.asarray(features, np.float32)
        if f.ndim != 2 or f.shape[1] != N_MELS:
            raise ValueError(f"features must be (n, {N_MELS}), got shape {f.shape}")
        return f

    def _accept(self, probs: NDArray[np.float32], n_in: int) -> NDArray[np.float32]:
        """Drop the rows that precede hop 0 of the stream; book-keep the pending count."""
        drop = min(self._to_drop, probs.shape[0])
        self._to_drop -= drop
        out = probs[drop:]
        self._pending += n_in - out.shape[0]
        return out

    def push(self, features: NDArray[np.float32]) -> NDArray[np.float32]:
        """(n, 40) log-mel hops -> (m, 15) probabilities for the next consecutive hops."""
        f = self._check(features)
        if f.shape[0] == 0:
            return np.zeros((0, N_VISEMES), np.float32)
        probs, self._state = self._backend.run(f[None], self._state)
        return self._accept(probs[0], f.shape[0])

    def flush(self) -> NDArray[np.float32]:
        """Feed lookahead hops of digital silence to predict the held-back hops; then reset."""
        pending = self._pending
        if pending == 0:
            self.reset()
            return np.zeros((0, N_VISEMES), np.float32)
        probs, _ = self._backend.run(silence_hops(self.lookahead_hops)[None], self._state)
        rows = probs[0][self._to_drop :][:pending]
        self.reset()
        return rows


class NeuralVisemeModel:
    """A :class:`engines.predictor.VisemeModel` over an :class:`InferenceBackend`."""

    def __init__(self, backend: InferenceBackend, name: str | None = None) -> None:
        self.backend = backend
        self._name = name or f"onnx:{backend.name}"

    @property
    def name(self) -> str:
        """``onnx:<file>@<backend>`` or the name given."""
        return self._name

    @property
    def lookahead_hops(self) -> int:
        """Future context in hops of 10 ms."""
        return self.backend.lookahead_hops

    def stream(self) -> NeuralVisemeStream:
        """A new per-session stream with zeroed state."""
        return NeuralVisemeStream(self.backend)


class BatchedVisemeRunner:
    """Runs many streams' pending hops in as few backend calls as possible.

    Streams pushing the same number of hops (the common case: every session pushes 20 ms =
    2 hops) share one batched call; each group of equal length is one call.
    """

    def __init__(self, model: NeuralVisemeModel) -> None:
        self.model = model

    def push_many(
        self, streams: list[NeuralVisemeStream], features: list[NDArray[np.float32]]
    ) -> list[NDArray[np.float32]]:
        """Same as ``[s.push(f) for s, f in zip(streams, features)]``, batched."""
        if len(streams) != len(features):
            raise ValueError(f"{len(streams)} streams but {len(features)} feature blocks")
        out: list[NDArray[np.float32]] = [np.zeros((0, N_VISEMES), np.float32)] * len(streams)
        groups: dict[int, list[int]] = defaultdict(list)
        checked = []
        for i, (s, f) in enumerate(zip(streams, features, strict=True)):
            if s._backend is not self.model.backend:
                raise ValueError(f"stream {i} belongs to another model")
            fc = s._check(f)
            checked.append(fc)
            if fc.shape[0] > 0:
                groups[fc.shape[0]].append(i)
        for n, idx in groups.items():
            feats = np.stack([checked[i] for i in idx])
            state = np.concatenate([streams[i]._state for i in idx], axis=0)
            probs, state_out = self.model.backend.run(feats, state)
            for j, i in enumerate(idx):
                streams[i]._state = state_out[j : j + 1].copy()
                out[i] = streams[i]._accept(probs[j], n)
        return out


def load_viseme_model(name_or_path: str = "default", engine: str = "auto") -> VisemeModel:
    """``energy`` -> the heuristic baseline; ``default`` or a path -> the network on ``engine``."""
    if name_or_path == "energy":
        return EnergyVisemeModel()
    path = DEFAULT_MODEL_PATH if name_or_path == "default" else Path(name_or_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"viseme model {name_or_path!r} not found at {path} (train one: python -m engines.train)"
        )
    backend = load_backend(engine, path)
    return NeuralVisemeModel(backend, name=f"onnx:{path.name}@{backend.name}")
