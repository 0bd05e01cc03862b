"""Sprite packs: validation reports every problem with its file; rendering of visemes, blinks."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from engines.spec import N_VISEMES, VISEME_INDEX, VISEMES
from server.errors import AvatarError
from server.pipeline.types import AnimationState
from server.render.sprite import (
    RHUBARB_SHAPES,
    SpriteRenderer,
    load_pack,
    validate_pack,
    viseme_to_rhubarb,
)

FOX = Path(__file__).resolve().parent.parent / "server" / "render" / "assets" / "sprites" / "fox"


def state(viseme: str = "sil", **kw: object) -> AnimationState:
    """A still state showing ``viseme`` (one-hot weights)."""
    w = np.zeros(N_VISEMES, np.float32)
    w[VISEME_INDEX[viseme]] = 1.0
    return AnimationState(visemes=w, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def fox() -> SpriteRenderer:
    return SpriteRenderer(load_pack(FOX), (256, 256))


def test_example_pack_validates_clean() -> None:
    assert validate_pack(FOX) == []
    pack = load_pack(FOX)
    assert pack.mouth_set == "rhubarb"
    assert set(pack.mouths) == set(RHUBARB_SHAPES)
    assert sum(p.stat().st_size for p in FOX.iterdir()) < 1_000_000


def test_example_pack_is_reproducible(tmp_path: Path) -> None:
    """The generator redraws the committed pack (same files, near-identical pixels)."""
    from server.render.make_example_pack import build

    build(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in FOX.iterdir())
    for p in FOX.glob("*.png"):
        a = cv2.imread(str(p), cv2.IMREAD_UNCHANGED).astype(np.int16)
        b = cv2.imread(str(tmp_path / p.name), cv2.IMREAD_UNCHANGED).astype(np.int16)
        assert a.shape == b.shape, p.name
        assert np.abs(a - b).mean() < 1.0, p.name


def test_broken_pack_reports_every_problem_with_its_file(tmp_path: Path) -> None:
    pack = tmp_path / "broken"
    shutil.copytree(FOX, pack)
    (pack / "mouth_D.png").unlink()  # missing PNG
    (pack / "eyes_half.png").write_bytes(b"not a png")  # unreadable
    small = np.zeros((10, 10, 4), np.uint8)
    cv2.imwrite(str(pack / "body.png"), small)  # wrong size for a canvas layer
    cv2.imwrite(str(pack / "mouth_X.png"), small)  # wrong size among the mouths
    text = (pack / "manifest.yaml").read_text()
    text = text.replace("E: mouth_E.png,", "E: mouth_E.png, Q: mouth_E.png,")  # unknown shape
    text = text.replace("A: mouth_A.png, ", "")  # required mouth missing
    text = text.replace("mouth: [256, 352]", "mouth: [900, 352]")  # anchor off-canvas
    cv2.imwrite(str(pack / "eyes_happy.png"), small)  # emotion eyes must match the eyes layer
    (pack / "manifest.yaml").write_text(text)
    problems = validate_pack(pack)
    by_file: dict[str, list[str]] = {}
    for p in problems:
        by_file.setdefault(p.file.name, []).append(p.message)
    msgs = "\n".join(str(p) for p in problems)
    assert any("missing PNG" in m for m in by_file["mouth_D.png"]), msgs
    assert any("unreadable PNG" in m for m in by_file["eyes_half.png"]), msgs
    assert any("wrong size 10x10" in m and "layers.body" in m for m in by_file["body.png"]), msgs
    assert any("wrong size 10x10" in m for m in by_file["mouth_X.png"]), msgs
    assert any("emotions.happy.eyes.open" in m for m in by_file["eyes_happy.png"]), msgs
    manifest = by_file["manifest.yaml"]
    assert any("'Q'" in m for m in manifest), msgs
    assert any("missing required mouths: A" in m for m in manifest), msgs
    assert any("anchor mouth" in m and "outside" in m for m in manifest), msgs
    # Lines are known for manifest problems.
    assert all(p.line is not None for p in problems if p.file.name == "manifest.yaml"), msgs
    with pytest.raises(AvatarError) as ei:
        load_pack(pack)
    assert f"{len(problems)} problem(s)" in str(ei.value)
    assert "mouth_D.png" in str(ei.value) and "eyes_half.png" in str(ei.value)


def test_yaml_error_and_missing_manifest(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (problem,) = validate_pack(empty)
    assert problem.file.name == "manifest.yaml" and "missing manifest" in problem.message
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.yaml").write_text("name: x\nlayers:\n  head: [unclosed\n")
    (problem,) = validate_pack(bad)
    assert "YAML error" in problem.message and problem.line is not None and problem.line >= 3


def test_viseme_pack_requires_all_fifteen(tmp_path: Path) -> None:
    pack = tmp_path / "vis"
    shutil.copytree(FOX, pack)
    text = (pack / "manifest.yaml").read_text().replace("mouth_set: rhubarb", "mouth_set: visemes")
    (pack / "manifest.yaml").write_text(text)
    msgs = [p.message for p in validate_pack(pack)]
    # "E" is both a Rhubarb shape and a viseme: every other viseme is missing.
    missing = ", ".join(v for v in VISEMES if v != "E")
    assert any(f"missing required mouths: {missing}" in m for m in msgs), msgs
    assert any("unknown viseme key 'A'" in m for m in msgs), msgs


def test_renders_every_mouth_shape_distinctly(fox: SpriteRenderer) -> None:
    table = viseme_to_rhubarb()
    frames: dict[str, np.ndarray] = {}
    for v in VISEMES:
        f = fox.render(state(v)).copy()
        assert f.shape == (256, 256, 4) and f.dtype == np.uint8 and f.flags.c_contiguous
        assert (f[..., 3] == 255).all()
        assert fox.mouth_key(state(v)) == table[v]
        frames.setdefault(table[v], f)
        # Same mouth shape, same pixels; different shapes differ (in the mouth area).
        assert np.array_equal(frames[table[v]], f)
    shapes = sorted(frames)
    assert len(shapes) == len(set(table.values()))
    for i, a in enumerate(shapes):
        for b in shapes[i + 1 :]:
            diff = np.abs(frames[a].astype(int) - frames[b].astype(int)).sum(-1) > 30
            assert diff.sum() > 20, f"mouths {a} and {b} look the same"
            ys, _ = np.nonzero(diff)
            assert ys.min() > 256 * 0.5, f"mouths {a}/{b} differ outside the mouth area"


def test_blink_swaps_eye_layers(fox: SpriteRenderer) -> None:
    open_ = fox.render(state()).copy()
    half = fox.render(state(eye_open_l=0.5, eye_open_r=0.5)).copy()
    closed = fox.render(state(eye_open_l=0.0, eye_open_r=0.0)).copy()
    eyes = (slice(int(256 * 0.44), int(256 * 0.58)), slice(int(256 * 0.25), int(256 * 0.75)))
    white = lambda f: int(((f[eyes][..., :3] > 235).all(-1)).sum())  # noqa: E731
    assert white(open_) > white(half) > white(closed)
    assert white(closed) < 0.1 * white(open_)
    mouth = (slice(int(256 * 0.62), int(256 * 0.8)), slice(None))
    assert np.array_equal(open_[mouth], closed[mouth])


def test_gaze_emotion_pose_and_determinism(fox: SpriteRenderer) -> None:
    base = fox.render(state()).copy()
    assert not np.array_equal(base, fox.render(state(gaze_x=1.0)))
    assert not np.array_equal(base, fox.render(state(emotion="angry")))
    # Emotion eye variants replace the open eyes (and their pupils: gaze no longer moves them).
    happy = fox.render(state(emotion="happy")).copy()
    assert not np.array_equal(happy, base)
    assert np.array_equal(happy, fox.render(state(emotion="happy", gaze_x=1.0)))
    tilted = fox.render(state(head_roll=0.2)).copy()
    assert not np.array_equal(base, tilted)
    assert np.array_equal(tilted, fox.render(state(head_roll=0.2)))
    # Out-of-range and NaN values are clamped, never fatal.
    wild = state(head_roll=float("nan"), eye_open_l=-5.0, eye_open_r=9.0, breath=3.0, gaze_x=float("inf"), emotion="nope")
    assert fox.render(wild).shape == (256, 256, 4)
    # A second renderer at another size works from the same pack.
    assert SpriteRenderer(load_pack(FOX), (320, 180)).render(state("aa")).shape == (180, 320, 4)
