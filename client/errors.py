"""Exception hierarchy: callers catch one family per kind of failure.

Messages carry ids, statuses and the worker's error text, never note text,
prompts, answers, images or credentials.
"""

from __future__ import annotations

import json


class MedGemmaClientError(Exception):
    """Base class of every error raised by this package (the worker's own errors are
    ``medgemma.errors.MedGemmaError``; they reach a client as a job's error text)."""


def one_line(text: str, limit: int) -> str:
    """``text`` on one line, cut to ``limit`` characters: for messages and the CLI's error line."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class ConfigurationError(MedGemmaClientError):
    """Credentials or endpoint settings are missing or inconsistent."""


class InvalidRequestError(MedGemmaClientError):
    """The job request is unusable before anything is sent (empty, too large)."""


# --------------------------------------------------------------------- transport


class APIError(MedGemmaClientError):
    """Talking to the RunPod API failed."""


class APIConnectionError(APIError):
    """No usable HTTP answer: connection refused, dropped or reset."""


class APITimeoutError(APIConnectionError):
    """The connection or the read timed out."""


class ResponseFormatError(APIError):
    """The API or the worker answered with a shape this client does not know."""


class SubmissionUncertainError(APIError):
    """The answer to a /run or /runsync was lost after the request was sent.

    The job may or may not have been queued; re-submitting could run it twice,
    so the library does not do it silently. ``label`` names the document.
    """

    def __init__(self, message: str, *, label: str | None = None) -> None:
        super().__init__(message)
        self.label = label


class APIStatusError(APIError):
    """The API answered with a non-success HTTP status."""

    def __init__(self, message: str, *, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


class AuthenticationError(APIStatusError):
    """401/403: the API key is missing, wrong or lacks access to the endpoint."""


class NotFoundError(APIStatusError):
    """404: unknown endpoint, route or job (results expire after completion)."""


class RateLimitError(APIStatusError):
    """429 after all retries."""


class ServerError(APIStatusError):
    """5xx after all retries."""


# --------------------------------------------------------------------- job outcomes


def _error_summary(error: str) -> str:
    """RunPod wraps a crashed handler's error in JSON with a traceback; keep type and message."""
    try:
        blob = json.loads(error)
    except ValueError:
        return error
    if isinstance(blob, dict) and blob.get("error_message"):
        return f"{blob.get('error_type', 'error')}: {blob['error_message']}"
    return error


class JobError(MedGemmaClientError):
    """A job reached a terminal state other than COMPLETED."""

    status = "FAILED"

    def __init__(self, job_id: str | None, error: str | None = None) -> None:
        self.job_id = job_id
        self.error = error
        detail = f": {_error_summary(error)}" if error else ""
        super().__init__(f"job {job_id} {self.status}{detail}")


class JobFailedError(JobError):
    """The worker reported an error (``error`` holds its text)."""

    status = "FAILED"


class JobCancelledError(JobError):
    """The job was cancelled (by us or someone else)."""

    status = "CANCELLED"


class JobTimedOutError(JobError):
    """RunPod gave up on the job (execution timeout or queue TTL)."""

    status = "TIMED_OUT"


class IncompleteResultError(MedGemmaClientError):
    """A JSON job ended before its object was closed (``finish_reason`` "length"): no object to use."""

    def __init__(self, job_id: str | None, finish_reason: str | None) -> None:
        self.job_id = job_id
        self.finish_reason = finish_reason
        super().__init__(
            f"job {job_id}: the JSON object is incomplete (finish_reason {finish_reason}); "
            "allow more tokens (max_new_tokens, --max-tokens)"
        )


class DeadlineExceededError(MedGemmaClientError):
    """We stopped waiting; the job itself may still be running remotely."""

    def __init__(self, job_id: str | None, waited_s: float) -> None:
        self.job_id = job_id
        self.waited_s = waited_s
        super().__init__(f"job {job_id} did not finish within {waited_s:g} s")
