"""A tiny training run on a generated corpus completes, exports a valid model, and is reproducible."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from engines.spec import N_MELS, N_VISEMES  # noqa: E402


def write_corpus(root: Path, seed: int = 0) -> Path:
    """train/ and val/ shards in engines.corpus.dataset's format; each class has its own spectrum."""
    rng = np.random.default_rng(seed)
    proto = rng.normal(-4.0, 2.0, size=(N_VISEMES, N_MELS)).astype(np.float32)
    for split, n_utt in (("train", 24), ("val", 6)):
        arrays: dict[str, np.ndarray] = {}
        for i in range(n_utt):
            t = int(rng.integers(60, 160))
            runs = np.repeat(rng.integers(0, N_VISEMES, size=t), rng.integers(4, 12, size=t))[:t]
            labels = runs.astype(np.int8)
            feats = proto[labels] + rng.normal(0, 0.5, size=(t, N_MELS)) + rng.normal(0, 2.0)
            arrays[f"features_{i}"] = feats.astype(np.float32)
            arrays[f"labels_{i}"] = labels
        arrays["lang"] = np.array(["en"] * n_utt)
        arrays["voice"] = np.array(["fake"] * n_utt)
        arrays["source"] = np.array(["test"] * n_utt)
        (root / split).mkdir(parents=True)
        np.savez(root / split / "shard-00000.npz", **arrays)  # type: ignore[arg-type]
    return root


ARGS = ["--steps", "8", "--minutes", "0", "--batch", "4", "--crop", "60", "--no-real",
        "--hidden", "32", "--channels", "16", "--eval-every", "1000", "--lookahead-ms", "20"]


def test_tiny_training_run_exports(tmp_path: Path) -> None:
    from engines.corpus.dataset import load_corpus
    from engines.onnx_predictor import load_viseme_model
    from engines.train import main

    corpus = write_corpus(tmp_path / "corpus")
    assert len(load_corpus(corpus / "train")) == 24  # the fixture is readable by the real loader
    out = tmp_path / "run"
    assert main(["--corpus", str(corpus), "--out", str(out), "--seed", "3", *ARGS]) == 0
    for name in ("visemes.onnx", "best.pt", "last.pt", "metrics.json", "log.jsonl", "train.log"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 8
    assert metrics["parity"]["torch_vs_ort"] <= 1e-4
    assert "synthetic_val" in metrics["best"]
    model = load_viseme_model(str(out / "visemes.onnx"), engine="onnxruntime")
    assert model.lookahead_hops == 2
    s = model.stream()
    rows = s.push(np.full((5, N_MELS), -5.0, np.float32))
    assert rows.shape == (3, N_VISEMES)
    assert s.flush().shape == (2, N_VISEMES)

    # Same seed and step count: the same weights.
    out2 = tmp_path / "run2"
    assert main(["--corpus", str(corpus), "--out", str(out2), "--seed", "3", *ARGS]) == 0
    a = torch.load(out / "last.pt", weights_only=False)["state_dict"]
    b = torch.load(out2 / "last.pt", weights_only=False)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_lookahead_is_rejected(tmp_path: Path) -> None:
    from engines.train import main

    with pytest.raises(SystemExit):
        main(["--corpus", str(tmp_path), "--out", str(tmp_path / "x"), "--lookahead-ms", "45"])


def test_exclude_rules() -> None:
    from engines.train import excluded, parse_exclude

    rules = [parse_exclude("espeak:en"), parse_exclude("festival:")]
    assert rules == [("espeak", "en"), ("festival", "")]
    assert excluded("espeak", "en-gb", rules)
    assert not excluded("espeak", "de", rules)
    assert excluded("festival", "it", rules)
    assert not excluded("recorded", "en-us", rules)
    for bad in ("espeak", ":en", ""):
        with pytest.raises(ValueError, match="SOURCE:LANG"):
            parse_exclude(bad)


def test_exclude_is_checked_and_applied(tmp_path: Path) -> None:
    from engines.train import main

    corpus = write_corpus(tmp_path / "corpus")
    with pytest.raises(SystemExit):  # malformed spec: an argparse error
        main(["--corpus", str(corpus), "--out", str(tmp_path / "x"), "--exclude", "test", *ARGS])
    with pytest.raises(SystemExit, match="leaves no training utterances"):  # the fixture is all test/en
        main(["--corpus", str(corpus), "--out", str(tmp_path / "y"), "--exclude", "test:en", *ARGS])


def test_warp_option_is_checked_and_drives_the_mel_warp(tmp_path: Path) -> None:
    from engines.train import WARP, load_split, make_batch, parse_args, warp_mels

    assert parse_args(["--out", "x"]).warp == list(WARP)
    assert parse_args(["--out", "x", "--warp", "0.8", "0.82", "1.22"]).warp == [0.8, 0.82, 1.22]
    for bad in (["1.5", "0.9", "1.1"], ["0.5", "1.2", "0.9"], ["0.5", "0", "1.1"]):
        with pytest.raises(SystemExit):
            parse_args(["--out", "x", "--warp", *bad])
    data = load_split(write_corpus(tmp_path / "corpus"), "train")

    def batch(warp: tuple[float, float, float]) -> np.ndarray:
        # with the same probability the random draws are the same: only the factor differs
        x, _ = make_batch(data, np.random.default_rng(0), 4, 60, 2, True, [], 0.0, warp)
        return x.numpy()

    x = data.features[:50]
    assert np.array_equal(warp_mels(x, 1.0), x)  # factor 1 is the identity
    assert np.array_equal(batch((1.0, 0.9, 0.9)), batch((1.0, 0.9, 0.9)))
    assert not np.allclose(batch((1.0, 1.0, 1.0)), batch((1.0, 0.8, 0.8)))
