"""The causal streaming viseme network (torch).

Architecture (all causal; output row ``t`` is the prediction for input hop ``t - lookahead``):

1. Input normalisation (gain invariance): ``norm="mean"`` (default) subtracts a per-mel
   running mean over the last ``norm_window`` hops of this stream (only this stream's hops
   count: the state carries a validity channel); ``norm="peak"`` subtracts the running maximum
   of the frame energy (log of the summed mel power). A gain change (a constant added to every
   log-mel) cancels either way. (Measured: "peak" trained worse on both synthetic and real
   speech in 6-minute runs.) ``norm="meanvar"`` also scales each mel by
   ``sqrt(var_prior / v)``, ``v`` its variance over the same window shrunk towards
   ``var_prior`` with ``var_prior_hops`` pseudo-hops (so a fresh stream, or a quiet room,
   is not blown up to speech level); no extra state.
2. Two causal 1-D convolutions (kernel ``kernel``) with ReLU: local spectral dynamics.
3. A GRU (``gru_layers`` x ``hidden``): long context (co-articulation, speaking rate).
4. A linear layer to the 15 viseme logits; softmax for ``probs``.

Streaming: every piece of memory (the normalisation window, the convolution histories, the GRU
hidden state) is packed in ONE flat float32 tensor ``(batch, state_size)``, zeros at a stream's
start. ``forward(features, state)`` over a whole sequence equals the same call over any split of
the sequence in chunks, threading ``state`` through (see tests/test_engines_model.py).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from engines.spec import N_MELS, N_VISEMES

PEAK_OFFSET = 100.0  # nats added to frame energies kept in the peak window (all real ones > 0)


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of :class:`VisemeNet` (sizes in channels, windows in 10 ms hops)."""

    n_mels: int = N_MELS
    n_classes: int = N_VISEMES
    lookahead_hops: int = 4  # output row t predicts hop t - lookahead_hops
    norm: str = "mean"  # "mean": per-mel running mean; "meanvar": and variance; "peak": subtract the running max frame energy
    norm_window: int = 100  # hops of the running normalisation window (1 s)
    kernel: int = 5  # causal conv kernel, hops
    channels: int = 128  # conv channels
    conv_layers: int = 1  # causal convs before the GRU (1 or 2)
    hidden: int = 192  # GRU hidden size
    gru_layers: int = 1
    dropout: float = 0.1
    input_scale: float = 0.2  # normalised log-mel (nats) is multiplied by this
    cepstra: int = 0  # >0: keep only this many DCT-II coefficients of the normalised log-mel
    var_prior: float = 5.0  # nats^2: "meanvar" target variance (median per-mel variance of 1 s of training speech)
    var_prior_hops: int = 30  # "meanvar": pseudo-hops of var_prior mixed into each window's variance

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("dropout",):
                if not 0.0 <= v < 1.0:
                    raise ValueError(f"dropout must be in [0, 1), got {v}")
            elif f.name == "input_scale":
                if v <= 0:
                    raise ValueError(f"input_scale must be > 0, got {v}")
            elif f.name == "lookahead_hops":
                if v < 0:
                    raise ValueError(f"lookahead_hops must be >= 0, got {v}")
            elif f.name == "norm":
                if v not in ("peak", "mean", "meanvar"):
                    raise ValueError(f"norm must be 'peak', 'mean' or 'meanvar', got {v!r}")
            elif f.name == "var_prior":
                if v <= 0:
                    raise ValueError(f"var_prior must be > 0 nats^2, got {v}")
            elif f.name == "cepstra":
                if not 0 <= v <= self.n_mels:
                    raise ValueError(f"cepstra must be in [0, n_mels], got {v}")
            elif f.name == "conv_layers":
                if v not in (1, 2):
                    raise ValueError(f"conv_layers must be 1 or 2, got {v}")
            elif v < 1:
                raise ValueError(f"{f.name} must be >= 1, got {v}")
        if self.kernel < 2:
            raise ValueError(f"kernel must be >= 2 (a causal conv with history), got {self.kernel}")
        if self.norm_window < 2:
            raise ValueError(f"norm_window must be >= 2, got {self.norm_window}")

    def to_json(self) -> str:
        """The config as a JSON object (stored next to checkpoints and in ONNX metadata)."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Inverse of ``asdict``; unknown keys are an error naming them."""
        known = {f.name for f in fields(cls)}
        extra = set(d) - known
        if extra:
            raise ValueError(f"unknown ModelConfig keys: {sorted(extra)}")
        return cls(**d)


class VisemeNet(nn.Module):
    """Causal conv + GRU viseme classifier with explicit flat streaming state.

    ``forward(features (B, T, n_mels), state (B, state_size))`` ->
    ``(probs (B, T, n_classes), state_out (B, state_size))``.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        m, c, k = cfg.n_mels, cfg.channels, cfg.kernel
        n_in = cfg.cepstra or m
        self.conv1 = nn.Conv1d(n_in, c, k)
        self.conv2 = nn.Conv1d(c, c, k) if cfg.conv_layers >= 2 else None
        self.drop = nn.Dropout(cfg.dropout)
        self.gru = nn.GRU(c, cfg.hidden, cfg.gru_layers, batch_first=True)
        self.head = nn.Linear(cfg.hidden, cfg.n_classes)
        # Fixed box filter for the running mean: one kernel per channel (n_mels + validity).
        if cfg.norm in ("mean", "meanvar"):
            self.register_buffer("norm_kernel", torch.ones(m + 1, 1, cfg.norm_window), persistent=False)
        if cfg.cepstra:
            # Orthonormal DCT-II rows 0..cepstra-1 as a fixed 1x1 conv: the spectral envelope only
            # (drops pitch harmonics and fine structure, a speaker-independence prior).
            n = torch.arange(m, dtype=torch.float64)
            kk = torch.arange(cfg.cepstra, dtype=torch.float64)[:, None]
            dct = torch.cos(torch.pi / m * (n + 0.5) * kk) * (2.0 / m) ** 0.5
            dct[0] /= 2.0**0.5
            self.register_buffer("dct", dct.float()[:, :, None], persistent=False)
        # State layout: (name, channels, length) blocks, flattened channel-major, in this order.
        self._blocks: list[tuple[str, int, int]] = [
            ("norm", 1 if cfg.norm == "peak" else m + 1, cfg.norm_window - 1),
            ("conv1", cfg.cepstra or m, k - 1),
            *([("conv2", c, k - 1)] if cfg.conv_layers >= 2 else []),
            ("gru", cfg.gru_layers, cfg.hidden),
        ]

    @property
    def lookahead_hops(self) -> int:
        """Output row t is the prediction for input hop t - lookahead_hops."""
        return self.cfg.lookahead_hops

    @property
    def state_size(self) -> int:
        """Floats of streaming state per stream."""
        return sum(ch * n for _, ch, n in self._blocks)

    def zero_state(self, batch: int) -> Tensor:
        """(batch, state_size) zeros: the state at a stream's start."""
        p = next(self.parameters())
        return torch.zeros(batch, self.state_size, dtype=p.dtype, device=p.device)

    def _split(self, state: Tensor) -> list[Tensor]:
        parts = torch.split(state, [ch * n for _, ch, n in self._blocks], dim=1)
        return [p.reshape(-1, ch, n) for p, (_, ch, n) in zip(parts, self._blocks, strict=True)]

    @staticmethod
    def _causal(buf: Tensor, x: Tensor, hist: int) -> tuple[Tensor, Tensor]:
        """(B, C, hist) history + (B, C, T) new -> (B, C, hist + T) input, (B, C, hist) next."""
        full = torch.cat([buf, x], dim=2)
        return full, full[:, :, -hist:]

    def normalise(self, x: Tensor, norm_buf: Tensor) -> tuple[Tensor, Tensor]:
        """(B, M, T) log-mel, (B, C, window - 1) history -> scaled normalised input (B, M, T), next history."""
        scale: Tensor | float = self.cfg.input_scale
        if self.cfg.norm in ("mean", "meanvar"):
            valid = torch.ones_like(x[:, :1, :])
            full, norm_next = self._causal(
                norm_buf, torch.cat([x, valid], dim=1), self.cfg.norm_window - 1
            )
            kernel: Tensor = self.norm_kernel  # type: ignore[assignment]
            sums = F.conv1d(full, kernel, groups=self.cfg.n_mels + 1)  # (B, M+1, T)
            n = torch.clamp(sums[:, -1:, :], min=1.0)  # (B, 1, T) this stream's hops in the window
            ref = sums[:, :-1, :] / n
            if self.cfg.norm == "meanvar":
                m = self.cfg.n_mels
                sq = F.conv1d(full[:, :-1, :] ** 2, kernel[:-1], groups=m)  # (B, M, T)
                var = torch.clamp(sq / n - ref**2, min=0.0)
                k, v0 = float(self.cfg.var_prior_hops), self.cfg.var_prior
                shrunk = (n * var + k * v0) / (n + k)
                scale = self.cfg.input_scale * torch.rsqrt(shrunk / v0)
        else:
            # Frame energy (nats) + PEAK_OFFSET > 0, so the zeros of a fresh state never win the max.
            energy = torch.logsumexp(x, dim=1, keepdim=True) + PEAK_OFFSET  # (B, 1, T)
            full, norm_next = self._causal(norm_buf, energy, self.cfg.norm_window - 1)
            ref = F.max_pool1d(full, self.cfg.norm_window, stride=1) - PEAK_OFFSET  # (B, 1, T)
        return (x - ref) * scale, norm_next

    def logits(self, features: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T, n_mels) log-mel, (B, S) state -> (B, T, n_classes) logits, (B, S) state."""
        bufs = self._split(state)
        norm_buf, c1_buf, h0 = bufs[0], bufs[1], bufs[-1]
        xn, norm_next = self.normalise(features.transpose(1, 2), norm_buf)
        if self.cfg.cepstra:
            dct: Tensor = self.dct  # type: ignore[assignment]
            xn = F.conv1d(xn, dct)
        full, c1_next = self._causal(c1_buf, xn, self.cfg.kernel - 1)
        h = self.drop(torch.relu(self.conv1(full)))
        nexts = [norm_next, c1_next]
        if self.conv2 is not None:
            full, c2_next = self._causal(bufs[2], h, self.cfg.kernel - 1)
            h = self.drop(torch.relu(self.conv2(full)))
            nexts.append(c2_next)
        y, h_n = self.gru(h.transpose(1, 2), h0.transpose(0, 1).contiguous())
        logits = self.head(self.drop(y))
        flat = [t.flatten(1) for t in (*nexts, h_n.transpose(0, 1))]
        return logits, torch.cat(flat, dim=1)

    def forward(self, features: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T, n_mels), (B, S) -> (B, T, n_classes) softmax probabilities, (B, S) state."""
        logits, state_out = self.logits(features, state)
        return torch.softmax(logits, dim=-1), state_out


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def save_checkpoint(path: str | Path, model: VisemeNet, extra: dict[str, Any] | None = None) -> None:
    """Write ``{"config": ..., "state_dict": ..., **extra}`` with torch.save."""
    payload: dict[str, Any] = {"config": asdict(model.cfg), "state_dict": model.state_dict()}
    payload.update(extra or {})
    torch.save(payload, str(path))


def load_checkpoint(path: str | Path) -> VisemeNet:
    """Rebuild a :class:`VisemeNet` (eval mode) from :func:`save_checkpoint`'s file."""
    payload = torch.load(str(path), map_location="cpu", weights_only=False)
    model = VisemeNet(ModelConfig.from_dict(payload["config"]))
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model
