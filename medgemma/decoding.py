"""Generated token ids to answer text, the same way on every engine.

MedGemma 1.5 may "think" first, between ``<unused94>`` and ``<unused95>`` (sometimes never
closing the block). Only the answer is returned: thinking is stripped at token level, so no
decoded text can fake or hide it. Streaming and the final text use the same code, so the
streamed deltas always add up to exactly the final answer.

A request's stop strings (OpenAI's ``stop``) are matched on the decoded answer text, here,
so they mean the same on every engine: the answer ends just before the first match, which
is not returned, and the finish reason is "stop". While streaming, text that could be the
start of a stop string is held back until the next tokens show whether it is one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

THINK_START, THINK_END = "<unused94>", "<unused95>"

#: Receives answer text as it appears (called from whatever thread generates).
DeltaCallback = Callable[[str], None]


def think_token_ids(tokenizer: Any) -> tuple[int, int] | None:
    """The ids of the thinking markers, or None if this vocabulary has none."""
    ids = tokenizer.convert_tokens_to_ids([THINK_START, THINK_END])
    return None if tokenizer.unk_token_id in ids or None in ids else (ids[0], ids[1])


class RowDecoder:
    """Turns one answer's generated token ids into text, thinking stripped.

    ``generated`` counts every token the model produced for this answer, the stop token (or
    the token that completed a stop string) included when one ended it; ``stopped`` says
    whether one did. An engine may end a stopped row early: nothing after it is used.
    """

    def __init__(
        self,
        tokenizer: Any,
        stop_ids: Iterable[int],
        think_ids: tuple[int, int] | None,
        on_delta: DeltaCallback | None = None,
        stop_strings: Sequence[str] = (),
    ):
        self._tokenizer = tokenizer
        self._stop_ids = frozenset(stop_ids)
        self._think_ids = think_ids
        self._on_delta = on_delta
        self._stop_strings = tuple(stop_strings)
        self._visible: list[int] = []
        self._decoded: str | None = None  # the visible ids decoded, cached until the next one
        self._cut: int | None = None  # where the first stop string begins in the decoded text
        self._thinking = False
        self._emitted = ""
        self.generated = 0
        self.stopped = False

    def push(self, token_id: int) -> None:
        if self.stopped:
            return  # padding after this row's end
        self.generated += 1
        if token_id in self._stop_ids:
            self.stopped = True
        elif self._think_ids and token_id == self._think_ids[0]:
            self._thinking = True
        elif self._think_ids and token_id == self._think_ids[1]:
            self._thinking = False
        elif not self._thinking:
            self._visible.append(token_id)
            self._decoded = None
            if self._stop_strings:
                self._find_stop()
            if self._on_delta:
                self._emit(final=False)

    @property
    def finish_reason(self) -> str:
        return "stop" if self.stopped else "length"

    def text(self) -> str:
        if self._on_delta:
            self._emit(final=True)
        return self._answer(final=True)

    def _raw(self) -> str:
        if self._decoded is None:
            self._decoded = self._tokenizer.decode(self._visible, skip_special_tokens=True)
        return self._decoded

    def _find_stop(self) -> None:
        text = self._raw()
        found = [index for index in (text.find(stop) for stop in self._stop_strings) if index >= 0]
        if found:
            self._cut, self.stopped = min(found), True

    def _answer(self, final: bool) -> str:
        """The answer so far; before the end, without text that later tokens may still change."""
        text = self._raw()
        if self._cut is not None:
            text = text[: self._cut]
        elif not final:
            text = text[: len(text) - self._stop_prefix(text)]
        text = text.strip()
        if not final:
            # Hold back a possibly incomplete UTF-8 character and trailing whitespace
            # (which .strip() might remove) until more text confirms them.
            text = text.rstrip("\ufffd").rstrip()
        return text

    def _stop_prefix(self, text: str) -> int:
        """The length of the longest end of ``text`` that a stop string starts with."""
        return max(
            (size for stop in self._stop_strings for size in range(1, len(stop)) if text.endswith(stop[:size])),
            default=0,
        )

    def _emit(self, final: bool) -> None:
        if self._on_delta is None:
            return
        text = self._answer(final)
        if len(text) > len(self._emitted) and text.startswith(self._emitted):
            delta, self._emitted = text[len(self._emitted) :], text
            self._on_delta(delta)
