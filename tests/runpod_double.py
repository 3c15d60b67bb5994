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
* ``/v2/{endpoint}/openai/v1/...`` (the OpenAI-compatible route, when the double is given
  the real worker's ``handler``): see below.

Its "worker" does not run a model: it validates the input like the real
worker (unknown keys, bad mode, nothing to process, text and messages together,
a bad format or an unknown adapter -> ``{"error": ...}``) and answers with a
deterministic fake summary built from the document's length and hash (a
conversation's document is its turns' text). JSON jobs (``format: "json"``,
``json_schema``) get ``output`` as JSON text and ``parsed`` as the object, cut
off with ``finish_reason: "length"`` below ``JSON_MIN_TOKENS``; every answer
names its ``adapter`` and carries a ``provenance`` object. With
``streaming_worker=True`` outputs become lists of yielded items, as RunPod
aggregates a generator handler's output.

The OpenAI route forwards to a real handler, in process, as RunPod forwards it to a worker
(runpod-workers/worker-vllm reads the same shape): ``POST .../openai/v1/chat/completions``
becomes the job input ``{"openai_route": "/v1/chat/completions", "openai_input": <body>}``
and a ``GET`` (``/v1/models``) has ``"openai_input": {}``. The job runs through the runpod
SDK's own ``run_job`` / ``run_job_generator`` on one event loop (the worker's), and:

* a job that completes answers HTTP 200 with its output: an object as JSON; a generator's
  items joined, strings as they are (SSE text for ``"stream": true``, sent as they come);
* a job that fails (its output has ``error``) answers with that error as OpenAI's error
  body ``{"error": {...}}``. RunPod documents neither the status nor the body of a failed
  ``/openai/`` job, so the double picks OpenAI's: 404 for ``model_not_found``, 400 for
  ``invalid_request_error``, else 500; a stream that fails after its first chunk ends with
  an SSE ``data: {"error": ...}`` event. (A job that *completes* with an error-shaped output
  is passed on as a 200, as RunPod does: runpod-workers/worker-vllm issue #57.)

Fault injection: scripted (``inject``) or random (``random_faults``) 429 (with
``Retry-After``), 500/502/503, and dropped connections before or after a
submission is queued. ``queued`` / ``executed`` count per document (keyed by
the text's hash) so tests can assert on duplicates. Nothing is ever logged.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import inspect
import itertools
import json
import queue
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from runpod.serverless.modules import rp_job

from tests.double_http import Handler as _Handler
from tests.double_http import Server as _Server
from tests.double_http import send_json as _send

MODEL = "double/medgemma-stand-in"
MODEL_REVISION = "0123456789abcdef0123456789abcdef01234567"
ADAPTERS = ("notes-style",)
# A JSON job given fewer new tokens than this is cut off before its object closes.
JSON_MIN_TOKENS = 16
SUMMARY_FIELDS = ("key_findings", "diagnoses", "treatments_and_medications", "follow_up_and_pending")
INPUT_KEYS = frozenset(
    {
        "text",
        "messages",
        "format",
        "json_schema",
        "adapter",
        "image",
        "images",
        "mode",
        "system_prompt",
        "custom_prompt",
        "max_new_tokens",
        "max_tokens",
        "temperature",
        "top_p",
        "seed",
        "stream",
    }
)
STATUS_FAULTS = ("429", "500", "502", "503")
SUBMIT_ROUTES = frozenset({"run", "runsync"})
# Everything except "drop_after" can hit any route; "drop_after" only submissions.
ALL_FAULTS = STATUS_FAULTS + ("drop_before", "drop_after")


def text_key(text: str) -> str:
    """How the double names a document: a hash, so tests never need to print text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def fake_answer(text: str) -> str:
    return f"Synthetic summary {text_key(text)} of a {len(text)}-character note."


def fake_summary(text: str) -> dict[str, list[str]]:
    """The built-in clinical summary object the double answers a ``format: "json"`` job with."""
    return {
        "key_findings": [fake_answer(text)],
        "diagnoses": [],
        "treatments_and_medications": [],
        "follow_up_and_pending": [],
        "not_documented": ["diagnoses", "treatments_and_medications", "follow_up_and_pending"],
    }


def document_text(job_input: dict[str, Any]) -> str:
    """The text a job is about: ``text``, or a conversation's turns (text parts) one per line."""
    messages = job_input.get("messages")
    if not isinstance(messages, list):
        return str(job_input.get("text") or "")
    lines = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
        lines += [str(part.get("text", "")) for part in parts if isinstance(part, dict) and part.get("type") == "text"]
    return "\n".join(lines)


def conversation_problem(messages: Any) -> str | None:
    """Why ``messages`` is not a conversation the worker takes, or None."""
    if not isinstance(messages, list) or not messages:
        return "Field 'messages' must be a non-empty list of turns."
    for number, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant"):
            return f"Field 'messages[{number}].role' must be system, user or assistant."
        content = message.get("content")
        if not isinstance(content, str | list):
            return f"Field 'messages[{number}].content' must be a string or a list of parts."
        for part in content if isinstance(content, list) else []:
            if not isinstance(part, dict) or part.get("type") not in ("text", "image_url"):
                return f"Field 'messages[{number}].content' parts must be text or image_url."
    if messages[-1]["role"] != "user":
        return "Field 'messages' must end with a user turn."
    return None


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

        self.jobs: dict[str, FakeJob] = {}
        self.queued: collections.Counter[str] = collections.Counter()
        self.executed: collections.Counter[str] = collections.Counter()
        self.requests: list[tuple[str, str]] = []
        self.faults: list[tuple[str, str, str]] = []
        self.runsync_waits: list[int] = []

        self._errors: dict[str, str] = {}
        self._slow: dict[str, float] = {}
        self._scripted: dict[str, collections.deque[str]] = collections.defaultdict(collections.deque)
        self._fault_rate = 0.0
        self._fault_kinds: tuple[str, ...] = ()
        self._max_consecutive = 0
        self._consecutive: collections.Counter[tuple[str, str]] = collections.Counter()
        self._rng = random.Random(0)
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.forwarded: list[dict[str, Any]] = []  # the job inputs the /openai/ route handed to the handler

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> RunPodDouble:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.double = self
        self._server = server
        threading.Thread(target=server.serve_forever, args=(0.02,), name="runpod-double", daemon=True).start()
        if self.handler is not None:  # the worker's event loop, as runpod.serverless.start runs one
            self._loop = asyncio.new_event_loop()
            threading.Thread(target=self._loop.run_forever, name="runpod-double-worker", daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v2"

    # ------------------------------------------------------------------ scripting

    def fail_text(self, text: str, error: str) -> None:
        """The worker answers ``{"error": error}`` for this document."""
        self._errors[text_key(text)] = error

    def slow_text(self, text: str, execution_s: float) -> None:
        self._slow[text_key(text)] = execution_s

    def inject(self, route: str, *faults: str) -> None:
        """Answer the next requests to ``route`` with these faults, in order."""
        self._scripted[route].extend(faults)

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
        self._fault_rate, self._fault_kinds = rate, kinds
        self._max_consecutive = max_consecutive
        self._rng = random.Random(seed)

    def jobs_for(self, text: str) -> list[FakeJob]:
        key = text_key(text)
        with self._lock:
            return [job for job in self.jobs.values() if job.key == key]

    def count_requests(self, route: str) -> int:
        with self._lock:
            return sum(1 for _, seen in self.requests if seen == route)

    # ------------------------------------------------------------------ HTTP handling

    def handle(self, handler: _Handler, method: str) -> None:
        url = urlsplit(handler.path)
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        parts = url.path.strip("/").split("/")
        route = parts[2] if len(parts) >= 3 else ""
        with self._lock:
            self.requests.append((method, route))
        if handler.headers.get("Authorization") not in (f"Bearer {self.api_key}", self.api_key):
            return _send(handler, 401, {"error": "Unauthorized"})
        if len(parts) < 3 or parts[0] != "v2" or parts[1] != self.endpoint_id:
            return _send(handler, 404, {"error": "endpoint not found"})
        if route == "openai" and self.handler is not None:
            return self._openai(handler, method, "/" + "/".join(parts[3:]), body)
        routes = {
            "run": ("POST", 3),
            "runsync": ("POST", 3),
            "health": ("GET", 3),
            "status": ("GET", 4),
            "stream": ("GET", 4),
            "cancel": ("POST", 4),
        }
        if route not in routes or len(parts) != routes[route][1]:
            return _send(handler, 404, {"error": "route not found"})
        if method != routes[route][0]:
            return _send(handler, 405, {"error": "method not allowed"})

        payload: dict[str, Any] = {}
        if route in SUBMIT_ROUTES:
            try:
                payload = json.loads(body or b"{}")
            except ValueError:
                return _send(handler, 400, {"error": "body is not JSON"})
            if not isinstance(payload.get("input"), dict):
                return _send(handler, 400, {"error": "'input' must be an object"})
            key = text_key(document_text(payload["input"]))
        else:
            key = parts[3] if len(parts) == 4 else route

        fault = self._next_fault(route, key)
        if fault in STATUS_FAULTS:
            headers = {"Retry-After": self.retry_after} if fault in ("429", "503") and self.retry_after else {}
            return _send(handler, int(fault), {"error": f"injected {fault}"}, headers)
        if fault == "drop_before":
            return _drop(handler)

        if route in SUBMIT_ROUTES:
            job = self._queue(payload)
            if fault == "drop_after":
                return _drop(handler)
            if route == "run":
                return _send(handler, 200, {"id": job.id, "status": "IN_QUEUE"})
            wait_ms = int(parse_qs(url.query).get("wait", ["90000"])[0])
            return _send(handler, 200, self._runsync(job, wait_ms))
        if route == "health":
            return _send(handler, 200, self._health())
        with self._lock:
            job = self.jobs.get(parts[3])
            if job is None:
                answer: tuple[int, dict[str, Any]] = (404, {"error": "job not found"})
            else:
                self._advance(job, time.monotonic())
                render = {"status": self._status_locked, "stream": self._stream_locked, "cancel": self._cancel_locked}[
                    route
                ]
                answer = (200, render(job))
        return _send(handler, *answer)

    # ------------------------------------------------------------------ the OpenAI route

    def _openai(self, handler: _Handler, method: str, route: str, body: bytes) -> None:
        job_input: dict[str, Any] = {"openai_route": route, "openai_input": {}}
        if method == "POST":
            try:
                job_input["openai_input"] = json.loads(body or b"{}")
            except ValueError:
                return _send(handler, 400, {"error": "body is not JSON"})
        with self._lock:
            self.forwarded.append(job_input)
        openai_input = job_input["openai_input"]
        stream = isinstance(openai_input, dict) and openai_input.get("stream") is True
        events = self._run_real_job({"id": f"job-{uuid.uuid4().hex[:12]}", "input": job_input})
        first = next(events)
        if not stream:
            outcome = [first, *events]
            errors = [value for kind, value in outcome if kind == "error"]
            if errors:
                return _send(handler, *_openai_failure(errors[0]))
            text = "".join(value if isinstance(value, str) else json.dumps(value) for _, value in outcome)
            return _send_text(handler, 200, text, "application/json")
        if first[0] == "error":
            return _send(handler, *_openai_failure(first[1]))
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        for kind, value in itertools.chain([first], events):
            if kind == "error":
                value = "data: " + json.dumps(_openai_failure(value)[1]) + "\n\n"
            _write_chunk(handler, value if isinstance(value, str) else json.dumps(value))
        handler.wfile.write(b"0\r\n\r\n")  # the end of a chunked body

    def _run_real_job(self, job: dict[str, Any]) -> Iterator[tuple[str, Any]]:
        """Run ``job`` as the runpod SDK does; yield ("output", item)... or a last ("error", error)."""
        assert self._loop is not None and self.handler is not None
        events: queue.Queue[tuple[str, Any]] = queue.Queue()
        asyncio.run_coroutine_threadsafe(_sdk_job(self.handler, job, events.put), self._loop)
        while True:
            kind, value = events.get(timeout=600)
            if kind == "end":
                return
            yield kind, value

    # ------------------------------------------------------------------ job model

    def _next_fault(self, route: str, key: str) -> str | None:
        with self._lock:
            fault = None
            if self._scripted[route]:
                fault = self._scripted[route].popleft()
            elif self._fault_rate and self._consecutive[(route, key)] < self._max_consecutive:
                kinds = [kind for kind in self._fault_kinds if kind != "drop_after" or route in SUBMIT_ROUTES]
                if kinds and self._rng.random() < self._fault_rate:
                    fault = self._rng.choice(kinds)
            if fault is None:
                self._consecutive[(route, key)] = 0
            else:
                self._consecutive[(route, key)] += 1
                self.faults.append((route, fault, key))
            return fault

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
                if job.status in ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT") or time.monotonic() >= until:
                    return self._status_locked(job)
            time.sleep(0.005)

    def _advance(self, job: FakeJob, now: float) -> None:
        if job.status == "IN_QUEUE" and now >= job.created + self.queue_s:
            job.status, job.started = "IN_PROGRESS", job.created + self.queue_s
            self.executed[job.key] += 1
            self._run_worker(job)
        if job.status != "IN_PROGRESS":
            return
        assert job.started is not None
        limit = job.execution_timeout_s
        if limit is not None and job.execution_s > limit and now >= job.started + limit:
            job.status, job.finished, job.chunks = "TIMED_OUT", job.started + limit, []
        elif now >= job.started + job.execution_s:
            job.finished = job.started + job.execution_s
            job.status = "FAILED" if job.error is not None else "COMPLETED"

    def _run_worker(self, job: FakeJob) -> None:
        """What the MedGemma worker would return for this input (no model involved)."""
        job_input = job.job_input
        text = document_text(job_input)
        unknown = sorted(set(job_input) - INPUT_KEYS)
        mode = job_input.get("mode", "summarize")
        adapter = job_input.get("adapter")
        json_job = job_input.get("format") == "json" or "json_schema" in job_input
        error = None
        if unknown:
            error = f"Unknown input field '{unknown[0]}'."
        elif mode not in ("summarize", "general"):
            error = "Field 'mode' must be 'summarize' or 'general'."
        elif "messages" in job_input and "text" in job_input:
            error = "Field 'messages': give text or messages, not both."
        elif "messages" in job_input:
            error = conversation_problem(job_input["messages"])
        elif not text.strip() and not (job_input.get("image") or job_input.get("images")):
            error = "Field 'text' is empty and no 'image' was given."
        if error is None and "format" in job_input and (job_input["format"] != "json" or mode != "summarize"):
            error = "Field 'format' must be 'json', in summarize mode."
        if error is None and adapter not in (None, "base", *self.adapters):
            error = f"Field 'adapter': unknown adapter {adapter!r} (known: base, {', '.join(self.adapters)})."
        if error is None:
            error = self._errors.get(job.key)
        if error is not None and not self.streaming_worker:
            job.error = error
            return
        if error is not None:
            items: list[Any] = [{"error": error}]
        else:
            answer, parsed, finish_reason = fake_answer(text), None, "stop"
            if json_job:
                parsed = fake_summary(text) if "json_schema" not in job_input else {"answer": answer}
                answer = json.dumps(parsed)
                if int(job_input.get("max_new_tokens", JSON_MIN_TOKENS)) < JSON_MIN_TOKENS:
                    answer, parsed, finish_reason = answer[: len(answer) // 2], None, "length"
            adapter = None if adapter in (None, "base") else adapter
            provenance = {"model": MODEL, "model_revision": MODEL_REVISION}
            if adapter is not None:
                provenance.update(adapter=adapter, adapter_revision=f"sha256:{text_key(adapter)}")
            meta = {
                "mode": mode,
                "model": MODEL,
                "run_mode": "double",
                "usage": {"prompt_tokens": max(1, len(text) // 4), "completion_tokens": len(answer.split())},
                "finish_reason": finish_reason,
                "used_dummy_image": False,
                "timings": {"generate_s": job.execution_s},
                "adapter": adapter,
                "provenance": provenance,
            }
            if parsed is not None:
                meta["parsed"] = parsed
            if not self.streaming_worker:
                job.output = {"output": answer, **meta}
                return
            if job_input.get("stream"):
                words = answer.split(" ")
                items = [{"delta": word if i == 0 else " " + word} for i, word in enumerate(words)]
                items.append({"delta": "", "done": True, **meta})
            else:
                items = [{"output": answer, **meta}]
        job.output = items
        job.chunks = items

    def _status_locked(self, job: FakeJob) -> dict[str, Any]:
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

    def _stream_locked(self, job: FakeJob) -> dict[str, Any]:
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

    def _cancel_locked(self, job: FakeJob) -> dict[str, Any]:
        if job.status in ("IN_QUEUE", "IN_PROGRESS"):
            job.status, job.finished = "CANCELLED", time.monotonic()
        return {"id": job.id, "status": job.status}

    def _health(self) -> dict[str, Any]:
        with self._lock:
            now = time.monotonic()
            for job in self.jobs.values():
                self._advance(job, now)
            states = collections.Counter(job.status for job in self.jobs.values())
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


async def _sdk_job(handler: Callable[[dict[str, Any]], Any], job: dict[str, Any], put: Callable) -> None:
    """The SDK's job handling (``rp_job.handle_job``) without its HTTP: outputs, then an error or the end."""
    try:
        if inspect.isasyncgenfunction(handler) or inspect.isgeneratorfunction(handler):
            async for item in rp_job.run_job_generator(handler, job):
                if isinstance(item.get("output"), dict) and item["output"].get("error"):
                    item = {"error": str(item["output"]["error"])}  # as handle_job does
                if item.get("error"):
                    put(("error", item["error"]))
                    return
                put(("output", item["output"]))
        else:
            result = await rp_job.run_job(handler, job)
            put(("error", result["error"]) if result.get("error") else ("output", result.get("output")))
    finally:
        put(("end", None))


def _openai_failure(error: Any) -> tuple[int, dict[str, Any]]:
    """A failed job's error as OpenAI's error body, with the status OpenAI gives that kind of error."""
    if isinstance(error, str):
        try:
            error = json.loads(error)
        except ValueError:
            pass
    if not (isinstance(error, dict) and isinstance(error.get("message"), str)):
        error = {"message": str(error), "type": "server_error", "param": None, "code": None}
    if error.get("code") == "model_not_found":
        return 404, {"error": error}
    return (400 if error.get("type") == "invalid_request_error" else 500), {"error": error}


def _send_text(handler: _Handler, code: int, text: str, content_type: str) -> None:
    body = text.encode("utf-8")
    handler.send_response(code)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def _write_chunk(handler: _Handler, text: str) -> None:
    """One piece of a chunked body, sent at once (an empty piece would end the body, so none is sent)."""
    data = text.encode("utf-8")
    if data:
        handler.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        handler.wfile.flush()


def _drop(handler: _Handler) -> None:
    """Close the socket without answering, as a crashed proxy or a network cut would."""
    handler.close_connection = True
    try:
        handler.connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
