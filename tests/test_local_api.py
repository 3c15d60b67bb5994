"""The real worker process: ``--test_input`` runs and the SDK's local HTTP API."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import requests

from tests.conftest import REPO, TEST_ENV, start_local_worker, stop_local_worker

pytestmark = [pytest.mark.model, pytest.mark.slow]

NOTE = "SYNTHETIC. Patient Zebulon Q. Testperson, 62, admitted with cellulitis of the left shin; cefalexin 500 mg."


def run_test_input(job: dict) -> subprocess.CompletedProcess:
    env = {**__import__("os").environ, **TEST_ENV}
    return subprocess.run(
        [sys.executable, "handler.py", "--test_input", json.dumps(job)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_test_input_succeeds_and_bad_input_exits_non_zero_with_one_line():
    good = run_test_input({"input": {"text": NOTE, "mode": "summarize"}})
    assert good.returncode == 0, good.stderr[-2000:]
    result_line = next(line for line in good.stdout.splitlines() if "Job result:" in line)
    assert "'output': '" in result_line and "'output': ''" not in result_line
    assert "Retrieved local job" not in good.stdout + good.stderr  # the SDK's DEBUG echo of the input is off

    bad = run_test_input({"input": {"text": NOTE, "mode": "diagnose"}})
    assert bad.returncode == 1
    failure = [line for line in bad.stdout.splitlines() if "failed with error" in line]
    assert len(failure) == 1 and "mode: must be one of summarize, general, got 'diagnose'" in failure[0]


def test_runsync_and_run_over_local_http(local_worker):
    answer = requests.post(f"{local_worker.url}/runsync", json={"input": {"text": NOTE}}, timeout=600).json()
    assert answer["status"] == "COMPLETED" and answer["output"]["output"]
    assert answer["output"]["usage"]["completion_tokens"] > 0

    failed = requests.post(
        f"{local_worker.url}/runsync", json={"input": {"text": NOTE, "max_tokens": -1}}, timeout=60
    ).json()
    assert failed["status"] == "FAILED" and failed["error"].startswith("max_new_tokens: must be between 1 and")

    queued = requests.post(
        f"{local_worker.url}/run", json={"input": {"text": NOTE, "mode": "general"}}, timeout=60
    ).json()
    status = requests.post(f"{local_worker.url}/status/{queued['id']}", timeout=600).json()
    assert status["status"] == "COMPLETED" and status["output"]["mode"] == "general"
    assert "Zebulon" not in local_worker.log() and "cellulitis" not in local_worker.log()


def test_streaming_worker_streams_and_keeps_plain_jobs_whole(tmp_path):
    server = start_local_worker(tmp_path, {"STREAMING": "true"})
    try:
        queued = requests.post(f"{server.url}/run", json={"input": {"text": NOTE, "stream": True}}, timeout=60).json()
        streamed = requests.post(f"{server.url}/stream/{queued['id']}", timeout=600).json()
        assert streamed["status"] == "COMPLETED"
        chunks = [item["output"] for item in streamed["stream"]]
        assert chunks[-1]["done"] is True and chunks[-1]["usage"]["completion_tokens"] > 0
        text = "".join(chunk["delta"] for chunk in chunks)

        plain = requests.post(f"{server.url}/runsync", json={"input": {"text": NOTE}}, timeout=600).json()
        assert plain["status"] == "COMPLETED"
        assert len(plain["output"]) == 1 and plain["output"][0]["output"] == text  # RunPod's aggregate list of one
    finally:
        log = stop_local_worker(server)
    assert "Zebulon" not in log
