"""Inference backends on the shipped weights; auto fallback; GPU parity (skipped without a GPU)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from engines.onnx_predictor import (
    DEFAULT_MODEL_PATH,
    BatchedVisemeRunner,
    NeuralVisemeModel,
    load_viseme_model,
    silence_hops,
)
from engines.predictor import EnergyVisemeModel
from engines.runtime import load_backend
from engines.runtime.base import InferenceBackend
from engines.runtime.onnx_cpu import OnnxCpuBackend
from engines.spec import LOG_FLOOR, N_MELS, N_VISEMES, ONNX_META_LOOKAHEAD


def _feats(t: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(-5.0, 3.0, (t, N_MELS)).astype(np.float32)


@pytest.fixture(scope="module")
def cpu() -> OnnxCpuBackend:
    return OnnxCpuBackend(DEFAULT_MODEL_PATH)


def test_shipped_file_and_metadata(cpu: OnnxCpuBackend) -> None:
    import onnx

    assert DEFAULT_MODEL_PATH.stat().st_size <= 5_000_000
    meta = {p.key: p.value for p in onnx.load(str(DEFAULT_MODEL_PATH)).metadata_props}
    assert int(meta[ONNX_META_LOOKAHEAD]) == cpu.lookahead_hops
    assert 0 <= cpu.lookahead_hops <= 5  # default lookahead <= 50 ms
    assert int(meta["parameters"]) <= 1_000_000
    assert isinstance(cpu, InferenceBackend)


def test_cpu_backend_shapes_and_probabilities(cpu: OnnxCpuBackend) -> None:
    f = np.stack([_feats(7, 1), _feats(7, 2)])
    probs, state = cpu.run(f, np.zeros((2, cpu.state_size), np.float32))
    assert probs.shape == (2, 7, N_VISEMES) and probs.dtype == np.float32
    assert state.shape == (2, cpu.state_size)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match=r"features must be \(batch, time, 40\)"):
        cpu.run(np.zeros((1, 3, 39), np.float32), np.zeros((1, cpu.state_size), np.float32))
    with pytest.raises(ValueError, match="state must be"):
        cpu.run(f, np.zeros((2, 5), np.float32))


def test_auto_falls_back_to_onnxruntime_and_logs_why(caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("onnxruntime")
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here: auto would not fall back")
    except ImportError:
        pass
    with caplog.at_level(logging.WARNING, logger="engines.runtime"):
        b = load_backend("auto", DEFAULT_MODEL_PATH)
    assert b.name in ("onnxruntime", "cuda")
    if b.name == "onnxruntime":
        assert "tensorrt" in caplog.text and "TensorRT is not installed" in caplog.text


def test_unknown_engine_and_missing_file_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'fast'"):
        load_backend("fast", DEFAULT_MODEL_PATH)
    with pytest.raises(FileNotFoundError, match="nope.onnx"):
        load_viseme_model(str(tmp_path / "nope.onnx"))


def test_stream_push_flush_matches_whole_sequence(cpu: OnnxCpuBackend) -> None:
    model = NeuralVisemeModel(cpu)
    la = model.lookahead_hops
    f = _feats(41, 3)
    whole, _ = cpu.run(np.concatenate([f, silence_hops(la)])[None], np.zeros((1, cpu.state_size), np.float32))
    s = model.stream()
    rows = [s.push(f[a : a + 2]) for a in range(0, 41, 2)]
    assert sum(r.shape[0] for r in rows) == 41 - la
    rows.append(s.flush())
    got = np.concatenate(rows)
    assert got.shape == (41, N_VISEMES)
    np.testing.assert_allclose(got, whole[0, la:], atol=1e-5)
    # after flush the stream starts over
    again = np.concatenate([s.push(f[:20]), s.push(f[20:]), s.flush()])
    np.testing.assert_allclose(again, got, atol=1e-5)


def test_silence_features_are_the_log_floor() -> None:
    np.testing.assert_allclose(silence_hops(3), np.log(np.float32(LOG_FLOOR)), rtol=1e-6)


def test_batched_runner_equals_separate_streams(cpu: OnnxCpuBackend) -> None:
    model = NeuralVisemeModel(cpu)
    feats = [_feats(30, i) for i in range(4)]
    solo = [model.stream() for _ in feats]
    batched = [model.stream() for _ in feats]
    runner = BatchedVisemeRunner(model)
    for a in range(0, 30, 2):
        sizes = [2, 2, 1, 2]  # one stream pushes a different length: its own group
        want = [s.push(f[a : a + n]) for s, f, n in zip(solo, feats, sizes, strict=True)]
        got = runner.push_many(batched, [f[a : a + n] for f, n in zip(feats, sizes, strict=True)])
        for w, g in zip(want, got, strict=True):
            np.testing.assert_allclose(g, w, atol=1e-5)


def test_load_viseme_model_names() -> None:
    assert isinstance(load_viseme_model("energy"), EnergyVisemeModel)
    m = load_viseme_model("default", engine="onnxruntime")
    assert m.name.startswith("onnx:visemes.onnx")


def _gpu_parity(engine: str) -> None:
    cpu = OnnxCpuBackend(DEFAULT_MODEL_PATH)
    gpu = load_backend(engine, DEFAULT_MODEL_PATH)
    assert gpu.name == engine
    f = np.stack([_feats(16, i) for i in range(3)])
    s0 = np.zeros((3, cpu.state_size), np.float32)
    pc, sc = cpu.run(f, s0)
    pg, sg = gpu.run(f, s0)
    tol = 2e-2 if engine == "tensorrt" else 1e-3  # TensorRT builds with FP16
    assert np.abs(pc - pg).max() <= tol
    # streamed on the GPU, 2 hops a time, matches the whole sequence
    st, rows = s0, []
    for a in range(0, 16, 2):
        p, st = gpu.run(f[:, a : a + 2], st)
        rows.append(p)
    assert np.abs(np.concatenate(rows, axis=1) - pg).max() <= tol


@pytest.mark.gpu
def test_tensorrt_matches_cpu() -> None:
    pytest.importorskip("tensorrt")
    _gpu_parity("tensorrt")


@pytest.mark.gpu
def test_cuda_matches_cpu() -> None:
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDAExecutionProvider here")
    _gpu_parity("cuda")
