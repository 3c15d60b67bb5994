"""``MedGemmaClient``: the library entry point for the MedGemma RunPod worker."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Any, Unpack

from .config import ClientConfig, resolve_config
from .constants import CONNECT_TIMEOUT_S, READ_TIMEOUT_S, WAIT_TIMEOUT_S
from .inputs import InputOptions, JobOptions, Message, build_job_input
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
        self._transport = Transport(self.config, retry=retry, timeout=timeout, wait_timeout=wait_timeout)

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
        """Summarise a clinical note (``mode="summarize"``, whatever ``options`` say)."""
        options["mode"] = "summarize"
        return self.generate(text, timeout=timeout, label=label, **options)

    def chat(
        self,
        messages: Sequence[Message],
        *,
        timeout: float | None = None,
        label: str | None = None,
        **options: Unpack[JobOptions],
    ) -> JobResult:
        """Answer the last turn of a conversation (the job's ``messages``, see ``chat_message``).

        A system turn in ``messages`` wins over ``mode`` and ``system_prompt``. Use
        ``run(messages=...)`` to submit one without waiting, or to stream it.
        """
        return self.generate(timeout=timeout, label=label, messages=messages, **options)

    def job(self, job_id: str, *, label: str | None = None) -> Job:
        """A handle on an existing job, e.g. one submitted earlier with ``run()``."""
        return self._job(job_id, label=label)

    def health(self) -> dict[str, Any]:
        """RunPod's endpoint health (queue and worker counts); a local worker, which has
        no /health route, is reported as ``{"local": true, "reachable": true}``."""
        return self._transport.health()

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
        started = time.monotonic()
        payload = self._transport.submit(
            body, sync=sync, deadline=deadline, label=label, on_uncertain=self._on_uncertain
        )
        state = JobState.from_payload(payload)
        log.debug(
            "%s %s: job %s %s (%.2f s)",
            "runsync" if sync else "run",
            label or "-",
            state.job_id,
            state.status,
            time.monotonic() - started,
        )
        return self._job(state.job_id, label=label, state=state)

    def _job(self, job_id: str, *, label: str | None, state: JobState | None = None) -> Job:
        return Job(
            self._transport, job_id, poll=self.poll_policy, wait_timeout=self.wait_timeout, label=label, state=state
        )
