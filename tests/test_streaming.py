"""Streaming: text chunks as they are generated, then usage and finish reason."""

from __future__ import annotations

import pytest

import handler
from medgemma.settings import Settings
from tests.conftest import run

NOTE = "SYNTHETIC. 45-year-old with asthma exacerbation; salbutamol nebulisers and prednisolone 40 mg for 5 days."


async def collect(agen) -> list[dict]:
    return [item async for item in agen]


@pytest.mark.model
def test_stream_chunks_add_up_to_the_plain_answer(worker):
    chunks = run(collect(handler.stream_handler({"id": "s", "input": {"text": NOTE, "stream": True}})))
    plain = run(handler.handler({"id": "p", "input": {"text": NOTE}}))
    *deltas, final = chunks
    assert deltas and all(set(chunk) == {"delta"} and chunk["delta"] for chunk in deltas)
    assert "".join(chunk["delta"] for chunk in deltas) == plain["output"]
    assert final["done"] is True and final["delta"] == ""
    assert final["usage"] == plain["usage"] and final["finish_reason"] == plain["finish_reason"]
    assert {"model", "mode", "run_mode", "used_dummy_image", "timings"} <= set(final)


@pytest.mark.model
def test_plain_job_on_the_streaming_handler_yields_its_whole_output_once(worker):
    chunks = run(collect(handler.stream_handler({"id": "p", "input": {"text": NOTE}})))
    plain = run(handler.handler({"id": "p", "input": {"text": NOTE}}))
    assert len(chunks) == 1
    assert chunks[0]["output"] == plain["output"] and chunks[0]["usage"] == plain["usage"]


@pytest.mark.model
def test_stream_errors_are_one_error_item(worker):
    chunks = run(collect(handler.stream_handler({"id": "e", "input": {"text": NOTE, "stream": True, "top_p": 2}})))
    assert chunks == [{"error": "top_p: must be between 0.0 and 1.0, got 2"}]


@pytest.mark.parametrize(
    ("streaming", "argv", "env", "expected"),
    [
        ("true", ["handler.py", "--rp_serve_api"], {}, True),
        ("true", ["handler.py"], {"RUNPOD_WEBHOOK_GET_JOB": "https://api.runpod.ai/v2/x/job-take"}, True),
        ("true", ["handler.py", "--test_input", "{}"], {}, False),  # the SDK's local test run takes plain handlers only
        ("true", ["handler.py"], {}, False),  # test_input.json run
        ("false", ["handler.py", "--rp_serve_api"], {}, False),
    ],
)
def test_generator_is_chosen_once_at_start_up(streaming, argv, env, expected):
    assert handler.uses_generator(Settings.from_env({"STREAMING": streaming}), argv, env) is expected
