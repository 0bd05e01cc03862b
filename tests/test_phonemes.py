"""Phoneme -> viseme tables: coverage (ARPAbet, TIMIT, every espeak-ng phoneme table) and sense."""

from __future__ import annotations

import struct
from functools import cache
from pathlib import Path

import pytest

from engines.corpus.espeak import DEFAULT_DATA
from engines.phonemes import (
    ARPABET,
    VISEME_TO_RHUBARB,
    arpabet_to_viseme,
    arpabet_to_visemes,
    espeak_to_viseme,
    espeak_to_visemes,
    festival_to_visemes,
    timit_sequence_to_visemes,
    timit_to_viseme,
    timit_to_visemes,
)
from engines.spec import VISEMES

CMU_39 = (
    "AA AE AH AO AW AY B CH D DH EH ER EY F G HH IH IY JH K L M N NG OW OY P R S SH T TH UH UW V W Y Z ZH"
).split()

# espeak-ng phoneme types (phoneme.h) that are sounds reported in phoneme events
_SOUND_TYPES = {0, 2, 3, 4, 5, 6, 7, 8}  # pause, vowel, liquid, stop, vstop, fric, vfric, nasal
_PLACE_BILABIAL, _PLACE_LABIODENTAL, _PLACE_VELAR = 1, 2, 8


@cache
def phontab(path: Path = DEFAULT_DATA / "phontab") -> dict[str, tuple[int, list[tuple[str, int, int]]]]:
    """Parse espeak-ng's compiled phoneme tables: name -> (included table, [(mnemonic, type, place)])."""
    data = path.read_bytes()
    n_tables = data[0]
    pos = 4
    tables: dict[str, tuple[int, list[tuple[str, int, int]]]] = {}
    for _ in range(n_tables):
        n_ph, includes = data[pos], data[pos + 1]
        pos += 4
        name = data[pos : pos + 32].split(b"\0", 1)[0].decode()
        pos += 32
        phs = []
        for _ in range(n_ph):
            mnemonic, flags, _prog, _code, typ = struct.unpack_from("<IIHBB", data, pos)
            pos += 16
            mn = mnemonic.to_bytes(4, "little").split(b"\0", 1)[0].decode("latin-1")
            phs.append((mn, typ, (flags >> 16) & 0xF))
        tables[name] = (includes, phs)
    return tables


def _sound_phonemes() -> list[tuple[str, str, int, int]]:
    out = []
    for table, (_, phs) in phontab().items():
        for mn, typ, place in phs:
            if typ in _SOUND_TYPES and mn and mn.isprintable():
                out.append((table, mn, typ, place))
    return out


def test_arpabet_covers_cmu_39_and_strips_stress() -> None:
    assert set(CMU_39) == set(ARPABET)
    for p in CMU_39:
        for v in arpabet_to_visemes(p):
            assert v in VISEMES
    assert arpabet_to_visemes("ay1") == ("aa", "I")
    # Rhubarb draws AA wide open (D) but AE, AH and schwa open (C): E, not aa
    assert arpabet_to_visemes("AA1") == ("aa",)
    assert [arpabet_to_viseme(p) for p in ("AE", "AH0", "AH1", "EH")] == ["E"] * 4
    assert festival_to_visemes("ae") == festival_to_visemes("ah") == festival_to_visemes("ax") == ("E",)
    assert arpabet_to_viseme("OW0") == "O"
    assert arpabet_to_visemes("OW2") == ("O", "U")
    assert arpabet_to_viseme("m") == "PP"
    with pytest.raises(KeyError, match="QQ"):
        arpabet_to_viseme("QQ")


def test_consonant_classes() -> None:
    expect = {"P": "PP", "B": "PP", "M": "PP", "F": "FF", "V": "FF", "TH": "TH", "DH": "TH",
              "T": "DD", "D": "DD", "K": "kk", "G": "kk", "CH": "CH", "JH": "CH", "SH": "CH",
              "S": "SS", "Z": "SS", "N": "nn", "L": "nn", "R": "RR"}
    for p, v in expect.items():
        assert arpabet_to_viseme(p) == v, p


def test_timit_symbols_and_closures() -> None:
    for p in ("h#", "pau", "epi", "sil"):
        assert timit_to_viseme(p) == "sil"
    assert timit_to_viseme("dx") == "DD"
    assert timit_to_viseme("ax") == "E"
    assert timit_to_viseme("pcl") == "PP"
    assert timit_to_viseme("kcl") == "kk"
    assert timit_to_visemes("cl") == ("sil",)
    seq = timit_sequence_to_visemes(["s", "cl", "t", "vcl", "b", "ao", "vcl"])
    assert seq == [("SS",), ("DD",), ("DD",), ("PP",), ("PP",), ("O",), ("sil",)]
    seq = timit_sequence_to_visemes(["ay", "cl", "ch"])
    assert seq[1] == ("CH",)
    with pytest.raises(KeyError, match="zz"):
        timit_to_viseme("zz")


def test_festival_italian_phone_set() -> None:
    scm = Path("/usr/share/festival/italian_scm/italian_phoneset.scm")
    if not scm.is_file():
        pytest.skip("festival Italian voices not installed")
    text = scm.read_text(encoding="latin-1")
    body = text[text.index("(defPhoneSet") :]
    phones = [ln.split()[0].lstrip("(") for ln in body.splitlines()[1:]
              if ln.strip().startswith("(") and len(ln.split()) >= 9]
    assert len(phones) > 35
    for p in phones:
        assert all(v in VISEMES for v in festival_to_visemes(p, "it")), p
    assert festival_to_visemes("J", "it") == ("nn",)  # gn, not a velar
    assert festival_to_visemes("E1", "it") == ("E",)
    with pytest.raises(KeyError, match="Italian"):
        festival_to_visemes("pau", "it")


@pytest.mark.parametrize(("lang", "scm"), [
    ("cs", "/usr/share/festival/czech.scm"),
    ("fi", "/usr/share/festival/voices/finnish/suopuhe.common/finnish_phones.scm"),
])
def test_festival_czech_and_finnish_phone_sets(lang: str, scm: str) -> None:
    path = Path(scm)
    if not path.is_file():
        pytest.skip(f"festival {lang} voices not installed")
    text = path.read_text(encoding="latin-1")
    lines = [ln.split(";")[0].strip() for ln in text[text.index("(defPhoneSet") :].splitlines()]
    opens = [i for i, ln in enumerate(lines) if ln == "("]  # features list, then the phone list
    phones = []
    for ln in lines[opens[1] + 1 :]:
        if ln.startswith("(") and len(ln.split()) >= 6:
            phones.append(ln.split()[0].lstrip("("))
        if ln.startswith(")") or ln.endswith(")))"):
            break
    assert len(phones) > 40, phones
    for p in phones:
        assert all(v in VISEMES for v in festival_to_visemes(p, lang)), p
    assert festival_to_visemes("#", lang) == ("sil",)
    with pytest.raises(KeyError, match="Czech" if lang == "cs" else "Finnish"):
        festival_to_visemes("pau", lang)


def test_festival_czech_and_finnish_choices() -> None:
    assert festival_to_visemes("a:", "cs") == festival_to_visemes("a", "fi") == ("aa",)
    assert festival_to_visemes("s~", "cs") == ("CH",)  # š: lips protruded
    assert festival_to_visemes("r~*", "cs") == ("RR",)  # ř
    assert festival_to_visemes("@:", "fi") == ("E",)  # ä as ARPAbet AE
    assert festival_to_visemes("y:", "fi") == festival_to_visemes("u", "fi") == ("U",)


def test_festival_phones() -> None:
    assert festival_to_visemes("pau") == ("sil",)
    assert festival_to_visemes("ay") == ("aa", "I")
    assert festival_to_visemes("ax") == ("E",)
    with pytest.raises(KeyError):
        festival_to_visemes("xyz")


def test_every_espeak_phoneme_of_every_table_maps() -> None:
    phs = _sound_phonemes()
    assert len(phs) > 1500  # 130 tables
    unknown = []
    for table, mn, _typ, _place in phs:
        try:
            vis = espeak_to_visemes(mn, table)
        except KeyError:
            unknown.append((table, mn))
            continue
        assert 1 <= len(vis) <= 3 and all(v in VISEMES for v in vis), (table, mn, vis)
    assert not unknown, unknown[:20]


def test_espeak_consonants_agree_with_espeak_place_of_articulation() -> None:
    """espeak-ng's own data says where each consonant is made; the visemes must agree."""
    checked = 0
    major = {"base1", "base2", "consonants", "en", "en-us", "de", "fr", "es", "it", "pt", "nl", "pl",
             "ru", "cs", "sv", "da", "fi", "hu", "ro", "tr", "hr", "ca", "sk", "el"}
    for table, mn, typ, place in _sound_phonemes():
        if table not in major:
            continue
        if typ in (4, 5, 8) and place == _PLACE_BILABIAL and not mn.startswith("h"):
            assert espeak_to_visemes(mn)[0] == "PP", (table, mn)
            checked += 1
        if typ in (6, 7) and place == _PLACE_LABIODENTAL:
            assert espeak_to_visemes(mn) == ("FF",), (table, mn)
            checked += 1
        if typ in (4, 5, 8) and place == _PLACE_VELAR:
            assert espeak_to_visemes(mn) == ("kk",), (table, mn)
            checked += 1
    assert checked > 50


def test_espeak_vowels_and_diphthongs() -> None:
    assert espeak_to_visemes("aI") == ("aa", "I")
    assert espeak_to_visemes("oU") == ("O", "U")
    assert espeak_to_visemes("i:") == ("I",)
    assert espeak_to_visemes("y:") == ("U",)  # German ü: rounded lips
    assert espeak_to_visemes("@") == ("E",)
    assert espeak_to_viseme("_:") == "sil"
    assert espeak_to_visemes("3:", "en-us") == ("RR",)
    assert espeak_to_visemes("3:", "en-gb") == ("E",)
    assert espeak_to_visemes("A@", "en-us") == ("aa", "RR")
    assert espeak_to_visemes("tS") == ("CH",)
    assert espeak_to_visemes("ts.h") == ("CH",)  # Mandarin retroflex affricate, aspirated
    assert espeak_to_visemes("ph") == ("PP",)
    # æ and ʌ are open-mid E (Rhubarb's C), ɑ is the wide-open aa (Rhubarb's D)
    assert espeak_to_visemes("&") == ("E",)
    assert espeak_to_visemes("V") == ("E",)
    assert espeak_to_visemes("A:", "en-us") == ("aa",)
    # English lone a (TRAP "cat", BATH, reduced "about") is æ/ə; elsewhere a is wide open
    for mn in ("a", "aa", "a#"):
        assert espeak_to_visemes(mn, "en-gb-x-rp") == ("E",), mn
        assert espeak_to_visemes(mn, "en-us") == ("E",), mn
    assert espeak_to_visemes("a", "es") == ("aa",)
    assert espeak_to_visemes("a") == ("aa",)
    assert espeak_to_visemes("aI", "en-us") == ("aa", "I")  # diphthongs keep the open start
    with pytest.raises(KeyError, match="Q\\$"):
        espeak_to_viseme("Q$")


def test_rhubarb_mapping() -> None:
    assert set(VISEME_TO_RHUBARB) == set(VISEMES)
    assert set(VISEME_TO_RHUBARB.values()) <= set("ABCDEFGHX")
    assert VISEME_TO_RHUBARB["PP"] == "A"
    assert VISEME_TO_RHUBARB["FF"] == "G"
    assert VISEME_TO_RHUBARB["aa"] == "D"
    assert VISEME_TO_RHUBARB["U"] == "F"
    assert VISEME_TO_RHUBARB["sil"] == "X"
