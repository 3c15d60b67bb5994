"""Turns caller arguments into the worker's job input (see the job contract in README)."""

from __future__ import annotations

import base64
import mimetypes
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypedDict

from .errors import InvalidRequestError

# A path to an image file, or the raw image bytes.
ImageSource = str | os.PathLike[str] | bytes


class InputOptions(TypedDict, total=False):
    """Optional job-input fields, shared by every client method that starts a job."""

    images: Sequence[ImageSource]
    mode: str
    system_prompt: str
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int
    stream: bool


def build_job_input(
    text: str | None = None,
    *,
    images: Sequence[ImageSource] = (),
    mode: str | None = None,
    system_prompt: str | None = None,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stream: bool = False,
) -> dict[str, Any]:
    """Return the ``input`` object, leaving unset options to the worker's defaults.

    Validation of values (mode names, ranges) is the worker's job: it names the
    offending field, and a second copy of the rules here would drift.
    """
    encoded = [encode_image(image) for image in images]
    if not (text and text.strip()) and not encoded:
        raise InvalidRequestError("nothing to send: the text is empty and no image was given")
    fields: dict[str, Any] = {
        "text": text if text and text.strip() else None,
        "images": encoded or None,
        "mode": mode,
        "system_prompt": system_prompt,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "seed": seed,
        "stream": True if stream else None,
    }
    return {key: value for key, value in fields.items() if value is not None}


def encode_image(source: ImageSource) -> str:
    """Base64 for the worker: a data URL when the file type is known, else bare base64."""
    if isinstance(source, bytes):
        return base64.b64encode(source).decode("ascii")
    path = Path(source)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidRequestError(f"cannot read image {path}: {exc.strerror or exc}") from exc
    payload = base64.b64encode(data).decode("ascii")
    mime, _ = mimetypes.guess_type(path.name)
    if mime and mime.startswith("image/"):
        return f"data:{mime};base64,{payload}"
    return payload
