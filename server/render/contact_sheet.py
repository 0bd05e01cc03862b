"""Contact sheets: every viseme (× a few emotions) of any :class:`Renderer`, labelled, as a PNG.

``python -m server.render.contact_sheet [--out docs]`` regenerates
``docs/visemes-contact-sheet.png`` (the default built-in character) and
``docs/contact-sheet-<name>.png`` per built-in character (15 visemes × 3 emotions).
Other avatar kinds call :func:`make_contact_sheet` with their own factory.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from engines.spec import VISEMES
from server.pipeline.types import EMOTIONS
from server.render.base import Renderer
from server.render.poses import viseme_pose

FACE_CROP: tuple[float, float, float, float] = (0.25, 0.18, 0.75, 0.68)  # x0, y0, x1, y1 (fractions)


def _label(img: NDArray[np.uint8], text: str, scale: float) -> None:
    """Write ``text`` in the top-left corner of an RGB image, in place."""
    th = max(1, round(2 * scale))
    (tw, tht), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.6 * scale, th)
    cv2.rectangle(img, (0, 0), (tw + 10, tht + base + 8), (255, 255, 255), -1)
    cv2.putText(img, text, (5, tht + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.6 * scale, (20, 20, 20), th, cv2.LINE_AA)


def render_cell(
    renderer: Renderer, viseme: str, emotion: str, cell: int, crop: tuple[float, float, float, float] | None
) -> NDArray[np.uint8]:
    """One labelled (cell, cell, 3) RGB tile of ``viseme`` with ``emotion``."""
    frame = np.asarray(renderer.render(viseme_pose(viseme, emotion)))[..., :3]
    h, w = frame.shape[:2]
    if crop is not None:
        x0, y0, x1, y1 = crop
        frame = frame[round(y0 * h) : round(y1 * h), round(x0 * w) : round(x1 * w)]
    tile: NDArray[np.uint8] = cv2.resize(  # type: ignore[assignment]
        np.ascontiguousarray(frame), (cell, cell), interpolation=cv2.INTER_AREA
    )
    _label(tile, f"{viseme} / {emotion}" if emotion != "neutral" else viseme, cell / 256.0)
    return tile


def make_contact_sheet(
    factory: Callable[[tuple[int, int]], Renderer],
    path: str | Path,
    emotions: Sequence[str] = ("neutral", "happy", "surprised"),
    visemes: Sequence[str] = VISEMES,
    columns: int | None = None,
    cell: int = 256,
    size: tuple[int, int] = (512, 512),
    crop: tuple[float, float, float, float] | None = FACE_CROP,
) -> NDArray[np.uint8]:
    """Render ``visemes`` × ``emotions`` with ``factory(size)`` and save a labelled grid PNG.

    Rows are emotions (each row wraps every ``columns`` visemes; default: all in one row);
    ``crop`` (fractions of the frame) zooms on the face. Returns the (H, W, 3) RGB sheet.
    """
    for e in emotions:
        if e not in EMOTIONS:
            raise KeyError(f"unknown emotion {e!r}; known: {list(EMOTIONS)}")
    renderer = factory(size)
    cols = columns or len(visemes)
    tiles = [render_cell(renderer, v, e, cell, crop) for e in emotions for v in visemes]
    per_emotion = -(-len(visemes) // cols)
    rows = per_emotion * len(emotions)
    sheet = np.full((rows * cell + (rows + 1) * 4, cols * cell + (cols + 1) * 4, 3), 40, np.uint8)
    for k, tile in enumerate(tiles):
        ei, vi = divmod(k, len(visemes))
        r = ei * per_emotion + vi // cols
        col = vi % cols
        y, x = 4 + r * (cell + 4), 4 + col * (cell + 4)
        sheet[y : y + cell, x : x + cell] = tile
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write contact sheet {out}")
    return sheet


def main(argv: Sequence[str] | None = None) -> None:
    """Regenerate the built-in characters' contact sheets."""
    from server.render.builtin import BUILTIN_CHARACTERS, DEFAULT_CHARACTER

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="docs", help="output folder (default: docs)")
    ap.add_argument("--cell", type=int, default=200, help="tile side in px")
    args = ap.parse_args(argv)
    out = Path(args.out)
    make_contact_sheet(
        BUILTIN_CHARACTERS[DEFAULT_CHARACTER], out / "visemes-contact-sheet.png", emotions=("neutral",), columns=5, cell=256
    )
    print(out / "visemes-contact-sheet.png")
    for name, factory in BUILTIN_CHARACTERS.items():
        p = out / f"contact-sheet-{name}.png"
        make_contact_sheet(factory, p, emotions=("neutral", "happy", "surprised"), cell=args.cell)
        print(p)


if __name__ == "__main__":
    main()
