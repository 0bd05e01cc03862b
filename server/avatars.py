"""The avatar registry: built-in characters, sprite packs and registered photo portraits.

Built-ins come from :mod:`server.render.builtin`; sprite packs are folders with a manifest
(the packaged examples under ``server/render/assets/sprites/`` plus ``<data_dir>/sprites/``);
photo avatars live in ``<data_dir>/photos/<name>/`` (see :mod:`server.render.photo`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from server.errors import AvatarError, AvatarNotFound
from server.render.base import Renderer

log = logging.getLogger(__name__)

AvatarKind = Literal["built-in", "sprite", "photo"]
NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")
EXAMPLE_SPRITES = Path(__file__).resolve().parent / "render" / "assets" / "sprites"
MANIFESTS = ("manifest.yaml", "manifest.yml", "manifest.json")
OWNER_FILE = "owner.json"  # in a photo avatar's folder: {"owner": subject of the token that registered it}
OPERATOR = "operator"  # owner of photos registered on the command line (and of the presenter link printed at start)


class InvalidAvatarName(AvatarError):
    """An avatar name breaks the naming rule or is taken."""


@dataclass(frozen=True, slots=True)
class AvatarInfo:
    """One avatar: ``path`` is its folder (None for built-ins); ``meta`` kind-specific facts."""

    name: str
    kind: AvatarKind
    path: Path | None
    meta: dict[str, Any] = field(default_factory=dict)


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid avatar name (``[a-z0-9][a-z0-9_-]{0,39}``), else raise."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidAvatarName(
            f"invalid avatar name {name!r}: use 1-40 characters a-z, 0-9, '_' or '-', starting with a letter or digit"
        )
    return name


def _has_manifest(d: Path) -> bool:
    return any((d / m).is_file() for m in MANIFESTS)


class AvatarRegistry:
    """Lists avatars and builds renderers for them.

    ``data_dir``: where user avatars are stored (``photos/``, ``sprites/``);
    ``sprite_dirs``: folders holding sprite packs (or a pack folder itself).
    """

    def __init__(self, data_dir: Path, sprite_dirs: Sequence[Path] = (EXAMPLE_SPRITES,)) -> None:
        self.data_dir = Path(data_dir).expanduser()
        self.sprite_dirs = [Path(d) for d in sprite_dirs] + [self.data_dir / "sprites"]
        # Photo renderers are costly to set up (~0.5 s): keep one prototype per (folder, size,
        # landmarks.json mtime) and hand out clones that share its read-only data.
        self._photo_protos: dict[tuple[str, tuple[int, int], float], Any] = {}
        self._packs: dict[tuple[str, float], Any] = {}  # loaded sprite packs (read-only)

    @property
    def photo_dir(self) -> Path:
        """``<data_dir>/photos``."""
        return self.data_dir / "photos"

    @staticmethod
    def _builtins() -> dict[str, Any]:
        from server.render.builtin import BUILTIN_CHARACTERS

        return dict(BUILTIN_CHARACTERS)

    def default_name(self) -> str:
        """The avatar a session gets when it names none (the default built-in character)."""
        from server.render.builtin import DEFAULT_CHARACTER

        return DEFAULT_CHARACTER

    def _sprites(self, taken: set[str]) -> list[AvatarInfo]:
        out: dict[str, AvatarInfo] = {}
        for root in self.sprite_dirs:
            if not root.is_dir():
                continue
            packs = [root] if _has_manifest(root) else sorted(p for p in root.iterdir() if p.is_dir() and _has_manifest(p))
            for pack in packs:
                name = pack.name
                if not NAME_RE.fullmatch(name):
                    log.warning("sprite pack %s skipped: folder name %r is not a valid avatar name", pack, name)
                    continue
                if name in taken or name in out:
                    log.warning("sprite pack %s skipped: the name %r is already taken", pack, name)
                    continue
                out[name] = AvatarInfo(name, "sprite", pack, {})
        return list(out.values())

    def _photos(self, taken: set[str]) -> list[AvatarInfo]:
        out: list[AvatarInfo] = []
        if not self.photo_dir.is_dir():
            return out
        for d in sorted(self.photo_dir.iterdir()):
            lmf = d / "landmarks.json"
            if not d.is_dir() or not NAME_RE.fullmatch(d.name) or not lmf.is_file() or d.name in taken:
                continue
            try:
                meta = json.loads(lmf.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                log.warning("photo avatar %s skipped: unreadable landmarks.json (%s)", d, e)
                continue
            consent = meta.get("consent", {}) if isinstance(meta, dict) else {}
            out.append(AvatarInfo(d.name, "photo", d, {"consent": consent, "size": meta.get("size"), "owner": read_owner(d)}))
        return out

    def list(self) -> list[AvatarInfo]:
        """Every avatar: built-ins first (their order), then sprite packs, then photos (by name)."""
        infos = [AvatarInfo(n, "built-in", None, {}) for n in self._builtins()]
        taken = {i.name for i in infos}
        sprites = self._sprites(taken)
        taken |= {i.name for i in sprites}
        return infos + sprites + self._photos(taken)

    def get(self, name: str) -> AvatarInfo:
        """The avatar called ``name``; raises :class:`AvatarNotFound` listing the available ones."""
        infos = self.list()
        for info in infos:
            if info.name == name:
                return info
        available = ", ".join(i.name for i in infos)
        raise AvatarNotFound(f"unknown avatar {name!r}; available: {available}")

    def create(self, name: str, size: tuple[int, int] = (512, 512), *, transparent: bool = False) -> Renderer:
        """A new renderer for avatar ``name`` drawing ``size`` (width, height) px frames.

        ``transparent``: a built-in character without its background (alpha = coverage); sprite
        packs and photos have no transparent version and draw as usual (opaque).

        A photo avatar's first renderer per size takes ~0.3-1 s (displacement bases; later ones
        are clones sharing that data): call it off the event loop.
        """
        info = self.get(name)
        if info.kind == "built-in":
            factory = self._builtins()[name]
            renderer: Renderer = factory(size, transparent=transparent) if transparent else factory(size)
            return renderer
        if info.kind == "sprite":
            from server.render.sprite import SpriteRenderer, load_pack

            assert info.path is not None
            stamp = max((f.stat().st_mtime for f in info.path.iterdir() if f.is_file()), default=0.0)
            pkey = (str(info.path), stamp)
            pack = self._packs.get(pkey)
            if pack is None:
                pack = load_pack(info.path)  # validates; raises AvatarError listing problems
                if len(self._packs) >= 8:
                    self._packs.pop(next(iter(self._packs)))
                self._packs[pkey] = pack
            return SpriteRenderer(pack, size)
        from server.render.photo import PhotoRenderer

        assert info.path is not None
        key = (str(info.path), (int(size[0]), int(size[1])), (info.path / "landmarks.json").stat().st_mtime)
        proto = self._photo_protos.get(key)
        if proto is None:
            proto = PhotoRenderer(info.path, size)
            if len(self._photo_protos) >= 8:
                self._photo_protos.pop(next(iter(self._photo_protos)))
            self._photo_protos[key] = proto
        clone: Renderer = proto.clone()
        return clone

    def add_photo(self, image_path: Path, name: str, consent_by: str, owner: str = OPERATOR) -> AvatarInfo:
        """Register the portrait in ``image_path`` as photo avatar ``name``, belonging to ``owner``
        (the subject of the presenter token that uploaded it; only it and admins may use it).

        ``consent_by``: who confirms the person shown agreed (required). Raises
        :class:`InvalidAvatarName` (bad or taken name) or
        :class:`server.render.photo.PhotoRejected` (no consent, no/several/too small faces).
        """
        from server.render.photo import PhotoRejected, register_photo

        validate_name(name)
        if not (consent_by or "").strip():
            raise PhotoRejected("a photo avatar needs a consent statement: give --consent-by WHO (the person who confirms consent)")
        for info in self.list():
            if info.name == name:
                what = "a built-in character" if info.kind == "built-in" else f"a {info.kind} avatar"
                raise InvalidAvatarName(f"avatar name {name!r} is taken by {what}; choose another name")
        self.photo_dir.mkdir(parents=True, exist_ok=True)
        out = self.photo_dir / name
        try:
            register_photo(Path(image_path), out, name, consent_by)
        except FileExistsError as e:
            raise InvalidAvatarName(f"avatar name {name!r} was just taken; choose another name") from e
        except OSError as e:
            if out.exists():
                raise InvalidAvatarName(f"avatar name {name!r} was just taken; choose another name") from e
            raise AvatarError(f"could not store photo avatar {name!r} in {out}: {e}") from e
        (out / OWNER_FILE).write_text(json.dumps({"owner": owner[:80]}), encoding="utf-8")
        return self.get(name)

    def remove_photo(self, name: str) -> None:
        """Withdraw photo avatar ``name``: its files (the photo, landmarks, meshes) are deleted.
        Consent revoked means the likeness is gone. Raises :class:`AvatarNotFound` or
        :class:`AvatarError` (not a photo avatar)."""
        import shutil

        info = self.get(name)
        if info.kind != "photo" or info.path is None:
            raise AvatarError(f"avatar {name!r} is a {info.kind} avatar; only photo avatars can be removed")
        if info.path.resolve().parent != self.photo_dir.resolve():
            raise AvatarError(f"avatar {name!r} is not in the photo store")
        shutil.rmtree(info.path)
        self._photo_protos = {k: v for k, v in self._photo_protos.items() if not k[0] == str(info.path)}


def read_owner(folder: Path) -> str:
    """The owner of the photo avatar in ``folder``: its ``owner.json``, or :data:`OPERATOR` for a
    photo registered before owners were kept (or whose file is unreadable)."""
    try:
        owner = json.loads((folder / OWNER_FILE).read_text(encoding="utf-8")).get("owner")
    except (OSError, ValueError, AttributeError):
        return OPERATOR
    return owner if isinstance(owner, str) and owner else OPERATOR


def format_avatar_lines(infos: Sequence[AvatarInfo]) -> list[str]:
    """``avatar avatars`` output: one line per avatar, name first, then kind, then details."""
    width = max((len(i.name) for i in infos), default=4)
    lines = []
    for i in infos:
        extra = ""
        if i.kind == "photo":
            c = i.meta.get("consent", {}) or {}
            extra = f"owner {i.meta.get('owner', OPERATOR)}, consent by {c.get('by', '?')} at {c.get('at', '?')}"
        elif i.kind == "sprite" and i.path is not None:
            extra = str(i.path)
        lines.append(f"{i.name:<{width}}  {i.kind:<8}  {extra}".rstrip())
    return lines
