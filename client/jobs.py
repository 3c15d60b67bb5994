"""A handle on one submitted job: poll it, wait for it, stream it, cancel it.

A ``Job`` needs only the transport (which knows how the server it talks to polls and
cancels) and the waiting policy, so it can be made without a ``MedGemmaClient``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any, NoReturn

from .errors import APITimeoutError, DeadlineExceededError, ResponseFormatError
from .policies import PollPolicy
from .results import (
    CANCELLED,
    COMPLETED,
    JobResult,
    JobState,
    OutputAssembler,
    raise_for_failure,
    result_from_state,
)
from .transport import Transport

log = logging.getLogger(__name__)


class Job:
    """A RunPod job. ``wait()`` or ``stream()`` produce a ``JobResult`` or raise a ``JobError``.

    The terminal state is cached and never polled again: a local worker
    (``--rp_serve_api``) runs the job inside the first poll and then forgets it.
    ``wait_timeout`` is the default for ``wait()`` and ``stream()``.
    """

    def __init__(
        self,
        transport: Transport,
        job_id: str,
        *,
        poll: PollPolicy,
        wait_timeout: float,
        label: str | None = None,
        state: JobState | None = None,
    ) -> None:
        self.id = job_id
        self.label = label
        self.result: JobResult | None = None
        self._transport = transport
        self._poll = poll
        self._wait_timeout = wait_timeout
        self._state = state

    def __repr__(self) -> str:
        status = self._state.status if self._state else "UNKNOWN"
        return f"Job(id={self.id!r}, status={status!r})"

    @property
    def done(self) -> bool:
        return self._terminal_state() is not None

    def status(self) -> JobState:
        """Poll once (on a local worker this blocks until the job has run)."""
        return self._terminal_state() or self._record(self._transport.poll("status", self.id, None))

    def wait(self, timeout: float | None = None, *, cancel_on_timeout: bool = False) -> JobResult:
        """Poll until the job ends; ``timeout`` defaults to ``wait_timeout``.

        Raises ``DeadlineExceededError`` when time runs out (the job keeps
        running unless ``cancel_on_timeout``), a ``JobError`` for FAILED /
        CANCELLED / TIMED_OUT.
        """
        if self.result is not None:
            return self.result
        timeout, deadline = self._deadline(timeout)
        intervals = self._poll.intervals()
        while True:
            state = self._terminal_state() or self._record(
                self._poll_until("status", deadline, timeout, cancel_on_timeout)
            )
            if state.terminal:
                self.result = result_from_state(state)
                return self.result
            self._pause(next(intervals), deadline, timeout, cancel_on_timeout)

    def stream(self, timeout: float | None = None, *, cancel_on_timeout: bool = False) -> Iterator[str]:
        """Yield answer text as the worker produces it; sets ``self.result`` at the end.

        Works for any job: a worker that does not stream yields the whole
        answer as one piece when it completes.
        """
        timeout, deadline = self._deadline(timeout)
        assembler = OutputAssembler(self.id)
        intervals = self._poll.intervals()
        while True:
            payload = self._poll_until("stream", deadline, timeout, cancel_on_timeout)
            state = self._record(payload)
            arrived = False
            for item in payload.get("stream") or []:
                if isinstance(item, dict) and "output" in item:
                    arrived = True
                    piece = assembler.add(item["output"])
                    if piece:
                        yield piece
            if state.terminal:
                break
            if arrived:
                intervals = self._poll.intervals()
            self._pause(next(intervals), deadline, timeout, cancel_on_timeout)

        rereadable = self._transport.remembers_jobs
        if state.status != COMPLETED and not state.error and rereadable:
            state = self._record(self._transport.poll("status", self.id, deadline))
        raise_for_failure(state)
        if not assembler.complete:
            # The stream lost or never carried the final item: take it from /status.
            if not rereadable:
                raise ResponseFormatError(f"job {self.id}: stream ended without a final item")
            state = self._record(self._transport.poll("status", self.id, deadline))
            full = OutputAssembler(self.id)
            full.add_output(state.output)
            if full.text.startswith(assembler.text) and len(full.text) > len(assembler.text):
                yield full.text[len(assembler.text) :]
            assembler = full
        self.result = assembler.result(state)

    def cancel(self) -> bool:
        """Ask RunPod to cancel the job; False if it had ended or the server cannot cancel
        (a local worker has no /cancel, and runs a job inside the poll that started it)."""
        if self.done:
            return False
        return self._transport.cancel(self.id) == CANCELLED

    # ------------------------------------------------------------------ internals

    def _terminal_state(self) -> JobState | None:
        """The cached final state: never re-poll a finished job (local workers forget it)."""
        return self._state if self._state is not None and self._state.terminal else None

    def _record(self, payload: object) -> JobState:
        self._state = JobState.from_payload(payload, self.id)
        return self._state

    def _deadline(self, timeout: float | None) -> tuple[float, float]:
        timeout = self._wait_timeout if timeout is None else timeout
        return timeout, time.monotonic() + timeout

    def _poll_until(self, route: str, deadline: float, timeout: float, cancel_on_timeout: bool) -> Any:
        """A poll whose read timeout ran into the deadline counts as the deadline."""
        try:
            return self._transport.poll(route, self.id, deadline)
        except APITimeoutError as exc:
            if time.monotonic() < deadline:
                raise
            self._expire(timeout, cancel_on_timeout, exc)

    def _pause(self, seconds: float, deadline: float, timeout: float, cancel: bool) -> None:
        if time.monotonic() + seconds >= deadline:
            self._expire(timeout, cancel, None)
        time.sleep(seconds)

    def _expire(self, timeout: float, cancel: bool, cause: BaseException | None) -> NoReturn:
        if cancel:
            try:
                self.cancel()
            except Exception:  # best effort: the deadline is the error to report
                log.debug("cancel after deadline failed for job %s", self.id, exc_info=True)
        raise DeadlineExceededError(self.id, timeout) from cause
