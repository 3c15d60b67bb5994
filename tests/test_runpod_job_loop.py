"""RunPod's worker-side job loop, for real: ``python handler.py`` takes its jobs from a double of RunPod.

No ``--rp_serve_api``, no ``--test_input``: with ``RUNPOD_WEBHOOK_GET_JOB`` set, ``runpod.serverless.start``
runs the SDK's ``JobScaler`` exactly as on RunPod (job-take with ``concurrency_modifier``, job-done,
job-stream, the heartbeat), against ``tests/runpod_worker_api.py`` on 127.0.0.1. The stand-in model
answers (transformers engine, offline). The SDK's start-up fitness checks (``serverless/worker.py:40``)
are switched off with its own switches (``modules/rp_fitness.py:119``, ``modules/rp_gpu_fitness.py:289``):
they dial 8.8.8.8:53 and probe GPUs, and traffic here stays on loopback.

Each worker runs in its own directory: the SDK keeps its jobs in progress in ``.runpod_jobs.pkl`` in the
working directory (``modules/worker_state.py:72-73``) and counts every job listed there against its
concurrency (``modules/rp_scale.py:164-171``), so two SDK processes in one directory (this checkout,
say) would each count the other's jobs. A job left there by a killed worker would never be given up:
handler.py empties that record when it starts on RunPod's queue (the streaming worker starts beside one).
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from runpod.version import __version__ as SDK_VERSION

from tests.conftest import TEST_ENV
from tests.runpod_worker_api import LoopWorker, WorkerApiDouble, WorkerJob, start_loop_worker, stop_loop_worker

NOTE = "SYNTHETIC NOTE. 61-year-old with community-acquired pneumonia; amoxicillin 1 g three times daily."
JOB_TIMEOUT_S = 300
LOOP_ENV = {**TEST_ENV, "ENGINE": "transformers"}


def test_the_double_refuses_a_worker_without_the_key():
    """What makes ``api.unauthorized == 0`` in the other tests mean the SDK sent RUNPOD_AI_API_KEY on every call."""
    with WorkerApiDouble() as api:
        api.queue({"text": NOTE})
        take = api.env("worker-x")["RUNPOD_WEBHOOK_GET_JOB"].replace("$ID", "worker-x")
        assert requests.get(take, timeout=10).status_code == 401
        assert requests.get(take, headers={"Authorization": f"Bearer {api.api_key}"}, timeout=10).status_code == 401
        assert api.unauthorized == 2 and api.waiting() == 1
        taken = requests.get(take, headers={"Authorization": api.api_key}, timeout=10)
        assert taken.status_code == 200 and taken.json()["input"] == {"text": NOTE} and api.waiting() == 0


def serve_failing_worker(tmp_path: Path, env: dict[str, str], jobs: int) -> tuple[WorkerApiDouble, list[WorkerJob]]:
    """A worker that can't start, given ``jobs`` jobs at once, until it has asked for more three times in vain.

    Returns the double and the jobs the worker answered.
    """
    with WorkerApiDouble() as api:
        ids = api.queue(*({"text": f"{NOTE} Visit {number}."} for number in range(jobs)))
        worker = start_loop_worker(api, tmp_path, {**LOOP_ENV, **env})

        def settled(double: WorkerApiDouble) -> bool:
            last = max((double.jobs[i].done for i in ids if double.jobs[i].done is not None), default=None)
            return last is not None and sum(take.at > last for take in double.takes) >= 3

        try:
            assert api.wait_for(settled, JOB_TIMEOUT_S)
            assert worker.process.poll() is None  # it stays up: RunPod would restart a crashed one in a loop
        finally:
            log = stop_loop_worker(worker)
    assert log.count("worker cannot start:") == 1 and NOTE not in log
    assert api.unauthorized == 0
    return api, [api.jobs[i] for i in ids if api.jobs[i].done is not None]


@pytest.mark.slow
def test_a_start_up_failure_answers_every_job_one_at_a_time(tmp_path):
    # A bad setting: the worker can't start. It answers with the plain handler even though STREAMING=true.
    env = {"MAX_CONCURRENCY": "0", "STREAMING": "true"}
    api, answered = serve_failing_worker(tmp_path, env, jobs=3)
    # RunPod gives a worker that never stops asking every job there is; each fails fast with the reason.
    assert len(answered) == 3
    for job in answered:
        assert job.result == {"error": "worker cannot start: MAX_CONCURRENCY must be at least 1, got 0"}
        assert job.result_is_stream is False
    # concurrency_modifier says 1 while failed: one job-take at a time, the single route.
    assert api.max_in_flight() == 1
    assert all(take.batch_size is None and take.jobs <= 1 for take in api.takes)


@pytest.mark.slow
def test_a_host_failure_at_start_up_asks_runpod_for_a_fresh_worker(tmp_path):
    env = {"DEVICE": "cuda", "CUDA_VISIBLE_DEVICES": ""}  # no GPU visible, on any machine
    api, answered = serve_failing_worker(tmp_path, env, jobs=3)
    [job] = answered
    assert job.result["stopPod"] is True  # the handler's refresh_worker, as the SDK sends it
    assert job.result["error"].startswith("worker cannot start: DEVICE=cuda but no usable CUDA device is visible")
    # RunPod stops that worker after its job: the other jobs wait for a fresh one.
    assert api.retired == {job.taken_by} and api.waiting() == 2
    assert api.max_in_flight() == 1


STALE_JOB = "stale-job"


def leave_a_stale_job(directory: Path) -> None:
    """What a worker killed mid-job leaves: the SDK's record of a job in progress, in its working directory."""
    from runpod.serverless.modules.worker_state import Job

    with open(directory / ".runpod_jobs.pkl", "wb") as record:
        pickle.dump({Job(id=STALE_JOB)}, record)


@pytest.fixture(scope="module")
def streaming(tmp_path_factory) -> Iterator[tuple[WorkerApiDouble, LoopWorker]]:
    """One double and one worker for the tests that serve jobs: STREAMING=true, two jobs at a time."""
    directory = tmp_path_factory.mktemp("job-loop")
    leave_a_stale_job(directory)
    with WorkerApiDouble() as api:
        worker = start_loop_worker(api, directory, {**LOOP_ENV, "STREAMING": "true", "MAX_CONCURRENCY": "2"})
        try:
            yield api, worker
        finally:
            log = stop_loop_worker(worker)
        assert NOTE not in log
        assert api.unauthorized == 0


@pytest.mark.slow
@pytest.mark.model
def test_concurrency_modifier_bounds_the_jobs_in_flight(streaming):
    api, worker = streaming
    ids = api.queue(*({"text": f"{NOTE} Visit {number}.", "max_new_tokens": 4} for number in range(6)))
    jobs = api.wait_done(ids, JOB_TIMEOUT_S)

    for job in jobs:
        assert set(job.result) == {"output"} and job.result_is_stream is True
        [answer] = job.result["output"]  # a generator handler's items, aggregated (return_aggregate_stream)
        assert answer["output"] and 1 <= answer["usage"]["completion_tokens"] <= 4
        assert job.chunks == [answer]
    # MAX_CONCURRENCY=2: the SDK never holds more than two, and it does hold two (they are batched),
    # although the worker started where a killed worker had left a job on the SDK's record (handler.py).
    assert api.max_in_flight(ids) == 2
    assert any(job.result["output"][0]["batch_size"] == 2 for job in jobs)
    takes = [take for take in api.takes if take.worker == worker.worker_id]
    assert all(take.jobs <= (take.batch_size or 1) <= 2 for take in takes)
    assert any(take.batch_size == 2 and take.jobs == 2 for take in takes)  # the batch job-take route
    assert {take.job_in_progress for take in takes} <= {"0", "1"}
    # The heartbeat, from its own process, names the jobs in progress.
    pings = [ping for ping in api.pings if ping["worker"] == [worker.worker_id]]
    assert pings and all(ping["runpod_version"] == [SDK_VERSION] for ping in pings)
    in_progress = [set(ping["job_id"][0].split(",")) for ping in pings if "job_id" in ping]
    assert any(named <= set(ids) for named in in_progress)
    assert not any(STALE_JOB in named for named in in_progress)


@pytest.mark.slow
@pytest.mark.model
def test_a_streamed_job_s_chunks_reach_the_stream_endpoint_in_order(streaming):
    api, _ = streaming
    [streamed] = api.wait_done(api.queue({"text": NOTE, "stream": True}), JOB_TIMEOUT_S)
    [plain] = api.wait_done(api.queue({"text": NOTE}), JOB_TIMEOUT_S)  # after it: not batched with it

    *deltas, last = streamed.chunks
    assert len(deltas) >= 2 and all(set(chunk) == {"delta"} and chunk["delta"] for chunk in deltas)
    assert last["done"] is True and last["delta"] == ""
    assert streamed.result == {"output": streamed.chunks}  # the aggregate is the chunks, in the order sent
    [whole] = plain.result["output"]
    assert "".join(chunk["delta"] for chunk in deltas) == whole["output"]
    assert last["usage"] == whole["usage"] and last["finish_reason"] == whole["finish_reason"]
