"""Flite speech with phone times, in process through ctypes on Debian's libflite1.

Debian's ``libflite1`` ships three statistical-parametric (clustergen) English voices trained on
the CMU ARCTIC recordings of real speakers: ``cmu_us_awb`` (Scottish male), ``cmu_us_rms``
(US male) and ``cmu_us_slt`` (US female). Their durations are predicted per phone and the wave
is generated from exactly those frames, so the Segment relation's ``end`` times (s) match the
audio. Phone names are the CMU lexicon's (ARPAbet, ``pau`` for silence), as festival's US
voices. Audio is resampled to 16 kHz.

The C API used (flite 2.2): ``flite_init``, ``register_cmu_us_<name>``, ``flite_synth_text``,
``utt_wave``, ``utt_relation``, ``relation_head``, ``item_next``, ``item_feat_string``,
``item_feat_float``, ``feat_set_float`` on the voice's features, ``delete_utterance``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re
import threading
from dataclasses import dataclass
from math import gcd

import numpy as np
from scipy.signal import resample_poly

from engines.corpus.espeak import Phone, Synthesis
from engines.spec import SAMPLE_RATE

# voice name -> the library and registration function that provide it
FLITE_VOICES: dict[str, str] = {
    "flite-awb": "cmu_us_awb",
    "flite-rms": "cmu_us_rms",
    "flite-slt": "cmu_us_slt",
}


class FliteError(RuntimeError):
    """libflite or a voice is missing, or a synthesis failed."""


class _Wave(ctypes.Structure):
    # typedef struct cst_wave_struct { const char *type; int sample_rate; int num_samples;
    #                                  int num_channels; short *samples; } cst_wave;
    _fields_ = [
        ("type", ctypes.c_char_p),
        ("sample_rate", ctypes.c_int),
        ("num_samples", ctypes.c_int),
        ("num_channels", ctypes.c_int),
        ("samples", ctypes.POINTER(ctypes.c_short)),
    ]


class _Voice(ctypes.Structure):
    # typedef struct cst_voice_struct { const char *name; cst_features *features; ... } cst_voice;
    _fields_ = [("name", ctypes.c_char_p), ("features", ctypes.c_void_p)]


def _load(name: str) -> ctypes.CDLL:
    for candidate in (f"libflite{name}.so.1", ctypes.util.find_library(f"flite{name}")):
        if candidate:
            try:
                return ctypes.CDLL(candidate, mode=ctypes.RTLD_GLOBAL)
            except OSError:
                continue
    raise FliteError(f"libflite{name} is not installed (Debian libflite1)")


@dataclass(frozen=True)
class FliteRequest:
    """One utterance: ``stretch`` > 1 slows speech; ``f0_shift`` multiplies the mean pitch."""

    text: str
    voice: str
    stretch: float = 1.0
    f0_shift: float = 1.0


class Flite:
    """The loaded library and voices; one synthesis at a time (flite keeps global state)."""

    def __init__(self) -> None:
        self._lib = _load("")
        self._lock = threading.Lock()
        lib = self._lib
        lib.flite_init.restype = ctypes.c_int
        lib.flite_synth_text.restype = ctypes.c_void_p
        lib.flite_synth_text.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
        lib.utt_wave.restype = ctypes.POINTER(_Wave)
        lib.utt_wave.argtypes = [ctypes.c_void_p]
        lib.utt_relation.restype = ctypes.c_void_p
        lib.utt_relation.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.relation_head.restype = ctypes.c_void_p
        lib.relation_head.argtypes = [ctypes.c_void_p]
        lib.item_next.restype = ctypes.c_void_p
        lib.item_next.argtypes = [ctypes.c_void_p]
        lib.item_feat_string.restype = ctypes.c_char_p
        lib.item_feat_string.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.item_feat_float.restype = ctypes.c_float
        lib.item_feat_float.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.feat_set_float.restype = None
        lib.feat_set_float.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_float]
        lib.get_param_float.restype = ctypes.c_float
        lib.get_param_float.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_float]
        lib.delete_utterance.restype = None
        lib.delete_utterance.argtypes = [ctypes.c_void_p]
        lib.flite_init()
        self._voices: dict[str, ctypes._Pointer[_Voice]] = {}
        self._f0_mean: dict[str, float] = {}

    def voice(self, name: str) -> ctypes._Pointer[_Voice]:
        """The registered voice ``name`` (a key of FLITE_VOICES); loads its library once."""
        if name not in FLITE_VOICES:
            raise ValueError(f"unknown flite voice {name!r}; known: {sorted(FLITE_VOICES)}")
        if name not in self._voices:
            base = FLITE_VOICES[name]
            vlib = _load(f"_{base}")
            reg = getattr(vlib, f"register_{base}")
            reg.restype = ctypes.POINTER(_Voice)
            reg.argtypes = [ctypes.c_char_p]
            v = reg(None)
            if not v:
                raise FliteError(f"register_{base} returned NULL")
            self._voices[name] = v
            self._f0_mean[name] = float(self._lib.get_param_float(v.contents.features, b"int_f0_target_mean", 0.0))
        return self._voices[name]

    def synth(self, req: FliteRequest) -> Synthesis:
        """Synthesize ``req``: 16 kHz float32 audio and its phones (sample positions)."""
        text = re.sub(r"\s+", " ", req.text.encode("ascii", errors="ignore").decode()).strip()
        if not text:
            raise FliteError(f"nothing to say in {req.text!r}")
        with self._lock:
            v = self.voice(req.voice)
            feats = v.contents.features
            self._lib.feat_set_float(feats, b"duration_stretch", ctypes.c_float(req.stretch))
            if self._f0_mean[req.voice] > 0:
                self._lib.feat_set_float(
                    feats, b"int_f0_target_mean", ctypes.c_float(self._f0_mean[req.voice] * req.f0_shift)
                )
            utt = self._lib.flite_synth_text(text.encode(), ctypes.cast(v, ctypes.c_void_p))
            if not utt:
                raise FliteError(f"flite_synth_text failed on {text!r} ({req.voice})")
            try:
                w = self._lib.utt_wave(utt)
                if not w or w.contents.num_samples <= 0:
                    raise FliteError(f"flite made no audio for {text!r} ({req.voice})")
                wave = w.contents
                n, ch, sr = wave.num_samples, max(1, wave.num_channels), wave.sample_rate
                pcm = np.ctypeslib.as_array(wave.samples, shape=(n * ch,)).astype(np.float32) / 32768.0
                ends: list[tuple[str, float]] = []
                item = self._lib.relation_head(self._lib.utt_relation(utt, b"Segment"))
                while item:
                    name = self._lib.item_feat_string(item, b"name").decode()
                    ends.append((name, float(self._lib.item_feat_float(item, b"end"))))
                    item = self._lib.item_next(item)
            finally:
                self._lib.delete_utterance(utt)
        audio = pcm.reshape(n, ch).mean(axis=1)
        if sr != SAMPLE_RATE:
            g = gcd(SAMPLE_RATE, sr)
            audio = resample_poly(audio, SAMPLE_RATE // g, sr // g).astype(np.float32)
        phones: list[Phone] = []
        prev = 0
        for name, end_s in ends:
            end = max(prev, min(int(round(end_s * SAMPLE_RATE)), audio.shape[0]))
            phones.append(Phone(name, prev, end))
            prev = end
        if not phones:
            raise FliteError(f"flite gave no Segment relation for {text!r} ({req.voice})")
        return Synthesis(audio, SAMPLE_RATE, phones, req.voice, "en-us", req.text)
