"""A test double of RunPod's hosted serverless API, served over real HTTP on 127.0.0.1.

It follows RunPod's documented queue-endpoint behaviour closely enough for the
client to be tested without a network or a GPU:

* ``POST /v2/{endpoint}/run`` -> ``{"id", "status": "IN_QUEUE"}``; jobs then move
  IN_QUEUE -> IN_PROGRESS -> COMPLETED / FAILED, or TIMED_OUT when
  ``policy.executionTimeout`` (ms) is shorter than the job, or CANCELLED;
* ``POST /runsync?wait=ms`` holds the request until the job ends or the wait
  runs out, then answers like ``/status`` (IN_QUEUE / IN_PROGRESS if unfinished);
* ``GET /status/{id}`` (``delayTime``, ``executionTime``, ``output`` / ``error``),
  ``GET /stream/{id}`` (chunks new since the previous call), ``POST /cancel/{id}``,
  ``GET /health``;
* ``Authorization`` is checked (401), unknown endpoints, routes and jobs are 404;
* ``/v2/{endpoint}/openai/v1/...``: forwarded to the real worker's ``handler`` when the
  double is given one.

This module is the entry point: routing and the double's state. Each other concern has its own:

* ``tests.double_worker``: the fake worker. It validates each input with the worker's own
  ``parse_job_input`` (a bad input -> ``{"error": "field: problem"}``, the worker's text) and
  answers a valid one with a deterministic fake summary; no model, and no image URL fetched;
* ``tests.double_jobs``: the job life cycle and what ``/status``, ``/stream``, ``/cancel`` and
  ``/health`` say of it;
* ``tests.double_openai``: the OpenAI route, run through the runpod SDK's own job functions;
* ``tests.double_faults``: fault injection;
* ``tests.double_http``: the HTTP server both RunPod doubles share.

With ``streaming_worker=True`` outputs become lists of yielded items, as RunPod aggregates a
generator handler's output; a worker that does not stream ignores ``stream``. ``queued`` /
``executed`` count per document (keyed by the text's hash) so tests can assert on duplicates.
Nothing is ever logged.
"""

from __future__ import annotations

import collections
import json
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.double_faults import ALL_FAULTS, STATUS_FAULTS, SUBMIT_ROUTES, Faults, drop
from tests.double_http import Handler, Server, send_json
from tests.double_jobs import ENDED, FakeJob, advance, cancel, health_of, status_of, stream_of
from tests.double_openai import OpenAIRoute
from tests.double_worker import (
    ADAPTERS,
    JSON_MIN_TOKENS,
    MODEL,
    MODEL_REVISION,
    TINY_PNG,
    FakeWorker,
    document_text,
    fake_answer,
    fake_summary,
    text_key,
)

__all__ = [
    "ADAPTERS",
    "ALL_FAULTS",
    "JSON_MIN_TOKENS",
    "MODEL",
    "MODEL_REVISION",
    "TINY_PNG",
    "FakeJob",
    "RunPodDouble",
    "document_text",
    "fake_answer",
    "fake_summary",
    "text_key",
]

# Each route: its method and how many path parts it has (/v2/{endpoint}/{route}[/{id}]).
ROUTES = {
    "run": ("POST", 3),
    "runsync": ("POST", 3),
    "health": ("GET", 3),
    "status": ("GET", 4),
    "stream": ("GET", 4),
    "cancel": ("POST", 4),
}


class RunPodDouble:
    """Start with ``with RunPodDouble() as double:``; point the client at ``double.base_url``."""

    def __init__(
        self,
        api_key: str = "test-key-0123456789",
        endpoint_id: str = "ep-double",
        *,
        adapters: tuple[str, ...] = ADAPTERS,
        queue_s: float = 0.02,
        execution_s: float = 0.05,
        streaming_worker: bool = False,
        runsync_wait_cap_s: float | None = None,
        retry_after: str | None = "0",
        handler: Callable[[dict[str, Any]], Any] | None = None,
    ) -> None:
        self.api_key = api_key
        self.handler = handler  # the real worker's handler behind the /openai/ route
        self.endpoint_id = endpoint_id
        self.adapters = adapters
        self.queue_s = queue_s
        self.execution_s = execution_s
        self.streaming_worker = streaming_worker
        self.runsync_wait_cap_s = runsync_wait_cap_s
        self.retry_after = retry_after
        self.worker = FakeWorker(adapters)

        self.jobs: dict[str, FakeJob] = {}
        self.queued: collections.Counter[str] = collections.Counter()
        self.executed: collections.Counter[str] = collections.Counter()
        self.requests: list[tuple[str, str]] = []
        self.runsync_waits: list[int] = []

        self._errors: dict[str, str] = {}
        self._slow: dict[str, float] = {}
        self._lock = threading.Lock()
        self._faults = Faults(self._lock)
        self._openai = OpenAIRoute(handler) if handler is not None else None
        self._server: Server | None = None

    @property
    def faults(self) -> list[tuple[str, str, str]]:
        """Every fault served, as (route, fault, key)."""
        return self._faults.log

    @property
    def forwarded(self) -> list[dict[str, Any]]:
        """The job inputs the /openai/ route handed to the handler."""
        return self._openai.forwarded if self._openai is not None else []

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> RunPodDouble:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        server = Server(("127.0.0.1", 0), Handler)
        server.double = self
        self._server = server
        threading.Thread(target=server.serve_forever, args=(0.02,), name="runpod-double", daemon=True).start()
        if self._openai is not None:
            self._openai.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._openai is not None:
            self._openai.stop()

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v2"

    # ------------------------------------------------------------------ scripting

    def fail_text(self, text: str, error: str) -> None:
        """The worker answers ``{"error": error}`` for this document (when its input is valid)."""
        self._errors[text_key(text)] = error

    def slow_text(self, text: str, execution_s: float) -> None:
        self._slow[text_key(text)] = execution_s

    def inject(self, route: str, *faults: str) -> None:
        """Answer the next requests to ``route`` with these faults, in order."""
        self._faults.inject(route, *faults)

    def random_faults(
        self,
        rate: float,
        *,
        kinds: tuple[str, ...] = ALL_FAULTS,
        seed: int = 0,
        max_consecutive: int = 2,
    ) -> None:
        """Fail a fraction of requests, never more than ``max_consecutive`` in a row
        for the same document or job (so a client with enough retries always gets through)."""
        self._faults.random(rate, kinds, seed, max_consecutive)

    def jobs_for(self, text: str) -> list[FakeJob]:
        key = text_key(text)
        with self._lock:
            return [job for job in self.jobs.values() if job.key == key]

    def count_requests(self, route: str) -> int:
        with self._lock:
            return sum(1 for _, seen in self.requests if seen == route)

    # ------------------------------------------------------------------ HTTP handling

    def handle(self, handler: Handler, method: str) -> None:
        url = urlsplit(handler.path)
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        parts = url.path.strip("/").split("/")
        route = parts[2] if len(parts) >= 3 else ""
        with self._lock:
            self.requests.append((method, route))
        if handler.headers.get("Authorization") not in (f"Bearer {self.api_key}", self.api_key):
            return send_json(handler, 401, {"error": "Unauthorized"})
        if len(parts) < 3 or parts[0] != "v2" or parts[1] != self.endpoint_id:
            return send_json(handler, 404, {"error": "endpoint not found"})
        if route == "openai" and self._openai is not None:
            return self._openai.serve(handler, method, "/" + "/".join(parts[3:]), body)
        if route not in ROUTES or len(parts) != ROUTES[route][1]:
            return send_json(handler, 404, {"error": "route not found"})
        if method != ROUTES[route][0]:
            return send_json(handler, 405, {"error": "method not allowed"})

        payload: dict[str, Any] = {}
        if route in SUBMIT_ROUTES:
            try:
                payload = json.loads(body or b"{}")
            except ValueError:
                return send_json(handler, 400, {"error": "body is not JSON"})
            if not isinstance(payload.get("input"), dict):
                return send_json(handler, 400, {"error": "'input' must be an object"})
            key = text_key(document_text(payload["input"]))
        else:
            key = parts[3] if len(parts) == 4 else route

        fault = self._faults.next(route, key)
        if fault in STATUS_FAULTS:
            headers = {"Retry-After": self.retry_after} if fault in ("429", "503") and self.retry_after else {}
            return send_json(handler, int(fault), {"error": f"injected {fault}"}, headers)
        if fault == "drop_before":
            return drop(handler)

        if route in SUBMIT_ROUTES:
            job = self._queue(payload)
            if fault == "drop_after":
                return drop(handler)
            if route == "run":
                return send_json(handler, 200, {"id": job.id, "status": "IN_QUEUE"})
            wait_ms = int(parse_qs(url.query).get("wait", ["90000"])[0])
            return send_json(handler, 200, self._runsync(job, wait_ms))
        if route == "health":
            return send_json(handler, 200, self._health())
        with self._lock:
            job = self.jobs.get(parts[3])
            if job is None:
                answer: tuple[int, dict[str, Any]] = (404, {"error": "job not found"})
            else:
                self._advance(job, time.monotonic())
                answer = (200, {"status": status_of, "stream": stream_of, "cancel": cancel}[route](job))
        return send_json(handler, *answer)

    # ------------------------------------------------------------------ jobs

    def _queue(self, payload: dict[str, Any]) -> FakeJob:
        job_input = payload["input"]
        key = text_key(document_text(job_input))
        policy = payload.get("policy") or {}
        timeout_ms = policy.get("executionTimeout")
        with self._lock:
            job = FakeJob(
                id=f"job-{uuid.uuid4().hex[:12]}",
                key=key,
                job_input=job_input,
                created=time.monotonic(),
                execution_s=self._slow.get(key, self.execution_s),
                execution_timeout_s=None if timeout_ms is None else timeout_ms / 1000,
            )
            self.jobs[job.id] = job
            self.queued[key] += 1
        return job

    def _runsync(self, job: FakeJob, wait_ms: int) -> dict[str, Any]:
        self.runsync_waits.append(wait_ms)
        wait_s = wait_ms / 1000
        if self.runsync_wait_cap_s is not None:
            wait_s = min(wait_s, self.runsync_wait_cap_s)
        until = time.monotonic() + wait_s
        while True:
            with self._lock:
                self._advance(job, time.monotonic())
                if job.status in ENDED or time.monotonic() >= until:
                    return status_of(job)
            time.sleep(0.005)

    def _advance(self, job: FakeJob, now: float) -> None:
        advance(job, now, self.queue_s, self._run_worker)

    def _health(self) -> dict[str, Any]:
        with self._lock:
            now = time.monotonic()
            for job in self.jobs.values():
                self._advance(job, now)
            return health_of(self.jobs.values())

    def _run_worker(self, job: FakeJob) -> None:
        """The job starts: what the MedGemma worker would return for its input (no model involved)."""
        self.executed[job.key] += 1
        output = self.worker.run(job.job_input, job.execution_s, job.id)
        error = output.get("error") or self._errors.get(job.key)
        if error is not None and not self.streaming_worker:
            job.error = error  # a handler's {"error": ...} fails the job
            return
        if error is not None:
            items: list[Any] = [{"error": error}]
        else:
            if not self.streaming_worker:
                job.output = output
                return
            if job.job_input.get("stream"):
                answer = output.pop("output")
                words = answer.split(" ")
                items = [{"delta": word if i == 0 else " " + word} for i, word in enumerate(words)]
                items.append({"delta": "", "done": True, **output})
            else:
                items = [output]
        job.output = items
        job.chunks = items
