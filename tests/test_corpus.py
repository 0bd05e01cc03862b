"""Corpus generator: espeak-ng alignment, voice checks, augmentation alignment, shards, determinism."""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from engines.corpus import augment as aug
from engines.corpus.dataset import load_corpus, read_shard
from engines.corpus.espeak import Espeak, EspeakError, Synthesis
from engines.corpus.festival import FestivalRequest, available_voices, synth_batch
from engines.corpus.flite import FLITE_VOICES, Flite, FliteError, FliteRequest
from engines.corpus.generate import (
    GenConfig,
    Utt,
    _write_shard,
    espeak_utterance,
    generate,
    make_shard,
)
from engines.corpus.labels import Segment, attach_closures, phones_to_segments, segments_to_labels
from engines.corpus.text import TextSource, read_strfile
from engines.features import logmel
from engines.phonemes import espeak_to_visemes, festival_to_visemes
from engines.spec import HOP_LENGTH, N_MELS, SAMPLE_RATE, VISEME_INDEX

from .conftest import DEV_SPEECH, require_shared

VOWELS = [VISEME_INDEX[v] for v in ("aa", "E", "I", "O", "U")]
HISS = [VISEME_INDEX["SS"], VISEME_INDEX["CH"]]


@pytest.fixture(scope="module")
def engine() -> Espeak:
    return Espeak()


def hop_stats(audio: NDArray[np.float32], labels: NDArray[np.int8]) -> dict[str, float]:
    """Mean level (dB) and >4 kHz energy share of hops, per label group."""
    n = min(audio.shape[0] // HOP_LENGTH, labels.shape[0])
    frames = audio[: n * HOP_LENGTH].reshape(n, HOP_LENGTH) * np.hanning(HOP_LENGTH)
    spec = np.abs(np.fft.rfft(frames, 256, axis=1)) ** 2
    hf = spec[:, 64:].sum(1) / (spec.sum(1) + 1e-12)
    db = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    lab = labels[:n]
    vow, hiss, sil = np.isin(lab, VOWELS), np.isin(lab, HISS), lab == VISEME_INDEX["sil"]
    return {
        "vowel_db": float(db[vow].mean()), "sil_db": float(db[sil].mean()),
        "vowel_hf": float(hf[vow].mean()), "hiss_hf": float(hf[hiss].mean()),
    }


def labels_of(syn: Synthesis, festival: bool = False) -> NDArray[np.int8]:
    if festival:
        mapper = partial(festival_to_visemes, lang=syn.lang)
    else:
        mapper = partial(espeak_to_visemes, lang=syn.lang)
    segs = phones_to_segments([(p.name, p.start, p.end) for p in syn.phones], mapper)
    return segments_to_labels(attach_closures(segs, syn.audio), syn.audio.shape[0])


def test_espeak_events_land_where_the_audio_is(engine: Espeak) -> None:
    syn = engine.synth("She sells sea shells. ... Assess his chess! Ah, so.", "en-us", rate_wpm=160)
    assert syn.rate == SAMPLE_RATE
    assert syn.phones[0].start < 0.05 * SAMPLE_RATE
    ends = [p.end for p in syn.phones]
    assert ends == sorted(ends) and ends[-1] <= syn.audio.shape[0]
    pauses = [p for p in syn.phones if p.name.startswith("_") and p.end - p.start > 1600]
    assert pauses, "the '...' must give a pause"
    for p in pauses:  # pauses are silent (the last 5 ms may hold a stop's closure)
        seg = syn.audio[p.start : p.end - 80]
        assert np.sqrt(np.mean(seg**2)) < 1e-3, p
    st = hop_stats(syn.audio, labels_of(syn))
    assert st["vowel_db"] > st["sil_db"] + 30
    assert st["hiss_hf"] > st["vowel_hf"] + 0.25


@pytest.mark.parametrize("voice", ["de+klatt2", "fr+f3", "ru", "es+m3"])
def test_espeak_alignment_other_languages(engine: Espeak, voice: str) -> None:
    text = {"de": "Sieben schöne Schwäne schwimmen schnell.", "fr": "Ses six chats sont si sages.",
            "ru": "Саша шла по шоссе и сосала сушку.", "es": "Así es, siempre sale el sol."}[voice[:2]]
    syn = engine.synth(text, voice, rate_wpm=150)
    st = hop_stats(syn.audio, labels_of(syn))
    assert st["hiss_hf"] > st["vowel_hf"] + 0.2, st


def test_native_rate_and_resampled_positions_agree(engine: Espeak) -> None:
    # espeak's glottal phase carries over between calls, so lengths differ by a few samples
    a = engine.synth("Test of the rates.", "en-us", out_rate=22_050)
    b = engine.synth("Test of the rates.", "en-us")
    assert abs(a.audio.shape[0] * 160 / 441 - b.audio.shape[0]) <= 20
    for pa, pb in zip(a.phones, b.phones, strict=True):
        assert pa.name == pb.name
        assert abs(pa.start * 160 / 441 - pb.start) <= 20


def test_set_voice_failure_is_detected(engine: Espeak) -> None:
    engine.set_voice("de")
    with pytest.raises(EspeakError, match="no-such-voice"):
        engine.set_voice("no-such-voice")
    with pytest.raises(EspeakError, match="variant"):
        engine.set_voice("en-us+no-such-variant")
    with pytest.raises(EspeakError):
        engine.synth("hello", "xx-nothing")
    ident, lang = engine.set_voice("en-us+f2")
    assert ident.endswith("+f2") and lang == "en-us"


def test_language_switch_markers_are_not_phones(engine: Espeak) -> None:
    syn = engine.synth("Le weekend, j'ai regardé un match de football.", "fr")
    assert all(not p.name.startswith("(") for p in syn.phones)
    for p in syn.phones:
        espeak_to_visemes(p.name, syn.lang)


def test_festival_phone_times_match_audio() -> None:
    voices = available_voices()
    assert {"kal_diphone", "us-slt-hts"} <= set(voices)
    reqs = [FestivalRequest("She sells sea shells, says Sasha.", v) for v in voices]
    reqs.append(FestivalRequest("Slow \"quoted\" words, slowly.", "kal_diphone", stretch=1.3))
    out = synth_batch(reqs)
    assert all(s is not None for s in out)
    for syn in out[: len(voices)]:
        assert syn is not None
        st = hop_stats(syn.audio, labels_of(syn, festival=True))
        assert st["hiss_hf"] > st["vowel_hf"] + 0.25, (syn.voice, st)
        assert st["vowel_db"] > st["sil_db"] + 20
        assert syn.phones[-1].end <= syn.audio.shape[0]


def test_festival_voice_mix_czech_and_finnish() -> None:
    from engines.corpus.generate import festival_utterances
    from engines.corpus.text import TextSource

    want = {"cs-dita": 1.0, "fi-lj": 1.0}
    if not set(want) <= set(available_voices()):
        pytest.skip("Czech/Finnish festival voices not installed")
    utts = festival_utterances(np.random.default_rng(3), 6, TextSource(), want)
    assert len(utts) >= 5 and {u.voice for u in utts} <= set(want)
    assert {u.lang for u in utts} <= {"cs", "fi"}
    for u in utts:
        vis = {seg.viseme for seg in u.segments}
        assert "sil" in vis and len(vis) > 4, (u.voice, vis)
    with pytest.raises(ValueError, match="unknown festival voices"):
        festival_utterances(np.random.default_rng(3), 1, TextSource(), {"fi-mv": 1.0})


def test_flite_phone_times_match_audio() -> None:
    synth = Flite()
    for voice in FLITE_VOICES:
        for stretch in (0.8, 1.3):
            syn = synth.synth(FliteRequest("She sells sea shells, says Sasha. Pop a pale peach.", voice, stretch, 1.1))
            assert syn.rate == SAMPLE_RATE and syn.lang == "en-us"
            st = hop_stats(syn.audio, labels_of(syn, festival=True))
            assert st["hiss_hf"] > st["vowel_hf"] + 0.15, (voice, stretch, st)
            assert st["vowel_db"] > st["sil_db"] + 20, (voice, stretch, st)
            ends = [p.end for p in syn.phones]
            assert ends == sorted(ends) and ends[-1] <= syn.audio.shape[0]
    slow = synth.synth(FliteRequest("One two three four five.", "flite-rms", 1.3))
    fast = synth.synth(FliteRequest("One two three four five.", "flite-rms", 0.8))
    assert slow.audio.shape[0] > 1.4 * fast.audio.shape[0]
    with pytest.raises(ValueError, match="no-such"):
        synth.synth(FliteRequest("hello", "no-such"))
    with pytest.raises(FliteError, match="nothing to say"):
        synth.synth(FliteRequest("   ", "flite-slt"))


def test_flite_fraction_adds_flite_utterances_and_keeps_old_corpora(tmp_path: Path) -> None:
    require_shared(DEV_SPEECH / "noise")
    # each shard is made in a fresh process (espeak keeps state between calls)
    cfgs = {"plain": small_cfg(5), "zero": replace(small_cfg(5), flite_fraction=0.0),
            "mixed": replace(small_cfg(5), festival_fraction=0.2, flite_fraction=0.6)}
    shards = {}
    for name, cfg in cfgs.items():
        assert generate(cfg, tmp_path / name, minutes=1 / 3, jobs=1) == 1
        with np.load(tmp_path / name / "shard-00000.npz") as z:
            shards[name] = {k: z[k] for k in ("text", "source", "voice")}
    assert shards["plain"]["text"].tolist() == shards["zero"]["text"].tolist()
    mixed = shards["mixed"]
    assert "flite" in set(mixed["source"].tolist())
    assert set(mixed["voice"][mixed["source"] == "flite"].tolist()) <= set(FLITE_VOICES)


def test_labels_use_hop_centre() -> None:
    segs = [Segment("aa", 0, 240), Segment("PP", 240, 400)]
    lab = segments_to_labels(segs, 5 * HOP_LENGTH)
    # hop 0 centre 80 -> aa; hop 1 centre 240 -> PP; hop 2 centre 400 -> sil (end is exclusive)
    assert lab.tolist() == [VISEME_INDEX["aa"], VISEME_INDEX["PP"], 0, 0, 0]


def test_closure_goes_to_the_stop() -> None:
    audio = np.concatenate([np.full(1600, 0.1, np.float32), np.zeros(800, np.float32), np.full(800, 0.1, np.float32)])
    segs = [Segment("aa", 0, 2400), Segment("PP", 2400, 3200)]
    out = attach_closures(segs, audio)
    assert out[1].start == 1600 and out[0].end == 1600
    # never more than 80 ms
    long_gap = np.concatenate([np.full(800, 0.1, np.float32), np.zeros(4000, np.float32), np.full(800, 0.1, np.float32)])
    out = attach_closures([Segment("sil", 0, 4800), Segment("kk", 4800, 5600)], long_gap)
    assert out[1].start == 4800 - 1280


def _click_track(n: int, positions: list[int]) -> NDArray[np.float32]:
    x = np.zeros(n, np.float32)
    x[positions] = 1.0
    return x


def test_speed_rescales_labels() -> None:
    pos = [4000, 12000, 20000]
    x = _click_track(24000, pos)
    segs = [Segment("aa", p, p + 800) for p in pos]
    for factor in (0.87, 1.15):
        y, new = aug.speed(x, segs, factor)
        assert abs(y.shape[0] - x.shape[0] / factor) < 0.005 * x.shape[0]  # ratio limited to /64
        for s in new:
            peak = s.start - 40 + int(np.argmax(np.abs(y[s.start - 40 : s.start + 40])))
            assert abs(peak - s.start) <= 2, (factor, peak, s.start)


def test_pitch_shift_keeps_duration_and_timing() -> None:
    t = np.arange(32000) / SAMPLE_RATE
    env = (np.sin(2 * np.pi * 2 * t) > 0).astype(np.float32)
    x = (np.sin(2 * np.pi * 200 * t) * env).astype(np.float32)
    y = aug.pitch_shift(x, 3.0)
    assert y.shape == x.shape
    ex = np.abs(x).reshape(-1, 160).mean(1)
    ey = np.abs(y).reshape(-1, 160).mean(1)
    lag = int(np.argmax(np.correlate(ey - ey.mean(), ex - ex.mean(), "full"))) - (ex.shape[0] - 1)
    assert abs(lag) <= 2  # within 20 ms
    f = np.fft.rfftfreq(y.shape[0], 1 / SAMPLE_RATE)
    peak = f[np.argmax(np.abs(np.fft.rfft(y)))]
    assert 225 < peak < 250  # 200 Hz * 2^(3/12) = 238 Hz


def test_opus_roundtrip_is_realigned() -> None:
    rng = np.random.default_rng(3)
    x = np.zeros(32000, np.float32)
    for start in range(2000, 30000, 5000):  # bursts of coloured noise
        x[start : start + 1200] = rng.standard_normal(1200).astype(np.float32) * 0.2
    for kbps in (12, 32):
        y = aug.opus_roundtrip(x, kbps * 1000)
        assert y.shape == x.shape
        c = np.correlate(np.abs(y), np.abs(x), "full")
        lag = int(np.argmax(c)) - (x.shape[0] - 1)
        assert abs(lag) <= 3, (kbps, lag)
    assert 50 < aug.opus_delay_samples() < 400


def _direct_path_aligned(rirs: list[np.ndarray]) -> None:
    x = _click_track(16000, [8000])
    for rir in rirs:
        y = aug.reverb(x, rir)
        assert int(np.argmax(np.abs(y))) == 8000


def test_reverb_keeps_direct_path_aligned() -> None:
    _direct_path_aligned([aug.synthetic_rir(np.random.default_rng(0), 0.5)])


def test_reverb_keeps_direct_path_aligned_with_recorded_rooms() -> None:
    require_shared(DEV_SPEECH / "rir")
    rirs = aug.NoiseBank.load(DEV_SPEECH).rirs
    assert rirs
    _direct_path_aligned(rirs)


@pytest.fixture(scope="module")
def bank() -> aug.NoiseBank:
    require_shared(DEV_SPEECH / "noise")
    return aug.NoiseBank.load(DEV_SPEECH)


def test_augment_moves_labels_with_audio(engine: Espeak, bank: aug.NoiseBank) -> None:
    """Augment a click track with its segments: every segment still starts on its click."""
    pos = list(range(3000, 40000, 4000))
    x = _click_track(44000, pos) * 0.5
    segs = [Segment("aa", p, p + 400) for p in pos]
    cfg = aug.AugmentConfig(dev_speech=DEV_SPEECH, p_speed=1.0, p_pitch=0.0, p_reverb=0.0, p_eq=0.0,
                            p_bandlimit=0.0, p_noise=0.0, p_opus=1.0, mic_floor_db=(-120, -119))
    for seed in range(4):
        rng = np.random.default_rng(seed)
        y, new, log = aug.augment(x, segs, rng, cfg, bank)
        assert "speed" in log and "opus_kbps" in log
        for s in new:
            w = np.abs(y[s.start - 80 : s.start + 80])
            assert abs(int(np.argmax(w)) - 80) <= 3, (seed, log)


def test_augment_full_pipeline_runs(engine: Espeak, bank: aug.NoiseBank) -> None:
    syn = engine.synth("Noise, rooms and codecs.", "en-us")
    segs = phones_to_segments([(p.name, p.start, p.end) for p in syn.phones], lambda n: espeak_to_visemes(n, syn.lang))
    cfg = aug.AugmentConfig(dev_speech=DEV_SPEECH, p_speed=1, p_pitch=1, p_reverb=1, p_eq=1,
                            p_bandlimit=1, p_noise=1, p_opus=1)
    for seed in range(6):
        bank.remember(syn.audio, 12)
        y, new, log = aug.augment(syn.audio, segs, np.random.default_rng(seed), cfg, bank)
        assert y.dtype == np.float32 and np.all(np.abs(y) <= 1.0) and np.isfinite(y).all()
        assert new[-1].end <= y.shape[0]
        assert {"speed", "pitch", "reverb", "eq", "noise", "opus_kbps"} <= set(log)


def test_text_sources() -> None:
    rng = np.random.default_rng(0)
    ts = TextSource()
    for lang in ("en-us", "de", "ru", "sv"):
        text, kind = ts.pick(lang, rng)
        assert text.strip() and kind in ("fortune", "words", "syllables")
    assert TextSource().pick("de", np.random.default_rng(5)) == TextSource().pick("de", np.random.default_rng(5))


def test_strfile(tmp_path: Path) -> None:
    f = tmp_path / "db"
    f.write_text("First fortune here.\n%\n  ____\n |  | |\n%\nSecond one,\nover lines.\n\t-- Someone\n%\n")
    assert read_strfile(f) == ["First fortune here.", "Second one, over lines."]


def test_espeak_utterance_labels_cover_audio() -> None:
    cfg = GenConfig(seed=3)
    rng = np.random.default_rng(1)
    utt = espeak_utterance(rng, cfg, TextSource())
    assert isinstance(utt, Utt) and utt.source == "espeak"
    assert utt.segments[-1].end <= utt.audio.shape[0]
    lab = segments_to_labels(utt.segments, utt.audio.shape[0])
    assert (lab != 0).mean() > 0.5


def small_cfg(seed: int, val: bool = False) -> GenConfig:
    return GenConfig(seed=seed, val=val, shard_seconds=20.0, festival_fraction=0.5,
                     augment=replace(aug.AugmentConfig(), dev_speech=DEV_SPEECH))


def test_shards_are_deterministic_and_round_trip(tmp_path: Path) -> None:
    require_shared(DEV_SPEECH / "noise")
    # generate() makes each shard in a fresh forked process: same seed, same bytes
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        assert generate(small_cfg(seed), tmp_path / name, minutes=1 / 3, jobs=1) == 1
    with np.load(tmp_path / "a/shard-00000.npz") as za, np.load(tmp_path / "b/shard-00000.npz") as zb:
        a, b = dict(za), dict(zb)
    with np.load(tmp_path / "c/shard-00000.npz") as zc:
        c = dict(zc)
    assert a.keys() == b.keys()
    for k in a:
        if a[k].dtype.kind == "f":
            # float32 BLAS (the mel projection) may round the last bit differently depending on
            # memory alignment; the audio, labels and text are identical
            np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-5)
        else:
            np.testing.assert_array_equal(a[k], b[k])
    assert a["text"].tolist() != c["text"].tolist()
    assert "festival" in set(a["source"].tolist()) | set(c["source"].tolist())
    idx, secs, n = _write_shard((small_cfg(7), 3, str(tmp_path)))
    assert idx == 3 and n > 0 and secs >= 20.0
    utts = read_shard(tmp_path / "shard-00003.npz")
    corpus = load_corpus(tmp_path)
    assert len(utts) == len(corpus) == n
    for u in corpus:
        assert u.features.dtype == np.float32 and u.features.shape[1] == N_MELS
        assert u.labels.dtype == np.int8 and u.labels.shape == (u.features.shape[0],)
        assert u.source in ("espeak", "festival", "flite") and u.lang and u.voice
        assert np.isfinite(u.features).all()
    # features are logmel of the audio: a shard's features have the right silence/speech spread
    f = np.concatenate([u.features for u in corpus])
    lab = np.concatenate([u.labels for u in corpus])
    assert f[lab != 0].mean() > f[lab == 0].mean()
    assert logmel(np.zeros(1600, np.float32)).shape == (10, N_MELS)


def test_val_split_uses_held_out_voices() -> None:
    require_shared(DEV_SPEECH / "noise")
    from engines.corpus.generate import (
        TRAIN_EN_ACCENTS,
        TRAIN_LANGS,
        VAL_EN_ACCENTS,
        VAL_LANGS,
        VAL_VARIANTS,
    )

    assert not set(VAL_LANGS) & set(TRAIN_LANGS)
    assert not set(VAL_EN_ACCENTS) & set(TRAIN_EN_ACCENTS)
    v = make_shard(small_cfg(1, val=True), 0)
    for voice in v["voice"].tolist():
        base, _, variant = voice.partition("+")
        assert base in VAL_LANGS or base in VAL_EN_ACCENTS, voice
        assert not variant or variant in VAL_VARIANTS, voice
    assert set(v["source"].tolist()) == {"espeak"}


@pytest.mark.parametrize("arg", ["fi-mv=1", "cs-dita=0", "cs-dita=x"])
def test_festival_voices_option_rejects_bad_values(arg: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from engines.corpus.generate import main

    with pytest.raises(SystemExit) as exc:
        main(["--out", str(tmp_path / "c"), "--minutes", "1", "--festival-voices", arg])
    assert exc.value.code == 2
    assert arg in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
