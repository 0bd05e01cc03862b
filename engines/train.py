"""Train the viseme network on the synthetic corpus; export ONNX at the end.

``python -m engines.train --corpus data/corpus --out runs/NAME --lookahead-ms 40 --minutes 45 --seed 0``

- Data: ``CORPUS/train`` shards (``CORPUS/val`` for model selection), random crops of
  ``--crop`` hops (a third start at the utterance start, the rest anywhere: the model sees
  both cold starts and the middle of speech), zero state at each crop start, as a new stream;
  ``--onset-crops`` of them start at the first speech hop instead (a clip trimmed at its onset).
  Beyond an utterance's end the input is digital silence, exactly what ``flush()`` feeds.
- Targets: output row ``t`` is trained on the label of hop ``t - L`` (L = lookahead hops).
- Loss: cross-entropy with label smoothing and mild inverse-frequency class weights.
- Extra feature-domain augmentation: mel-axis warping (a vocal-tract-length proxy) and one
  frequency mask per crop, on top of the corpus' own audio augmentation.
- Schedule: AdamW, warm-up then cosine decay over ``--steps`` or, by default, the
  wall-clock budget ``--minutes`` (progress = max(step fraction, time fraction)); weights are
  averaged (EMA) and the EMA model is evaluated.
- Selection: every ``--eval-every`` seconds the EMA model is scored on the synthetic val split
  (Rhubarb-shape accuracy, strict + tolerant). The best is kept (``best.pt``). The real
  recordings are scored too, for the log only: never for selection.
- Output in ``--out``: ``train.log``, ``log.jsonl`` (one line per evaluation), ``best.pt``,
  ``last.pt``, ``visemes.onnx`` (best, parity-checked), ``metrics.json``.

Reproducible: seeded numpy/torch; with ``--steps`` fixed the run is deterministic on one CPU
thread (with only ``--minutes``, the step count depends on the machine's speed; it is logged).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from engines.evaluate import Scores, score_probs
from engines.export import export_onnx
from engines.model import ModelConfig, VisemeNet, count_parameters, save_checkpoint
from engines.phonemes import rhubarb_table
from engines.spec import LOG_FLOOR, N_MELS, N_VISEMES, VISEMES

log = logging.getLogger("engines.train")

SILENCE = float(np.log(np.float32(LOG_FLOOR)))  # log-mel of digital silence, every band
IGNORE = -100


class Corpus:
    """All utterances of one split concatenated: features (N, 40), labels (N,), offsets."""

    def __init__(self, utts: list[Any]) -> None:
        if not utts:
            raise ValueError("empty corpus split")
        self.features = np.concatenate([u.features for u in utts]).astype(np.float32)
        self.labels = np.concatenate([u.labels for u in utts]).astype(np.int64)
        lens = np.array([u.features.shape[0] for u in utts], np.int64)
        self.starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
        self.lengths = lens
        self.langs = [u.lang for u in utts]
        # Dynamic range (nats): 95th - 5th percentile of frame energy, a proxy for the SNR.
        self.dynamic_range = np.array([
            float(np.subtract(*np.percentile(np.logaddexp.reduce(u.features, axis=1), [95, 5])))
            for u in utts
        ])
        self.sample_p = lens / lens.sum()
        # First hop labelled as speech (not sil) in each utterance: where a trimmed clip would begin.
        sil = VISEMES.index("sil")
        self.first_speech = np.array([
            int(np.argmax(u.labels != sil)) if np.any(u.labels != sil) else 0 for u in utts
        ], np.int64)

    def favour_clean(self, strength: float) -> None:
        """Sample utterances ∝ length x (1 + strength x sigmoid((DR - 8) / 1.5)): cleaner more often."""
        if strength < 0:
            raise ValueError(f"clean-bias strength must be >= 0, got {strength}")
        w = self.lengths * (1.0 + strength / (1.0 + np.exp(-(self.dynamic_range - 8.0) / 1.5)))
        self.sample_p = w / w.sum()

    def __len__(self) -> int:
        return len(self.lengths)

    def class_freq(self) -> np.ndarray:
        """(15,) label frequency."""
        c = np.bincount(self.labels, minlength=N_VISEMES).astype(np.float64)
        return c / c.sum()


def load_split(corpus: Path, split: str) -> Corpus:
    """Read ``corpus/split`` shards (engines.corpus.dataset) into a :class:`Corpus`."""
    from engines.corpus.dataset import load_corpus

    return Corpus(load_corpus(corpus / split))


def warp_mels(x: np.ndarray, alpha: float) -> np.ndarray:
    """(T, M) log-mel resampled along the mel axis by factor ``alpha`` (edge bins held)."""
    m = x.shape[1]
    src = np.clip(np.arange(m) / alpha, 0, m - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, m - 1)
    w = (src - lo).astype(np.float32)
    return x[:, lo] * (1 - w) + x[:, hi] * w


def noise_bank(dev_speech: Path) -> list[np.ndarray]:
    """Log-mel (T, 40) of the shared real noise recordings (for feature-domain mixing)."""
    import soundfile as sf

    from engines.features import logmel

    out = []
    for p in sorted((dev_speech / "noise").glob("*.wav")):
        audio, sr = sf.read(str(p), dtype="float32", always_2d=True)
        if sr != 16000:
            raise ValueError(f"{p}: sample rate {sr}, expected 16000")
        out.append(logmel(audio[:, 0]))
    return out


def mix_noise(x: np.ndarray, rng: np.random.Generator, bank: list[np.ndarray]) -> np.ndarray:
    """Add a noise floor in the power domain at a random SNR (5-40 dB below the crop's speech peak).

    The noise is a real recording's log-mel (looped) or stationary coloured noise with a random
    spectral tilt and slow level wobble. (T, 40) -> (T, 40).
    """
    t = x.shape[0]
    level = float(np.percentile(np.logaddexp.reduce(x, axis=1), 90))
    if bank and rng.random() < 0.6:
        src = bank[int(rng.integers(len(bank)))]
        reps = int(np.ceil((t + src.shape[0]) / src.shape[0]))
        loop = np.concatenate([src] * reps)
        a = int(rng.integers(0, src.shape[0]))
        n = loop[a : a + t].copy()
    else:
        tilt = float(rng.uniform(-4.0, 2.0))
        prof = tilt * np.linspace(0.0, 1.0, N_MELS) + rng.normal(0.0, 0.4, N_MELS)
        wobble = np.cumsum(rng.normal(0.0, 0.05, t))[:, None]
        n = prof[None, :] + wobble + rng.normal(0.0, 0.6, (t, N_MELS))  # log-chi2-ish jitter
    n_level = float(np.mean(np.logaddexp.reduce(n, axis=1)))
    snr_nats = float(rng.uniform(5.0, 40.0)) * np.log(10.0) / 10.0
    n = n + (level - snr_nats - n_level)
    return np.logaddexp(x, n.astype(np.float32)).astype(np.float32)


def random_eq(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A microphone/channel colouring: random tilt, sometimes a low-pass roll-off (nats per band)."""
    m = np.arange(N_MELS, dtype=np.float32)
    c = float(rng.uniform(-2.0, 2.0)) * (m / (N_MELS - 1) - 0.5)
    if rng.random() < 0.5:
        k0 = float(rng.uniform(22, 38))
        c = c - np.maximum(m - k0, 0.0) * float(rng.uniform(0.2, 1.2))
    return (x + c[None, :]).astype(np.float32)


WARP = (0.5, 0.88, 1.12)  # mel-axis warp: probability per crop, lowest and highest factor


def make_batch(
    data: Corpus, rng: np.random.Generator, batch: int, crop: int, lookahead: int, augment: bool,
    bank: list[np.ndarray] | None = None, onset_p: float = 0.0,
    warp: tuple[float, float, float] = WARP,
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> features (B, crop, 40) float32, targets (B, crop) int64 (IGNORE where no label).

    With probability ``onset_p`` a crop starts 0-3 hops before the utterance's first speech hop,
    from a zero state: a recording trimmed at the speech onset, as many real clips are.
    ``warp`` = (probability, lowest, highest factor) of the mel-axis warp (:func:`warp_mels`).
    """
    feats = np.full((batch, crop, N_MELS), SILENCE, np.float32)
    tgt = np.full((batch, crop), IGNORE, np.int64)
    # Utterances drawn by data.sample_p (proportional to length unless favour_clean was called).
    idx = rng.choice(len(data), size=batch, p=data.sample_p)
    for b, i in enumerate(idx):
        n, s0 = int(data.lengths[i]), int(data.starts[i])
        start = 0 if (rng.random() < 1 / 3 or n <= crop) else int(rng.integers(0, n - crop + lookahead + 1))
        if onset_p > 0 and rng.random() < onset_p:
            start = max(int(data.first_speech[i]) - int(rng.integers(0, 4)), 0)
        start = min(start, max(n - 1, 0))
        take = min(crop, n - start)
        x = data.features[s0 + start : s0 + start + take]
        if augment:
            if rng.random() < warp[0]:
                x = warp_mels(x, float(rng.uniform(warp[1], warp[2])))
            if rng.random() < 0.5:
                x = mix_noise(x, rng, bank or [])
            if rng.random() < 0.5:
                x = random_eq(x, rng)
            if rng.random() < 0.5:
                w = int(rng.integers(1, 6))
                f0 = int(rng.integers(0, N_MELS - w))
                x = x.copy()
                x[:, f0 : f0 + w] = x[:, f0 : f0 + w].mean()
        feats[b, :take] = x
        # output row t predicts hop start + t - L
        t_lo, t_hi = lookahead, min(crop, n - start + lookahead)
        if t_hi > t_lo:
            tgt[b, t_lo:t_hi] = data.labels[s0 + start : s0 + start + (t_hi - t_lo)]
    return torch.from_numpy(feats), torch.from_numpy(tgt)


@torch.no_grad()
def predict_utterances(model: VisemeNet, feats: list[np.ndarray], device: torch.device) -> list[np.ndarray]:
    """Whole-sequence (T, 15) probabilities per utterance (== the streaming output, see tests),
    with L silence hops appended as ``flush()`` does."""
    model.eval()
    la = model.lookahead_hops
    out = []
    for f in feats:
        x = np.concatenate([f, np.full((la, N_MELS), SILENCE, np.float32)])
        xt = torch.from_numpy(x)[None].to(device)
        logits, _ = model.logits(xt, model.zero_state(1))
        out.append(torch.softmax(logits[0, la:], dim=-1).cpu().numpy())
    return out


def score_split(
    model: VisemeNet, feats: list[np.ndarray], labels: list[np.ndarray], device: torch.device,
    skips: list[int] | None = None,
) -> dict[str, float]:
    """Frame accuracies (see engines.evaluate.Scores) over utterances; the first ``skips[i]`` hops
    of utterance i (a live lead, see engines.evaluate.live_lead) are streamed but not scored."""
    sc = Scores()
    skips = skips or [0] * len(feats)
    for probs, ref, skip in zip(predict_utterances(model, feats, device), labels, skips, strict=True):
        score_probs(sc, probs[skip:], ref)
    return sc.summary()


RealSet = tuple[list[np.ndarray], list[np.ndarray], list[int]]


def real_eval_sets() -> dict[str, RealSet]:
    """Real recordings as (features, labels, unscored lead hops), for logging only (never for selection)."""
    from engines.evaluate import real_sets
    from engines.features import logmel

    out: dict[str, RealSet] = {}
    for key, items in real_sets().items():
        streamed = [it.streamed() for it in items]
        out[key] = ([logmel(a) for a, _ in streamed], [it.labels for it in items], [skip for _, skip in streamed])
    return out


def parse_exclude(spec: str) -> tuple[str, str]:
    """'SOURCE:LANG' -> (source, language prefix); a bad spec raises ValueError naming it."""
    source, sep, lang = spec.partition(":")
    if not sep or not source:
        raise ValueError(f"--exclude wants SOURCE:LANG (e.g. espeak:en or espeak:), got {spec!r}")
    return source, lang


def excluded(source: str, lang: str, rules: list[tuple[str, str]]) -> bool:
    """Whether an utterance of ``source`` in ``lang`` matches any (source, language prefix) rule."""
    return any(source == s and lang.startswith(p) for s, p in rules)


def selection_score(s: dict[str, float]) -> float:
    """The synthetic-val number that picks the best checkpoint."""
    return 0.5 * (s["rhubarb_strict"] + s["rhubarb_tolerant"])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m engines.train", description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", nargs="+", default=["data/corpus"],
                    help="folder(s) with train/ (and val/) shards; several are concatenated")
    ap.add_argument("--val", default="", help="val shard folder (default: the first CORPUS/val)")
    ap.add_argument("--exclude", action="append", default=[], metavar="SOURCE:LANG",
                    help="leave out training utterances of this source (espeak, festival, recorded, ...) whose "
                         "language starts with LANG ('' for any language); repeatable, e.g. --exclude espeak:en")
    ap.add_argument("--out", required=True, help="run folder (created)")
    ap.add_argument("--lookahead-ms", type=int, default=40, help="lookahead, multiple of 10 ms")
    ap.add_argument("--minutes", type=float, default=45.0, help="wall-clock training budget")
    ap.add_argument("--steps", type=int, default=0, help="fixed step count (0: from --minutes)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--crop", type=int, default=300, help="hops per training crop")
    ap.add_argument("--onset-crops", type=float, default=0.0,
                    help="share of crops that start at the first speech hop (a clip trimmed at its onset)")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--weight-decay", type=float, default=1e-2)
    ap.add_argument("--label-smoothing", type=float, default=0.1)
    ap.add_argument("--class-weight-power", type=float, default=0.3, help="weights = freq^-power")
    ap.add_argument("--ema", type=float, default=0.998, help="EMA decay of the weights (0: off)")
    ap.add_argument("--eval-every", type=float, default=0.0, help="seconds between evaluations (0: budget/8)")
    ap.add_argument("--val-limit", type=int, default=300, help="max val utterances per evaluation")
    ap.add_argument("--no-real", action="store_true", help="skip the real-speech log evaluation")
    ap.add_argument("--no-augment", action="store_true")
    ap.add_argument("--warp", type=float, nargs=3, default=list(WARP), metavar=("P", "LOW", "HIGH"),
                    help="mel-axis warp (a vocal-tract-length proxy): probability per crop, factor range")
    ap.add_argument("--clean-bias", type=float, default=0.0,
                    help="sample high-dynamic-range (cleaner) utterances up to 1+X times as often")
    ap.add_argument("--dev-speech", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "dev-speech"),
                    help="shared dev-speech folder (its noise/*.wav are mixed into training features)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--channels", type=int, default=ModelConfig.channels)
    ap.add_argument("--hidden", type=int, default=ModelConfig.hidden)
    ap.add_argument("--kernel", type=int, default=ModelConfig.kernel)
    ap.add_argument("--conv-layers", type=int, default=ModelConfig.conv_layers)
    ap.add_argument("--gru-layers", type=int, default=ModelConfig.gru_layers)
    ap.add_argument("--norm-window", type=int, default=ModelConfig.norm_window)
    ap.add_argument("--dropout", type=float, default=ModelConfig.dropout)
    ap.add_argument("--norm", default=ModelConfig.norm, choices=("peak", "mean", "meanvar"))
    ap.add_argument("--cepstra", type=int, default=ModelConfig.cepstra, help="0: log-mel input; K: first K DCT coefficients")
    args = ap.parse_args(argv)
    if args.lookahead_ms % 10 != 0 or args.lookahead_ms < 0:
        ap.error(f"--lookahead-ms must be a non-negative multiple of 10, got {args.lookahead_ms}")
    if args.minutes <= 0 and args.steps <= 0:
        ap.error("give --minutes > 0 or --steps > 0")
    p_warp, lo_warp, hi_warp = args.warp
    if not (0.0 <= p_warp <= 1.0 and 0.0 < lo_warp <= hi_warp):
        ap.error(f"--warp wants P in [0, 1] and 0 < LOW <= HIGH, got {args.warp}")
    try:
        args.exclude_rules = [parse_exclude(spec) for spec in args.exclude]
    except ValueError as e:
        ap.error(str(e))
    return args


def _setup_logging(out: Path) -> None:
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    log.setLevel(logging.INFO)
    log.propagate = False
    for h in list(log.handlers):
        log.removeHandler(h)
    for h in (logging.StreamHandler(sys.stdout), logging.FileHandler(out / "train.log")):
        h.setFormatter(fmt)
        log.addHandler(h)


def main(argv: list[str] | None = None) -> int:
    """Train, select on synthetic val, export. Returns 0 on success."""
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _setup_logging(out)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    log.info("args %s", vars(args))
    log.info("device %s, torch %s, threads %d", device, torch.__version__, torch.get_num_threads())

    from engines.corpus.dataset import load_corpus

    t0 = time.monotonic()
    utts = [u for c in args.corpus for u in load_corpus(Path(c) / "train")]
    if args.exclude_rules:
        kept = [u for u in utts if not excluded(u.source, u.lang, args.exclude_rules)]
        hops_all, hops_kept = sum(u.labels.size for u in utts), sum(u.labels.size for u in kept)
        log.info("--exclude %s: left out %d of %d utterances (%.1f of %.1f min)", args.exclude,
                 len(utts) - len(kept), len(utts), (hops_all - hops_kept) / 6000, hops_all / 6000)
        if not kept:
            raise SystemExit(f"--exclude {args.exclude} leaves no training utterances")
        utts = kept
    train = Corpus(utts)
    val_dirs = [Path(args.val)] if args.val else [Path(c) / "val" for c in args.corpus if (Path(c) / "val").is_dir()][:1]
    val = Corpus(load_corpus(val_dirs[0])) if val_dirs else None
    if args.clean_bias > 0:
        train.favour_clean(args.clean_bias)
    log.info("train: %d utterances, %.1f min of speech; val: %s (loaded in %.1f s)", len(train),
             train.labels.size / 6000, f"{len(val)} utterances" if val else "none", time.monotonic() - t0)
    if val is None:
        log.warning("no val split: the LAST model is kept (no selection)")
    val_feats = val_labels = None
    if val is not None:
        sel = np.random.default_rng(1234).permutation(len(val))[: args.val_limit]
        val_feats = [val.features[val.starts[i] : val.starts[i] + val.lengths[i]] for i in sel]
        val_labels = [val.labels[val.starts[i] : val.starts[i] + val.lengths[i]] for i in sel]
    real = {} if args.no_real else real_eval_sets()
    noise_dir = Path(args.dev_speech)
    bank = noise_bank(noise_dir) if (noise_dir / "noise").is_dir() else []
    log.info("feature-domain noise bank: %d recordings from %s", len(bank), noise_dir / "noise")

    la = args.lookahead_ms // 10
    cfg = ModelConfig(
        lookahead_hops=la, channels=args.channels, hidden=args.hidden, kernel=args.kernel,
        conv_layers=args.conv_layers, gru_layers=args.gru_layers, norm_window=args.norm_window,
        dropout=args.dropout, cepstra=args.cepstra, norm=args.norm,
    )
    model = VisemeNet(cfg).to(device)
    ema = copy.deepcopy(model).eval() if args.ema > 0 else model
    for p in ema.parameters():
        p.requires_grad_(False)
    log.info("model %s: %d parameters, state %d floats", cfg.to_json(), count_parameters(model), model.state_size)

    freq = train.class_freq()
    weights = np.power(np.maximum(freq, 1e-4), -args.class_weight_power)
    weights = weights / (weights * freq).sum()  # expected weight 1
    log.info("class freq %s", {n: round(float(f), 4) for n, f in zip(VISEMES, freq, strict=True)})
    class_w = torch.tensor(weights, dtype=torch.float32, device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    budget_s = args.minutes * 60 if args.steps <= 0 else math.inf
    total_steps = args.steps if args.steps > 0 else 10**9
    eval_every = args.eval_every or (budget_s / 8 if math.isfinite(budget_s) else 120.0)
    warmup = min(150, max(1, args.steps // 10)) if args.steps > 0 else 150

    best: dict[str, Any] = {"score": -1.0}
    history = []
    start = time.monotonic()
    last_eval = start
    step = 0
    loss_avg = 0.0

    def evaluate(final: bool = False) -> None:
        nonlocal best
        entry: dict[str, Any] = {"step": step, "elapsed_s": round(time.monotonic() - start, 1), "loss": round(loss_avg, 4)}
        if val_feats is not None and val_labels is not None:
            entry["synthetic_val"] = score_split(ema, val_feats, val_labels, device)
        for key, (fs, ls, skips) in real.items():
            entry[key] = score_split(ema, fs, ls, device, skips)
        score = selection_score(entry["synthetic_val"]) if "synthetic_val" in entry else float(step)
        entry["selection_score"] = round(score, 4)
        if score > best["score"]:
            best = {"score": score, "step": step, "entry": entry}
            save_checkpoint(out / "best.pt", ema, {"step": step, "eval": entry, "args": vars(args)})
            entry["best"] = True
        history.append(entry)
        with open(out / "log.jsonl", "a") as fh:
            fh.write(json.dumps(entry) + "\n")
        log.info("eval %s", json.dumps(entry))
        model.train()

    model.train()
    while True:
        elapsed = time.monotonic() - start
        progress = max(step / total_steps, elapsed / budget_s)
        if progress >= 1.0:
            break
        lr_scale = min(1.0, (step + 1) / warmup) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))
        for g in opt.param_groups:
            g["lr"] = args.lr * lr_scale
        x, y = make_batch(train, rng, args.batch, args.crop, la, not args.no_augment, bank, args.onset_crops,
                          tuple(args.warp))
        x, y = x.to(device), y.to(device)
        logits, _ = model.logits(x, model.zero_state(x.shape[0]))
        loss = F.cross_entropy(logits.reshape(-1, N_VISEMES), y.reshape(-1), weight=class_w,
                               ignore_index=IGNORE, label_smoothing=args.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if ema is not model:
            d = min(args.ema, (1 + step) / (10 + step))
            with torch.no_grad():
                for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                    pe.mul_(d).add_(pm.detach(), alpha=1 - d)
        step += 1
        lv = float(loss.detach())
        loss_avg = lv if step == 1 else 0.98 * loss_avg + 0.02 * lv
        if step % 50 == 0:
            log.info("step %d loss %.4f lr %.2e elapsed %.0f s (%.3f s/step)", step, loss_avg,
                     args.lr * lr_scale, time.monotonic() - start, (time.monotonic() - start) / step)
        if time.monotonic() - last_eval >= eval_every:
            evaluate()
            last_eval = time.monotonic()
    evaluate(final=True)
    train_s = time.monotonic() - start
    save_checkpoint(out / "last.pt", ema, {"step": step, "args": vars(args)})

    from engines.model import load_checkpoint

    best_model = load_checkpoint(out / "best.pt")
    parity = export_onnx(best_model, out / "visemes.onnx")
    metrics = {
        "args": vars(args),
        "config": json.loads(cfg.to_json()),
        "parameters": count_parameters(best_model),
        "state_size": best_model.state_size,
        "steps": step,
        "train_seconds": round(train_s, 1),
        "best_step": best["step"],
        "best": best["entry"],
        "onnx_bytes": (out / "visemes.onnx").stat().st_size,
        "parity": parity,
        "train_utterances": len(train),
        "train_hours": round(train.labels.size / 360000, 3),
        "rhubarb_table": rhubarb_table().tolist(),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    log.info("done: %d steps in %.0f s; best step %d (val score %.4f); exported %s (%d bytes), parity %s",
             step, train_s, best["step"], best["score"], out / "visemes.onnx", metrics["onnx_bytes"], parity)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
