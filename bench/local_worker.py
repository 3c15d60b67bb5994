"""A local API worker: ``python handler.py --rp_serve_api`` on a free loopback port.

The one start-up and stop for the benchmarks (``bench.load``) and the tests
(``tests/conftest.py``'s ``start_local_worker``). Only the standard library and
``requests``: the tests' conftest imports it.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import requests

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LocalWorker:
    process: subprocess.Popen
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_api_worker(
    env: Mapping[str, str], port: int, log_path: Path, timeout_s: float, new_session: bool = False
) -> LocalWorker:
    """The worker's local API server on ``127.0.0.1:port`` with exactly ``env``; returns once it answers.

    Its output goes to ``log_path`` (a pipe nobody drains would block a long-lived server).
    ``new_session``: it leads its own session, whose id names every process it starts.
    """
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "handler.py", "--rp_serve_api", "--rp_api_host", "127.0.0.1", "--rp_api_port", str(port)],
            cwd=REPO_ROOT,
            env=dict(env),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=new_session,
        )
    server = LocalWorker(process, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"local worker exited early (log: {log_path}):\n{server.log()[-4000:]}")
        try:
            if requests.get(f"{server.url}/docs", timeout=2).status_code < 500:
                return server
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"local worker did not answer in {timeout_s:g} s (log: {log_path})")


def stop_local_worker(server: LocalWorker) -> str:
    """Stop the server and return its log (tests check it carries no patient data)."""
    server.process.terminate()
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
    return server.log()
