"""Photo portraits: registration (one clear face, consent) and mesh-warp rendering."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("mediapipe")
skdata = pytest.importorskip("skimage.data")

from server.errors import AvatarError  # noqa: E402
from server.pipeline.types import AnimationState  # noqa: E402
from server.render import photo  # noqa: E402
from server.render.photo import PhotoRejected, PhotoRenderer, register_photo  # noqa: E402
from server.render.poses import viseme_pose  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def write_rgb(path: Path, rgb: np.ndarray) -> Path:
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


@pytest.fixture(scope="module")
def astro_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("photo")
    img = write_rgb(d / "astronaut.png", skdata.astronaut())
    register_photo(img, d / "astro", "astro", "the test suite")
    return d / "astro"


@pytest.fixture(scope="module")
def astro(astro_dir: Path) -> PhotoRenderer:
    return PhotoRenderer(astro_dir, (512, 512))


def test_registration_stores_consent_landmarks_and_assets(astro_dir: Path) -> None:
    meta = json.loads((astro_dir / "landmarks.json").read_text())
    assert meta["consent"]["by"] == "the test suite"
    assert "the test suite" in meta["consent"]["statement"] and meta["consent"]["at"]
    lm = np.array(meta["landmarks"])
    assert lm.shape == (478, 3)
    assert (lm[:, :2] > 0).all() and (lm[:, :2] < 512).all()
    assert len(meta["triangles"]) > 800
    for f in ("portrait.png", "mouth_interior.png", meta["source"]["file"]):
        assert (astro_dir / f).is_file(), f
    assert cv2.imread(str(astro_dir / "portrait.png")).shape == (512, 512, 3)


def mouth_box(r: PhotoRenderer) -> tuple[slice, slice]:
    """Frame slices around the mouth (from the renderer's landmarks)."""
    lm = r._lm
    x0, x1 = int(lm[61, 0]) - 10, int(lm[291, 0]) + 10
    y0, y1 = int(lm[0, 1]) - 8, int(lm[17, 1]) + 30
    return slice(y0, y1), slice(x0, x1)


def eye_boxes(r: PhotoRenderer) -> list[tuple[slice, slice]]:
    return [(slice(e.y0, e.y1), slice(e.x0, e.x1)) for e in r._eyes]


def luma(f: np.ndarray) -> np.ndarray:
    return f[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def test_visemes_change_the_mouth_only(astro: PhotoRenderer) -> None:
    frames = {v: astro.render(viseme_pose(v)).copy() for v in ("sil", "PP", "aa", "O", "U", "E", "FF")}
    for f in frames.values():
        assert f.shape == (512, 512, 4) and f.dtype == np.uint8 and (f[..., 3] == 255).all()
    mb = mouth_box(astro)
    dark = {v: int((luma(f[mb]) < 70).sum()) for v, f in frames.items()}
    assert dark["aa"] > dark["sil"] + 300, dark  # the mouth opens: dark cavity
    assert dark["PP"] <= dark["sil"], dark  # pressed lips hide the teeth gap
    assert dark["O"] > dark["sil"], dark
    names = list(frames)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            d = np.abs(frames[a][mb].astype(int) - frames[b][mb].astype(int)).sum(-1)
            assert (d > 40).sum() > 30, f"{a} and {b} look the same"
    # Above the brows and outside the head region nothing moves without head pose.
    ref = astro.render(AnimationState()).copy()
    top = int(astro._lm[10, 1]) - 40
    assert np.array_equal(frames["aa"][:top], ref[:top])
    assert np.array_equal(frames["aa"][:, :60], ref[:, :60])


def eye_opening(r: PhotoRenderer, k: int) -> np.ndarray:
    """(H, W) bool: the upper 60 % of eye ``k``'s opening at rest (iris and pupil)."""
    e = r._eyes[k]
    mask = np.zeros((512, 512), bool)
    ys = np.arange(512)[:, None]
    up = np.zeros(512)
    lo = np.zeros(512)
    up[e.x0 : e.x1] = e.upper
    lo[e.x0 : e.x1] = e.lower
    cols = np.zeros(512, bool)
    cols[e.x0 + 2 : e.x1 - 2] = True
    mask[:] = cols[None, :] & (ys > up[None, :] + 1) & (ys < up[None, :] + 0.6 * (lo - up)[None, :])
    return mask


def test_blink_closes_the_eyes(astro: PhotoRenderer) -> None:
    open_ = astro.render(AnimationState()).copy()
    closed = astro.render(AnimationState(eye_open_l=0.0, eye_open_r=0.0)).copy()
    half = astro.render(AnimationState(eye_open_l=0.5, eye_open_r=0.5)).copy()
    only_left = astro.render(AnimationState(eye_open_l=0.0, eye_open_r=1.0)).copy()
    for k in range(2):
        m = eye_opening(astro, k)
        dark = {n: int((luma(f)[m] < 90).sum()) for n, f in (("open", open_), ("half", half), ("closed", closed))}
        assert dark["open"] > 15, dark
        assert dark["closed"] < 0.25 * dark["open"], dark
        assert dark["closed"] <= dark["half"] <= dark["open"], dark
    left, right = eye_boxes(astro)
    assert not np.array_equal(only_left[left], open_[left])
    assert np.array_equal(only_left[right], open_[right])


def test_pose_moves_the_head_not_the_shoulders(astro: PhotoRenderer) -> None:
    ref = astro.render(AnimationState()).copy()
    tilted = astro.render(AnimationState(head_roll=0.15, head_dx=0.02)).copy()
    face = (slice(int(astro._lm[10, 1]), int(astro._lm[152, 1])), slice(int(astro._lm[234, 0]), int(astro._lm[454, 0])))
    assert np.abs(tilted[face].astype(int) - ref[face].astype(int)).mean() > 5
    assert np.array_equal(tilted[-20:], ref[-20:])


def test_deterministic_and_clamped(astro: PhotoRenderer) -> None:
    s = viseme_pose("O", "happy", head_roll=0.05, eye_open_l=0.4)
    a = astro.render(s).copy()
    assert np.array_equal(a, astro.render(s))
    wild = AnimationState(jaw_open=float("nan"), smile=7.0, eye_open_l=-3.0, head_roll=float("inf"), mouth_width=-9.0)
    assert astro.render(wild).shape == (512, 512, 4)


def test_other_sizes(astro_dir: Path) -> None:
    r = PhotoRenderer(astro_dir, (320, 240))
    f = r.render(viseme_pose("aa"))
    assert f.shape == (240, 320, 4)


def test_no_face_refused(tmp_path: Path) -> None:
    coffee = write_rgb(tmp_path / "coffee.png", skdata.coffee())
    with pytest.raises(PhotoRejected, match="no face found in coffee.png"):
        register_photo(coffee, tmp_path / "c", "c", "tester")
    flat = write_rgb(tmp_path / "flat.png", np.full((300, 300, 3), 128, np.uint8))
    with pytest.raises(PhotoRejected, match="no face"):
        register_photo(flat, tmp_path / "f", "f", "tester")
    assert not (tmp_path / "c").exists() and not (tmp_path / "f").exists()


def test_two_faces_refused(tmp_path: Path) -> None:
    a = skdata.astronaut()
    two = write_rgb(tmp_path / "two.png", np.concatenate([a, a], axis=1))
    with pytest.raises(PhotoRejected, match="found 2 faces in two.png"):
        register_photo(two, tmp_path / "t", "t", "tester")
    assert not (tmp_path / "t").exists()


def test_too_small_face_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    img = write_rgb(tmp_path / "astro.png", skdata.astronaut())
    monkeypatch.setattr(photo, "MIN_FACE_PX", 150)  # the astronaut's face is ~92 px wide
    with pytest.raises(PhotoRejected, match=r"too small \(\d+ px wide; at least 150 px"):
        register_photo(img, tmp_path / "s", "s", "tester")


@pytest.mark.parametrize("who", ["", "   "])
def test_consent_required(tmp_path: Path, who: str) -> None:
    img = write_rgb(tmp_path / "astro.png", skdata.astronaut())
    with pytest.raises(PhotoRejected, match="consent"):
        register_photo(img, tmp_path / "x", "x", who)
    assert not (tmp_path / "x").exists()


def test_unreadable_image_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\x00not an image")
    with pytest.raises(PhotoRejected, match="cannot read"):
        register_photo(bad, tmp_path / "b", "b", "tester")
    with pytest.raises(PhotoRejected, match="does not exist"):
        register_photo(tmp_path / "missing.png", tmp_path / "m", "m", "tester")


def test_broken_avatar_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(AvatarError, match="landmarks.json"):
        PhotoRenderer(tmp_path, (512, 512))


def test_rendering_imports_neither_mediapipe_nor_scipy(astro_dir: Path) -> None:
    code = (
        "import sys; from pathlib import Path\n"
        "from server.render.photo import PhotoRenderer\n"
        "from server.pipeline.types import AnimationState\n"
        f"r = PhotoRenderer(Path({str(astro_dir)!r}), (256, 256)); r.render(AnimationState(jaw_open=0.5))\n"
        "print('mediapipe' in sys.modules, 'scipy' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False False"  # neither mediapipe nor scipy at render time


def test_disclosure_badge_on_photo_avatars(tmp_path: Path) -> None:
    """Photo avatars carry an "AI avatar" badge drawn into the frame by default ([video]
    disclosure = "photo"); built-ins do not unless "always"; "off" draws none."""
    from server.pipeline.types import AnimationState
    from server.render.builtin import make_builtin
    from server.render.disclosure import DisclosedRenderer, with_disclosure

    plain = make_builtin("ava", (256, 256))
    assert with_disclosure(plain, "built-in", "photo") is plain
    assert with_disclosure(plain, "photo", "off") is plain
    marked = with_disclosure(make_builtin("ava", (256, 256)), "built-in", "always")
    assert isinstance(marked, DisclosedRenderer) and isinstance(with_disclosure(plain, "photo", "photo"), DisclosedRenderer)
    a, b = plain.render(AnimationState()).copy(), marked.render(AnimationState())
    diff = np.abs(a.astype(int) - b.astype(int)).max(axis=2)
    ys, xs = np.nonzero(diff > 30)
    assert ys.size > 50, "no badge drawn"
    assert ys.min() > 256 * 0.75 and xs.max() < 256 * 0.6, "the badge is not in the bottom left corner"
    with pytest.raises(ValueError, match="disclosure"):
        with_disclosure(plain, "photo", "sometimes")


def test_remove_photo_deletes_the_likeness(astro_dir: Path, tmp_path: Path) -> None:
    """``avatar remove-photo NAME``: consent revoked means the files are gone; built-ins and
    sprites cannot be removed; an unknown name is named in the error."""
    import shutil
    import subprocess
    import sys

    from server.avatars import AvatarRegistry
    from server.errors import AvatarError, AvatarNotFound

    data = tmp_path / "data"
    shutil.copytree(astro_dir, data / "photos" / "astro")
    reg = AvatarRegistry(data)
    assert reg.photo_dir == data / "photos" and reg.get("astro").kind == "photo"
    with pytest.raises(AvatarError, match="built-in"):
        reg.remove_photo("ava")
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-m", "server", "remove-photo", "astro", "--data-dir", str(data)],
                         cwd=root, capture_output=True, text=True, check=True)
    assert "removed photo avatar 'astro'" in out.stdout
    assert not (data / "photos" / "astro").exists()
    with pytest.raises(AvatarNotFound, match="unknown avatar 'astro'"):
        reg.get("astro")
