"""Contact sheets of the sprite and photo avatars: 15 visemes x 3 emotions each.

Writes ``docs/contact-sheet-sprite.png`` (the example fox pack) and
``docs/contact-sheet-photo.png`` (skimage's public-domain astronaut, registered into a temporary
data folder) with :func:`server.render.contact_sheet.make_contact_sheet`.

    .venv/bin/python bench/avatar_sheets.py [--out docs] [--cell 200]
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402

from server.avatars import AvatarRegistry  # noqa: E402
from server.render.contact_sheet import make_contact_sheet  # noqa: E402

EMOTIONS = ("neutral", "happy", "surprised")
SPRITE_CROP = (0.16, 0.16, 0.84, 0.84)  # the fox's face
PHOTO_CROP = (0.27, 0.25, 0.73, 0.71)  # the portrait's face (eyes to chin)


def main(argv: list[str] | None = None) -> int:
    """Render both sheets; prints their paths."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    ap.add_argument("--cell", type=int, default=200, help="tile side in px")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        reg = AvatarRegistry(Path(tmp))
        import skimage.data

        img = Path(tmp) / "astronaut.png"
        cv2.imwrite(str(img), cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR))
        reg.add_photo(img, "astronaut", "skimage public-domain test image (NASA)")
        for name, kind, crop in (("fox", "sprite", SPRITE_CROP), ("astronaut", "photo", PHOTO_CROP)):
            path = args.out / f"contact-sheet-{kind}.png"
            sheet = make_contact_sheet(functools.partial(reg.create, name), path, emotions=EMOTIONS, cell=args.cell, crop=crop)
            cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
            print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
