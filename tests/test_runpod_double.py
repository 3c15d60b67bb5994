"""The RunPod double's fake worker: the worker's own validation, and never a network fetch."""

from __future__ import annotations

import base64
import socket

import pytest

from medgemma import image_fetch
from medgemma.errors import InputError
from medgemma.request import parse_job_input
from tests.double_worker import TINY_PNG, FakeWorker, document_text, fake_answer

PUBLIC_URL = "https://images.example.org/chest-xray.png"
LOOPBACK_URL = "https://127.0.0.1:9/scan.png"


@pytest.fixture
def worker():
    return FakeWorker()


@pytest.mark.parametrize(
    "job_input",
    [
        {"text": "note", "bogus": 1},
        {"text": "note", "mode": "translate"},
        {"text": "note", "messages": [{"role": "user", "content": "q"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
        {"text": "note", "format": "xml"},
        {"text": "note", "adapter": "cardiology"},
        {"text": "note", "image": base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16).decode()},
        {"text": "note", "image": "http://images.example.org/scan.png"},
    ],
)
def test_a_bad_input_gets_the_workers_own_error(worker, job_input):
    with pytest.raises(InputError) as caught:
        parse_job_input(job_input, worker.settings, vision=True, adapters=worker.adapters)

    assert worker.run(job_input, 0.05) == {"error": str(caught.value)}


@pytest.mark.parametrize(
    "job_input",
    [
        {"text": "note", "stop": ["\n\n"]},
        {"messages": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "note"}]},
        {"text": "note", "max_tokens": 64, "custom_prompt": "Summarize."},
        {"text": "note", "images": [PUBLIC_URL, base64.b64encode(TINY_PNG).decode()]},
    ],
    ids=["stop", "developer", "aliases", "images"],
)
def test_what_the_worker_takes_gets_the_fake_answer(worker, job_input):
    assert worker.run(job_input, 0.05)["output"] == fake_answer(document_text(job_input))


def test_image_urls_are_never_fetched(worker, monkeypatch):
    looked_up = []
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        looked_up.append(host)
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(*args, **kwargs):
        raise AssertionError("the double connected to an image server")

    monkeypatch.setattr(image_fetch.socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(image_fetch, "_connect", connect)
    turn = {
        "role": "user",
        "content": [{"type": "image_url", "image_url": {"url": PUBLIC_URL}}, {"type": "text", "text": "q"}],
    }

    assert "error" not in worker.run({"text": "note", "image": PUBLIC_URL}, 0.05)
    assert "error" not in worker.run({"messages": [turn]}, 0.05)
    refused = worker.run({"text": "note", "image": LOOPBACK_URL}, 0.05)
    assert "loopback" in refused["error"], refused  # as the deployed worker refuses it, before connecting
    assert set(looked_up) <= {"127.0.0.1"}
