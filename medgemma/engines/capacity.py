"""The jobs vLLM is sized for: the longest one (``MAX_MODEL_LEN``'s default) and how many typical
ones its KV cache holds at once (``MAX_CONCURRENCY``'s default).

vLLM reports its capacity for requests of ``MAX_MODEL_LEN`` tokens, which this worker never
receives, and its ``kv_cache_size_tokens`` assumes such long requests (a sliding-window layer
then keeps only its window). A short job keeps every token in every layer group, so the count
here is per group, in blocks, as vLLM's scheduler allocates them. No vLLM import: arithmetic on
the settings, the tokenizer and what the engine core reports (``EngineCore.get_kv_cache_group_metadata``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from medgemma.request import parse_job_input
from medgemma.settings import Settings
from medgemma.structured import MAX_SCHEMA_CHARS
from medgemma.tokens import PromptBuilder

#: The most tokens one character of text can become: a byte-fallback tokenizer (Gemma's) spells a
#: character outside its vocabulary as its UTF-8 bytes, at most 4, and merges only lower the count.
MAX_TOKENS_PER_CHAR = 4

SLIDING_KINDS = frozenset({"sliding_window", "sliding_window_mla", "chunked_local_attention"})


def blocks_per_job(group: Mapping[str, Any], job_tokens: int) -> int:
    """The blocks one job of ``job_tokens`` holds at most in one KV group.

    Follows ``SlidingWindowSpec.max_admission_blocks_per_request`` in vllm/v1/kv_cache_interface.py:
    a sliding-window group holds its window and the tokens in flight, which for a job whose prompt
    is prefilled in one step is the whole job, plus one block for a window that does not start on
    a block boundary. (An upper bound for jobs much longer than the window.)
    """
    blocks = -(-job_tokens // int(group["block_size"]))
    return blocks + 1 if group["kind"] in SLIDING_KINDS else blocks


def jobs_held(num_blocks: int, groups: Sequence[Mapping[str, Any]], job_tokens: int) -> int:
    """How many jobs of ``job_tokens`` fit in vLLM's ``num_blocks`` shared by all ``groups`` at once."""
    per_job = sum(blocks_per_job(group, job_tokens) for group in groups)
    return num_blocks // per_job if per_job else 0


def longest_job_tokens(text_chars: int, markup_tokens: int, images: int, image_tokens: int, answer_tokens: int) -> int:
    """The most tokens a job can hold: ``text_chars`` of the caller's text at their worst tokenization,
    the prompt's own tokens around it, every image, and the longest answer."""
    return MAX_TOKENS_PER_CHAR * text_chars + markup_tokens + images * image_tokens + answer_tokens


def longest_job(settings: Settings, config: Any, tokenizer: Any, processor: Any, image_tokens: int) -> int:
    """``MAX_MODEL_LEN``'s default: the longest job these settings accept, at most the model's context.

    Its text: ``MAX_INPUT_CHARS`` (a note and its system prompt, or a conversation) and a caller's
    JSON schema, which is copied into the prompt. Its markup: a JSON summary job's prompt around a
    one-character note (the longest built-in system prompt and answer format, the chat template),
    and the chat markup of ``MAX_MESSAGES`` - 1 more turns.
    """
    one_character = parse_job_input({"text": "x", "format": "json"}, replace(settings, dummy_image=False), vision=False)
    builder = PromptBuilder(tokenizer, (processor or tokenizer).chat_template, None)
    markup = len(builder.build(one_character.messages()).ids) - 1
    turn = [{"role": "user", "content": [{"type": "text", "text": "x"}]}]
    two_more = [*turn, {"role": "assistant", "content": turn[0]["content"]}, *turn]
    per_turn = (len(builder.build(two_more).ids) - len(builder.build(turn).ids) - 2) / 2  # less their "x"s
    markup += int((settings.max_messages - 1) * per_turn + 0.5)
    text_chars = settings.max_input_chars + MAX_SCHEMA_CHARS
    bound = longest_job_tokens(text_chars, markup, settings.max_images, image_tokens, settings.max_new_tokens_cap)
    return min(int(config.get_text_config().max_position_embeddings), bound)
