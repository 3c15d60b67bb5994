"""Native ``messages`` jobs: chat turns validated like ``text`` jobs, rendered by the same prompt builder."""

from __future__ import annotations

import pytest
from PIL import Image

from medgemma.errors import InputError
from medgemma.images import encode_image
from medgemma.prompts import SYSTEM_PROMPTS
from medgemma.request import TEXT_ONLY_PROBLEM, parse_job_input
from medgemma.settings import Settings

SETTINGS = Settings.from_env({"MAX_INPUT_CHARS": "100", "MAX_IMAGES": "2", "DUMMY_IMAGE": "false"})
PNG = encode_image(Image.new("RGB", (8, 8), "red"))
DATA_URL = "data:image/png;base64," + encode_image(Image.new("RGB", (8, 8), "blue"))


def user(content) -> dict:
    return {"role": "user", "content": content}


def parse(messages, settings: Settings = SETTINGS, **fields):
    return parse_job_input({"messages": messages, **fields}, settings)


def test_turns_become_the_prompt_builders_messages():
    request = parse(
        [
            {"role": "system", "content": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Cite."}]},
            user([{"type": "image_url", "image_url": {"url": DATA_URL}}, {"type": "text", "text": "What is this?"}]),
            {"role": "assistant", "content": "A square."},
            user([{"type": "text", "text": "And this?"}, {"type": "image", "image": PNG}]),
        ]
    )
    assert request.system_prompt == "Be brief.\n\nCite." and request.input_field == "messages"
    roles = [(m["role"], [p["type"] for p in m["content"]]) for m in request.messages()]
    assert roles == [
        ("system", ["text"]),
        ("user", ["image", "text"]),
        ("assistant", ["text"]),
        ("user", ["text", "image"]),
    ]
    first, second = request.images
    assert first.getpixel((0, 0)) == (0, 0, 255) and second.getpixel((0, 0)) == (255, 0, 0)  # in order
    assert request.messages()[1]["content"][0]["image"] is first


def test_the_mode_or_system_prompt_applies_unless_a_system_turn_is_given():
    assert parse([user("q")]).system_prompt == SYSTEM_PROMPTS["summarize"]
    assert parse([user("q")], mode="general").system_prompt == SYSTEM_PROMPTS["general"]
    assert parse([user("q")], system_prompt="Mine.").system_prompt == "Mine."
    own = [{"role": "system", "content": "Ours."}, user("q")]
    assert parse(own, mode="general", system_prompt="Mine.").system_prompt == "Ours."
    # The OpenAI route: no system turn means none at all.
    assert parse_job_input({"messages": [user("q")]}, SETTINGS, mode_prompts=False).messages()[0]["role"] == "user"


def test_the_dummy_image_goes_first_in_the_first_user_turn():
    request = parse([user("q"), {"role": "assistant", "content": "a"}, user("r")], Settings.from_env({}))
    assert request.used_dummy_image and len(request.images) == 1
    assert [p["type"] for p in request.messages()[1]["content"]] == ["image", "text"]
    assert [p["type"] for p in request.messages()[3]["content"]] == ["text"]


def test_sampling_stream_and_stop_are_the_same_fields_as_for_text():
    request = parse([user("q")], max_tokens=7, temperature=0.5, top_p=0.9, seed=1, stream=True, stop="END")
    assert (request.max_new_tokens, request.temperature, request.top_p, request.seed) == (7, 0.5, 0.9, 1)
    assert request.stream and request.stop == ("END",)
    assert parse([user("q")], stop=["a", "b", "a"]).stop == ("a", "b")
    text_job = parse_job_input({"text": "q", "max_tokens": 7}, SETTINGS)
    assert parse([user("q")], max_tokens=7).sampling_key == text_job.sampling_key  # they batch together


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"messages": "hi"}, "messages: must be a list of messages, got str"),
        ({"messages": []}, "messages: must not be empty"),
        ({"messages": [user("q")], "text": "q"}, "text: give either text or messages"),
        ({"messages": [user("q")], "image": PNG}, "image: a messages job carries its images in the messages"),
        ({"messages": ["hi"]}, r"messages\[0\]: must be an object with role and content, got str"),
        ({"messages": [{"role": "user", "content": "q", "name": "x"}]}, r"messages\[0\]\.name: is not supported"),
        ({"messages": [{"role": "tool", "content": "q"}]}, r"messages\[0\]\.role: must be system, user or assistant"),
        ({"messages": [{"role": "user"}]}, r"messages\[0\]\.content: must be a string or a list"),
        ({"messages": [user("  ")]}, r"messages\[0\]\.content: must not be empty"),
        ({"messages": [user([])]}, r"messages\[0\]\.content: must not be empty"),
        ({"messages": [user(["q"])]}, r"messages\[0\]\.content\[0\]: must be a content part object"),
        ({"messages": [user([{"type": "audio"}])]}, r"messages\[0\]\.content\[0\]\.type: must be text, image_url"),
        ({"messages": [user([{"type": "text", "text": 1}])]}, r"messages\[0\]\.content\[0\]\.text: must be a string"),
        ({"messages": [user([{"type": "text", "text": "q", "x": 1}])]}, r"content\[0\]\.x: is not supported"),
        (
            {"messages": [user([{"type": "image_url", "image_url": {"url": PNG, "detail": "high"}}])]},
            r"messages\[0\]\.content\[0\]\.image_url\.detail: only auto is supported",
        ),
        (
            {"messages": [user([{"type": "image_url", "image_url": {}}])]},
            r"messages\[0\]\.content\[0\]\.image_url: must be a base64 string, data URL or https:// URL",
        ),
        (
            {"messages": [user("q"), user([{"type": "text", "text": "r"}, {"type": "image", "image": "bad!"}])]},
            r"messages\[1\]\.role: must be assistant",
        ),
        (
            {"messages": [user([{"type": "text", "text": "r"}, {"type": "image", "image": "bad!"}])]},
            r"messages\[0\]\.content\[1\]\.image: is not valid base64",
        ),
        ({"messages": [{"role": "assistant", "content": "a"}]}, r"messages\[0\]\.role: must be user"),
        ({"messages": [user("q"), {"role": "assistant", "content": "a"}]}, "messages: must end with a user message"),
        ({"messages": [user("q"), {"role": "system", "content": "s"}]}, r"messages\[1\]\.role: a system message must"),
        (
            {"messages": [{"role": "system", "content": [{"type": "image", "image": PNG}]}, user("q")]},
            r"messages\[0\]\.content: a system message holds text only",
        ),
        (
            {
                "messages": [
                    user("q"),
                    {"role": "assistant", "content": [{"type": "image", "image": PNG}]},
                    user("r"),
                ]
            },
            r"messages\[1\]\.content\[0\]\.image: an assistant message holds text only",
        ),
        ({"messages": [user("x" * 60), {"role": "assistant", "content": "y" * 41}, user("z")]}, "messages: has 102"),
        (
            {"messages": [user([{"type": "image", "image": PNG}] * 3)]},
            "messages: has 3 images, over the limit of 2",
        ),
        ({"messages": [user("q")], "stop": ["a"] * 5}, "stop: has 5 strings, over the limit of 4"),
        ({"messages": [user("q")], "stop": [""]}, "stop: each stop string must have 1 to 100 characters"),
        ({"messages": [user("q")], "stop": 3}, "stop: must be a string or a list of up to 4 strings"),
        ({"messages": [user("q")], "max_new_tokens": 0}, "max_new_tokens: must be between 1"),
    ],
)
def test_bad_messages_name_the_path(fields, message):
    with pytest.raises(InputError, match=message):
        parse_job_input(fields, SETTINGS)


def test_a_text_only_model_refuses_image_parts_before_fetching_any():
    url = "https://images.invalid/x.png"  # never fetched: the refusal comes first
    messages = [user([{"type": "text", "text": "q"}, {"type": "image_url", "image_url": {"url": url}}])]
    with pytest.raises(InputError, match=r"messages\[0\]\.content\[1\]\.image_url: " + TEXT_ONLY_PROBLEM):
        parse_job_input({"messages": messages}, SETTINGS, vision=False)
    assert parse_job_input({"messages": [user("q")]}, Settings.from_env({}), vision=False).images == []


def test_too_many_images_are_refused_before_any_is_fetched():
    url = {"type": "image_url", "image_url": "https://images.invalid/x.png"}  # the string form, as vLLM takes it
    with pytest.raises(InputError, match="messages: has 3 images"):
        parse_job_input({"messages": [user([url, url, url])]}, SETTINGS)


# -- jobs on the stand-in ----------------------------------------------------------------


@pytest.mark.model
def test_a_messages_job_answers_like_a_text_job(worker):
    import handler
    from tests.conftest import run

    messages = [
        {"role": "system", "content": "Answer in one line."},
        user("SYNTHETIC. What is the first-line treatment of uncomplicated cystitis?"),
        {"role": "assistant", "content": "Nitrofurantoin."},
        user("For how long?"),
    ]
    result = run(handler.handler({"id": "m", "input": {"messages": messages, "max_new_tokens": 4}}))
    text_job = run(handler.handler({"id": "t", "input": {"text": "For how long?", "max_new_tokens": 4}}))
    assert "error" not in result, result
    assert set(result) == set(text_job) and result["output"].strip()
    assert result["usage"]["prompt_tokens"] > 0 and 0 < result["usage"]["completion_tokens"] <= 4
    assert result["used_dummy_image"] is (worker.settings.dummy_image and worker.engine.info.vision)


@pytest.mark.model
def test_a_conversation_over_the_context_names_messages(worker):
    import handler
    from tests.conftest import run

    long_text = "1234567890" * 4_000  # ~40k tokens (Gemma splits digits), under the character limit
    result = run(handler.handler({"id": "long", "input": {"messages": [user(long_text)]}}))
    assert result["error"].startswith("messages: the prompt is ")
    assert "shorten the messages or lower max_new_tokens" in result["error"]


@pytest.mark.model
def test_messages_and_text_jobs_share_a_batch(transformers_worker):
    import asyncio
    from dataclasses import replace

    from medgemma.engines.batching import BatchEngine
    from medgemma.worker import Worker
    from tests.conftest import run

    engine = BatchEngine(transformers_worker.engine.backend, max_batch_size=8, batch_wait_seconds=1.0)
    batching = Worker(replace(transformers_worker.settings, dummy_image=False), engine)
    inputs = [
        {"text": "SYNTHETIC. Potassium 6.1. What next?", "max_new_tokens": 3},
        {
            "messages": [user("Hi"), {"role": "assistant", "content": "Hello."}, user("Define AKI.")],
            "max_new_tokens": 3,
        },
    ]

    async def together():
        return await asyncio.gather(*(batching.run({"id": f"b{i}", "input": data}) for i, data in enumerate(inputs)))

    try:
        batched = run(together())
        assert [result["batch_size"] for result in batched] == [2, 2]
        for data, result in zip(inputs, batched, strict=True):
            alone = run(Worker(batching.settings, transformers_worker.engine).run({"id": "alone", "input": data}))
            assert result["output"] == alone["output"] and result["usage"] == alone["usage"]
    finally:
        engine.close()


# -- the conversation's size, refused before any part is read ------------------------------


def test_many_empty_parts_are_refused_by_the_limit_before_any_is_read():
    """20,000 empty parts took 0.64 s to validate and prepare, and held the prompt lock meanwhile."""
    import time

    parts = [{"type": "text", "text": ""}] * 20_000 + [{"type": "text", "text": "q"}]
    started = time.perf_counter()
    with pytest.raises(InputError, match=r"^messages\[0\]\.content: has 20001 parts, over the limit of 64$"):
        parse([user(parts)], Settings.from_env({}))
    assert time.perf_counter() - started < 0.05


@pytest.mark.parametrize(
    ("env", "messages", "message"),
    [
        (
            {"MAX_MESSAGES": "3"},
            [user("q"), {"role": "assistant", "content": "a"}] * 2 + [user("q")],
            "messages: has 5 messages, over the limit of 3",
        ),
        (
            {"MAX_PARTS_PER_MESSAGE": "2"},
            [user("q"), {"role": "assistant", "content": [{"type": "text", "text": ""}] * 3}, user("q")],
            r"messages\[1\]\.content: has 3 parts, over the limit of 2",
        ),
        (
            {"MAX_PARTS": "4"},
            [
                user([{"type": "text", "text": "q"}] * 2),
                {"role": "assistant", "content": "a"},
                user([{"type": "text", "text": ""}] * 2),
            ],
            r"messages: has 5 content parts \(empty ones count\), over the limit of 4",
        ),
    ],
)
def test_the_conversations_size_limits_name_the_field_and_the_limit(env, messages, message):
    with pytest.raises(InputError, match=f"^{message}$"):
        parse(messages, Settings.from_env({"DUMMY_IMAGE": "false", **env}))


def test_size_limits_come_before_any_image_is_fetched():
    url = {"type": "image_url", "image_url": "https://images.invalid/x.png"}  # never fetched
    with pytest.raises(InputError, match="over the limit of 2"):
        parse([user([url, url, url])], Settings.from_env({"MAX_PARTS": "2", "DUMMY_IMAGE": "false"}))


def test_a_conversation_at_every_limit_is_accepted():
    settings = Settings.from_env({"DUMMY_IMAGE": "false"})
    full = [{"type": "text", "text": ""}] * (settings.max_parts_per_message - 1) + [{"type": "text", "text": "q"}]
    turns = [{"role": "system", "content": full}] + [
        {"role": "user" if index % 2 == 0 else "assistant", "content": full} for index in range(7)
    ]
    assert sum(len(turn["content"]) for turn in turns) == settings.max_parts
    assert len(parse(turns, settings).messages()) == 8
