"""Where the streaming model misses on real speech, and how far more trained models could go.

Two questions about the gap between the model and the task's 0.73 strict / 0.88 ±40 ms on real
English speech (``real_aligned_all``: the 10 annotated dev-speech recordings, pocketsphinx
times, annotated phones; see engines/evaluate.py):

1. Which spoken phones do its ±40 ms misses fall on, and which shape does it show instead? Each
   hop is attributed to the phone said there (the annotated identity where the alignment pairs
   one, else pocketsphinx's). With ``--rhubarb`` the same table is made for Rhubarb Lip Sync given
   the dialog text (bench/rhubarb_reference.py), an offline tool that knows every word.
2. The ensemble ceiling: the probabilities of several independently trained models averaged, hop
   by hop, and scored the same way. An ensemble removes the spread between runs (different
   seeds, data mixes); what it cannot reach, no single run of these recipes will.

    .venv/bin/python bench/real_speech_errors.py --model default [--model runs/X/visemes.onnx ...]
        [--rhubarb] [--json docs/eval/real_errors.json]

The first ``--model`` is the one whose misses are tabulated. Models are streamed 20 ms at a time,
as served (``engines.evaluate.stream_audio``), in the file condition and in the live condition
(0.5 s of microphone floor first, ``engines.evaluate.live_lead``).
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from numpy.typing import NDArray  # noqa: E402

from bench import rhubarb_reference as rr  # noqa: E402
from engines import evaluate  # noqa: E402
from engines.onnx_predictor import load_viseme_model  # noqa: E402
from engines.phonemes import RHUBARB_SHAPES, rhubarb_decide  # noqa: E402
from engines.predictor import VisemeModel  # noqa: E402
from engines.spec import HOP_LENGTH  # noqa: E402


def average_probs(per_model: Sequence[NDArray[np.float32]]) -> NDArray[np.float32]:
    """Hop-wise mean of several models' (T, 15) probabilities (trimmed to the shortest T)."""
    if not per_model:
        raise ValueError("no model probabilities to average")
    n = min(p.shape[0] for p in per_model)
    if any(p.ndim != 2 or p.shape[1] != per_model[0].shape[1] for p in per_model):
        raise ValueError(f"probabilities must all be (T, C) with one C, got {[p.shape for p in per_model]}")
    return np.mean([p[:n] for p in per_model], axis=0).astype(np.float32)


def hop_phones(phones: Sequence[tuple[str, int, int]], said: Sequence[str | None], n_hops: int) -> list[str]:
    """The phone spoken at each 10 ms hop's centre (the labels' convention), upper case.

    ``phones`` are the aligner's (name, start sample, end sample); ``said[k]`` is the annotated
    identity of phone k where one was paired (engines.realdata.human_phone_identities), else None
    and the aligner's name is kept. Hops outside every phone are ``SIL``.
    """
    if len(said) != len(phones):
        raise ValueError(f"{len(said)} identities for {len(phones)} phones")
    out = ["SIL"] * n_hops
    centres = np.arange(n_hops) * HOP_LENGTH + HOP_LENGTH // 2
    for (name, start, end), human in zip(phones, said, strict=True):
        label = (human or name).upper()
        for t in np.nonzero((centres >= start) & (centres < end))[0]:
            out[int(t)] = label
    return out


@dataclass
class PhoneMisses:
    """Per spoken phone: hops, strict hits, ±40 ms misses and the shapes shown on those misses."""

    hops: Counter[str] = field(default_factory=Counter)
    strict: Counter[str] = field(default_factory=Counter)
    misses: Counter[str] = field(default_factory=Counter)
    shown: dict[str, Counter[str]] = field(default_factory=dict)

    def add(self, phones: Sequence[str], pred: NDArray[np.int64], ref: NDArray[np.int64]) -> None:
        """One utterance: (T,) phone names, predicted and reference Rhubarb shape indices."""
        if not (len(phones) == pred.shape[0] == ref.shape[0]):
            raise ValueError(f"lengths differ: {len(phones)} phones, {pred.shape[0]} predicted, {ref.shape[0]} reference")
        hit = evaluate.tolerant_hits(pred, ref)
        for t, ph in enumerate(phones):
            self.hops[ph] += 1
            self.strict[ph] += int(pred[t] == ref[t])
            if not hit[t]:
                self.misses[ph] += 1
                self.shown.setdefault(ph, Counter())[RHUBARB_SHAPES[int(pred[t])]] += 1

    def table(self, top: int = 12) -> list[dict[str, Any]]:
        """The ``top`` phones with the most ±40 ms misses, with their share of all misses."""
        total = max(sum(self.misses.values()), 1)
        return [{"phone": ph, "hops": self.hops[ph], "strict": round(self.strict[ph] / self.hops[ph], 3),
                 "misses": m, "miss_rate": round(m / self.hops[ph], 3), "share_of_misses": round(m / total, 3),
                 "shown_instead": dict(self.shown[ph].most_common(3))}
                for ph, m in self.misses.most_common(top)]


def stream_probs(model: VisemeModel, items: Sequence[evaluate.LabelledAudio]) -> list[NDArray[np.float32]]:
    """(T, 15) probabilities per item, streamed as served; a live lead's hops are dropped."""
    out = []
    for it in items:
        audio, skip = it.streamed()
        out.append(evaluate.stream_audio(model, audio)[skip : skip + it.labels.shape[0]])
    return out


def _print_table(title: str, rows: list[dict[str, Any]]) -> None:
    print(title)
    print(f"  {'phone':6s} {'hops':>5s} {'strict':>7s} {'misses':>7s} {'rate':>6s} {'share':>6s}  shown instead")
    for r in rows:
        print(f"  {r['phone']:6s} {r['hops']:5d} {r['strict']:7.3f} {r['misses']:7d} {r['miss_rate']:6.2f} "
              f"{r['share_of_misses']:6.3f}  {r['shown_instead']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", default=[], help="viseme model (default, or an .onnx path); repeatable")
    ap.add_argument("--rhubarb", action="store_true", help="tabulate Rhubarb Lip Sync's misses too (needs node)")
    ap.add_argument("--top", type=int, default=12, help="phones listed per table")
    ap.add_argument("--json", type=Path, default=None, help="write every number here")
    args = ap.parse_args(argv)
    models = args.model or ["default"]
    from engines import realdata

    utts = realdata.load_aligned_set(names=realdata.ALL_NAMES)
    cold = [evaluate.LabelledAudio(u.name, u.audio, u.labels) for u in utts]
    sets = {"real_aligned_all": cold, "real_aligned_all_live": evaluate.live_lead(cold)}
    refs = [evaluate.to_rhubarb(u.labels) for u in utts]
    phones = [hop_phones(u.phones, u.said or [None] * len(u.phones), u.labels.shape[0]) for u in utts]
    doc: dict[str, Any] = {"models": models, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                           "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "sets": {}}
    loaded = {m: load_viseme_model(m, engine="onnxruntime") for m in models}
    for set_name, items in sets.items():
        probs = {m: stream_probs(loaded[m], items) for m in models}
        rows = {m: rr.score({u.name: rhubarb_decide(p) for u, p in zip(utts, probs[m], strict=True)}, utts)
                for m in models}
        if len(models) > 1:
            ens = [average_probs([probs[m][i] for m in models]) for i in range(len(items))]
            rows[f"mean of {len(models)} models"] = rr.score(
                {u.name: rhubarb_decide(p) for u, p in zip(utts, ens, strict=True)}, utts)
        misses = PhoneMisses()
        for ph, p, r in zip(phones, probs[models[0]], refs, strict=True):
            misses.add(ph, rhubarb_decide(p), r)
        doc["sets"][set_name] = {"scores": rows, "misses_of_first_model": misses.table(args.top)}
        print(f"{set_name} ({rows[models[0]]['frames']} hops), Rhubarb shapes, strict / ±40 ms:")
        for name, row in rows.items():
            print(f"  {name:40s} {row['rhubarb_strict']:.3f} / {row['rhubarb_tolerant']:.3f}")
        _print_table(f"  misses of {models[0]} by spoken phone:", doc["sets"][set_name]["misses_of_first_model"])
    if args.rhubarb:
        with tempfile.TemporaryDirectory(prefix="rhubarb-") as tmp:
            cues, _ = rr.run_rhubarb(utts, with_text=True, work=Path(tmp))
        shown = [evaluate.cues_to_shapes(cues[u.name], u.labels.shape[0]) for u in utts]
        misses = PhoneMisses()
        for ph, cue_shapes, ref in zip(phones, shown, refs, strict=True):
            misses.add(ph, cue_shapes, ref)
        rh = rr.score({u.name: p for u, p in zip(utts, shown, strict=True)}, utts)
        doc["rhubarb_with_text"] = {"scores": rh, "misses": misses.table(args.top)}
        print(f"Rhubarb Lip Sync, dialog text given: {rh['rhubarb_strict']:.3f} / {rh['rhubarb_tolerant']:.3f}")
        _print_table("  its misses by spoken phone:", doc["rhubarb_with_text"]["misses"])
    if args.json:
        args.json.write_text(json.dumps(doc, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
