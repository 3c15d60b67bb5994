"""The RunPod double's fake MedGemma worker: the real input validation, then a fake answer.

Each job input goes through the worker's own ``medgemma.request.parse_job_input``, so the
double refuses exactly what the worker refuses, with the worker's ``field: problem`` text
(``{"error": str(error)}``, as ``Worker.run`` answers). No model is loaded: a valid job gets a
deterministic summary built from its document's length and hash (a conversation's document
is its turns' text). JSON jobs get ``output`` as JSON text and ``parsed`` as the object, cut
off with ``finish_reason: "length"`` below ``JSON_MIN_TOKENS``.

Image URLs: validation never touches the network. An image URL the worker's own URL checks
accept, on any host but a loopback one, is validated as a small stand-in PNG (the double
plays the internet); a URL they refuse, or one to a loopback host, goes to the real code as
sent, which refuses it before connecting (the double's settings allow no private address).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import io
import ipaddress
import json
import re
from typing import Any

from PIL import Image

from medgemma.errors import InputError
from medgemma.image_fetch import parse_url
from medgemma.request import GenerationRequest, parse_job_input
from medgemma.settings import Settings

MODEL = "double/medgemma-stand-in"
MODEL_REVISION = "0123456789abcdef0123456789abcdef01234567"
ADAPTERS = ("notes-style",)
# A JSON job given fewer new tokens than this is cut off before its object closes.
JSON_MIN_TOKENS = 16
SUMMARY_FIELDS = ("key_findings", "diagnoses", "treatments_and_medications", "follow_up_and_pending")
# The worker's settings, as deployed, except that no dummy image is made for a text-only job.
SETTINGS_ENV = {"DUMMY_IMAGE": "false"}
# A value that medgemma.images.load_image would fetch rather than decode: a URL, not a data URL.
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def _png(size: int = 4) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (128, 128, 128)).save(buffer, "PNG")
    return buffer.getvalue()


#: A small real PNG: what every fetchable image URL "holds", and an image tests may send.
TINY_PNG = _png()
_STAND_IN = "data:image/png;base64," + base64.b64encode(TINY_PNG).decode("ascii")


def text_key(text: str) -> str:
    """How the double names a document: a hash, so tests never need to print text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def fake_answer(text: str) -> str:
    return f"Synthetic summary {text_key(text)} of a {len(text)}-character note."


def fake_summary(text: str) -> dict[str, list[str]]:
    """The built-in clinical summary object the double answers a ``format: "json"`` job with."""
    return {
        "key_findings": [fake_answer(text)],
        "diagnoses": [],
        "treatments_and_medications": [],
        "follow_up_and_pending": [],
        "not_documented": ["diagnoses", "treatments_and_medications", "follow_up_and_pending"],
    }


def document_text(job_input: dict[str, Any]) -> str:
    """The text a job is about: ``text``, or a conversation's turns (text parts) one per line."""
    messages = job_input.get("messages")
    if not isinstance(messages, list):
        return str(job_input.get("text") or "")
    lines = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
        lines += [str(part.get("text", "")) for part in parts if isinstance(part, dict) and part.get("type") == "text"]
    return "\n".join(lines)


class FakeWorker:
    """Validates like the worker (``validate``) and answers like ``Worker.run``, without a model (``run``)."""

    def __init__(self, adapters: tuple[str, ...] = ADAPTERS) -> None:
        self.adapters = adapters
        self.settings = Settings.from_env(SETTINGS_ENV)

    def validate(self, job_input: dict[str, Any], job_id: str = "-") -> GenerationRequest:
        """The worker's own validation; raises ``InputError`` (its ``str()`` is the reply)."""
        offline = _without_fetches(job_input, self.settings)
        return parse_job_input(offline, self.settings, job_id=job_id, vision=True, adapters=self.adapters)

    def run(self, job_input: dict[str, Any], execution_s: float, job_id: str = "-") -> dict[str, Any]:
        """What ``Worker.run`` returns for this input: ``{"error": str(error)}``, or a fake answer."""
        try:
            request = self.validate(job_input, job_id)
        except InputError as error:
            return {"error": str(error)}
        return self._answer(request, job_input, execution_s)

    @staticmethod
    def _answer(request: GenerationRequest, job_input: dict[str, Any], execution_s: float) -> dict[str, Any]:
        """The output object for a valid job: built from its document's length and hash, no model involved."""
        text = document_text(job_input)
        answer, parsed, finish_reason = fake_answer(text), None, "stop"
        if request.structured is not None:
            parsed = fake_summary(text) if request.structured.kind == "summary" else {"answer": answer}
            answer = json.dumps(parsed)
            if request.max_new_tokens < JSON_MIN_TOKENS:
                answer, parsed, finish_reason = answer[: len(answer) // 2], None, "length"
        provenance = {"model": MODEL, "model_revision": MODEL_REVISION}
        if request.adapter is not None:
            provenance.update(adapter=request.adapter, adapter_revision=f"sha256:{text_key(request.adapter)}")
        output: dict[str, Any] = {
            "output": answer,
            "mode": request.mode,
            "model": MODEL,
            "run_mode": "double",
            "usage": {"prompt_tokens": max(1, len(text) // 4), "completion_tokens": len(answer.split())},
            "finish_reason": finish_reason,
            "used_dummy_image": request.used_dummy_image,
            "timings": {"generate_s": execution_s},
            "adapter": request.adapter,
            "provenance": provenance,
        }
        if parsed is not None:
            output["parsed"] = parsed
        return output


def _without_fetches(job_input: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """``job_input`` with each image URL that would reach the network swapped for the stand-in PNG.

    Only values in an image's place are looked at, and only when their shape is right; anything
    else is left for ``parse_job_input`` to refuse as it would.
    """
    copied = copy.deepcopy(job_input)
    if "image" in copied:
        copied["image"] = _offline(copied["image"], settings)
    if isinstance(copied.get("images"), list):
        copied["images"] = [_offline(value, settings) for value in copied["images"]]
    for message in copied.get("messages") if isinstance(copied.get("messages"), list) else []:
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else []:
            if not isinstance(part, dict) or part.get("type") not in ("image_url", "image"):
                continue
            kind = part["type"]
            if kind == "image_url" and isinstance(part.get(kind), dict) and "url" in part[kind]:
                part[kind]["url"] = _offline(part[kind]["url"], settings)
            elif kind in part:
                part[kind] = _offline(part[kind], settings)
    return copied


def _offline(value: Any, settings: Settings) -> Any:
    """The stand-in for a URL the worker would fetch from a non-loopback host; else ``value`` unchanged."""
    text = value.strip() if isinstance(value, str) else ""
    if not _URL.match(text) or text.lower().startswith("data:"):
        return value  # decoded, not fetched
    try:
        target = parse_url(text, "image", settings.image_url_allow_http)
    except InputError:
        return value  # the real code refuses it the same way, before any lookup
    if target.host.lower() == "localhost" or _is_loopback(target.host):
        return value  # refused by the real code as a private address, before connecting
    return _STAND_IN


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
