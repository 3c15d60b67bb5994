"""``python -m client`` as a user runs it: a subprocess, against the RunPod double."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest
from client_fixtures import cli_command, cli_env, run_cli
from runpod_double import MODEL, fake_answer

from client.cli import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE

pytestmark = pytest.mark.timeout(30)

NOTE = "Synthetic note: 58-year-old, chest pain resolved, troponin negative x2."


def test_one_document_prints_only_the_answer(double, tmp_path):
    done = run_cli("--text", NOTE, env=cli_env(double), cwd=tmp_path)

    assert done.returncode == EXIT_OK, done.stderr
    assert done.stdout == fake_answer(NOTE) + "\n"
    assert done.stderr == ""


def test_file_input_with_json_output(double, tmp_path):
    note = tmp_path / "EP001.md"
    note.write_text(NOTE, encoding="utf-8")

    done = run_cli("--file", note, "--json", "--max-tokens", "64", env=cli_env(double), cwd=tmp_path)

    assert done.returncode == EXIT_OK, done.stderr
    result = json.loads(done.stdout)
    assert result["text"] == fake_answer(NOTE)
    assert result["model"] == MODEL
    assert set(result["usage"]) == {"prompt_tokens", "completion_tokens"}
    assert double.jobs_for(NOTE)[0].job_input["max_new_tokens"] == 64


def test_async_submits_and_polls(double, tmp_path):
    done = run_cli("--text", NOTE, "--async", env=cli_env(double), cwd=tmp_path)

    assert done.returncode == EXIT_OK, done.stderr
    assert done.stdout == fake_answer(NOTE) + "\n"
    assert "submitted" in done.stderr
    assert double.count_requests("run") == 1 and double.count_requests("runsync") == 0


def test_stream_prints_the_answer_as_it_arrives(start_double, tmp_path):
    server = start_double(streaming_worker=True, execution_s=0.3)

    done = run_cli("--text", NOTE, "--stream", env=cli_env(server), cwd=tmp_path)

    assert done.returncode == EXIT_OK, done.stderr
    assert done.stdout == fake_answer(NOTE) + "\n"
    assert server.count_requests("stream") > 1


def test_health_prints_json(double, tmp_path):
    done = run_cli("--health", env=cli_env(double), cwd=tmp_path)

    assert done.returncode == EXIT_OK, done.stderr
    assert set(json.loads(done.stdout)) == {"jobs", "workers"}


def test_failed_job_is_one_error_line_and_exit_1(double, tmp_path):
    double.fail_text(NOTE, "Field 'temperature' must be between 0 and 2.")

    done = run_cli("--text", NOTE, env=cli_env(double), cwd=tmp_path)

    assert done.returncode == EXIT_FAILURE
    assert done.stdout == ""
    assert done.stderr.startswith("error: job ") and done.stderr.count("\n") == 1
    assert "Field 'temperature' must be between 0 and 2." in done.stderr


@pytest.mark.parametrize(
    ("env_overrides", "variable"),
    [({}, "RUNPOD_ENDPOINT_ID"), ({"RUNPOD_ENDPOINT_ID": "ep-x"}, "RUNPOD_API_KEY")],
)
def test_missing_credentials_exit_2_naming_the_variable(tmp_path, env_overrides, variable):
    done = run_cli("--text", NOTE, env=cli_env(**env_overrides), cwd=tmp_path)

    assert done.returncode == EXIT_USAGE
    assert variable in done.stderr and done.stderr.startswith("error: ")


def test_dotenv_in_working_directory_is_used(double, tmp_path):
    (tmp_path / ".env").write_text(
        f"RUNPOD_API_KEY={double.api_key}\nRUNPOD_ENDPOINT_ID={double.endpoint_id}\nRUNPOD_BASE_URL={double.base_url}\n"
    )

    done = run_cli("--text", NOTE, env=cli_env(), cwd=tmp_path)

    assert done.returncode == EXIT_OK, done.stderr


def test_rejected_key_exits_2(double, tmp_path):
    done = run_cli("--text", NOTE, env=cli_env(double, RUNPOD_API_KEY="wrong"), cwd=tmp_path)

    assert done.returncode == EXIT_USAGE
    assert "401" in done.stderr


@pytest.mark.parametrize(
    "args",
    [[], ["--text", ""], ["--text", "x", "--stream", "--async"], ["--file", "missing.md"], ["--batch", "no-such-dir"]],
    ids=["no-input", "empty-text", "stream-and-async", "missing-file", "missing-dir"],
)
def test_usage_errors_exit_2(double, tmp_path, args):
    done = run_cli(*args, env=cli_env(double), cwd=tmp_path)

    assert done.returncode == EXIT_USAGE
    assert done.stdout == ""
    assert double.requests == []


def test_verbose_logs_never_show_key_or_note(double, tmp_path):
    done = run_cli("--text", NOTE, "--async", "-v", env=cli_env(double), cwd=tmp_path)

    assert done.returncode == EXIT_OK
    assert "DEBUG" in done.stderr and "POST run" in done.stderr
    assert double.api_key not in done.stderr
    assert NOTE not in done.stderr and fake_answer(NOTE) not in done.stderr


def test_ctrl_c_cancels_the_remote_job_and_exits_130(double, tmp_path, interruptible_children):
    double.slow_text(NOTE, 30.0)
    process = subprocess.Popen(
        cli_command("--text", NOTE, "--async"),
        env=cli_env(double),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 10
    while not double.jobs and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # let it get into its polling loop

    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=15)

    assert process.returncode == EXIT_INTERRUPTED, stderr
    (job,) = double.jobs.values()
    assert job.status == "CANCELLED"
    assert f"cancelled job {job.id}" in stderr
    assert stdout == ""
