"""Decoding untrusted images from job input, and the white placeholder image.

An image arrives as base64, a ``data:image/...;base64,`` URL, or an ``https://`` URL
(fetched by ``medgemma.image_fetch``); the bytes from any of them go through one
``open_image``. Every check happens before the image is fully decoded: payload size
on the base64 text or while the download streams, pixel count on the header, so a
decompression bomb costs nothing.

A job's images also share one ``ImageBudget``: all their pixels together
(MAX_JOB_PIXELS) and all their fetches' time together (IMAGE_URL_JOB_DEADLINE_S), so
a job of MAX_IMAGES images does not cost MAX_IMAGES times the per-image limits.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import time
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


class ImageBudget:
    """What one job's images may cost together; made once per job and passed to each ``load_image``."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.pixels_left = settings.max_job_pixels
        self.fetch_seconds_left = settings.image_url_job_deadline_s

    def take_pixels(self, width: int, height: int, field: str) -> None:
        """Count an image's pixels, from its header: refused over the image's or the job's limit."""
        limit, pixels = self.settings.max_image_pixels, width * height
        if pixels > limit:
            raise InputError(field, f"image is {width}x{height} pixels, over the limit of {limit} pixels")
        if pixels > self.pixels_left:
            job_limit = self.settings.max_job_pixels
            raise InputError(
                field,
                f"image is {width}x{height} pixels, which takes the job's images to "
                f"{job_limit - self.pixels_left + pixels} pixels, over the limit of {job_limit} pixels "
                "for all of them together",
            )
        self.pixels_left -= pixels

    def fetch(self, url: str, field: str) -> bytes:
        """Fetch an image URL within what is left of the job's time for fetches, and count the time taken."""
        started = time.monotonic()
        try:
            return fetch_image(url, field, self.settings, self.fetch_seconds_left)
        finally:
            self.fetch_seconds_left -= time.monotonic() - started


def load_image(value: object, field: str, budget: ImageBudget) -> Image.Image:
    """Any accepted form of a job's image (base64, data URL, https URL) as an RGB image.

    Raises InputError naming ``field`` for anything that is not a safe, real image, or
    that takes the job past its ``budget``.
    """
    text = value.strip() if isinstance(value, str) else ""
    if _URL_SCHEME.match(text) and not text.lower().startswith("data:"):
        return open_image(budget.fetch(text, field), field, budget)
    return open_image(base64_image(value, field, budget.settings.max_image_bytes), field, budget)


def base64_image(value: object, field: str, max_bytes: int) -> bytes:
    """The bytes of a base64 string or ``data:image/...;base64,`` URL, refused over ``max_bytes`` before decoding."""
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
    return raw


def open_image(raw: bytes, field: str, budget: ImageBudget) -> Image.Image:
    """Bytes of an image file, from any source, as RGB: the pixel count is checked on the header."""
    try:
        with warnings.catch_warnings():  # PIL's own, laxer bomb warning: we enforce max_pixels
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            probe = Image.open(io.BytesIO(raw))
        with probe:
            budget.take_pixels(*probe.size, field)
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
