"""What vLLM is sized for: MAX_MODEL_LEN's default (the longest job accepted) and MAX_CONCURRENCY's
(typical jobs held by the KV cache, counted per layer group)."""

import copy
from dataclasses import replace

import pytest
from PIL import Image

from bench.kv_table import MAX_MODEL_LEN_DEFAULT
from bench.medgemma_shapes import build_config
from medgemma.engines.capacity import blocks_per_job, jobs_held, longest_job, longest_job_tokens
from medgemma.errors import SettingsError
from medgemma.images import encode_image
from medgemma.request import parse_job_input
from medgemma.settings import DEFAULT_MAX_NEW_TOKENS, DEFAULT_TYPICAL_PROMPT_TOKENS, Settings
from medgemma.structured import MAX_SCHEMA_CHARS

PNG = encode_image(Image.new("RGB", (8, 8)))

FULL = {"kind": "full_attention", "block_size": 128, "sliding_window": None}
SLIDING = {"kind": "sliding_window", "block_size": 128, "sliding_window": 512}


def test_a_full_attention_group_holds_the_job_in_whole_blocks():
    assert [blocks_per_job(FULL, tokens) for tokens in (1, 128, 129, 1300)] == [1, 1, 2, 11]


def test_a_sliding_window_group_holds_one_more_block_for_an_unaligned_window():
    assert [blocks_per_job(SLIDING, tokens) for tokens in (1, 128, 1300)] == [2, 2, 12]


def test_the_pool_is_shared_by_every_group_of_a_job():
    groups = [FULL, *[SLIDING] * 5]  # Gemma 3's pattern: one global layer group, five sliding ones
    assert jobs_held(1000, groups, 1300) == 1000 // (11 + 5 * 12)
    assert jobs_held(70, groups, 1300) == 0  # less than one job: the caller keeps at least 1
    assert jobs_held(1000, [], 1300) == 0


def test_a_typical_job_is_its_prompt_the_dummy_image_and_its_answer():
    settings = Settings.from_env({})
    assert settings.typical_prompt_tokens == DEFAULT_TYPICAL_PROMPT_TOKENS
    assert settings.typical_job_tokens(259) == DEFAULT_TYPICAL_PROMPT_TOKENS + 259 + DEFAULT_MAX_NEW_TOKENS
    no_dummy = Settings.from_env({"DUMMY_IMAGE": "false", "TYPICAL_PROMPT_TOKENS": "2000", "MAX_NEW_TOKENS": "100"})
    assert no_dummy.typical_job_tokens(259) == 2100


def test_a_bad_typical_prompt_is_refused_naming_the_variable():
    with pytest.raises(SettingsError, match="TYPICAL_PROMPT_TOKENS"):
        Settings.from_env({"TYPICAL_PROMPT_TOKENS": "0"})


def test_the_longest_job_is_its_text_at_four_tokens_a_character_markup_images_and_answer():
    assert longest_job_tokens(100, 170, 2, 260, 64) == 400 + 170 + 520 + 64


#: Outside Gemma 3's vocabulary: spelled as its 4 UTF-8 bytes, the most tokens a character can cost.
RARE = "\U00020000"


@pytest.mark.model
def test_max_model_len_defaults_to_the_longest_job_the_settings_accept(transformers_worker):
    """The worst job these settings let through (every limit at its most, every character 4 tokens) fits."""
    backend = transformers_worker.engine.backend
    config, tokenizer, processor = backend.model.config, backend.tokenizer, backend.processor
    image_tokens = len(tokenizer(processor.full_image_sequence, add_special_tokens=False).input_ids)
    context = config.get_text_config().max_position_embeddings
    assert longest_job(Settings.from_env({}), config, tokenizer, processor, image_tokens) == context  # 4 x 216k chars
    medgemma = build_config(tiny=False)  # MedGemma's context, as bench.kv_table's GPU table assumes it
    assert longest_job(Settings.from_env({}), medgemma, tokenizer, processor, image_tokens) == MAX_MODEL_LEN_DEFAULT

    limits = {"MAX_INPUT_CHARS": "100", "MAX_IMAGES": "2", "MAX_NEW_TOKENS_CAP": "64", "MAX_NEW_TOKENS": "12"}
    limits["MAX_MESSAGES"] = "1"  # a text job: no more turns (the conversation's test is below)
    settings = Settings.from_env(limits)
    assert longest_job(settings, config, tokenizer, processor, image_tokens) == context  # the schema alone: 65k tokens
    roomy = copy.deepcopy(config)
    roomy.get_text_config().max_position_embeddings = 10**7  # the bound itself, uncapped
    bound = longest_job(settings, roomy, tokenizer, processor, image_tokens)
    description = RARE * (MAX_SCHEMA_CHARS - 100)
    schema = {"type": "object", "properties": {"a": {"type": "string", "description": description}}}
    worst = parse_job_input(
        {"text": RARE * 60, "system_prompt": RARE * 40, "json_schema": schema, "images": [PNG, PNG], "max_tokens": 64},
        settings,
    )
    prompt_tokens = len(backend.prompts.build(worst.messages()).ids)
    assert prompt_tokens + 64 <= bound
    assert bound - (prompt_tokens + 64) < 0.01 * bound  # a bound, not a guess


@pytest.mark.model
def test_the_longest_conversation_fits_too(transformers_worker):
    """MAX_MESSAGES one-character turns: every turn's chat markup is in the bound."""
    backend = transformers_worker.engine.backend
    config, tokenizer, processor = backend.model.config, backend.tokenizer, backend.processor
    limits = {"MAX_INPUT_CHARS": "100", "MAX_MESSAGES": "99", "MAX_IMAGES": "1", "MAX_NEW_TOKENS_CAP": "64"}
    settings = Settings.from_env({**limits, "MAX_NEW_TOKENS": "12"})
    roomy = copy.deepcopy(config)
    roomy.get_text_config().max_position_embeddings = 10**7
    bound = longest_job(settings, roomy, tokenizer, processor, 0)
    turns = [{"role": ("user", "assistant")[k % 2], "content": RARE} for k in range(99)]
    conversation = parse_job_input({"messages": turns, "max_tokens": 64}, replace(settings, dummy_image=False))
    assert len(backend.prompts.build(conversation.messages()).ids) + 64 <= bound
