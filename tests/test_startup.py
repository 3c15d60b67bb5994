"""A worker that can't start stays up and says why to every job, instead of crash-looping.

Each path runs the real ``handler.py`` in a subprocess. Network: the only hub the worker
is ever pointed at is a closed port on 127.0.0.1, or it is offline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx2
import pytest
import requests
from huggingface_hub import errors as hub_errors

import handler
from medgemma.model_access import describe_access_failure
from medgemma.settings import Settings
from medgemma.sources import ModelSource
from tests.conftest import REPO, TEST_ENV, run, start_local_worker, stop_local_worker

JOB = json.dumps({"input": {"text": "SYNTHETIC NOTE. Stable.", "mode": "summarize"}})
LEVELS = "debug, info, warning, error, critical"


def test_input_run(extra_env: dict[str, str], tmp_path) -> subprocess.CompletedProcess:
    """``python handler.py --test_input JOB`` with ``extra_env``; never reaches beyond loopback."""
    env = {**os.environ, **TEST_ENV, "HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": "http://127.0.0.1:9", **extra_env}
    return subprocess.run(
        [sys.executable, "handler.py", "--test_input", JOB],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


test_input_run.__test__ = False  # a helper, not a test


def last_line(result: subprocess.CompletedProcess) -> str:
    return result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"MAX_BATCH_SIZE": "0"}, "MAX_BATCH_SIZE must be at least 1, got 0"),
        ({"ENGINE": "tensorrt"}, "ENGINE must be one of transformers, vllm, auto, got 'tensorrt'"),
        ({"DTYPE": "float16"}, "DTYPE=float16 is refused"),
        ({"LOG_LEVEL": "loud"}, f"LOG_LEVEL must be one of {LEVELS}, got 'loud'"),
        # a lower-case level is a level: the run gets as far as the next bad setting
        ({"LOG_LEVEL": "debug", "MAX_BATCH_SIZE": "0"}, "MAX_BATCH_SIZE must be at least 1, got 0"),
        (
            {"MODEL_ID": "google/medgemma-1.5-4b-it", "HF_HUB_OFFLINE": "1"},
            "no copy of google/medgemma-1.5-4b-it is cached and downloads are off",
        ),
        (
            {"MODEL_ID": "google/medgemma-1.5-4b-it"},
            "cannot reach the Hugging Face hub to download google/medgemma-1.5-4b-it",
        ),
    ],
)
def test_a_local_test_run_exits_non_zero_with_one_line(tmp_path, env, reason):
    result = test_input_run(env, tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "worker cannot start: " in last_line(result) and reason in last_line(result)


@pytest.mark.model
def test_no_silent_cpu_when_cuda_was_asked_for(tmp_path):
    result = test_input_run({"DEVICE": "cuda", "HF_HOME": os.environ.get("HF_HOME", "")}, tmp_path)
    assert result.returncode == 2
    assert "worker cannot start: DEVICE=cuda but no usable CUDA device is visible" in last_line(result)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("env", "reason"),
    [
        (
            {"MODEL_ID": "google/medgemma-1.5-4b-it", "HF_HUB_OFFLINE": "1"},
            "no copy of google/medgemma-1.5-4b-it is cached",
        ),
        ({"LOG_LEVEL": "loud"}, f"LOG_LEVEL must be one of {LEVELS}, got 'loud'"),
    ],
)
def test_a_served_worker_that_cannot_start_answers_every_job_with_the_reason(tmp_path, env, reason):
    server = start_local_worker(tmp_path, {**env, "HF_HOME": str(tmp_path / "hf")})
    try:
        for _ in range(2):
            answer = requests.post(f"{server.url}/runsync", json={"input": {"text": "note"}}, timeout=60).json()
            assert answer["status"] == "FAILED"
            assert answer["error"].startswith(f"worker cannot start: {reason}")
    finally:
        log = stop_local_worker(server)
    assert log.count("worker cannot start:") == 1  # logged once, not per job


def test_a_host_failure_at_start_asks_for_a_fresh_worker(monkeypatch):
    from medgemma.errors import HostError

    monkeypatch.setattr(handler, "WORKER", None)
    monkeypatch.setattr(handler, "STARTUP_FAILURE", None)

    def no_gpu(settings):
        raise HostError("DEVICE=cuda but no usable CUDA device is visible")

    monkeypatch.setattr(handler.Worker, "start", classmethod(lambda cls, settings: no_gpu(settings)))
    assert handler.start_or_record_failure(Settings.from_env({})) is None
    answer = run(handler.handler({"id": "j", "input": {"text": "note"}}))
    assert answer == {
        "error": "worker cannot start: DEVICE=cuda but no usable CUDA device is visible",
        "refresh_worker": True,
    }
    assert handler.concurrency_modifier(1) == 1


def test_a_bad_log_level_is_answered_to_every_job(monkeypatch):
    monkeypatch.setattr(handler, "WORKER", None)
    monkeypatch.setattr(handler, "STARTUP_FAILURE", None)
    monkeypatch.setenv("LOG_LEVEL", "loud")
    assert handler.logged_settings() is None
    assert handler.start_or_record_failure(None) is None
    for _ in range(2):
        answer = run(handler.handler({"id": "j", "input": {"text": "note"}}))
        assert answer == {"error": f"worker cannot start: LOG_LEVEL must be one of {LEVELS}, got 'loud'"}


def _hub_error(kind: type[Exception], status: int) -> Exception:
    request = httpx2.Request("GET", "https://huggingface.co/api/models/google/medgemma-1.5-4b-it")
    return kind("refused", response=httpx2.Response(status, request=request))


@pytest.mark.parametrize(
    ("error", "token", "reason"),
    [
        (_hub_error(hub_errors.GatedRepoError, 401), None, "is a gated model and no HF_TOKEN is set"),
        (_hub_error(hub_errors.GatedRepoError, 403), "hf_x", "is a gated model and HF_TOKEN has no access to it"),
        (_hub_error(hub_errors.RepositoryNotFoundError, 404), None, "was not found on the Hugging Face hub"),
    ],
)
def test_hub_refusals_name_the_fix(monkeypatch, error, token, reason):
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    else:
        monkeypatch.delenv("HF_TOKEN", raising=False)
    wrapped = OSError("google/medgemma-1.5-4b-it is not a valid model identifier")
    wrapped.__cause__ = error
    source = ModelSource("google/medgemma-1.5-4b-it", "google/medgemma-1.5-4b-it", local_only=False)
    described = describe_access_failure(wrapped, source)
    assert described and reason in described and "\n" not in described
    assert token is None or token not in described
