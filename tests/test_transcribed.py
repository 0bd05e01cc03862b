"""Transcribed recordings made into a recorded database by forced alignment (engines.corpus.transcribed)."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from engines.corpus import recorded, transcribed
from engines.corpus.generate import main as generate_main
from engines.corpus.generate import recorded_utterances
from engines.evaluate import recorded_sets
from engines.spec import SAMPLE_RATE

from .conftest import espeak_wav

VOCAB = frozenset("press one to mute or unmute the pound key please enter your number followed by".split())


@pytest.mark.parametrize(("text", "expected"), [
    ("Please press 1 to mute.", "please press one to mute"),
    ("Followed by the pound key.", "followed by the pound key"),
    ("press # or *-key", None),  # "star" and "key" fine, but "star" is not in VOCAB
    ("press #", "press pound"),
    ("at [@]", None),  # "at" not in VOCAB
    ("Enter your number. (simple tone sound plays)", "enter your number"),
    ("[this is a simple beep tone]", None),
    ("press 500", None),  # multi-digit: five hundred or five oh oh?
    ("press 28.8", None),
    ("unmute", "unmute"),
    ("unmuted", None),  # out of the dictionary
])
def test_normalize_text(text: str, expected: str | None) -> None:
    assert transcribed.normalize_text(text, VOCAB) == expected


def test_read_transcript(tmp_path: Path) -> None:
    p = tmp_path / "t.txt.gz"
    with gzip.open(p, "wt", encoding="utf-8") as f:
        f.write("; comment\n\nactivated: Activated.\ndigits/1: one\n")
    assert transcribed.read_transcript(p) == {"activated": "Activated.", "digits/1": "one"}
    bad = tmp_path / "bad.txt"
    bad.write_text("activated Activated.\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.txt:1: expected 'name: text'"):
        transcribed.read_transcript(bad)


def test_lab_lines_round_trip_through_read_lab(tmp_path: Path) -> None:
    phones = [("SIL", 0, 480), ("P", 480, 1120), ("AH", 1120, 2400), ("+NSN+", 2400, 2880), ("N", 3200, 4000)]
    p = tmp_path / "a.lab"
    p.write_text("\n".join(transcribed.lab_lines(phones)) + "\n", encoding="utf-8")
    assert recorded.read_lab(p) == [
        ("pau", 0, 480), ("p", 480, 1120), ("ah", 1120, 2400), ("pau", 2400, 2880), ("pau", 2880, 3200), ("n", 3200, 4000),
    ]


def test_speech_contrast_flags_words_aligned_on_silence() -> None:
    rng = np.random.default_rng(0)
    speech = (0.3 * np.sin(2 * np.pi * 200 * np.arange(8000) / SAMPLE_RATE)).astype(np.float32)
    floor = (1e-3 * rng.standard_normal(4000)).astype(np.float32)
    audio = np.concatenate([floor, speech, floor])
    good = [("SIL", 0, 4000), ("AA", 4000, 12000), ("SIL", 12000, 16000)]
    assert transcribed.speech_contrast_db(audio, good) > 40
    silent = np.concatenate([floor, floor, floor, floor])
    assert abs(transcribed.speech_contrast_db(silent, good)) < 3
    assert transcribed.speech_contrast_db(audio, [("AA", 0, 16000)]) == float("inf")


def _g722(path: Path, audio: np.ndarray) -> None:
    """Write 16 kHz float audio as a raw G.722 file (the Asterisk prompts' format)."""
    with av.open(str(path), "w", format="g722") as out:
        stream = out.add_stream("g722", rate=SAMPLE_RATE, layout="mono")
        pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
        for i in range(0, pcm.shape[0], 1600):
            frame = av.AudioFrame.from_ndarray(pcm[None, i:i + 1600], format="s16", layout="mono")
            frame.sample_rate = SAMPLE_RATE
            for pkt in stream.encode(frame):
                out.mux(pkt)
        for pkt in stream.encode(None):
            out.mux(pkt)


@pytest.fixture
def fake_source(tmp_path: Path) -> transcribed.TranscribedSource:
    """Two G.722 prompts of espeak-ng speech, a prompt of silence, a text without audio, a beep."""
    audio_dir = tmp_path / "sounds"
    (audio_dir / "sub").mkdir(parents=True)
    x = transcribed.decode_audio(espeak_wav(tmp_path / "a.wav", "Hello there, how are you today?"))
    pad = np.zeros(SAMPLE_RATE // 4, np.float32)
    _g722(audio_dir / "hello.g722", np.concatenate([pad, x, pad]))
    y = transcribed.decode_audio(espeak_wav(tmp_path / "b.wav", "Please enter your number."))
    _g722(audio_dir / "sub" / "enter.g722", np.concatenate([pad, y, pad]))
    _g722(audio_dir / "quiet.g722", np.zeros(SAMPLE_RATE, np.float32))
    _g722(audio_dir / "beep.g722", 0.3 * np.sin(np.arange(SAMPLE_RATE) / 3.0).astype(np.float32))
    text = tmp_path / "sounds.txt"
    text.write_text(
        "hello: Hello there, how are you today?\nsub/enter: Please enter your number.\n"
        "quiet: one second\nmissing: Not recorded.\nbeep: [a beep]\n", encoding="utf-8",
    )
    return transcribed.TranscribedSource("fake-en", audio_dir, "g722", text, ("fake-package",), "g722")


@pytest.fixture
def prepared(fake_source: transcribed.TranscribedSource, tmp_path: Path,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, transcribed.PrepareReport]]:
    out = tmp_path / "db"
    rep = transcribed.prepare(fake_source, out, log=False)
    monkeypatch.setattr(recorded, "RECORDED_DBS", {"fake-en": (out, "en-us")})
    recorded.prompt_names.cache_clear()
    yield "fake-en", rep
    recorded.prompt_names.cache_clear()


def test_prepare_aligns_speech_and_skips_what_it_cannot(prepared: tuple[str, transcribed.PrepareReport]) -> None:
    db, rep = prepared
    assert (rep.written, rep.no_audio, rep.unspeakable) == (2, 1, 1), rep
    assert rep.failed + rep.implausible == 1  # the silent prompt never becomes training data
    assert recorded.prompt_names(db) == ("hello", "sub__enter")
    rec = recorded.load_recording(db, "sub__enter")
    assert rec.text == "please enter your number" and rec.lang == "en-us"
    names = [p for p, _, _ in rec.phones]
    assert names[0] == "pau" and "n" in names and "m" in names
    # the words sit on the speech: the padding stays silence
    first_speech = next(s for p, s, _ in rec.phones if p != "pau")
    assert first_speech >= SAMPLE_RATE // 4 - 800
    rms = {p: float(np.sqrt(np.mean(rec.audio[s:e] ** 2))) for p, s, e in rec.phones if e - s > 400}
    assert rms["pau"] < 0.1 * max(rms.values())
    wav = sf.info(recorded.RECORDED_DBS[db][0] / "wav" / "hello.wav")
    assert wav.samplerate == SAMPLE_RATE and wav.channels == 1


def test_prepared_database_feeds_the_generator_and_evaluation(prepared: tuple[str, transcribed.PrepareReport]) -> None:
    db, _ = prepared
    utts = recorded_utterances(np.random.default_rng(1), 4, [db])
    assert {u.voice for u in utts} == {db} and {u.lang for u in utts} == {"en-us"}
    assert all(any(s.viseme != "sil" for s in u.segments) for u in utts)
    sets = recorded_sets()
    assert list(sets) == [f"recorded_heldout_{db}"]
    (item,) = sets[f"recorded_heldout_{db}"]  # every 20th prompt from the first: "hello"
    assert item.name == f"{db}/hello" and item.labels.shape[0] == item.audio.shape[0] // 160


def test_generate_names_unavailable_databases(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        generate_main(["--out", str(tmp_path), "--minutes", "1", "--recorded-fraction", "1",
                       "--recorded-dbs", "no-such-db"])
    assert "--recorded-dbs: not available: no-such-db" in capsys.readouterr().err


def test_prepare_names_missing_packages(tmp_path: Path) -> None:
    src = transcribed.TranscribedSource("absent", tmp_path / "none", "g722", tmp_path / "none.txt", ("pkg-a", "pkg-b"))
    with pytest.raises(FileNotFoundError, match="install the Debian packages pkg-a pkg-b"):
        transcribed.prepare(src, tmp_path / "out")


def test_real_asterisk_prompts_align(tmp_path: Path) -> None:
    """The first prompts of Debian's asterisk-core-sounds-en-g722 align, with their words on the speech."""
    src = transcribed.ASTERISK_EN
    if not (src.audio_dir.is_dir() and src.transcript.is_file()):
        pytest.skip(f"Debian {' '.join(src.debian_packages)} not installed")
    rep = transcribed.prepare(src, tmp_path, limit=12, log=False)
    assert rep.written >= 9, rep
    speech: list[float] = []  # per-hop level (dB re full scale) inside word phones
    pause: list[float] = []  # and inside the aligned pauses
    for lab in sorted((tmp_path / "lab").glob("*.lab")):
        x, sr = sf.read(tmp_path / "wav" / f"{lab.stem}.wav", dtype="float32")
        phones = recorded.read_lab(lab)
        assert sr == SAMPLE_RATE and phones[-1][2] <= x.shape[0] + 160
        for p, s, e in phones:
            for t in range(s // 160, min(e, x.shape[0]) // 160):
                level = 10 * np.log10(np.mean(x[t * 160:(t + 1) * 160] ** 2) + 1e-12)
                (pause if p == "pau" else speech).append(level)
    # measured on the whole database: 94 % of word hops above -40 dBFS, 95 % of pause hops below
    assert np.mean(np.array(speech) > -40) > 0.85 and np.mean(np.array(pause) < -40) > 0.85
