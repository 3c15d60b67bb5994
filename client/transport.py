"""The one place that sends HTTP requests, decides retries and maps failures to exceptions.

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

import logging
import time
from collections.abc import Callable
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, NewConnectionError

from .config import ClientConfig
from .constants import HTTP_POOL_SIZE, MAX_ERROR_MESSAGE_CHARS
from .errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    NotFoundError,
    RateLimitError,
    ResponseFormatError,
    ServerError,
    SubmissionUncertainError,
)
from .policies import RetryPolicy

log = logging.getLogger(__name__)

USER_AGENT = "medgemma-runpod-client/0.1"

# Called before an uncertain submission is sent again: (label, the failure).
OnUncertain = Callable[[str | None, APIError], None]


class Transport:
    """Sends JSON requests to one RunPod endpoint (hosted or local) with retries."""

    def __init__(self, config: ClientConfig, *, retry: RetryPolicy, timeout: tuple[float, float]) -> None:
        self._config = config
        self._retry = retry
        self._connect_timeout, self._read_timeout = timeout
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
    message = f"{method} {route}: {type(reason).__name__}: {_clip(str(reason))}"
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
            return _clip(str(detail))
    return response.reason or "no details"


def _decode(method: str, route: str, response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise ResponseFormatError(f"{method} {route}: HTTP {response.status_code} answer is not JSON") from exc


def _clip(text: str) -> str:
    text = " ".join(text.split())
    if len(text) <= MAX_ERROR_MESSAGE_CHARS:
        return text
    return text[: MAX_ERROR_MESSAGE_CHARS - 1] + "…"
