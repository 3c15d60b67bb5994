"""Validating a job's ``input`` into a GenerationRequest.

This is the handler's first step: everything a caller can get wrong is caught here,
with a message that names the field and the limit, before the model is touched.

A job gives either ``text`` (one note or question, with ``image``/``images``) or
``messages``: chat turns in the OpenAI / Hugging Face form, whose content is a string or a
list of ``text``, ``image_url`` and ``image`` parts. Both become the turns that
``medgemma.tokens.PromptBuilder`` renders, so both are tokenized by the same code.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from medgemma.errors import INPUT, FieldPath, InputError
from medgemma.images import ImageBudget, create_dummy_image, load_image
from medgemma.prompts import DEFAULT_MODE, check_mode, system_prompt_for, with_answer_format
from medgemma.settings import BASE_ADAPTER, Settings
from medgemma.structured import JsonSpec, json_spec

# Aliases kept for callers of earlier MedGemma workers.
ALIASES = {"custom_prompt": "system_prompt", "max_tokens": "max_new_tokens"}
KNOWN_FIELDS = frozenset(
    {
        "text",
        "messages",
        "image",
        "images",
        "mode",
        "system_prompt",
        "max_new_tokens",
        "temperature",
        "top_p",
        "seed",
        "stop",
        "stream",
        "adapter",
        "format",
        "json_schema",
    }
)
MAX_TEMPERATURE = 2.0
MAX_SEED = 2**32 - 1
MAX_STOP_STRINGS = 4  # OpenAI's limit
MAX_STOP_CHARS = 100
TEXT_ONLY_PROBLEM = "this worker serves a text-only model, which takes no images; send text alone"
#: Message roles, and what the chat template calls them. "developer" is OpenAI's newer name for system.
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
IMAGE_PART_TYPES = ("image_url", "image")
MESSAGE_FORM = "an object with role and content"
STOP_WITH_JSON_PROBLEM = "cannot be combined with format json or json_schema: a JSON answer ends when its object closes"


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
    system_prompt: str | None  # None: no system turn (a messages job on the OpenAI route without one)
    mode: str
    images: list[Image.Image] = field(default_factory=list)  # every image of the prompt, in order
    used_dummy_image: bool = False
    max_new_tokens: int = 512
    temperature: float | None = None  # None or 0: greedy
    top_p: float | None = None
    seed: int | None = None
    stream: bool = False
    job_id: str = "-"  # for the log only, in the form it may take there (``medgemma.errors.logged_id``)
    stop: tuple[str, ...] = ()  # the answer ends before the first of these (medgemma.decoding)
    turns: list[dict[str, Any]] | None = None  # a messages job: its user/assistant turns, images as PIL
    adapter: str | None = None  # an ADAPTERS name; None: the base model
    #: The JSON object the answer must be (``format``/``json_schema``); None: free text. Not part of
    #: the sampling key: constrained and free jobs batch together, each row with its own grammar.
    structured: JsonSpec | None = None

    @property
    def sampling_key(self) -> SamplingKey:
        return SamplingKey(self.max_new_tokens, self.temperature or None, self.top_p, self.seed)

    @property
    def input_field(self) -> str:
        """The input field that holds the prompt, for errors about the prompt as a whole."""
        return "text" if self.turns is None else "messages"

    def messages(self) -> list[dict[str, Any]]:
        """Gemma 3 chat messages: a system turn, then a user turn of images then text (or the job's turns)."""
        system = (
            [{"role": "system", "content": [{"type": "text", "text": self.system_prompt}]}]
            if self.system_prompt is not None
            else []
        )
        if self.turns is not None:
            return system + self.turns
        user: list[dict[str, Any]] = [{"type": "image", "image": image} for image in self.images]
        user.append({"type": "text", "text": self.text})
        return [*system, {"role": "user", "content": user}]


@dataclass
class Conversation:
    """A validated ``messages`` list: the system text, if any, and the turns after it."""

    system: str | None
    turns: list[dict[str, Any]]
    images: list[Image.Image]


def parse_job_input(
    raw: object,
    settings: Settings,
    job_id: str = "-",
    vision: bool = True,
    mode_prompts: bool = True,
    adapters: Collection[str] = (),
    merged: bool = False,
) -> GenerationRequest:
    """Validate a job's ``input`` object; raise InputError naming the first bad field.

    ``vision`` is False for a text-only model: images are refused, and no dummy image is added.
    ``mode_prompts`` False (the OpenAI route): a messages job without a system turn gets none,
    rather than its mode's. ``adapters``: the names of the adapters this worker serves;
    ``merged``: its one adapter is merged into the weights (ADAPTER_MERGE), so it answers every job.
    """
    if not isinstance(raw, dict):
        raise InputError("input", f"must be a JSON object, got {type(raw).__name__}")
    data = _apply_aliases(raw)
    unknown = sorted(set(data) - KNOWN_FIELDS)
    if unknown:
        raise InputError(
            INPUT.named(unknown[0], "unknown field"),
            f"is not a known field (known: {', '.join(sorted(KNOWN_FIELDS | set(ALIASES)))})",
        )

    adapter = choose_adapter(data.get("adapter"), adapters, merged)
    conversation = None
    text = ""
    if data.get("messages") is not None:
        if data.get("text") is not None:
            raise InputError("text", "give either text or messages, not both")
        for name in ("image", "images"):
            if data.get(name) is not None:
                raise InputError(name, "a messages job carries its images in the messages' content parts")
        conversation = parse_messages(data["messages"], settings, vision)
    else:
        text = _typed(data, "text", str, default="")
        if not text.strip():
            raise InputError("text", "is required and must not be empty (or give messages instead)")
        if len(text) > settings.max_input_chars:
            raise InputError("text", f"is {len(text)} characters, over the limit of {settings.max_input_chars}")

    mode = check_mode(_typed(data, "mode", str, default=DEFAULT_MODE))
    override = _typed(data, "system_prompt", str, default=None)
    if override is not None and not override.strip():
        raise InputError("system_prompt", "must not be empty when given")
    if override is not None and len(override) + len(text) > settings.max_input_chars:
        raise InputError(
            "system_prompt",
            f"and the text are {len(override) + len(text)} characters, over the limit of {settings.max_input_chars}",
        )
    system_prompt: str | None = system_prompt_for(mode, override)
    structured = json_spec(
        _typed(data, "format", str, default=None), data.get("json_schema"), mode, settings.max_grammar_chars
    )

    if conversation is not None:
        images, turns = conversation.images, conversation.turns
        if conversation.system is not None:
            system_prompt = conversation.system  # the conversation's own system turn wins
        elif not mode_prompts:
            system_prompt = None
    else:
        if not vision and (data.get("image") is not None or data.get("images")):  # before any image is fetched
            raise InputError("image" if data.get("image") is not None else "images", TEXT_ONLY_PROBLEM)
        images, turns = _images(data, settings), None
    used_dummy = not images and settings.dummy_image and vision
    if used_dummy:
        images = [create_dummy_image()]
        if turns is not None:  # the first turn is the user's (parse_messages checks)
            turns[0]["content"].insert(0, {"type": "image", "image": images[0]})

    max_new_tokens = _typed(data, "max_new_tokens", int, default=settings.max_new_tokens)
    if not 1 <= max_new_tokens <= settings.max_new_tokens_cap:
        raise InputError(
            "max_new_tokens", f"must be between 1 and {settings.max_new_tokens_cap}, got {{got}}", got=max_new_tokens
        )
    temperature = _number(data, "temperature", 0.0, MAX_TEMPERATURE)
    top_p = _number(data, "top_p", 0.0, 1.0)
    if top_p is not None and (top_p == 0.0 or not temperature):
        raise InputError("top_p", "must be in (0, 1] and only applies when sampling (temperature > 0)")
    seed = _typed(data, "seed", int, default=None)
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise InputError("seed", f"must be between 0 and {MAX_SEED}")

    stop = _stop(data.get("stop"))
    if stop and structured:
        raise InputError("stop", STOP_WITH_JSON_PROBLEM)

    return GenerationRequest(
        text=text,
        system_prompt=with_answer_format(system_prompt, structured.instruction) if structured else system_prompt,
        mode=mode,
        images=images,
        used_dummy_image=used_dummy,
        max_new_tokens=max_new_tokens,
        temperature=temperature or None,
        top_p=top_p,
        seed=seed,
        stream=_typed(data, "stream", bool, default=False),
        job_id=job_id,
        stop=stop,
        turns=turns,
        adapter=adapter,
        structured=structured,
    )


def choose_adapter(value: object, adapters: Collection[str], merged: bool = False) -> str | None:
    """A job's ``adapter`` field -> an adapter name, or None for the base model.

    On a worker whose one adapter is merged into the weights, that adapter answers every job
    and the base model is not there to ask.
    """
    if merged:
        (only,) = adapters
        if value == BASE_ADAPTER:
            raise InputError(
                "adapter",
                f"this worker serves the adapter {only!r} merged into its weights (ADAPTER_MERGE=true), "
                "not the base model",
            )
        value = only if value is None else value
    if value is None or value == BASE_ADAPTER:
        return None
    if not isinstance(value, str):
        raise InputError("adapter", f"must be a string, got {type(value).__name__}")
    if value not in adapters:
        raise InputError(
            "adapter", f"unknown adapter {{got}} (known: {', '.join([BASE_ADAPTER, *adapters])})", got=value
        )
    return value


def parse_messages(value: object, settings: Settings, vision: bool, name: str = "messages") -> Conversation:
    """Validate chat messages into turns for ``PromptBuilder``; errors name the path (``messages[2].content[1]``).

    An optional system turn first, then user and assistant turns alternating, from a user turn
    to a user turn (Gemma's chat template allows nothing else). Images go in user turns. The
    limits hold for the whole conversation: MAX_INPUT_CHARS over all its text, MAX_IMAGES over
    all its images, counted before any image is fetched or decoded. MAX_MESSAGES,
    MAX_PARTS_PER_MESSAGE and MAX_PARTS come first, before any part is read: each part, even an
    empty one, costs work to check and tokenize.
    """
    if not isinstance(value, list):
        raise InputError(name, f"must be a list of messages, got {type(value).__name__}")
    if not value:
        raise InputError(name, "must not be empty")
    _check_size(value, settings, name)
    system: str | None = None
    turns: list[tuple[str, list[tuple[str, str, Any]]]] = []  # (role, [(kind, path, value)])
    for index, message in enumerate(value):
        path = f"{name}[{index}]"
        role, parts = _message(message, path)
        if role == "system":
            if index:
                raise InputError(f"{path}.role", "a system message must be the first message")
            if any(kind != "text" for kind, _, _ in parts):
                raise InputError(f"{path}.content", "a system message holds text only; images go in user messages")
            system = "\n\n".join(text.strip() for _, _, text in parts if text.strip())
            continue
        expected = "user" if len(turns) % 2 == 0 else "assistant"
        if role != expected:
            raise InputError(
                f"{path}.role",
                f"must be {expected}: messages alternate user and assistant, starting with user "
                "(after an optional system message)",
            )
        if role == "assistant":
            pictures = [part_path for kind, part_path, _ in parts if kind != "text"]
            if pictures:
                raise InputError(pictures[0], "an assistant message holds text only; images go in user messages")
        turns.append((role, parts))
    if not turns or turns[-1][0] != "user":
        raise InputError(name, "must end with a user message, which the model answers")

    texts = [text for _, parts in turns for kind, _, text in parts if kind == "text"] + [system or ""]
    characters = sum(len(text) for text in texts)
    if characters > settings.max_input_chars:
        raise InputError(name, f"has {characters} characters of text, over the limit of {settings.max_input_chars}")
    image_parts = [(part_path, raw) for _, parts in turns for kind, part_path, raw in parts if kind != "text"]
    if image_parts and not vision:
        raise InputError(image_parts[0][0], TEXT_ONLY_PROBLEM)
    if len(image_parts) > settings.max_images:
        raise InputError(name, f"has {len(image_parts)} images, over the limit of {settings.max_images}")

    images: list[Image.Image] = []
    budget = ImageBudget(settings)  # all of the conversation's images together
    built = []
    for role, parts in turns:
        content = []
        for kind, part_path, raw in parts:
            if kind == "text":
                content.append({"type": "text", "text": raw})
            else:
                images.append(load_image(raw, part_path, budget))
                content.append({"type": "image", "image": images[-1]})
        built.append({"role": role, "content": content})
    return Conversation(system=system, turns=built, images=images)


def _check_size(messages: list[Any], settings: Settings, name: str) -> None:
    """The conversation's size against MAX_MESSAGES, MAX_PARTS_PER_MESSAGE and MAX_PARTS, from list lengths only."""
    if len(messages) > settings.max_messages:
        raise InputError(name, f"has {len(messages)} messages, over the limit of {settings.max_messages}")
    sizes = [
        len(message["content"]) if isinstance(message, dict) and isinstance(message.get("content"), list) else 1
        for message in messages
    ]
    for index, size in enumerate(sizes):
        if size > settings.max_parts_per_message:
            raise InputError(
                f"{name}[{index}].content", f"has {size} parts, over the limit of {settings.max_parts_per_message}"
            )
    if sum(sizes) > settings.max_parts:
        raise InputError(
            name, f"has {sum(sizes)} content parts (empty ones count), over the limit of {settings.max_parts}"
        )


def _message(message: object, path: str) -> tuple[str, list[tuple[str, str, Any]]]:
    """One message's role and its parts as (kind, path, value): text, or an image's raw value."""
    if not isinstance(message, dict):
        raise InputError(path, f"must be {MESSAGE_FORM}, got {type(message).__name__}")
    extra = sorted(set(message) - {"role", "content"})
    if extra:
        raise InputError(
            FieldPath.known(path).named(extra[0], "unknown field"), f"is not supported (a message is {MESSAGE_FORM})"
        )
    role = message.get("role")
    if role not in ROLES:
        raise InputError(f"{path}.role", "must be system, user or assistant, got {got}", got=role)
    content = message.get("content")
    if isinstance(content, str):
        parts: list[tuple[str, str, Any]] = [("text", f"{path}.content", content)]
    elif isinstance(content, list):
        parts = [_part(part, f"{path}.content[{index}]") for index, part in enumerate(content)]
    else:
        raise InputError(
            f"{path}.content", f"must be a string or a list of text and image parts, got {type(content).__name__}"
        )
    if not any(kind != "text" or value.strip() for kind, _, value in parts):
        raise InputError(f"{path}.content", "must not be empty")
    return ROLES[role], parts


def _part(part: object, path: str) -> tuple[str, str, Any]:
    """A content part: ``{"type": "text", "text"}``, ``{"type": "image_url", "image_url": {"url"}}``
    (or the URL as a string), or ``{"type": "image", "image"}``; images as base64, data or https URLs."""
    if not isinstance(part, dict):
        raise InputError(path, f"must be a content part object with a type, got {type(part).__name__}")
    kind = part.get("type")
    if kind not in ("text", *IMAGE_PART_TYPES):
        raise InputError(f"{path}.type", "must be text, image_url or image, got {got}", got=kind)
    extra = sorted(set(part) - {"type", kind})
    if extra:
        raise InputError(FieldPath.known(path).named(extra[0], "unknown field"), f"is not supported in a {kind} part")
    value = part.get(kind)
    if kind == "text":
        if not isinstance(value, str):
            raise InputError(f"{path}.text", f"must be a string, got {type(value).__name__}")
        return "text", f"{path}.text", value
    field_path = f"{path}.{kind}"
    if kind == "image_url" and isinstance(value, dict):
        extra = sorted(set(value) - {"url", "detail"})
        if extra:
            raise InputError(
                FieldPath.known(field_path).named(extra[0], "unknown field"),
                "is not supported (an image_url has url and detail)",
            )
        if value.get("detail", "auto") not in ("auto", None):
            raise InputError(f"{field_path}.detail", "only auto is supported: every image is seen at 896x896")
        value = value.get("url")
    if not isinstance(value, str) or not value.strip():
        raise InputError(field_path, "must be a base64 string, data URL or https:// URL")
    return "image", field_path, value


def _stop(value: object) -> tuple[str, ...]:
    """``stop``: one string or a list of up to MAX_STOP_STRINGS, each 1..MAX_STOP_CHARS characters."""
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(stop, str) for stop in stops):
        raise InputError("stop", f"must be a string or a list of up to {MAX_STOP_STRINGS} strings")
    if len(stops) > MAX_STOP_STRINGS:
        raise InputError("stop", f"has {len(stops)} strings, over the limit of {MAX_STOP_STRINGS}")
    if not all(1 <= len(stop) <= MAX_STOP_CHARS for stop in stops):
        raise InputError("stop", f"each stop string must have 1 to {MAX_STOP_CHARS} characters")
    return tuple(dict.fromkeys(stops))


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
        raise InputError(name, f"must be between {low} and {high}, got {{got}}", got=value)
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
    budget = ImageBudget(settings)  # all of the job's images together
    return [
        load_image(value, name if name == "image" else f"images[{index}]", budget) for index, value in enumerate(values)
    ]


def _article(kind: type) -> str:
    return {str: "a string", int: "an integer", bool: "true or false"}.get(kind, kind.__name__)
