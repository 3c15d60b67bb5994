"""Decoding untrusted images from job input, and the white placeholder image.

An image arrives as base64, a ``data:image/...;base64,`` URL, or an ``https://`` URL
(fetched by ``medgemma.image_fetch``); the bytes from any of them go through one
``open_image``. Every check happens before the image is fully decoded: payload size
on the base64 text or while the download streams, pixel count on the header, so a
decompression bomb costs nothing.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings

from PIL import Image, UnidentifiedImageError

from medgemma.errors import InputError
from medgemma.image_fetch import fetch_image
from medgemma.settings import Settings

DUMMY_IMAGE_SIZE = 896  # MedGemma's native resolution
_DATA_URL = re.compile(r"^data:image/[\w.+-]+;base64,", re.IGNORECASE)
_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")  # base64 never holds a colon


def create_dummy_image(size: int = DUMMY_IMAGE_SIZE) -> Image.Image:
    """A plain white RGB square, sent when a text-only request keeps the image slot filled."""
    return Image.new("RGB", (size, size), (255, 255, 255))


def load_image(value: object, field: str, settings: Settings) -> Image.Image:
    """Any accepted form of a job's image (base64, data URL, https URL) as an RGB image.

    Raises InputError naming ``field`` for anything that is not a safe, real image.
    """
    text = value.strip() if isinstance(value, str) else ""
    if _URL_SCHEME.match(text) and not text.lower().startswith("data:"):
        return open_image(fetch_image(value, field, settings), field, settings.max_image_pixels)
    return decode_image(value, field, settings.max_image_bytes, settings.max_image_pixels)


def decode_image(value: object, field: str, max_bytes: int, max_pixels: int) -> Image.Image:
    """Turn a base64 string or ``data:image/...;base64,`` URL into an RGB image."""
    if not isinstance(value, str):
        raise InputError(field, f"must be a base64 string, data URL or https:// URL, got {type(value).__name__}")
    payload = _DATA_URL.sub("", value.strip(), count=1)
    if value.strip().lower().startswith("data:") and payload == value.strip():
        raise InputError(field, "data URL must be of the form data:image/<type>;base64,<data>")
    # base64 is 4 chars per 3 bytes: refuse before decoding anything.
    if len(payload) * 3 // 4 > max_bytes:
        raise InputError(field, f"image is larger than the limit of {max_bytes} bytes")
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(field, "is not valid base64") from None
    if not raw:
        raise InputError(field, "is empty")
    return open_image(raw, field, max_pixels)


def open_image(raw: bytes, field: str, max_pixels: int) -> Image.Image:
    """Bytes of an image file, from any source, as RGB: the pixel count is checked on the header."""
    try:
        with warnings.catch_warnings():  # PIL's own, laxer bomb warning: we enforce max_pixels
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            probe = Image.open(io.BytesIO(raw))
        with probe:
            width, height = probe.size
            if width * height > max_pixels:
                raise InputError(field, f"image is {width}x{height} pixels, over the limit of {max_pixels} pixels")
            probe.load()
            return probe.convert("RGB")
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError):
        raise InputError(field, "is not a readable image (PNG, JPEG, ...)") from None


def encode_image(image: Image.Image, fmt: str = "PNG") -> str:
    """Base64 of an image: what a client sends. Used by tests and benchmarks."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
