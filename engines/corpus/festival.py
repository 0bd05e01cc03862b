"""Festival speech with phone times: English, Italian, Czech and Finnish voices (FESTIVAL_VOICES).

One ``festival -b`` process synthesizes a batch of utterances from a generated Scheme script:
each utterance's wave is saved and its Segment relation printed (phone name and ``end`` time in
seconds). A phone starts where the previous one ends (the first at 0). Audio is resampled to
16 kHz (the voices run at 16-44.1 kHz) and times converted to samples. Each utterance's text is
written in the encoding its language's front end reads (LANG_ENCODING).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from engines.corpus.espeak import Phone, Synthesis
from engines.spec import SAMPLE_RATE

# voice name -> the Scheme call that selects it
FESTIVAL_VOICES: dict[str, str] = {
    "kal_diphone": "(voice_kal_diphone)",
    "ked_diphone": "(voice_ked_diphone)",  # Debian festvox-kdlpc16k (optional)
    "us-slt-hts": "(voice_cmu_us_slt_arctic_hts)",
    "it-lp_diphone": "(voice_lp_diphone)",  # Debian festvox-italp16k (optional)
    "it-pc_diphone": "(voice_pc_diphone)",  # Debian festvox-itapc16k (optional)
    # Czech (Debian festival-czech + festvox-czech-*): diphone voices of four real speakers
    "cs-dita": "(voice_czech_dita)",  # adult female
    "cs-krb": "(voice_czech_krb)",  # child (male)
    "cs-machac": "(voice_czech_machac)",  # adult male
    "cs-ph": "(voice_czech_ph)",  # adult male
    # Finnish (Debian festvox-suopuhe-lj): a diphone voice. (festvox-suopuhe-mv is left out: its
    # speech has almost no energy above 2 kHz, an "s" without its hiss.)
    "fi-lj": "(voice_suo_fi_lj_diphone)",  # female
}
# voice name -> language of its text and phone set
VOICE_LANG: dict[str, str] = {
    "kal_diphone": "en-us", "ked_diphone": "en-us", "us-slt-hts": "en-us",
    "it-lp_diphone": "it", "it-pc_diphone": "it",
    "cs-dita": "cs", "cs-krb": "cs", "cs-machac": "cs", "cs-ph": "cs", "fi-lj": "fi",
}
# language -> the text encoding its festival front end reads (festival-czech: ISO 8859-2)
LANG_ENCODING: dict[str, str] = {"en-us": "ascii", "it": "latin-1", "fi": "latin-1", "cs": "iso-8859-2"}
# voice name -> its folder under /usr/share/festival/voices/<language>/
_VOICE_DIRS: dict[str, str] = {
    "kal_diphone": "kal_diphone", "ked_diphone": "ked_diphone", "us-slt-hts": "cmu_us_slt_arctic_hts",
    "it-lp_diphone": "lp_diphone", "it-pc_diphone": "pc_diphone",
    "cs-dita": "czech_dita", "cs-krb": "czech_krb", "cs-machac": "czech_machac", "cs-ph": "czech_ph",
    "fi-lj": "suo_fi_lj_diphone",
}
VOICES_ROOT = Path("/usr/share/festival/voices")
# Duration_Stretch is honoured by the diphone voices only (HTS keeps its own durations).
STRETCH_VOICES = frozenset(v for v in FESTIVAL_VOICES if v != "us-slt-hts")


def available_voices(root: Path = VOICES_ROOT) -> list[str]:
    """The voices of FESTIVAL_VOICES installed under ``root`` (sorted)."""
    return sorted(v for v, d in _VOICE_DIRS.items() if any(root.glob(f"*/{d}")))


class FestivalError(RuntimeError):
    """festival is missing, failed, or its output could not be parsed."""


@dataclass(frozen=True)
class FestivalRequest:
    """One utterance to synthesize: ``stretch`` > 1 slows speech (diphone voices, STRETCH_VOICES)."""

    text: str
    voice: str
    stretch: float = 1.0


def _scheme_string(text: str, encoding: str = "ascii") -> str:
    """Scheme string literal holding only what ``encoding`` (the voice's front end) can spell."""
    plain = text.encode(encoding, errors="ignore").decode(encoding)
    plain = re.sub(r"\s+", " ", plain).strip()
    return '"' + plain.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _script(requests: list[FestivalRequest], workdir: Path) -> bytes:
    """The batch's Scheme program; each line encoded as its voice's front end reads text."""
    lines: list[bytes] = []
    for i, req in enumerate(requests):
        if req.voice not in FESTIVAL_VOICES:
            raise ValueError(f"unknown festival voice {req.voice!r}; known: {sorted(FESTIVAL_VOICES)}")
        stretch = req.stretch if req.voice in STRETCH_VOICES else 1.0
        wav = workdir / f"{i}.wav"
        enc = LANG_ENCODING[VOICE_LANG[req.voice]]
        lines.append((
            f"(unwind-protect (begin {FESTIVAL_VOICES[req.voice]}"
            f" (Parameter.set 'Duration_Stretch {stretch:.3f})"
            f" (set! utt (Utterance Text {_scheme_string(req.text, enc)}))"
            f" (utt.synth utt)"
            f' (utt.save.wave utt "{wav}" \'riff)'
            f' (format t "UTT {i}\\n")'
            f" (mapcar (lambda (s) (format t \"SEG %s %f\\n\" (item.name s) (item.feat s \"end\")))"
            f" (utt.relation.items utt 'Segment)))"
            f' (format t "FAIL {i}\\n"))\n'
        ).encode(enc))
    return b"".join(lines)


def _to_16k(x: np.ndarray, sr: int) -> np.ndarray:
    if sr == SAMPLE_RATE:
        return x.astype(np.float32)
    g = gcd(SAMPLE_RATE, sr)
    return resample_poly(x, SAMPLE_RATE // g, sr // g).astype(np.float32)


def synth_batch(requests: list[FestivalRequest], timeout_s: float = 600.0) -> list[Synthesis | None]:
    """Synthesize ``requests`` in one festival process; None where festival failed on one."""
    exe = shutil.which("festival")
    if exe is None:
        raise FestivalError("festival is not installed (Debian festival, festvox-kallpc16k, festvox-us-slt-hts)")
    if not requests:
        return []
    with tempfile.TemporaryDirectory(prefix="festival-") as tmp:
        workdir = Path(tmp)
        script = workdir / "batch.scm"
        script.write_bytes(_script(requests, workdir))
        proc = subprocess.run(
            [exe, "-b", str(script)], capture_output=True, text=True, encoding="utf-8", errors="replace",
            timeout=timeout_s, check=False,
        )
        if proc.returncode != 0:
            raise FestivalError(f"festival exited {proc.returncode}: {proc.stderr[-500:]}")
        ends: dict[int, list[tuple[str, float]]] = {}
        current: int | None = None
        for line in proc.stdout.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == "UTT":
                current = int(parts[1])
                ends[current] = []
            elif len(parts) == 3 and parts[0] == "SEG" and current is not None:
                ends[current].append((parts[1], float(parts[2])))
        out: list[Synthesis | None] = []
        for i, req in enumerate(requests):
            wav = workdir / f"{i}.wav"
            if i not in ends or not wav.exists() or not ends[i]:
                out.append(None)
                continue
            x, sr = sf.read(wav, dtype="float32", always_2d=True)
            audio = _to_16k(x.mean(axis=1), sr)
            phones: list[Phone] = []
            prev = 0
            for name, end_s in ends[i]:
                end = min(int(round(end_s * SAMPLE_RATE)), audio.shape[0])
                phones.append(Phone(name, prev, max(end, prev)))
                prev = max(end, prev)
            out.append(Synthesis(audio, SAMPLE_RATE, phones, req.voice, VOICE_LANG[req.voice], req.text))
        return out
