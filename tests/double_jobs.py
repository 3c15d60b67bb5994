"""The RunPod double's job life cycle: a job's states over time and how each route reports it.

Jobs move IN_QUEUE -> IN_PROGRESS -> COMPLETED / FAILED, or TIMED_OUT when
``policy.executionTimeout`` (ms) is shorter than the job, or CANCELLED. Time is the monotonic
clock: a job starts ``queue_s`` after it was created and ends ``execution_s`` after it started,
whenever a request next looks at it. The callers hold the double's lock.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")


@dataclass
class FakeJob:
    id: str
    key: str
    job_input: dict[str, Any]
    created: float
    execution_s: float
    execution_timeout_s: float | None
    status: str = "IN_QUEUE"
    started: float | None = None
    finished: float | None = None
    output: Any = None
    error: str | None = None
    chunks: list[Any] = field(default_factory=list)
    streamed: int = 0


def advance(job: FakeJob, now: float, queue_s: float, run: Callable[[FakeJob], None]) -> None:
    """Move ``job`` on to where it is at ``now``; ``run`` is the worker, called once as the job starts."""
    if job.status == "IN_QUEUE" and now >= job.created + queue_s:
        job.status, job.started = "IN_PROGRESS", job.created + queue_s
        run(job)
    if job.status != "IN_PROGRESS":
        return
    assert job.started is not None
    limit = job.execution_timeout_s
    if limit is not None and job.execution_s > limit and now >= job.started + limit:
        job.status, job.finished, job.chunks = "TIMED_OUT", job.started + limit, []
    elif now >= job.started + job.execution_s:
        job.finished = job.started + job.execution_s
        job.status = "FAILED" if job.error is not None else "COMPLETED"


def status_of(job: FakeJob) -> dict[str, Any]:
    """``/status`` (and an ended or timed-out ``/runsync``)."""
    answer: dict[str, Any] = {"id": job.id, "status": job.status}
    if job.started is not None:
        answer["delayTime"] = int((job.started - job.created) * 1000)
    if job.finished is not None and job.started is not None:
        answer["executionTime"] = int((job.finished - job.started) * 1000)
    if job.status == "COMPLETED":
        answer["output"] = job.output
    if job.status == "FAILED":
        answer["error"] = job.error
    return answer


def stream_of(job: FakeJob) -> dict[str, Any]:
    """``/stream``: the chunks new since the previous call, in step with the job's progress."""
    available = 0
    if job.status == "COMPLETED":
        available = len(job.chunks)
    elif job.status == "IN_PROGRESS" and job.chunks:
        assert job.started is not None
        done_fraction = (time.monotonic() - job.started) / job.execution_s
        available = min(int(len(job.chunks) * done_fraction), len(job.chunks) - 1)
    new = job.chunks[job.streamed : available]
    job.streamed = max(job.streamed, available)
    answer: dict[str, Any] = {"status": job.status, "stream": [{"output": item} for item in new]}
    if job.status == "FAILED":
        answer["error"] = job.error
    return answer


def cancel(job: FakeJob) -> dict[str, Any]:
    """``/cancel``: a job that has not ended is CANCELLED."""
    if job.status in ("IN_QUEUE", "IN_PROGRESS"):
        job.status, job.finished = "CANCELLED", time.monotonic()
    return {"id": job.id, "status": job.status}


def health_of(jobs: Iterable[FakeJob]) -> dict[str, Any]:
    """``/health``: the jobs by state, and one worker."""
    states = collections.Counter(job.status for job in jobs)
    return {
        "jobs": {
            "completed": states["COMPLETED"],
            "failed": states["FAILED"],
            "inProgress": states["IN_PROGRESS"],
            "inQueue": states["IN_QUEUE"],
            "retried": 0,
        },
        "workers": {"idle": 1, "running": min(states["IN_PROGRESS"], 1)},
    }
