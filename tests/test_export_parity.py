"""ONNX export: contract names/metadata, onnx.checker, torch<->onnxruntime and chunked<->whole parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from engines.export import ExportParityError, check_parity, export_onnx  # noqa: E402
from engines.model import ModelConfig, VisemeNet  # noqa: E402
from engines.spec import (  # noqa: E402
    N_MELS,
    N_VISEMES,
    ONNX_INPUT_FEATURES,
    ONNX_INPUT_STATE,
    ONNX_META_LOOKAHEAD,
    ONNX_OUTPUT_PROBS,
    ONNX_OUTPUT_STATE,
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[VisemeNet, Path, dict[str, float]]:
    torch.manual_seed(1)
    model = VisemeNet(ModelConfig(lookahead_hops=3, hidden=64, channels=32, conv_layers=2, kernel=3))
    path = tmp_path_factory.mktemp("onnx") / "m.onnx"
    diffs = export_onnx(model, path)
    return model, path, diffs


def test_contract(exported: tuple[VisemeNet, Path, dict[str, float]]) -> None:
    model, path, diffs = exported
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == [ONNX_INPUT_FEATURES, ONNX_INPUT_STATE]
    assert [o.name for o in proto.graph.output] == [ONNX_OUTPUT_PROBS, ONNX_OUTPUT_STATE]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta[ONNX_META_LOOKAHEAD] == "3"
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    f_shape = sess.get_inputs()[0].shape
    assert isinstance(f_shape[0], str) and isinstance(f_shape[1], str) and f_shape[2] == N_MELS
    assert sess.get_inputs()[1].shape[1] == model.state_size
    assert diffs["torch_vs_ort"] <= 1e-4 and diffs["chunked_vs_whole"] <= 1e-4


def test_dynamic_batch_and_time(exported: tuple[VisemeNet, Path, dict[str, float]]) -> None:
    model, path, _ = exported
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for b, t in ((1, 1), (5, 2), (3, 250)):
        f = rng.normal(-4, 3, (b, t, N_MELS)).astype(np.float32)
        p, s = sess.run(None, {ONNX_INPUT_FEATURES: f, ONNX_INPUT_STATE: np.zeros((b, model.state_size), np.float32)})
        assert p.shape == (b, t, N_VISEMES) and s.shape == (b, model.state_size)
        with torch.no_grad():
            tp, ts = model(torch.from_numpy(f), model.zero_state(b))
        assert np.abs(p - tp.numpy()).max() <= 1e-4
        assert np.abs(s - ts.numpy()).max() <= 1e-4


def test_parity_violation_raises_with_max_difference(exported: tuple[VisemeNet, Path, dict[str, float]]) -> None:
    model, path, _ = exported
    other = VisemeNet(model.cfg)  # different random weights, same graph
    with pytest.raises(ExportParityError, match=r"torch vs onnxruntime: max \|diff\| [0-9.e-]+ >"):
        check_parity(other, path)
