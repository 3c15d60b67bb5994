"""The one place that sends HTTP requests, decides retries and maps failures to exceptions.

It also owns what differs between hosted RunPod and a local worker (``python handler.py
--rp_serve_api``), so nothing above it branches on which one it talks to:

=====================  =============================  ====================================
                       hosted RunPod                  local worker
=====================  =============================  ====================================
/runsync               ``?wait=`` ms, then polling    holds the request until the job ends
/status, /stream       GET, returns at once           POST, runs the job inside the call
a finished job         can be read again              is forgotten after it was returned
/cancel, /health       exist                          missing: ``cancel`` gives None,
                                                      ``health`` says the worker is reachable
request size           checked against RunPod limits  not limited
=====================  =============================  ====================================

Retry rules (``RetryPolicy`` sets how many and how long):

=========================  ==========================  ===============================
failure                    idempotent call             submission (/run, /runsync)
=========================  ==========================  ===============================
connect refused / timeout  retry                       retry (request never sent)
429                        retry (honour Retry-After)  retry (RunPod refused the job)
read timeout, dropped      retry                       uncertain: the job may be queued
connection, 408, 5xx
other 4xx                  raise                       raise
=========================  ==========================  ===============================

An uncertain submission raises ``SubmissionUncertainError`` unless the caller
passed ``on_uncertain``: then it is told (so it can warn and count a possible
duplicate) and the request is sent again.

Only methods, routes, statuses, sizes and timings are logged; never bodies or headers.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, NewConnectionError

from .config import ClientConfig
from .constants import (
    CANCEL_TIMEOUT_S,
    HTTP_POOL_SIZE,
    MAX_ERROR_MESSAGE_CHARS,
    MAX_RUN_PAYLOAD_BYTES,
    MAX_RUNSYNC_PAYLOAD_BYTES,
    RUNSYNC_MIN_WAIT_MS,
    RUNSYNC_READ_MARGIN_S,
    RUNSYNC_WAIT_MS,
)
from .errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    InvalidRequestError,
    NotFoundError,
    RateLimitError,
    ResponseFormatError,
    ServerError,
    SubmissionUncertainError,
    one_line,
)
from .policies import RetryPolicy

log = logging.getLogger(__name__)

USER_AGENT = "medgemma-runpod-client/0.1"

# Called before an uncertain submission is sent again: (label, the failure).
OnUncertain = Callable[[str | None, APIError], None]


class Transport:
    """Sends JSON requests to one RunPod endpoint (hosted or local) with retries.

    ``wait_timeout`` is the longest a call that blocks on a job may take: a local
    worker's /runsync, /status and /stream run the job inside the request.
    """

    def __init__(
        self, config: ClientConfig, *, retry: RetryPolicy, timeout: tuple[float, float], wait_timeout: float
    ) -> None:
        self._config = config
        self._retry = retry
        self._connect_timeout, self._read_timeout = timeout
        self._wait_timeout = wait_timeout
        self._session = requests.Session()
        adapter = HTTPAdapter(pool_maxsize=HTTP_POOL_SIZE, max_retries=0)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._session.headers["User-Agent"] = USER_AGENT
        if config.api_key:
            # Lives only here; headers are never logged and requests drops it on
            # redirects to another host.
            self._session.headers["Authorization"] = f"Bearer {config.api_key}"

    def close(self) -> None:
        self._session.close()

    @property
    def local(self) -> bool:
        """True for the runpod SDK's local API server (``--rp_serve_api``)."""
        return self._config.local

    @property
    def remembers_jobs(self) -> bool:
        """False where a job is forgotten once a poll has returned it finished (a local worker)."""
        return not self.local

    # ------------------------------------------------------------------ RunPod's routes

    def submit(
        self,
        body: dict[str, Any],
        *,
        sync: bool,
        deadline: float,
        label: str | None = None,
        on_uncertain: OnUncertain | None = None,
    ) -> Any:
        """POST /run or /runsync (``sync``): the first answer about the job (its id and status).

        /runsync is asked to hold the request for at most ``RUNSYNC_WAIT_MS`` (less if the
        deadline is nearer); an unfinished job then comes back IN_QUEUE / IN_PROGRESS.
        """
        size = len(json.dumps(body))
        limit = MAX_RUNSYNC_PAYLOAD_BYTES if sync else MAX_RUN_PAYLOAD_BYTES
        if not self.local and size > limit:
            raise InvalidRequestError(f"request for {label or 'job'} is {size} bytes; RunPod accepts at most {limit}")
        route, params, read_timeout = "run", None, None
        if sync:
            route = "runsync"
            if self.local:
                # The local server ignores ``wait`` and holds the request until the job ends.
                read_timeout = self._wait_timeout
            else:
                remaining_ms = int((deadline - time.monotonic()) * 1000)
                wait_ms = max(min(RUNSYNC_WAIT_MS, remaining_ms), RUNSYNC_MIN_WAIT_MS)
                params = {"wait": wait_ms}
                read_timeout = wait_ms / 1000 + RUNSYNC_READ_MARGIN_S
        log.debug("%s %s: %d bytes", route, label or "-", size)
        return self.request(
            "POST",
            route,
            json=body,
            params=params,
            read_timeout=read_timeout,
            deadline=deadline,
            submission=True,
            label=label,
            on_uncertain=on_uncertain,
        )

    def poll(self, route: str, job_id: str, deadline: float | None) -> Any:
        """``status/<id>`` or ``stream/<id>``: GET on RunPod; POST on a local worker, which
        runs the job inside the call, so it gets the whole wait as read time."""
        if self.local:
            return self.request("POST", f"{route}/{job_id}", read_timeout=self._wait_timeout, deadline=deadline)
        return self.request("GET", f"{route}/{job_id}", deadline=deadline)

    def cancel(self, job_id: str) -> str | None:
        """POST cancel/<id>: the status RunPod reports, or None where the server cannot cancel."""
        try:
            payload = self.request("POST", f"cancel/{job_id}", deadline=time.monotonic() + CANCEL_TIMEOUT_S)
        except APIStatusError as exc:
            if self.local and exc.status_code in (404, 405):
                log.debug("local worker cannot cancel job %s", job_id)
                return None
            raise
        status = payload.get("status") if isinstance(payload, dict) else None
        log.debug("cancel job %s -> %s", job_id, status)
        return status if isinstance(status, str) else None

    def health(self) -> dict[str, Any]:
        """GET health: queue and worker counts; a local worker, which has no such route,
        is reported as reachable when it answers 404/405."""
        try:
            payload = self.request("GET", "health")
        except APIStatusError as exc:
            if self.local and exc.status_code in (404, 405):
                return {"local": True, "reachable": True}
            raise
        if not isinstance(payload, dict):
            raise ResponseFormatError("GET health: the answer is not an object")
        return payload

    # ------------------------------------------------------------------ any route

    def request(
        self,
        method: str,
        route: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        read_timeout: float | None = None,
        deadline: float | None = None,
        submission: bool = False,
        label: str | None = None,
        on_uncertain: OnUncertain | None = None,
    ) -> Any:
        """Send ``method route`` and return the decoded JSON answer.

        ``deadline`` (a ``time.monotonic()`` value) caps read timeouts and stops
        retrying once reached. ``submission`` marks calls that must not be
        repeated blindly (see the module docstring).
        """
        url = f"{self._config.api_root}/{route}"
        attempt = 0
        while True:
            timeout = self._timeouts(read_timeout, deadline)
            started = time.monotonic()
            try:
                response = self._session.request(method, url, json=json, params=params, timeout=timeout)
            except requests.RequestException as exc:
                error: APIError = _connection_error(method, route, exc)
                sent, retry_after = _request_was_sent(exc), None
                log.debug("%s %s failed after %.2f s: %s", method, route, _since(started), error)
            else:
                log.debug(
                    "%s %s -> %d (%d bytes, %.2f s)",
                    method,
                    route,
                    response.status_code,
                    len(response.content),
                    _since(started),
                )
                if response.ok:
                    return _decode(method, route, response)
                error = _status_error(method, route, response)
                if not _retryable_status(response.status_code):
                    raise error
                sent = response.status_code != 429
                retry_after = response.headers.get("Retry-After")

            uncertain = submission and sent
            delay = self._retry.delay(attempt, retry_after)
            give_up = (
                attempt >= self._retry.max_retries
                or (uncertain and on_uncertain is None)
                or (deadline is not None and time.monotonic() + delay >= deadline)
            )
            if give_up:
                if uncertain:
                    raise SubmissionUncertainError(
                        f"{method} {route} for {label or 'a job'}: no usable answer after "
                        f"sending ({error}); the job may have been queued",
                        label=label,
                    ) from error
                raise error
            if uncertain and on_uncertain is not None:
                on_uncertain(label, error)
            log.info("retrying %s %s in %.2f s after: %s", method, route, delay, error)
            time.sleep(delay)
            attempt += 1

    def _timeouts(self, read_timeout: float | None, deadline: float | None) -> tuple[float, float]:
        connect, read = self._connect_timeout, read_timeout or self._read_timeout
        if deadline is not None:
            remaining = max(deadline - time.monotonic(), 0.01)
            connect, read = min(connect, remaining), min(read, remaining)
        return connect, read


def _since(started: float) -> float:
    return time.monotonic() - started


def _retryable_status(status: int) -> bool:
    return status in (408, 429) or status >= 500


def _request_was_sent(exc: requests.RequestException) -> bool:
    """False only when the connection was never established (safe to send again)."""
    if isinstance(exc, requests.ConnectTimeout):
        return False
    reason = exc.args[0] if exc.args else None
    if isinstance(reason, MaxRetryError):
        reason = reason.reason
    return not isinstance(reason, (NewConnectionError, ConnectTimeoutError))


def _connection_error(method: str, route: str, exc: requests.RequestException) -> APIError:
    reason = exc.args[0] if exc.args else exc
    if isinstance(reason, MaxRetryError) and reason.reason is not None:
        reason = reason.reason
    message = f"{method} {route}: {type(reason).__name__}: {one_line(str(reason), MAX_ERROR_MESSAGE_CHARS)}"
    if isinstance(exc, requests.Timeout):
        return APITimeoutError(message)
    return APIConnectionError(message)


def _status_error(method: str, route: str, response: requests.Response) -> APIStatusError:
    code = response.status_code
    message = f"HTTP {code} from {method} {route}: {_error_detail(response)}"
    if code in (401, 403):
        return AuthenticationError(message, status_code=code)
    if code == 404:
        return NotFoundError(message, status_code=code)
    if code == 429:
        return RateLimitError(message, status_code=code)
    if code >= 500:
        return ServerError(message, status_code=code)
    return APIStatusError(message, status_code=code)


def _error_detail(response: requests.Response) -> str:
    """A short reason from an error body; FastAPI's validation details lose their ``input``."""
    try:
        body = response.json()
    except ValueError:
        return response.reason or "no details"
    if isinstance(body, dict):
        detail = body.get("error") or body.get("message") or body.get("detail")
        if isinstance(detail, list):
            detail = "; ".join(
                f"{'.'.join(map(str, item.get('loc', [])))}: {item.get('msg')}"
                for item in detail
                if isinstance(item, dict)
            )
        if detail:
            return one_line(str(detail), MAX_ERROR_MESSAGE_CHARS)
    return response.reason or "no details"


def _decode(method: str, route: str, response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise ResponseFormatError(f"{method} {route}: HTTP {response.status_code} answer is not JSON") from exc
