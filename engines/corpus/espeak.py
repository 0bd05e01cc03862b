"""libespeak-ng through ctypes: speech at 16 kHz with each phoneme's exact sample position.

espeak-ng runs in ``AUDIO_OUTPUT_SYNCHRONOUS`` mode with ``espeakINITIALIZE_PHONEME_EVENTS``:
the synth callback receives the 22.05 kHz samples and ``espeakEVENT_PHONEME`` events whose
``sample`` field is the sample index where the phoneme starts (its mnemonic in ``id.string``).
A phoneme ends where the next one starts. Audio is resampled to 16 kHz with
``resample_poly(160, 441)`` (a linear-phase filter whose delay resample_poly compensates), and
positions are scaled by 160/441.

The library keeps global state (one voice, one callback): use one :class:`Espeak` per process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from scipy.signal import resample_poly

from engines.spec import SAMPLE_RATE

ESPEAK_RATE = 22_050  # Hz, espeak-ng's native output rate
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INIT_PHONEME_EVENTS = 0x0001
_INIT_DONT_EXIT = 0x8000
_EVENT_LIST_TERMINATED = 0
_EVENT_PHONEME = 7
_EVENT_SAMPLERATE = 8
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_PARAM_RATE = 1
_PARAM_VOLUME = 2
_PARAM_PITCH = 3
_PARAM_RANGE = 4
_PARAM_WORDGAP = 7

DEFAULT_DATA = Path("/usr/lib/x86_64-linux-gnu/espeak-ng-data")


class EspeakError(RuntimeError):
    """espeak-ng failed (library missing, voice not found or not switched, synthesis error)."""


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_char * 8),
    ]


class _Voice(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_char_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclass(frozen=True)
class Phone:
    """One phoneme: mnemonic and [start, end) in samples of the audio it belongs to."""

    name: str
    start: int
    end: int


@dataclass
class Synthesis:
    """Synthesized speech: ``audio`` (n,) float32 in [-1, 1] at ``rate`` Hz, phones in samples."""

    audio: NDArray[np.float32]
    rate: int
    phones: list[Phone]
    voice: str
    lang: str
    text: str


@dataclass
class _Collector:
    chunks: list[NDArray[np.int16]] = field(default_factory=list)
    events: list[tuple[int, str]] = field(default_factory=list)  # (sample at 22.05 kHz, name)


@cache
def _library() -> ctypes.CDLL:
    name = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
    try:
        lib = ctypes.CDLL(name)
    except OSError as exc:
        raise EspeakError(f"cannot load {name!r}: install Debian libespeak-ng1 ({exc})") from exc
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_GetCurrentVoice.restype = ctypes.POINTER(_Voice)
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [
        ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
        ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
    ]
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_Synchronize.restype = ctypes.c_int
    return lib


def list_variants(data_dir: Path = DEFAULT_DATA) -> list[str]:
    """Names of the voice variants (``m1``, ``f3``, ``klatt2``...) shipped with espeak-ng-data."""
    vdir = data_dir / "voices" / "!v"
    if not vdir.is_dir():
        raise EspeakError(f"no espeak-ng variants directory {vdir}")
    return sorted(p.name for p in vdir.iterdir() if p.is_file() and " " not in p.name)


_VOWEL_START = frozenset("aAeEiIoOuUV03@&Yy8W")


def split_merged_liquids(phones: list[Phone], share: float = 0.4) -> list[Phone]:
    """Give a zero-length post-vocalic ``l`` the last ``share`` of the vowel before it.

    espeak-ng renders vowel + l ("sells", "almost") as one formant glide and reports the ``l``
    with zero duration at the end of the vowel (13 % of English ``l`` events); the l-coloured
    end of that glide is where the tongue rises, so it is labelled as the ``l``.
    """
    out = list(phones)
    for k in range(1, len(out)):
        ph, prev = out[k], out[k - 1]
        if ph.end > ph.start or not ph.name.startswith("l") or not prev.name or prev.name[0] not in _VOWEL_START:
            continue
        if prev.end != ph.start or prev.end - prev.start < 4:
            continue
        cut = prev.end - int(round((prev.end - prev.start) * share))
        out[k - 1] = Phone(prev.name, prev.start, cut)
        out[k] = Phone(ph.name, cut, ph.end)
    return out


class Espeak:
    """The process's espeak-ng engine (synchronous, phoneme events on)."""

    _lock = threading.Lock()

    def __init__(self) -> None:
        self._lib = _library()
        rate = self._lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, None, _INIT_PHONEME_EVENTS | _INIT_DONT_EXIT
        )
        if rate != ESPEAK_RATE:
            raise EspeakError(f"espeak_Initialize returned sample rate {rate}, expected {ESPEAK_RATE}")
        self._collector = _Collector()
        self._callback = _CALLBACK(self._on_synth)  # keep a reference: C holds the pointer
        self._lib.espeak_SetSynthCallback(self._callback)
        self._voice = ""

    def _on_synth(self, wav: ctypes._Pointer, n: int, events: ctypes._Pointer) -> int:
        col = self._collector
        if n > 0 and wav:
            col.chunks.append(np.ctypeslib.as_array(wav, (n,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            ev = events[i]
            if ev.type == _EVENT_PHONEME:
                name = bytes(ev.id).split(b"\0", 1)[0].decode("latin-1")
                # "(en)", "(fr)": espeak switched language for a foreign word; not a sound.
                if not (name.startswith("(") and name.endswith(")")):
                    col.events.append((int(ev.sample), name))
            i += 1
        return 0

    def set_voice(self, voice: str) -> tuple[str, str]:
        """Select ``voice`` (``en-us``, ``de+klatt2``...); returns (identifier, language).

        espeak_SetVoiceByName keeps the previous voice when a name is unknown, and silently
        drops an unknown ``+variant``: both are detected and raise :class:`EspeakError`.
        """
        rc = self._lib.espeak_SetVoiceByName(voice.encode())
        if rc != 0:
            raise EspeakError(f"espeak_SetVoiceByName({voice!r}) failed with code {rc}")
        cur = self._lib.espeak_GetCurrentVoice()
        if not cur:
            raise EspeakError(f"no current voice after selecting {voice!r}")
        ident = (cur.contents.identifier or b"").decode()
        langs = cur.contents.languages or b""
        lang = langs[1:].split(b"\0", 1)[0].decode() if langs else ""
        base, _, variant = voice.partition("+")
        if variant and not ident.endswith("+" + variant):
            raise EspeakError(f"voice {voice!r}: variant {variant!r} not applied (got {ident!r})")
        ident_base = ident.split("+", 1)[0].rsplit("/", 1)[-1].lower()
        if base.lower() not in (ident_base, lang.lower()):
            raise EspeakError(f"voice {voice!r} not selected: espeak reports {ident!r} ({lang!r})")
        self._voice = voice
        return ident, lang

    def synth(
        self,
        text: str,
        voice: str,
        rate_wpm: int = 175,
        pitch: int = 50,
        pitch_range: int = 50,
        word_gap: int = 0,
        out_rate: int = SAMPLE_RATE,
    ) -> Synthesis:
        """Speak ``text`` -> :class:`Synthesis` at ``out_rate`` (16 kHz or 22.05 kHz native).

        ``rate_wpm`` 80-450 words per minute, ``pitch`` and ``pitch_range`` 0-100,
        ``word_gap`` extra pause between words in units of 10 ms.
        """
        with self._lock:
            _, lang = self.set_voice(voice)
            for param, value in (
                (_PARAM_RATE, rate_wpm), (_PARAM_PITCH, pitch), (_PARAM_RANGE, pitch_range),
                (_PARAM_WORDGAP, word_gap), (_PARAM_VOLUME, 100),
            ):
                rc = self._lib.espeak_SetParameter(param, int(value), 0)
                if rc != 0:
                    raise EspeakError(f"espeak_SetParameter({param}, {value}) failed with {rc}")
            self._collector = _Collector()
            data = text.encode("utf-8")
            rc = self._lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            if rc != 0:
                raise EspeakError(f"espeak_Synth failed with code {rc} for {text[:40]!r}")
            col = self._collector
            self._collector = _Collector()
        pcm = np.concatenate(col.chunks) if col.chunks else np.zeros(0, np.int16)
        audio22 = pcm.astype(np.float32) / 32768.0
        n22 = audio22.shape[0]
        phones22: list[Phone] = []
        evs = sorted(col.events, key=lambda e: e[0])
        for k, (start, name) in enumerate(evs):
            end = evs[k + 1][0] if k + 1 < len(evs) else n22
            start, end = min(start, n22), min(end, n22)
            phones22.append(Phone(name, start, end))
        phones22 = split_merged_liquids(phones22)
        if out_rate == ESPEAK_RATE:
            return Synthesis(audio22, ESPEAK_RATE, phones22, voice, lang, text)
        if out_rate != SAMPLE_RATE:
            raise ValueError(f"out_rate must be {SAMPLE_RATE} or {ESPEAK_RATE}, got {out_rate}")
        audio16 = resample_poly(audio22, 160, 441).astype(np.float32) if n22 else audio22
        scale = 160 / 441
        phones16 = [Phone(p.name, round(p.start * scale), round(p.end * scale)) for p in phones22]
        return Synthesis(audio16, SAMPLE_RATE, phones16, voice, lang, text)
