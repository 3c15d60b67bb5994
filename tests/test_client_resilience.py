"""Retries, Retry-After, and the rule that a lost submission is never silently re-sent."""

from __future__ import annotations

import logging
import socket
import time

import pytest
from runpod_double import fake_answer, text_key

from client import (
    APIConnectionError,
    RateLimitError,
    RetryPolicy,
    ServerError,
    SubmissionUncertainError,
)

pytestmark = pytest.mark.timeout(20)

NOTE = "Synthetic note: post-operative day 2, afebrile, tolerating diet."


def test_429_waits_for_retry_after(make_client, double):
    double.retry_after = "1"
    double.inject("status", "429")
    job = make_client().run(NOTE)

    started = time.monotonic()
    result = job.wait()

    assert time.monotonic() - started >= 0.95, "Retry-After: 1 must be honoured"
    assert result.text == fake_answer(NOTE)


def test_retry_after_is_capped(make_client, double):
    double.retry_after = "3600"
    double.inject("status", "503")
    capped = make_client(retry=RetryPolicy(initial_delay_s=0.01, max_retry_after_s=0.2))

    started = time.monotonic()
    capped.run(NOTE).wait()

    assert 0.15 <= time.monotonic() - started < 2


def test_429_on_submission_is_retried_without_duplicates(client, double):
    double.inject("run", "429", "429")

    client.run(NOTE).wait()

    assert double.count_requests("run") == 3
    assert double.queued[text_key(NOTE)] == 1


@pytest.mark.parametrize("fault", ["500", "502", "503", "drop_before"])
def test_idempotent_calls_are_retried(client, double, fault):
    double.inject("status", fault, fault)
    double.inject("health", fault)

    assert client.run(NOTE).wait().text == fake_answer(NOTE)
    assert client.health()["jobs"]["completed"] == 1
    assert double.count_requests("status") >= 3


def test_retries_give_up_with_the_mapped_error(make_client, double):
    limited = make_client(retry=RetryPolicy(max_retries=2, initial_delay_s=0.01))
    job = limited.run(NOTE)

    double.inject("status", *["503"] * 3)
    with pytest.raises(ServerError) as caught:
        job.wait()
    assert caught.value.status_code == 503

    double.inject("status", *["429"] * 3)
    with pytest.raises(RateLimitError):
        job.wait()


@pytest.mark.parametrize(
    ("route", "fault"),
    [("run", "drop_after"), ("run", "drop_before"), ("run", "500"), ("runsync", "drop_after"), ("runsync", "503")],
)
def test_lost_submission_answer_is_not_resent_by_default(client, double, route, fault):
    double.inject(route, fault)

    with pytest.raises(SubmissionUncertainError) as caught:
        client.run(NOTE, sync=route == "runsync", label="EP001.md")

    assert caught.value.label == "EP001.md"
    assert "EP001.md" in str(caught.value) and NOTE not in str(caught.value)
    assert double.count_requests(route) == 1, "must not be re-sent silently"


def test_opted_in_resubmission_is_reported_and_may_duplicate(make_client, double):
    warnings = []
    resubmitting = make_client(on_uncertain_submission=lambda label, error: warnings.append(label))
    double.inject("run", "drop_after")

    result = resubmitting.run(NOTE, label="FF349.md").wait()

    assert result.text == fake_answer(NOTE)
    assert warnings == ["FF349.md"]
    assert double.queued[text_key(NOTE)] == 2, "the lost first submission was queued too"


def test_connection_refused_is_retried_as_safe_not_uncertain(make_client, double, caplog):
    caplog.set_level(logging.INFO, logger="client")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    unreachable = make_client(
        base_url=f"http://127.0.0.1:{closed_port}/v2", retry=RetryPolicy(max_retries=2, initial_delay_s=0.01)
    )

    with pytest.raises(APIConnectionError) as caught:
        unreachable.run(NOTE)
    assert not isinstance(caught.value, SubmissionUncertainError)
    assert sum("retrying POST run" in record.getMessage() for record in caplog.records) == 2
