"""Fixtures and helpers shared by the client tests (import the fixtures you use).

Every client built here reads no ``.env`` (``env_file`` points at a missing
file) and every CLI subprocess runs in a temporary directory with a clean
``RUNPOD_*`` environment, so a developer's real credentials never leak in.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from runpod_double import RunPodDouble

from client import MedGemmaClient, PollPolicy, RetryPolicy

REPO_ROOT = Path(__file__).resolve().parent.parent

# Real waits, just short: tests exercise the same code paths as production.
FAST_RETRY = RetryPolicy(max_retries=6, initial_delay_s=0.01, max_delay_s=0.05)
FAST_POLL = PollPolicy(initial_s=0.01, max_s=0.05)


@pytest.fixture
def start_double() -> Iterator[Callable[..., RunPodDouble]]:
    """Factory: ``start_double(streaming_worker=True, ...)``; all are stopped afterwards."""
    doubles: list[RunPodDouble] = []

    def start(**kwargs: Any) -> RunPodDouble:
        double = RunPodDouble(**kwargs)
        double.start()
        doubles.append(double)
        return double

    yield start
    for double in doubles:
        double.stop()


@pytest.fixture
def interruptible_children() -> Iterator[None]:
    """CLI subprocesses started in the test get SIGINT's default action, as from a terminal.

    A shell starts background commands with SIGINT ignored and exec keeps it ignored,
    so a suite launched with ``&`` would start CLIs that Ctrl-C can't reach. A caught
    signal is reset to its default at exec, so catching it here (main thread) fixes that.
    """
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture
def double(start_double: Callable[..., RunPodDouble]) -> RunPodDouble:
    return start_double()


@pytest.fixture
def make_client(double: RunPodDouble, tmp_path: Path) -> Iterator[Callable[..., MedGemmaClient]]:
    """Factory: a client for ``double`` (or ``target=`` another one) with fast retries and polls."""
    clients: list[MedGemmaClient] = []

    def make(target: RunPodDouble | None = None, **kwargs: Any) -> MedGemmaClient:
        target = target or double
        kwargs.setdefault("api_key", target.api_key)
        kwargs.setdefault("endpoint_id", target.endpoint_id)
        kwargs.setdefault("base_url", target.base_url)
        kwargs.setdefault("retry", FAST_RETRY)
        kwargs.setdefault("poll", FAST_POLL)
        kwargs.setdefault("env_file", tmp_path / "no-such.env")
        made = MedGemmaClient(**kwargs)
        clients.append(made)
        return made

    yield make
    for made in clients:
        made.close()


@pytest.fixture
def client(make_client: Callable[..., MedGemmaClient]) -> MedGemmaClient:
    return make_client()


def cli_env(double: RunPodDouble | None = None, **overrides: str) -> dict[str, str]:
    """Environment for ``python -m client``: pointed at ``double`` and nothing else."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("RUNPOD_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    if double is not None:
        env.update(
            RUNPOD_API_KEY=double.api_key,
            RUNPOD_ENDPOINT_ID=double.endpoint_id,
            RUNPOD_BASE_URL=double.base_url,
        )
    env.update(overrides)
    return env


def cli_command(*args: str | os.PathLike[str]) -> list[str]:
    return [sys.executable, "-m", "client", *map(str, args)]


def run_cli(
    *args: str | os.PathLike[str], env: dict[str, str], cwd: Path, timeout: float = 30, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the CLI to its end; ``input`` is its stdin (none without it)."""
    stdin = subprocess.DEVNULL if input is None else None
    return subprocess.run(
        cli_command(*args), env=env, cwd=cwd, input=input, stdin=stdin, capture_output=True, text=True, timeout=timeout
    )


def write_notes(root: Path, count: int, *, prefix: str = "note") -> dict[str, str]:
    """Create ``count`` small synthetic notes (some in sub-directories); return id -> text."""
    notes = {}
    for number in range(count):
        relative = (f"ward-{number % 3}/" if number % 2 else "") + f"{prefix}{number:03d}.md"
        text = f"# Synthetic note {number}\n\nStable overnight. Plan {number}: continue care.\n"
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        notes[relative] = text
    return notes


def read_summary(path: Path) -> tuple[dict, str]:
    """A Markdown summary's front matter (each value is JSON, which is also valid YAML) and its text."""
    _, header, body = path.read_text(encoding="utf-8").split("---\n", 2)
    fields = dict(line.split(": ", 1) for line in header.splitlines())
    return {key: json.loads(value) for key, value in fields.items()}, body.strip()


def all_files(root: Path) -> set[str]:
    return {path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file()}


def counts_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]
