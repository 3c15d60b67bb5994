"""Conversations, images by URL, JSON summaries and adapters: the library and the CLI against the RunPod double.

The worker side of these job fields (``messages``, ``format``/``parsed``, ``adapter`` and the
``provenance`` it reports) is issues 10, 11 and 13; the double answers them as specified there.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from client_fixtures import all_files, cli_env, counts_line, read_summary, run_cli, write_notes
from runpod_double import MODEL, MODEL_REVISION, TINY_PNG, document_text, fake_answer, fake_summary, text_key

from client import IncompleteResultError, InvalidRequestError, JobFailedError, chat_message
from client.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from client.inputs import build_job_input

pytestmark = pytest.mark.timeout(60)

NOTE = "Synthetic note: 63-year-old, COPD exacerbation, improved on nebulisers and prednisolone."
QUESTION = "Which medicines were given?"
SCAN_URL = "https://images.example.org/chest-xray.png"
PNG = TINY_PNG  # a real image: the double decodes images as the worker does


# ---- conversations ------------------------------------------------------------------------


def test_chat_sends_the_conversation_as_messages(client, double):
    conversation = [
        chat_message("system", "Answer in one sentence."),
        chat_message("user", NOTE),
        chat_message("assistant", "Noted."),
        chat_message("user", QUESTION),
    ]

    result = client.chat(conversation, mode="general", max_new_tokens=32)

    (job,) = double.jobs.values()
    assert "text" not in job.job_input
    assert [turn["role"] for turn in job.job_input["messages"]] == ["system", "user", "assistant", "user"]
    assert (job.job_input["mode"], job.job_input["max_new_tokens"]) == ("general", 32)
    assert result.text == fake_answer(document_text(job.job_input))


def test_a_turn_with_images_is_image_url_parts_then_text(tmp_path):
    scan = tmp_path / "scan.png"
    scan.write_bytes(PNG)

    turn = chat_message("user", QUESTION, [scan, SCAN_URL, PNG])

    assert turn["role"] == "user"
    urls = [part["image_url"]["url"] for part in turn["content"][:3]]
    assert urls == [f"data:image/png;base64,{base64.b64encode(PNG).decode()}", SCAN_URL, urls[0]]
    assert turn["content"][3] == {"type": "text", "text": QUESTION}


def test_an_image_of_unknown_type_in_a_turn_is_refused_before_sending():
    with pytest.raises(InvalidRequestError, match="cannot tell the type"):
        chat_message("user", QUESTION, [b"not an image"])


@pytest.mark.parametrize(
    "arguments",
    [{"text": NOTE, "messages": [chat_message("user", NOTE)]}, {"messages": []}, {"messages": [], "images": [PNG]}],
    ids=["text-and-messages", "no-messages", "images-beside-messages"],
)
def test_conversation_mistakes_are_refused_before_sending(arguments):
    with pytest.raises(InvalidRequestError):
        build_job_input(**arguments)


def test_a_bad_conversation_is_the_workers_error(client):
    with pytest.raises(JobFailedError, match="messages: must end with a user message"):
        client.chat([chat_message("user", NOTE), chat_message("assistant", "Noted.")])


def test_cli_chat_sends_each_turn_with_the_conversation_so_far(double, tmp_path):
    done = run_cli(
        "--chat", "--text", NOTE, "--mode", "general", env=cli_env(double), cwd=tmp_path, input=f"{QUESTION}\n\nWhy?\n"
    )

    assert done.returncode == EXIT_OK, done.stderr
    jobs = sorted(double.jobs.values(), key=lambda job: job.created)
    assert [[turn["role"] for turn in job.job_input["messages"]] for job in jobs] == [
        ["user"],
        ["user", "assistant", "user"],
        ["user", "assistant", "user", "assistant", "user"],
    ]
    answers = [fake_answer(document_text(job.job_input)) for job in jobs]
    assert jobs[2].job_input["messages"][1]["content"] == answers[0], "the answers are sent back as assistant turns"
    assert jobs[2].job_input["messages"][4]["content"] == "Why?"
    assert done.stdout == "".join(answer + "\n" for answer in answers)


def test_cli_chat_can_open_on_stdin_with_an_image_and_stream(start_double, tmp_path):
    server = start_double(streaming_worker=True)

    done = run_cli("--chat", "--image", SCAN_URL, "--stream", env=cli_env(server), cwd=tmp_path, input=f"{NOTE}\n")

    assert done.returncode == EXIT_OK, done.stderr
    (job,) = server.jobs.values()
    (turn,) = job.job_input["messages"]
    assert turn["content"] == [{"type": "image_url", "image_url": {"url": SCAN_URL}}, {"type": "text", "text": NOTE}]
    assert done.stdout == fake_answer(NOTE) + "\n"


@pytest.mark.parametrize("extra", [["--batch", "."], ["--health"], ["--json"], ["--format", "json"]])
def test_cli_chat_refuses_what_a_conversation_cannot_do(double, tmp_path, extra):
    done = run_cli("--chat", *extra, env=cli_env(double), cwd=tmp_path, input="")

    assert done.returncode == EXIT_USAGE
    assert double.requests == []


# ---- images by URL ------------------------------------------------------------------------


def test_cli_image_takes_urls_as_is_and_files_as_data_urls(double, tmp_path):
    scan = tmp_path / "scan.png"
    scan.write_bytes(PNG)

    done = run_cli("--text", NOTE, "--image", SCAN_URL, "--image", scan, env=cli_env(double), cwd=tmp_path)

    assert done.returncode == EXIT_OK, done.stderr
    (job,) = double.jobs.values()
    assert job.job_input["images"] == [SCAN_URL, f"data:image/png;base64,{base64.b64encode(PNG).decode()}"]


# ---- JSON summaries -----------------------------------------------------------------------


def test_library_returns_the_parsed_object(client, double):
    result = client.summarize(NOTE, format="json")

    assert result.parsed == fake_summary(NOTE) == result.json_object()
    assert json.loads(result.text) == result.parsed
    assert "Synthetic" not in repr(result)
    assert double.jobs_for(NOTE)[0].job_input["format"] == "json"


def test_a_cut_off_object_is_never_handed_back(client):
    result = client.summarize(NOTE, format="json", max_new_tokens=4)

    assert (result.parsed, result.finish_reason) == (None, "length")
    with pytest.raises(IncompleteResultError, match="incomplete"):
        result.json_object()


@pytest.mark.parametrize("streaming", [False, True], ids=["runsync", "stream"])
def test_cli_format_json_prints_the_object(start_double, tmp_path, streaming):
    server = start_double(streaming_worker=streaming)

    done = run_cli(
        "--text", NOTE, "--format", "json", *(["--stream"] if streaming else []), env=cli_env(server), cwd=tmp_path
    )

    assert done.returncode == EXIT_OK, done.stderr
    assert json.loads(done.stdout) == fake_summary(NOTE)


def test_cli_format_json_cut_off_is_an_error_and_prints_nothing(double, tmp_path):
    done = run_cli("--text", NOTE, "--format", "json", "--max-tokens", "4", env=cli_env(double), cwd=tmp_path)

    assert done.returncode == EXIT_FAILURE
    assert done.stdout == ""
    assert "JSON object is incomplete" in done.stderr and "--max-tokens" in done.stderr


def test_batch_format_json_writes_one_object_per_note_and_resumes(double, tmp_path):
    notes = write_notes(tmp_path / "raw", 3)
    args = ("--batch", "raw", "--out", "summaries", "--format", "json")

    first = run_cli(*args, env=cli_env(double), cwd=tmp_path)

    assert first.returncode == EXIT_OK, first.stderr
    out = tmp_path / "summaries"
    assert all_files(out) == {name.removesuffix(".md") + ".json" for name in notes}
    document = json.loads((out / "ward-1" / "note001.json").read_text(encoding="utf-8"))
    assert document["summary"] == fake_summary(notes["ward-1/note001.md"])
    assert (document["source"], document["model"], document["finish_reason"]) == ("ward-1/note001.md", MODEL, "stop")
    assert document["provenance"]["model_revision"] == MODEL_REVISION
    assert {job.job_input["format"] for job in double.jobs.values()} == {"json"}

    (tmp_path / "raw" / "note003.md").write_text("# Synthetic note 3\n\nNew admission.\n", encoding="utf-8")
    second = run_cli(*args, env=cli_env(double), cwd=tmp_path)

    assert counts_line(second.stderr) == "1 done, 3 skipped, 0 failed"
    assert (out / "note003.json").is_file()


def test_batch_format_json_fails_a_cut_off_note_without_writing_it(double, tmp_path):
    write_notes(tmp_path / "raw", 2)

    done = run_cli("--batch", "raw", "--format", "json", "--max-tokens", "4", env=cli_env(double), cwd=tmp_path)

    assert done.returncode == EXIT_FAILURE
    assert counts_line(done.stderr) == "0 done, 0 skipped, 2 failed"
    assert "JSON object is incomplete" in done.stderr
    assert all_files(tmp_path / "summaries") == set()


# ---- adapters -----------------------------------------------------------------------------


def test_adapter_is_sent_and_its_provenance_returned(client, double):
    result = client.summarize(NOTE, adapter="notes-style")

    assert double.jobs_for(NOTE)[0].job_input["adapter"] == "notes-style"
    assert result.adapter == "notes-style"
    assert result.provenance == {
        "model": MODEL,
        "model_revision": MODEL_REVISION,
        "adapter": "notes-style",
        "adapter_revision": f"sha256:{text_key('notes-style')}",
    }


def test_batch_front_matter_records_the_adapter_and_provenance(double, tmp_path):
    notes = write_notes(tmp_path / "raw", 2)

    done = run_cli("--batch", "raw", "--adapter", "notes-style", env=cli_env(double), cwd=tmp_path)

    assert done.returncode == EXIT_OK, done.stderr
    header, body = read_summary(tmp_path / "summaries" / "note000.md")
    assert body == fake_answer(notes["note000.md"])
    assert header["adapter"] == "notes-style"
    assert header["provenance"]["adapter_revision"] == f"sha256:{text_key('notes-style')}"
    assert header["provenance"]["model_revision"] == MODEL_REVISION


def test_base_model_summaries_say_so(double, tmp_path):
    write_notes(tmp_path / "raw", 1)

    run_cli("--batch", "raw", env=cli_env(double), cwd=tmp_path)

    header, _ = read_summary(tmp_path / "summaries" / "note000.md")
    assert header["adapter"] is None and header["provenance"] == {"model": MODEL, "model_revision": MODEL_REVISION}


def test_cli_unknown_adapter_is_the_workers_error_naming_the_known_ones(double, tmp_path):
    done = run_cli("--text", NOTE, "--adapter", "cardiology", env=cli_env(double), cwd=tmp_path)

    assert done.returncode == EXIT_FAILURE
    assert "unknown adapter 'cardiology'" in done.stderr and "notes-style" in done.stderr


def test_json_result_of_a_single_job_carries_adapter_and_parsed(double, tmp_path):
    note = _write(tmp_path / "EP001.md", NOTE)
    done = run_cli(
        "--file", note, "--json", "--format", "json", "--adapter", "notes-style", env=cli_env(double), cwd=tmp_path
    )

    assert done.returncode == EXIT_OK, done.stderr
    result = json.loads(done.stdout)
    assert result["parsed"] == fake_summary(NOTE) and result["adapter"] == "notes-style"


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path
