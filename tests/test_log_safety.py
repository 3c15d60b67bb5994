"""No string a caller sends reaches a log line: no field's value, no unknown key, no job id.

A marker goes through every input field and every error path, native and OpenAI, on both
engines with every logger at DEBUG, and through a real ``handler.py --rp_serve_api`` whose
log holds the runpod SDK's own lines at the level the image sets. A key carrying a newline
and a forged log line starts no line, and a megabyte ``mode`` is logged by its size. The
replies may name what was sent, cut and escaped (``medgemma.errors.shown``).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import replace

import pytest
import requests

import handler
from medgemma.errors import INPUT, SHOWN_CHARS, FieldPath, InputError, described, logged_id, shown
from medgemma.worker import Worker
from tests.conftest import REPO, LocalWorker, run, start_local_worker, stop_local_worker
from tests.test_image_fetch import Server, serve

MARKER = "Zq8-LEAKED-MARKER"
#: A job id as note text would make one: with spaces, so not an id's form.
NOTE_ID = f"{MARKER} Jane Roe"
#: A key that would forge a log line if it were logged as it is.
FORGED = f"\n2026-01-01 00:00:00,000 INFO medgemma.worker: job {MARKER} done"
MEGABYTE_MODE = MARKER * (1_000_000 // len(MARKER))
#: The longest log line a refused job may cause (the known fields and keywords it lists included).
MAX_LOGGED_LINE = 600


def user(content: object) -> dict:
    return {"role": "user", "content": content}


def schema(required: tuple[str, ...] = (), **properties: object) -> dict:
    return {"type": "object", "properties": properties, "required": list(required)}


def native_errors(image_url: str) -> dict[str, dict]:
    """Every way a native job quotes the caller's strings in its error, the marker in each."""
    return {
        "mode": {"text": "q", "mode": MARKER},
        "format": {"text": "q", "format": MARKER},
        "unknown field": {"text": "q", MARKER: 1},
        "forged field": {"text": "q", FORGED: 1},
        "megabyte mode": {"text": "q", "mode": MEGABYTE_MODE},
        "adapter": {"text": "q", "adapter": MARKER},
        "message key": {"messages": [{"role": "user", "content": "q", MARKER: 1}]},
        "role": {"messages": [{"role": MARKER, "content": "q"}]},
        "part type": {"messages": [user([{"type": MARKER}])]},
        "part key": {"messages": [user([{"type": "text", "text": "q", MARKER: 1}])]},
        "image_url key": {"messages": [user([{"type": "image_url", "image_url": {"url": image_url, MARKER: 1}}])]},
        "parts over the limit": {"messages": [user([{"type": "text", "text": MARKER}] * 65)]},
        "schema keyword": {"text": "q", "json_schema": schema(**{MARKER: {MARKER: 1}})},
        "schema refused keyword": {"text": "q", "json_schema": schema(**{MARKER: {"uniqueItems": True}})},
        "schema NaN": {"text": "q", "json_schema": schema(**{MARKER: {"type": "number", "minimum": float("nan")}})},
        "schema enum": {"text": "q", "json_schema": schema(**{MARKER: {"enum": [MARKER, float("inf")]}})},
        "schema $ref": {"text": "q", "json_schema": schema(a={"$ref": f"#/$defs/{MARKER}"})},
        "schema $ref beside": {"text": "q", "json_schema": {**schema(a={"$ref": "#/$defs/d", MARKER: 1}), "$defs": {}}},
        "schema required": {"text": "q", "json_schema": schema((MARKER,), a={"type": "string"})},
        "stop with json": {"text": MARKER, "stop": [MARKER], "format": "json"},
        "image": {"text": "q", "image": MARKER},
        "image URL answers 404": {"text": "q", "image": image_url.replace("/ok.png", f"/missing-{MARKER}")},
        "image URL credentials": {"text": "q", "image": f"https://{MARKER}:{MARKER}@images.invalid/x.png"},
    }


def native_answers(image_url: str) -> dict[str, dict]:
    """Jobs that answer, the marker in every field that holds text."""
    return {
        "text job": {
            "text": MARKER,
            "system_prompt": MARKER,
            "stop": [MARKER],
            "image": image_url,
            "max_new_tokens": 2,
        },
        "messages job": {
            "messages": [
                {"role": "system", "content": MARKER},
                user([{"type": "text", "text": MARKER}, {"type": "image_url", "image_url": {"url": image_url}}]),
                {"role": "assistant", "content": [{"type": "text", "text": MARKER}]},
                user(MARKER),
            ],
            "json_schema": schema((MARKER,), **{MARKER: {"type": "string", "maxLength": 3}}),
            "max_new_tokens": 4,
        },
    }


def openai(**body: object) -> dict:
    return {"openai_route": "/v1/chat/completions", "openai_input": {"messages": [user("q")], **body}}


def openai_errors() -> dict[str, dict]:
    json_schema = {"name": "a", "schema": schema(**{MARKER: {"type": "number", "maximum": float("inf")}})}
    return {
        "model": openai(model=MARKER),
        "unknown parameter": openai(**{MARKER: 1}),
        "forged parameter": openai(**{FORGED: 1}),
        "response_format.type": openai(response_format={"type": MARKER}),
        "response_format key": openai(response_format={"type": "json_object", MARKER: 1}),
        "json_schema key": openai(response_format={"type": "json_schema", "json_schema": {**json_schema, MARKER: 1}}),
        "schema bound": openai(response_format={"type": "json_schema", "json_schema": json_schema}),
        "stream_options key": openai(stream=True, stream_options={MARKER: True}),
        "role": openai(messages=[{"role": MARKER, "content": "q"}]),
        "route": {"openai_route": f"/v1/{MARKER}", "openai_input": {}},
        "model route": {"openai_route": f"/v1/models/{MARKER}"},
    }


def openai_answers() -> dict[str, dict]:
    named = {"name": MARKER, "schema": schema((MARKER,), **{MARKER: {"type": "string", "maxLength": 3}})}
    return {
        "messages and stop": openai(messages=[{"role": "system", "content": MARKER}, user(MARKER)], stop=[MARKER]),
        "schema": openai(messages=[user(MARKER)], response_format={"type": "json_schema", "json_schema": named}),
    }


#: The worker's log lines (the root format's, or caplog's) and the runpod SDK's.
OWN_LINE = re.compile(r"^(\S+ \S+ \w+ medgemma\.|\w+ +medgemma\.|(DEBUG|INFO|WARN|ERROR) +\| )")


def assert_clean(log: str) -> None:
    """No marker in any line, no line a caller started, none of the worker's or SDK's longer than a refusal needs."""
    assert MARKER not in log, [line[:300] for line in log.splitlines() if MARKER in line][:3]
    assert "2026-01-01" not in log
    long = [line[:200] for line in log.splitlines() if OWN_LINE.match(line) and len(line) > MAX_LOGGED_LINE]
    assert not long, long


@pytest.fixture(scope="module")
def image_server() -> Iterator[Server]:
    yield from serve(None)


@pytest.fixture
def image_url(image_server: Server) -> str:
    """A URL that answers with an image, the marker in its query."""
    return image_server.url(f"/ok.png?note={MARKER}", host="127.0.0.1")


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every record of this process at DEBUG and up, from loggers that don't propagate (vLLM's) as well."""
    caplog.set_level(logging.DEBUG)
    apart = [
        logger
        for logger in logging.root.manager.loggerDict.values()
        if isinstance(logger, logging.Logger) and not logger.propagate
    ]
    for logger in apart:
        logger.addHandler(caplog.handler)
    yield caplog
    for logger in apart:
        logger.removeHandler(caplog.handler)


def formatted(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(caplog.handler.format(record) for record in caplog.records)


# -- the helpers ------------------------------------------------------------------------


def test_a_reply_quotes_a_caller_string_cut_and_escaped_and_the_log_gives_its_size() -> None:
    assert shown("a\nb\x1b") == r"'a\nb\x1b'" and shown("x" * 100) == repr("x" * SHOWN_CHARS) + "..."
    assert shown(12) == "12" and shown(["q"]) == "list" and shown(None) == "None"
    assert described(MARKER) == f"<{len(MARKER)} characters>" and described([1, 2]) == "<list of 2>"
    path = FieldPath.known("json_schema/properties").named(FORGED, "property", "/").then("/minimum")
    error = InputError("json_schema", "{path} must be a finite number, got {got}", path=path, got=MARKER)
    assert "\n" not in str(error) and MARKER in str(error)  # cut to SHOWN_CHARS, the marker's start survives
    assert error.logged == (
        f"json_schema: json_schema/properties/<property, {len(FORGED)} characters>/minimum must be a finite number, "
        f"got <{len(MARKER)} characters>"
    )
    plain = InputError(INPUT.named("colour", "unknown field"), "is not a known field")
    assert (str(plain), plain.logged) == (
        "colour: is not a known field",
        "input.<unknown field, 6 characters>: is not a known field",
    )


def test_a_job_id_is_logged_only_in_an_ids_form() -> None:
    assert logged_id("sync-0c4d7f1e-2a3b-4c5d-8e9f-0a1b2c3d4e5f-u1") == "sync-0c4d7f1e-2a3b-4c5d-8e9f-0a1b2c3d4e5f-u1"
    assert logged_id(NOTE_ID) == f"<job id of {len(NOTE_ID)} characters>"
    assert logged_id(FORGED) == f"<job id of {len(FORGED)} characters>" and logged_id("x" * 101).startswith("<")


def test_an_input_error_is_logged_without_the_callers_strings(settings) -> None:
    from medgemma.request import parse_job_input

    for name, data in native_errors("https://127.0.0.1/ok.png").items():
        if name.startswith("image URL") or name == "image":
            continue  # fetched or decoded: the job tests below
        with pytest.raises(InputError) as caught:
            parse_job_input(data, settings)
        assert MARKER not in caught.value.logged and "\n" not in caught.value.logged, name
        assert len(caught.value.logged) <= MAX_LOGGED_LINE and len(str(caught.value)) <= MAX_LOGGED_LINE, name
        assert "\n" not in str(caught.value), name


# -- on both engines, and through the SDK --------------------------------------------------


@pytest.mark.model
def test_no_caller_string_reaches_the_log_on_either_engine(vision_worker, image_url, all_logs, monkeypatch) -> None:
    fetching = Worker(
        replace(
            vision_worker.settings,
            image_url_allow_http=True,
            image_url_allow_addresses=(ipaddress.ip_network("127.0.0.1/32"),),
        ),
        vision_worker.engine,
    )
    monkeypatch.setattr(handler, "WORKER", fetching)
    for jobs, fails in (
        (native_errors(image_url), True),
        (native_answers(image_url), False),
        (openai_errors(), True),
        (openai_answers(), False),
    ):
        for name, data in jobs.items():
            for job_id in (NOTE_ID, FORGED):
                result = run(handler.handler({"id": job_id, "input": data}))
                assert ("error" in result) is fails, (name, result)
                if fails:
                    error = result["error"] if isinstance(result["error"], dict) else {"message": result["error"]}
                    reply = error["message"] + str(error.get("param"))
                    assert "\n" not in reply and len(reply) <= MAX_LOGGED_LINE, (name, reply[:200])
    logged = formatted(all_logs)
    assert "failed (input error)" in logged and " done: " in logged
    assert_clean(logged)


def sdk_log_level() -> str:
    """RUNPOD_LOG_LEVEL as the image sets it (handler.py's default is the same)."""
    found = re.search(r"RUNPOD_LOG_LEVEL=(\w+)", (REPO / "Dockerfile").read_text())
    assert found and found.group(1) == handler.SDK_LOG_LEVEL
    return found.group(1)


@pytest.fixture(scope="module")
def sdk_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalWorker]:
    """``handler.py --rp_serve_api`` at LOG_LEVEL=DEBUG, the SDK at the image's level, image URLs to 127.0.0.1 allowed."""
    server = start_local_worker(
        tmp_path_factory.mktemp("sdk-log"),
        {
            "LOG_LEVEL": "DEBUG",
            "RUNPOD_LOG_LEVEL": sdk_log_level(),
            "IMAGE_URL_ALLOW_HTTP": "true",
            "IMAGE_URL_ALLOW_ADDRESSES": "127.0.0.1",
        },
    )
    yield server
    stop_local_worker(server)


def runsync(server: LocalWorker, jobs: dict[str, dict]) -> None:
    """Each job through ``/runsync``, as JSON that may hold NaN (which Python's json, the SDK's too, reads)."""
    for name, data in jobs.items():
        body = json.dumps({"input": data})
        answer = requests.post(
            f"{server.url}/runsync", data=body, headers={"Content-Type": "application/json"}, timeout=600
        )
        assert answer.status_code == 200, (name, answer.text[:300])


@pytest.mark.model
@pytest.mark.slow
def test_the_worker_process_and_the_sdk_log_no_caller_string(sdk_worker, image_url) -> None:
    runsync(sdk_worker, {**native_errors(image_url), **native_answers(image_url)})
    runsync(sdk_worker, openai_answers())
    queued = requests.post(f"{sdk_worker.url}/run", json={"input": {"text": "q", FORGED: 1}}, timeout=60).json()
    status = requests.post(f"{sdk_worker.url}/status/{queued['id']}", timeout=600).json()
    assert status["status"] == "FAILED" and "\n" not in status["error"]
    log = sdk_worker.log()
    assert "Started." in log and "failed (input error)" in log and " done: " in log  # the SDK's lines and the worker's
    assert_clean(log)


@pytest.mark.model
@pytest.mark.slow
def test_an_openai_error_through_the_local_api_logs_no_caller_string(sdk_worker) -> None:
    runsync(sdk_worker, {"model": openai(model=MARKER)})
    assert_clean(sdk_worker.log())
