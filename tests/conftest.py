"""Shared fixtures: one stand-in model per session, and a real local worker over HTTP.

Markers: ``model`` (needs the stand-in model; ~1-2 min to build once, then cached),
``gpu`` (needs CUDA; skipped cleanly without it).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from bench.local_worker import LocalWorker, free_port, start_api_worker, stop_local_worker

pytest_plugins = ["client_fixtures"]

REPO = Path(__file__).resolve().parent.parent
# Small answers keep the suite fast on 2 CPU cores; behaviour, not wording, is tested. The
# dummy image is off: with MedGemma's geometry it adds ~260 prompt tokens, which made a
# 12-token stand-in job 1.45x slower (5.4 s against 3.7 s). The tests of the dummy image
# itself opt back in (``worker_with_dummy``, or their own settings).
TEST_ENV = {"MAX_NEW_TOKENS": "12", "LOG_LEVEL": "INFO", "DUMMY_IMAGE": "false"}
#: The vLLM engine in tests: eager (no minutes of torch.compile) and a small KV cache on a shared machine.
VLLM_TEST_ENV = {"ENGINE": "vllm", "ENFORCE_EAGER": "true", "VLLM_CPU_KVCACHE_SPACE": "1"}
SERVER_START_TIMEOUT_S = 300
DEFAULT_TEST_TIMEOUT_S = 600


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--bench", action="store_true", help="also run the benchmarks' reduced runs (minutes, GBs)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "model: needs the embedded stand-in model (built once, cached)")
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU; skipped without one")
    config.addinivalue_line("markers", "slow: takes more than a few seconds (fault injection, subprocesses)")
    config.addinivalue_line(
        "markers", "bench: a benchmark's reduced run (minutes, GBs of RAM); skipped without --bench"
    )
    config.addinivalue_line(
        "markers", "own_vllm: starts its own vLLM; runs last, once the session's vLLM engine is closed (memory)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    cuda = _cuda_available() if any("gpu" in item.keywords for item in items) else False
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(DEFAULT_TEST_TIMEOUT_S))
        if "gpu" in item.keywords and not cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        if item.get_closest_marker("bench") is not None and not config.getoption("--bench"):
            item.add_marker(pytest.mark.skip(reason="a benchmark's reduced run: pytest --bench"))
    # Two vLLM engines at once (~7 GB each on the stand-in) don't fit beside the rest on a 24 GB machine.
    items.sort(key=lambda item: item.get_closest_marker("own_vllm") is not None)


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def run(coro):
    """Run a handler coroutine to completion (each test gets its own event loop)."""
    return asyncio.run(coro)


@pytest.fixture(scope="session")
def settings():
    from medgemma.settings import Settings

    return Settings.from_env({**os.environ, **TEST_ENV})


#: The session's vLLM engines, for ``session_vllm_closed``.
SESSION_VLLM_ENGINES: list = []

#: The engines every job test runs on (one model load per engine per session).
ENGINES = ["transformers", "vllm"]


@pytest.fixture(scope="session")
def transformers_worker(settings):
    """The real Worker on the stand-in, transformers engine."""
    from medgemma.worker import Worker

    loaded = Worker.start(replace(settings, engine="transformers"))
    yield loaded
    loaded.engine.close()


@pytest.fixture(scope="session")
def vllm_settings():
    """The settings the session's vLLM engine starts with (eager, 1 GiB KV cache)."""
    from medgemma.settings import Settings

    return Settings.from_env({**os.environ, **TEST_ENV, **VLLM_TEST_ENV})


@pytest.fixture(scope="session")
def vllm_worker(vllm_settings):
    """The real Worker on the stand-in, vLLM engine, vision tower included (its processes start once per session)."""
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm is not installed")
    from medgemma.worker import Worker

    loaded = Worker.start(vllm_settings)
    SESSION_VLLM_ENGINES.append(loaded.engine)
    yield loaded
    loaded.engine.close()


def close_session_vllm() -> None:
    """Close the session's vLLM engine, if one was started (not restarted): own_vllm tests need its memory."""
    for engine in SESSION_VLLM_ENGINES:
        engine.close()


@pytest.fixture
def session_vllm_closed(request) -> None:
    """For an ``own_vllm`` test: the session's vLLM engine is closed first."""
    assert request.node.get_closest_marker("own_vllm"), "only own_vllm tests run after the session's vLLM is closed"
    close_session_vllm()


@pytest.fixture(params=ENGINES)
def worker(request, monkeypatch):
    """The session's Worker for each engine in turn, installed as handler.py's global state."""
    import handler

    loaded = request.getfixturevalue(f"{request.param}_worker")
    monkeypatch.setattr(handler, "WORKER", loaded)
    return loaded


@pytest.fixture
def vision_worker(worker):
    """``worker``, named where a test sends images: both engines serve the stand-in's vision tower."""
    assert worker.engine.info.vision, f"the {worker.engine.info.engine} engine lost the stand-in's vision tower"
    return worker


@pytest.fixture
def worker_with_dummy(worker, monkeypatch):
    """The same engine with DUMMY_IMAGE=true (the worker's default), installed as handler.py's state."""
    import handler
    from medgemma.worker import Worker

    with_dummy = Worker(replace(worker.settings, dummy_image=True), worker.engine)
    monkeypatch.setattr(handler, "WORKER", with_dummy)
    return with_dummy


def start_local_worker(log_dir: Path, extra_env: dict[str, str] | None = None) -> LocalWorker:
    """``python handler.py --rp_serve_api`` on a free loopback port, with ``TEST_ENV``; returns once it answers.

    Its output goes to a file in ``log_dir``; ``bench.local_worker`` starts and stops it, as for ``bench.load``.
    """
    port = free_port()
    return start_api_worker(
        {**os.environ, **TEST_ENV, **(extra_env or {})},
        port,
        log_dir / f"worker-{port}.log",
        SERVER_START_TIMEOUT_S,
        new_session=True,  # its session id names every process it starts (tests/test_vllm_lifetime.py)
    )


@pytest.fixture(scope="session")
def local_worker(tmp_path_factory) -> Iterator[LocalWorker]:
    server = start_local_worker(tmp_path_factory.mktemp("local-worker"))
    yield server
    stop_local_worker(server)


@pytest.fixture(scope="session")
def local_worker_url(local_worker: LocalWorker) -> str:
    return local_worker.url
