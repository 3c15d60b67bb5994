"""The RunPod double's OpenAI-compatible route, forwarded to a real handler in process.

RunPod forwards ``/v2/{endpoint}/openai/v1/...`` to a worker (runpod-workers/worker-vllm reads
the same shape): ``POST .../openai/v1/chat/completions`` becomes the job input
``{"openai_route": "/v1/chat/completions", "openai_input": <body>}`` and a ``GET``
(``/v1/models``) has ``"openai_input": {}``. The job runs through the runpod SDK's own
``run_job`` / ``run_job_generator`` on one event loop (the worker's), and:

* a job that completes answers HTTP 200 with its output: an object as JSON; a generator's
  items joined, strings as they are (SSE text for ``"stream": true``, sent as they come);
* a job that fails (its output has ``error``) answers with that error as OpenAI's error
  body ``{"error": {...}}``. RunPod documents neither the status nor the body of a failed
  ``/openai/`` job, so the double picks OpenAI's: 404 for ``model_not_found``, 400 for
  ``invalid_request_error``, else 500; a stream that fails after its first chunk ends with
  an SSE ``data: {"error": ...}`` event. (A job that *completes* with an error-shaped output
  is passed on as a 200, as RunPod does: runpod-workers/worker-vllm issue #57.)
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import queue
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from runpod.serverless.modules import rp_job

from tests.double_http import Handler, send_json


class OpenAIRoute:
    """Serves the route with ``handler`` on its own event loop, as ``runpod.serverless.start`` runs one."""

    def __init__(self, handler: Callable[[dict[str, Any]], Any]) -> None:
        self.handler = handler
        self.forwarded: list[dict[str, Any]] = []  # the job inputs handed to the handler
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="runpod-double-worker", daemon=True).start()

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)

    def serve(self, handler: Handler, method: str, route: str, body: bytes) -> None:
        job_input: dict[str, Any] = {"openai_route": route, "openai_input": {}}
        if method == "POST":
            try:
                job_input["openai_input"] = json.loads(body or b"{}")
            except ValueError:
                return send_json(handler, 400, {"error": "body is not JSON"})
        with self._lock:
            self.forwarded.append(job_input)
        openai_input = job_input["openai_input"]
        stream = isinstance(openai_input, dict) and openai_input.get("stream") is True
        events = self._run_job({"id": f"job-{uuid.uuid4().hex[:12]}", "input": job_input})
        first = next(events)
        if not stream:
            outcome = [first, *events]
            errors = [value for kind, value in outcome if kind == "error"]
            if errors:
                return send_json(handler, *_openai_failure(errors[0]))
            text = "".join(value if isinstance(value, str) else json.dumps(value) for _, value in outcome)
            return _send_text(handler, 200, text, "application/json")
        if first[0] == "error":
            return send_json(handler, *_openai_failure(first[1]))
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        for kind, value in itertools.chain([first], events):
            if kind == "error":
                value = "data: " + json.dumps(_openai_failure(value)[1]) + "\n\n"
            _write_chunk(handler, value if isinstance(value, str) else json.dumps(value))
        handler.wfile.write(b"0\r\n\r\n")  # the end of a chunked body

    def _run_job(self, job: dict[str, Any]) -> Iterator[tuple[str, Any]]:
        """Run ``job`` as the runpod SDK does; yield ("output", item)... or a last ("error", error)."""
        assert self._loop is not None
        events: queue.Queue[tuple[str, Any]] = queue.Queue()
        asyncio.run_coroutine_threadsafe(_sdk_job(self.handler, job, events.put), self._loop)
        while True:
            kind, value = events.get(timeout=600)
            if kind == "end":
                return
            yield kind, value


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


def _send_text(handler: Handler, code: int, text: str, content_type: str) -> None:
    body = text.encode("utf-8")
    handler.send_response(code)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def _write_chunk(handler: Handler, text: str) -> None:
    """One piece of a chunked body, sent at once (an empty piece would end the body, so none is sent)."""
    data = text.encode("utf-8")
    if data:
        handler.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        handler.wfile.flush()
