"""Local mode against the runpod SDK's real ``--rp_serve_api`` server, with a model-free handler.

The simulator differs from hosted RunPod: /status and /stream are POST and run
the job inside the request, the job is forgotten afterwards, /runsync ignores
``wait``, and there is no /cancel or /health.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from client_fixtures import FAST_POLL, FAST_RETRY, cli_env, run_cli
from local_sim_handlers import answer_for, handler, streaming_handler

from client import JobFailedError, MedGemmaClient
from client.cli import EXIT_OK

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

NOTE = "Synthetic note: 34-year-old, sprained ankle, discharged with crutches."
STARTUP_TIMEOUT_S = 20


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def local_sims() -> Iterator[dict[str, str]]:
    """The SDK's local API app (what ``handler.py --rp_serve_api`` serves), in this process:
    one with a plain handler, one with a generator handler (the worker's STREAMING=true)."""
    uvicorn = pytest.importorskip("uvicorn")
    rp_fastapi = pytest.importorskip("runpod.serverless.modules.rp_fastapi")
    servers, urls = [], {}
    for name, function in (("plain", handler), ("streaming", streaming_handler)):
        port = _free_port()
        app = rp_fastapi.WorkerAPI({"handler": function, "return_aggregate_stream": True}).rp_app
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        threading.Thread(target=server.run, name=f"local-sim-{name}", daemon=True).start()
        servers.append(server)
        urls[name] = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not all(server.started for server in servers):
            if time.monotonic() > deadline:
                raise RuntimeError("local simulator did not start in time")
            time.sleep(0.02)
        yield urls
    finally:
        for server in servers:
            server.should_exit = True


@pytest.fixture
def local_client(local_sims, monkeypatch, tmp_path) -> Iterator:
    """``local_client("plain" | "streaming")``: local mode, whatever RUNPOD_* the developer has set."""
    for name in ("RUNPOD_API_KEY", "RUNPOD_ENDPOINT_ID", "RUNPOD_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    made: list[MedGemmaClient] = []

    def make(kind: str) -> MedGemmaClient:
        made.append(
            MedGemmaClient(base_url=local_sims[kind], env_file=tmp_path / "none.env", retry=FAST_RETRY, poll=FAST_POLL)
        )
        return made[-1]

    yield make
    for client in made:
        client.close()


@pytest.mark.parametrize("kind", ["plain", "streaming"])
def test_runsync_on_the_simulator(local_client, kind):
    client = local_client(kind)
    assert client.local

    result = client.summarize(NOTE)

    assert result.text == answer_for(NOTE)
    assert result.model == "local-sim" and result.usage["completion_tokens"] > 0


@pytest.mark.parametrize("kind", ["plain", "streaming"])
def test_async_job_runs_inside_its_first_poll_and_is_not_polled_again(local_client, kind):
    job = local_client(kind).run(NOTE)

    assert job.wait().text == answer_for(NOTE)
    # The simulator has forgotten the job; a second poll would report FAILED "Job ID not found".
    assert job.status().status == "COMPLETED"


@pytest.mark.parametrize("kind", ["plain", "streaming"])
def test_worker_errors_fail_the_job(local_client, kind):
    # The plain handler's {"error"} makes the simulator answer FAILED; the generator's
    # error item arrives inside a COMPLETED output list. Both must read as a failure.
    with pytest.raises(JobFailedError, match="'text' is empty"):
        local_client(kind).generate(images=[b"not really an image"])


def test_stream_from_a_local_generator_worker(local_client):
    job = local_client("streaming").run(NOTE, stream=True)

    assert "".join(job.stream()) == answer_for(NOTE)
    assert job.result.finish_reason == "stop"


def test_cancel_and_health_degrade_gracefully(local_client):
    client = local_client("plain")
    job = client.run(NOTE)

    assert job.cancel() is False
    assert client.health() == {"local": True, "reachable": True}
    assert job.wait().text == answer_for(NOTE)


def test_cli_against_the_simulator(local_sims, tmp_path):
    env = cli_env(RUNPOD_BASE_URL=local_sims["plain"])

    done = run_cli("--text", NOTE, "--async", env=env, cwd=tmp_path)

    assert done.returncode == EXIT_OK, done.stderr
    assert done.stdout == answer_for(NOTE) + "\n"
