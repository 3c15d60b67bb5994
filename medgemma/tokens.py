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
# into plain text, or, worse, caller text read with its control-token strings live. So each
# tokenizer call holds this lock, and a prompt takes two calls, however many parts it has: all
# its markup in one batch, all its caller text in another (empty pieces are not tokenized at
# all). Rendering the template and putting the ids together need no lock, so one job's many
# parts hold up another job's prompt for two tokenizer calls at most.
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

        return Prompt(ids=self._ids(conversation, texts), images=images)

    def _ids(self, conversation: list[dict[str, Any]], texts: list[str]) -> list[int]:
        rendered = self._tokenizer.apply_chat_template(
            conversation, chat_template=self._template, tokenize=False, add_generation_prompt=True
        )
        # markup, placeholder index, markup, ..., markup
        pieces = _PLACEHOLDER_PATTERN.split(rendered)
        markup = self._encode([self._expanded(piece) for piece in pieces[0::2]], split_special_tokens=False)
        caller = self._encode([texts[int(index)] for index in pieces[1::2]], split_special_tokens=True)
        ids = markup[0]
        for text_ids, markup_ids in zip(caller, markup[1:], strict=True):
            ids += text_ids + markup_ids
        return ids

    def _expanded(self, markup: str) -> str:
        """The template's own text, its image placeholders expanded: its special tokens are real."""
        if self._image_sequence is not None:
            return markup.replace(self._image_sequence.placeholder, self._image_sequence.expansion)
        return markup

    def _encode(self, texts: list[str], split_special_tokens: bool) -> list[list[int]]:
        """Each of ``texts`` as token ids, in one tokenizer call under ``_TOKENIZING`` (an empty text is no ids)."""
        wanted = [text for text in texts if text]
        if not wanted:
            return [[] for _ in texts]
        with _TOKENIZING:
            encoded = self._tokenizer(wanted, add_special_tokens=False, split_special_tokens=split_special_tokens)
        ids = iter(encoded["input_ids"])
        return [list(next(ids)) if text else [] for text in texts]
