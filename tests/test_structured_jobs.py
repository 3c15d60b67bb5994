"""JSON jobs through the real worker on the stand-in: they parse, fit their schema, batch and stream.

The stand-in is a base model, so only the grammar makes its answers JSON: a strict test.
Notes and token budgets are chosen so each object closes within a few dozen tokens.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import jsonschema
import pytest

from bench.sample_schemas import MEDICATIONS as NESTED
from medgemma.engines.batching import BatchEngine
from medgemma.structured import SUMMARY_SCHEMA
from medgemma.worker import Worker
from tests.conftest import ENGINES, run

pytestmark = pytest.mark.model

NOTE = "SYNTHETIC. Normal examination. No findings. No medications."
ENUMS = {
    "type": "object",
    "properties": {
        "severity": {"enum": ["mild", "moderate", "severe"]},
        "admitted": {"type": "boolean"},
        "follow_up_days": {"type": "integer", "minimum": 0, "maximum": 90},
    },
    "required": ["severity", "admitted", "follow_up_days"],
}
#: One budget for all, so they share a sampling key and batch: the summary closes in 39 tokens.
BUDGET = 44
#: name -> (job input, the schema its answer must fit; None: free text)
JOBS = {
    "summary": ({"text": NOTE, "format": "json", "max_new_tokens": BUDGET}, SUMMARY_SCHEMA),
    "enums": ({"text": NOTE, "mode": "general", "json_schema": ENUMS, "max_new_tokens": BUDGET}, ENUMS),
    "nested": ({"text": NOTE, "mode": "general", "json_schema": NESTED, "max_new_tokens": BUDGET}, NESTED),
    "free": ({"text": NOTE, "max_new_tokens": BUDGET}, None),
}


def _plain(worker: Worker) -> Worker:
    return Worker(replace(worker.settings, dummy_image=False), worker.engine)


@pytest.fixture(scope="module", params=ENGINES)
def served(request):
    """Each job of JOBS served alone on one engine: (worker, {name: output})."""
    worker = _plain(request.getfixturevalue(f"{request.param}_worker"))
    return worker, {name: run(worker.run({"id": name, "input": data})) for name, (data, _) in JOBS.items()}


@pytest.mark.parametrize("name", ["summary", "enums", "nested"])
def test_json_jobs_parse_and_fit_their_schema(served, name) -> None:
    output = served[1][name]
    assert "error" not in output, output
    assert output["finish_reason"] == "stop" and "incomplete" not in output
    assert json.loads(output["output"]) == output["parsed"]
    jsonschema.validate(output["parsed"], JOBS[name][1], format_checker=jsonschema.FormatChecker())


def test_the_built_in_summary_has_its_five_fields_in_order(served) -> None:
    assert list(served[1]["summary"]["parsed"]) == list(SUMMARY_SCHEMA["properties"])


def test_a_free_job_has_no_parsed_field(served) -> None:
    assert {"parsed", "incomplete"}.isdisjoint(served[1]["free"])


def test_a_cut_off_object_is_length_with_parsed_null_never_a_valid_answer(served) -> None:
    worker = served[0]
    output = run(worker.run({"id": "cut", "input": {**JOBS["nested"][0], "max_new_tokens": 6}}))
    assert output["finish_reason"] == "length" and output["parsed"] is None
    assert "max_new_tokens (6)" in output["incomplete"]
    assert output["output"].startswith("{")
    with pytest.raises(ValueError):
        json.loads(output["output"])


def test_a_streamed_json_job_streams_the_json_text(served) -> None:
    worker, alone = served

    async def collect() -> list[dict]:
        data = {**JOBS["enums"][0], "stream": True}
        return [chunk async for chunk in worker.run_stream({"id": "stream", "input": data})]

    chunks = run(collect())
    final = chunks[-1]
    assert final["done"] and final["parsed"] == alone["enums"]["parsed"]
    assert "".join(chunk["delta"] for chunk in chunks) == alone["enums"]["output"]


def test_bad_schemas_fail_alone_and_the_worker_keeps_serving(served) -> None:
    worker = served[0]
    unsupported = {"type": "object", "properties": {"t": {"type": "array", "uniqueItems": True}}}
    refused = run(worker.run({"id": "bad", "input": {"text": NOTE, "json_schema": unsupported}}))
    assert refused["error"].startswith("json_schema: json_schema/properties/t/uniqueItems is not supported")
    lookaround = {"type": "object", "properties": {"t": {"type": "string", "pattern": "^(?=a)a$"}}}
    uncompilable = run(worker.run({"id": "bad2", "input": {"text": NOTE, "json_schema": lookaround}}))
    assert uncompilable["error"].startswith("json_schema: a pattern is not a regular expression")
    assert run(worker.run({"id": "next", "input": {"text": NOTE, "max_new_tokens": 2}}))["finish_reason"] == "length"


@pytest.fixture(scope="module")
def batching_engine(transformers_worker):
    """The session's model behind an engine that waits long enough to batch deterministically."""
    engine = BatchEngine(transformers_worker.engine.backend, max_batch_size=8, batch_wait_seconds=2.0)
    yield engine
    engine.close()


def _together(worker: Worker, jobs: dict[str, dict]) -> dict[str, dict]:
    async def gather() -> list[dict]:
        return await asyncio.gather(*(worker.run({"id": name, "input": data}) for name, data in jobs.items()))

    return dict(zip(jobs, run(gather()), strict=True))


def _same_as_alone(batched: dict[str, dict], alone: dict[str, dict]) -> None:
    for name, output in batched.items():
        assert "error" not in output, (name, output)
        assert output["batch_size"] == len(batched), output
        assert output["output"] == alone[name]["output"], name
        assert output["usage"] == alone[name]["usage"] and output["finish_reason"] == alone[name]["finish_reason"]
        assert output.get("parsed") == alone[name].get("parsed")


def test_json_and_free_jobs_batch_together_with_the_answers_they_get_alone(batching_engine, served) -> None:
    if served[0].engine.info.engine != "transformers":
        pytest.skip("compared against the transformers engine's answers alone")
    worker = Worker(served[0].settings, batching_engine)
    _same_as_alone(_together(worker, {name: data for name, (data, _) in JOBS.items()}), served[1])


NOTE_2 = "SYNTHETIC. Cough for three days. Temperature 38.1 C. Chest clear. Paracetamol as needed."
#: Four JSON and four free jobs with different prompts (so rows are padded differently), as bench.structured
#: batches them, with the worker's default dummy image on, so every row carries an image.
MIXED = {
    "summary": {"text": NOTE, "format": "json"},
    "summary-2": {"text": NOTE_2, "format": "json"},
    "enums": {"text": NOTE_2, "json_schema": ENUMS},
    "nested": {"text": NOTE, "mode": "general", "json_schema": NESTED},
    "free": {"text": NOTE},
    "free-2": {"text": NOTE_2},
    "free-general": {"text": "What is sepsis?", "mode": "general"},
    "free-system": {"text": NOTE_2, "system_prompt": "Answer in one line."},
}


def test_a_batch_of_four_json_and_four_free_jobs_with_images_matches_each_job_alone(
    transformers_worker, batching_engine
) -> None:
    # 16 tokens: the rows differ within them (the JSON ones are cut off, which the comparison covers too).
    jobs = {name: {**data, "max_new_tokens": 16} for name, data in MIXED.items()}
    with_dummy = replace(transformers_worker.settings, dummy_image=True)
    alone = {
        name: run(Worker(with_dummy, transformers_worker.engine).run({"id": name, "input": data}))
        for name, data in jobs.items()
    }
    for name, output in alone.items():
        assert "error" not in output, (name, output)
        assert ("parsed" in output) == (name in ("summary", "summary-2", "enums", "nested")), name
    _same_as_alone(_together(Worker(with_dummy, batching_engine), jobs), alone)
