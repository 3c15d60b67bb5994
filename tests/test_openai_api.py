"""The OpenAI route's own rules: model ids, routes, and failures in OpenAI's error shape."""

from __future__ import annotations

import json

import openai
import pytest
from runpod_double import RunPodDouble

import handler
from medgemma.errors import HostError
from medgemma.openai_api import model_aliases, served_model_id
from medgemma.settings import Settings
from tests.conftest import run

CHAT = {"openai_route": "/v1/chat/completions", "openai_input": {"messages": [{"role": "user", "content": "Hi"}]}}


@pytest.mark.parametrize(
    ("env", "served", "aliases"),
    [
        ({}, "medgemma-standin", {"medgemma-standin", "medgemma"}),
        (
            {"MODEL_ID": "google/medgemma-1.5-4b-it"},
            "google/medgemma-1.5-4b-it",
            {"google/medgemma-1.5-4b-it", "medgemma-1.5-4b-it", "medgemma"},
        ),
        ({"MODEL_ID": "google/medgemma-1.5-4b-it", "SERVED_MODEL_NAME": "ward-7"}, "ward-7", {"ward-7", "medgemma"}),
    ],
)
def test_the_served_model_id_and_its_aliases(env, served, aliases):
    settings = Settings.from_env(env)
    assert served_model_id(settings) == served and model_aliases(settings) == aliases


def test_a_worker_that_cannot_start_answers_openai_jobs_with_an_openai_error(monkeypatch):
    monkeypatch.setattr(handler, "STARTUP_FAILURE", HostError("DEVICE=cuda but no usable CUDA device is visible"))
    monkeypatch.setattr(handler, "RUNPOD_CONFIG", {})
    error = {
        "message": "worker cannot start: DEVICE=cuda but no usable CUDA device is visible",
        "type": "server_error",
        "param": None,
        "code": None,
    }
    # The SDK takes a job's error as a string: the OpenAI error object goes as JSON text.
    answer = run(handler.handler({"id": "j", "input": CHAT}))
    assert json.loads(answer["error"]) == error and answer["refresh_worker"] is True

    async def streamed():
        return [chunk async for chunk in handler.stream_handler({"id": "j", "input": CHAT})]

    # On the generator handler the SDK reports str(error): it is kept as JSON text.
    (chunk,) = run(streamed())
    assert json.loads(chunk["error"]) == error and handler.RUNPOD_CONFIG["refresh_worker"] is True
    with RunPodDouble(handler=handler.stream_handler) as double:
        client = openai.OpenAI(
            api_key=double.api_key,
            base_url=f"{double.base_url}/{double.endpoint_id}/openai/v1",
            max_retries=0,
            http_client=openai.DefaultHttpx2Client(trust_env=False),
        )
        with pytest.raises(openai.InternalServerError, match="worker cannot start: DEVICE=cuda"):
            client.chat.completions.create(model="medgemma", messages=[{"role": "user", "content": "Hi"}])
        assert double.forwarded[0] == {"openai_route": "/v1/chat/completions", "openai_input": {
            "model": "medgemma", "messages": [{"role": "user", "content": "Hi"}]}}  # fmt: skip


@pytest.mark.model
@pytest.mark.parametrize(
    ("job_input", "expected"),
    [
        ({"openai_route": "/v1/models"}, {"object": "list"}),
        ({"openai_route": "/v1/models", "openai_input": {}}, {"object": "list"}),
        ({"openai_route": "/v1/models/medgemma"}, {"object": "model"}),
        ({"openai_route": "/v1/completions", "openai_input": {"prompt": "x"}}, {"code": "unknown_route"}),
        ({"openai_route": "/v1/models/gpt-4o"}, {"code": "model_not_found", "param": "model"}),
        ({"openai_route": "/v1/chat/completions", "openai_input": ["x"]}, {"param": None}),
        ({"openai_route": "/v1/chat/completions", "openai_input": {}}, {"param": "messages"}),
        ({"openai_input": {"messages": []}}, {"param": "messages"}),  # no route: chat, as worker-vllm reads it
    ],
)
def test_routes_and_bodies(worker, job_input, expected):
    output = run(handler.handler({"id": "r", "input": job_input}))
    found = json.loads(output["error"]) if "error" in output else output
    assert {key: found.get(key) for key in expected} == expected, output
