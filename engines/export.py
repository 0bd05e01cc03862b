"""ONNX export of :class:`engines.model.VisemeNet` with the contract of engines/spec.py.

``python -m engines.export CHECKPOINT OUT.onnx`` (or :func:`export_onnx`): inputs ``features``
(batch, time, 40) and ``state`` (batch, S), outputs ``probs`` (batch, time, 15) and
``state_out`` (batch, S); dynamic batch and time axes; metadata ``lookahead_hops``. After
writing, the file is checked with ``onnx.checker`` and two parity checks, each raising
:class:`ExportParityError` with the max difference when over tolerance:

- torch vs onnxruntime on the same random input (batch 2, 57 hops);
- onnxruntime streamed in uneven chunks vs the whole sequence in one call.
"""

from __future__ import annotations

import argparse
import hashlib
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from numpy.typing import NDArray

from engines.model import ModelConfig, VisemeNet, count_parameters, load_checkpoint
from engines.spec import (
    ONNX_INPUT_FEATURES,
    ONNX_INPUT_STATE,
    ONNX_META_LOOKAHEAD,
    ONNX_OUTPUT_PROBS,
    ONNX_OUTPUT_STATE,
)

PARITY_TOL = 1e-4  # max abs difference of probs / state allowed by the parity checks
OPSET = 17


class ExportParityError(RuntimeError):
    """An exported model disagrees with torch, or its streaming with its whole-sequence run."""


def _ort_session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _random_features(rng: np.random.Generator, batch: int, hops: int, n_mels: int) -> NDArray[np.float32]:
    """Log-mel-like random input: a loud-ish random walk around -4 nats with silence stretches."""
    base = rng.normal(-4.0, 3.0, size=(batch, 1, n_mels))
    walk = np.cumsum(rng.normal(0.0, 0.7, size=(batch, hops, n_mels)), axis=1) * 0.3
    x = base + walk
    x[:, : hops // 5] = np.log(1e-8)  # digital silence at the start
    return x.astype(np.float32)


def check_parity(model: VisemeNet, onnx_path: str | Path, tol: float = PARITY_TOL, seed: int = 0) -> dict[str, float]:
    """Run both parity checks; returns the max differences; raises ExportParityError over ``tol``."""
    model = model.eval()
    sess = _ort_session(Path(onnx_path))
    rng = np.random.default_rng(seed)
    feats = _random_features(rng, 2, 57, model.cfg.n_mels)
    state0 = np.zeros((2, model.state_size), np.float32)
    with torch.no_grad():
        tp, ts = model(torch.from_numpy(feats), torch.from_numpy(state0))
    op, os_ = sess.run(None, {ONNX_INPUT_FEATURES: feats, ONNX_INPUT_STATE: state0})
    d_torch = float(max(np.abs(op - tp.numpy()).max(), np.abs(os_ - ts.numpy()).max()))
    if not d_torch <= tol:
        raise ExportParityError(f"torch vs onnxruntime: max |diff| {d_torch:.3g} > {tol:g} ({onnx_path})")
    chunks, st, a = [], state0, 0
    for n in (1, 2, 5, 1, 13, 3, 32):
        p, st = sess.run(None, {ONNX_INPUT_FEATURES: feats[:, a : a + n], ONNX_INPUT_STATE: st})
        chunks.append(p)
        a += n
    assert a == feats.shape[1], a
    d_stream = float(max(np.abs(np.concatenate(chunks, axis=1) - op).max(), np.abs(st - os_).max()))
    if not d_stream <= tol:
        raise ExportParityError(
            f"streamed chunks vs whole sequence: max |diff| {d_stream:.3g} > {tol:g} ({onnx_path})"
        )
    return {"torch_vs_ort": d_torch, "chunked_vs_whole": d_stream}


def export_onnx(model: VisemeNet, out_path: str | Path, check: bool = True) -> dict[str, float]:
    """Write ``model`` as ONNX to ``out_path`` (parents created); returns the parity numbers."""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    feats = torch.zeros(1, 8, model.cfg.n_mels)
    state = model.zero_state(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and GRU batch notes
        torch.onnx.export(
            model,
            (feats, state),
            str(out),
            dynamo=False,
            input_names=[ONNX_INPUT_FEATURES, ONNX_INPUT_STATE],
            output_names=[ONNX_OUTPUT_PROBS, ONNX_OUTPUT_STATE],
            dynamic_axes={
                ONNX_INPUT_FEATURES: {0: "batch", 1: "time"},
                ONNX_INPUT_STATE: {0: "batch"},
                ONNX_OUTPUT_PROBS: {0: "batch", 1: "time"},
                ONNX_OUTPUT_STATE: {0: "batch"},
            },
            opset_version=OPSET,
            do_constant_folding=True,
        )
    proto = onnx.load(str(out))
    meta = {
        ONNX_META_LOOKAHEAD: str(model.lookahead_hops),
        "state_size": str(model.state_size),
        "model_config": model.cfg.to_json(),
        "parameters": str(count_parameters(model)),
        "producer": "engines.export",
    }
    del proto.metadata_props[:]
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(out))
    return check_parity(model, out) if check else {}


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file (model identity in logs and engine caches)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    """CLI: export a checkpoint written by engines.train to ONNX (with checks)."""
    ap = argparse.ArgumentParser(prog="python -m engines.export", description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", help="best.pt written by engines.train")
    ap.add_argument("out", help="output .onnx path")
    args = ap.parse_args(argv)
    model = load_checkpoint(args.checkpoint)
    diffs = export_onnx(model, args.out)
    size = Path(args.out).stat().st_size
    print(f"wrote {args.out} ({size / 1e6:.2f} MB, {count_parameters(model)} params, "
          f"lookahead {model.lookahead_hops} hops); parity {diffs}")
    return 0


__all__ = ["ExportParityError", "ModelConfig", "check_parity", "export_onnx", "file_sha256", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
