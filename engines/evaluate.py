"""Frame accuracy of viseme models, run through the streaming API exactly as served.

``python -m engines.evaluate --model engines/weights/visemes.onnx --out docs/eval`` scores the
model and the ``energy`` baseline on

- the synthetic validation split (held-out voices/languages; features pushed 2 hops at a time),
- the real reference recordings (hand-labelled phone boundaries; audio pushed 20 ms at a time
  through :class:`engines.features.LogMelStream`),
- the real aligned set (pocketsphinx forced alignments of snt5, and of all 10 utterances with a
  phone string as ``real_aligned_all``), reported separately,
- ``real_aligned_all_live``: the same 10 recordings as a live session hears them. The clips are
  trimmed at the first phone, so a stream that starts with the file starts cold on speech; in a
  live session the microphone is open before the person speaks. Here the stream first gets
  ``LIVE_LEAD_S`` of a ``LIVE_FLOOR_DBFS`` noise floor (seeded white noise), and only the
  recording's own hops are scored,
- ``recorded_heldout_<db>``: the held-out prompts (every 20th) of each installed recorded training
  database (:mod:`engines.corpus.recorded`: festvox-ru's Russian reader, the aligned Asterisk
  prompts), whose other prompts train: unseen sentences of voices the model has heard,

on the 15 visemes and on Rhubarb's 9 shapes (A-H, X), strict and tolerant (a frame is correct
if the prediction equals the reference anywhere within +-4 hops = +-40 ms). It writes
``eval.json`` (all numbers), ``confusion.png`` and, with ``--lookahead-sweep runs/la*``,
``lookahead.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from engines.features import LogMelStream
from engines.phonemes import RHUBARB_SHAPES, rhubarb_decide, rhubarb_table
from engines.predictor import VisemeModel
from engines.spec import HOP_LENGTH, N_VISEMES, SAMPLE_RATE, VISEMES

log = logging.getLogger(__name__)

TOLERANCE_HOPS = 4  # +-40 ms
CHUNK_SAMPLES = SAMPLE_RATE // 50  # 20 ms of audio per push, as the server does
LIVE_LEAD_S = 0.5  # s of microphone noise floor before the recording in the "live" sets
LIVE_FLOOR_DBFS = -60.0  # RMS level of that floor, dB re full scale (a quiet room, a decent mic)
METRICS: tuple[str, ...] = ("viseme_strict", "viseme_tolerant", "rhubarb_strict", "rhubarb_tolerant")


def to_rhubarb(visemes: NDArray[np.integer[Any]]) -> NDArray[np.int64]:
    """Viseme indices (any shape) -> Rhubarb shape indices (same shape)."""
    return rhubarb_table()[np.asarray(visemes, np.int64)]


def strict_accuracy(pred: NDArray[np.integer[Any]], ref: NDArray[np.integer[Any]]) -> float:
    """Fraction of frames where ``pred == ref``; (T,) int arrays of equal length."""
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape or pred.ndim != 1:
        raise ValueError(f"pred and ref must be equal-length 1-D, got {pred.shape} and {ref.shape}")
    if pred.size == 0:
        raise ValueError("no frames to score")
    return float(np.mean(pred == ref))


def tolerant_hits(
    pred: NDArray[np.integer[Any]], ref: NDArray[np.integer[Any]], tol: int = TOLERANCE_HOPS
) -> NDArray[np.bool_]:
    """(T,) bool: ``pred[t]`` equals ``ref[s]`` for some ``|s - t| <= tol`` (clipped at the ends)."""
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape or pred.ndim != 1:
        raise ValueError(f"pred and ref must be equal-length 1-D, got {pred.shape} and {ref.shape}")
    if tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    n = pred.shape[0]
    hit = np.zeros(n, bool)
    for d in range(-tol, tol + 1):
        lo, hi = max(0, -d), min(n, n - d)  # t in [lo, hi) has t + d in range
        if lo < hi:
            hit[lo:hi] |= pred[lo:hi] == ref[lo + d : hi + d]
    return hit


def tolerant_accuracy(
    pred: NDArray[np.integer[Any]], ref: NDArray[np.integer[Any]], tol: int = TOLERANCE_HOPS
) -> float:
    """Fraction of frames whose prediction occurs in the reference within +-``tol`` hops."""
    if np.asarray(pred).size == 0:
        raise ValueError("no frames to score")
    return float(np.mean(tolerant_hits(pred, ref, tol)))


def cues_to_shapes(cues: Sequence[dict[str, Any]], n_hops: int) -> NDArray[np.int64]:
    """Rhubarb-format mouth cues (``start``/``end`` s, ``value`` A-H or X) -> (n_hops,) shape indices.

    Hop ``t`` takes the cue covering its centre, ``(t*HOP_LENGTH + HOP_LENGTH//2) / SAMPLE_RATE`` s
    (the labels' convention); where cues overlap the later one in the list wins, as a timeline
    written in order would keep it; hops outside every cue are X. Raises ValueError naming an
    unknown shape or a cue that ends before it starts.
    """
    index = {s: i for i, s in enumerate(RHUBARB_SHAPES)}
    centres = (np.arange(n_hops) * HOP_LENGTH + HOP_LENGTH // 2) / SAMPLE_RATE
    out = np.full(n_hops, index["X"], np.int64)
    for cue in cues:
        value, start, end = str(cue["value"]), float(cue["start"]), float(cue["end"])
        if value not in index:
            raise ValueError(f"unknown mouth shape {value!r} in cue {cue!r}; expected one of {''.join(RHUBARB_SHAPES)}")
        if end < start:
            raise ValueError(f"cue ends before it starts: {cue!r}")
        out[(centres >= start) & (centres < end)] = index[value]
    return out


@dataclass
class Scores:
    """Accumulated frame counts over utterances (micro-averaged: every frame weighs the same)."""

    frames: int = 0
    hits: dict[str, int] = field(default_factory=lambda: {k: 0 for k in METRICS})
    confusion15: NDArray[np.int64] = field(default_factory=lambda: np.zeros((N_VISEMES, N_VISEMES), np.int64))
    confusion9: NDArray[np.int64] = field(
        default_factory=lambda: np.zeros((len(RHUBARB_SHAPES), len(RHUBARB_SHAPES)), np.int64)
    )

    def add(
        self, pred: NDArray[np.integer[Any]], ref: NDArray[np.integer[Any]], pred9: NDArray[np.integer[Any]] | None = None
    ) -> None:
        """Score one utterance's (T,) predicted and reference viseme indices.

        ``pred9`` is the (T,) Rhubarb shape prediction (from :func:`engines.phonemes.rhubarb_decide`
        on the probabilities); by default the predicted visemes' shapes.
        """
        pred, ref = np.asarray(pred, np.int64), np.asarray(ref, np.int64)
        if pred.shape != ref.shape:
            raise ValueError(f"pred {pred.shape} vs ref {ref.shape}")
        p9 = to_rhubarb(pred) if pred9 is None else np.asarray(pred9, np.int64)
        if p9.shape != pred.shape:
            raise ValueError(f"pred9 {p9.shape} vs pred {pred.shape}")
        r9 = to_rhubarb(ref)
        self.frames += int(pred.size)
        self.hits["viseme_strict"] += int(np.sum(pred == ref))
        self.hits["viseme_tolerant"] += int(np.sum(tolerant_hits(pred, ref)))
        self.hits["rhubarb_strict"] += int(np.sum(p9 == r9))
        self.hits["rhubarb_tolerant"] += int(np.sum(tolerant_hits(p9, r9)))
        np.add.at(self.confusion15, (ref, pred), 1)
        np.add.at(self.confusion9, (r9, p9), 1)

    def summary(self) -> dict[str, float]:
        """Accuracies (0-1) per metric, plus the frame count."""
        if self.frames == 0:
            return {"frames": 0}
        out: dict[str, float] = {k: round(v / self.frames, 4) for k, v in self.hits.items()}
        out["frames"] = self.frames
        return out



# --------------------------------------------------------------------------------------------
# Running models through the streaming API.


def stream_features(model: VisemeModel, features: NDArray[np.float32], hops_per_push: int = 2) -> NDArray[np.float32]:
    """(T, 40) features pushed ``hops_per_push`` at a time, then flush -> (T, 15) probabilities."""
    s = model.stream()
    rows = [s.push(features[a : a + hops_per_push]) for a in range(0, features.shape[0], hops_per_push)]
    rows.append(s.flush())
    out = np.concatenate(rows, axis=0)
    if out.shape[0] != features.shape[0]:
        raise RuntimeError(f"{model.name}: {out.shape[0]} rows for {features.shape[0]} hops")
    return out


def stream_audio(model: VisemeModel, audio: NDArray[np.float32], chunk: int = CHUNK_SAMPLES) -> NDArray[np.float32]:
    """16 kHz audio pushed ``chunk`` samples at a time through LogMelStream and the model.

    Returns (len(audio) // 160, 15) probabilities, one row per complete hop.
    """
    fe = LogMelStream()
    s = model.stream()
    rows = []
    for a in range(0, audio.shape[0], chunk):
        feats = fe.push(audio[a : a + chunk])
        if feats.shape[0]:
            rows.append(s.push(feats))
    rows.append(s.flush())
    out = np.concatenate(rows, axis=0)
    n = audio.shape[0] // HOP_LENGTH
    if out.shape[0] != n:
        raise RuntimeError(f"{model.name}: {out.shape[0]} rows for {n} hops")
    return out


@dataclass
class LabelledAudio:
    """A real recording with per-hop reference visemes: audio (N,) float32 16 kHz, labels (T,)."""

    name: str
    audio: NDArray[np.float32]
    labels: NDArray[np.int8]
    lead: NDArray[np.float32] | None = None  # streamed before ``audio``, its hops not scored

    def streamed(self) -> tuple[NDArray[np.float32], int]:
        """(what to stream: lead + audio, how many leading hops of its output to drop)."""
        if self.lead is None:
            return self.audio, 0
        return np.concatenate([self.lead, self.audio]), self.lead.shape[0] // HOP_LENGTH


def live_lead(items: Sequence[LabelledAudio], seconds: float = LIVE_LEAD_S,
              dbfs: float = LIVE_FLOOR_DBFS, seed: int = 0) -> list[LabelledAudio]:
    """``items`` with a lead of ``seconds`` of white noise at ``dbfs`` RMS (whole hops, seeded)."""
    if seconds <= 0:
        raise ValueError(f"lead must be > 0 s, got {seconds}")
    rng = np.random.default_rng(seed)
    n = int(round(seconds * SAMPLE_RATE / HOP_LENGTH)) * HOP_LENGTH
    amp = 10.0 ** (dbfs / 20.0)
    return [LabelledAudio(it.name, it.audio, it.labels, (rng.standard_normal(n) * amp).astype(np.float32))
            for it in items]


def _as_labelled(items: Iterable[Any]) -> list[LabelledAudio]:
    """Adapt engines.realdata's records (attribute names may vary) to LabelledAudio."""
    out = []
    for i, it in enumerate(items):
        name = str(getattr(it, "name", getattr(it, "utt_id", f"utt{i}")))
        audio = np.asarray(it.audio, np.float32)
        labels = np.asarray(it.labels, np.int64)
        out.append(LabelledAudio(name, audio, labels.astype(np.int8)))
    return out


def real_sets() -> dict[str, list[LabelledAudio]]:
    """{'real_reference': [...], 'real_aligned': [...]} from engines.realdata (absent sets omitted)."""
    try:
        from engines import realdata
    except ImportError as e:
        log.warning("engines.realdata unavailable (%s): no real-speech evaluation", e)
        return {}
    sets: dict[str, list[LabelledAudio]] = {}
    loaders: list[tuple[str, Callable[[], Iterable[Any]]]] = [
        ("real_reference", realdata.load_reference_set),
        ("real_aligned", realdata.load_aligned_set),
    ]
    all_names = getattr(realdata, "ALL_NAMES", None)
    if all_names:
        loaders.append(("real_aligned_all", lambda: realdata.load_aligned_set(names=all_names)))
    for key, loader in loaders:
        try:
            sets[key] = _as_labelled(loader())
        except Exception as e:  # a missing aligner / data folder must not hide the other set
            log.warning("loading %s failed: %s", key, e)
    if "real_aligned_all" in sets:
        sets["real_aligned_all_live"] = live_lead(sets["real_aligned_all"])
    return sets


def recorded_sets() -> dict[str, list[LabelledAudio]]:
    """{'recorded_heldout_<db>': held-out prompts} for every installed recorded database.

    Labels are the corpus generator's (:func:`engines.corpus.recorded.viseme_segments`).
    """
    from engines.corpus.labels import segments_to_labels
    from engines.corpus.recorded import (
        available_dbs,
        heldout_prompts,
        load_recording,
        viseme_segments,
    )

    sets: dict[str, list[LabelledAudio]] = {}
    for db in available_dbs():
        items = []
        for name in heldout_prompts(db):
            rec = load_recording(db, name)
            labels = segments_to_labels(viseme_segments(rec), rec.audio.shape[0])
            items.append(LabelledAudio(f"{db}/{name}", rec.audio, labels))
        sets[f"recorded_heldout_{db}"] = items
    return sets


def score_probs(sc: Scores, probs: NDArray[np.float32], labels: NDArray[np.integer[Any]]) -> None:
    """Add one utterance's (T, 15) probabilities against (T,) reference visemes to ``sc``.

    Visemes are scored by argmax, Rhubarb shapes by the summed shape probability.
    """
    n = min(probs.shape[0], labels.shape[0])
    sc.add(probs[:n].argmax(axis=1), np.asarray(labels[:n], np.int64), rhubarb_decide(probs[:n]))


def score_audio_set(model: VisemeModel, items: Sequence[LabelledAudio]) -> Scores:
    """Stream every recording's audio through ``model``; accumulate the scores."""
    sc = Scores()
    for it in items:
        audio, skip = it.streamed()
        score_probs(sc, stream_audio(model, audio)[skip:], it.labels)
    return sc


def score_feature_set(model: VisemeModel, items: Sequence[Any], limit: int | None = None) -> Scores:
    """Stream corpus utterances (``features``, ``labels``) through ``model``; accumulate scores."""
    sc = Scores()
    for it in list(items)[:limit]:
        score_probs(sc, stream_features(model, it.features), it.labels)
    return sc


def evaluate_model(model: VisemeModel, val: Sequence[Any], real: dict[str, list[LabelledAudio]], val_limit: int | None = None) -> dict[str, Any]:
    """All sets for one model -> {set: summary}, plus the confusion matrices under ``_confusion``."""
    res: dict[str, Any] = {"model": model.name, "lookahead_ms": model.lookahead_hops * 10}
    conf: dict[str, Any] = {}
    if val:
        sc = score_feature_set(model, val, val_limit)
        res["synthetic_val"] = sc.summary()
        conf["synthetic_val"] = sc
    for key, items in real.items():
        sc = score_audio_set(model, items)
        res[key] = sc.summary()
        conf[key] = sc
    res["_confusion"] = conf
    return res


def _val_dir_note(corpus: str) -> str:
    return str(Path(corpus) / "val") if corpus else ""


# --------------------------------------------------------------------------------------------
# Plots.


def plot_confusions(path: Path, panels: Sequence[tuple[str, NDArray[np.int64], Sequence[str]]]) -> None:
    """Row-normalised confusion matrices side by side (rows: reference, columns: predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 6))
    axes = np.atleast_1d(axes)
    for ax, (title, cm, names) in zip(axes, panels, strict=True):
        norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(len(names)), names, rotation=90)
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("reference")
        ax.set_title(title, fontsize=10)
        for i in range(len(names)):
            for j in range(len(names)):
                if norm[i, j] >= 0.1:
                    ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if norm[i, j] > 0.5 else "black")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_lookahead(path: Path, rows: list[dict[str, Any]], energy: dict[str, Any] | None) -> None:
    """Accuracy vs lookahead (ms) for the sweep runs, one line per set/metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: r["lookahead_ms"])
    xs = [r["lookahead_ms"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {"synthetic_val": "-", "real_reference": "--", "real_aligned_all": ":"}
    colors = {"rhubarb_tolerant": "tab:green", "rhubarb_strict": "tab:blue", "viseme_strict": "tab:orange"}
    for set_name, ls in styles.items():
        for metric, col in colors.items():
            ys = [r.get(set_name, {}).get(metric, math.nan) for r in rows]
            if all(math.isnan(y) for y in ys):
                continue
            ax.plot(xs, ys, ls, color=col, marker="o", label=f"{set_name} {metric}")
            if energy and set_name == "real_reference" and metric in energy.get(set_name, {}):
                ax.axhline(energy[set_name][metric], color=col, lw=0.8, alpha=0.5)
    ax.set_xlabel("lookahead (ms)")
    ax.set_ylabel("frame accuracy")
    ax.set_title("Accuracy vs lookahead (thin lines: energy baseline on real_reference)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# CPU cost.


def bench_hop_ms(model_path: str | Path, hops_per_call: int = 1, calls: int = 3000, rounds: int = 3) -> dict[str, Any]:
    """ms per hop of one stream on onnxruntime CPU (1 thread), ``calls`` calls per round.

    Reports the round with the lowest median (as ``timeit`` takes the best repeat: on a shared
    machine the slower rounds measure the neighbours) and every round's median.
    """
    import time

    from engines.runtime.onnx_cpu import OnnxCpuBackend

    be = OnnxCpuBackend(model_path)
    rng = np.random.default_rng(0)
    feats = rng.normal(-6.0, 3.0, (1, hops_per_call, 40)).astype(np.float32)
    state = np.zeros((1, be.state_size), np.float32)
    for _ in range(200):
        _, state = be.run(feats, state)
    per_round = []
    for _ in range(max(1, rounds)):
        times = np.empty(calls)
        for i in range(calls):
            t0 = time.perf_counter()
            _, state = be.run(feats, state)
            times[i] = time.perf_counter() - t0
        per_round.append(times * 1000.0 / hops_per_call)
    best = min(per_round, key=lambda t: float(np.median(t)))
    return {"hops_per_call": hops_per_call, "median_ms_per_hop": round(float(np.median(best)), 4),
            "p90_ms_per_hop": round(float(np.percentile(best, 90)), 4),
            "min_ms_per_hop": round(float(best.min()), 4),
            "round_medians_ms": [round(float(np.median(t)), 4) for t in per_round]}


# --------------------------------------------------------------------------------------------
# CLI.


def _load(name: str, engine: str) -> VisemeModel:
    from engines.onnx_predictor import load_viseme_model

    return load_viseme_model(name, engine=engine)


def _strip(res: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in res.items() if not k.startswith("_")}


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (see the module docstring)."""
    ap = argparse.ArgumentParser(prog="python -m engines.evaluate", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default", help="ONNX path, 'default' (shipped) or 'energy'")
    ap.add_argument("--engine", default="onnxruntime", help="inference backend (auto, onnxruntime, cuda, tensorrt)")
    ap.add_argument("--corpus", default="data/corpus", help="corpus dir with a val/ split ('' to skip)")
    ap.add_argument("--val-limit", type=int, default=400, help="max synthetic val utterances")
    ap.add_argument("--lookahead-sweep", nargs="*", default=[], help="run dirs (each with visemes.onnx)")
    ap.add_argument("--out", default="docs/eval", help="output folder")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    val: list[Any] = []
    if args.corpus:
        vdir = Path(args.corpus) / "val"
        if vdir.is_dir():
            from engines.corpus.dataset import load_corpus

            val = load_corpus(vdir)
        else:
            log.warning("no synthetic val split at %s", vdir)
    real = real_sets()
    real.update(recorded_sets())

    results: dict[str, Any] = {"val_dir": _val_dir_note(args.corpus), "val_limit": args.val_limit}
    model = _load(args.model, args.engine)
    if args.model != "energy":
        from engines.onnx_predictor import DEFAULT_MODEL_PATH

        path = DEFAULT_MODEL_PATH if args.model == "default" else Path(args.model)
        results["cpu_cost"] = [bench_hop_ms(path, 1, rounds=5), bench_hop_ms(path, 2, rounds=5)]
        results["model_bytes"] = path.stat().st_size
        log.info("CPU cost (onnxruntime, 1 thread): %s", results["cpu_cost"])
    res = evaluate_model(model, val, real, args.val_limit)
    results["model"] = _strip(res)
    energy = evaluate_model(_load("energy", args.engine), val, real, args.val_limit)
    results["energy"] = _strip(energy)
    for key in ("synthetic_val", "real_reference", "real_aligned", "real_aligned_all", "real_aligned_all_live",
                *sorted(k for k in res if k.startswith("recorded_heldout_"))):
        if key in res:
            log.info("%-15s model %s", key, res[key])
            log.info("%-15s energy %s", key, energy[key])

    panels: list[tuple[str, NDArray[np.int64], Sequence[str]]] = []
    conf = res["_confusion"]
    for key in ("real_aligned_all", "real_reference"):
        if key in conf:
            panels.append((f"{model.name}: {key}, Rhubarb shapes", conf[key].confusion9, RHUBARB_SHAPES))
    if "synthetic_val" in conf:
        panels.append((f"{model.name}: synthetic_val, 15 visemes", conf["synthetic_val"].confusion15, VISEMES))
    if panels:
        plot_confusions(out / "confusion.png", panels)
        for key in ("real_aligned_all", "real_reference"):
            if key in conf:
                results[f"confusion_{key}_rhubarb"] = conf[key].confusion9.tolist()

    sweep = []
    for run in args.lookahead_sweep:
        onnx_path = Path(run) / "visemes.onnx"
        if not onnx_path.is_file():
            log.warning("sweep run %s has no visemes.onnx; skipped", run)
            continue
        r = _strip(evaluate_model(_load(str(onnx_path), args.engine), val, real, args.val_limit))
        r["run"] = str(run)
        sweep.append(r)
        log.info("sweep %s: lookahead %d ms: %s", run, r["lookahead_ms"], {k: r[k] for k in r if k in ("synthetic_val", "real_reference")})
    if sweep:
        results["lookahead_sweep"] = sweep
        plot_lookahead(out / "lookahead.png", sweep, results["energy"])
    (out / "eval.json").write_text(json.dumps(results, indent=2))
    log.info("wrote %s", out / "eval.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
