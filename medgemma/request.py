"""Validating a job's ``input`` into a GenerationRequest.

This is the handler's first step: everything a caller can get wrong is caught here,
with a message that names the field and the limit, before the model is touched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from medgemma.errors import InputError
from medgemma.images import create_dummy_image, load_image
from medgemma.prompts import DEFAULT_MODE, check_mode, system_prompt_for
from medgemma.settings import Settings
from medgemma.structured import JsonSpec, json_spec

# Aliases kept for callers of earlier MedGemma workers.
ALIASES = {"custom_prompt": "system_prompt", "max_tokens": "max_new_tokens"}
KNOWN_FIELDS = frozenset(
    {
        "text",
        "image",
        "images",
        "mode",
        "system_prompt",
        "max_new_tokens",
        "temperature",
        "top_p",
        "seed",
        "stream",
        "format",
        "json_schema",
    }
)
MAX_TEMPERATURE = 2.0
MAX_SEED = 2**32 - 1
TEXT_ONLY_PROBLEM = "this worker serves a text-only model, which takes no images; send text alone"


@dataclass(frozen=True)
class SamplingKey:
    """Jobs batch together only when these match: they decide how every step picks a token."""

    max_new_tokens: int
    temperature: float | None
    top_p: float | None
    seed: int | None


@dataclass
class GenerationRequest:
    """One validated job: what to say to the model, and how to decode."""

    text: str
    system_prompt: str
    mode: str
    images: list[Image.Image] = field(default_factory=list)
    used_dummy_image: bool = False
    max_new_tokens: int = 512
    temperature: float | None = None  # None or 0: greedy
    top_p: float | None = None
    seed: int | None = None
    stream: bool = False
    job_id: str = "-"
    #: The JSON object the answer must be (``format``/``json_schema``); None: free text. Not part of
    #: the sampling key: constrained and free jobs batch together, each row with its own grammar.
    structured: JsonSpec | None = None

    @property
    def sampling_key(self) -> SamplingKey:
        return SamplingKey(self.max_new_tokens, self.temperature or None, self.top_p, self.seed)

    def messages(self) -> list[dict[str, Any]]:
        """Gemma 3 chat messages: a system turn, then a user turn of images then text."""
        user: list[dict[str, Any]] = [{"type": "image", "image": image} for image in self.images]
        user.append({"type": "text", "text": self.text})
        return [
            {"role": "system", "content": [{"type": "text", "text": self.system_prompt}]},
            {"role": "user", "content": user},
        ]


def parse_job_input(raw: object, settings: Settings, job_id: str = "-", vision: bool = True) -> GenerationRequest:
    """Validate a job's ``input`` object; raise InputError naming the first bad field.

    ``vision`` is False for a text-only model: images are refused, and no dummy image is added.
    """
    if not isinstance(raw, dict):
        raise InputError("input", f"must be a JSON object, got {type(raw).__name__}")
    data = _apply_aliases(raw)
    unknown = sorted(set(data) - KNOWN_FIELDS)
    if unknown:
        raise InputError(unknown[0], f"is not a known field (known: {', '.join(sorted(KNOWN_FIELDS | set(ALIASES)))})")

    text = _typed(data, "text", str, default="")
    if not text.strip():
        raise InputError("text", "is required and must not be empty")
    if len(text) > settings.max_input_chars:
        raise InputError("text", f"is {len(text)} characters, over the limit of {settings.max_input_chars}")

    mode = check_mode(_typed(data, "mode", str, default=DEFAULT_MODE))
    override = _typed(data, "system_prompt", str, default=None)
    if override is not None and not override.strip():
        raise InputError("system_prompt", "must not be empty when given")
    if override is not None and len(override) > settings.max_input_chars:
        raise InputError("system_prompt", f"is over the limit of {settings.max_input_chars} characters")
    structured = json_spec(_typed(data, "format", str, default=None), data.get("json_schema"), mode)

    if not vision and (data.get("image") is not None or data.get("images")):  # before any image is fetched
        raise InputError("image" if data.get("image") is not None else "images", TEXT_ONLY_PROBLEM)
    images = _images(data, settings)
    used_dummy = not images and settings.dummy_image and vision
    if used_dummy:
        images = [create_dummy_image()]

    max_new_tokens = _typed(data, "max_new_tokens", int, default=settings.max_new_tokens)
    if not 1 <= max_new_tokens <= settings.max_new_tokens_cap:
        raise InputError("max_new_tokens", f"must be between 1 and {settings.max_new_tokens_cap}, got {max_new_tokens}")
    temperature = _number(data, "temperature", 0.0, MAX_TEMPERATURE)
    top_p = _number(data, "top_p", 0.0, 1.0)
    if top_p is not None and (top_p == 0.0 or not temperature):
        raise InputError("top_p", "must be in (0, 1] and only applies when sampling (temperature > 0)")
    seed = _typed(data, "seed", int, default=None)
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise InputError("seed", f"must be between 0 and {MAX_SEED}")

    return GenerationRequest(
        text=text,
        system_prompt=system_prompt_for(mode, override, structured.instruction if structured else None),
        mode=mode,
        images=images,
        used_dummy_image=used_dummy,
        max_new_tokens=max_new_tokens,
        temperature=temperature or None,
        top_p=top_p,
        seed=seed,
        stream=_typed(data, "stream", bool, default=False),
        job_id=job_id,
        structured=structured,
    )


def _apply_aliases(raw: dict[str, Any]) -> dict[str, Any]:
    data = dict(raw)
    for alias, name in ALIASES.items():
        if alias in data:
            if name in data:
                raise InputError(alias, f"is an alias of {name}; give only one of them")
            data[name] = data.pop(alias)
    return data


def _typed(data: dict[str, Any], name: str, kind: type, default: Any) -> Any:
    value = data.get(name)
    if value is None:
        return default
    # bool is an int in Python; a JSON true is never a valid token count.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InputError(name, f"must be {_article(kind)}, got {type(value).__name__}")
    return value


def _number(data: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(name, f"must be a number, got {type(value).__name__}")
    if not low <= value <= high:
        raise InputError(name, f"must be between {low} and {high}, got {value}")
    return float(value)


def _images(data: dict[str, Any], settings: Settings) -> list[Image.Image]:
    if "image" in data and "images" in data:
        raise InputError("image", "give either image or images, not both")
    if data.get("image") is not None:
        values, name = [data["image"]], "image"
    else:
        values, name = data.get("images") or [], "images"
        if not isinstance(values, list):
            raise InputError(
                "images", f"must be a list of images (base64, data or https URLs), got {type(values).__name__}"
            )
    if len(values) > settings.max_images:
        raise InputError(name, f"has {len(values)} images, over the limit of {settings.max_images}")
    return [
        load_image(value, name if name == "image" else f"images[{index}]", settings)
        for index, value in enumerate(values)
    ]


def _article(kind: type) -> str:
    return {str: "a string", int: "an integer", bool: "true or false"}.get(kind, kind.__name__)
