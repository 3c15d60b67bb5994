"""Job states and the single normalised result callers see.

A job's output reaches us in several shapes, depending on the worker's
``STREAMING`` setting and on the route we read it from:

* a full output object ``{"output": "<answer>", "usage": ..., ...}``;
* a list of yielded items (``/status`` of a generator worker): either one full
  output object, or ``{"delta": ...}`` chunks ending with ``{"done": true, ...}``;
* ``{"output": item}`` wrappers from ``/stream``, unwrapped by the caller;
* an ``{"error": "..."}`` item, which means the job failed even if RunPod says
  COMPLETED.

``OutputAssembler`` folds all of them into one ``JobResult``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .errors import (
    IncompleteResultError,
    JobCancelledError,
    JobError,
    JobFailedError,
    JobTimedOutError,
    ResponseFormatError,
)

COMPLETED = "COMPLETED"
FAILED = "FAILED"
CANCELLED = "CANCELLED"
TIMED_OUT = "TIMED_OUT"
TERMINAL_STATUSES = frozenset({COMPLETED, FAILED, CANCELLED, TIMED_OUT})

_FAILURES: dict[str, type[JobError]] = {
    FAILED: JobFailedError,
    CANCELLED: JobCancelledError,
    TIMED_OUT: JobTimedOutError,
}


@dataclass(frozen=True)
class JobState:
    """One snapshot of a job as RunPod reports it (``/run``, ``/runsync``, ``/status``, ``/stream``)."""

    job_id: str
    status: str
    output: Any = field(default=None, repr=False)
    error: str | None = None
    delay_time_ms: int | None = None
    execution_time_ms: int | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @classmethod
    def from_payload(cls, payload: Any, job_id: str | None = None) -> JobState:
        if not isinstance(payload, dict) or not isinstance(payload.get("status"), str):
            raise ResponseFormatError(f"job {job_id}: answer has no status")
        found_id = payload.get("id") or job_id
        if not found_id:
            raise ResponseFormatError("job answer has no id")
        error = payload.get("error")
        return cls(
            job_id=str(found_id),
            status=payload["status"],
            output=payload.get("output"),
            error=None if error is None else str(error),
            delay_time_ms=payload.get("delayTime"),
            execution_time_ms=payload.get("executionTime"),
        )


@dataclass(frozen=True)
class JobResult:
    """The answer and its metadata, the same whatever route or worker mode produced it.

    ``parsed`` is the object of a JSON job (``format="json"`` or ``json_schema``); None for
    other jobs, and when generation stopped before the object was closed
    (``finish_reason == "length"``). ``adapter`` names the LoRA adapter that answered (None:
    the base model) and ``provenance`` holds what the worker reports about the weights used.
    ``text`` and ``parsed`` are left out of ``repr`` so a stray log line cannot leak the answer.
    """

    text: str = field(repr=False)
    parsed: Any = field(default=None, repr=False)
    job_id: str | None = None
    model: str | None = None
    mode: str | None = None
    run_mode: str | None = None
    finish_reason: str | None = None
    usage: dict[str, int] = field(default_factory=dict)
    used_dummy_image: bool | None = None
    timings: dict[str, Any] = field(default_factory=dict)
    adapter: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    delay_time_ms: int | None = None
    execution_time_ms: int | None = None

    @property
    def prompt_tokens(self) -> int | None:
        return self.usage.get("prompt_tokens")

    @property
    def completion_tokens(self) -> int | None:
        return self.usage.get("completion_tokens")

    def json_object(self) -> Any:
        """The object of a JSON job; raises instead of handing back a cut-off or missing one."""
        if self.parsed is not None:
            return self.parsed
        if self.finish_reason == "length":
            raise IncompleteResultError(self.job_id, self.finish_reason)
        raise ResponseFormatError(f"job {self.job_id} returned no JSON object (ask with format='json' or json_schema)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class OutputAssembler:
    """Accumulates output items of one job into a ``JobResult``."""

    def __init__(self, job_id: str | None) -> None:
        self._job_id = job_id
        self._parts: list[str] = []
        self._final: dict[str, Any] | None = None

    @property
    def complete(self) -> bool:
        """True once the full output object or the ``done`` chunk has been seen."""
        return self._final is not None

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def add(self, item: Any) -> str:
        """Take one output item; return the new text it contributes ('' for none)."""
        if not isinstance(item, dict):
            raise ResponseFormatError(f"job {self._job_id}: unexpected output item of type {type(item).__name__}")
        if item.get("error"):
            raise JobFailedError(self._job_id, str(item["error"]))
        if "delta" in item:
            piece = item["delta"]
            if item.get("done"):
                self._final = item
        elif isinstance(item.get("output"), str):
            piece = item["output"]
            self._final = item
        else:
            raise ResponseFormatError(f"job {self._job_id}: output item has neither 'delta' nor 'output'")
        if not isinstance(piece, str):
            raise ResponseFormatError(f"job {self._job_id}: answer text is not a string")
        self._parts.append(piece)
        return piece

    def add_output(self, output: Any) -> None:
        """Take a job's whole ``output`` field: one object or a list of yielded items."""
        if output is None:
            raise ResponseFormatError(f"job {self._job_id} completed without output")
        for item in output if isinstance(output, list) else [output]:
            self.add(item)

    def result(self, state: JobState | None = None) -> JobResult:
        if self._final is None:
            raise ResponseFormatError(f"job {self._job_id} ended without a final output item")
        meta = self._final
        return JobResult(
            text=self.text,
            parsed=meta.get("parsed"),
            job_id=self._job_id,
            model=meta.get("model"),
            mode=meta.get("mode"),
            run_mode=meta.get("run_mode"),
            finish_reason=meta.get("finish_reason"),
            usage=dict(meta.get("usage") or {}),
            used_dummy_image=meta.get("used_dummy_image"),
            timings=dict(meta.get("timings") or {}),
            adapter=meta.get("adapter"),
            provenance=dict(meta.get("provenance") or {}),
            delay_time_ms=state.delay_time_ms if state else None,
            execution_time_ms=state.execution_time_ms if state else None,
        )


def raise_for_failure(state: JobState) -> None:
    """Raise the ``JobError`` matching a FAILED / CANCELLED / TIMED_OUT state."""
    error_class = _FAILURES.get(state.status)
    if error_class is not None:
        raise error_class(state.job_id, state.error)


def result_from_state(state: JobState) -> JobResult:
    """Turn a terminal state into a result, or raise the matching ``JobError``."""
    raise_for_failure(state)
    assembler = OutputAssembler(state.job_id)
    assembler.add_output(state.output)
    return assembler.result(state)
