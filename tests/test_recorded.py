"""Recorded human speech with phone labels (engines.corpus.recorded) and its use in the corpus."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from engines.corpus import augment as aug
from engines.corpus import recorded
from engines.corpus.generate import GenConfig, generate, recorded_utterances
from engines.corpus.labels import phones_to_segments, segments_to_labels
from engines.phonemes import FESTIVAL_RUSSIAN, festival_to_visemes
from engines.spec import HOP_LENGTH, SAMPLE_RATE, VISEME_INDEX, VISEMES

from .conftest import DEV_SPEECH, require_shared

RU = recorded.RECORDED_DBS["ru-nsh"][0]


def _lab(path: Path, phones: list[tuple[float, str]]) -> None:
    path.write_text("#\n" + "".join(f"{end:.5f} 125 {p}\n" for end, p in phones), encoding="utf-8")


@pytest.fixture
def fake_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A two-prompt database at 22.05 kHz: silence, a 'vowel' tone, silence, named ``fake-ru``."""
    for sub in ("wav", "lab", "etc"):
        (tmp_path / sub).mkdir()
    rate = 22050
    t = np.arange(int(1.0 * rate)) / rate
    x = np.where((t >= 0.3) & (t < 0.7), 0.3 * np.sin(2 * np.pi * 220 * t), 0.0).astype(np.float32)
    for name in ("ru_0001", "ru_0002"):
        sf.write(tmp_path / "wav" / f"{name}.wav", x, rate, subtype="PCM_16")
        _lab(tmp_path / "lab" / f"{name}.lab", [(0.3, "pau"), (0.5, "aa"), (0.7, "m"), (1.2, "pau")])
    (tmp_path / "etc" / "txt.done.data").write_text('( ru_0001 "Мама." )\n', encoding="utf-8")
    monkeypatch.setattr(recorded, "RECORDED_DBS", {"fake-ru": (tmp_path, "ru")})
    recorded.prompt_names.cache_clear()
    yield "fake-ru"
    recorded.prompt_names.cache_clear()


def test_read_lab_gives_contiguous_phones(tmp_path: Path) -> None:
    p = tmp_path / "a.lab"
    _lab(p, [(0.25, "pau"), (0.31, "k"), (0.5, "aa")])
    assert recorded.read_lab(p) == [("pau", 0, 4000), ("k", 4000, 4960), ("aa", 4960, 8000)]


@pytest.mark.parametrize(("text", "match"), [
    ("0.1 125 pau\n", "no '#' header"),
    ("#\n0.1 pau\n", r"a.lab:2: expected 'END COLOUR PHONE'"),
    ("#\n0.5 125 pau\n0.4 125 a\n", r"a.lab:3: end 0.4 s is before"),
    ("#\nx 125 pau\n", "end time 'x' is not a number"),
    ("#\n\n", "no phones"),
])
def test_read_lab_rejects_malformed_files(tmp_path: Path, text: str, match: str) -> None:
    p = tmp_path / "a.lab"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(recorded.LabelError, match=match):
        recorded.read_lab(p)


def test_load_recording_resamples_and_keeps_times(fake_db: str) -> None:
    assert recorded.prompt_names(fake_db) == ("ru_0001", "ru_0002")
    rec = recorded.load_recording(fake_db, "ru_0001")
    assert rec.audio.dtype == np.float32 and abs(rec.audio.shape[0] - SAMPLE_RATE) <= 1
    assert rec.text == "Мама." and rec.lang == "ru"
    # the last phone (to 1.2 s) is clipped to the 1.0 s of audio
    assert rec.phones[-1] == ("pau", int(0.7 * SAMPLE_RATE), rec.audio.shape[0])
    labels = segments_to_labels(phones_to_segments(rec.phones, partial(festival_to_visemes, lang="ru")),
                                rec.audio.shape[0])
    loud = np.array([np.abs(rec.audio[t * HOP_LENGTH:(t + 1) * HOP_LENGTH]).max() for t in range(labels.shape[0])])
    assert np.all(loud[labels == VISEME_INDEX["sil"]][2:-2] < 0.01)
    assert np.all(loud[labels == VISEME_INDEX["aa"]][1:-1] > 0.2)
    with pytest.raises(ValueError, match="unknown recorded database 'nope'"):
        recorded.load_recording("nope", "ru_0001")


def test_holdout_prompts_never_train(fake_db: str) -> None:
    assert recorded.heldout_prompts(fake_db) == ("ru_0001",)
    assert recorded.training_prompts(fake_db) == ("ru_0002",)
    utts = recorded_utterances(np.random.default_rng(0), 5)
    assert len(utts) == 5 and {u.source for u in utts} == {"recorded"} and {u.voice for u in utts} == {fake_db}
    assert all(u.segments[0].viseme == "sil" for u in utts)


def test_recorded_fraction_mixes_in_recordings(fake_db: str, tmp_path: Path) -> None:
    require_shared(DEV_SPEECH / "noise")
    base = GenConfig(seed=3, shard_seconds=20.0, festival_fraction=0.0,
                     augment=replace(aug.AugmentConfig(), dev_speech=DEV_SPEECH))
    texts = {}
    for name, cfg in {"plain": base, "mixed": replace(base, recorded_fraction=0.7, recorded_dbs=(fake_db,))}.items():
        assert generate(cfg, tmp_path / name, minutes=1 / 3, jobs=1) == 1
        with np.load(tmp_path / name / "shard-00000.npz") as z:
            texts[name] = (z["source"].tolist(), z["voice"].tolist())
    assert set(texts["plain"][0]) == {"espeak"}
    sources, voices = texts["mixed"]
    assert "recorded" in sources
    assert {v for s, v in zip(sources, voices, strict=True) if s == "recorded"} == {fake_db}


def test_russian_phone_set_is_covered() -> None:
    scm = RU / "festvox" / "msu_ru_nsh_phoneset.scm"
    if not scm.is_file():
        pytest.skip("Debian festvox-ru is not installed")
    text = scm.read_text(encoding="utf-8")
    body = text[text.index("(pau") :text.index("(PhoneSet.silences")]
    phones = [ln.split(";")[0].strip().lstrip("(").split()[0] for ln in body.splitlines()
              if ln.split(";")[0].strip().startswith("(")]
    assert len(phones) == 51 and set(phones) == set(FESTIVAL_RUSSIAN)
    for p in phones:
        assert all(v in VISEMES for v in festival_to_visemes(p, "ru")), p
    assert festival_to_visemes("aa", "ru") == ("aa",) and festival_to_visemes("a", "ru") == ("E",)
    assert festival_to_visemes("zh", "ru") == ("CH",) and festival_to_visemes("vv", "ru") == ("FF",)
    with pytest.raises(KeyError, match="Russian"):
        festival_to_visemes("#", "ru")


def test_installed_russian_recordings_are_aligned() -> None:
    """Every lab phone of the real database lies inside its audio, and pauses are quieter than vowels."""
    if not recorded.prompt_names("ru-nsh"):
        pytest.skip("Debian festvox-ru is not installed")
    names = recorded.prompt_names("ru-nsh")
    assert len(names) > 600
    quiet: list[float] = []
    vowel: list[float] = []
    for name in names[::100]:
        rec = recorded.load_recording("ru-nsh", name)
        assert rec.phones[0][1] == 0 and rec.phones[-1][2] <= rec.audio.shape[0]
        for p, s, e in rec.phones:
            if e - s < 800:
                continue
            rms = float(np.sqrt(np.mean(rec.audio[s:e] ** 2)))
            if p == "pau":
                quiet.append(rms)
            elif p in ("aa", "oo", "ee", "ii", "uu"):
                vowel.append(rms)
    assert np.median(vowel) > 10 * np.median(quiet)
