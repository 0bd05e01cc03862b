"""Real dev-speech recordings: phone coverage, reference labels, pocketsphinx forced alignment."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engines.phonemes import timit_to_visemes
from engines.realdata import (
    ALIGN_TEXTS,
    RealUtterance,
    human_phone_identities,
    load_aligned_set,
    load_reference_set,
    phone_agreement,
)
from engines.spec import HOP_LENGTH, VISEME_INDEX, VISEMES

from .conftest import DEV_SPEECH, require_shared


@pytest.fixture(scope="module", autouse=True)
def _dev_speech() -> None:
    """Every test here reads the real recordings: skip without them (fail under CI=true).
    Module-scoped and autouse, so it runs before the module's fixtures that load them."""
    require_shared(DEV_SPEECH)


def _hf_share(audio: np.ndarray) -> np.ndarray:
    n = audio.shape[0] // HOP_LENGTH
    frames = audio[: n * HOP_LENGTH].reshape(n, HOP_LENGTH) * np.hanning(HOP_LENGTH)
    spec = np.abs(np.fft.rfft(frames, 256, axis=1)) ** 2
    return spec[:, 64:].sum(1) / (spec.sum(1) + 1e-12)  # share above 4 kHz


def test_every_dev_phone_maps_to_a_viseme() -> None:
    phones: set[str] = set()
    for name in ("ASR_train.json", "ASR_dev.json", "ASR_train_39p.json"):
        with (DEV_SPEECH / name).open() as f:
            for entry in json.load(f).values():
                phones.update(entry["phn"].split())
    assert len(phones) > 30
    for p in sorted(phones):
        assert all(v in VISEMES for v in timit_to_visemes(p)), p


@pytest.fixture(scope="module")
def reference() -> list[RealUtterance]:
    return load_reference_set(DEV_SPEECH)


def test_reference_set(reference: list[RealUtterance]) -> None:
    assert [u.name for u in reference] == sorted(f"spk{s}_snt{i}" for s in (1, 2) for i in range(1, 5))
    for u in reference:
        assert u.audio.dtype == np.float32 and u.audio.ndim == 1
        assert u.labels.dtype == np.int8 and u.labels.shape == (u.audio.shape[0] // HOP_LENGTH,)
        ends = [e for _, _, e in u.phones]
        assert ends == sorted(ends) and ends[-1] <= u.audio.shape[0]
        assert u.source == "human" and u.text == ALIGN_TEXTS[u.name]
    # closures take the following stop's viseme: "dh ax cl ch ..." -> the cl hops are CH
    snt1 = reference[0]
    name, start, end = snt1.phones[2]
    assert name == "cl" and snt1.phones[3][0] == "ch"
    centre_hops = [t for t in range(len(snt1.labels)) if start <= t * HOP_LENGTH + 80 < end]
    assert centre_hops and all(snt1.labels[t] == VISEME_INDEX["CH"] for t in centre_hops)


def test_root_is_configurable(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_reference_set(tmp_path)


@pytest.fixture(scope="module")
def aligned() -> list[RealUtterance]:
    return load_aligned_set(DEV_SPEECH)


def test_pocketsphinx_alignment_is_monotonic_and_inside_audio(aligned: list[RealUtterance]) -> None:
    assert [u.name for u in aligned] == ["spk1_snt5", "spk2_snt5"]
    for u in aligned:
        prev_end = 0
        for _, start, end in u.phones:
            assert prev_end <= start <= end <= u.audio.shape[0]
            prev_end = end
        assert u.phones[-1][2] >= u.audio.shape[0] - 2 * HOP_LENGTH  # covers the recording
        assert u.labels.shape == (u.audio.shape[0] // HOP_LENGTH,)
        assert (u.labels != VISEME_INDEX["sil"]).mean() > 0.6


def test_pocketsphinx_phones_agree_with_given_phone_strings(aligned: list[RealUtterance]) -> None:
    with (DEV_SPEECH / "ASR_dev.json").open() as f:
        dev = json.load(f)
    for u in aligned:
        agree = phone_agreement(dev[u.name]["phn"].split(), [p for p, _, _ in u.phones])
        assert agree >= 0.85, (u.name, agree)
    # and a wrong sentence does not agree
    assert phone_agreement(dev["spk2_snt5"]["phn"].split(), "K EH N P EH R Z L AE K".split()) < 0.5


def test_human_phone_identities_pair_aligned_phones_with_the_annotation() -> None:
    """Pure: no audio. pocketsphinx writes both schwas of "the dog" as AH; the annotation wins."""
    timit = "dh ax vcl d ao vcl g sil dh iy".split()
    phones = [("SIL", 0, 800), ("DH", 800, 1600), ("AH", 1600, 2400), ("D", 2400, 3200), ("AO", 3200, 4800),
              ("G", 4800, 5600), ("SIL", 5600, 6400), ("DH", 6400, 7200), ("AH", 7200, 8000), ("+NSN+", 8000, 8800)]
    said = human_phone_identities(timit, phones)
    assert said == [None, "dh", "ax", "d", "ao", "g", None, "dh", "iy", None]
    # a consonant paired with an unrelated consonant keeps pocketsphinx's identity
    assert human_phone_identities(["s", "ao"], [("M", 0, 800), ("AO", 800, 1600)]) == [None, "ao"]


def test_aligned_labels_use_the_annotated_phones() -> None:
    """spk2_snt3 "tear a thin sheet from the yellow pad" is annotated ``dh iy`` ("thee"), which
    CMUdict writes ``DH AH``: the labels follow what was said (I), the times pocketsphinx."""
    u = load_aligned_set(DEV_SPEECH, names=("spk2_snt3",))[0]
    plain = load_aligned_set(DEV_SPEECH, names=("spk2_snt3",), human_phones=False)[0]
    assert [p for p, _, _ in plain.phones] == [p for p, _, _ in u.phones]  # same alignment
    k = next(k for k, (p, _, _) in enumerate(u.phones) if p == "DH")
    name, start, end = u.phones[k + 1]
    assert name == "AH"
    centre = [t for t in range(len(u.labels)) if start <= t * HOP_LENGTH + 80 < end]
    assert centre and all(u.labels[t] == VISEME_INDEX["I"] for t in centre)
    assert all(plain.labels[t] == VISEME_INDEX["E"] for t in centre)
    assert u.source.startswith("pocketsphinx times") and plain.source == "pocketsphinx"
    # the annotated identity of each aligned phone travels with the utterance
    assert u.said is not None and len(u.said) == len(u.phones) and u.said[k + 1] == "iy"
    assert plain.said is None


def test_pocketsphinx_boundaries_fit_the_audio(aligned: list[RealUtterance]) -> None:
    """Sibilant hops hiss (energy above 4 kHz), vowel hops do not."""
    for u in aligned:
        hf = _hf_share(u.audio)
        lab = u.labels[: hf.shape[0]]
        hiss = np.isin(lab, [VISEME_INDEX["SS"], VISEME_INDEX["CH"]])
        vowel = np.isin(lab, [VISEME_INDEX[v] for v in ("aa", "E", "I", "O", "U")])
        assert hf[hiss].mean() > hf[vowel].mean() + 0.2, u.name
