"""A test double of RunPod's hosted *worker-side* job API, served over real HTTP on 127.0.0.1.

``tests/runpod_double.py`` stands in for the API a client calls (``/run``, ``/status``...);
this one stands in for the API a worker calls, so the runpod SDK's own job loop
(``runpod.serverless.start`` -> ``JobScaler``) can run unchanged against it. The shapes
follow the SDK the worker pins, runpod 1.10.0 (``runpod/serverless/`` in the venv):

* the worker finds the API through env vars: ``RUNPOD_WEBHOOK_GET_JOB`` with ``$ID`` for the
  worker id (``modules/rp_job.py:23``), ``RUNPOD_WEBHOOK_POST_OUTPUT`` / ``_POST_STREAM`` with
  ``$RUNPOD_POD_ID`` for the worker id and ``$ID`` for the job id (``modules/rp_http.py:16-24,63``),
  ``RUNPOD_WEBHOOK_PING`` with ``$RUNPOD_POD_ID`` (``modules/rp_ping.py:29-30``); the worker id
  is ``RUNPOD_POD_ID`` (``modules/worker_state.py:21``). The SDK appends ``&name=value`` to
  each URL, so each has a query string already (``?gpu=...`` on RunPod). ``env()`` builds them.
* ``GET /v2/{endpoint}/job-take/{worker}?...&job_in_progress=0|1`` -> 200 with one job
  ``{"id", "input"}``, or 204 when there is none (``modules/rp_job.py:104-192``);
  ``GET .../job-take-batch/{worker}?...&batch_size=N&job_in_progress=0|1`` -> 200 with a list
  of at most N jobs, or 204. The SDK asks for a batch whenever its ``concurrency_modifier``
  leaves room for more than one job (``modules/rp_scale.py:87-100,173-228``). A take is a long poll:
  it is held up to ``take_wait_s`` for a job to arrive.
* ``POST .../job-done/{worker}/{job}?...&isStream=true|false`` with the JSON result
  ``{"output"?, "error"?, "stopPod"?}`` (sent as form-encoded text, ``modules/rp_http.py:29-48``;
  ``stopPod`` is the SDK's form of the handler's ``refresh_worker``, ``modules/rp_job.py:221-224,
  266-274``); ``POST .../job-stream/{worker}/{job}?...&isStream=false`` with ``{"output": chunk}``,
  one per item a generator handler yields (``modules/rp_job.py:195-216``, ``modules/rp_http.py:92``).
* ``GET .../job-stop/{worker}?...`` (the per-job stop channel, derived from the job-take URL,
  ``modules/rp_job.py:29-101``) -> 204: nothing is ever stopped here.
* ``GET .../ping/{worker}?...&job_id=a,b&runpod_version=...`` (the heartbeat, sent from its own
  process every ``RUNPOD_PING_INTERVAL`` ms, once ``RUNPOD_AI_API_KEY`` and ``RUNPOD_POD_ID`` are
  set: ``modules/rp_ping.py:31,63-83,95-106``) -> 200.
* every request must carry ``Authorization: <RUNPOD_AI_API_KEY>`` (the SDK sends the key as it
  is, no ``Bearer``: ``runpod/http_client.py:18-33``, ``modules/rp_ping.py:35-37``), else 401.

It keeps the queue and what each job went through: who took it and when, its stream chunks,
its result. ``in_flight()`` replays those times as the count of jobs taken and not yet done, so a
test can check how many jobs a worker held at once. A worker whose result carried ``stopPod`` gets
no more jobs, as RunPod stops it after that job. Nothing is ever logged.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.conftest import REPO, SERVER_START_TIMEOUT_S, stop_local_worker
from tests.double_http import Handler as _Handler
from tests.double_http import Server as _Server
from tests.double_http import send_json as _send

#: The GPU type RunPod names in each URL's query string (``?gpu=...``); the SDK passes it through untouched.
GPU = "DOUBLE"


@dataclass
class WorkerJob:
    id: str
    input: dict[str, Any]
    queued: float
    taken: float | None = None
    taken_by: str | None = None
    done: float | None = None
    result: dict[str, Any] | None = None  # the job-done body: output / error / stopPod
    result_is_stream: bool | None = None
    chunks: list[Any] = field(default_factory=list)  # each job-stream body's "output", in order


@dataclass
class Take:
    """One job-take request as the worker sent it, and how many jobs it got."""

    worker: str
    batch_size: int | None  # None: the single job-take route
    job_in_progress: str | None
    jobs: int
    at: float  # monotonic time of the answer


class WorkerApiDouble:
    """Start with ``with WorkerApiDouble() as api:``; run the worker with ``api.env(worker_id)``."""

    def __init__(
        self, api_key: str = "worker-key-0123456789", endpoint_id: str = "ep-loop", take_wait_s: float = 0.5
    ) -> None:
        self.api_key = api_key
        self.endpoint_id = endpoint_id
        self.take_wait_s = take_wait_s
        self.jobs: dict[str, WorkerJob] = {}
        self.takes: list[Take] = []
        self.pings: list[dict[str, list[str]]] = []  # each ping's query, and its "worker"
        self.unauthorized = 0
        self.retired: set[str] = set()  # workers that asked for a fresh one (stopPod)
        self._queue: collections.deque[str] = collections.deque()
        self._changed = threading.Condition()
        self._server: _Server | None = None

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> WorkerApiDouble:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.double = self
        self._server = server
        threading.Thread(target=server.serve_forever, args=(0.02,), name="runpod-worker-api", daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/v2/{self.endpoint_id}"

    def env(self, worker_id: str, ping_interval_ms: int = 1000) -> dict[str, str]:
        """The env vars RunPod gives a worker, pointing at this double, in the SDK's template syntax."""
        base = self.base_url
        return {
            "RUNPOD_POD_ID": worker_id,
            "RUNPOD_AI_API_KEY": self.api_key,
            "RUNPOD_WEBHOOK_GET_JOB": f"{base}/job-take/$ID?gpu={GPU}",
            "RUNPOD_WEBHOOK_POST_OUTPUT": f"{base}/job-done/$RUNPOD_POD_ID/$ID?gpu={GPU}",
            "RUNPOD_WEBHOOK_POST_STREAM": f"{base}/job-stream/$RUNPOD_POD_ID/$ID?gpu={GPU}",
            "RUNPOD_WEBHOOK_PING": f"{base}/ping/$RUNPOD_POD_ID?gpu={GPU}",
            "RUNPOD_PING_INTERVAL": str(ping_interval_ms),
        }

    # ------------------------------------------------------------------ the test's side

    def queue(self, *inputs: dict[str, Any]) -> list[str]:
        """Queue jobs, all at once (one take may get several); returns their ids in order."""
        with self._changed:
            ids = []
            for job_input in inputs:
                job = WorkerJob(id=f"job-{uuid.uuid4().hex[:12]}", input=job_input, queued=time.monotonic())
                self.jobs[job.id] = job
                self._queue.append(job.id)
                ids.append(job.id)
            self._changed.notify_all()
        return ids

    def wait_done(self, ids: list[str], timeout_s: float) -> list[WorkerJob]:
        """The jobs, once every one has its result; TimeoutError naming how many are missing."""
        with self._changed:
            finished = self._changed.wait_for(lambda: all(self.jobs[i].done is not None for i in ids), timeout_s)
            if not finished:
                missing = sum(self.jobs[i].done is None for i in ids)
                raise TimeoutError(f"{missing} of {len(ids)} jobs had no result after {timeout_s} s")
            return [self.jobs[i] for i in ids]

    def wait_for(self, predicate: Callable[[WorkerApiDouble], bool], timeout_s: float) -> bool:
        """Wait until ``predicate(self)`` holds (it is checked at every request); False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self), timeout_s)

    def in_flight(self, ids: Iterable[str] | None = None) -> list[tuple[float, int]]:
        """(monotonic time, jobs taken and not yet done) at every take and result, over ``ids`` (default all)."""
        with self._changed:
            jobs = [self.jobs[i] for i in ids] if ids is not None else list(self.jobs.values())
            # A result and a take at the same instant: the result came first (the worker makes room, then takes).
            events = sorted([(job.taken, 1) for job in jobs if job.taken is not None] +
                            [(job.done, -1) for job in jobs if job.done is not None])  # fmt: skip
        counts, count = [], 0
        for moment, change in events:
            count += change
            counts.append((moment, count))
        return counts

    def max_in_flight(self, ids: Iterable[str] | None = None) -> int:
        """The most jobs (of ``ids``, default all) that were taken and not yet done at once."""
        return max((count for _, count in self.in_flight(ids)), default=0)

    def waiting(self) -> int:
        """Jobs still queued, not taken by any worker."""
        with self._changed:
            return len(self._queue)

    # ------------------------------------------------------------------ HTTP handling

    def handle(self, handler: _Handler, method: str) -> None:
        """Answer one worker request: authorize, route, record."""
        url = urlsplit(handler.path)
        query = parse_qs(url.query)
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        prefix = f"/v2/{self.endpoint_id}/"
        if handler.headers.get("Authorization") != self.api_key:
            with self._changed:
                self.unauthorized += 1
            return _send(handler, 401, {"error": "Unauthorized"})
        if not url.path.startswith(prefix) or query.get("gpu") != [GPU]:
            return _send(handler, 404, {"error": "not a worker route of this endpoint"})
        route, *rest = url.path[len(prefix) :].split("/")
        routes = {
            "job-take": ("GET", 1),
            "job-take-batch": ("GET", 1),
            "job-stop": ("GET", 1),
            "ping": ("GET", 1),
            "job-done": ("POST", 2),
            "job-stream": ("POST", 2),
        }
        if route not in routes or len(rest) != routes[route][1] or not all(rest):
            return _send(handler, 404, {"error": "route not found"})
        if method != routes[route][0]:
            return _send(handler, 405, {"error": "method not allowed"})
        worker = rest[0]
        if route in ("job-take", "job-take-batch"):
            return self._take(handler, worker, route == "job-take-batch", query)
        if route == "job-stop":
            return _send_empty(handler, 204)
        if route == "ping":
            with self._changed:
                self.pings.append({"worker": [worker], **query})
                self._changed.notify_all()
            return _send(handler, 200, {})
        try:
            payload = json.loads(body)
        except ValueError:
            return _send(handler, 400, {"error": "body is not JSON"})
        with self._changed:
            job = self.jobs.get(rest[1])
            if job is None or job.taken_by != worker or job.done is not None:
                return _send(handler, 404, {"error": "no job of this id in progress on this worker"})
            if route == "job-stream":
                job.chunks.append(payload.get("output"))
            else:
                job.result, job.done = payload, time.monotonic()
                job.result_is_stream = query.get("isStream") == ["true"]
                if payload.get("stopPod"):
                    self.retired.add(worker)
            self._changed.notify_all()
        return _send(handler, 200, {})

    def _take(self, handler: _Handler, worker: str, batch: bool, query: dict[str, list[str]]) -> None:
        batch_size = int(query.get("batch_size", ["1"])[0]) if batch else None
        with self._changed:
            self._changed.wait_for(lambda: bool(self._queue) and worker not in self.retired, self.take_wait_s)
            taken = []
            while self._queue and worker not in self.retired and len(taken) < (batch_size or 1):
                job = self.jobs[self._queue.popleft()]
                job.taken, job.taken_by = time.monotonic(), worker
                taken.append({"id": job.id, "input": job.input})
            in_progress = query.get("job_in_progress", [None])[0]
            self.takes.append(Take(worker, batch_size, in_progress, len(taken), time.monotonic()))
            self._changed.notify_all()
        if not taken:
            return _send_empty(handler, 204)
        return _send(handler, 200, taken if batch else taken[0])


def _send_empty(handler: _Handler, code: int) -> None:
    handler.send_response(code)
    handler.send_header("Content-Length", "0")
    handler.end_headers()


# -- a worker taking its jobs from the double ---------------------------------------------------

#: Every loop worker's environment: the stand-in offline, nothing off loopback.
LOOP_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_ENDPOINT": "http://127.0.0.1:9",  # a closed port, should anything try the hub anyway
    "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true",
    "RUNPOD_SKIP_GPU_CHECK": "true",
}


@dataclass
class LoopWorker:
    process: subprocess.Popen
    worker_id: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_loop_worker(api: WorkerApiDouble, directory: Path, extra_env: dict[str, str]) -> LoopWorker:
    """``python handler.py`` with RunPod's worker env pointing at ``api``; returns once it asks for a job.

    RUNPOD_* variables from the outer environment are dropped: one such as RUNPOD_REALTIME_PORT
    would start another server instead of the job loop.
    """
    worker_id = f"worker-{uuid.uuid4().hex[:8]}"
    outer = {name: value for name, value in os.environ.items() if not name.startswith("RUNPOD_")}
    env = {**outer, **LOOP_ENV, **api.env(worker_id), **extra_env}
    log_path = directory / f"{worker_id}.log"
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(
            [sys.executable, str(REPO / "handler.py")],
            cwd=directory,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the heartbeat runs in a child process: the group is stopped together
        )
    worker = LoopWorker(process, worker_id, log_path)
    for _ in range(SERVER_START_TIMEOUT_S):
        if process.poll() is not None:
            raise RuntimeError(f"the worker exited early:\n{worker.log()[-4000:]}")
        if api.wait_for(lambda double: any(take.worker == worker_id for take in double.takes), 1.0):
            return worker
    stop_loop_worker(worker)
    raise RuntimeError("the worker asked for no job in time")


def stop_loop_worker(worker: LoopWorker) -> str:
    """SIGTERM (the SDK's loop finishes and exits), then nothing of its process group is left; returns its log."""
    log = stop_local_worker(worker)  # type: ignore[arg-type]  # the same stop as a local API worker's: a process and a log
    try:
        os.killpg(worker.process.pid, signal.SIGKILL)  # a heartbeat process its parent did not take down
    except ProcessLookupError:
        pass
    return log
