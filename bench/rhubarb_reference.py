"""The offline reference on our real recordings: Rhubarb Lip Sync against the streaming model.

The task's accuracy target is "at least the offline reference": Rhubarb Lip Sync, which runs
speech recognition over the whole file. This runs Rhubarb itself (its WebAssembly port, npm
``rhubarb-lip-sync-wasm`` 0.1.8, MIT; PocketSphinx inside, as the native tool) on exactly the
recordings and labels ``engines.evaluate`` scores the model on (``real_aligned_all``: the 10
annotated dev-speech utterances, pocketsphinx times, annotated phones), with and without the
dialog text, and scores both with the same code: Rhubarb's 9 shapes, strict and within ±40 ms.
Rhubarb's cues are read per 10 ms hop at the hop's centre (``engines.evaluate.cues_to_shapes``).

    .venv/bin/python bench/rhubarb_reference.py [--model default] [--json docs/eval/rhubarb.json]

Needs node and npm (Debian ``nodejs``, ``npm``); the package is installed once into
``bench/.rhubarb`` (git-ignored).
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from engines import evaluate  # noqa: E402
from engines.onnx_predictor import load_viseme_model  # noqa: E402
from engines.phonemes import RHUBARB_SHAPES, rhubarb_decide  # noqa: E402
from engines.spec import HOP_LENGTH, SAMPLE_RATE  # noqa: E402

if TYPE_CHECKING:
    from server.config import AppConfig
    from server.pipeline.runner import SharedModels

PACKAGE = "rhubarb-lip-sync-wasm@0.1.8"
PREFIX = ROOT / "bench" / ".rhubarb"
RUNNER = ROOT / "bench" / "rhubarb_run.mjs"
SHIFT_HOPS = 10  # the best constant shift is searched within +-100 ms


def package_dir() -> Path:
    """The installed npm package's folder (installs it into bench/.rhubarb on first use)."""
    pkg = PREFIX / "node_modules" / "rhubarb-lip-sync-wasm"
    if not (pkg / "dist" / "index.js").is_file():
        if shutil.which("npm") is None or shutil.which("node") is None:
            raise SystemExit("node and npm are needed (Debian: apt-get install nodejs npm)")
        PREFIX.mkdir(parents=True, exist_ok=True)
        print(f"installing {PACKAGE} into {PREFIX} ...", file=sys.stderr)
        subprocess.run(["npm", "install", "--prefix", str(PREFIX), "--no-audit", "--no-fund", PACKAGE],
                       check=True, stdout=subprocess.DEVNULL)
    return pkg


def run_rhubarb(items: list[Any], with_text: bool, work: Path) -> tuple[dict[str, list[dict[str, Any]]], float]:
    """Rhubarb's cues for every item (-> {name: cues}, wall seconds)."""
    jobs = []
    for it in items:
        pcm = work / f"{it.name}.pcm"
        (np.clip(it.audio, -1.0, 1.0) * 32767.0).astype("<i2").tofile(pcm)
        jobs.append({"name": it.name, "pcm": str(pcm), "text": it.text if with_text else ""})
    (work / "jobs.json").write_text(json.dumps(jobs))
    t0 = time.perf_counter()
    proc = subprocess.run(["node", str(RUNNER), str(package_dir()), str(work / "jobs.json"), str(work / "cues.json")],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"rhubarb failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    cues: dict[str, list[dict[str, Any]]] = json.loads((work / "cues.json").read_text())
    return cues, time.perf_counter() - t0


def score(preds: dict[str, np.ndarray], items: list[Any]) -> dict[str, Any]:
    """Micro-averaged Rhubarb-shape accuracy of ``preds`` (name -> (T,) shapes) on ``items``."""
    hs = ht = n = 0
    per = {}
    for it in items:
        r9 = evaluate.to_rhubarb(it.labels)
        p9 = preds[it.name][: r9.shape[0]]
        s, t = int(np.sum(p9 == r9)), int(np.sum(evaluate.tolerant_hits(p9, r9)))
        per[it.name] = round(s / r9.shape[0], 3)
        hs, ht, n = hs + s, ht + t, n + r9.shape[0]
    return {"rhubarb_strict": round(hs / n, 4), "rhubarb_tolerant": round(ht / n, 4), "frames": n, "per_utterance_strict": per}


def best_shift(preds: dict[str, np.ndarray], items: list[Any]) -> tuple[int, float]:
    """The constant shift (hops; + = predictions moved later) with the highest strict accuracy."""
    best = (0, -1.0)
    for d in range(-SHIFT_HOPS, SHIFT_HOPS + 1):
        hits = n = 0
        for it in items:
            r9 = evaluate.to_rhubarb(it.labels)
            p9 = preds[it.name][: r9.shape[0]]
            moved = np.roll(p9, d)
            lo, hi = max(0, d), r9.shape[0] + min(0, d)
            hits += int(np.sum(moved[lo:hi] == r9[lo:hi]))
            n += hi - lo
        if hits / n > best[1]:
            best = (d, hits / n)
    return best[0], round(best[1], 4)


def product_models(model: str) -> tuple[AppConfig, SharedModels]:
    """(config, shared models) of the product with viseme ``model`` on onnxruntime, loaded once."""
    from server.config import load_config
    from server.pipeline.runner import load_models

    cfg = load_config(None, overrides={"visemes": {"model": model, "engine": "onnxruntime"}})
    return cfg, load_models(cfg)


def run_product(items: list[evaluate.LabelledAudio], cfg: AppConfig, models: SharedModels, work: Path) -> dict[str, np.ndarray]:
    """What ``avatar visemes --format rhubarb-json`` writes for each item, as (T,) shapes per hop.

    The whole product chain (resampling from 48 kHz frames, VAD gate, model, the 3-hop majority
    filter of the cue writer) on each item's streamed audio (lead included, its hops dropped);
    ``cfg, models`` from :func:`product_models`.
    """
    import asyncio

    import soundfile as sf

    from server.offline import format_visemes, run_offline

    out = {}
    for it in items:
        audio, skip = it.streamed()
        wav = work / f"{it.name}.wav"
        sf.write(str(wav), audio, SAMPLE_RATE, subtype="FLOAT")
        result = asyncio.run(run_offline(wav, cfg, models))
        cues = json.loads(format_visemes(result, "rhubarb-json", wav.name))["mouthCues"]
        out[it.name] = evaluate.cues_to_shapes(cues, audio.shape[0] // HOP_LENGTH)[skip:]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default", help="viseme model to compare (default, energy, path)")
    ap.add_argument("--json", type=Path, default=None, help="write every number here")
    args = ap.parse_args()
    from engines import realdata

    items = realdata.load_aligned_set(names=realdata.ALL_NAMES)
    cold = [evaluate.LabelledAudio(it.name, it.audio, it.labels) for it in items]
    sets = {"real_aligned_all": cold, "real_aligned_all_live": evaluate.live_lead(cold)}  # as evaluate.real_sets
    rows: dict[str, Any] = {}
    preds: dict[str, dict[str, np.ndarray]] = {}
    with tempfile.TemporaryDirectory(prefix="rhubarb-") as tmp:
        for with_text in (False, True):
            cues, wall = run_rhubarb(items, with_text, Path(tmp))
            key = "rhubarb_with_text" if with_text else "rhubarb"
            overlaps = sum(b["start"] < a["end"] - 1e-9 for c in cues.values() for a, b in zip(c, c[1:], strict=False))
            # The port's cue lists overlap in places (native Rhubarb's never do): read them both
            # ways, the later cue winning (the default) and the earlier one.
            for suffix, order in (("", 1), ("_earlier_wins", -1)):
                p = {it.name: evaluate.cues_to_shapes(cues[it.name][::order], it.labels.shape[0]) for it in items}
                preds[key + suffix] = p
                rows[key + suffix] = {**score(p, items), "wall_s": round(wall, 1), "best_shift": best_shift(p, items),
                                      "cues": sum(len(c) for c in cues.values()), "overlapping_cue_pairs": overlaps}
    model = load_viseme_model(args.model, engine="onnxruntime")
    for key, set_name in (("model_cold", "real_aligned_all"), ("model_live", "real_aligned_all_live")):
        p = {}
        for it in sets[set_name]:
            audio, skip = it.streamed()
            p[it.name] = rhubarb_decide(evaluate.stream_audio(model, audio)[skip:])
        preds[key] = p
        rows[key] = {**score(p, sets[set_name]), "best_shift": best_shift(p, sets[set_name])}
    cfg, models = product_models(args.model)
    with tempfile.TemporaryDirectory(prefix="product-") as tmp:
        for key, set_name in (("product_cold", "real_aligned_all"), ("product_live", "real_aligned_all_live")):
            p = run_product(sets[set_name], cfg, models, Path(tmp))
            rows[key] = {**score(p, sets[set_name]), "best_shift": best_shift(p, sets[set_name])}
    print(f"real_aligned_all ({rows['rhubarb']['frames']} hops of 10 real utterances), Rhubarb shapes:")
    print(f"{'':22s} {'strict':>7s} {'±40 ms':>7s}  best shift (hops, strict)")
    names = {"rhubarb": "Rhubarb (no text)", "rhubarb_earlier_wins": "  earlier cue wins",
             "rhubarb_with_text": "Rhubarb (dialog text)", "rhubarb_with_text_earlier_wins": "  earlier cue wins",
             "model_cold": f"model {args.model} (file)", "model_live": f"model {args.model} (live)",
             "product_cold": "avatar visemes (file)", "product_live": "avatar visemes (live)"}
    for key, label in names.items():
        r = rows[key]
        print(f"{label:22s} {r['rhubarb_strict']:7.3f} {r['rhubarb_tolerant']:7.3f}  {r['best_shift']}")
    if args.json:
        doc = {"set": "real_aligned_all", "package": PACKAGE, "shapes": list(RHUBARB_SHAPES),
               "machine": f"{platform.machine()}, {os.cpu_count()} cores", "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
               "rows": rows}
        args.json.write_text(json.dumps(doc, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
