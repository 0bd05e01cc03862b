"""Accuracy functions on hand-made cases; the shipped model beats the energy baseline on real speech."""

from __future__ import annotations

import numpy as np
import pytest

from engines.evaluate import (
    RHUBARB_SHAPES,
    Scores,
    score_probs,
    stream_audio,
    stream_features,
    strict_accuracy,
    to_rhubarb,
    tolerant_accuracy,
    tolerant_hits,
)
from engines.predictor import EnergyVisemeModel
from engines.spec import N_MELS, N_VISEMES, VISEME_INDEX

from .conftest import DEV_SPEECH, require_shared


def test_strict_accuracy() -> None:
    assert strict_accuracy(np.array([0, 1, 2, 3]), np.array([0, 1, 0, 3])) == 0.75
    with pytest.raises(ValueError, match="equal-length"):
        strict_accuracy(np.array([0, 1]), np.array([0]))


def test_tolerance_of_a_late_boundary() -> None:
    ref = np.array([0] * 10 + [1] * 10)
    late3 = np.array([0] * 13 + [1] * 7)  # boundary 30 ms late: all within +-40 ms
    assert strict_accuracy(late3, ref) == 0.85
    assert tolerant_accuracy(late3, ref) == 1.0
    late5 = np.array([0] * 15 + [1] * 5)  # 50 ms late: only the frame 5 after the boundary misses
    assert tolerant_accuracy(late5, ref) == 0.95
    assert tolerant_hits(late5, ref).tolist() == [True] * 14 + [False] + [True] * 5
    assert tolerant_accuracy(late5, ref, tol=0) == strict_accuracy(late5, ref)


def test_tolerance_clips_at_the_ends_and_never_invents_a_class() -> None:
    ref = np.array([2, 2, 2, 2, 2, 2])
    pred = np.array([3, 2, 2, 2, 2, 3])
    assert tolerant_accuracy(pred, ref) == pytest.approx(4 / 6)  # 3 is nowhere in ref
    short_ref, short_pred = np.array([1]), np.array([1])
    assert tolerant_accuracy(short_pred, short_ref) == 1.0


def test_rhubarb_mapping_and_scores() -> None:
    sil, pp, aa = VISEME_INDEX["sil"], VISEME_INDEX["PP"], VISEME_INDEX["aa"]
    assert [RHUBARB_SHAPES[i] for i in to_rhubarb(np.array([sil, pp, aa]))] == ["X", "A", "D"]
    sc = Scores()
    # DD and SS are both Rhubarb's B: wrong viseme, right shape.
    sc.add(np.array([VISEME_INDEX["DD"], sil]), np.array([VISEME_INDEX["SS"], sil]))
    s = sc.summary()
    assert s["viseme_strict"] == 0.5 and s["rhubarb_strict"] == 1.0 and s["frames"] == 2
    assert sc.confusion15.sum() == 2 and sc.confusion9.trace() == 2


def test_streaming_helpers_return_one_row_per_hop() -> None:
    model = EnergyVisemeModel()
    feats = np.random.default_rng(0).normal(-5, 2, (33, N_MELS)).astype(np.float32)
    assert stream_features(model, feats).shape == (33, N_VISEMES)
    audio = np.random.default_rng(1).normal(0, 0.1, 16000 + 77).astype(np.float32)
    assert stream_audio(model, audio).shape == (100, N_VISEMES)


def test_shipped_model_beats_energy_on_real_reference() -> None:
    from engines.evaluate import real_sets, score_audio_set
    from engines.onnx_predictor import load_viseme_model

    require_shared(DEV_SPEECH / "ASR_train.json")  # real_sets() reads engines.realdata's default root, the same folder
    sets = real_sets()
    assert "real_reference" in sets, f"real_reference did not load from {DEV_SPEECH} (see the log); loaded: {sorted(sets)}"
    ref = sets["real_reference"]
    assert len(ref) >= 8
    ours = score_audio_set(load_viseme_model("default", engine="onnxruntime"), ref).summary()
    energy = score_audio_set(EnergyVisemeModel(), ref).summary()
    for metric in ("rhubarb_strict", "rhubarb_tolerant"):
        assert ours[metric] > energy[metric] + 0.1, (metric, ours, energy)


def test_rhubarb_decision_sums_the_visemes_of_a_shape() -> None:
    from engines.phonemes import rhubarb_decide, rhubarb_shape_probs

    p = np.zeros((2, N_VISEMES), np.float32)
    p[0, [VISEME_INDEX["DD"], VISEME_INDEX["SS"], VISEME_INDEX["aa"]]] = (0.3, 0.3, 0.4)  # B 0.6 > D 0.4
    p[1, VISEME_INDEX["aa"]] = 1.0
    assert [RHUBARB_SHAPES[i] for i in rhubarb_decide(p)] == ["B", "D"]
    assert np.allclose(rhubarb_shape_probs(p).sum(axis=1), 1.0)
    with pytest.raises(ValueError, match="shape"):
        rhubarb_decide(np.zeros((3, 9), np.float32))
    sc = Scores()
    score_probs(sc, p, np.array([VISEME_INDEX["SS"], VISEME_INDEX["aa"]]))
    s = sc.summary()
    assert s["viseme_strict"] == 0.5 and s["rhubarb_strict"] == 1.0


def test_live_lead_is_streamed_first_and_never_scored() -> None:
    from engines.evaluate import LabelledAudio, live_lead, score_audio_set

    rng = np.random.default_rng(2)
    audio = (rng.normal(0, 0.1, 16000) * np.sin(np.linspace(0, 20, 16000)) ** 2).astype(np.float32)
    labels = np.full(100, VISEME_INDEX["aa"], np.int8)
    cold = [LabelledAudio("x", audio, labels)]
    live = live_lead(cold, seconds=0.5, dbfs=-60.0)
    lead = live[0].lead
    assert lead is not None and lead.shape == (8000,)
    assert 20 * np.log10(np.sqrt(np.mean(lead**2))) == pytest.approx(-60.0, abs=0.2)
    assert live[0].audio is audio and live[0].labels is labels  # the recording itself is untouched
    model = EnergyVisemeModel()
    for items in (cold, live):
        assert score_audio_set(model, items).summary()["frames"] == 100  # only the recording's hops
    with pytest.raises(ValueError, match="lead"):
        live_lead(cold, seconds=0.0)


def test_cues_to_shapes_reads_rhubarb_cues_per_hop_centre() -> None:
    from engines.evaluate import cues_to_shapes

    idx = {s: i for i, s in enumerate(RHUBARB_SHAPES)}
    cues = [{"start": 0.0, "end": 0.05, "value": "X"}, {"start": 0.05, "end": 0.12, "value": "B"},
            {"start": 0.10, "end": 0.15, "value": "D"}]  # overlaps B: the later cue wins
    got = cues_to_shapes(cues, 18)
    assert got.tolist() == [idx["X"]] * 5 + [idx["B"]] * 5 + [idx["D"]] * 5 + [idx["X"]] * 3
    with pytest.raises(ValueError, match="unknown mouth shape 'Q'"):
        cues_to_shapes([{"start": 0, "end": 1, "value": "Q"}], 3)
    with pytest.raises(ValueError, match="ends before it starts"):
        cues_to_shapes([{"start": 1, "end": 0.5, "value": "A"}], 3)


def test_cues_to_shapes_round_trips_our_rhubarb_export() -> None:
    """`avatar visemes --format rhubarb-json` cues read back hop for hop (after its blip filter)."""
    from engines.evaluate import cues_to_shapes
    from engines.phonemes import rhubarb_decide
    from server.offline import shape_cues

    rng = np.random.default_rng(0)
    runs = rng.integers(0, N_VISEMES, size=40)
    weights = np.zeros((0, N_VISEMES), np.float32)
    for v in runs:  # runs of 2-6 hops, so the 3-hop majority filter changes nothing
        block = np.full((int(rng.integers(2, 7)), N_VISEMES), 0.01, np.float32)
        block[:, v] = 0.9
        weights = np.concatenate([weights, block])
    cues = shape_cues(weights, weights.shape[0] / 100)
    back = cues_to_shapes([{"start": s, "end": e, "value": v} for s, e, v in cues], weights.shape[0])
    assert back.tolist() == rhubarb_decide(weights).tolist()
