"""Text to speak: Debian fortunes, word lists and random syllable strings, per language.

Everything is read from the Debian packages ``fortunes*`` (strfile databases: entries split on
lines holding a single ``%``) and ``w*`` word lists (/usr/share/dict). Choices are
deterministic from a ``numpy.random.Generator``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

FORTUNE_ROOT = Path("/usr/share/games/fortunes")
DICT_ROOT = Path("/usr/share/dict")

# English fortune files (top level of FORTUNE_ROOT); others are art, banners or other languages.
_EN_FORTUNES = (
    "fortunes", "wisdom", "humorists", "literature", "people", "platitudes", "politics",
    "science", "riddles", "songs-poems", "love", "men-women", "work", "food", "pets", "kids",
    "education", "law", "medicine", "magic", "miscellaneous", "news", "sports", "goedel",
    "startrek", "zippy", "computers", "linux", "tao", "cookie", "drugs", "ethnic",
    "definitions", "pratchett", "knghtbrd", "debian", "disclaimer", "luke", "men-women",
)
# language (espeak code prefix) -> fortune files or directories (relative to FORTUNE_ROOT)
FORTUNES_BY_LANG: dict[str, tuple[str, ...]] = {
    "en": _EN_FORTUNES,
    "de": ("de",),
    "it": ("it",),
    "es": ("es",),
    "cs": ("cs",),
    "sk": ("sk",),
    "ru": ("ru",),
    "pl": ("pl",),
    "pt": ("brasil",),
    "la": ("paradoxum",),
}
# language -> word list in DICT_ROOT
WORDLISTS_BY_LANG: dict[str, str] = {
    "en": "american-english",
    "de": "ngerman",
    "fr": "french",
    "it": "italian",
    "es": "spanish",
    "nl": "dutch",
    "pl": "polish",
    "pt": "portuguese",
}

_ATTRIBUTION = re.compile(r"^\s*(--|―|—)")
_MAX_CHARS = 260
_LETTER = re.compile(r"[^\W\d_]")
_MAX_WORDS = 150_000


def _lang_key(lang: str) -> str:
    """espeak voice language (``en-us``, ``pt-br``) -> the key used in the tables above."""
    return lang.lower().split("-", 1)[0].split("+", 1)[0]


def _clean_fortune(entry: str) -> str | None:
    lines = [ln for ln in entry.splitlines() if ln.strip() and not _ATTRIBUTION.match(ln)]
    text = " ".join(ln.strip() for ln in lines)
    text = re.sub(r"\s+", " ", text).strip()
    if len(text) < 12:
        return None
    letters = len(_LETTER.findall(text))
    if letters < 0.6 * len(text):  # ascii art, code, tables
        return None
    if len(text) > _MAX_CHARS:
        cut = text.rfind(" ", 0, _MAX_CHARS)
        text = text[: cut if cut > 40 else _MAX_CHARS]
    return text


def read_strfile(path: Path) -> list[str]:
    """A fortune database (text, entries separated by ``%`` lines) -> cleaned entries."""
    raw = path.read_bytes().decode("utf-8", errors="replace")
    out = []
    for entry in re.split(r"^%\s*$", raw, flags=re.MULTILINE):
        cleaned = _clean_fortune(entry)
        if cleaned is not None:
            out.append(cleaned)
    return out


@cache
def fortunes(lang: str, root: Path = FORTUNE_ROOT) -> tuple[str, ...]:
    """All usable fortune entries for ``lang`` (empty when there are none)."""
    names = FORTUNES_BY_LANG.get(_lang_key(lang), ())
    files: list[Path] = []
    for name in names:
        p = root / name
        if p.is_dir():
            files.extend(sorted(f for f in p.iterdir() if f.is_file() and not f.suffix and not f.is_symlink()))
        elif p.is_file():
            files.append(p)
    out: list[str] = []
    for f in files:
        out.extend(read_strfile(f))
    return tuple(out)


@cache
def words(lang: str, root: Path = DICT_ROOT) -> tuple[str, ...]:
    """Words of the language's word list (no possessives, no all-caps abbreviations)."""
    name = WORDLISTS_BY_LANG.get(_lang_key(lang))
    if name is None or not (root / name).is_file():
        return ()
    raw = (root / name).read_bytes().decode("utf-8", errors="replace").split()
    stride = max(1, len(raw) // _MAX_WORDS)  # polish has 4 M inflected forms: keep memory small
    return tuple(w for w in raw[::stride] if "'" not in w and not w.isupper() and 1 < len(w) < 18)


_ONSETS = ("", "b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "sh", "ch",
           "th", "j", "w", "pl", "tr", "kr", "st", "br", "fl", "gr", "sp", "h")
_NUCLEI = ("a", "e", "i", "o", "u", "ai", "ou", "ee", "oo", "au", "ei", "ia")
_CODAS = ("", "", "", "n", "m", "s", "t", "k", "l", "r", "ng", "st", "p", "d", "f")


def syllables(rng: np.random.Generator, n_words: int) -> str:
    """Random pseudo-words of 1-4 syllables (Latin letters, read with the voice's rules)."""
    out = []
    for _ in range(n_words):
        k = int(rng.integers(1, 5))
        w = "".join(
            _ONSETS[rng.integers(len(_ONSETS))] + _NUCLEI[rng.integers(len(_NUCLEI))]
            + _CODAS[rng.integers(len(_CODAS))]
            for _ in range(k)
        )
        out.append(w)
    return " ".join(out)


@dataclass
class TextSource:
    """Picks texts for a language: fortunes, word strings or syllables with given weights."""

    fortune_weight: float = 0.55
    words_weight: float = 0.3
    syllable_weight: float = 0.15
    _kinds: tuple[str, ...] = field(default=("fortune", "words", "syllables"), init=False)

    def pick(self, lang: str, rng: np.random.Generator) -> tuple[str, str]:
        """-> (text, kind) for ``lang``; kinds without material for the language are skipped."""
        fort = fortunes(lang)
        wl = words(lang)
        weights = np.array([
            self.fortune_weight if fort else 0.0,
            self.words_weight if wl else 0.0,
            self.syllable_weight,
        ])
        kind = self._kinds[int(rng.choice(3, p=weights / weights.sum()))]
        if kind == "fortune":
            return fort[int(rng.integers(len(fort)))], kind
        if kind == "words":
            n = int(rng.integers(3, 14))
            picked = [wl[int(i)] for i in rng.integers(len(wl), size=n)]
            # Some punctuation so espeak inserts phrase pauses.
            text = ""
            for i, w in enumerate(picked):
                text += w
                text += rng.choice([" ", " ", " ", ", ", ". "]) if i + 1 < len(picked) else "."
            return text, kind
        return syllables(rng, int(rng.integers(2, 10))) + ".", kind
