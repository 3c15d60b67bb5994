"""RunPod serverless entry point for MedGemma.

    python handler.py                                  # on RunPod (or runs test_input.json locally)
    python handler.py --test_input '{"input": {"text": "...", "mode": "summarize"}}'
    python handler.py --rp_serve_api --rp_api_host 127.0.0.1   # local HTTP API

The model is loaded once per process by ``warmup()`` (the cold start); each job then goes
validate -> generate -> shape the output. RunPod decides once per handler function whether
it streams, so ``STREAMING=true`` starts the worker with the generator ``stream_handler``
(every job's output becomes a list of chunks) and the default keeps the plain ``handler``
whose output is one object.

Jobs from RunPod's OpenAI-compatible route (``/openai/v1/...``, input ``openai_route`` +
``openai_input``) go the same way in OpenAI's shapes (``medgemma.openai_api``).

A worker that can't start (a bad setting, a gated or missing model, no GPU) does not exit:
RunPod would restart it in a loop while jobs wait with no reason given. It stays up, logs
the reason once, and answers every job with ``{"error": "worker cannot start: ..."}``. A
local test run (``--test_input``) exits non-zero with that line instead.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from typing import Any

# OpenMP's default spin-waiting keeps torch's CPU threads busy between parallel regions, which
# made CPU jobs several times slower beside anything else on a small machine; PASSIVE costs a
# little on a quiet, dedicated one, where OMP_WAIT_POLICY=ACTIVE wins it back (figures:
# docs/performance.md). It only takes effect if set before torch is first imported, which
# warmup() does; an explicit value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from medgemma import openai_api  # noqa: E402
from medgemma.errors import HostError, MedGemmaError, SettingsError  # noqa: E402
from medgemma.settings import Settings, load_settings  # noqa: E402
from medgemma.worker import Worker  # noqa: E402

log = logging.getLogger("medgemma.handler")

# The runpod SDK defaults to DEBUG, at which it logs every job's input and output:
# patient data. INFO logs job ids and states only. Set before the SDK is imported.
SDK_LOG_LEVEL = "INFO"

WORKER: Worker | None = None
#: Why this worker could not start; every job is answered with it.
STARTUP_FAILURE: Exception | None = None
#: The config handed to runpod.serverless.start: a streamed job asks for a fresh worker through it.
RUNPOD_CONFIG: dict[str, Any] = {}


def warmup(settings: Settings | None = None) -> Worker:
    """Load the model into module-global state, once per process."""
    global WORKER
    if WORKER is None:
        WORKER = Worker.start(settings or load_settings())
    return WORKER


def start_or_record_failure(settings: Settings | None = None) -> Worker | None:
    """``warmup()``, keeping a start-up failure (logged once) to answer jobs with."""
    global STARTUP_FAILURE
    try:
        return warmup(settings)
    except MedGemmaError as error:  # configuration, model access or host: the reason says the fix
        log.error("worker cannot start: %s", error)
        STARTUP_FAILURE = error
    except Exception as error:  # no job data exists yet, so the whole traceback may be logged
        log.exception("worker cannot start: unexpected %s", type(error).__name__)
        STARTUP_FAILURE = error
    return None


def startup_failure_output(error: Exception) -> dict[str, Any]:
    reason = (
        str(error) if isinstance(error, MedGemmaError) else f"unexpected {type(error).__name__} (see the worker log)"
    )
    output: dict[str, Any] = {"error": f"worker cannot start: {reason}"}
    if isinstance(error, HostError):
        output["refresh_worker"] = True  # another machine may serve
    return output


async def handler(job: dict[str, Any]) -> dict[str, Any]:
    """One job in, one output object (or ``{"error": ...}``) out."""
    openai = openai_api.is_openai_job(job)
    if STARTUP_FAILURE is not None:
        failure = startup_failure_output(STARTUP_FAILURE)
        return error_as_text(openai_api.failure_output(failure)) if openai else failure
    return error_as_text(await openai_api.run(warmup(), job)) if openai else await warmup().run(job)


async def stream_handler(job: dict[str, Any]) -> AsyncIterator[dict[str, Any] | str]:
    """Generator variant for STREAMING=true: text chunks, then usage and finish reason."""
    openai = openai_api.is_openai_job(job)
    if STARTUP_FAILURE is not None:
        failure = startup_failure_output(STARTUP_FAILURE)
        chunks: AsyncIterator[dict[str, Any] | str] = _one(openai_api.failure_output(failure) if openai else failure)
    else:
        chunks = openai_api.run_stream(warmup(), job) if openai else warmup().run_stream(job)
    async for chunk in chunks:
        if isinstance(chunk, dict):  # an OpenAI stream's chunks are SSE text
            # The SDK reads refresh_worker only from a plain handler's output; a streaming
            # worker asks through its config, which the SDK checks after the job.
            if chunk.pop("refresh_worker", False):
                RUNPOD_CONFIG["refresh_worker"] = True
            chunk = error_as_text(chunk)
        yield chunk


def error_as_text(output: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI error object as JSON text: the SDK takes a job's error as a string.

    Its own errors are JSON text; a generator's error is reported as ``str(error)``, and its local
    API refuses (HTTP 500, logging the object) an error that is not a string.
    """
    if isinstance(output.get("error"), dict):
        output["error"] = json.dumps(output["error"])
    return output


async def _one(item: dict[str, Any]) -> AsyncIterator[dict[str, Any] | str]:
    yield item


def concurrency_modifier(current: int) -> int:
    """How many jobs RunPod may hand this worker at once (they are batched together)."""
    return 1 if STARTUP_FAILURE is not None else warmup().max_concurrency


def serving(argv: list[str], env: Mapping[str, str]) -> bool:
    """On RunPod, or serving the local API; False for the SDK's local test run."""
    return ("--rp_serve_api" in argv or bool(env.get("RUNPOD_WEBHOOK_GET_JOB"))) and "--test_input" not in argv


def on_runpod_queue(argv: list[str], env: Mapping[str, str]) -> bool:
    """Taking jobs from RunPod's queue (the SDK's job loop), not serving the local API or a local test."""
    return bool(env.get("RUNPOD_WEBHOOK_GET_JOB")) and "--rp_serve_api" not in argv and "--test_input" not in argv


def forget_stale_jobs() -> None:
    """Empty the SDK's record of jobs in progress, which it keeps in ``.runpod_jobs.pkl`` in the working directory.

    The SDK (runpod/serverless/modules/worker_state.py) loads that file when it starts and counts every
    job in it against ``concurrency_modifier``, for good: a job left there by a worker killed mid-job
    would hold one of a restarted worker's slots forever (at MAX_CONCURRENCY=1, the worker never takes
    a job). At start-up no job is in progress, so the record is emptied with the SDK's own ``clear``.
    """
    from runpod.serverless.modules.worker_state import JobsProgress

    JobsProgress().clear()


def uses_generator(settings: Settings, argv: list[str], env: Mapping[str, str]) -> bool:
    """Whether to start with ``stream_handler``.

    The SDK's local test run (``--test_input`` or test_input.json, i.e. not on RunPod and
    not serving the API) only knows plain handlers, so it always gets ``handler``.
    """
    return settings.streaming and serving(argv, env)


def exit_on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM ends the worker as an exit does: vLLM's processes are stopped (at interpreter exit).

    A container's PID 1 has no default action for SIGTERM: without a handler the worker would
    ignore it until the runtime's SIGKILL. While serving, the SDK's job loop and the local API's
    server install their own, finish, and exit (the server re-raises SIGTERM here).
    """
    log.info("SIGTERM received: stopping the worker")
    sys.exit(0)


def logged_settings() -> Settings | None:
    """The settings, with the log at the level LOG_LEVEL names; None when a setting is bad.

    The log starts at INFO (LOG_LEVEL's default) so that a bad setting, LOG_LEVEL itself
    included, is still logged: ``start_or_record_failure`` reads the settings again and
    records the failure to answer every job with.
    """
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = load_settings()
    except SettingsError:
        return None
    logging.getLogger().setLevel(settings.log_level.upper())
    return settings


def main() -> None:
    settings = logged_settings()
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    worker = start_or_record_failure(settings)
    if worker is None and not serving(sys.argv, os.environ):
        sys.exit(2)  # a local test run: the reason is the last line logged
    os.environ.setdefault("RUNPOD_LOG_LEVEL", SDK_LOG_LEVEL)
    import runpod  # after warmup: a bad setting is reported before the SDK starts anything

    if on_runpod_queue(sys.argv, os.environ):
        forget_stale_jobs()
    generator = worker is not None and uses_generator(worker.settings, sys.argv, os.environ)
    RUNPOD_CONFIG.update(
        handler=stream_handler if generator else handler,
        return_aggregate_stream=True,
        concurrency_modifier=concurrency_modifier,
    )
    runpod.serverless.start(RUNPOD_CONFIG)


if __name__ == "__main__":
    main()
