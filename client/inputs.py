"""Turns caller arguments into the worker's job input (the job fields are documented in docs/client.md)."""

from __future__ import annotations

import base64
import mimetypes
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict

from .errors import InvalidRequestError

# A path to an image file, an https:// (or data:) URL that the worker reads itself, or raw bytes.
ImageSource = str | os.PathLike[str] | bytes
# One chat turn: {"role": "system" | "user" | "assistant", "content": str | [parts]}.
Message = Mapping[str, Any]
URL_PREFIXES = ("https://", "http://", "data:")


class JobOptions(TypedDict, total=False):
    """Optional job-input fields besides what to answer: shared by every method that starts a job."""

    images: Sequence[ImageSource]
    mode: str
    system_prompt: str
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int
    stream: bool
    format: str
    json_schema: Mapping[str, Any]
    adapter: str


class InputOptions(JobOptions, total=False):
    """``JobOptions`` and ``messages``, the conversation that replaces ``text``."""

    messages: Sequence[Message]


def build_job_input(
    text: str | None = None,
    *,
    messages: Sequence[Message] | None = None,
    images: Sequence[ImageSource] = (),
    mode: str | None = None,
    system_prompt: str | None = None,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stream: bool = False,
    format: str | None = None,
    json_schema: Mapping[str, Any] | None = None,
    adapter: str | None = None,
) -> dict[str, Any]:
    """Return the ``input`` object, leaving unset options to the worker's defaults.

    ``messages`` (a conversation) replaces ``text``; its images go in its turns (see
    ``chat_message``). Validation of values (mode names, ranges, schemas) is the worker's
    job: it names the offending field, and a second copy of the rules here would drift.
    """
    has_text = bool(text and text.strip())
    if messages is not None:
        if has_text or images:
            raise InvalidRequestError("give text (and images) or messages, not both: images go in the messages")
        if not messages:
            raise InvalidRequestError("nothing to send: the conversation has no messages")
    encoded = [encode_image(image) for image in images]
    if messages is None and not has_text and not encoded:
        raise InvalidRequestError("nothing to send: the text is empty and no image was given")
    fields: dict[str, Any] = {
        "text": text if has_text else None,
        "messages": [dict(message) for message in messages] if messages is not None else None,
        "images": encoded or None,
        "mode": mode,
        "system_prompt": system_prompt,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "seed": seed,
        "stream": True if stream else None,
        "format": format,
        "json_schema": dict(json_schema) if json_schema is not None else None,
        "adapter": adapter,
    }
    return {key: value for key, value in fields.items() if value is not None}


def chat_message(role: str, text: str = "", images: Sequence[ImageSource] = ()) -> dict[str, Any]:
    """One turn of a conversation; with images, its content is ``image_url`` parts then a ``text`` part."""
    if not images:
        return {"role": role, "content": text}
    parts: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": image_url(image)}} for image in images]
    if text:
        parts.append({"type": "text", "text": text})
    return {"role": role, "content": parts}


def encode_image(source: ImageSource) -> str:
    """What the worker's ``images`` field takes: a URL as is, a file or bytes as base64
    (a data URL when the image type is known)."""
    if isinstance(source, str) and source.startswith(URL_PREFIXES):
        return source
    data, name = _read(source)
    payload = base64.b64encode(data).decode("ascii")
    mime = _image_type(data, name)
    return f"data:{mime};base64,{payload}" if mime else payload


def image_url(source: ImageSource) -> str:
    """An ``image_url`` part's URL: a URL as is, a file or bytes as a data URL."""
    encoded = encode_image(source)
    if not encoded.startswith(URL_PREFIXES):
        what = "the image bytes" if isinstance(source, bytes) else f"image {source}"
        raise InvalidRequestError(f"cannot tell the type of {what} (PNG, JPEG, GIF, WebP or BMP expected)")
    return encoded


def _read(source: str | os.PathLike[str] | bytes) -> tuple[bytes, str]:
    if isinstance(source, bytes):
        return source, ""
    path = Path(source)
    try:
        return path.read_bytes(), path.name
    except OSError as exc:
        raise InvalidRequestError(f"cannot read image {path}: {exc.strerror or exc}") from exc


def _image_type(data: bytes, name: str) -> str | None:
    """The MIME type from the file name, else from the first bytes."""
    mime, _ = mimetypes.guess_type(name) if name else (None, None)
    if mime and mime.startswith("image/"):
        return mime
    for magic, sniffed in _MAGIC:
        if data.startswith(magic):
            return sniffed
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF8", "image/gif"),
    (b"BM", "image/bmp"),
)
