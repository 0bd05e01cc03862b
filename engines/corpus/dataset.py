"""Read corpus shards written by :mod:`engines.corpus.generate`."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from engines.spec import N_MELS, N_VISEMES

_KEY = re.compile(r"^features_(\d+)$")


@dataclass
class Utterance:
    """One utterance: ``features`` (T, 40) float32 log-mel, ``labels`` (T,) int8 viseme indices."""

    features: NDArray[np.float32]
    labels: NDArray[np.int8]
    lang: str
    voice: str
    source: str


def shard_paths(directory: Path | str) -> list[Path]:
    """The shard files of a corpus directory, in index order."""
    d = Path(directory)
    paths = sorted(d.glob("shard-*.npz"))
    return [p for p in paths if not p.name.endswith(".tmp.npz")]


def read_shard(path: Path) -> list[Utterance]:
    """All utterances of one shard, validated (shapes, dtypes, label range)."""
    with np.load(path, allow_pickle=False) as z:
        idx = sorted(int(m.group(1)) for k in z.files if (m := _KEY.match(k)))
        langs, voices, sources = z["lang"], z["voice"], z["source"]
        if not (len(langs) == len(voices) == len(sources) == len(idx)):
            raise ValueError(f"{path}: {len(idx)} utterances but {len(langs)} lang entries")
        out = []
        for i in idx:
            f = z[f"features_{i}"]
            lab = z[f"labels_{i}"]
            if f.ndim != 2 or f.shape[1] != N_MELS or f.dtype != np.float32:
                raise ValueError(f"{path}: features_{i} has shape {f.shape} dtype {f.dtype}")
            if lab.shape != (f.shape[0],) or lab.dtype != np.int8:
                raise ValueError(f"{path}: labels_{i} has shape {lab.shape} dtype {lab.dtype}")
            if lab.size and (lab.min() < 0 or lab.max() >= N_VISEMES):
                raise ValueError(f"{path}: labels_{i} out of range [{lab.min()}, {lab.max()}]")
            out.append(Utterance(f, lab, str(langs[i]), str(voices[i]), str(sources[i])))
    return out


def iter_shards(directory: Path | str) -> Iterator[Utterance]:
    """Every utterance of every shard in ``directory`` (shard order, then utterance order)."""
    paths = shard_paths(directory)
    if not paths:
        raise FileNotFoundError(f"no shard-*.npz in {directory}")
    for p in paths:
        yield from read_shard(p)


def load_corpus(directory: Path | str) -> list[Utterance]:
    """All utterances of a corpus directory in memory."""
    return list(iter_shards(directory))
