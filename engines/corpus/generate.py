"""Generate an aligned, augmented synthetic speech corpus as shards of log-mel features + labels.

    python -m engines.corpus.generate --out DIR --minutes M --seed S [--jobs N] [--langs ...] [--val]

Shard ``DIR/shard-XXXXX.npz`` holds, for utterances ``i = 0..n-1``: ``features_<i>`` float32
(T, 40) (``engines.features.logmel`` of the augmented 16 kHz audio), ``labels_<i>`` int8 (T,)
indices into ``engines.spec.VISEMES`` (hop ``t`` labelled at sample ``t*160 + 80``), and arrays
``lang``, ``voice``, ``source`` (``espeak``|``festival``|``flite``|``recorded``) and ``text`` with one string per
utterance. Each shard is a pure function of (seed, shard index, --val, options).

The held-out split (``--val``) uses voices and languages never used for training: the English
accents in :data:`VAL_EN_ACCENTS`, the languages in :data:`VAL_LANGS` and the espeak variants in
:data:`VAL_VARIANTS`, and no festival voice (all festival voices train: they are the speech that
transfers best to real voices, see docs/corpus.md).
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cache, partial
from multiprocessing import get_context
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import numpy as np

from engines.corpus.augment import AugmentConfig, NoiseBank, augment
from engines.corpus.espeak import Espeak, Synthesis, list_variants
from engines.corpus.festival import VOICE_LANG, FestivalRequest, available_voices, synth_batch
from engines.corpus.flite import Flite, FliteError, FliteRequest
from engines.corpus.labels import Segment, aligned_segments, segments_to_labels
from engines.corpus.recorded import available_dbs, load_recording, training_prompts, viseme_segments
from engines.corpus.text import TextSource, fortunes, words
from engines.features import logmel
from engines.phonemes import espeak_to_visemes, festival_to_visemes
from engines.spec import SAMPLE_RATE

# English accents (espeak voice names) with weights; real evaluation speech is English.
TRAIN_EN_ACCENTS: dict[str, float] = {
    "en-us": 0.45, "en": 0.2, "en-gb-x-rp": 0.1, "en-gb-scotland": 0.1,
    "en-gb-x-gbclan": 0.075, "en-us-nyc": 0.075,
}
TRAIN_LANGS: tuple[str, ...] = (
    "de", "fr", "es", "it", "pt-br", "pt", "nl", "pl", "ru", "cs", "sv", "da", "fi", "hu",
    "ro", "tr", "id", "sw", "hr", "ca", "eo", "la", "sk", "cy", "is",
)
VAL_EN_ACCENTS: dict[str, float] = {"en-029": 0.5, "en-gb-x-gbcwmd": 0.5}
VAL_LANGS: tuple[str, ...] = ("af", "nb", "et", "lv")
# Variants held out for validation; the rest of espeak-ng-data/voices/!v trains.
VAL_VARIANTS: tuple[str, ...] = ("f4", "m6", "klatt4", "Andy", "belinda", "steph2", "robert", "edward2")
# Variants never used (unintelligible or novelty effects).
EXCLUDED_VARIANTS: tuple[str, ...] = ("Demonic", "croak", "UniRobot", "anikaRobot", "whisperf", "Mr serious")

SHARD_SECONDS = 240.0  # seconds of augmented audio per shard


@dataclass(frozen=True)
class GenConfig:
    """What one corpus is made of (all shards share it)."""

    seed: int
    val: bool = False
    langs: tuple[str, ...] | None = None  # override the non-English language list
    english_fraction: float = 0.55
    p_no_variant: float = 0.15
    p_clean: float = 0.08  # utterances left unaugmented except silence padding and gain
    festival_fraction: float = 0.8  # share of a shard's expected utterances made by festival (0 in --val)
    flite_fraction: float = 0.0  # share made by flite's ARCTIC voices, on top of festival's (0 in --val)
    recorded_fraction: float = 0.0  # share drawn from recorded human speech (engines.corpus.recorded; 0 in --val)
    recorded_dbs: tuple[str, ...] = ("ru-nsh",)  # which recorded databases those draws come from
    # festival voice -> relative weight (None: FESTIVAL_WEIGHTS, the corpus4-6 recipe)
    festival_voices: tuple[tuple[str, float], ...] | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    shard_seconds: float = SHARD_SECONDS


@dataclass
class Utt:
    """One generated utterance before feature extraction."""

    audio: np.ndarray
    segments: list[Segment]
    lang: str
    voice: str
    source: str
    text: str


@cache
def _espeak() -> Espeak:
    """This process's espeak-ng engine (created on first use, in the worker process)."""
    return Espeak()


def _variants(val: bool) -> list[str]:
    allv = [v for v in list_variants() if v not in EXCLUDED_VARIANTS]
    if val:
        return [v for v in allv if v in VAL_VARIANTS]
    return [v for v in allv if v not in VAL_VARIANTS]


def _pick_voice(rng: np.random.Generator, cfg: GenConfig) -> tuple[str, str]:
    """-> (espeak voice name with variant, language) for one utterance."""
    en = VAL_EN_ACCENTS if cfg.val else TRAIN_EN_ACCENTS
    others = cfg.langs if cfg.langs is not None else (VAL_LANGS if cfg.val else TRAIN_LANGS)
    if not others or rng.random() < cfg.english_fraction:
        lang = _weighted_pick(rng, en)
    else:
        lang = others[int(rng.integers(len(others)))]
    variants = _variants(cfg.val)
    if rng.random() < cfg.p_no_variant or not variants:
        return lang, lang
    return f"{lang}+{variants[int(rng.integers(len(variants)))]}", lang


def _weighted_pick(rng: np.random.Generator, weights: dict[str, float], names: Sequence[str] | None = None) -> str:
    """One of ``names`` (default: every key of ``weights``), drawn with probability ∝ its weight."""
    names = list(weights) if names is None else list(names)
    w = np.array([weights[n] for n in names])
    return names[int(rng.choice(len(names), p=w / w.sum()))]


def _utt(syn: Synthesis, to_visemes: Callable[[str], tuple[str, ...]], voice: str, source: str, text: str) -> Utt:
    """A synthesis as an :class:`Utt`: its phones as viseme segments (:func:`aligned_segments`)."""
    phones = [(p.name, p.start, p.end) for p in syn.phones]
    return Utt(syn.audio, aligned_segments(phones, syn.audio, to_visemes), syn.lang, voice, source, text)


def espeak_utterance(rng: np.random.Generator, cfg: GenConfig, texts: TextSource) -> Utt:
    """Synthesize one random espeak utterance with its viseme segments (clean, 16 kHz)."""
    voice, lang = _pick_voice(rng, cfg)
    text, _ = texts.pick(lang, rng)
    rate = int(np.exp(rng.uniform(np.log(110), np.log(330))))
    pitch = int(rng.integers(15, 86))
    prange = int(rng.integers(10, 100))
    gap = int(rng.choice([0, 0, 0, 1, 3, 8]))
    syn = _espeak().synth(text, voice, rate_wpm=rate, pitch=pitch, pitch_range=prange, word_gap=gap)
    return _utt(syn, partial(espeak_to_visemes, lang=syn.lang), voice, "espeak", text)


FESTIVAL_WEIGHTS: dict[str, float] = {
    "kal_diphone": 0.25, "ked_diphone": 0.25, "us-slt-hts": 0.3, "it-lp_diphone": 0.1, "it-pc_diphone": 0.1,
}


def festival_utterances(
    rng: np.random.Generator, n: int, texts: TextSource, weights: dict[str, float] | None = None
) -> list[Utt]:
    """``n`` festival utterances in one batch, voices drawn by ``weights`` (default FESTIVAL_WEIGHTS).

    Voices that are not installed are left out.
    """
    weights = FESTIVAL_WEIGHTS if weights is None else weights
    unknown = sorted(set(weights) - set(VOICE_LANG))
    if unknown:
        raise ValueError(f"unknown festival voices {unknown}; known: {sorted(VOICE_LANG)}")
    installed = set(available_voices())  # one directory scan, not one per voice
    voices = [v for v in weights if v in installed]
    if n <= 0 or not voices:
        return []
    reqs = []
    for _ in range(n):
        voice = _weighted_pick(rng, weights, voices)
        text, _ = texts.pick(VOICE_LANG[voice], rng)
        reqs.append(FestivalRequest(text, voice, float(rng.uniform(0.8, 1.3))))
    out = []
    for req, syn in zip(reqs, synth_batch(reqs), strict=True):
        if syn is None or syn.audio.shape[0] < SAMPLE_RATE // 5:
            continue
        out.append(_utt(syn, partial(festival_to_visemes, lang=syn.lang), req.voice, "festival", req.text))
    return out


FLITE_WEIGHTS: dict[str, float] = {"flite-awb": 1.0, "flite-rms": 1.0, "flite-slt": 1.0}


def flite_utterances(rng: np.random.Generator, n: int, texts: TextSource) -> list[Utt]:
    """``n`` English flite utterances (awb, rms, slt), rate 0.8-1.3x and mean pitch 0.85-1.2x varied."""
    if n <= 0:
        return []
    synth = Flite()
    out = []
    for _ in range(n):
        voice = _weighted_pick(rng, FLITE_WEIGHTS)
        text, _ = texts.pick("en-us", rng)
        req = FliteRequest(text, voice, float(rng.uniform(0.8, 1.3)), float(rng.uniform(0.85, 1.2)))
        try:
            syn = synth.synth(req)
        except FliteError as exc:
            print(f"flite: skipped an utterance: {exc}", file=sys.stderr, flush=True)
            continue
        if syn.audio.shape[0] < SAMPLE_RATE // 5:
            continue
        out.append(_utt(syn, festival_to_visemes, voice, "flite", text))
    return out


def recorded_utterances(rng: np.random.Generator, n: int, dbs: Sequence[str] | None = None) -> list[Utt]:
    """``n`` prompts drawn (with replacement, every prompt alike) from the training prompts of
    ``dbs`` (default: every installed recorded database)."""
    dbs = available_dbs() if dbs is None else dbs
    pool = [(db, name) for db in dbs for name in training_prompts(db)]
    if n <= 0 or not pool:
        return []
    out = []
    for j in rng.integers(len(pool), size=n):
        rec = load_recording(*pool[int(j)])
        out.append(Utt(rec.audio, viseme_segments(rec), rec.lang, rec.db, "recorded", rec.text))
    return out


def make_shard(cfg: GenConfig, index: int) -> dict[str, np.ndarray]:
    """All arrays of shard ``index``: deterministic from (cfg, index)."""
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, index, int(cfg.val)]))
    bank = NoiseBank.load(cfg.augment.dev_speech)
    texts = TextSource()
    # Festival utterances are made in one batch (one festival process) and mixed in at random.
    frac = 0.0 if cfg.val else cfg.festival_fraction
    expected = cfg.shard_seconds / 6.0  # ~6 s per augmented utterance
    fest_w = dict(cfg.festival_voices) if cfg.festival_voices else None
    pending = festival_utterances(rng, int(round(expected * frac)), texts, fest_w)
    if cfg.flite_fraction > 0 and not cfg.val:
        # its own random stream, so corpora made without flite stay exactly as they were
        frng = np.random.default_rng(np.random.SeedSequence([cfg.seed, index, int(cfg.val), 7]))
        pending += flite_utterances(frng, int(round(expected * cfg.flite_fraction)), texts)
        pending = [pending[int(j)] for j in frng.permutation(len(pending))]
        frac += cfg.flite_fraction
    if cfg.recorded_fraction > 0 and not cfg.val:
        rrng = np.random.default_rng(np.random.SeedSequence([cfg.seed, index, int(cfg.val), 11]))
        pending += recorded_utterances(rrng, int(round(expected * cfg.recorded_fraction)), cfg.recorded_dbs)
        pending = [pending[int(j)] for j in rrng.permutation(len(pending))]
        frac += cfg.recorded_fraction
    arrays: dict[str, np.ndarray] = {}
    langs: list[str] = []
    voices: list[str] = []
    sources: list[str] = []
    textlog: list[str] = []
    total = 0.0
    i = 0
    clean_cfg = replace(
        cfg.augment, p_speed=0.0, p_pitch=0.0, p_reverb=0.0, p_eq=0.0, p_bandlimit=0.0,
        p_noise=0.0, p_opus=0.0,
    )
    while total < cfg.shard_seconds:
        try:
            if pending and rng.random() < frac * 1.3:
                utt = pending.pop()
            else:
                utt = espeak_utterance(rng, cfg, texts)
        except KeyError as exc:  # a phoneme without a viseme: never silently mislabel
            print(f"shard {index}: skipped an utterance: {exc}", file=sys.stderr, flush=True)
            continue
        if utt.audio.shape[0] < SAMPLE_RATE // 5:
            continue
        acfg = clean_cfg if rng.random() < cfg.p_clean else cfg.augment
        audio, segs, _ = augment(utt.audio, utt.segments, rng, acfg, bank)
        bank.remember(utt.audio, cfg.augment.babble_pool)
        feats = logmel(audio)
        labels = segments_to_labels(segs, audio.shape[0])
        arrays[f"features_{i}"] = feats
        arrays[f"labels_{i}"] = labels
        langs.append(utt.lang)
        voices.append(utt.voice)
        sources.append(utt.source)
        textlog.append(utt.text)
        total += audio.shape[0] / SAMPLE_RATE
        i += 1
    arrays["lang"] = np.array(langs)
    arrays["voice"] = np.array(voices)
    arrays["source"] = np.array(sources)
    arrays["text"] = np.array(textlog)
    return arrays


def _write_shard(args: tuple[GenConfig, int, str]) -> tuple[int, float, int]:
    cfg, index, out = args
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    arrays = make_shard(cfg, index)
    path = Path(out) / f"shard-{index:05d}.npz"
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)  # type: ignore[arg-type]
    tmp.replace(path)
    hops = sum(v.shape[0] for k, v in arrays.items() if k.startswith("labels_"))
    return index, hops / 100.0, len(arrays["lang"])


def warm_text_caches(cfg: GenConfig) -> None:
    """Read the fortune databases and word lists of every language ``cfg`` can pick."""
    en = VAL_EN_ACCENTS if cfg.val else TRAIN_EN_ACCENTS
    others = cfg.langs if cfg.langs is not None else (VAL_LANGS if cfg.val else TRAIN_LANGS)
    for lang in [*en, *others]:
        fortunes(lang)
        words(lang)


def _shard_process(cfg: GenConfig, index: int, out: str) -> None:
    """Child-process body: write one shard (exits non-zero on any error)."""
    _write_shard((cfg, index, out))


def generate(cfg: GenConfig, out: Path, minutes: float, jobs: int = 1, retries: int = 2) -> int:
    """Write ``ceil(minutes*60 / shard_seconds)`` shards to ``out``; returns the shard count.

    Every shard is made in a fresh process (forked): espeak-ng's global state starts clean, so
    a shard does not depend on which worker made it, and a crash inside libespeak-ng (it has
    happened: a general protection fault after many voice switches) costs one retry, never the
    run. Existing shards are kept, so an interrupted run resumes.
    """
    out.mkdir(parents=True, exist_ok=True)
    n_shards = max(1, math.ceil(minutes * 60.0 / cfg.shard_seconds))
    warm_text_caches(cfg)  # read once here; forked shard processes inherit the caches
    todo = [i for i in range(n_shards) if not (out / f"shard-{i:05d}.npz").exists()]
    attempts = dict.fromkeys(todo, 0)
    ctx = get_context("fork")
    running: dict[int, BaseProcess] = {}
    t0 = time.monotonic()
    done_s = 0.0
    n_utts = 0
    failed: list[int] = []
    while todo or running:
        while todo and len(running) < max(1, jobs):
            idx = todo.pop(0)
            attempts[idx] += 1
            proc = ctx.Process(target=_shard_process, args=(cfg, idx, str(out)), daemon=True)
            # the child must never garbage-collect what it inherits: a parent that ran other
            # native code in threads (a test suite: onnxruntime, PortAudio, codecs) leaves objects
            # whose finalizers would run in the child against locks no thread there holds
            gc.freeze()
            try:
                proc.start()
            finally:
                gc.unfreeze()
            running[idx] = proc
        time.sleep(0.05)
        for idx, child in list(running.items()):
            if child.is_alive():
                continue
            child.join()
            del running[idx]
            path = out / f"shard-{idx:05d}.npz"
            if child.exitcode == 0 and path.exists():
                with np.load(path) as z:
                    hops = sum(z[k].shape[0] for k in z.files if k.startswith("labels_"))
                    n = len(z["lang"])
                done_s += hops / 100.0
                n_utts += n
                _progress(idx, done_s, n_utts, t0)
            elif attempts[idx] <= retries:
                print(f"shard {idx}: worker exit code {child.exitcode}, retrying", file=sys.stderr, flush=True)
                todo.append(idx)
            else:
                print(f"shard {idx}: failed {attempts[idx]} times, skipped", file=sys.stderr, flush=True)
                failed.append(idx)
    if failed:
        print(f"{len(failed)} shards failed: {failed}", file=sys.stderr, flush=True)
    return n_shards - len(failed)


def _progress(idx: int, done_s: float, n_utts: int, t0: float) -> None:
    el = time.monotonic() - t0
    print(
        f"shard {idx:5d} done: {done_s / 60:.1f} min of audio, {n_utts} utterances, "
        f"{el:.0f} s elapsed, {done_s / max(el, 1e-9):.0f}x real time",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--minutes", type=float, required=True, help="minutes of augmented audio")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--langs", nargs="*", default=None, help="non-English espeak languages")
    ap.add_argument("--val", action="store_true", help="held-out voices and languages")
    ap.add_argument("--dev-speech", type=Path, default=None, help="folder with noise/ and rir/")
    ap.add_argument("--flite-fraction", type=float, default=0.0,
                    help="flite (CMU ARCTIC awb/rms/slt voices) share of utterances, on top of festival's")
    ap.add_argument("--recorded-fraction", type=float, default=0.0,
                    help="recorded human speech drawn per shard, as a share of its expected ~40 utterances "
                         "(above 1 for databases of short prompts)")
    ap.add_argument("--recorded-dbs", nargs="+", default=["ru-nsh"], metavar="DB",
                    help="recorded databases to draw from (engines.corpus.recorded.RECORDED_DBS)")
    ap.add_argument("--festival-fraction", type=float, default=0.8, help="festival share (~92 %% of hops at 0.8)")
    ap.add_argument("--festival-voices", nargs="*", default=None, metavar="VOICE=WEIGHT",
                    help="festival voices and relative weights (default: the corpus4-6 mix, FESTIVAL_WEIGHTS)")
    ap.add_argument("--english-fraction", type=float, default=0.55)
    ap.add_argument("--shard-seconds", type=float, default=SHARD_SECONDS)
    ap.add_argument("--aug", nargs="*", default=[], metavar="NAME=VALUE",
                    help="override AugmentConfig probabilities, e.g. p_pitch=0.4 p_opus=0.3")
    args = ap.parse_args(argv)
    aug = AugmentConfig() if args.dev_speech is None else AugmentConfig(dev_speech=args.dev_speech)
    for item in args.aug:
        name, _, value = item.partition("=")
        if not name.startswith("p_") or not hasattr(aug, name):
            ap.error(f"--aug {item!r}: not a probability of AugmentConfig")
        overrides: dict[str, Any] = {name: float(value)}
        aug = replace(aug, **overrides)
    fest: list[tuple[str, float]] = []
    for item in args.festival_voices or []:
        name, _, value = item.partition("=")
        if name not in VOICE_LANG:
            ap.error(f"--festival-voices {item!r}: unknown voice; known: {', '.join(sorted(VOICE_LANG))}")
        try:
            weight = float(value or 1.0)
        except ValueError:
            ap.error(f"--festival-voices {item!r}: weight {value!r} is not a number")
        if not weight > 0:
            ap.error(f"--festival-voices {item!r}: weight must be > 0")
        fest.append((name, weight))
    missing = sorted({name for name, _ in fest} - set(available_voices()))
    if missing:
        ap.error(f"--festival-voices: not installed: {', '.join(missing)} (see the Makefile's APT_PKGS)")
    if args.recorded_fraction > 0:
        missing_dbs = sorted(set(args.recorded_dbs) - set(available_dbs()))
        if missing_dbs:
            ap.error(f"--recorded-dbs: not available: {', '.join(missing_dbs)} (ru-nsh: Debian festvox-ru; "
                     "en-allison: python -m engines.corpus.transcribed)")
    cfg = GenConfig(
        seed=args.seed, val=args.val, langs=tuple(args.langs) if args.langs else None, augment=aug,
        festival_fraction=args.festival_fraction, flite_fraction=args.flite_fraction,
        recorded_fraction=args.recorded_fraction, recorded_dbs=tuple(args.recorded_dbs),
        english_fraction=args.english_fraction,
        shard_seconds=args.shard_seconds, festival_voices=tuple(fest) or None,
    )
    n = generate(cfg, args.out, args.minutes, args.jobs)
    print(f"wrote {n} shards to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
