"""Concurrent jobs are generated together, and each gets exactly its answer alone (greedy)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from PIL import Image

from medgemma.engines.batching import BatchEngine
from medgemma.images import encode_image
from medgemma.worker import Worker
from tests.conftest import run

pytestmark = pytest.mark.model

TEXTS = [
    "SYNTHETIC. Sodium 128, potassium 5.9, creatinine 2.4. Summarize.",
    "SYNTHETIC. 71-year-old with new atrial fibrillation, rate 132, started on apixaban 5 mg twice daily and metoprolol.",
    "What is sepsis?",
    "SYNTHETIC. CT head without contrast: no acute intracranial haemorrhage. Chronic small vessel ischaemic change.",
]


@pytest.fixture(scope="module")
def batching_worker(transformers_worker):
    """The session's model behind an engine that waits long enough to batch deterministically."""
    engine = BatchEngine(transformers_worker.engine.backend, max_batch_size=8, batch_wait_seconds=1.0)
    yield Worker(replace(transformers_worker.settings, dummy_image=False), engine)
    engine.close()


def together(worker: Worker, inputs: list[dict]) -> list[dict]:
    async def all_at_once():
        return await asyncio.gather(*(worker.run({"id": f"job-{i}", "input": data}) for i, data in enumerate(inputs)))

    return run(all_at_once())


def test_batched_answers_equal_answers_alone(batching_worker, transformers_worker):
    image = encode_image(Image.radial_gradient("L").convert("RGB"))
    inputs = [{"text": text} for text in TEXTS] + [{"text": TEXTS[0], "image": image}]
    batched = together(batching_worker, inputs)
    assert [r["batch_size"] for r in batched] == [5] * 5
    assert len({r["usage"]["prompt_tokens"] for r in batched}) > 1  # rows really were left-padded
    for data, result in zip(inputs, batched, strict=False):
        alone = run(Worker(batching_worker.settings, transformers_worker.engine).run({"id": "alone", "input": data}))
        assert alone["batch_size"] == 1
        assert result["output"] == alone["output"]
        assert result["usage"] == alone["usage"] and result["finish_reason"] == alone["finish_reason"]


def test_jobs_that_cannot_share_a_batch_wait_for_the_next(batching_worker):
    inputs = [
        {"text": TEXTS[0]},
        {"text": TEXTS[1], "max_new_tokens": 5},
        {"text": TEXTS[2]},
        {"text": TEXTS[3], "temperature": 0.7, "seed": 1},
    ]
    results = together(batching_worker, inputs)
    assert [r["batch_size"] for r in results] == [2, 1, 2, 1]
    assert results[1]["usage"]["completion_tokens"] <= 5


def test_a_bad_job_in_a_batch_fails_alone(batching_worker):
    inputs = [
        {"text": TEXTS[0]},
        {"text": "1234567890" * 4_000},
        {"text": TEXTS[1]},
        {"text": TEXTS[2], "mode": "nope"},
    ]
    results = together(batching_worker, inputs)
    assert results[1]["error"].startswith("text: the prompt is ")
    assert results[3] == {"error": "mode: must be one of summarize, general, got 'nope'"}
    assert [r["batch_size"] for r in (results[0], results[2])] == [2, 2]
    assert results[0]["output"] and results[2]["output"]


@pytest.fixture
def patient_engine(transformers_worker):
    """A 1 ms batch window that waits up to 30 s for jobs still being tokenized."""
    engine = BatchEngine(
        transformers_worker.engine.backend, max_batch_size=8, batch_wait_seconds=0.001, prepare_wait_seconds=30.0
    )
    yield Worker(replace(transformers_worker.settings, dummy_image=False), engine)
    engine.close()


def test_jobs_submitted_together_are_not_split_by_tokenization_time(patient_engine):
    """With a 1 ms window, only waiting for jobs still being tokenized can put all 8 in one batch."""
    inputs = [{"text": f"{TEXTS[i % len(TEXTS)]} ({i})", "max_new_tokens": 2} for i in range(8)]
    results = together(patient_engine, inputs)
    assert [r["batch_size"] for r in results] == [8] * 8


def test_a_job_that_fails_tokenization_is_no_longer_waited_for(patient_engine):
    results = together(patient_engine, [{"text": "1234567890" * 4_000}, {"text": TEXTS[0], "max_new_tokens": 2}])
    assert results[0]["error"].startswith("text: the prompt is ")
    # Had the failed job still counted as tokenizing, the batch would have waited 30 s for it.
    assert results[1]["timings"]["queue_s"] < 10


def test_a_worker_takes_a_batch_of_jobs_at_once_by_default(transformers_worker):
    """MAX_CONCURRENCY unset: RunPod may hand the worker MAX_BATCH_SIZE jobs (on CPU as on CUDA)."""
    assert transformers_worker.settings.max_concurrency is None
    assert transformers_worker.max_concurrency == transformers_worker.settings.max_batch_size == 8
    explicit = Worker(replace(transformers_worker.settings, max_concurrency=3), transformers_worker.engine)
    assert explicit.max_concurrency == 3
