"""RunPod serverless entry point for MedGemma.

    python handler.py                                  # on RunPod (or runs test_input.json locally)
    python handler.py --test_input '{"input": {"text": "...", "mode": "summarize"}}'
    python handler.py --rp_serve_api --rp_api_host 127.0.0.1   # local HTTP API

The model is loaded once per process by ``warmup()`` (the cold start); each job then
goes validate -> generate -> shape the output. RunPod decides once per handler
function whether it streams, so ``STREAMING=true`` starts the worker with the
generator ``stream_handler`` (every job's output becomes a list of chunks) and the
default keeps the plain ``handler`` whose output is one object.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

# OpenMP's default spin-waiting keeps torch's CPU threads busy between parallel
# regions; with anything else running on a small machine, CPU jobs were 4-11x slower.
# PASSIVE costs 1-14% on a quiet, dedicated CPU machine (README, Performance), where
# OMP_WAIT_POLICY=ACTIVE wins it back. It only takes effect if set before torch is
# first imported, which warmup() does; an explicit value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from medgemma.errors import MedGemmaError  # noqa: E402
from medgemma.settings import Settings, load_settings  # noqa: E402
from medgemma.worker import Worker  # noqa: E402

log = logging.getLogger("medgemma.handler")

# The runpod SDK defaults to DEBUG, at which it logs every job's input and output:
# patient data. INFO logs job ids and states only. Set before the SDK is imported.
SDK_LOG_LEVEL = "INFO"

WORKER: Worker | None = None


def warmup(settings: Settings | None = None) -> Worker:
    """Load the model into module-global state, once per process."""
    global WORKER
    if WORKER is None:
        started = time.perf_counter()
        WORKER = Worker.start(settings or load_settings())
        log.info("cold start: model loaded in %.1f s", time.perf_counter() - started)
    return WORKER


async def handler(job: dict[str, Any]) -> dict[str, Any]:
    """One job in, one output object (or ``{"error": ...}``) out."""
    return await warmup().run(job)


async def stream_handler(job: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """Generator variant for STREAMING=true: text chunks, then usage and finish reason."""
    async for chunk in warmup().run_stream(job):
        yield chunk


def concurrency_modifier(current: int) -> int:
    """How many jobs RunPod may hand this worker at once (they are batched together)."""
    return warmup().settings.max_concurrency


def uses_generator(settings: Settings, argv: list[str], env: Mapping[str, str]) -> bool:
    """Whether to start with ``stream_handler``.

    The SDK's local test run (``--test_input`` or test_input.json, i.e. not on RunPod
    and not serving the API) only knows plain handlers, so it always gets ``handler``.
    """
    serving = "--rp_serve_api" in argv or bool(env.get("RUNPOD_WEBHOOK_GET_JOB"))
    return settings.streaming and serving and "--test_input" not in argv


def main() -> None:
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO"),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        worker = warmup()
    except MedGemmaError as error:  # bad settings or no device: one clear line, exit non-zero
        log.error("worker cannot start: %s", error)
        sys.exit(2)
    os.environ.setdefault("RUNPOD_LOG_LEVEL", SDK_LOG_LEVEL)
    import runpod  # after warmup: a bad setting fails before the SDK starts anything

    generator = uses_generator(worker.settings, sys.argv, os.environ)
    runpod.serverless.start(
        {
            "handler": stream_handler if generator else handler,
            "return_aggregate_stream": True,
            "concurrency_modifier": concurrency_modifier,
        }
    )


if __name__ == "__main__":
    main()
