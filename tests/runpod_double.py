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
* ``Authorization`` is checked (401), unknown endpoints, routes and jobs are 404.

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

Fault injection: scripted (``inject``) or random (``random_faults``) 429 (with
``Retry-After``), 500/502/503, and dropped connections before or after a
submission is queued. ``queued`` / ``executed`` count per document (keyed by
the text's hash) so tests can assert on duplicates. Nothing is ever logged.
"""

from __future__ import annotations

import collections
import hashlib
import json
import random
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

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
    ) -> None:
        self.api_key = api_key
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
        self._server: ThreadingHTTPServer | None = None

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

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

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


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # keep-alive connections must not hold up shutdown
    double: RunPodDouble


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Headers and body go out as separate writes; without this, Nagle plus
        # delayed ACKs add ~40 ms to every keep-alive request.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        self.server.double.handle(self, "GET")

    def do_POST(self) -> None:
        self.server.double.handle(self, "POST")

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: a test double has no business writing to the test's stderr."""


def _send(handler: _Handler, code: int, payload: Any, headers: dict[str, str] | None = None) -> None:
    body = json.dumps(payload).encode("utf-8")
    handler.send_response(code)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(body)


def _drop(handler: _Handler) -> None:
    """Close the socket without answering, as a crashed proxy or a network cut would."""
    handler.close_connection = True
    try:
        handler.connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
