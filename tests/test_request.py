"""Job input validation: every mistake is one clear error naming the field and the limit."""

import pytest
from PIL import Image

from medgemma.errors import InputError
from medgemma.images import encode_image
from medgemma.prompts import SYSTEM_PROMPTS
from medgemma.request import parse_job_input
from medgemma.settings import Settings

SETTINGS = Settings.from_env(
    {"MAX_INPUT_CHARS": "1000", "MAX_IMAGES": "2", "MAX_NEW_TOKENS": "128", "MAX_NEW_TOKENS_CAP": "256"}
)
PNG = encode_image(Image.new("RGB", (8, 8)))


def test_minimal_job_defaults_to_summarize_greedy_with_dummy_image():
    request = parse_job_input({"text": "note"}, SETTINGS)
    assert request.mode == "summarize" and request.system_prompt == SYSTEM_PROMPTS["summarize"]
    assert request.temperature is None and request.max_new_tokens == SETTINGS.max_new_tokens
    assert request.used_dummy_image and len(request.images) == 1


def test_dummy_image_off_sends_text_only():
    request = parse_job_input({"text": "note"}, Settings.from_env({"DUMMY_IMAGE": "false"}))
    assert request.images == [] and not request.used_dummy_image
    assert [part["type"] for part in request.messages()[1]["content"]] == ["text"]


def test_aliases_and_all_fields():
    request = parse_job_input(
        {
            "text": "q",
            "mode": "general",
            "custom_prompt": "Be brief.",
            "max_tokens": 64,
            "temperature": 0.7,
            "top_p": 0.9,
            "seed": 3,
            "images": [PNG, "data:image/png;base64," + PNG],
            "stream": True,
        },
        SETTINGS,
    )
    assert request.system_prompt == "Be brief." and request.max_new_tokens == 64
    assert request.temperature and request.top_p == 0.9 and request.seed == 3 and request.stream
    assert len(request.images) == 2 and not request.used_dummy_image
    messages = request.messages()
    assert messages[0]["role"] == "system" and [p["type"] for p in messages[1]["content"]] == ["image", "image", "text"]


def test_jobs_with_equal_sampling_settings_share_a_batch_key():
    a = parse_job_input({"text": "a"}, SETTINGS)
    b = parse_job_input({"text": "b", "mode": "general"}, SETTINGS)
    c = parse_job_input({"text": "c", "temperature": 0.5}, SETTINGS)
    assert a.sampling_key == b.sampling_key != c.sampling_key


@pytest.mark.parametrize(
    ("job", "message"),
    [
        ("text", "input: must be a JSON object"),
        ({}, "text: is required"),
        ({"text": "   "}, "text: is required"),
        ({"text": 5}, "text: must be a string, got int"),
        ({"text": "x" * 1001}, "text: is 1001 characters, over the limit of 1000"),
        ({"text": "x", "mode": "triage"}, "mode: must be one of summarize, general"),
        ({"text": "x", "prompt": "hi"}, "prompt: is not a known field"),
        ({"text": "x", "max_new_tokens": 0}, "max_new_tokens: must be between 1 and 256"),
        ({"text": "x", "max_tokens": 257}, "max_new_tokens: must be between 1 and 256"),
        ({"text": "x", "max_new_tokens": "12"}, "max_new_tokens: must be an integer, got str"),
        ({"text": "x", "max_new_tokens": True}, "max_new_tokens: must be an integer, got bool"),
        ({"text": "x", "max_tokens": 5, "max_new_tokens": 5}, "max_tokens: is an alias of max_new_tokens"),
        ({"text": "x", "temperature": 3}, "temperature: must be between 0.0 and 2.0"),
        ({"text": "x", "temperature": "hot"}, "temperature: must be a number"),
        ({"text": "x", "top_p": 0.9}, "top_p: .* only applies when sampling"),
        ({"text": "x", "seed": -1}, "seed: must be between 0 and"),
        ({"text": "x", "system_prompt": ""}, "system_prompt: must not be empty"),
        (
            {"text": "x" * 600, "system_prompt": "y" * 401},
            "system_prompt: and the text are 1001 characters, over the limit",
        ),
        ({"text": "x", "stream": "yes"}, "stream: must be true or false"),
        ({"text": "x", "image": PNG, "images": [PNG]}, "image: give either image or images"),
        ({"text": "x", "images": PNG}, "images: must be a list"),
        ({"text": "x", "images": [PNG, PNG, PNG]}, "images: has 3 images, over the limit of 2"),
        ({"text": "x", "images": [PNG, "bad!"]}, r"images\[1\]: is not valid base64"),
    ],
)
def test_bad_input_names_the_field(job, message):
    with pytest.raises(InputError, match=message):
        parse_job_input(job, SETTINGS)
