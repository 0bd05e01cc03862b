"""The photo upload (``POST /avatars/photo``), read within limits.

The multipart body is streamed with a byte cap (``server.max_photo_bytes``) and a deadline
(``server.upload_timeout_s``); the image's format and size come from its header before any
decoding (:mod:`server.render.image_header`); the temporary file's suffix comes from the
detected format, never from the client's file name.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiohttp import BodyPartReader, web

from server.config import AppConfig
from server.protocol import excerpt
from server.render.image_header import ImageHeader, ImageRejected, read_header

TEXT_FIELD_BYTES = 1024  # bytes, the most read of a text field (name, consent_by)


class UploadError(Exception):
    """The upload is refused; ``status`` is the HTTP status, the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class PhotoUpload:
    """A read upload: the image bytes, its header, and the text fields (stripped)."""

    data: bytes
    header: ImageHeader
    name: str
    consent_by: str


async def _read_part(part: BodyPartReader, cap: int, what: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await part.read_chunk(65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > cap:
            raise UploadError(413, f"{what} is larger than {cap} bytes")
        chunks.append(chunk)


async def read_photo_upload(request: web.Request, cfg: AppConfig) -> PhotoUpload:
    """Read and check the multipart form ``image``, ``name``, ``consent_by``; UploadError if refused."""
    limit = cfg.server.max_photo_bytes
    if request.content_length is not None and request.content_length > limit:
        raise UploadError(413, f"upload of {request.content_length} bytes exceeds the limit of {limit} bytes ({limit / (1 << 20):.0f} MiB)")
    fields: dict[str, bytes] = {}
    try:
        async with asyncio.timeout(cfg.server.upload_timeout_s):
            reader = await request.multipart()
            total = 0
            while True:
                part = await reader.next()
                if part is None:
                    break
                if not isinstance(part, BodyPartReader):
                    raise UploadError(400, "nested multipart parts are not accepted")
                name = part.name or ""
                if name not in ("image", "name", "consent_by") or name in fields:
                    raise UploadError(400, f"unexpected or repeated form field {excerpt(name)} (expected image, name, consent_by)")
                cap = limit - total if name == "image" else TEXT_FIELD_BYTES
                fields[name] = await _read_part(part, cap, "the image" if name == "image" else f"field {name!r}")
                total += len(fields[name])
    except TimeoutError:
        raise UploadError(408, f"the upload took longer than {cfg.server.upload_timeout_s:.0f} s") from None
    except (ValueError, AssertionError, KeyError) as e:  # aiohttp's multipart parser on a broken body
        raise UploadError(400, f"could not read the upload as multipart/form-data ({type(e).__name__})") from None
    if "image" not in fields or not fields["image"]:
        raise UploadError(400, "no image file in the upload (field 'image')")
    try:
        name = fields.get("name", b"").decode("utf-8").strip()
        consent = fields.get("consent_by", b"").decode("utf-8").strip()
    except UnicodeDecodeError:
        raise UploadError(400, "fields 'name' and 'consent_by' must be UTF-8 text") from None
    if not name:
        raise UploadError(400, "a name is required (field 'name')")
    try:
        header = read_header(fields["image"], what="the image")
    except ImageRejected as e:
        raise UploadError(400, str(e)) from None
    return PhotoUpload(fields["image"], header, name, consent)
