"""The streaming model against the offline reference, Rhubarb Lip Sync itself, on real speech.

Runs Rhubarb (its WebAssembly port from npm, installed into bench/.rhubarb by ``make setup-test``)
on the 10 real evaluation recordings and scores it and the shipped model with the same code.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from bench import rhubarb_reference as rr
from engines import evaluate, realdata
from engines.onnx_predictor import load_viseme_model
from engines.phonemes import rhubarb_decide

from .conftest import DEV_SPEECH, require_shared


def test_model_beats_rhubarb_on_real_speech() -> None:
    require_shared(DEV_SPEECH / "ASR_train.json")
    if not (rr.PREFIX / "node_modules" / "rhubarb-lip-sync-wasm" / "dist" / "index.js").is_file():
        pytest.skip("rhubarb-lip-sync-wasm not installed in bench/.rhubarb (make setup-test installs it with npm)")
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    items = realdata.load_aligned_set(names=realdata.ALL_NAMES)
    with tempfile.TemporaryDirectory(prefix="rhubarb-test-") as tmp:
        cues, _ = rr.run_rhubarb(items, with_text=False, work=Path(tmp))
    ref = rr.score({it.name: evaluate.cues_to_shapes(cues[it.name], it.labels.shape[0]) for it in items}, items)
    model = load_viseme_model("default", engine="onnxruntime")
    ours = rr.score({it.name: rhubarb_decide(evaluate.stream_audio(model, it.audio)) for it in items}, items)
    # Rhubarb really ran: far above a constant guess, below a perfect score
    assert 0.45 < ref["rhubarb_strict"] < 0.9, ref
    assert ours["rhubarb_strict"] > ref["rhubarb_strict"] + 0.03, (ours, ref)
    assert ours["rhubarb_tolerant"] > ref["rhubarb_tolerant"], (ours, ref)
    # what a user gets from `avatar visemes --format rhubarb-json` (VAD gate, cue writer) as well
    cold = [evaluate.LabelledAudio(it.name, it.audio, it.labels) for it in items]
    with tempfile.TemporaryDirectory(prefix="product-test-") as tmp:
        product = rr.score(rr.run_product(cold, *rr.product_models("default"), Path(tmp)), items)
    assert product["rhubarb_strict"] > ref["rhubarb_strict"] + 0.03, (product, ref)
    assert product["rhubarb_tolerant"] > ref["rhubarb_tolerant"], (product, ref)
