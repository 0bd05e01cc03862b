"""Visemes and prosody → :class:`AnimationState`: lip shapes, expression, eyes, breathing, head.

The :class:`Animator` sits between the audio chain and the renderer. The audio side pushes
:class:`VisemeFrame` s (``push``) and :class:`ProsodyFrame` s (``push_prosody``); the video side
calls ``sample(t)`` at each frame's stream time ``t`` (s) and gets the state to draw. ``sample``
is a mailbox read: it never waits and never queues frames.

Time. Internally the animator advances on a fixed grid of 10 ms ticks of the sampling time
``t``. Viseme and prosody hops that were pushed since the previous ``sample`` are spread over the
ticks that call runs (each hop gets about one tick; none is dropped, none waits longer than one
sample interval), so the mouth follows the newest audio with no extra queueing even if the audio
and video clocks have different origins. Hops stop counting as current after
``stale_after_s`` without a push: the mouth then rests and the avatar counts as silent.

Determinism. Every random choice (blinks, saccades, idle motion) comes from one
``numpy.random.Generator`` seeded with ``seed``; nothing reads the wall clock or global random
state. The same seed and the same sequence of ``push``/``push_prosody``/``set_emotion``/``sample``
calls give bit-identical states; ``reset()`` starts the same sequence again.

Mouth. Each hop's probabilities are sharpened (``p ** viseme_sharpness``, renormalised) and
blended over :data:`VISEME_TARGETS`; the blend is smoothed by critically damped springs that
attack faster than they release: while the target opens the jaw wider than it is now they run
at ``mouth_attack_half_life_s``, otherwise at ``mouth_half_life_s`` (so a syllable shows on the
first video frame after the model's decision, and the mouth does not chatter shut between them). A bilabial (PP) probability above ``pp_threshold`` latches a closure
for at least ``closure_hold_s`` with its own faster spring, so brief /p b m/ closures still show
closed lips on at least one 30 fps frame. When the VAD says not speaking, the target is rest.

Expression. Prosody (level, pitch, speaking rate) drives ``arousal``; stressed syllables (local
pitch and energy peaks) raise the brows and strong ones nod the head; head motion grows with
arousal. Emotions (:data:`EMOTIONS`) blend over ``blend_s`` into ``emotion_weights`` and offset
brows, smile, eyes, gaze and head. ``emotion="auto"`` guesses a coarse emotion from prosody
alone; see :meth:`Animator.infer_emotion` and ``docs/expression.md`` for what it cannot do.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from numpy.typing import NDArray

from engines.spec import HOP_SECONDS, N_VISEMES, VISEME_INDEX, VISEMES
from server.errors import ConfigError
from server.pipeline.prosody import ProsodyFrame
from server.pipeline.types import EMOTIONS, AnimationState, VisemeFrame

TICK_S: float = 0.01  # s, internal simulation step (one viseme hop)
MOUTH_PARAMS: tuple[str, ...] = (
    "jaw_open", "mouth_width", "lip_round", "lips_pressed", "lip_tuck", "tongue_tip", "teeth_show",
)

# Per-viseme mouth targets, columns as MOUTH_PARAMS, rows in VISEMES order (AnimationState ranges:
# jaw 0..1, width -1 pucker..1 spread, the rest 0..1).
_OWN_VISEME_TARGETS = np.array(
    [
        # jaw   width  round  press  tuck  tongue teeth
        [0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00],  # sil: relaxed, lips together
        [0.00, 0.00, 0.00, 1.00, 0.00, 0.00, 0.00],  # PP: p b m, lips pressed
        [0.10, 0.10, 0.00, 0.00, 1.00, 0.00, 0.60],  # FF: f v, lower lip under upper teeth
        [0.20, 0.10, 0.00, 0.00, 0.00, 1.00, 0.40],  # TH: tongue between the teeth
        [0.25, 0.15, 0.00, 0.00, 0.00, 0.50, 0.50],  # DD: t d, tongue behind the teeth
        [0.30, 0.10, 0.00, 0.00, 0.00, 0.00, 0.30],  # kk: k g
        [0.20, -0.30, 0.60, 0.00, 0.00, 0.00, 0.70],  # CH: ch j sh, protruded lips, teeth close
        [0.10, 0.40, 0.00, 0.00, 0.00, 0.20, 0.90],  # SS: s z, teeth together, spread
        [0.20, 0.10, 0.00, 0.00, 0.00, 0.50, 0.30],  # nn: n l
        [0.25, -0.30, 0.50, 0.00, 0.00, 0.00, 0.20],  # RR: r
        [0.90, 0.10, 0.00, 0.00, 0.00, 0.00, 0.40],  # aa: open
        [0.50, 0.60, 0.00, 0.00, 0.00, 0.00, 0.60],  # E: spread, mid open
        [0.30, 0.80, 0.00, 0.00, 0.00, 0.00, 0.60],  # I (ih): spread, nearly closed
        [0.60, -0.40, 0.80, 0.00, 0.00, 0.00, 0.20],  # O (oh): round, open
        [0.30, -0.80, 1.00, 0.00, 0.00, 0.00, 0.10],  # U (ou): puckered
    ],
    dtype=np.float64,
)


def _viseme_targets() -> NDArray[np.float64]:
    """The (N_VISEMES, 7) target table: the renderers' ``server.render.poses.VISEME_TARGETS``
    (viseme -> parameter -> value) when that module exists, else the table above."""
    try:
        from server.render.poses import VISEME_TARGETS as shared
    except ImportError:
        return _OWN_VISEME_TARGETS
    try:
        return np.array([[float(shared[v][p]) for p in MOUTH_PARAMS] for v in VISEMES])
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"server.render.poses.VISEME_TARGETS lacks a viseme or parameter: {e!r}") from e


VISEME_TARGETS: NDArray[np.float64] = _viseme_targets()  # (N_VISEMES, 7), read-only
VISEME_TARGETS.setflags(write=False)

# Expression channels: spring-smoothed offsets added on top of lips, eyes and head.
EXPR_KEYS: tuple[str, ...] = (
    "brow_raise", "brow_inner", "smile", "eye_open", "head_yaw", "head_pitch", "head_roll",
    "gaze_x", "gaze_y", "jaw_open", "mouth_width", "lips_pressed",
)
_E = {k: i for i, k in enumerate(EXPR_KEYS)}
# What a full-intensity emotion adds, per EXPR_KEYS (head angles in rad, others in state units).
EMOTION_EFFECTS: dict[str, dict[str, float]] = {
    "neutral": {},
    "happy": {"smile": 0.75, "brow_raise": 0.15, "eye_open": -0.12, "head_pitch": -0.03, "mouth_width": 0.15},
    "sad": {"smile": -0.5, "brow_raise": -0.1, "brow_inner": 0.8, "eye_open": -0.2, "head_pitch": 0.08, "gaze_y": 0.25},
    "angry": {"smile": -0.35, "brow_raise": -0.6, "brow_inner": -0.85, "eye_open": -0.08, "head_pitch": 0.05, "lips_pressed": 0.3},
    "surprised": {"brow_raise": 0.9, "brow_inner": 0.3, "eye_open": 0.3, "jaw_open": 0.25, "head_pitch": -0.05},
    "thinking": {"smile": -0.1, "brow_raise": 0.25, "brow_inner": -0.25, "eye_open": -0.05, "gaze_x": 0.4, "gaze_y": -0.4, "head_roll": 0.06, "head_yaw": 0.05},
}


def _emotion_effects() -> NDArray[np.float64]:
    """(len(EMOTIONS), len(EXPR_KEYS)) offsets: EMOTION_EFFECTS, with the face fields that the
    renderers' ``server.render.poses.EMOTION_TARGETS`` defines (smile, brows, eye_open, gaze)
    taken from there so animation and still poses agree."""
    table = np.array([[EMOTION_EFFECTS[e].get(k, 0.0) for k in EXPR_KEYS] for e in EMOTIONS])
    try:
        from server.render.poses import EMOTION_TARGETS as shared
    except ImportError:
        return table
    for i, emo in enumerate(EMOTIONS):
        for key, value in shared.get(emo, {}).items():
            if key == "eye_open":
                table[i, _E[key]] = float(value) - 1.0
            elif key in _E:
                table[i, _E[key]] = float(value)
    return table


_EFFECTS = _emotion_effects()
_EFFECTS.setflags(write=False)
# What an audience reaction does to the face: (EXPR_KEYS field, amount at reaction_strength 1, s).
REACTION_EFFECTS: dict[str, tuple[tuple[str, float, float], ...]] = {
    "laugh": (("smile", 0.45, 1.6), ("eye_open", -0.15, 1.2)),  # a brighter smile, eyes narrowing
    "heart": (("smile", 0.3, 1.2),),
    "question": (("brow_raise", 0.35, 1.4), ("head_roll", 0.06, 1.4)),  # raised brows, a small tilt
    "surprise": (("brow_raise", 0.45, 0.8), ("eye_open", 0.2, 0.8)),
    "applause": (("head_pitch", 0.06, 0.25), ("smile", 0.2, 1.0)),  # a nod of thanks
}

# Extra spring channels after the EXPR_KEYS: head-motion amplitude, listening pose, breath depth
# and liveliness (arousal while speaking: weight of the faster, speech-rhythm head motion).
_AMP, _LISTEN, _DEPTH, _LIVELY = (len(EXPR_KEYS) + i for i in range(4))
_N_EXPR = len(EXPR_KEYS) + 4
_HALF_LIFE_TO_OMEGA = 1.678347  # (1 + u) e^-u = 1/2 at u = 1.678: critically damped half-life


def _validate(name: str, value: Any, lo: float, hi: float) -> None:
    """Raise ConfigError naming ``animation.<name>`` unless lo <= value <= hi (finite number)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not lo <= value <= hi:
        raise ConfigError(f"animation.{name} must be in [{lo:g}, {hi:g}], got {value!r}")


@dataclass(frozen=True, slots=True)
class AnimationConfig:
    """Animator settings (``[animation]`` in the config). Units in each comment."""

    mouth_half_life_s: float = 0.015  # s, mouth spring half-life while closing or shaping (90 % of a step in ~35 ms)
    mouth_attack_half_life_s: float = 0.007  # s, mouth spring half-life while opening wider (90 % in ~16 ms)
    closure_half_life_s: float = 0.006  # s, PP lip-closure spring half-life
    closure_hold_s: float = 0.05  # s, a detected PP closure is shown at least this long
    pp_threshold: float = 0.3  # PP probability that latches a lip closure, 0..1
    viseme_sharpness: float = 1.5  # exponent on probabilities before blending, 1 = plain blend
    stale_after_s: float = 0.3  # s without pushed hops before the mouth rests (audio stalled)
    expression_half_life_s: float = 0.1  # s, brows, smile, eyes, gaze bias springs
    head_half_life_s: float = 0.25  # s, head-pose offset springs (emotion, listening)
    nod_half_life_s: float = 0.07  # s, head-nod spring
    blink_per_min: float = 17.0  # blinks per minute on average (speech 0.8x, silence 1.15x)
    blink_duration_s: float = 0.12  # s, mean blink duration (each blink varies ±20 %)
    double_blink_prob: float = 0.1  # probability a blink is followed by a second one, 0..1
    eye_contact: float = 0.75  # fraction of time the eyes rest on the viewer, 0..1
    listening_eye_contact: float = 0.9  # the same while in the listening pose, 0..1
    glance_s: float = 0.9  # s, mean duration of a glance away
    saccade_s: float = 0.04  # s, duration of a typical gaze shift (small ones are shorter)
    breaths_per_min: float = 15.0  # breaths per minute at rest
    head_motion_rad: float = 0.04  # rad, amplitude of idle head motion (x1.4..2.4 when speaking)
    emotion: str = "neutral"  # initial emotion: one of EMOTIONS or "auto"
    emotion_intensity: float = 0.7  # intensity of the initial (or auto-inferred) emotion, 0..1
    emotion_blend_s: float = 0.5  # s, default blend time of emotion changes
    listen_after_s: float = 1.5  # s of silence before the listening pose
    level_prior_dbfs: float = -26.0  # dBFS, assumed speech level before the speaker is learnt
    pitch_prior_hz: float = 150.0  # Hz, assumed pitch before the speaker is learnt
    audience_reactions: bool = True  # viewers' reactions (laugh, question, applause...) move the face
    reaction_strength: float = 1.0  # scale of those movements, 0..2 (1 = REACTION_EFFECTS as written)

    def __post_init__(self) -> None:
        _validate("mouth_half_life_s", self.mouth_half_life_s, 0.001, 0.5)
        _validate("mouth_attack_half_life_s", self.mouth_attack_half_life_s, 0.001, 0.5)
        _validate("closure_half_life_s", self.closure_half_life_s, 0.001, 0.2)
        _validate("closure_hold_s", self.closure_hold_s, 0.0, 0.5)
        _validate("pp_threshold", self.pp_threshold, 0.0, 1.0)
        _validate("viseme_sharpness", self.viseme_sharpness, 1.0, 8.0)
        _validate("stale_after_s", self.stale_after_s, 0.02, 10.0)
        _validate("expression_half_life_s", self.expression_half_life_s, 0.01, 5.0)
        _validate("head_half_life_s", self.head_half_life_s, 0.01, 5.0)
        _validate("nod_half_life_s", self.nod_half_life_s, 0.01, 1.0)
        _validate("blink_per_min", self.blink_per_min, 0.0, 60.0)
        _validate("blink_duration_s", self.blink_duration_s, 0.05, 0.5)
        _validate("double_blink_prob", self.double_blink_prob, 0.0, 1.0)
        _validate("eye_contact", self.eye_contact, 0.0, 1.0)
        _validate("listening_eye_contact", self.listening_eye_contact, 0.0, 1.0)
        _validate("glance_s", self.glance_s, 0.1, 10.0)
        _validate("saccade_s", self.saccade_s, 0.01, 0.2)
        _validate("breaths_per_min", self.breaths_per_min, 4.0, 40.0)
        _validate("head_motion_rad", self.head_motion_rad, 0.0, 0.5)
        _validate("emotion_intensity", self.emotion_intensity, 0.0, 1.0)
        _validate("emotion_blend_s", self.emotion_blend_s, 0.0, 30.0)
        _validate("reaction_strength", self.reaction_strength, 0.0, 2.0)
        if not isinstance(self.audience_reactions, bool):
            raise ConfigError(f"animation.audience_reactions must be true or false, got {self.audience_reactions!r}")
        _validate("listen_after_s", self.listen_after_s, 0.0, 600.0)
        _validate("level_prior_dbfs", self.level_prior_dbfs, -90.0, 0.0)
        _validate("pitch_prior_hz", self.pitch_prior_hz, 50.0, 500.0)
        if self.emotion not in (*EMOTIONS, "auto"):
            raise ConfigError(
                f"animation.emotion must be one of {', '.join((*EMOTIONS, 'auto'))}, got {self.emotion!r}"
            )

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> AnimationConfig:
        """Build from a parsed ``[animation]`` table; unknown keys raise ConfigError naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown animation key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(**data)


class _Springs:
    """A vector of independent critically damped springs with exact (closed-form) steps.

    ``attack_half_lives`` (optional): a second set of half-lives, used for a step when the caller
    says the motion is an attack (the springs' position and velocity carry over between sets)."""

    def __init__(self, half_lives: NDArray[np.float64], x0: NDArray[np.float64],
                 attack_half_lives: NDArray[np.float64] | None = None) -> None:
        self.omega = _HALF_LIFE_TO_OMEGA / half_lives
        self.attack_omega = self.omega if attack_half_lives is None else _HALF_LIFE_TO_OMEGA / attack_half_lives
        self.x = x0.astype(np.float64).copy()
        self.v = np.zeros_like(self.x)
        self._tick = self._coeffs(TICK_S, self.omega)
        self._attack_tick = self._coeffs(TICK_S, self.attack_omega)

    @staticmethod
    def _coeffs(dt: float, w: NDArray[np.float64]) -> tuple[NDArray[np.float64], ...]:
        e = np.exp(-w * dt)
        return (1.0 + w * dt) * e, dt * e, -w * w * dt * e, (1.0 - w * dt) * e

    def step(self, target: NDArray[np.float64], attack: bool = False) -> None:
        """Advance one TICK_S towards ``target`` (held constant over the step)."""
        a, b, c, d = self._attack_tick if attack else self._tick
        y = self.x - target
        self.x = target + a * y + b * self.v
        self.v = c * y + d * self.v

    def peek(self, target: NDArray[np.float64], dt: float, attack: bool = False) -> NDArray[np.float64]:
        """Position ``dt`` (s) ahead without committing (0 <= dt < TICK_S)."""
        if dt <= 0.0:
            return self.x
        a, b, _, _ = self._coeffs(dt, self.attack_omega if attack else self.omega)
        return target + a * (self.x - target) + b * self.v


def _jaw(mouth: NDArray[np.float64]) -> float:
    """Jaw opening (0..1) of a mouth spring vector (15 viseme weights + lip closure)."""
    vis = np.maximum(mouth[:N_VISEMES], 0.0)
    s = float(vis.sum())
    if s <= 1e-9:
        return 0.0
    closure = min(1.0, max(0.0, float(mouth[-1])))
    return float(vis @ VISEME_TARGETS[:, 0]) / s * (1.0 - closure)


def _smoothstep(u: float) -> float:
    u = min(1.0, max(0.0, u))
    return u * u * (3.0 - 2.0 * u)


def _minjerk(u: float) -> float:
    u = min(1.0, max(0.0, u))
    return u * u * u * (10.0 - 15.0 * u + 6.0 * u * u)


def _blink_closure(s: float) -> float:
    """Lid closure 0..1 at fraction s of a blink: fast close (35 %), slower reopening."""
    if s <= 0.0 or s >= 1.0:
        return 0.0
    if s < 0.35:
        return _smoothstep(s / 0.35)
    return 1.0 - _smoothstep((s - 0.35) / 0.65)


@dataclass(slots=True)
class _Hop:
    """One pushed viseme hop: its probabilities and VAD state."""

    weights: NDArray[np.float32]  # (N_VISEMES,)
    speaking: bool


class Animator:
    """Per-session animation state machine. Not thread-safe: one session thread drives it.

    ``push(VisemeFrame)`` and ``push_prosody(ProsodyFrame)`` store new hops; ``sample(t)``
    advances to stream time ``t`` (s) and returns the :class:`AnimationState`.
    """

    MAX_PENDING_HOPS = 3000  # 30 s of hops kept if nobody samples; older ones are dropped
    MAX_CATCHUP_S = 1.0  # a longer gap between samples is skipped, not simulated

    def __init__(self, config: AnimationConfig | None = None, seed: int = 0) -> None:
        self.cfg = config if config is not None else AnimationConfig()
        self.seed = int(seed)
        self.reset()

    # ------------------------------------------------------------------ public API

    def reset(self) -> None:
        """Back to the initial state; the random sequence restarts from the seed."""
        cfg = self.cfg
        self._rng = np.random.default_rng(self.seed)
        self._hops: deque[_Hop] = deque()
        self._prosody: deque[ProsodyFrame] = deque()
        self._tick_t: float | None = None  # start of the next tick (sampling time base)
        self._last_t = 0.0
        self._since_hop = math.inf  # s since the last consumed hop
        self._speaking = False
        self._silence_s = math.inf  # s since the last speaking hop
        self.dropped_hops = 0
        # Mouth: 15 viseme weights + lip closure.
        hl = np.full(N_VISEMES + 1, cfg.mouth_half_life_s)
        hl[-1] = cfg.closure_half_life_s
        attack = np.full(N_VISEMES + 1, cfg.mouth_attack_half_life_s)
        attack[-1] = cfg.closure_half_life_s  # the lip closure has its own spring either way
        rest = np.zeros(N_VISEMES + 1)
        rest[VISEME_INDEX["sil"]] = 1.0
        self._mouth = _Springs(hl, rest, attack)
        self._mouth_attack = False  # this tick's mouth motion opens the jaw wider
        self._mouth_target = rest.copy()
        self._closure_until = -math.inf
        # Expression springs.
        ehl = np.full(_N_EXPR, cfg.expression_half_life_s)
        for k in ("head_yaw", "head_roll"):
            ehl[_E[k]] = cfg.head_half_life_s
        ehl[_E["head_pitch"]] = cfg.nod_half_life_s
        ehl[_AMP] = 0.6
        ehl[_LISTEN] = 0.4
        ehl[_DEPTH] = 0.8
        ehl[_LIVELY] = 0.5
        x0 = np.zeros(_N_EXPR)
        x0[_AMP] = cfg.head_motion_rad * 0.6
        x0[_DEPTH] = 0.6
        self._expr = _Springs(ehl, x0)
        self._expr_target = x0.copy()
        self._brow_pulse_until = -math.inf
        self._pulses: list[tuple[float, int, float]] = []  # audience reactions: (until s, field, amount)
        self._brow_pulse = 0.0
        self._nod_until = -math.inf
        self._nod = 0.0
        self._last_accent = -math.inf
        self._last_nod = -math.inf
        self._next_listen_nod = math.inf
        # Prosody statistics (see _on_prosody).
        self.arousal = 0.1
        self._level_base = cfg.level_prior_dbfs
        self._st_base = 12.0 * math.log2(cfg.pitch_prior_hz)
        self._level_loc = cfg.level_prior_dbfs
        self._st_loc = self._st_base
        self._st_mid = self._st_base
        self._st_var = 1.0
        self._st_last3: deque[float] = deque(maxlen=3)  # semitones of the last voiced hops
        self._rate = 0.0
        self._active_frac = 0.0
        self._inactive_s = math.inf
        self._active_run = 0.0  # s of speech-like energy since the last pause >= 0.3 s
        self._jump_until = -math.inf
        # Emotion blend.
        self.auto = cfg.emotion == "auto"
        self._auto_intensity = cfg.emotion_intensity
        self._auto_blend = cfg.emotion_blend_s
        first = "neutral" if self.auto else cfg.emotion
        w0 = self._emotion_vector(first, cfg.emotion_intensity)
        self._emo_from = w0
        self._emo_to = w0
        self._emo_t0 = 0.0
        self._emo_dur = 0.0
        self._auto_candidate = "neutral"
        self._auto_since = 0.0
        self._auto_next = 0.0
        # Blinks: phase accumulator against a random threshold (gamma, mean 1).
        self._blink_acc = 0.0
        self._blink_thr = self._draw_blink_threshold()
        self._blinks: deque[tuple[float, float]] = deque()  # (start, duration)
        self.blink_count = 0
        self._post_speech_blink_done = True
        # Gaze: fixation targets reached by minimum-jerk saccades.
        self._gaze_from = (0.0, 0.0)
        self._gaze_to = (0.0, 0.0)
        self._sacc_t0 = -math.inf
        self._sacc_dur = cfg.saccade_s
        self._contact = True
        self._away_centre = (0.0, 0.0)
        self._mode_until: float | None = None
        self._micro_at: float | None = None
        # Breathing and idle motion.
        self._breath_phase = float(self._rng.uniform(0.0, 2.0 * math.pi))
        # Idle head noise: 3 slow sines per axis (yaw, pitch, roll); row 3 is the faster
        # speech-rhythm component, row 4 the phases of the gaze drift.
        self._noise_f = self._rng.uniform(0.06, 0.45, size=(5, 3))  # Hz
        self._noise_f[3] = self._rng.uniform(0.9, 1.7, size=3)
        self._noise_p = self._rng.uniform(0.0, 2.0 * math.pi, size=(5, 3))
        self._noise_a = np.array([0.55, 0.3, 0.15])
        self._tilt_sign = 1.0 if self._rng.random() < 0.5 else -1.0

    def push(self, frame: VisemeFrame) -> None:
        """Store the hops of a viseme frame; they drive the mouth from the next ``sample``."""
        weights = np.array(frame.weights, np.float32)  # a copy: callers may reuse their buffer
        if weights.ndim != 2 or weights.shape[1] != N_VISEMES:
            raise ValueError(f"VisemeFrame.weights must be (n, {N_VISEMES}), got {weights.shape}")
        for row in weights:
            self._hops.append(_Hop(row, bool(frame.speaking)))
        while len(self._hops) > self.MAX_PENDING_HOPS:
            self._hops.popleft()
            self.dropped_hops += 1

    def push_prosody(self, p: ProsodyFrame) -> None:
        """Store one prosody hop; consumed in order by the next ``sample``."""
        self._prosody.append(p)
        while len(self._prosody) > self.MAX_PENDING_HOPS:
            self._prosody.popleft()

    def set_emotion(self, emotion: str, intensity: float = 1.0, blend_s: float | None = None,
                    t: float | None = None) -> None:
        """Blend to ``emotion`` (EMOTIONS or "auto") at ``intensity`` 0..1 over ``blend_s`` s from ``t``.

        ``t`` defaults to the last sampled time; ``blend_s`` to ``emotion_blend_s``. "auto"
        hands control to prosody-based inference, with ``intensity`` as its strength.
        Raises ValueError naming a bad value.
        """
        if emotion not in (*EMOTIONS, "auto"):
            raise ValueError(f"emotion must be one of {', '.join((*EMOTIONS, 'auto'))}, got {emotion!r}")
        if not isinstance(intensity, int | float) or not 0.0 <= intensity <= 1.0:
            raise ValueError(f"emotion intensity must be in [0, 1], got {intensity!r}")
        blend = self.cfg.emotion_blend_s if blend_s is None else blend_s
        if not isinstance(blend, int | float) or not 0.0 <= blend <= 600.0 or not math.isfinite(blend):
            raise ValueError(f"emotion blend_s must be in [0, 600] s, got {blend_s!r}")
        t0 = self._last_t if t is None else float(t)
        if emotion == "auto":
            self.auto = True
            self._auto_intensity = float(intensity)
            self._auto_blend = float(blend)
            self._auto_next = t0
            return
        self.auto = False
        self._blend_to(self._emotion_vector(emotion, float(intensity)), float(blend), t0)

    def react(self, kind: str, t: float | None = None) -> bool:
        """An audience reaction at stream time ``t`` (default: the last sampled time): a short
        expression pulse (REACTION_EFFECTS). Returns False when reactions are switched off.
        Raises ValueError naming an unknown kind."""
        if kind not in REACTION_EFFECTS:
            raise ValueError(f"reaction must be one of {', '.join(REACTION_EFFECTS)}, got {kind!r}")
        if not self.cfg.audience_reactions or self.cfg.reaction_strength == 0.0:
            return False
        t0 = self._last_t if t is None else float(t)
        self._pulses = [p for p in self._pulses if p[0] > t0][-8:]  # at most a few at once
        for key, amount, dur in REACTION_EFFECTS[kind]:
            self._pulses.append((t0 + dur, _E[key], amount * self.cfg.reaction_strength))
        return True

    def emotion_weights(self, t: float) -> NDArray[np.float64]:
        """(len(EMOTIONS),) blended emotion weights at time ``t`` (s), sum 1."""
        if self._emo_dur <= 0.0 or t >= self._emo_t0 + self._emo_dur:
            return self._emo_to if t >= self._emo_t0 else self._emo_from
        u = _smoothstep((t - self._emo_t0) / self._emo_dur)
        return self._emo_from + (self._emo_to - self._emo_from) * u

    def sample(self, t: float) -> AnimationState:
        """Advance to stream time ``t`` (s) and return the state to draw at ``t``."""
        t = float(t)
        if self._tick_t is None:
            self._tick_t = t
            self._last_t = t
            self._plan_gaze(t)
        if t - self._tick_t > self.MAX_CATCHUP_S:  # a long gap: skip it, do not simulate it
            skipped = t - self._tick_t - 0.2
            self._since_hop += skipped
            self._silence_s += skipped
            self._inactive_s += skipped
            self._tick_t += skipped
            self._replan_after_gap(self._tick_t)
        n_ticks = int(math.floor((t - self._tick_t) / TICK_S + 1e-9))
        n_hops, n_pros = len(self._hops), len(self._prosody)
        for i in range(max(n_ticks, 0)):
            # Spread the pending hops over this call's ticks: none skipped, none kept waiting.
            take = -(-n_hops * (i + 1) // n_ticks) - (-(-n_hops * i // n_ticks))
            take_p = -(-n_pros * (i + 1) // n_ticks) - (-(-n_pros * i // n_ticks))
            self._tick(take, take_p)
        self._last_t = max(self._last_t, t)
        return self._state(max(t, self._tick_t))

    # ------------------------------------------------------------------ one tick

    def _tick(self, n_hops: int, n_prosody: int) -> None:
        """Advance TICK_S: consume hops, update events and targets, step springs."""
        assert self._tick_t is not None
        tau = self._tick_t
        cfg = self.cfg
        target_row: NDArray[np.float32] | None = None
        speaking_hop = False
        for _ in range(n_hops):
            hop = self._hops.popleft()
            self._since_hop = 0.0
            speaking_hop = hop.speaking
            # The VisemeStage already gates weights softly by the VAD probability, so a hop
            # whose weights say "not silence" moves the mouth even before the VAD's hysteresis
            # has switched to speaking: the first syllable is not delayed by VAD onset.
            if hop.speaking or float(hop.weights[VISEME_INDEX["sil"]]) < 0.5:
                target_row = hop.weights
                if hop.weights[VISEME_INDEX["PP"]] >= cfg.pp_threshold:
                    self._closure_until = max(self._closure_until, tau + cfg.closure_hold_s)
            else:
                target_row = None
        for _ in range(n_prosody):
            self._on_prosody(self._prosody.popleft(), tau)
        if n_hops == 0:
            self._since_hop += TICK_S
            stale = self._since_hop > cfg.stale_after_s
            speaking_hop = self._speaking and not stale
            if not stale and self._speaking:
                target_row = None  # keep the previous target (below)
        was_speaking = self._speaking
        self._speaking = speaking_hop
        if speaking_hop:
            self._silence_s = 0.0
        else:
            self._silence_s += TICK_S
            if was_speaking:
                self._post_speech_blink_done = False
        # Mouth target.
        if n_hops > 0 or not self._speaking:
            mt = np.zeros(N_VISEMES + 1)
            if target_row is not None:
                w = np.maximum(target_row.astype(np.float64), 0.0) ** cfg.viseme_sharpness
                s = float(w.sum())
                mt[:N_VISEMES] = w / s if s > 0.0 else 0.0
                if s <= 0.0:
                    mt[VISEME_INDEX["sil"]] = 1.0
            else:
                mt[VISEME_INDEX["sil"]] = 1.0
            self._mouth_target = mt
        self._mouth_target[-1] = 1.0 if tau < self._closure_until else 0.0
        self._mouth_attack = _jaw(self._mouth_target) > _jaw(self._mouth.x) + 1e-3
        self._mouth.step(self._mouth_target, self._mouth_attack)
        # Expression, eyes, breath.
        listening = self._silence_s >= cfg.listen_after_s
        if self.auto and tau >= self._auto_next:
            self._auto_step(tau)
        self._update_blinks(tau)
        self._update_gaze(tau, listening)
        self._expr_target = self._expression_target(tau, listening)
        self._expr.step(self._expr_target)
        rate = cfg.breaths_per_min / 60.0
        if self._speaking:
            rate *= 0.7  # long exhalations while talking
        elif 0.15 < self._silence_s < 1.0:
            rate *= 1.6  # quick catch-breath in a pause, before speech resumes
        self._breath_phase = (self._breath_phase + 2.0 * math.pi * rate * TICK_S) % (2.0 * math.pi)
        self._tick_t = tau + TICK_S

    # ------------------------------------------------------------------ prosody → arousal, accents

    def _on_prosody(self, p: ProsodyFrame, tau: float) -> None:
        """Update speaker statistics, arousal and stress accents from one prosody hop."""
        k = HOP_SECONDS
        self._active_frac += (float(p.active) - self._active_frac) * k / 3.0
        if not p.active:
            self._inactive_s += k
            if self._inactive_s > 0.5:
                self.arousal += (0.1 - self.arousal) * k / 3.0
            return
        self._active_run = self._active_run + k if self._inactive_s < 0.3 else 0.0
        self._inactive_s = 0.0
        level = p.rms_db
        if p.rate_sps > 0.0:
            self._rate += (p.rate_sps - self._rate) * k / 1.0
        level_rise = level - self._level_loc
        self._level_base += (level - self._level_base) * k / 20.0
        self._level_loc += (level - self._level_loc) * k / 0.4
        pitch_rise = 0.0
        if p.voiced and p.pitch_hz > 0.0:
            self._st_last3.append(12.0 * math.log2(p.pitch_hz))
            st = sorted(self._st_last3)[len(self._st_last3) // 2]  # median of 3: no octave blips
            pitch_rise = st - self._st_loc
            if pitch_rise > 7.0 and level_rise > 3.0 and self._active_run > 0.5:
                self._jump_until = tau + 1.5  # a sudden large pitch leap: surprise-like
            self._st_base += (st - self._st_base) * k / 20.0
            self._st_loc += (st - self._st_loc) * k / 0.4
            self._st_mid += (st - self._st_mid) * k / 1.5
            self._st_var += ((st - self._st_mid) ** 2 - self._st_var) * k / 1.5
        energy = min(1.0, max(0.0, 0.5 + (self._level_loc - self._level_base) / 12.0))
        height = min(1.0, max(0.0, 0.5 + (self._st_mid - self._st_base) / 8.0))
        variety = min(1.0, math.sqrt(max(self._st_var, 0.0)) / 4.0)
        rate = min(1.0, max(0.0, (self._rate - 2.5) / 3.5)) if self._rate > 0.0 else 0.3
        a_inst = 0.35 * energy + 0.25 * height + 0.2 * variety + 0.2 * rate
        self.arousal += (a_inst - self.arousal) * k / 0.8
        # Stress accents: a local pitch peak with a loudness peak.
        score = max(0.0, level_rise) / 8.0 + max(0.0, pitch_rise) / 3.0
        if p.voiced and pitch_rise >= 1.5 and score >= 1.2 and tau - self._last_accent >= 0.35:
            self._last_accent = tau
            self._brow_pulse = 0.2 + 0.4 * self.arousal
            self._brow_pulse_until = tau + 0.2
            if score >= 1.6 and tau - self._last_nod >= 0.9:
                self._last_nod = tau
                self._nod = 0.03 + 0.05 * self.arousal
                self._nod_until = tau + 0.12

    # ------------------------------------------------------------------ emotions

    @staticmethod
    def _emotion_vector(emotion: str, intensity: float) -> NDArray[np.float64]:
        w = np.zeros(len(EMOTIONS))
        i = EMOTIONS.index(emotion)
        w[i] += intensity
        w[0] += 1.0 - intensity
        return w

    def _blend_to(self, target: NDArray[np.float64], blend_s: float, t0: float) -> None:
        self._emo_from = self.emotion_weights(t0).copy()
        self._emo_to = target
        self._emo_t0 = t0
        self._emo_dur = blend_s

    def infer_emotion(self) -> str:
        """The coarse emotion the prosody suggests right now (what ``emotion="auto"`` follows).

        Uses only level, pitch height and variability relative to this speaker's running
        baseline, speaking rate and arousal. It separates aroused from calm speech fairly
        well; "happy" (high, varied pitch) vs "angry" (loud, flat-ish pitch) is a weak guess;
        "surprised" is a sudden large pitch leap; "sad" is quiet, low, slow speech. It cannot
        read words, irony, sarcasm or the face, and never proposes "thinking".
        """
        if self._active_frac < 0.25:
            return "neutral" if self._inactive_s > 6.0 else self._auto_candidate
        if self._last_t < self._jump_until:
            return "surprised"
        height = self._st_mid - self._st_base  # semitones above the speaker's baseline
        spread = math.sqrt(max(self._st_var, 0.0))  # semitones
        loud = self._level_loc - self._level_base  # dB above the speaker's baseline
        if self.arousal > 0.6 and spread >= 2.5 and height > 1.5:
            return "happy"
        if self.arousal > 0.55 and spread < 2.5 and loud > 2.0:
            return "angry"
        if self.arousal < 0.32 and height < -1.0 and (self._rate == 0.0 or self._rate < 3.5):
            return "sad"
        return "neutral"

    def _auto_step(self, tau: float) -> None:
        """Every 0.25 s: switch to the inferred emotion once it has held for 1 s."""
        self._auto_next = tau + 0.25
        cand = self.infer_emotion()
        if cand != self._auto_candidate:
            self._auto_candidate = cand
            self._auto_since = tau
            return
        target = self._emotion_vector(cand, self._auto_intensity)
        if tau - self._auto_since >= 1.0 and not np.allclose(target, self._emo_to):
            self._blend_to(target, self._auto_blend, tau)

    # ------------------------------------------------------------------ targets of the face

    def _expression_target(self, tau: float, listening: bool) -> NDArray[np.float64]:
        cfg = self.cfg
        tgt = np.zeros(_N_EXPR)
        tgt[: len(EXPR_KEYS)] = self.emotion_weights(tau) @ _EFFECTS
        if tau < self._brow_pulse_until:
            tgt[_E["brow_raise"]] += self._brow_pulse
        if tau < self._nod_until:
            tgt[_E["head_pitch"]] += self._nod
        for until, idx, amount in self._pulses:
            if tau < until:
                tgt[idx] += amount
        listen = 1.0 if listening else 0.0
        tgt[_LISTEN] = listen
        tgt[_E["brow_raise"]] += 0.15 * listen  # attentive brows
        tgt[_E["head_roll"]] += 0.07 * listen * self._tilt_sign  # slight tilt
        tgt[_E["head_pitch"]] -= 0.02 * listen  # chin slightly up
        tgt[_E["smile"]] += 0.08 * listen
        if listening:  # occasional small back-channel nods
            if self._next_listen_nod == math.inf:
                self._next_listen_nod = tau + float(self._rng.uniform(2.0, 6.0))
            elif tau >= self._next_listen_nod:
                self._nod = 0.025
                self._nod_until = tau + 0.15
                self._next_listen_nod = tau + float(self._rng.uniform(3.0, 9.0))
        else:
            self._next_listen_nod = math.inf
        if not self._speaking:
            tgt[_E["jaw_open"]] *= 0.6
        else:
            tgt[_E["lips_pressed"]] = 0.0
        amp = cfg.head_motion_rad * ((1.4 + 1.0 * self.arousal) if self._speaking else 0.6)
        tgt[_AMP] = amp
        tgt[_LIVELY] = self.arousal if self._speaking else 0.0
        pause = (not self._speaking) and 0.15 < self._silence_s < 1.0
        tgt[_DEPTH] = 1.0 if pause else (0.5 if self._speaking else 0.6)
        return tgt

    # ------------------------------------------------------------------ blinks

    def _draw_blink_threshold(self) -> float:
        return max(0.15, float(self._rng.gamma(3.0, 1.0 / 3.0)))

    def _start_blink(self, tau: float) -> None:
        cfg = self.cfg
        dur = cfg.blink_duration_s * float(self._rng.uniform(0.8, 1.2))
        self._blinks.append((tau, dur))
        self.blink_count += 1
        if self._rng.random() < cfg.double_blink_prob:
            gap = float(self._rng.uniform(0.06, 0.12))
            self._blinks.append((tau + dur + gap, cfg.blink_duration_s * float(self._rng.uniform(0.8, 1.0))))
            self.blink_count += 1
        self._blink_acc = 0.0
        self._blink_thr = self._draw_blink_threshold()

    def _update_blinks(self, tau: float) -> None:
        cfg = self.cfg
        while self._blinks and self._blinks[0][0] + self._blinks[0][1] < tau - 0.5:
            self._blinks.popleft()
        busy = bool(self._blinks) and self._blinks[-1][0] + self._blinks[-1][1] > tau
        factor = 0.8 if self._speaking else 1.15
        self._blink_acc += cfg.blink_per_min / 60.0 * factor * TICK_S
        if busy or cfg.blink_per_min <= 0.0:
            return
        if not self._post_speech_blink_done and self._silence_s >= 0.15:
            self._post_speech_blink_done = True  # a blink at the end of an utterance
            if self._blink_acc >= 0.3 * self._blink_thr:
                self._start_blink(tau)
                return
        if self._blink_acc >= self._blink_thr:
            self._start_blink(tau)

    def _blink_at(self, t: float) -> float:
        c = 0.0
        for start, dur in self._blinks:
            c = max(c, _blink_closure((t - start) / dur))
        return c

    # ------------------------------------------------------------------ gaze

    def _plan_gaze(self, tau: float) -> None:
        self._contact = True
        self._mode_until = tau + self._draw_duration(True, False)
        self._micro_at = tau + float(self._rng.uniform(0.3, 1.0))

    def _replan_after_gap(self, tau: float) -> None:
        self._gaze_from = self._gaze_to
        self._sacc_t0 = -math.inf
        self._blinks.clear()
        self._plan_gaze(tau)

    def _draw_duration(self, contact: bool, listening: bool) -> float:
        """Random duration (s) of an eye-contact or glance-away period (shifted exponential)."""
        cfg = self.cfg
        ratio = cfg.listening_eye_contact if listening else cfg.eye_contact
        if contact:
            if ratio >= 1.0:
                return math.inf
            mean = cfg.glance_s * ratio / max(1.0 - ratio, 1e-9)
        else:
            if ratio <= 0.0:
                return math.inf
            mean = cfg.glance_s
        if mean <= 0.0:
            return 0.0
        floor = min(0.2, 0.5 * mean)
        return floor + float(self._rng.exponential(mean - floor)) if mean > floor else mean

    def _saccade(self, tau: float, to: tuple[float, float]) -> None:
        cur = self._gaze_pos(tau)
        amp = math.hypot(to[0] - cur[0], to[1] - cur[1])
        self._gaze_from = cur
        self._gaze_to = to
        self._sacc_t0 = tau
        self._sacc_dur = min(2.0 * self.cfg.saccade_s, max(0.015, self.cfg.saccade_s * (0.5 + 1.25 * amp)))
        if amp > 0.3 and self._blink_acc >= 0.7 * self._blink_thr and not self._blinks_busy(tau):
            self._start_blink(tau)  # large gaze shifts often come with a blink

    def _blinks_busy(self, tau: float) -> bool:
        return bool(self._blinks) and self._blinks[-1][0] + self._blinks[-1][1] > tau

    def _update_gaze(self, tau: float, listening: bool) -> None:
        assert self._mode_until is not None and self._micro_at is not None
        if tau >= self._mode_until:
            self._contact = not self._contact
            self._mode_until = tau + self._draw_duration(self._contact, listening)
            if self._contact:
                r, a = 0.02 * float(self._rng.random()), float(self._rng.uniform(0, 2 * math.pi))
                self._saccade(tau, (r * math.cos(a), r * math.sin(a)))
            else:
                self._saccade(tau, self._away_target())
            self._micro_at = tau + float(self._rng.uniform(0.4, 1.2))
        elif tau >= self._micro_at:  # fixational micro-saccade around the current fixation
            r = float(self._rng.uniform(0.01, 0.035))
            a = float(self._rng.uniform(0, 2 * math.pi))
            cx, cy = (0.0, 0.0) if self._contact else self._away_centre
            self._saccade(tau, (cx + r * math.cos(a), cy + r * math.sin(a)))
            self._micro_at = tau + float(self._rng.uniform(0.4, 1.2))

    def _away_target(self) -> tuple[float, float]:
        """A glance away: mostly sideways, a little up or down, 0.25..0.6 off-centre."""
        amp = float(self._rng.uniform(0.25, 0.6))
        side = -1.0 if self._rng.random() < 0.5 else 1.0
        ang = float(self._rng.uniform(-0.7, 0.7))  # rad from horizontal
        self._away_centre = (side * amp * math.cos(ang), amp * math.sin(ang))
        return self._away_centre

    def _gaze_pos(self, t: float) -> tuple[float, float]:
        u = _minjerk((t - self._sacc_t0) / self._sacc_dur) if self._sacc_dur > 0 else 1.0
        fx, fy = self._gaze_from
        tx, ty = self._gaze_to
        return fx + (tx - fx) * u, fy + (ty - fy) * u

    # ------------------------------------------------------------------ output

    def _noise(self, t: float, lively: float) -> NDArray[np.float64]:
        """(3,) smooth head noise for yaw, pitch, roll, roughly in [-1, 1] (x1.5 when lively=1)."""
        slow = (self._noise_a[:, None] * np.sin(2.0 * math.pi * self._noise_f[:3] * t + self._noise_p[:3])).sum(axis=0)
        fast = np.sin(2.0 * math.pi * self._noise_f[3] * t + self._noise_p[3])
        return slow + 0.5 * lively * fast

    def _state(self, t: float) -> AnimationState:
        assert self._tick_t is not None
        dt = t - self._tick_t
        m = self._mouth.peek(self._mouth_target, dt, self._mouth_attack)
        e = self._expr.peek(self._expr_target, dt)
        vis = np.maximum(m[:N_VISEMES], 0.0)
        closure = min(1.0, max(0.0, float(m[-1])))
        s = float(vis.sum())
        vis = vis / s if s > 1e-9 else np.eye(1, N_VISEMES, 0)[0]
        params = vis @ VISEME_TARGETS
        vis = (1.0 - closure) * vis
        vis[VISEME_INDEX["PP"]] += closure
        open_ = 1.0 - closure
        jaw = (float(params[0]) + float(e[_E["jaw_open"]])) * open_
        width = float(params[1]) * (1.0 - 0.5 * closure) + float(e[_E["mouth_width"]])
        lips_pressed = max(float(params[3]), closure, float(e[_E["lips_pressed"]]))
        blink = self._blink_at(t)
        gx, gy = self._gaze_pos(t)
        gx += float(e[_E["gaze_x"]]) + 0.01 * math.sin(2.0 * math.pi * 0.31 * t + self._noise_p[4, 0])
        gy += float(e[_E["gaze_y"]]) + 0.01 * math.sin(2.0 * math.pi * 0.23 * t + self._noise_p[4, 1])
        eye = (1.0 + float(e[_E["eye_open"]]) + 0.05 * float(e[_LISTEN]) - 0.15 * max(gy, 0.0)) * (1.0 - blink)
        eye = min(1.3, max(0.0, eye))
        noise = self._noise(t, min(1.0, max(0.0, float(e[_LIVELY])))) * float(e[_AMP])
        yaw = float(noise[0]) + float(e[_E["head_yaw"]]) + 0.08 * gx
        pitch = 0.6 * float(noise[1]) + float(e[_E["head_pitch"]])
        roll = 0.4 * float(noise[2]) + float(e[_E["head_roll"]])
        breath = float(e[_DEPTH]) * 0.5 * (1.0 - math.cos(self._breath_phase + 2.0 * math.pi * self.cfg.breaths_per_min / 60.0 * dt))
        weights = self.emotion_weights(t)
        return AnimationState(
            t=t,
            visemes=vis.astype(np.float32),
            jaw_open=min(1.0, max(0.0, jaw)),
            mouth_width=min(1.0, max(-1.0, width)),
            lip_round=min(1.0, max(0.0, float(params[2]) * (1.0 - 0.5 * closure))),
            lips_pressed=min(1.0, max(0.0, lips_pressed)),
            lip_tuck=min(1.0, max(0.0, float(params[4]) * open_)),
            tongue_tip=min(1.0, max(0.0, float(params[5]) * open_)),
            teeth_show=min(1.0, max(0.0, float(params[6]) * open_)),
            smile=min(1.0, max(-1.0, float(e[_E["smile"]]))),
            eye_open_l=eye,
            eye_open_r=eye,
            gaze_x=min(1.0, max(-1.0, gx)),
            gaze_y=min(1.0, max(-1.0, gy)),
            brow_raise=min(1.0, max(-1.0, float(e[_E["brow_raise"]]))),
            brow_inner=min(1.0, max(-1.0, float(e[_E["brow_inner"]]))),
            head_yaw=yaw,
            head_pitch=pitch,
            head_roll=roll,
            head_dx=0.05 * yaw,
            head_dy=0.04 * pitch - 0.004 * breath,
            breath=min(1.0, max(0.0, breath)),
            emotion=EMOTIONS[int(np.argmax(weights))],
            emotion_weights=tuple(float(x) for x in weights),
            arousal=min(1.0, max(0.0, self.arousal)),
            speaking=self._speaking,
            listening=self._silence_s >= self.cfg.listen_after_s,
        )
