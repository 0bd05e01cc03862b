"""Real evaluation recordings (shared dev-speech set) with per-hop viseme labels.

Two sets, kept apart:

* :func:`load_reference_set` - the 8 utterances of ``ASR_train.json`` (spk{1,2}_snt{1..4}) with
  human phone boundaries (``ground_truth_phn_ends``: the end sample of each phone at 16 kHz).
* :func:`load_aligned_set` - snt5 of both speakers (``ASR_dev.json``: phones, no boundaries),
  force-aligned with pocketsphinx's en-us model. The words fields of the JSON are sometimes
  wrong, so the texts in :data:`ALIGN_TEXTS` were read off the phone strings; the aligned
  phones are checked against the given phone string (:func:`phone_agreement`). pocketsphinx
  gives the times; what was said (schwa ``ax`` or ``ah``, "thee" or "the") comes from the
  annotated phone string (:func:`human_phone_identities`).

CAUTION (measured, see docs/phoneme-visemes.md): the ``ground_truth_phn_ends`` of the reference
set do not match the audio. Hops the reference labels SS/CH have almost no energy above 4 kHz
(mean share 0.00-0.27 per utterance) while pocketsphinx's SS/CH hops have 0.33-0.83; a "dh" lies
over 170 ms of digital silence; no affine time map repairs them. Prefer
``load_aligned_set(names=ALL_NAMES)`` (all 10 utterances force-aligned) for evaluation.

Labels follow the corpus convention (:mod:`engines.corpus.labels`): hop ``t`` gets the viseme of
the phone covering sample ``t*160 + 80``; TIMIT closures take the following stop's viseme.
The data root defaults to ``<repo>/../shared/data/dev-speech``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from numpy.typing import NDArray

from engines.corpus.labels import Segment, segments_to_labels, split_phone
from engines.phonemes import arpabet_to_visemes, timit_sequence_to_visemes, timit_to_visemes
from engines.spec import HOP_LENGTH, SAMPLE_RATE

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "dev-speech"

# Sentences read off the phone strings (the JSON's word fields are sometimes wrong).
ALIGN_TEXTS: dict[str, str] = {
    "spk1_snt1": "the child almost hurt the small dog",
    "spk1_snt2": "drop the two when you add the figures",
    "spk1_snt3": "at that high level the air is pure",
    "spk1_snt4": "a thin stripe runs down the middle",
    "spk2_snt1": "we are sure that one war is enough",
    "spk2_snt2": "what joy there is in living",
    "spk2_snt3": "tear a thin sheet from the yellow pad",
    "spk2_snt4": "mend the coat before you go out",
    "spk1_snt5": "sunday is the best part of the week",
    "spk2_snt5": "jump the fence and hurry up the bank",
}
ALIGNED_NAMES: tuple[str, ...] = ("spk1_snt5", "spk2_snt5")
ALL_NAMES: tuple[str, ...] = tuple(ALIGN_TEXTS)  # every utterance with a phone string


@dataclass
class RealUtterance:
    """A real recording: ``audio`` (n,) float32 at 16 kHz, ``labels`` (n // 160,) int8 visemes.

    ``phones`` are (name, start, end) in samples; ``segments`` the viseme segments behind the
    labels; ``source`` says where the boundaries come from ("human" or "pocketsphinx");
    ``said[k]``, where given, is the annotated phone that ``phones[k]`` stands for (None where
    the alignment pairs none: :func:`human_phone_identities`).
    """

    name: str
    audio: NDArray[np.float32]
    labels: NDArray[np.int8]
    phones: list[tuple[str, int, int]]
    segments: list[Segment]
    text: str
    source: str
    said: list[str | None] | None = None


def _read_json(root: Path, name: str) -> dict[str, dict[str, object]]:
    path = root / name
    if not path.is_file():
        raise FileNotFoundError(f"dev-speech file {path} not found (root {root})")
    with path.open() as f:
        data: dict[str, dict[str, object]] = json.load(f)
    return data


def _wav_path(root: Path, entry: dict[str, object]) -> Path:
    wav = str(entry["wav"])
    return Path(wav.replace("{data_root}", str(root / "audio")))


def read_audio(path: Path) -> NDArray[np.float32]:
    """A 16 kHz WAV -> (n,) float32 mono in [-1, 1]."""
    x, sr = sf.read(path, dtype="float32", always_2d=True)
    if sr != SAMPLE_RATE:
        raise ValueError(f"{path}: sample rate {sr}, expected {SAMPLE_RATE}")
    return x.mean(axis=1).astype(np.float32)


def timit_segments(phones: list[tuple[str, int, int]]) -> list[Segment]:
    """TIMIT phones with times -> viseme segments (closures take the following stop's viseme)."""
    vis = timit_sequence_to_visemes([p[0] for p in phones])
    out: list[Segment] = []
    for (_, start, end), v in zip(phones, vis, strict=True):
        out.extend(split_phone(start, end, v))
    return out


def load_reference_set(root: Path | str = DEFAULT_ROOT) -> list[RealUtterance]:
    """The 8 utterances with human phone boundaries (ASR_train.json), sorted by name."""
    root = Path(root)
    data = _read_json(root, "ASR_train.json")
    out = []
    for name in sorted(data):
        entry = data[name]
        audio = read_audio(_wav_path(root, entry))
        names = str(entry["phn"]).split()
        ends = [int(e) for e in str(entry["ground_truth_phn_ends"]).split()]
        if len(names) != len(ends):
            raise ValueError(f"{name}: {len(names)} phones but {len(ends)} phone ends")
        if any(b < a for a, b in zip(ends, ends[1:], strict=False)):
            raise ValueError(f"{name}: phone ends are not monotonic")
        starts = [0, *ends[:-1]]
        phones = list(zip(names, starts, ends, strict=True))
        segs = timit_segments(phones)
        labels = segments_to_labels(segs, audio.shape[0])
        out.append(RealUtterance(name, audio, labels, phones, segs, ALIGN_TEXTS.get(name, ""), "human"))
    return out


def pocketsphinx_align(audio: NDArray[np.float32], text: str) -> list[tuple[str, int, int]]:
    """Forced phone alignment -> (ARPAbet phone or "SIL", start, end) in samples at 16 kHz.

    Two passes, as pocketsphinx's API wants: word alignment of ``<sil> text <sil>``
    (``set_align_text``), then phone alignment (``set_alignment``). Frames are 10 ms; a phone
    over frames [s, s+d) covers samples [s*160, (s+d)*160).
    """
    import pocketsphinx  # optional dependency (train extra)

    pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16).tobytes()
    dec = pocketsphinx.Decoder(samprate=SAMPLE_RATE, loglevel="FATAL")
    dec.set_align_text(f"<sil> {text} <sil>")
    dec.start_utt()
    dec.process_raw(pcm, full_utt=True)
    dec.end_utt()
    if dec.hyp() is None:
        raise RuntimeError(f"pocketsphinx could not align {text!r}")
    dec.set_alignment()
    dec.start_utt()
    dec.process_raw(pcm, full_utt=True)
    dec.end_utt()
    al = dec.get_alignment()
    if al is None:
        raise RuntimeError(f"pocketsphinx gave no phone alignment for {text!r}")
    phones: list[tuple[str, int, int]] = []
    for word in al:
        for ph in word:
            start = int(ph.start) * HOP_LENGTH
            phones.append((str(ph.name), start, start + int(ph.duration) * HOP_LENGTH))
    return phones


# TIMIT phones -> the ARPAbet phone pocketsphinx would use (closures and silences dropped).
_TIMIT_TO_CMU = {"ax": "AH", "dx": "T", "ix": "IH", "axr": "ER", "el": "L", "en": "N", "nx": "N", "ux": "UW"}
_DROP = {"cl", "vcl", "pcl", "bcl", "tcl", "dcl", "kcl", "gcl", "sil", "h#", "pau", "epi"}


_LOOSE_SAME: frozenset[frozenset[str]] = frozenset(
    frozenset(pair)
    for pair in (("D", "T"), ("ER", "R"), ("IH", "IY"), ("AH", "IH"), ("AH", "AE"), ("AH", "EH"))
)
_VOWELS = frozenset("AA AE AH AO AW AY EH ER EY IH IY OW OY UH UW".split())
SILENT_PHONES = ("SIL", "+SPN+", "+NSN+")  # pocketsphinx en-us silence and filler phones (its noisedict)


def _loose_eq(x: str, y: str) -> bool:
    return x == y or frozenset({x, y}) in _LOOSE_SAME


def _edit_alignment(a: list[str], b: list[str]) -> tuple[int, dict[int, int]]:
    """Levenshtein distance of ``a`` and ``b`` (``_loose_eq`` matches cost 0) and one optimal
    alignment's paired positions ``{j in b: i in a}`` (matches and substitutions)."""
    d = np.zeros((len(a) + 1, len(b) + 1), np.int32)
    d[:, 0] = np.arange(len(a) + 1)
    d[0, :] = np.arange(len(b) + 1)
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i, j] = min(d[i - 1, j] + 1, d[i, j - 1] + 1, d[i - 1, j - 1] + (0 if _loose_eq(a[i - 1], b[j - 1]) else 1))
    pairs: dict[int, int] = {}
    i, j = len(a), len(b)
    while i > 0 and j > 0:
        if d[i, j] == d[i - 1, j - 1] + (0 if _loose_eq(a[i - 1], b[j - 1]) else 1):
            pairs[j - 1] = i - 1
            i, j = i - 1, j - 1
        elif d[i, j] == d[i - 1, j] + 1:
            i -= 1
        else:
            j -= 1
    return int(d[len(a), len(b)]), pairs


def _timit_as_cmu(timit: list[str]) -> list[str]:
    return [_TIMIT_TO_CMU.get(p, p.upper()) for p in timit if p not in _DROP]


def phone_agreement(timit: list[str], cmu: list[str]) -> float:
    """Fraction of the TIMIT phones (closures/silences dropped) matched in the aligned phones.

    1 - (edit distance / number of TIMIT phones), computed on ARPAbet symbols (``ax`` as AH,
    ``dx`` as T; D and T count as equal, as do ER/R and IH/IY/AH for reduced vowels).
    """
    a = _timit_as_cmu(timit)
    b = [p.upper() for p in cmu if p.upper() not in SILENT_PHONES]
    dist, _ = _edit_alignment(a, b)
    return 1.0 - float(dist) / max(len(a), 1)


def human_phone_identities(timit: list[str], phones: list[tuple[str, int, int]]) -> list[str | None]:
    """For each aligned phone, the human-annotated TIMIT phone it stands for, or None.

    pocketsphinx's dictionary has no stress, so it writes every schwa as ``AH`` (and "the" as
    ``DH AH`` however it was said); the dev-speech phone strings say what was spoken (``ax``
    schwa, ``ah``, ``iy`` in "thee"). The two sequences are edit-aligned; a pair counts when the
    phones match loosely or both are vowels. Closures, silences and unpaired phones get None.
    """
    pos = [k for k, (p, _, _) in enumerate(phones) if p.upper() not in SILENT_PHONES]
    kept = [p for p in timit if p not in _DROP]
    a = _timit_as_cmu(kept)  # position i of ``a`` is the ARPAbet spelling of ``kept[i]``
    b = [phones[k][0].upper() for k in pos]
    _, pairs = _edit_alignment(a, b)
    out: list[str | None] = [None] * len(phones)
    for j, i in pairs.items():
        if _loose_eq(a[i], b[j]) or (a[i] in _VOWELS and b[j] in _VOWELS):
            out[pos[j]] = kept[i]
    return out


def cmu_segments(phones: list[tuple[str, int, int]], human: list[str | None] | None = None) -> list[Segment]:
    """pocketsphinx phones (ARPAbet upper case, SIL) -> viseme segments.

    ``human`` (from :func:`human_phone_identities`) replaces a phone's identity by the annotated
    TIMIT phone where one is given; the times stay pocketsphinx's.
    """
    out: list[Segment] = []
    for k, (name, start, end) in enumerate(phones):
        said = human[k] if human is not None else None
        if said is not None:
            vis = timit_to_visemes(said)
        elif name.upper() in SILENT_PHONES:
            vis = ("sil",)
        else:
            vis = arpabet_to_visemes(name)
        out.extend(split_phone(start, end, vis))
    return out


def load_aligned_set(
    root: Path | str = DEFAULT_ROOT, names: tuple[str, ...] = ALIGNED_NAMES, human_phones: bool = True
) -> list[RealUtterance]:
    """snt5 of both speakers (or ``names`` from either JSON), pocketsphinx-aligned.

    Times come from pocketsphinx; with ``human_phones`` (the default) each phone's identity comes
    from the annotated phone string (:func:`human_phone_identities`), else from pocketsphinx's
    dictionary (the round-1 to round-3 reference, which labelled every schwa ``AH``).
    """
    root = Path(root)
    data = {**_read_json(root, "ASR_train.json"), **_read_json(root, "ASR_dev.json")}
    out = []
    for name in names:
        if name not in data:
            raise KeyError(f"utterance {name!r} not in dev-speech JSON files")
        entry = data[name]
        audio = read_audio(_wav_path(root, entry))
        text = ALIGN_TEXTS[name]
        phones = pocketsphinx_align(audio, text)
        human = human_phone_identities(str(entry["phn"]).split(), phones) if human_phones else None
        segs = cmu_segments(phones, human)
        labels = segments_to_labels(segs, audio.shape[0])
        source = "pocketsphinx times, annotated phones" if human_phones else "pocketsphinx"
        out.append(RealUtterance(name, audio, labels, phones, segs, text, source, human))
    return out
