"""``response_format`` on the OpenAI route, through the official ``openai`` SDK and the RunPod double.

JSON answers on the stand-in (a base model: only the grammar makes them JSON). The SDK's own
``parse`` sends a pydantic model as a strict ``json_schema`` and parses the answer itself.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Literal

import jsonschema
import openai
import pydantic
import pytest
from runpod_double import RunPodDouble

import handler
from medgemma.openai_api import SCHEMA_PARAM
from medgemma.request import STOP_WITH_JSON_PROBLEM
from tests.test_openai_client import MESSAGES, connect, raw_completion
from tests.test_structured_jobs import ENUMS

pytestmark = pytest.mark.model

SCHEMA = ENUMS  # the native JSON jobs' triage schema, here through response_format
AS_SCHEMA = {"type": "json_schema", "json_schema": {"name": "triage", "schema": SCHEMA, "strict": True}}
BUDGET = {"max_tokens": 40}
#: Any-object answers can run on (the stand-in likes long numbers); this one closes early.
YES_NO = 'Is aspirin an NSAID? Reply as JSON: {"answer": "yes"} or {"answer": "no"}.'  # the objects here close well within it


class Triage(pydantic.BaseModel):
    severity: Literal["mild", "moderate", "severe"]
    admitted: bool


@pytest.fixture
def sdk(worker) -> Iterator[openai.OpenAI]:
    with RunPodDouble(handler=handler.stream_handler) as double, connect(double) as client:
        yield client


def test_a_json_schema_answer_parses_and_fits_the_schema(sdk):
    completion = raw_completion(sdk, model="medgemma", messages=MESSAGES, response_format=AS_SCHEMA, **BUDGET)
    (choice,) = completion.choices
    assert choice.finish_reason == "stop"
    jsonschema.validate(json.loads(choice.message.content), SCHEMA)


def test_the_sdks_parse_with_a_pydantic_model(sdk):
    completion = sdk.chat.completions.parse(model="medgemma", messages=MESSAGES, response_format=Triage, **BUDGET)
    (choice,) = completion.choices
    assert choice.finish_reason == "stop" and isinstance(choice.message.parsed, Triage)
    assert choice.message.parsed == Triage.model_validate_json(choice.message.content)


def test_a_json_object_answer_is_one_object(sdk):
    question = [{"role": "user", "content": YES_NO}]
    completion = raw_completion(
        sdk, model="medgemma", messages=question, response_format={"type": "json_object"}, **BUDGET
    )
    (choice,) = completion.choices
    assert choice.finish_reason == "stop"
    assert isinstance(json.loads(choice.message.content), dict)


def test_a_streamed_json_answer_adds_up_to_the_plain_one(sdk):
    plain = raw_completion(sdk, model="medgemma", messages=MESSAGES, response_format=AS_SCHEMA, **BUDGET)
    chunks = list(
        sdk.chat.completions.create(
            model="medgemma", messages=MESSAGES, response_format=AS_SCHEMA, stream=True, **BUDGET
        )
    )
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == plain.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_a_cut_off_json_answer_is_length(sdk):
    completion = raw_completion(sdk, model="medgemma", messages=MESSAGES, response_format=AS_SCHEMA, max_tokens=4)
    (choice,) = completion.choices
    assert choice.finish_reason == "length" and choice.message.content.startswith("{")
    with pytest.raises(ValueError):
        json.loads(choice.message.content)


def _schema(schema: object, **extra: object) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "t", "schema": schema, **extra}}


@pytest.mark.parametrize(
    ("params", "param", "message"),
    [
        (
            {
                "response_format": _schema(
                    {"type": "object", "properties": {"t": {"type": "array", "uniqueItems": True}}}
                )
            },
            SCHEMA_PARAM,
            "uniqueItems is not supported",
        ),
        (
            {
                "response_format": _schema(
                    {"type": "object", "properties": {"t": {"type": "string", "pattern": "(?=a)a"}}}
                )
            },
            SCHEMA_PARAM,
            "a pattern is not a regular expression the grammar supports",
        ),
        ({"response_format": _schema({"type": "array"})}, SCHEMA_PARAM, "must describe an object at its root"),
        ({"response_format": _schema(None)}, SCHEMA_PARAM, "is required"),
        ({"response_format": _schema(SCHEMA, strict="yes")}, "response_format.json_schema.strict", "true or false"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": SCHEMA}}},
            "response_format.json_schema.name",
            "is required",
        ),
        ({"response_format": {"type": "xml"}}, "response_format.type", "must be one of text, json_object"),
        (
            {"response_format": {"type": "json_object", "json_schema": {}}},
            "response_format.json_schema",
            "is not a field of the json_object response format",
        ),
        ({"response_format": {"type": "json_object"}, "stop": ["}"]}, "stop", STOP_WITH_JSON_PROBLEM),
    ],
)
def test_a_bad_response_format_is_a_400_naming_the_field(sdk, params, param, message):
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(model="medgemma", messages=MESSAGES, max_tokens=4, **params)
    assert refused.value.status_code == 400 and refused.value.param == param
    assert f"{param}: " in refused.value.message and message in refused.value.message
    assert sdk.models.list().data  # the worker keeps serving
