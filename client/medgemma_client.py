"""``MedGemmaClient``: the library entry point for the MedGemma RunPod worker."""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Unpack

from .config import ClientConfig, resolve_config
from .constants import (
    CONNECT_TIMEOUT_S,
    MAX_RUN_PAYLOAD_BYTES,
    MAX_RUNSYNC_PAYLOAD_BYTES,
    READ_TIMEOUT_S,
    RUNSYNC_MIN_WAIT_MS,
    RUNSYNC_READ_MARGIN_S,
    RUNSYNC_WAIT_MS,
    WAIT_TIMEOUT_S,
)
from .errors import APIStatusError, InvalidRequestError
from .inputs import InputOptions, build_job_input
from .jobs import Job
from .policies import PollPolicy, RetryPolicy
from .results import JobResult, JobState
from .transport import OnUncertain, Transport

log = logging.getLogger(__name__)

DEFAULT_RETRY = RetryPolicy()
DEFAULT_POLL = PollPolicy()


class MedGemmaClient:
    """Submits jobs to a MedGemma worker on RunPod (or a local ``--rp_serve_api`` worker).

    Settings come from arguments, then ``RUNPOD_API_KEY`` / ``RUNPOD_ENDPOINT_ID``
    / ``RUNPOD_BASE_URL`` in the environment, then a ``.env`` file.

    ``on_uncertain_submission`` opts in to re-sending a /run or /runsync whose
    answer was lost (the job may already be queued, so it may run twice); it is
    called with the job's label before each re-send so the caller can warn and
    count. Without it such a loss raises ``SubmissionUncertainError``.
    """

    def __init__(
        self,
        api_key: str | None = None,
        endpoint_id: str | None = None,
        base_url: str | None = None,
        *,
        env_file: str | os.PathLike[str] | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
        poll: PollPolicy = DEFAULT_POLL,
        timeout: tuple[float, float] = (CONNECT_TIMEOUT_S, READ_TIMEOUT_S),
        wait_timeout: float = WAIT_TIMEOUT_S,
        on_uncertain_submission: OnUncertain | None = None,
    ) -> None:
        self.config: ClientConfig = resolve_config(api_key, endpoint_id, base_url, env_file)
        self.poll_policy = poll
        self.wait_timeout = wait_timeout
        self._on_uncertain = on_uncertain_submission
        self._transport = Transport(self.config, retry=retry, timeout=timeout)

    def __repr__(self) -> str:
        return f"MedGemmaClient({self.config!r})"

    def __enter__(self) -> MedGemmaClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._transport.close()

    @property
    def local(self) -> bool:
        """True when talking to the runpod SDK's local API server."""
        return self.config.local

    # ------------------------------------------------------------------ jobs

    def run(
        self,
        text: str | None = None,
        *,
        sync: bool = False,
        label: str | None = None,
        execution_timeout: float | None = None,
        **options: Unpack[InputOptions],
    ) -> Job:
        """Submit a job and return its handle.

        ``sync=False`` uses /run (returns at once); ``sync=True`` uses /runsync,
        which holds the request until the job ends or RunPod's wait runs out;
        either way ``Job.wait()`` gives the result. ``label`` names the job in
        messages (e.g. a file name; never put note text in it).
        ``execution_timeout`` (seconds) becomes RunPod's ``policy.executionTimeout``.
        """
        return self._submit(
            build_job_input(text, **options),
            sync=sync,
            label=label,
            execution_timeout=execution_timeout,
            deadline=time.monotonic() + self.wait_timeout,
        )

    def generate(
        self,
        text: str | None = None,
        *,
        timeout: float | None = None,
        label: str | None = None,
        execution_timeout: float | None = None,
        **options: Unpack[InputOptions],
    ) -> JobResult:
        """Run one job to completion (/runsync, then polling if RunPod's wait runs out)."""
        timeout = self.wait_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        job = self._submit(
            build_job_input(text, **options),
            sync=True,
            label=label,
            execution_timeout=execution_timeout,
            deadline=deadline,
        )
        return job.wait(timeout=max(deadline - time.monotonic(), 0.0))

    def summarize(
        self,
        text: str,
        *,
        timeout: float | None = None,
        label: str | None = None,
        **options: Unpack[InputOptions],
    ) -> JobResult:
        """Summarise a clinical note (``mode="summarize"``)."""
        return self.generate(text, timeout=timeout, label=label, mode="summarize", **options)

    def job(self, job_id: str, *, label: str | None = None) -> Job:
        """A handle on an existing job, e.g. one submitted earlier with ``run()``."""
        return Job(self, job_id, label=label)

    def health(self) -> dict[str, Any]:
        """RunPod's endpoint health (queue and worker counts).

        A local worker has no /health route; if it answers 404/405 it is
        reachable, and that is what is reported.
        """
        try:
            return self._transport.request("GET", "health")
        except APIStatusError as exc:
            if self.local and exc.status_code in (404, 405):
                return {"local": True, "reachable": True}
            raise

    # ------------------------------------------------------------------ internals

    def _submit(
        self,
        job_input: dict[str, Any],
        *,
        sync: bool,
        label: str | None,
        execution_timeout: float | None,
        deadline: float,
    ) -> Job:
        body: dict[str, Any] = {"input": job_input}
        if execution_timeout is not None:
            body["policy"] = {"executionTimeout": int(execution_timeout * 1000)}
        size = len(json.dumps(body))
        limit = MAX_RUNSYNC_PAYLOAD_BYTES if sync else MAX_RUN_PAYLOAD_BYTES
        if not self.local and size > limit:
            raise InvalidRequestError(f"request for {label or 'job'} is {size} bytes; RunPod accepts at most {limit}")
        route, params, read_timeout = "run", None, None
        if sync:
            route = "runsync"
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            wait_ms = max(min(RUNSYNC_WAIT_MS, remaining_ms), RUNSYNC_MIN_WAIT_MS)
            if self.local:
                # The local server ignores ``wait`` and holds the request until the job ends.
                read_timeout = self.wait_timeout
            else:
                params = {"wait": wait_ms}
                read_timeout = wait_ms / 1000 + RUNSYNC_READ_MARGIN_S
        started = time.monotonic()
        payload = self._transport.request(
            "POST",
            route,
            json=body,
            params=params,
            read_timeout=read_timeout,
            deadline=deadline,
            submission=True,
            label=label,
            on_uncertain=self._on_uncertain,
        )
        state = JobState.from_payload(payload)
        log.debug(
            "%s %s: job %s %s (%d bytes sent, %.2f s)",
            route,
            label or "-",
            state.job_id,
            state.status,
            size,
            time.monotonic() - started,
        )
        return Job(self, state.job_id, label=label, state=state)
