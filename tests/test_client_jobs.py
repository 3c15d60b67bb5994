"""The library against the RunPod double: each way of running a job, and each way it can end."""

from __future__ import annotations

import time

import pytest
from runpod_double import MODEL, fake_answer

from client import (
    AuthenticationError,
    DeadlineExceededError,
    JobCancelledError,
    JobFailedError,
    JobTimedOutError,
    NotFoundError,
)
from client.constants import RUNSYNC_WAIT_MS

pytestmark = pytest.mark.timeout(20)

NOTE = "Synthetic note: 71-year-old with community-acquired pneumonia, improving on antibiotics."


def test_summarize_runs_one_runsync_request(client, double):
    result = client.summarize(NOTE)

    assert result.text == fake_answer(NOTE)
    assert (result.model, result.mode, result.finish_reason) == (MODEL, "summarize", "stop")
    assert result.prompt_tokens > 0 and result.completion_tokens > 0
    assert result.job_id and result.execution_time_ms is not None
    assert double.requests == [("POST", "runsync")]
    assert double.runsync_waits == [RUNSYNC_WAIT_MS]


def test_runsync_falls_back_to_polling_when_its_wait_runs_out(start_double, make_client):
    server = start_double(runsync_wait_cap_s=0.05, execution_s=0.3)

    result = make_client(server).generate(NOTE, mode="general")

    assert result.text == fake_answer(NOTE)
    assert result.mode == "general"
    assert server.count_requests("runsync") == 1
    assert server.count_requests("status") >= 1


def test_async_job_is_submitted_then_polled(client, double):
    job = client.run(NOTE, label="note.md")

    assert job.status().status in ("IN_QUEUE", "IN_PROGRESS", "COMPLETED")
    result = job.wait()

    assert result.text == fake_answer(NOTE)
    assert job.done and job.result is result
    assert double.count_requests("run") == 1 and double.count_requests("runsync") == 0
    polls = double.count_requests("status")
    assert job.wait() is result and job.status().status == "COMPLETED"
    assert double.count_requests("status") == polls, "a finished job is never polled again"


def test_stream_yields_pieces_as_they_are_produced(start_double, make_client):
    server = start_double(streaming_worker=True, execution_s=0.3)
    job = make_client(server).run(NOTE, stream=True)

    pieces = list(job.stream())

    assert len(pieces) > 2
    assert "".join(pieces) == fake_answer(NOTE)
    assert job.result.text == fake_answer(NOTE)
    assert job.result.usage["completion_tokens"] > 0
    assert server.count_requests("stream") > 2


def test_stream_from_a_non_streaming_worker_gives_the_whole_answer(client, double):
    job = client.run(NOTE, stream=True)

    assert list(job.stream()) == [fake_answer(NOTE)]
    assert job.result.model == MODEL


def test_streaming_worker_results_look_like_plain_ones(start_double, make_client):
    plain = make_client(start_double()).generate(NOTE)
    streamed = make_client(start_double(streaming_worker=True)).generate(NOTE)

    for result in (plain, streamed):
        assert result.text == fake_answer(NOTE)
        assert result.usage == plain.usage
        assert (result.model, result.finish_reason) == (MODEL, "stop")


@pytest.mark.parametrize("streaming_worker", [False, True], ids=["plain-worker", "streaming-worker"])
def test_failed_job_carries_the_worker_error(start_double, make_client, streaming_worker):
    server = start_double(streaming_worker=streaming_worker)
    server.fail_text(NOTE, "Field 'max_new_tokens' must be between 1 and 4096.")

    with pytest.raises(JobFailedError) as caught:
        make_client(server).summarize(NOTE)

    assert caught.value.error == "Field 'max_new_tokens' must be between 1 and 4096."
    assert caught.value.job_id and caught.value.job_id in str(caught.value)


def test_worker_validation_errors_surface_as_job_failures(client):
    with pytest.raises(JobFailedError, match="mode: must be one of summarize, general, got 'translate'"):
        client.generate(NOTE, mode="translate")


def test_failed_stream_raises_with_the_worker_error(start_double, make_client):
    server = start_double(streaming_worker=True)
    server.fail_text(NOTE, "Field 'image' is not valid base64.")

    job = make_client(server).run(NOTE, stream=True)
    with pytest.raises(JobFailedError, match="not valid base64"):
        list(job.stream())


def test_cancel_ends_the_job_as_cancelled(client, double):
    double.slow_text(NOTE, 5.0)
    job = client.run(NOTE)

    assert job.cancel() is True
    with pytest.raises(JobCancelledError):
        job.wait()
    assert double.jobs[job.id].status == "CANCELLED"
    assert job.cancel() is False, "nothing to cancel once the job has ended"


def test_cancelled_stream_raises(client, double):
    double.slow_text(NOTE, 5.0)
    job = client.run(NOTE, stream=True)
    job.cancel()

    with pytest.raises(JobCancelledError):
        list(job.stream())


def test_execution_timeout_ends_as_timed_out(client, double):
    double.slow_text(NOTE, 2.0)

    with pytest.raises(JobTimedOutError):
        client.run(NOTE, execution_timeout=0.1).wait()


def test_deadline_stops_waiting_but_leaves_the_job_running(client, double):
    double.slow_text(NOTE, 5.0)
    job = client.run(NOTE)

    started = time.monotonic()
    with pytest.raises(DeadlineExceededError) as caught:
        job.wait(timeout=0.3)

    assert time.monotonic() - started < 1.5
    assert caught.value.job_id == job.id
    assert double.jobs[job.id].status == "IN_PROGRESS"


def test_deadline_can_cancel_the_job(client, double):
    double.slow_text(NOTE, 5.0)
    job = client.run(NOTE)

    with pytest.raises(DeadlineExceededError):
        job.wait(timeout=0.2, cancel_on_timeout=True)
    assert double.jobs[job.id].status == "CANCELLED"


def test_generate_deadline_covers_runsync_and_polling(start_double, make_client):
    server = start_double(runsync_wait_cap_s=0.05)
    server.slow_text(NOTE, 5.0)

    with pytest.raises(DeadlineExceededError):
        make_client(server).generate(NOTE, timeout=0.4)


def test_wrong_key_is_an_authentication_error_without_retries(make_client, double):
    with pytest.raises(AuthenticationError) as caught:
        make_client(api_key="wrong").summarize(NOTE)

    assert caught.value.status_code == 401
    assert double.count_requests("runsync") == 1


def test_unknown_job_and_unknown_endpoint_are_not_found(client, make_client):
    with pytest.raises(NotFoundError):
        client.job("job-does-not-exist").status()
    with pytest.raises(NotFoundError):
        make_client(endpoint_id="no-such-endpoint").run(NOTE)


def test_health_reports_queue_counts(client):
    client.summarize(NOTE)

    health = client.health()

    assert health["jobs"]["completed"] == 1
    assert "workers" in health
