"""vLLM's processes end with the worker that started them, however it ends.

Each test starts its own worker (``handler.py``) as the leader of a new session, which vLLM's
engine core and its model runner join: afterwards no process of that session may be left.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import VLLM_TEST_ENV, LocalWorker, start_local_worker

pytestmark = [pytest.mark.model, pytest.mark.slow, pytest.mark.own_vllm]

#: Long enough that the signal lands mid-job: 160 tokens take the stand-in several seconds on vLLM.
LONG_JOB = {"input": {"text": "SYNTHETIC NOTE. Fever, cough, CRP 84. Summarise.", "max_new_tokens": 160}}
#: The worker under test, in its own session (it is started with ``start_new_session``).
WORKER_ENV = {**VLLM_TEST_ENV, "DUMMY_IMAGE": "true"}


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

    thread = threading.Thread(target=submit)
    thread.start()
    time.sleep(2.0)
    assert " done: " not in server.log(), "the job ended before the signal: it would not land mid-job"
    return thread, answer


def test_sigterm_mid_job_under_the_local_api_finishes_the_job_and_ends_every_vllm_process(
    tmp_path, session_vllm_closed
):
    server = start_local_worker(tmp_path, WORKER_ENV)
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
