"""Transcribed human recordings -> a recorded database (wav/, lab/, etc/) by forced alignment.

    python -m engines.corpus.transcribed --source en-allison [--out DIR]

Some recordings come with their text but no phone times. This aligns each one with pocketsphinx's
en-us model (:func:`engines.realdata.pocketsphinx_align`, the same aligner that times the real
evaluation recordings) and writes the layout :mod:`engines.corpus.recorded` reads: ``wav/NAME.wav``
(16 kHz mono), ``lab/NAME.lab`` (xlabel: phone end times in seconds, lower-case ARPAbet, ``pau``
for silence) and ``etc/txt.done.data`` (the texts). The corpus generator then mixes it in like any
recorded database (``--recorded-dbs``).

One source so far, :data:`ASTERISK_EN`: Debian's asterisk-core-sounds-en(-g722), the Asterisk
telephone prompts read by Allison Smith (US English, one woman, CC-BY-SA 3.0): 569 prompts, about
25 minutes, G.722-coded at 16 kHz, texts in ``core-sounds-en.txt``. Prompts whose text cannot be
spoken unambiguously (multi-digit numbers, words pocketsphinx's dictionary lacks, bracketed
non-speech like ``[beep]``) are skipped, and counted.
"""

from __future__ import annotations

import argparse
import gzip
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import soundfile as sf
from numpy.typing import NDArray

from engines.audio import decode_audio
from engines.corpus.recorded import RECORDED_ROOT
from engines.realdata import SILENT_PHONES, pocketsphinx_align
from engines.spec import SAMPLE_RATE


@dataclass(frozen=True)
class TranscribedSource:
    """Recordings with texts: ``audio_dir/NAME.EXT`` (NAME may hold ``/``) and a ``NAME: text`` list."""

    name: str
    audio_dir: Path
    ext: str  # audio file extension
    transcript: Path  # "name: text" lines, ';' comments; .gz allowed
    debian_packages: tuple[str, ...]
    container: str | None = None  # PyAV format for raw codec streams that have no header ("g722")


ASTERISK_EN = TranscribedSource(
    name="en-allison",
    audio_dir=Path("/usr/share/asterisk/sounds/en_US_f_Allison"),
    ext="g722",
    transcript=Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"),
    debian_packages=("asterisk-core-sounds-en-g722", "asterisk-core-sounds-en"),
    container="g722",
)
SOURCES: dict[str, TranscribedSource] = {ASTERISK_EN.name: ASTERISK_EN}

_DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_SYMBOLS = {"#": " pound ", "*": " star ", "&": " and ", "%": " percent "}


def read_transcript(path: Path) -> dict[str, str]:
    """``name: text`` lines (``;`` comments, blank lines skipped; gzip when the name ends .gz) -> {name: text}."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    out = {}
    for no, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith(";"):
            continue
        name, sep, text = line.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"{path}:{no}: expected 'name: text', got {line!r}")
        out[name.strip()] = text.strip()
    return out


@cache
def cmu_words() -> frozenset[str]:
    """The words of pocketsphinx's en-us dictionary (alternate pronunciations folded)."""
    import pocketsphinx  # train extra

    path = Path(pocketsphinx.get_model_path()) / "en-us" / "cmudict-en-us.dict"
    with path.open(encoding="utf-8", errors="replace") as f:
        return frozenset(re.sub(r"\(\d+\)$", "", line.split(maxsplit=1)[0]) for line in f if line.strip())


def normalize_text(text: str, vocab: frozenset[str]) -> str | None:
    """A prompt's text -> lower-case words in ``vocab`` for the aligner, or None when it cannot be.

    Bracketed and parenthesized parts (``[beep]``, ``(simple tone sound plays)``) are dropped; single digits and ``# * & %`` are spoken
    as words; hyphens split words. None for multi-digit numbers ("500": five hundred or five oh
    oh?), words outside ``vocab``, or nothing left to say.
    """
    t = re.sub(r"\[[^\]]*\]|\([^)]*\)", " ", text).lower()
    if re.search(r"\d\s*[\d.,]\s*\d|\d\d", t):
        return None
    for sym, word in _SYMBOLS.items():
        t = t.replace(sym, word)
    t = re.sub(r"\d", lambda m: f" {_DIGITS[int(m.group())]} ", t)
    words = re.findall(r"[a-z]+(?:'[a-z]+)?", t.replace("-", " "))
    if not words or any(w not in vocab for w in words):
        return None
    return " ".join(words)


def lab_lines(phones: Sequence[tuple[str, int, int]], rate: int = SAMPLE_RATE) -> list[str]:
    """Aligned (ARPAbet or SIL/+NOISE+, start, end) samples -> xlabel lines (``#`` header, ends in s).

    Silences and noise tokens become ``pau``; a gap before a phone becomes ``pau`` too, so the
    phones stay contiguous from 0 as :func:`engines.corpus.recorded.read_lab` expects.
    """
    out = ["#"]
    prev = 0
    for name, start, end in phones:
        if start > prev:
            out.append(f"{start / rate:.5f} 125 pau")
        label = "pau" if name.upper() in SILENT_PHONES else name.lower()
        out.append(f"{end / rate:.5f} 125 {label}")
        prev = end
    return out


def file_name(prompt: str) -> str:
    """A prompt name (``digits/1``) as a flat file stem (``digits__1``)."""
    return prompt.replace("/", "__")


@dataclass
class PrepareReport:
    """What :func:`prepare` did: prompts written, and skipped by reason."""

    written: int = 0
    seconds: float = 0.0
    no_audio: int = 0
    unspeakable: int = 0  # text not alignable (see normalize_text)
    failed: int = 0  # pocketsphinx found no alignment
    implausible: int = 0  # aligned, but the speech phones are not louder than the pauses (see speech_contrast_db)


MIN_CONTRAST_DB = 10.0  # speech phones must be this much louder than the aligned pauses


def speech_contrast_db(audio: NDArray[np.float32], phones: Sequence[tuple[str, int, int]]) -> float:
    """Mean power of the aligned speech phones over that of the pauses, in dB (inf without pauses).

    A forced aligner always finds *some* alignment; one that puts the words on silence or noise
    shows here as a small contrast (a file of silence aligned to "one second of silence": ~0 dB).
    """
    speech: list[NDArray[np.float64]] = []
    pause: list[NDArray[np.float64]] = []
    for name, start, end in phones:
        seg = audio[start:end].astype(np.float64)
        if seg.size:
            (pause if name.upper() in SILENT_PHONES else speech).append(seg)
    if not speech:
        return float("-inf")
    p_speech = float(np.mean(np.concatenate(speech) ** 2)) + 1e-12
    if not pause:
        return float("inf")
    p_pause = float(np.mean(np.concatenate(pause) ** 2)) + 1e-12
    return 10.0 * float(np.log10(p_speech / p_pause))


def prepare(source: TranscribedSource, out: Path, limit: int | None = None, log: bool = True) -> PrepareReport:
    """Decode and align every prompt of ``source`` into ``out`` (wav/, lab/, etc/txt.done.data).

    Existing wav+lab pairs are kept (an interrupted run resumes). ``limit`` stops after that many
    prompts (tests). Raises FileNotFoundError naming the Debian packages when the source is absent.
    """
    if not source.transcript.is_file() or not source.audio_dir.is_dir():
        raise FileNotFoundError(
            f"{source.name}: {source.transcript} or {source.audio_dir} missing; "
            f"install the Debian packages {' '.join(source.debian_packages)}"
        )
    texts = read_transcript(source.transcript)
    vocab = cmu_words()
    for sub in ("wav", "lab", "etc"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rep = PrepareReport()
    done: list[tuple[str, str]] = []
    t0 = time.monotonic()
    for prompt in sorted(texts)[:limit]:
        audio_path = source.audio_dir / f"{prompt}.{source.ext}"
        if not audio_path.is_file():
            rep.no_audio += 1
            continue
        words = normalize_text(texts[prompt], vocab)
        if words is None:
            rep.unspeakable += 1
            continue
        stem = file_name(prompt)
        wav, lab = out / "wav" / f"{stem}.wav", out / "lab" / f"{stem}.lab"
        if not (wav.exists() and lab.exists()):
            audio = decode_audio(audio_path, source.container)
            try:
                phones = pocketsphinx_align(audio, words)
            except RuntimeError as exc:
                print(f"{source.name}/{prompt}: {exc}", file=sys.stderr, flush=True)
                rep.failed += 1
                continue
            contrast = speech_contrast_db(audio, phones)
            if contrast < MIN_CONTRAST_DB:
                print(f"{source.name}/{prompt}: speech only {contrast:.1f} dB above pauses, skipped", file=sys.stderr)
                rep.implausible += 1
                continue
            sf.write(wav, audio, SAMPLE_RATE, subtype="PCM_16")
            lab.write_text("\n".join(lab_lines(phones)) + "\n", encoding="utf-8")
        rep.written += 1
        rep.seconds += sf.info(wav).duration
        done.append((stem, words))
    with (out / "etc" / "txt.done.data").open("w", encoding="utf-8") as f:
        for stem, words in done:
            f.write(f'( {stem} "{words}" )\n')
    if log:
        print(
            f"{source.name}: {rep.written} prompts ({rep.seconds / 60:.1f} min) in {out}; skipped "
            f"{rep.unspeakable} unspeakable texts, {rep.no_audio} without audio, {rep.failed} unaligned, "
            f"{rep.implausible} implausibly aligned "
            f"({time.monotonic() - t0:.0f} s)",
            file=sys.stderr, flush=True,
        )
    return rep


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", choices=sorted(SOURCES), default=ASTERISK_EN.name)
    ap.add_argument("--out", type=Path, default=None, help=f"default: {RECORDED_ROOT}/SOURCE")
    args = ap.parse_args(argv)
    src = SOURCES[args.source]
    try:
        prepare(src, args.out or RECORDED_ROOT / src.name)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
