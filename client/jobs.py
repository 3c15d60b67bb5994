"""A handle on one submitted job: poll it, wait for it, stream it, cancel it."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NoReturn

from .constants import CANCEL_TIMEOUT_S
from .errors import APIStatusError, APITimeoutError, DeadlineExceededError, ResponseFormatError
from .results import (
    CANCELLED,
    COMPLETED,
    JobResult,
    JobState,
    OutputAssembler,
    raise_for_failure,
    result_from_state,
)

if TYPE_CHECKING:
    from .medgemma_client import MedGemmaClient

log = logging.getLogger(__name__)


class Job:
    """A RunPod job. ``wait()`` or ``stream()`` produce a ``JobResult`` or raise a ``JobError``.

    On a local worker (``--rp_serve_api``) the first status/stream poll runs the
    job and blocks until it is done; the worker then forgets it, so the terminal
    state is cached here and never polled twice.
    """

    def __init__(
        self,
        client: MedGemmaClient,
        job_id: str,
        *,
        label: str | None = None,
        state: JobState | None = None,
    ) -> None:
        self.id = job_id
        self.label = label
        self.result: JobResult | None = None
        self._client = client
        self._state = state

    def __repr__(self) -> str:
        status = self._state.status if self._state else "UNKNOWN"
        return f"Job(id={self.id!r}, status={status!r})"

    @property
    def done(self) -> bool:
        return self._terminal_state() is not None

    def status(self) -> JobState:
        """Poll once (on a local worker this blocks until the job has run)."""
        return self._terminal_state() or self._record(self._request(f"status/{self.id}", None))

    def wait(self, timeout: float | None = None, *, cancel_on_timeout: bool = False) -> JobResult:
        """Poll until the job ends; ``timeout`` defaults to the client's ``wait_timeout``.

        Raises ``DeadlineExceededError`` when time runs out (the job keeps
        running unless ``cancel_on_timeout``), a ``JobError`` for FAILED /
        CANCELLED / TIMED_OUT.
        """
        if self.result is not None:
            return self.result
        timeout, deadline = self._deadline(timeout)
        intervals = self._client.poll_policy.intervals()
        while True:
            state = self._terminal_state() or self._record(
                self._request_until(f"status/{self.id}", deadline, timeout, cancel_on_timeout)
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
        intervals = self._client.poll_policy.intervals()
        while True:
            payload = self._request_until(f"stream/{self.id}", deadline, timeout, cancel_on_timeout)
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
                intervals = self._client.poll_policy.intervals()
            self._pause(next(intervals), deadline, timeout, cancel_on_timeout)

        local = self._client.local
        if state.status != COMPLETED and not state.error and not local:
            state = self._record(self._request(f"status/{self.id}", deadline))
        raise_for_failure(state)
        if not assembler.complete:
            # The stream lost or never carried the final item: take it from /status.
            if local:
                raise ResponseFormatError(f"job {self.id}: stream ended without a final item")
            state = self._record(self._request(f"status/{self.id}", deadline))
            full = OutputAssembler(self.id)
            full.add_output(state.output)
            if full.text.startswith(assembler.text) and len(full.text) > len(assembler.text):
                yield full.text[len(assembler.text) :]
            assembler = full
        self.result = assembler.result(state)

    def cancel(self) -> bool:
        """Ask RunPod to cancel the job; False if it had ended or the server cannot cancel.

        A local worker has no /cancel route (and runs a job inside the poll
        that started it), so there it is a logged no-op.
        """
        if self.done:
            return False
        try:
            payload = self._client._transport.request(
                "POST", f"cancel/{self.id}", deadline=time.monotonic() + CANCEL_TIMEOUT_S
            )
        except APIStatusError as exc:
            if self._client.local and exc.status_code in (404, 405):
                log.debug("local worker cannot cancel job %s", self.id)
                return False
            raise
        status = payload.get("status") if isinstance(payload, dict) else None
        log.debug("cancel job %s -> %s", self.id, status)
        return status == CANCELLED

    # ------------------------------------------------------------------ internals

    def _terminal_state(self) -> JobState | None:
        """The cached final state: never re-poll a finished job (local workers forget it)."""
        return self._state if self._state is not None and self._state.terminal else None

    def _record(self, payload: object) -> JobState:
        self._state = JobState.from_payload(payload, self.id)
        return self._state

    def _deadline(self, timeout: float | None) -> tuple[float, float]:
        timeout = self._client.wait_timeout if timeout is None else timeout
        return timeout, time.monotonic() + timeout

    def _request(self, route: str, deadline: float | None) -> Any:
        client = self._client
        # Local polls block while the job runs, so they get the whole wait as read time.
        return client._transport.request(
            "POST" if client.local else "GET",
            route,
            read_timeout=client.wait_timeout if client.local else None,
            deadline=deadline,
        )

    def _request_until(self, route: str, deadline: float, timeout: float, cancel_on_timeout: bool) -> Any:
        """A poll whose read timeout ran into the deadline counts as the deadline."""
        try:
            return self._request(route, deadline)
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
