"""Chat turns to prompt token ids, with every piece of caller text tokenized as plain text.

A clinical note may contain the strings of Gemma's control tokens (``<start_of_turn>``,
``<end_of_turn>``, ``<start_of_image>``, ``<unused94>``, ...). Rendering the chat template
over the caller's text and tokenizing the result would turn those strings into real control
tokens: a pasted document could end the user's turn, fake a model turn, open the thinking
block or claim image slots. So the template is rendered with a placeholder for each piece of
caller text, the template's own markup is tokenized with its special tokens, and each piece
of caller text is tokenized with ``split_special_tokens=True``. For text without such strings
the ids are exactly what the Hugging Face processor produces (tested).

Both engines build their prompts here, so the rule is proven once and holds for every route.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

# Private-use characters: they appear in no chat template, so a placeholder can't be confused
# with the template's own text, and the template never sees caller text at all.
_PLACEHOLDER = "\ue000{}\ue001"
_PLACEHOLDER_PATTERN = re.compile("\ue000(\\d+)\ue001")
# A fast tokenizer keeps ``split_special_tokens`` as one switch on its shared Rust backend,
# flipped by each call that passes it. Two prompts built at once on different threads (jobs
# are prepared off the event loop) would flip it under each other: the template's markup split
# into plain text, or, worse, caller text read with its control-token strings live. Building
# one prompt at a time keeps each call's switch its own.
_TOKENIZING = threading.Lock()


@dataclass(frozen=True)
class Prompt:
    """What an engine is fed: token ids, and the images whose token sequences they hold, in order."""

    ids: list[int]
    images: list[Image.Image] = field(default_factory=list)


@dataclass(frozen=True)
class ImageSequence:
    """How a model marks an image: the template's placeholder, and what the processor expands it to."""

    placeholder: str  # e.g. "<start_of_image>", what the chat template writes for an image part
    expansion: str  # e.g. "\n\n<start_of_image><image_soft_token>*256<end_of_image>\n\n"


class PromptBuilder:
    """Builds ``Prompt``s for one tokenizer and chat template (the checkpoint's own)."""

    def __init__(self, tokenizer: Any, chat_template: str, image_sequence: ImageSequence | None):
        self._tokenizer = tokenizer
        self._template = chat_template
        self._image_sequence = image_sequence

    @property
    def vision(self) -> bool:
        return self._image_sequence is not None

    def build(self, messages: Sequence[dict[str, Any]]) -> Prompt:
        """``messages``: chat turns whose content is a list of ``text`` and ``image`` parts."""
        texts: list[str] = []
        images: list[Image.Image] = []
        conversation = []
        for message in messages:
            parts = []
            for part in message["content"]:
                if part["type"] == "text":
                    parts.append({"type": "text", "text": _PLACEHOLDER.format(len(texts))})
                    texts.append(part["text"].strip())  # the template trims text parts itself
                else:
                    parts.append({"type": "image"})
                    images.append(part["image"])
            conversation.append({"role": message["role"], "content": parts})
        if images and self._image_sequence is None:
            raise ValueError("images for a text-only model: request validation lets none through")

        with _TOKENIZING:
            return Prompt(ids=self._ids(conversation, texts), images=images)

    def _ids(self, conversation: list[dict[str, Any]], texts: list[str]) -> list[int]:
        rendered = self._tokenizer.apply_chat_template(
            conversation, chat_template=self._template, tokenize=False, add_generation_prompt=True
        )
        ids: list[int] = []
        position = 0
        for match in _PLACEHOLDER_PATTERN.finditer(rendered):
            ids += self._markup_ids(rendered[position : match.start()])
            ids += self._tokenizer(texts[int(match.group(1))], add_special_tokens=False, split_special_tokens=True)[
                "input_ids"
            ]
            position = match.end()
        ids += self._markup_ids(rendered[position:])
        return ids

    def _markup_ids(self, markup: str) -> list[int]:
        """The template's own text: its special tokens are real, and image placeholders expand."""
        if self._image_sequence is not None:
            markup = markup.replace(self._image_sequence.placeholder, self._image_sequence.expansion)
        return self._tokenizer(markup, add_special_tokens=False)["input_ids"] if markup else []
