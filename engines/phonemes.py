"""Phoneme -> viseme tables: ARPAbet, TIMIT-style phones and espeak-ng phoneme mnemonics.

Every mapping returns names from :data:`engines.spec.VISEMES` (the 15 Oculus/OVRLipSync visemes).
A phone is one or more visemes: diphthongs (and a few affricates such as German ``pf``) map to
two (or three) visemes that split the phone's duration evenly (``*_to_visemes``); the
``*_to_viseme`` functions return the first (the shape the mouth takes when the phone starts).

The reasoning behind each choice is in ``docs/phoneme-visemes.md``. Unknown phones raise
``KeyError`` naming the phone (never a silent guess).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from engines.spec import VISEME_INDEX, VISEMES

# --------------------------------------------------------------------------------------------
# ARPAbet (CMUdict, 39 phones; stress digits stripped) plus the extra TIMIT/Buckeye symbols.

ARPABET: Final[dict[str, tuple[str, ...]]] = {
    # vowels
    "AA": ("aa",),  # father, cot
    # æ and ʌ go with the mid-open E, not with ɑ's wide-open aa: Rhubarb draws AE and (short) AH
    # with its open shape C, AA alone with the wide-open D; Azure's visemes group æ ə ʌ apart
    # from ɑ as well. (Round 1 put both on aa, which scored every "cat"/"cup" as D.)
    "AE": ("E",),  # bat
    "AH": ("E",),  # cup (stressed ʌ), and CMUdict's unstressed schwa AH0
    "AO": ("O",),  # caught, thought: rounded open-mid
    "AW": ("aa", "U"),  # cow: open -> rounded
    "AY": ("aa", "I"),  # bite: open -> spread
    "EH": ("E",),  # bed
    "ER": ("RR",),  # bird: r-coloured, lips slightly protruded like r
    "EY": ("E", "I"),  # bait
    "IH": ("I",),  # bit
    "IY": ("I",),  # beet
    "OW": ("O", "U"),  # boat: rounding closes
    "OY": ("O", "I"),  # boy
    "UH": ("U",),  # book
    "UW": ("U",),  # boot
    # consonants
    "B": ("PP",),
    "P": ("PP",),
    "M": ("PP",),
    "F": ("FF",),
    "V": ("FF",),
    "TH": ("TH",),
    "DH": ("TH",),
    "T": ("DD",),
    "D": ("DD",),
    "K": ("kk",),
    "G": ("kk",),
    "NG": ("kk",),  # velar nasal: tongue back, jaw as for k/g
    "CH": ("CH",),
    "JH": ("CH",),
    "SH": ("CH",),
    "ZH": ("CH",),
    "S": ("SS",),
    "Z": ("SS",),
    "N": ("nn",),
    "L": ("nn",),  # Oculus groups l with n (tongue tip on the ridge, jaw half open)
    "R": ("RR",),
    "W": ("U",),  # rounded glide: lips as for u
    "Y": ("I",),  # palatal glide: lips as for i
    "HH": ("kk",),  # glottal fricative: no lip gesture; kk is the neutral half-open consonant shape
}

# TIMIT adds these to ARPAbet (lower-case in the corpus); closures are resolved by context.
_TIMIT_EXTRA: Final[dict[str, tuple[str, ...]]] = {
    "AX": ("E",),  # schwa: relaxed, half-open (less open than ʌ)
    "AX-H": ("E",),  # devoiced schwa
    "AXR": ("RR",),  # butter
    "IX": ("I",),  # roses
    "UX": ("U",),  # dude (fronted u, still rounded)
    "DX": ("DD",),  # flap: tongue tap on the ridge
    "NX": ("nn",),  # nasal flap
    "EL": ("nn",),  # syllabic l
    "EM": ("PP",),  # syllabic m
    "EN": ("nn",),  # syllabic n
    "ENG": ("kk",),  # syllabic ng
    "HV": ("kk",),  # voiced h
    "Q": ("kk",),  # glottal stop: no lip gesture
    # silences
    "H#": ("sil",),
    "PAU": ("sil",),
    "EPI": ("sil",),  # epenthetic silence
    "SIL": ("sil",),
    "SP": ("sil",),
}

# Closure symbols: silent, the lips already in place for the following stop (resolved from
# context by resolve_closures; alone they map to the stop they precede when the name says it).
TIMIT_CLOSURES: Final[dict[str, str | None]] = {
    "CL": None,  # unvoiced closure, stop given by the next phone
    "VCL": None,  # voiced closure
    "PCL": "P",
    "BCL": "B",
    "TCL": "T",
    "DCL": "D",
    "KCL": "K",
    "GCL": "G",
}

_STRESS_DIGITS: Final = "012"


def _norm_arpabet(phone: str) -> str:
    p = phone.strip().upper()
    if len(p) > 1 and p[-1] in _STRESS_DIGITS and p[:-1].isalpha():
        p = p[:-1]
    return p


def arpabet_to_visemes(phone: str) -> tuple[str, ...]:
    """ARPAbet phone (any case, stress digit optional) -> 1-2 visemes (diphthongs split)."""
    p = _norm_arpabet(phone)
    if p in ARPABET:
        return ARPABET[p]
    raise KeyError(f"unknown ARPAbet phone {phone!r}")


def arpabet_to_viseme(phone: str) -> str:
    """ARPAbet phone -> its first viseme (the whole phone unless a diphthong)."""
    return arpabet_to_visemes(phone)[0]


def timit_to_visemes(phone: str) -> tuple[str, ...]:
    """TIMIT-style phone (ARPAbet + closures, dx, ax, h#, pau, epi...) -> 1-2 visemes.

    A closure alone maps to its stop when its name says which (``pcl`` -> PP) and to ``sil``
    for the generic ``cl``/``vcl``; use :func:`timit_sequence_to_visemes` to give generic
    closures the viseme of the following stop.
    """
    p = _norm_arpabet(phone)
    if p in TIMIT_CLOSURES:
        stop = TIMIT_CLOSURES[p]
        return ARPABET[stop] if stop is not None else ("sil",)
    if p in _TIMIT_EXTRA:
        return _TIMIT_EXTRA[p]
    if p in ARPABET:
        return ARPABET[p]
    raise KeyError(f"unknown TIMIT phone {phone!r}")


def timit_to_viseme(phone: str) -> str:
    """TIMIT-style phone -> its first viseme."""
    return timit_to_visemes(phone)[0]


def timit_sequence_to_visemes(phones: Sequence[str]) -> list[tuple[str, ...]]:
    """A TIMIT phone sequence -> visemes per phone, closures taking the following stop's viseme.

    A generic closure (``cl``/``vcl``) followed by a non-stop (an unreleased final stop, as
    in "dog" + silence) keeps the viseme of the phone after it if that is a consonant, else of
    the phone before it, else ``sil``.
    """
    out = [timit_to_visemes(p) for p in phones]
    for i, p in enumerate(phones):
        norm = _norm_arpabet(p)
        if norm in TIMIT_CLOSURES and TIMIT_CLOSURES[norm] is None:
            nxt = _norm_arpabet(phones[i + 1]) if i + 1 < len(phones) else None
            if nxt is not None and nxt in ("P", "B", "T", "D", "K", "G", "CH", "JH"):
                out[i] = ARPABET[nxt][:1]
            else:
                # Unreleased stop: the lips hold the previous shape; closure into silence.
                out[i] = ("sil",)
    return out


# --------------------------------------------------------------------------------------------
# espeak-ng phoneme mnemonics (as reported in espeakEVENT_PHONEME: ASCII, Kirshenbaum-like).

# Pauses and silences.
_ESPEAK_PAUSES: Final = frozenset({"", "1", ":", "_", "_:", "_::", "_!", "_|", "||", "_;_", "_^_", "_X1", "#X1", "-", "!"})

# Consonants after stripping the modifiers in _ESPEAK_CONS_MODIFIERS.
_ESPEAK_CONSONANTS: Final[dict[str, tuple[str, ...]]] = {
    # bilabial
    "p": ("PP",), "b": ("PP",), "m": ("PP",), "P": ("PP",), "B": ("PP",), "p\\": ("PP",),
    "pF": ("PP", "FF"),  # German pf: lip closure then labiodental friction
    # labiodental
    "f": ("FF",), "v": ("FF",), "F": ("FF",),
    # dental fricatives
    "T": ("TH",), "D": ("TH",),
    # alveolar / dental / retroflex stops and the tap
    "t": ("DD",), "d": ("DD",), "ht": ("DD",), "dH": ("DD",), "th": ("DD",), "tl": ("DD",),
    # nasals and laterals (Oculus nn: n and l)
    "n": ("nn",), "l": ("nn",), "L": ("nn",), "K": ("nn",), "n^": ("nn",), "l^": ("nn",),
    "J^": ("nn",), "l/": ("nn",), "l#": ("nn",), "ll": ("nn",),
    # rhotics (trills, taps, approximants, uvular r)
    "r": ("RR",), "R": ("RR",), "*": ("RR",), "**": ("RR",), "r\"": ("RR",), "rR": ("RR",),
    "R^": ("RR",), "R^/": ("RR",), "Q": ("RR",), "Q\"": ("RR",), "Q^": ("RR",), "r*": ("RR",),
    "3-": ("RR",),  # syllabic r
    # alveolar sibilants and affricates ending in them
    "s": ("SS",), "z": ("SS",), "ss": ("SS",), "ts": ("SS",), "dz": ("SS",), "t_s": ("SS",),
    "tz": ("SS",), "hs": ("SS",), "C": ("SS",), "z/": ("SS",),
    # post-alveolar, alveolo-palatal and retroflex sibilants (lips protruded)
    "S": ("CH",), "Z": ("CH",), "tS": ("CH",), "dZ": ("CH",), "s\\": ("CH",), "z\\": ("CH",),
    "t_s\\": ("CH",), "d_z\\": ("CH",), "sx": ("CH",), "cr": ("CH",), "TS": ("CH",),
    "s.": ("CH",), "z.": ("CH",), "ts.": ("CH",), "dz.": ("CH",),  # retroflex (cmn sh zh ch r)
    # palatal, velar, uvular, pharyngeal and glottal consonants: no lip gesture
    "k": ("kk",), "g": ("kk",), "q": ("kk",), "x": ("kk",), "X": ("kk",), "G": ("kk",),
    "N": ("kk",), "N\\": ("kk",), "ng": ("kk",), "h": ("kk",), "H": ("kk",), "?": ("kk",), "c": ("kk",),
    "J": ("kk",), "gH": ("kk",), "ky": ("kk",), "<h>": ("kk",), "#": ("kk",), "#X2": ("kk",),
    # glides; ";" is English's linking y between a front vowel and a vowel ("being", "the end")
    "j": ("I",), "_j": ("I",), "w": ("U",), ";": ("I",),
}

# Trailing modifiers of espeak consonant mnemonics: palatalised (;), variants (# 2 3 digits),
# syllabic (-), retroflex (. `), dental ([), geminate (~), length (:), alternative (/), and
# aspiration (h, _h). Stripped one at a time until a base consonant matches.
_ESPEAK_CONS_MODIFIERS: Final = (";", "#", "-", ".", "`", "[", "~", ":", "/", "_", "^", *"0123456789")

# Vowel letters (Kirshenbaum ASCII IPA as used by espeak-ng) -> viseme.
_ESPEAK_VOWEL_CHARS: Final[dict[str, str]] = {
    "a": "aa", "A": "aa", "&": "E", "V": "E", "6": "aa",  # æ, ʌ: as ARPAbet AE, AH
    "e": "E", "E": "E", "@": "E", "3": "E",
    "i": "I", "I": "I", "j": "I",
    "o": "O", "O": "O", "0": "O", "8": "O", "Y": "O", "W": "O",  # Y = ø, W = œ: rounded
    "u": "U", "U": "U", "y": "U", "w": "U",  # y = ü: rounding dominates the lips
    "R": "RR", "r": "RR",  # r-coloured vowels (en IR, VR, UR; de iR; cmn @r)
    "L": "nn", "l": "nn", "n": "nn", "m": "PP",  # syllabic @L; nasal finals (cmn ang...)
    "N": "kk", "g": "kk",  # ng finals (cmn, yue): velar nasal
}
# Characters that only modify a vowel (length, nasal, variants, tones, centralised...).
_ESPEAK_VOWEL_MODIFIERS: Final = frozenset(":#~`-/.\"[+^%!?;0123456789")

# English (US) r-coloured vowels: espeak's en-us table uses '@' in these for the r offglide.
_EN_US_RHOTIC: Final[dict[str, tuple[str, ...]]] = {
    "3": ("RR",), "3:": ("RR",), "A@": ("aa", "RR"), "O@": ("O", "RR"), "o@": ("O", "RR"),
    "e@": ("E", "RR"), "i@": ("I", "RR"), "i@3": ("I", "RR"), "U@": ("U", "RR"),
    "aI@": ("aa", "I", "RR"), "aI3": ("aa", "I", "RR"), "aU@": ("aa", "U", "RR"),
}


# English lone-a vowels (TRAP, BATH, reduced "about"): æ or ə, not the wide-open a of other languages.
_EN_LONE_A: Final = frozenset({"a", "aa", "a#", "a#2", "a2"})


def _espeak_consonant(phone: str) -> tuple[str, ...] | None:
    cand = phone
    for _ in range(6):
        if cand in _ESPEAK_CONSONANTS:
            return _ESPEAK_CONSONANTS[cand]
        # aspiration: ph, kh, tSh, ts.h, k_h
        if len(cand) > 1 and cand.endswith("_h"):
            cand = cand[:-2]
            continue
        if len(cand) > 1 and cand.endswith("h") and cand[:-1].rstrip(";.") in _ESPEAK_CONSONANTS:
            cand = cand[:-1]
            continue
        if len(cand) > 1 and cand[-1] in _ESPEAK_CONS_MODIFIERS:
            cand = cand[:-1]
            continue
        return None
    return None


def _espeak_vowel(phone: str) -> tuple[str, ...] | None:
    vis: list[str] = []
    phone = phone.replace("ng", "N")  # velar nasal finals (cmn/yue ang, ing...)
    body = [c for c in phone if c not in _ESPEAK_VOWEL_MODIFIERS or c in "0368"]
    # '0' '3' '6' '8' are vowel letters (ɒ ɜ ɐ ɵ) unless they follow another letter (variants).
    letters: list[str] = []
    for i, c in enumerate(body):
        if c in "0123456789" and i > 0:
            continue
        letters.append(c)
    if not letters:
        return None
    for c in letters:
        v = _ESPEAK_VOWEL_CHARS.get(c)
        if v is None:
            return None
        if not vis or vis[-1] != v:
            vis.append(v)
    # A vowel must contain a vowel letter (not only glides/nasals).
    if not any(v in ("aa", "E", "I", "O", "U", "RR") for v in vis):
        return None
    if len(vis) > 3:
        return None
    return tuple(vis)


def espeak_to_visemes(phone: str, lang: str | None = None) -> tuple[str, ...]:
    """espeak-ng phoneme mnemonic (event name) -> 1-3 visemes; ``lang`` the espeak voice language.

    Two language rules: in English (``en*``) a lone ``a`` (TRAP ``a``, BATH ``aa``, the reduced
    ``a#`` of "about") is æ/ə, so ``E`` as ARPAbet AE, not the wide-open ``aa`` it is elsewhere
    (diphthongs ``aI``/``aU`` keep ``aa``); in ``en-us`` the ``3``/``3:`` and ``@`` offglides are
    r-coloured.
    """
    p = phone.strip()
    if p in _ESPEAK_PAUSES:
        return ("sil",)
    low = lang.lower() if lang is not None else ""
    if low.startswith("en-us") and p in _EN_US_RHOTIC:
        return _EN_US_RHOTIC[p]
    if low.startswith("en") and p in _EN_LONE_A:
        return ("E",)
    # Syllabic consonants (l- n- m- r-) and consonants are tried before vowel spelling.
    cons = _espeak_consonant(p)
    if cons is not None:
        return cons
    vow = _espeak_vowel(p)
    if vow is not None:
        return vow
    raise KeyError(f"unknown espeak-ng phoneme {phone!r} (lang {lang!r})")


def espeak_to_viseme(phone: str, lang: str | None = None) -> str:
    """espeak-ng phoneme mnemonic -> its first viseme."""
    return espeak_to_visemes(phone, lang)[0]


# --------------------------------------------------------------------------------------------
# Festival (radio/us phone set: ARPAbet in lower case, "pau" for silence; kal's "h#" too).


# festival's Italian phone set (italian_scm/italian_phoneset.scm; digit 1 = stressed vowel)
FESTIVAL_ITALIAN: Final[dict[str, tuple[str, ...]]] = {
    "#": ("sil",), "i": ("I",), "e": ("E",), "E": ("E",), "a": ("aa",), "o": ("O",), "O": ("O",),
    "u": ("U",), "j": ("I",), "w": ("U",), "p": ("PP",), "b": ("PP",), "m": ("PP",),
    "t": ("DD",), "d": ("DD",), "k": ("kk",), "g": ("kk",), "f": ("FF",), "v": ("FF",),
    "s": ("SS",), "z": ("SS",), "ts": ("SS",), "dz": ("SS",), "S": ("CH",), "Z": ("CH",),
    "tS": ("CH",), "dZ": ("CH",), "n": ("nn",), "J": ("nn",),  # J = ɲ ("gn")
    "ng": ("kk",),  # ŋ before k/g
    "nf": ("FF",),  # ɱ before f/v: lips already on the teeth
    "l": ("nn",), "L": ("nn",), "r": ("RR",),
}


# festival-czech's phone set (czech.scm, defPhoneSet czech; ":" = long vowel, "~" = háček).
# Palatal stops ť ď (t~ d~) go with kk as espeak-ng's palatal c/J do; ř (r~, r~*) is an r.
FESTIVAL_CZECH: Final[dict[str, tuple[str, ...]]] = {
    "#": ("sil",), "_": ("sil",),  # pause; "_" = the glottal stroke before a word-initial vowel
    "a": ("aa",), "a:": ("aa",), "e": ("E",), "e:": ("E",), "i": ("I",), "i:": ("I",),
    "o": ("O",), "o:": ("O",), "u": ("U",), "u:": ("U",),
    "p": ("PP",), "b": ("PP",), "m": ("PP",), "f": ("FF",), "v": ("FF",),
    "t": ("DD",), "d": ("DD",), "t~": ("kk",), "d~": ("kk",), "k": ("kk",), "g": ("kk",),
    "ch": ("kk",), "h": ("kk",), "n*": ("kk",),  # ch = [x]; n* = [ŋ] before k/g
    "n": ("nn",), "n~": ("nn",), "l": ("nn",), "j": ("I",),
    "s": ("SS",), "z": ("SS",), "c": ("SS",), "dz": ("SS",),
    "s~": ("CH",), "z~": ("CH",), "c~": ("CH",), "dz~": ("CH",),
    "r": ("RR",), "r~": ("RR",), "r~*": ("RR",),
}
# The Finnish suopuhe voices' phone set (suopuhe.common/finnish_phones.scm; ":" = long).
# ä (@) is [æ], drawn like ARPAbet AE (E); ö (7) and y are rounded (O, U) as espeak-ng's are.
FESTIVAL_FINNISH: Final[dict[str, tuple[str, ...]]] = {
    "#": ("sil",), "##": ("sil",),
    "a": ("aa",), "e": ("E",), "i": ("I",), "o": ("O",), "u": ("U",), "y": ("U",),
    "@": ("E",), "7": ("O",), "&": ("E",),
    "p": ("PP",), "b": ("PP",), "m": ("PP",), "f": ("FF",), "v": ("FF",), "w": ("U",),
    "t": ("DD",), "d": ("DD",), "T": ("TH",), "D": ("TH",), "k": ("kk",), "g": ("kk",),
    "h": ("kk",), "N": ("kk",), "n": ("nn",), "l": ("nn",), "L": ("nn",), "j": ("I",),
    "s": ("SS",), "z": ("SS",), "S": ("CH",), "Z": ("CH",), "r": ("RR",),
}

# The Russian msu_ru_nsh phone set (festvox-ru, festvox/msu_ru_nsh_phoneset.scm): doubled vowels
# are stressed, doubled consonants soft (palatalised, same place of articulation). Reduced vowels
# follow the espeak-ng choices for the same sounds: first-level ``a`` [ɐ] and the schwa ``ae``
# [ə] as ARPAbet AH (E), ``ay`` [ɪ] (after a soft consonant) as I; ы (``yy``, ``y``) is unrounded
# (I); ш ж щ ч protrude the lips (CH); ц is SS; х is kk; й (``j``) is I.
FESTIVAL_RUSSIAN: Final[dict[str, tuple[str, ...]]] = {
    "pau": ("sil",),
    "aa": ("aa",), "a": ("E",), "ae": ("E",), "ay": ("I",), "ee": ("E",), "e": ("E",),
    "ii": ("I",), "i": ("I",), "yy": ("I",), "y": ("I",), "oo": ("O",),
    "uu": ("U",), "u": ("U",), "ur": ("U",),
    "p": ("PP",), "pp": ("PP",), "b": ("PP",), "bb": ("PP",), "m": ("PP",), "mm": ("PP",),
    "f": ("FF",), "ff": ("FF",), "v": ("FF",), "vv": ("FF",),
    "t": ("DD",), "tt": ("DD",), "d": ("DD",), "dd": ("DD",),
    "k": ("kk",), "kk": ("kk",), "g": ("kk",), "gg": ("kk",), "h": ("kk",), "hh": ("kk",),
    "n": ("nn",), "nn": ("nn",), "l": ("nn",), "ll": ("nn",), "r": ("RR",), "rr": ("RR",),
    "s": ("SS",), "ss": ("SS",), "z": ("SS",), "zz": ("SS",), "c": ("SS",),
    "sh": ("CH",), "zh": ("CH",), "sch": ("CH",), "ch": ("CH",), "j": ("I",),
}


def festival_to_visemes(phone: str, lang: str = "en-us") -> tuple[str, ...]:
    """Festival Segment name -> 1-2 visemes; ``lang`` "en-us" (radio ARPAbet, ``pau``), "it", "cs", "fi" or "ru"."""
    p = phone.strip()
    if lang == "it":
        base = p[:-1] if p.endswith("1") else p
        if base in FESTIVAL_ITALIAN:
            return FESTIVAL_ITALIAN[base]
        raise KeyError(f"unknown festival Italian phone {phone!r}")
    if lang == "cs":
        if p in FESTIVAL_CZECH:
            return FESTIVAL_CZECH[p]
        raise KeyError(f"unknown festival Czech phone {phone!r}")
    if lang == "ru":
        if p in FESTIVAL_RUSSIAN:
            return FESTIVAL_RUSSIAN[p]
        raise KeyError(f"unknown festival Russian phone {phone!r}")
    if lang == "fi":
        base = p[:-1] if p.endswith(":") and len(p) > 1 else p
        if base in FESTIVAL_FINNISH:
            return FESTIVAL_FINNISH[base]
        raise KeyError(f"unknown festival Finnish phone {phone!r}")
    if p in ("pau", "#", "h#", "sil", "brth"):
        return ("sil",)
    if p == "ax":
        return ("E",)
    return timit_to_visemes(p)


# --------------------------------------------------------------------------------------------
# Visemes -> Rhubarb Lip Sync mouth shapes (A-H, X).

VISEME_TO_RHUBARB: Final[dict[str, str]] = {
    "sil": "X",  # idle
    "PP": "A",  # closed lips: P B M
    "FF": "G",  # upper teeth on lower lip
    "TH": "B",  # tongue between slightly open teeth; Rhubarb has no TH shape, B is nearest
    "DD": "B",  # T D: slightly open, clenched teeth (Rhubarb's "most consonants")
    "kk": "B",  # K G: B by Rhubarb's own definition
    "CH": "B",  # CH SH JH: teeth together; lip protrusion is not a Rhubarb shape
    "SS": "B",  # S Z
    "nn": "B",  # N and L share nn; N is the commoner and is B in Rhubarb (H is only for long L)
    "RR": "E",  # r: slightly rounded, as Rhubarb's ER
    "aa": "D",  # wide open
    "E": "C",  # EH, AE in Rhubarb: open
    "I": "B",  # EE: Rhubarb's B
    "O": "E",  # AO: slightly rounded
    "U": "F",  # UW OW W: puckered
}


RHUBARB_SHAPES: Final[tuple[str, ...]] = ("A", "B", "C", "D", "E", "F", "G", "H", "X")


def rhubarb_table() -> NDArray[np.int64]:
    """(15,) viseme index -> index into RHUBARB_SHAPES."""
    return np.array([RHUBARB_SHAPES.index(VISEME_TO_RHUBARB[v]) for v in VISEMES], np.int64)


def rhubarb_shape_probs(probs: NDArray[np.floating[Any]]) -> NDArray[np.float32]:
    """(T, 15) viseme probabilities -> (T, 9) Rhubarb shape probabilities (A-H, X order).

    Each shape's probability is the sum over the visemes it groups (``VISEME_TO_RHUBARB``).
    """
    p = np.asarray(probs, np.float32)
    if p.ndim != 2 or p.shape[1] != len(VISEMES):
        raise ValueError(f"expected (T, {len(VISEMES)}) viseme probabilities, got shape {p.shape}")
    out = np.zeros((p.shape[0], len(RHUBARB_SHAPES)), np.float32)
    np.add.at(out.T, rhubarb_table(), p.T)
    return out


def rhubarb_decide(probs: NDArray[np.floating[Any]]) -> NDArray[np.int64]:
    """(T, 15) viseme probabilities -> (T,) index into RHUBARB_SHAPES of the likeliest shape.

    Deciding on the summed shape probability (not on the argmax viseme) is the Bayes decision
    for Rhubarb's shapes: two visemes of one shape (say DD 0.3 + SS 0.3) outvote a single
    viseme of another (aa 0.4).
    """
    return rhubarb_shape_probs(probs).argmax(axis=1).astype(np.int64)


def viseme_index(name: str) -> int:
    """Viseme name -> index into :data:`engines.spec.VISEMES`."""
    try:
        return VISEME_INDEX[name]
    except KeyError:
        raise KeyError(f"unknown viseme {name!r}; expected one of {VISEMES}") from None
