"""The official ``openai`` SDK against the worker, through the RunPod API double's ``/openai/v1`` route.

Nobody here wrote the client: it is the ``openai`` package, pointed at the double exactly as
at ``https://api.runpod.ai/v2/<endpoint_id>/openai/v1``. The double forwards each request to
the real handler on the stand-in (each engine in turn), as RunPod forwards it to a worker.
Every response is validated with the package's own types.
"""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from openai.types import Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from PIL import Image
from runpod_double import RunPodDouble

import handler
from medgemma.images import encode_image
from medgemma.openai_api import served_model_id

pytestmark = pytest.mark.model

QUESTION = "SYNTHETIC. 64-year-old with fever, cough and right basal crackles. What is the likely diagnosis?"
MESSAGES = [
    {"role": "system", "content": "You are a concise clinical assistant."},
    {"role": "user", "content": QUESTION},
]
SMALL = {"max_tokens": 4}  # cheap: behaviour, not wording, is tested


def connect(double: RunPodDouble) -> openai.OpenAI:
    """The SDK as a RunPod user configures it; no retries (the double answers at once), no proxies."""
    return openai.OpenAI(
        api_key=double.api_key,
        base_url=f"{double.base_url}/{double.endpoint_id}/openai/v1",
        max_retries=0,
        http_client=openai.DefaultHttpx2Client(trust_env=False),
    )


@pytest.fixture
def sdk(worker) -> Iterator[openai.OpenAI]:
    """The SDK against a worker started with STREAMING=true (the generator handler)."""
    with RunPodDouble(handler=handler.stream_handler) as double, connect(double) as client:
        yield client


@pytest.fixture
def plain_sdk(worker) -> Iterator[openai.OpenAI]:
    """The SDK against a worker with the default plain handler."""
    with RunPodDouble(handler=handler.handler) as double, connect(double) as client:
        yield client


def raw_completion(client: openai.OpenAI, **params) -> ChatCompletion:
    """``create`` as the SDK sends it, with the answer validated from the wire (the SDK itself doesn't)."""
    raw = client.chat.completions.with_raw_response.create(**params)
    return ChatCompletion.model_validate(raw.http_response.json())


def test_models_list_names_the_served_model(sdk, worker):
    served = served_model_id(worker.settings)
    models = list(sdk.models.list())
    assert [model.id for model in models] == [served]
    assert all(Model.model_validate(model.to_dict()) for model in models)
    assert Model.model_validate(sdk.models.retrieve("medgemma").to_dict()).id == served
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        sdk.models.retrieve("gpt-4o")


@pytest.mark.parametrize("client_name", ["plain_sdk", "sdk"])
def test_a_plain_completion(request, client_name, worker):
    client = request.getfixturevalue(client_name)
    completion = raw_completion(client, model="medgemma", messages=MESSAGES, **SMALL)
    assert completion.object == "chat.completion" and completion.model == served_model_id(worker.settings)
    assert completion.id.startswith("chatcmpl-") and completion.created > 0
    (choice,) = completion.choices
    assert choice.message.role == "assistant" and choice.message.content and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    usage = completion.usage
    assert usage and usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 4
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_a_streamed_completion_adds_up_to_the_plain_one(sdk, worker):
    plain = raw_completion(sdk, model=served_model_id(worker.settings), messages=MESSAGES, **SMALL)
    chunks = list(
        sdk.chat.completions.create(
            model="medgemma", messages=MESSAGES, stream=True, stream_options={"include_usage": True}, **SMALL
        )
    )
    assert len(chunks) >= 2
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk.to_dict())
        assert chunk.object == "chat.completion.chunk" and chunk.id == chunks[0].id
    assert chunks[0].choices[0].delta.role == "assistant"
    *deltas, last = chunks
    assert all(chunk.choices[0].finish_reason is None and chunk.usage is None for chunk in deltas)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == plain.choices[0].message.content
    assert last.choices[0].finish_reason == plain.choices[0].finish_reason
    assert last.usage == plain.usage


def test_an_image_as_a_data_url(sdk, worker):
    red = "data:image/png;base64," + encode_image(Image.new("RGB", (32, 24), "red"))
    blue = "data:image/png;base64," + encode_image(Image.new("RGB", (24, 32), "blue"))

    def ask(*images: str) -> ChatCompletion:
        parts = [{"type": "image_url", "image_url": {"url": url}} for url in images]
        content = [{"type": "text", "text": "Describe the image."}, *parts]
        return raw_completion(sdk, model="medgemma", messages=[{"role": "user", "content": content}], **SMALL)

    one, two = ask(red), ask(red, blue)
    assert one.choices[0].message.content and two.choices[0].message.content
    assert two.usage.prompt_tokens > one.usage.prompt_tokens  # the second image's tokens


def test_a_multi_turn_conversation(sdk):
    first = raw_completion(sdk, model="medgemma", messages=MESSAGES, **SMALL)
    follow_up = [
        *MESSAGES,
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": [{"type": "text", "text": "Which antibiotic would you start?"}]},
    ]
    second = raw_completion(sdk, model="medgemma", messages=follow_up, **SMALL)
    assert second.choices[0].message.content
    assert second.usage.prompt_tokens > first.usage.prompt_tokens + first.usage.completion_tokens


def test_a_stop_string_ends_the_answer(sdk):
    plain = raw_completion(sdk, model="medgemma", messages=MESSAGES, max_tokens=8)
    answer = plain.choices[0].message.content
    stop = answer.split()[-1]  # a word the greedy answer reaches
    stopped = raw_completion(sdk, model="medgemma", messages=MESSAGES, max_tokens=8, stop=[stop, "\u2603"])
    assert stopped.choices[0].finish_reason == "stop"
    assert answer.startswith(stopped.choices[0].message.content) and stop not in stopped.choices[0].message.content
    assert stopped.usage.completion_tokens <= plain.usage.completion_tokens


@pytest.mark.parametrize(
    ("params", "error", "param", "message"),
    [
        ({"n": 2}, openai.BadRequestError, "n", "n: only n=1 is supported"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, openai.BadRequestError, "tools", "tools: tool"),
        ({"logprobs": True}, openai.BadRequestError, "logprobs", "logprobs: log probabilities are not returned"),
        ({"presence_penalty": 0.5}, openai.BadRequestError, "presence_penalty", "penalties are not supported"),
        ({"extra_body": {"colour": "blue"}}, openai.BadRequestError, "colour", "colour: is not a chat completions"),
        ({"max_tokens": 100_000}, openai.BadRequestError, "max_tokens", "max_tokens: must be between 1 and"),
        ({"model": "gpt-4o"}, openai.NotFoundError, "model", "model: the model 'gpt-4o' does not exist"),
        (
            {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
            openai.BadRequestError,
            "messages[1].role",
            "must be assistant: messages alternate user and assistant",
        ),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_a_bad_parameter_is_an_openai_error_naming_it(sdk, params, error, param, message, stream):
    request = {"model": "medgemma", "messages": MESSAGES, "max_tokens": 4, "stream": stream, **params}
    with pytest.raises(error) as refused:
        result = sdk.chat.completions.create(**request)
        list(result) if stream else None
    assert refused.value.param == param
    assert message in refused.value.message
    assert sdk.models.list().data  # the worker keeps serving


def test_a_neutral_value_of_an_unsupported_parameter_is_accepted(sdk):
    neutral = {
        "n": 1,
        "presence_penalty": 0.0,
        "frequency_penalty": 0,
        "logprobs": False,
        "response_format": {"type": "text"},
    }
    assert raw_completion(sdk, model="medgemma", messages=MESSAGES, **SMALL, **neutral).choices


def test_stream_on_a_plain_worker_is_refused_clearly(plain_sdk):
    with pytest.raises(openai.BadRequestError, match="stream: this worker was started without STREAMING=true"):
        list(plain_sdk.chat.completions.create(model="medgemma", messages=MESSAGES, stream=True, **SMALL))
