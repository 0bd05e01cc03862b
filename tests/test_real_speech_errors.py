"""bench/real_speech_errors.py: hop attribution, miss tables and the ensemble mean (no audio needed)."""

from __future__ import annotations

import numpy as np
import pytest

from bench import real_speech_errors as rse
from bench.rhubarb_reference import score
from engines.evaluate import LabelledAudio
from engines.phonemes import RHUBARB_SHAPES
from engines.spec import HOP_LENGTH, VISEMES


def _shapes(s: str) -> np.ndarray:
    return np.array([RHUBARB_SHAPES.index(c) for c in s], np.int64)


def test_hop_phones_takes_the_annotated_identity_at_each_hop_centre() -> None:
    h = HOP_LENGTH
    phones = [("SIL", 0, 2 * h), ("AH", 2 * h, 5 * h), ("T", 5 * h, 6 * h + h // 2)]
    said = [None, "ax", None]
    got = rse.hop_phones(phones, said, 8)
    # hop 6's centre (6.5 h) is the T's end, outside it; hops 6-7 are outside every phone
    assert got == ["SIL", "SIL", "AX", "AX", "AX", "T", "SIL", "SIL"]
    with pytest.raises(ValueError, match="2 identities for 3 phones"):
        rse.hop_phones(phones, said[:2], 8)


def test_phone_misses_count_only_tolerant_misses_and_what_was_shown() -> None:
    m = rse.PhoneMisses()
    phones = ["IH"] * 12 + ["L"] * 12
    ref = _shapes("B" * 12 + "B" * 12)
    # the IH hops show C (never in the reference): all 12 miss; the L hops are right
    pred = _shapes("C" * 12 + "B" * 12)
    m.add(phones, pred, ref)
    rows = m.table()
    assert [r["phone"] for r in rows] == ["IH"]
    assert rows[0] == {"phone": "IH", "hops": 12, "strict": 0.0, "misses": 12, "miss_rate": 1.0,
                       "share_of_misses": 1.0, "shown_instead": {"C": 12}}
    # a shape that occurs in the reference within 4 hops is a tolerant hit, not a miss
    m2 = rse.PhoneMisses()
    m2.add(["EH"] * 6, _shapes("BBBCCC"), _shapes("BBCCCC"))
    assert m2.misses["EH"] == 0 and m2.strict["EH"] == 5
    with pytest.raises(ValueError, match="lengths differ"):
        m2.add(["EH"] * 5, _shapes("BBBCCC"), _shapes("BBCCCC"))


def test_average_probs_and_score() -> None:
    a = np.zeros((5, 15), np.float32)
    a[:, 1] = 1.0
    b = np.zeros((4, 15), np.float32)
    b[:, 2] = 1.0
    mean = rse.average_probs([a, b])
    assert mean.shape == (4, 15)
    np.testing.assert_allclose(mean[:, 1], 0.5)
    np.testing.assert_allclose(mean[:, 2], 0.5)
    with pytest.raises(ValueError, match="no model"):
        rse.average_probs([])
    with pytest.raises(ValueError, match="one C"):
        rse.average_probs([a, np.zeros((5, 9), np.float32)])
    # the scores come from bench/rhubarb_reference.score, whose references are viseme labels
    vis = {"A": "PP", "B": "DD", "C": "E", "D": "aa", "X": "sil"}
    items = [LabelledAudio(n, np.zeros(0, np.float32), np.array([VISEMES.index(vis[c]) for c in ref], np.int8))
             for n, ref in (("u1", "AABC"), ("u2", "XD"))]
    s = score({"u1": _shapes("AABB"), "u2": _shapes("XF")}, items)
    assert {k: s[k] for k in ("rhubarb_strict", "rhubarb_tolerant", "frames")} == {
        "rhubarb_strict": round(4 / 6, 4), "rhubarb_tolerant": round(5 / 6, 4), "frames": 6}
