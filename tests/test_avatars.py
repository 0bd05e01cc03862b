"""The avatar registry: listing order and kinds, lookup errors, names, photo registration."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from server.avatars import (
    EXAMPLE_SPRITES,
    AvatarInfo,
    AvatarRegistry,
    InvalidAvatarName,
    format_avatar_lines,
    validate_name,
)
from server.errors import AvatarError, AvatarNotFound
from server.render.builtin import BUILTIN_CHARACTERS, DEFAULT_CHARACTER
from server.render.poses import viseme_pose


def test_lists_builtins_first_then_sprites(tmp_path: Path) -> None:
    reg = AvatarRegistry(tmp_path)
    infos = reg.list()
    n = len(BUILTIN_CHARACTERS)
    assert [i.name for i in infos[:n]] == list(BUILTIN_CHARACTERS)
    assert all(i.kind == "built-in" and i.path is None for i in infos[:n])
    sprites = [i for i in infos if i.kind == "sprite"]
    assert "fox" in [i.name for i in sprites]
    assert [i.kind for i in infos[n:]] == ["sprite"] * len(infos[n:])
    assert reg.default_name() == DEFAULT_CHARACTER
    assert reg.default_name() in [i.name for i in infos]


def test_format_lines_name_then_kind() -> None:
    infos = [
        AvatarInfo("ava", "built-in", None),
        AvatarInfo("fox", "sprite", Path("/x/fox")),
        AvatarInfo("me", "photo", Path("/d/photos/me"), {"consent": {"by": "Me", "at": "2026-01-01T00:00:00+00:00"}}),
    ]
    lines = format_avatar_lines(infos)
    assert [ln.split()[:2] for ln in lines] == [["ava", "built-in"], ["fox", "sprite"], ["me", "photo"]]
    assert "consent by Me" in lines[2]
    assert format_avatar_lines([]) == []


def test_unknown_name_error_names_it_and_lists_available(tmp_path: Path) -> None:
    reg = AvatarRegistry(tmp_path)
    with pytest.raises(AvatarNotFound) as ei:
        reg.create("no-such-avatar")
    msg = str(ei.value)
    assert "'no-such-avatar'" in msg
    for info in reg.list():
        assert info.name in msg


@pytest.mark.parametrize("name", ["fox", "a", "my_avatar-2", "0abc", "x" * 40])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "Fox", "-fox", "_fox", "fox!", "a b", "x" * 41, "../etc", "é"])
def test_invalid_names(name: str) -> None:
    with pytest.raises(InvalidAvatarName, match="invalid avatar name"):
        validate_name(name)


def test_add_photo_refuses_bad_or_taken_names_and_no_consent(tmp_path: Path) -> None:
    reg = AvatarRegistry(tmp_path)
    img = tmp_path / "x.png"
    cv2.imwrite(str(img), np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(InvalidAvatarName, match="invalid avatar name 'Bad Name'"):
        reg.add_photo(img, "Bad Name", "me")
    with pytest.raises(InvalidAvatarName, match=f"'{DEFAULT_CHARACTER}' is taken by a built-in"):
        reg.add_photo(img, DEFAULT_CHARACTER, "me")
    with pytest.raises(InvalidAvatarName, match="'fox' is taken by a sprite"):
        reg.add_photo(img, "fox", "me")
    with pytest.raises(AvatarError, match="consent"):
        reg.add_photo(img, "newname", "  ")
    assert not (tmp_path / "photos" / "newname").exists()


def test_create_each_kind_is_deterministic(tmp_path: Path) -> None:
    reg = AvatarRegistry(tmp_path)
    s = viseme_pose("aa", "happy", head_roll=0.05, gaze_x=0.3)
    for name in (DEFAULT_CHARACTER, "fox"):
        a = reg.create(name, (256, 256))
        b = reg.create(name, (256, 256))
        fa = a.render(s).copy()
        assert a.size == (256, 256) and fa.shape == (256, 256, 4) and fa.dtype == np.uint8
        assert np.array_equal(fa, b.render(s)), name
        assert np.array_equal(fa, a.render(s)), name


def test_user_sprite_packs_and_clashes(tmp_path: Path) -> None:
    user = tmp_path / "data" / "sprites"
    shutil.copytree(EXAMPLE_SPRITES / "fox", user / "fox2")
    shutil.copytree(EXAMPLE_SPRITES / "fox", user / "fox")  # same name as the example: skipped
    shutil.copytree(EXAMPLE_SPRITES / "fox", user / DEFAULT_CHARACTER)  # a built-in's name: skipped
    shutil.copytree(EXAMPLE_SPRITES / "fox", user / "Bad Name")  # invalid folder name: skipped
    reg = AvatarRegistry(tmp_path / "data")
    names = [i.name for i in reg.list()]
    assert names.count("fox") == 1 and names.count(DEFAULT_CHARACTER) == 1
    assert "fox2" in names and "Bad Name" not in names
    assert next(i for i in reg.list() if i.name == "fox").path == EXAMPLE_SPRITES / "fox"
    assert reg.create("fox2", (128, 128)).render(viseme_pose("O")).shape == (128, 128, 4)


def test_broken_user_pack_fails_on_create_listing_problems(tmp_path: Path) -> None:
    pack = tmp_path / "data" / "sprites" / "broken"
    shutil.copytree(EXAMPLE_SPRITES / "fox", pack)
    (pack / "mouth_A.png").unlink()
    (pack / "head.png").unlink()
    reg = AvatarRegistry(tmp_path / "data")
    assert "broken" in [i.name for i in reg.list()]
    with pytest.raises(AvatarError) as ei:
        reg.create("broken")
    assert "mouth_A.png" in str(ei.value) and "head.png" in str(ei.value)


def test_photo_registration_round_trip(tmp_path: Path) -> None:
    skdata = pytest.importorskip("skimage.data")
    pytest.importorskip("mediapipe")
    img = tmp_path / "astronaut.jpg"
    cv2.imwrite(str(img), cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR))
    reg = AvatarRegistry(tmp_path / "data")
    info = reg.add_photo(img, "astro", "Ada Lovelace")
    assert info.kind == "photo" and info.path == tmp_path / "data" / "photos" / "astro"
    assert info.meta["consent"]["by"] == "Ada Lovelace"
    infos = reg.list()
    assert infos[-1].name == "astro" and infos[0].kind == "built-in"
    with pytest.raises(InvalidAvatarName, match="taken by a photo avatar"):
        reg.add_photo(img, "astro", "Ada Lovelace")
    r = reg.create("astro", (256, 256))
    s = viseme_pose("aa")
    ref = r.render(s).copy()
    # A second session's renderer shares the precomputed data but not the frame buffers.
    r2 = reg.create("astro", (256, 256))
    other = r2.render(viseme_pose("O", eye_open_l=0.0)).copy()
    assert np.array_equal(r.render(s), ref)
    assert not np.array_equal(other, ref)
    assert np.array_equal(r2.render(s), ref)
    assert any(ln.startswith("astro") and " photo " in ln for ln in format_avatar_lines(infos))
