"""What a job gets when something breaks that the caller didn't cause.

Backends that raise stand in for a model hitting a bug or a GPU fault (the engine, worker,
handler and runpod SDK around them are the real ones): an unexpected error is one sentence
and the worker serves the next job; a GPU fault also asks RunPod for a fresh worker.
"""

from __future__ import annotations

import logging

import pytest
from runpod.serverless.modules import rp_job

import handler
from medgemma.engines.base import Completion, ModelInfo, Prepared
from medgemma.engines.batching import BatchEngine
from medgemma.settings import Settings
from medgemma.tokens import Prompt
from medgemma.worker import Worker
from tests.conftest import run

NOTE = "SYNTHETIC NOTE. Patient Jane Roe, MRN 0000000, has a secret diagnosis."
INFO = ModelInfo(
    engine="transformers",
    source="raising-backend",
    run_mode="cpu/none/float32",
    device="cpu",
    dtype="float32",
    quantization="none",
    load_seconds=0.0,
    context_length=1024,
    vision=True,
    max_concurrency=1,
)
CUDA_FAULT = "CUDA error: an illegal memory access was encountered"


class RaisingBackend:
    """Prepares fine; generation raises ``failure`` for jobs whose text says "fail"."""

    info = INFO

    def __init__(self, failure: Exception, where: str = "generate"):
        self.failure, self.where = failure, where

    def prepare(self, request):
        if self.where == "prepare" and "fail" in request.text:
            raise self.failure
        return Prepared(request, Prompt(ids=[2, 3, 4]), 0.0)

    def generate_batch(self, batch, on_delta=None):
        if self.where == "generate" and any("fail" in prepared.request.text for prepared in batch):
            raise self.failure
        for callback in on_delta or []:
            if callback:
                callback("fine")
        return [Completion("fine", 3, 1, "stop", 0.0, 0.0) for _ in batch]

    def kv_cache_bytes(self, prompt_tokens, max_new_tokens):
        return 0

    def memory_budget(self):
        return None


@pytest.fixture
def make_worker(monkeypatch):
    engines = []

    def make(failure: Exception, where: str = "generate", streaming: bool = False) -> Worker:
        engine = BatchEngine(RaisingBackend(failure, where), max_batch_size=4, batch_wait_seconds=0.0)
        engines.append(engine)
        worker = Worker(Settings.from_env({"DUMMY_IMAGE": "false", "STREAMING": str(streaming)}), engine)
        monkeypatch.setattr(handler, "WORKER", worker)
        monkeypatch.setattr(handler, "RUNPOD_CONFIG", {})
        return worker

    yield make
    for engine in engines:
        engine.close()


def job(text: str, **fields) -> dict:
    return {"id": "job-1", "input": {"text": text, **fields}}


@pytest.mark.parametrize("where", ["prepare", "generate"])
def test_an_unexpected_error_is_one_sentence_logged_without_the_note(make_worker, caplog, where):
    make_worker(ValueError(f"could not handle {NOTE} fail"), where)
    caplog.set_level(logging.DEBUG)
    failed = run(handler.handler(job(f"{NOTE} fail")))
    assert set(failed) == {"error"} and "\n" not in failed["error"]
    assert "ValueError" in failed["error"]
    assert NOTE not in failed["error"]
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "ValueError" in logged and "Traceback" not in failed["error"]
    assert "Jane Roe" not in logged and "MRN" not in logged
    assert run(handler.handler(job("a fine note")))["output"] == "fine"


def test_a_gpu_fault_fails_the_job_and_asks_runpod_for_a_fresh_worker(make_worker):
    make_worker(RuntimeError(CUDA_FAULT))
    failed = run(handler.handler(job("fail")))
    assert failed["refresh_worker"] is True
    assert "the GPU failed" in failed["error"] and "resubmit the job" in failed["error"]
    # The real SDK turns that into the job's error and a stopPod for the worker.
    result = run(rp_job.run_job(handler.handler, job("fail")))
    assert result["stopPod"] is True and "the GPU failed" in result["error"]
    assert "refresh_worker" not in result.get("output", {})


def test_after_a_gpu_fault_every_job_fails_fast_until_the_worker_is_replaced(make_worker):
    worker = make_worker(RuntimeError("CUDA error: device-side assert triggered"))
    assert run(worker.run(job("fine")))["output"] == "fine"
    assert run(worker.run(job("fail")))["refresh_worker"] is True
    later = run(worker.run(job("fine")))
    assert later["refresh_worker"] is True and "the GPU failed" in later["error"]


def test_a_streamed_gpu_fault_asks_for_a_fresh_worker_through_the_config(make_worker):
    make_worker(RuntimeError(CUDA_FAULT), streaming=True)

    async def collect():
        return [chunk async for chunk in handler.stream_handler(job("fail", stream=True))]

    chunks = run(collect())
    assert len(chunks) == 1 and "the GPU failed" in chunks[0]["error"]
    assert "refresh_worker" not in chunks[0]
    assert handler.RUNPOD_CONFIG["refresh_worker"] is True


def test_an_out_of_memory_style_failure_does_not_refresh_the_worker(make_worker):
    from medgemma.errors import GenerationFailed

    make_worker(GenerationFailed("out of GPU memory generating a batch of 1; lower max_new_tokens"))
    failed = run(handler.handler(job("fail")))
    assert failed == {"error": "out of GPU memory generating a batch of 1; lower max_new_tokens"}
