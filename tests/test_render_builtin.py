"""Built-in characters: every viseme/emotion renders, visemes differ, blink, clamping, measure."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from numpy.typing import NDArray

from engines.spec import VISEMES
from server.pipeline.types import EMOTIONS, AnimationState
from server.render.builtin import BUILTIN_CHARACTERS, DEFAULT_CHARACTER
from server.render.builtin_geom import EYE_Y, HEAD_CENTER, MOUTH_DESIGN, frame_layout
from server.render.contact_sheet import make_contact_sheet
from server.render.measure import mouth_openness
from server.render.poses import VISEME_TARGETS, mouth_params, viseme_pose

NAMES = list(BUILTIN_CHARACTERS)


def _mouth_region(img: NDArray[np.uint8], size: tuple[int, int]) -> NDArray[np.float32]:
    lay = frame_layout(*size)
    mx, my = lay.to_px(*MOUTH_DESIGN)
    r = 48 * lay.s
    return img[int(my - r) : int(my + r), int(mx - r) : int(mx + r), :3].astype(np.float32)


def _degrade(rgb: NDArray[np.uint8], size: tuple[int, int]) -> NDArray[np.uint8]:
    """VP8-like loss: JPEG at quality 40, then a rescale."""
    ok, enc = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 40])
    assert ok
    bgr = cv2.imdecode(enc, cv2.IMREAD_COLOR)
    assert bgr is not None
    dec = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    out: NDArray[np.uint8] = cv2.resize(dec, size, interpolation=cv2.INTER_AREA)  # type: ignore[assignment]
    return out


def test_registry_shape() -> None:
    assert len(BUILTIN_CHARACTERS) >= 3
    assert DEFAULT_CHARACTER == next(iter(BUILTIN_CHARACTERS))
    r = BUILTIN_CHARACTERS[DEFAULT_CHARACTER]((512, 512))
    assert r.size == (512, 512)
    assert set(VISEME_TARGETS) == set(VISEMES)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [(512, 512), (200, 150)])
def test_every_viseme_and_emotion_renders(name: str, size: tuple[int, int]) -> None:
    r = BUILTIN_CHARACTERS[name](size)
    w, h = size
    for v in VISEMES:
        img = r.render(viseme_pose(v))
        assert img.shape == (h, w, 4) and img.dtype == np.uint8 and img.flags["C_CONTIGUOUS"]
        assert (img[..., 3] == 255).all()
    for e in EMOTIONS:
        a = r.render(viseme_pose("E", e)).copy()
        assert a.std() > 10.0
    # emotions change the face (neutral vs each other emotion)
    neutral = r.render(viseme_pose("sil", "neutral")).astype(np.int16)
    for e in EMOTIONS[1:]:
        d = np.abs(r.render(viseme_pose("sil", e)).astype(np.int16) - neutral).mean()
        assert d > 0.05, (name, e, d)


@pytest.mark.parametrize("name", NAMES)
def test_visemes_pairwise_distinct(name: str) -> None:
    size = (512, 512)
    r = BUILTIN_CHARACTERS[name](size)
    crops = {v: _mouth_region(r.render(viseme_pose(v)), size) for v in VISEMES}
    worst = min(
        (float(np.abs(crops[a] - crops[b]).mean()), a, b) for a, b in itertools.combinations(VISEMES, 2)
    )
    assert worst[0] > 1.5, f"{name}: visemes {worst[1]} and {worst[2]} look alike (mean diff {worst[0]:.2f})"


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_and_characters_differ(name: str) -> None:
    s = viseme_pose("O", "happy", head_yaw=0.2, head_roll=-0.1, breath=0.5, gaze_x=0.3)
    a = BUILTIN_CHARACTERS[name]((320, 320)).render(s).copy()
    r2 = BUILTIN_CHARACTERS[name]((320, 320))
    r2.render(viseme_pose("aa"))
    b = r2.render(s)
    assert np.array_equal(a, b)
    for other in NAMES:
        if other != name:
            o = BUILTIN_CHARACTERS[other]((320, 320)).render(s)
            assert np.abs(o.astype(np.int16) - a).mean() > 5.0


@pytest.mark.parametrize("name", NAMES)
def test_out_of_range_values_are_clamped(name: str) -> None:
    r = BUILTIN_CHARACTERS[name]((256, 256))
    wild = AnimationState(
        visemes=np.full(15, 7.0, np.float32), jaw_open=9.0, mouth_width=-5.0, lip_round=3.0,
        lips_pressed=-2.0, lip_tuck=4.0, tongue_tip=9.0, teeth_show=-1.0, smile=50.0,
        eye_open_l=-3.0, eye_open_r=9.0, gaze_x=40.0, gaze_y=-40.0, brow_raise=8.0, brow_inner=-8.0,
        head_yaw=10.0, head_pitch=-10.0, head_roll=math.nan, head_dx=3.0, head_dy=-3.0, breath=7.0,
        emotion="nonsense", emotion_weights=(5.0, -1.0, math.inf), arousal=9.0,
    )
    img = r.render(wild)
    assert img.shape == (256, 256, 4)
    # clamped means: the same picture as the limits themselves
    lim = replace(wild, jaw_open=1.0, smile=1.0, head_dx=0.15, head_yaw=0.6, brow_raise=1.0)
    assert np.array_equal(img.copy(), r.render(lim))
    bad = replace(wild, visemes=np.zeros(3, np.float32), emotion_weights=())
    assert r.render(bad).shape == (256, 256, 4)


@pytest.mark.parametrize("name", NAMES)
def test_blink_closes_the_eyes(name: str) -> None:
    size = (512, 512)
    r = BUILTIN_CHARACTERS[name](size)
    lay = frame_layout(*size)
    hx, hy = lay.to_px(HEAD_CENTER[0], HEAD_CENTER[1] + EYE_Y)

    def eyes(state: AnimationState, side: int) -> NDArray[np.float32]:
        img = r.render(state)
        x0 = int(hx + side * 42 * lay.s - 26 * lay.s)
        return img[int(hy - 16 * lay.s) : int(hy + 12 * lay.s), x0 : x0 + int(52 * lay.s), :3].astype(np.float32)

    open_ = viseme_pose("sil")
    for side in (-1, 1):
        shut = replace(open_, eye_open_l=0.0) if side < 0 else replace(open_, eye_open_r=0.0)
        o, c = eyes(open_, side), eyes(shut, side)
        # the white of the eye disappears
        white_o = (o.min(axis=2) > 225).sum()
        white_c = (c.min(axis=2) > 225).sum()
        assert white_o > 60 and white_c < white_o * 0.05, (name, side, white_o, white_c)
        # the other eye does not change
        assert np.array_equal(eyes(open_, -side), eyes(shut, -side))


@pytest.mark.parametrize("name", NAMES)
def test_gaze_and_head_pose_move_features(name: str) -> None:
    r = BUILTIN_CHARACTERS[name]((256, 256))
    base = r.render(viseme_pose("sil")).copy()
    changes: list[tuple[str, object]] = [
                         ("gaze_x", 1.0), ("gaze_y", -1.0), ("brow_raise", 1.0), ("brow_inner", 1.0),
                         ("head_yaw", 0.3), ("head_pitch", 0.2), ("head_roll", 0.15), ("head_dx", 0.05),
                         ("head_dy", 0.05), ("breath", 1.0), ("smile", 1.0), ("arousal", 1.0),
                         ("listening", True), ("eye_open_l", 1.3), ("jaw_open", 0.5), ("lip_round", 1.0)]
    for field, value in changes:
        img = r.render(replace(viseme_pose("sil"), **{field: value}))  # type: ignore[arg-type]
        assert not np.array_equal(img, base), field


@pytest.mark.parametrize("name", NAMES)
def test_mouth_openness_orders_and_survives_degradation(name: str) -> None:
    r = BUILTIN_CHARACTERS[name]((512, 512))
    vals = {}
    for v in ("sil", "PP", "E", "aa"):
        rgb = r.render(viseme_pose(v))[..., :3].copy()
        vals[v] = [mouth_openness(rgb, name)]
        for size in ((320, 320), (256, 256), (720, 720)):
            vals[v].append(mouth_openness(_degrade(rgb, size)))
    for k in range(4):
        sil, pp, e, aa = (vals[v][k] for v in ("sil", "PP", "E", "aa"))
        assert sil < 0.05 and pp < 0.05, (name, k, vals)
        assert e > 0.25 and aa > 0.7 and sil < e < aa, (name, k, vals)
    # head motion and a non-square frame keep working
    r2 = BUILTIN_CHARACTERS[name]((640, 480))
    moved = viseme_pose("aa", head_yaw=0.3, head_roll=0.12, head_dx=0.03, head_dy=0.02, head_pitch=0.1)
    assert mouth_openness(_degrade(r2.render(moved)[..., :3].copy(), (426, 320))) > 0.6
    closed = viseme_pose("sil", head_yaw=-0.3, head_roll=-0.12, head_dx=-0.03, head_dy=-0.02, head_pitch=-0.1)
    assert mouth_openness(_degrade(r2.render(closed)[..., :3].copy(), (426, 320))) < 0.05


def test_mouth_openness_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="shape"):
        mouth_openness(np.zeros((10, 10), np.uint8))
    with pytest.raises(KeyError, match="nobody"):
        mouth_openness(np.zeros((10, 10, 3), np.uint8), "nobody")


def test_bad_size_is_rejected() -> None:
    with pytest.raises(ValueError, match="10"):
        BUILTIN_CHARACTERS[DEFAULT_CHARACTER]((10, 512))


def test_mouth_params_blend() -> None:
    w = np.zeros(15, np.float32)
    w[VISEMES.index("aa")] = 0.5
    w[VISEMES.index("U")] = 0.5
    p = mouth_params(w)
    assert p["jaw_open"] == pytest.approx(0.5 * (VISEME_TARGETS["aa"]["jaw_open"] + VISEME_TARGETS["U"]["jaw_open"]))
    with pytest.raises(ValueError, match="15"):
        mouth_params(np.zeros(3))


def test_contact_sheet(tmp_path: Path) -> None:
    out = tmp_path / "sheet.png"
    sheet = make_contact_sheet(BUILTIN_CHARACTERS[DEFAULT_CHARACTER], out, emotions=("neutral", "sad"), cell=64)
    assert out.exists()
    assert sheet.shape == (2 * 64 + 3 * 4, 15 * 64 + 16 * 4, 3)
