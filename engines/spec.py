"""Constants shared by the feature extractor, the model, its exporters and the runtime.

Every constant states its unit; derived constants are computed, never retyped.
"""

from __future__ import annotations

from typing import Final


def exact_div(x: int, y: int) -> int:
    """Integer division that must be exact (fails loudly on a config typo)."""
    if x % y != 0:
        raise ValueError(f"{x} is not divisible by {y}")
    return x // y


SAMPLE_RATE: Final = 16_000  # Hz, model input
HOP_LENGTH: Final = 160  # samples, 10 ms between feature frames
WIN_LENGTH: Final = 400  # samples, 25 ms analysis window (causal: it ends at the hop's end)
N_FFT: Final = 512  # samples, FFT size (window zero-padded)
N_MELS: Final = 40  # mel bands
F_MIN: Final = 20.0  # Hz, lowest mel band edge
F_MAX: Final = 7600.0  # Hz, highest mel band edge
LOG_FLOOR: Final = 1e-8  # added to mel power before the natural log
HOPS_PER_SECOND: Final = exact_div(SAMPLE_RATE, HOP_LENGTH)  # 100 hops/s
HOP_SECONDS: Final = HOP_LENGTH / SAMPLE_RATE  # 0.01 s

# The 15 Oculus/OVRLipSync visemes, in model output order.
VISEMES: Final = (
    "sil", "PP", "FF", "TH", "DD", "kk", "CH", "SS", "nn", "RR", "aa", "E", "I", "O", "U",
)
N_VISEMES: Final = len(VISEMES)
VISEME_INDEX: Final = {name: i for i, name in enumerate(VISEMES)}

# ONNX model contract (see engines/README or docs/model-card.md):
#   inputs:  "features" float32 (batch, time, N_MELS)  log-mel hops, in order
#            "state"    float32 (batch, state_size)     streaming state, zeros at stream start
#   outputs: "probs"    float32 (batch, time, N_VISEMES) softmax probabilities
#            "state_out" float32 (batch, state_size)
#   metadata_props: "lookahead_hops" (int as text): output row t is the prediction for input
#            hop t - lookahead_hops (the first lookahead_hops rows of a stream are discarded).
ONNX_INPUT_FEATURES: Final = "features"
ONNX_INPUT_STATE: Final = "state"
ONNX_OUTPUT_PROBS: Final = "probs"
ONNX_OUTPUT_STATE: Final = "state_out"
ONNX_META_LOOKAHEAD: Final = "lookahead_hops"
