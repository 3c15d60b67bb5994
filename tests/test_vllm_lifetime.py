"""vLLM's processes end with the worker that started them, however it ends; a full KV cache queues jobs, never fails them.

Each worker (``handler.py``) is the leader of a new session, which vLLM's engine core and its
model runner join: afterwards no process of that session may be left. The SIGTERM test ends the
worker that the full-cache test used (one vLLM start for both).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.conftest import REPO, VLLM_TEST_ENV, LocalWorker, close_session_vllm, start_local_worker

pytestmark = [pytest.mark.model, pytest.mark.slow, pytest.mark.own_vllm]

#: Long enough that the signal lands mid-job: 160 tokens take the stand-in several seconds on vLLM.
LONG_JOB = {"input": {"text": "SYNTHETIC NOTE. Fever, cough, CRP 84. Summarise.", "max_new_tokens": 160}}
#: The worker under test, in its own session (it is started with ``start_new_session``).
WORKER_ENV = {**VLLM_TEST_ENV, "DUMMY_IMAGE": "true"}
#: A KV cache of 96 blocks of 128 tokens: one raw/ note's job (about 650 tokens with the dummy
#: image) holds 41 of them across the stand-in's 6 layer groups, so 2 or 3 jobs fit at once.
SMALL_CACHE_ENV = {**WORKER_ENV, "NUM_GPU_BLOCKS_OVERRIDE": "96", "MAX_MODEL_LEN": "1024"}
NOTE_CHARS = 1_000


def in_session(session: int) -> list[int]:
    """Live (not zombie) processes of ``session``: a worker started as its leader and all it started.

    The session id survives re-parenting and vLLM's renaming of its processes (which overwrites
    what /proc shows of their command line and environment).
    """
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if fields[0] != "Z" and int(fields[3]) == session:
            pids.append(int(entry.name))
    return pids


def left_after(session: int, timeout_s: float = 30.0) -> list[int]:
    """The session's processes still alive ``timeout_s`` after its worker ended (then killed, to free their memory)."""
    deadline = time.monotonic() + timeout_s
    while (alive := in_session(session)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    return alive


def job_in_flight(server: LocalWorker) -> tuple[threading.Thread, dict]:
    """Submit LONG_JOB through /runsync on a thread; returns once its prefill has surely begun."""
    answer: dict = {}

    def submit() -> None:
        try:
            answer["response"] = requests.post(f"{server.url}/runsync", json=LONG_JOB, timeout=300)
        except requests.ConnectionError as error:
            answer["error"] = error

    done_before = server.log().count(" done: ")  # the worker may have served jobs before this one
    thread = threading.Thread(target=submit)
    thread.start()
    time.sleep(2.0)
    assert server.log().count(" done: ") == done_before, "the job ended before the signal: it would not land mid-job"
    return thread, answer


@pytest.fixture(scope="module")
def small_cache_worker(tmp_path_factory) -> Iterator[LocalWorker]:
    """A vLLM worker whose KV cache holds 2 or 3 jobs; the SIGTERM test ends it."""
    close_session_vllm()
    server = start_local_worker(tmp_path_factory.mktemp("small-cache"), SMALL_CACHE_ENV)
    yield server
    server.process.kill()
    left_after(server.process.pid)


def summarize(server: LocalWorker, note: str) -> dict:
    job = {"input": {"text": note, "max_new_tokens": 16, "temperature": 0}}
    response = requests.post(f"{server.url}/runsync", json=job, timeout=300)
    assert response.status_code == 200 and response.json()["status"] == "COMPLETED", response.text[:500]
    return response.json()["output"]


def test_more_jobs_than_the_kv_cache_holds_are_queued_and_all_answered(small_cache_worker):
    """Too high a MAX_CONCURRENCY costs latency, never an answer: vLLM queues what its cache can't hold."""
    notes = [path.read_text()[:NOTE_CHARS] for path in sorted((REPO / "raw").glob("*.md"))][:8]
    alone = [summarize(small_cache_worker, note) for note in notes]
    with ThreadPoolExecutor(len(notes)) as pool:
        together = list(pool.map(lambda note: summarize(small_cache_worker, note), notes))
    assert [answer["output"] for answer in together] == [answer["output"] for answer in alone]
    assert [answer["usage"] for answer in together] == [answer["usage"] for answer in alone]
    assert all(answer["usage"]["prompt_tokens"] > 500 for answer in together)  # 41 blocks each, as above
    # The cache, not the caller, bounded the batch: some jobs waited in vLLM's queue.
    assert max(answer["batch_size"] for answer in together) < len(notes)
    assert max(answer["timings"]["queue_s"] for answer in together) > 0.5


def test_sigterm_mid_job_under_the_local_api_finishes_the_job_and_ends_every_vllm_process(
    small_cache_worker, session_vllm_closed
):
    server = small_cache_worker
    try:
        assert len(in_session(server.process.pid)) >= 3  # the worker, vLLM's engine core and its model runner
        thread, answer = job_in_flight(server)
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=120) == 0
        thread.join(timeout=60)
    finally:
        server.process.kill()
    left = left_after(server.process.pid)
    log = server.log()
    assert left == [], f"vLLM processes outlived the worker: {left}"
    assert "Traceback" not in log, log[-3000:]
    # The job already running was served before the worker stopped: nothing done is lost.
    assert answer["response"].status_code == 200 and answer["response"].json()["status"] == "COMPLETED"


def test_sigkill_mid_job_leaves_no_vllm_process(tmp_path, session_vllm_closed):
    """A killed worker runs no code at all: vLLM's engine core must notice by itself (medgemma/engines/vllm_parent.py)."""
    server = start_local_worker(tmp_path, WORKER_ENV)
    try:
        thread, answer = job_in_flight(server)
        server.process.send_signal(signal.SIGKILL)
        assert server.process.wait(timeout=30) == -signal.SIGKILL
        thread.join(timeout=60)
    finally:
        server.process.kill()
    assert left_after(server.process.pid) == [], "vLLM processes outlived the killed worker"
    assert "has ended: vLLM's engine core" in server.log()  # it was the watch, not luck, that ended them
    assert "error" in answer  # the connection died with the worker
