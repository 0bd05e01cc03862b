"""An image's format and size from its header only (Pillow's lazy ``Image.open``), so oversized
or unexpected files are refused before anything decodes them."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from server.errors import AvatarError

MAX_PIXELS = 40_000_000  # refuse larger images (a 40 MP RGB decode is ~120 MB)
SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif"}  # accepted formats


class ImageRejected(AvatarError):
    """The file is not an accepted image, or too large; the message says which."""


@dataclass(frozen=True, slots=True)
class ImageHeader:
    """What the header says: Pillow's format name, width and height (px), file suffix."""

    format: str
    width: int
    height: int

    @property
    def suffix(self) -> str:
        """The file suffix for this format (from :data:`SUFFIXES`, never from the client)."""
        return SUFFIXES[self.format]


def read_header(data: bytes, max_pixels: int = MAX_PIXELS, what: str = "the image") -> ImageHeader:
    """Format and size of the image in ``data``, read from its header without decoding pixels.

    Raises :class:`ImageRejected` for a format outside :data:`SUFFIXES`, an unreadable header,
    or more than ``max_pixels`` pixels.
    """
    from PIL import Image

    accepted = ", ".join(SUFFIXES)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=list(SUFFIXES)) as im:
                fmt, (w, h) = str(im.format), im.size
    except Image.DecompressionBombError:
        raise ImageRejected(f"{what} declares more than {2 * (Image.MAX_IMAGE_PIXELS or 0)} pixels; at most {max_pixels // 1_000_000} MP accepted") from None
    except Exception:  # Pillow raises UnidentifiedImageError, SyntaxError, struct.error... on junk
        raise ImageRejected(f"cannot read {what} as an image ({accepted} expected)") from None
    if fmt not in SUFFIXES:
        raise ImageRejected(f"{what} is {fmt}; {accepted} expected")
    if w <= 0 or h <= 0 or w * h > max_pixels:
        raise ImageRejected(f"{what} is {w}x{h} px; at most {max_pixels // 1_000_000} MP accepted")
    return ImageHeader(fmt, w, h)
