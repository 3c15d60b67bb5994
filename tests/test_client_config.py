"""Configuration, input building, retry schedule and result normalisation (no server needed
except for the credential-leak checks)."""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from email.utils import formatdate

import pytest

from client import (
    AuthenticationError,
    ConfigurationError,
    InvalidRequestError,
    JobFailedError,
    MedGemmaClient,
    ResponseFormatError,
    RetryPolicy,
)
from client.config import resolve_config
from client.constants import DEFAULT_BASE_URL
from client.inputs import build_job_input
from client.policies import PollPolicy, parse_retry_after
from client.results import JobState, result_from_state

pytestmark = pytest.mark.timeout(20)

SECRET = "sk-test-SECRET-do-not-print-4242"


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("RUNPOD_API_KEY", "RUNPOD_ENDPOINT_ID", "RUNPOD_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


# ----------------------------------------------------------------------------- config


def test_argument_beats_environment_beats_dotenv(clean_env, tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text(
        "RUNPOD_API_KEY=from-dotenv\nRUNPOD_ENDPOINT_ID=ep-dotenv\nRUNPOD_BASE_URL=https://dotenv.example/v2\n"
    )
    clean_env.setenv("RUNPOD_ENDPOINT_ID", "ep-env")
    clean_env.setenv("RUNPOD_API_KEY", "from-env")

    config = resolve_config(api_key="from-arg", env_file=env_file)

    assert config.api_key == "from-arg"
    assert config.endpoint_id == "ep-env"
    assert config.base_url == "https://dotenv.example/v2"
    assert config.api_root == "https://dotenv.example/v2/ep-env"


def test_dotenv_is_read_without_touching_the_environment(clean_env, tmp_path):
    (tmp_path / ".env").write_text("RUNPOD_API_KEY=k\nRUNPOD_ENDPOINT_ID=ep\n")
    clean_env.chdir(tmp_path)

    config = resolve_config()

    assert (config.endpoint_id, config.api_key, config.base_url) == ("ep", "k", DEFAULT_BASE_URL)
    assert "RUNPOD_API_KEY" not in os.environ


def test_empty_environment_variable_switches_off_the_dotenv_value(clean_env, tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("RUNPOD_ENDPOINT_ID=ep-dotenv\n")
    clean_env.setenv("RUNPOD_ENDPOINT_ID", "")

    config = resolve_config(base_url="http://127.0.0.1:8000", env_file=env_file)

    assert config.local


def test_missing_endpoint_id_names_the_variable(clean_env, tmp_path):
    with pytest.raises(ConfigurationError, match="RUNPOD_ENDPOINT_ID"):
        resolve_config(api_key="k", env_file=tmp_path / "none.env")


def test_missing_api_key_names_the_variable(clean_env, tmp_path):
    with pytest.raises(ConfigurationError, match="RUNPOD_API_KEY"):
        resolve_config(endpoint_id="ep", env_file=tmp_path / "none.env")


def test_local_mode_needs_no_key_and_uses_bare_routes(clean_env, tmp_path):
    config = resolve_config(base_url="http://127.0.0.1:8000/", env_file=tmp_path / "none.env")

    assert config.local
    assert config.api_root == "http://127.0.0.1:8000"
    assert config.api_key is None


def test_base_url_must_be_http(clean_env, tmp_path):
    with pytest.raises(ConfigurationError, match="RUNPOD_BASE_URL"):
        resolve_config(base_url="127.0.0.1:8000", env_file=tmp_path / "none.env")


def test_repr_never_shows_the_key(tmp_path):
    made = MedGemmaClient(SECRET, "ep", env_file=tmp_path / "none.env")
    try:
        assert SECRET not in repr(made)
        assert SECRET not in repr(made.config)
        assert "ep" in repr(made)
    finally:
        made.close()


def test_key_never_reaches_logs_or_errors(start_double, make_client, caplog):
    server = start_double(api_key=SECRET)
    server.fail_text("note that fails", "Field 'text' is unreadable.")
    caplog.set_level(logging.DEBUG)
    good = make_client(server)
    wrong = make_client(server, api_key=SECRET + "-wrong")

    good.summarize("a synthetic note")
    messages = []
    for call in (lambda: good.summarize("note that fails"), lambda: wrong.summarize("x")):
        with pytest.raises((JobFailedError, AuthenticationError)) as caught:
            call()
        messages.append(str(caught.value))

    assert caplog.records, "expected DEBUG logging to be captured"
    assert SECRET not in caplog.text
    assert "a synthetic note" not in caplog.text
    assert all(SECRET not in message for message in messages)


# ----------------------------------------------------------------------------- inputs


def test_build_job_input_leaves_unset_options_to_the_worker():
    assert build_job_input("note") == {"text": "note"}
    assert build_job_input("note", mode="general", max_new_tokens=64, temperature=0.0, stream=True) == {
        "text": "note",
        "mode": "general",
        "max_new_tokens": 64,
        "temperature": 0.0,
        "stream": True,
    }


def test_images_are_base64_data_urls(tmp_path):
    png = tmp_path / "scan.png"
    png.write_bytes(b"\x89PNG fake")
    job_input = build_job_input(images=[png, b"raw"])

    assert "text" not in job_input
    assert job_input["images"][0] == "data:image/png;base64," + base64.b64encode(b"\x89PNG fake").decode()
    assert job_input["images"][1] == base64.b64encode(b"raw").decode()


def test_empty_input_is_refused_before_sending(tmp_path):
    with pytest.raises(InvalidRequestError):
        build_job_input("   \n")
    with pytest.raises(InvalidRequestError, match="cannot read image"):
        build_job_input("note", images=[tmp_path / "missing.png"])


# ----------------------------------------------------------------------------- policies


@pytest.mark.parametrize(
    ("header", "expected"),
    [("3", 3.0), ("0.5", 0.5), ("-4", 0.0), (None, None), ("soon", None), ("nan", None)],
)
def test_parse_retry_after_seconds(header, expected):
    assert parse_retry_after(header) == expected


def test_parse_retry_after_http_date():
    header = formatdate(time.time() + 30, usegmt=True)
    assert 28 <= parse_retry_after(header) <= 31


def test_backoff_grows_with_jitter_and_caps():
    policy = RetryPolicy(initial_delay_s=1.0, max_delay_s=4.0, jitter=0.25, max_retry_after_s=10)
    for retry in range(6):
        expected = min(2**retry, 4.0)
        assert 0.75 * expected <= policy.delay(retry) <= expected
    assert policy.delay(0, "7") == 7
    assert policy.delay(0, "3600") == 10


def test_poll_intervals_back_off_to_a_ceiling():
    intervals = PollPolicy(initial_s=1.0, max_s=3.0, growth=2.0).intervals()
    assert [next(intervals) for _ in range(4)] == [1.0, 2.0, 3.0, 3.0]


# ----------------------------------------------------------------------------- normalisation

META = {
    "mode": "summarize",
    "model": "m",
    "run_mode": "r",
    "usage": {"prompt_tokens": 5, "completion_tokens": 2},
    "finish_reason": "stop",
    "used_dummy_image": False,
    "timings": {"t": 1},
}


@pytest.mark.parametrize(
    "output",
    [
        {"output": "Two words", **META},
        [{"output": "Two words", **META}],
        [{"delta": "Two"}, {"delta": " words"}, {"delta": "", "done": True, **META}],
    ],
    ids=["object", "one-item-list", "stream-chunks"],
)
def test_every_output_shape_gives_the_same_result(output):
    state = JobState.from_payload({"id": "j1", "status": "COMPLETED", "output": output, "executionTime": 9})
    result = result_from_state(state)

    assert result.text == "Two words"
    assert (result.model, result.prompt_tokens, result.completion_tokens) == ("m", 5, 2)
    assert result.execution_time_ms == 9
    assert "Two words" not in repr(result)


def test_error_item_in_completed_output_is_a_failure():
    state = JobState.from_payload({"id": "j1", "status": "COMPLETED", "output": [{"error": "Field 'seed' is bad."}]})
    with pytest.raises(JobFailedError) as caught:
        result_from_state(state)
    assert caught.value.error == "Field 'seed' is bad."


@pytest.mark.parametrize("output", [None, [{"delta": "cut short"}], ["plain"], {"answer": "?"}])
def test_unusable_outputs_raise_response_format_error(output):
    state = JobState.from_payload({"id": "j1", "status": "COMPLETED", "output": output})
    with pytest.raises(ResponseFormatError):
        result_from_state(state)


def test_handler_crash_reports_keep_the_message_not_the_traceback():
    crash = json.dumps(
        {
            "error_type": "<class 'ValueError'>",
            "error_message": "bad seed",
            "error_traceback": "Traceback (most recent call last): ...",
        }
    )
    error = JobFailedError("j1", crash)

    assert str(error) == "job j1 FAILED: <class 'ValueError'>: bad seed"
    assert error.error == crash
