"""Recorded human speech with phone times: the recordings a festvox unit-selection voice is built from.

A festvox clunits voice ships its whole recording session: ``wav/NAME.wav`` (the speaker reading
one prompt) and ``lab/NAME.lab`` (the prompt's phones, aligned when the voice was built, in
xlabel format: a ``#`` line, then one ``END_SECONDS COLOUR PHONE`` line per phone, each phone
starting where the previous one ends). Unlike everything else the corpus generator makes, this is
real speech: a person's voice source, coarticulation and room, not a synthesizer's.

Debian ships one such database, festvox-ru (``msu_ru_nsh_clunits``: 621 prompts, about 100
minutes of a Russian man reading fiction, 16 kHz, BSD-like licence). Its phone set
(``festvox/msu_ru_nsh_phoneset.scm``) maps to visemes through
:data:`engines.phonemes.FESTIVAL_RUSSIAN`.

Recordings that come with texts but no phone times are made into the same layout under
:data:`RECORDED_ROOT` by forced alignment (:mod:`engines.corpus.transcribed`): ``en-allison``,
Debian's Asterisk telephone prompts (US English, one woman), phones in lower-case ARPAbet.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, partial
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
from numpy.typing import NDArray
from scipy.signal import resample_poly

from engines.corpus.labels import Segment, aligned_segments
from engines.phonemes import festival_to_visemes
from engines.spec import SAMPLE_RATE

RECORDED_ROOT = Path(__file__).resolve().parents[2] / "data" / "recorded"  # databases made by forced alignment

# database name -> (folder holding wav/ and lab/, phone set for engines.phonemes.festival_to_visemes)
RECORDED_DBS: dict[str, tuple[Path, str]] = {
    "ru-nsh": (Path("/usr/share/festival/voices/russian/msu_ru_nsh_clunits"), "ru"),
    "en-allison": (RECORDED_ROOT / "en-allison", "en-us"),  # python -m engines.corpus.transcribed
}


class LabelError(ValueError):
    """A .lab file that is not an xlabel phone list."""


@dataclass(frozen=True)
class Recording:
    """One prompt of a recorded database: ``audio`` (n,) float32 at 16 kHz, phones in samples."""

    name: str
    db: str
    lang: str
    audio: NDArray[np.float32]
    phones: list[tuple[str, int, int]]  # (phone, start sample, end sample), contiguous from 0
    text: str


def read_lab(path: Path, rate: int = SAMPLE_RATE) -> list[tuple[str, int, int]]:
    """xlabel phone ends (s) -> contiguous (phone, start, end) in samples at ``rate`` Hz.

    Raises :class:`LabelError` naming the file and line for anything else (times that go back,
    lines without three fields, no header).
    """
    lines = path.read_text(encoding="utf-8", errors="strict").splitlines()
    try:
        body = lines.index("#") + 1
    except ValueError:
        raise LabelError(f"{path}: no '#' header line") from None
    out: list[tuple[str, int, int]] = []
    prev = 0
    for no, line in enumerate(lines[body:], start=body + 1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 3:
            raise LabelError(f"{path}:{no}: expected 'END COLOUR PHONE', got {line!r}")
        try:
            end = round(float(fields[0]) * rate)
        except ValueError:
            raise LabelError(f"{path}:{no}: end time {fields[0]!r} is not a number") from None
        if end < prev:
            raise LabelError(f"{path}:{no}: end {fields[0]} s is before the previous phone's end")
        out.append((fields[2], prev, end))
        prev = end
    if not out:
        raise LabelError(f"{path}: no phones")
    return out


@cache
def _prompts(folder: Path) -> dict[str, str]:
    """``etc/txt.done.data`` -> {prompt name: text} (empty when the file is absent)."""
    path = folder / "etc" / "txt.done.data"
    if not path.exists():
        return {}
    out = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if line.startswith("(") and '"' in line:
            name = line[1:].split()[0]
            out[name] = line.split('"', 1)[1].rsplit('"', 1)[0]
    return out


@cache
def prompt_names(db: str) -> tuple[str, ...]:
    """Sorted names of ``db``'s prompts that have both a wav and a lab file (() if not installed)."""
    folder, _ = _db(db)
    wavs = {p.stem for p in (folder / "wav").glob("*.wav")}
    labs = {p.stem for p in (folder / "lab").glob("*.lab")}
    return tuple(sorted(wavs & labs))


def available_dbs() -> list[str]:
    """The recorded databases installed on this machine."""
    return [db for db in RECORDED_DBS if prompt_names(db)]


def _db(db: str) -> tuple[Path, str]:
    if db not in RECORDED_DBS:
        raise ValueError(f"unknown recorded database {db!r}; known: {sorted(RECORDED_DBS)}")
    return RECORDED_DBS[db]


def load_recording(db: str, name: str) -> Recording:
    """Prompt ``name`` of ``db``: 16 kHz mono audio and its phones, the last phone clipped to the audio."""
    folder, lang = _db(db)
    audio, rate = sf.read(folder / "wav" / f"{name}.wav", dtype="float32", always_2d=True)
    x = audio.mean(axis=1)
    if rate != SAMPLE_RATE:
        g = gcd(int(rate), SAMPLE_RATE)
        x = resample_poly(x, SAMPLE_RATE // g, int(rate) // g).astype(np.float32)
    phones = read_lab(folder / "lab" / f"{name}.lab")
    n = x.shape[0]
    phones = [(p, min(s, n), min(e, n)) for p, s, e in phones if s < n]
    if not phones:
        raise LabelError(f"{folder / 'lab' / name}.lab: every phone lies past the audio's {n} samples")
    return Recording(name, db, lang, np.ascontiguousarray(x, np.float32), phones, _prompts(folder).get(name, ""))


def viseme_segments(rec: Recording) -> list[Segment]:
    """``rec``'s phones as viseme segments (its phone set via festival_to_visemes, closures attached)."""
    return aligned_segments(rec.phones, rec.audio, partial(festival_to_visemes, lang=rec.lang))


HOLDOUT_EVERY = 20  # every 20th prompt (sorted by name, from the first) never trains: a check on unseen prompts


def training_prompts(db: str) -> tuple[str, ...]:
    """``db``'s prompts the corpus generator may use (all but every ``HOLDOUT_EVERY``-th)."""
    return tuple(n for i, n in enumerate(prompt_names(db)) if i % HOLDOUT_EVERY)


def heldout_prompts(db: str) -> tuple[str, ...]:
    """``db``'s prompts kept out of every training corpus."""
    return prompt_names(db)[::HOLDOUT_EVERY]
