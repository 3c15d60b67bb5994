"""Batch mode: outputs, resumption, failures, fault injection and kill-and-resume."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from client_fixtures import REPO_ROOT, all_files, cli_command, cli_env, counts_line, read_summary, run_cli, write_notes
from runpod_double import MODEL, fake_answer, text_key

from client.batch import BatchOptions, BatchRun
from client.cli import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from client.summary_files import TEMP_SUFFIX

pytestmark = pytest.mark.timeout(60)


def test_batch_writes_each_summary_with_a_header_then_skips_them(double, tmp_path):
    notes = write_notes(tmp_path / "raw", 5)
    out = tmp_path / "summaries"

    first = run_cli("--batch", "raw", "--out", "summaries", env=cli_env(double), cwd=tmp_path)

    assert first.returncode == EXIT_OK, first.stderr
    assert counts_line(first.stderr) == "5 done, 0 skipped, 0 failed"
    assert first.stdout == ""
    assert all_files(out) == set(notes)
    header, body = read_summary(out / "ward-1/note001.md")
    assert body == fake_answer(notes["ward-1/note001.md"])
    assert header["source"] == "ward-1/note001.md"
    assert header["model"] == MODEL
    assert header["prompt_tokens"] > 0 and header["completion_tokens"] > 0
    assert header["date"]

    before = {name: (out / name).stat().st_mtime_ns for name in notes}
    second = run_cli("--batch", "raw", "--out", "summaries", env=cli_env(double), cwd=tmp_path)

    assert second.returncode == EXIT_OK, second.stderr
    assert counts_line(second.stderr) == "0 done, 5 skipped, 0 failed"
    assert {name: (out / name).stat().st_mtime_ns for name in notes} == before
    assert sum(double.queued.values()) == 5


def test_overwrite_redoes_existing_summaries(double, tmp_path):
    write_notes(tmp_path / "raw", 2)
    env = cli_env(double)
    run_cli("--batch", "raw", env=env, cwd=tmp_path)

    again = run_cli("--batch", "raw", "--overwrite", "--async", env=env, cwd=tmp_path)

    assert counts_line(again.stderr) == "2 done, 0 skipped, 0 failed"
    assert sum(double.queued.values()) == 4


def test_failures_are_named_and_do_not_stop_the_batch(double, tmp_path):
    notes = write_notes(tmp_path / "raw", 4)
    (tmp_path / "raw" / "empty.md").write_text("  \n", encoding="utf-8")
    double.fail_text(notes["note002.md"], "Field 'text' is too long for the context window.")

    done = run_cli("--batch", "raw", env=cli_env(double), cwd=tmp_path)

    assert done.returncode == EXIT_FAILURE
    assert counts_line(done.stderr) == "3 done, 0 skipped, 2 failed"
    assert "failed: empty.md: empty file" in done.stderr
    assert "failed: note002.md: job " in done.stderr and "too long for the context window" in done.stderr
    assert "failed files: empty.md, note002.md" in done.stderr
    assert all_files(tmp_path / "summaries") == set(notes) - {"note002.md"}
    assert text_key("  \n") not in double.queued, "empty files are never sent"


def test_rejected_key_aborts_the_batch(double, tmp_path):
    write_notes(tmp_path / "raw", 6)

    done = run_cli("--batch", "raw", "--concurrency", "1", env=cli_env(double, RUNPOD_API_KEY="wrong"), cwd=tmp_path)

    assert done.returncode == EXIT_USAGE
    assert "aborted: HTTP 401" in done.stderr
    assert counts_line(done.stderr).endswith("5 not finished")
    assert double.count_requests("runsync") == 1


def test_ctrl_c_cancels_running_jobs_and_exits_130(start_double, tmp_path, interruptible_children):
    server = start_double(execution_s=30.0)
    write_notes(tmp_path / "raw", 5)
    process = subprocess.Popen(
        cli_command("--batch", "raw", "--concurrency", "3", "--async"),
        env=cli_env(server),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 10
    while len(server.jobs) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)

    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=15)

    assert process.returncode == EXIT_INTERRUPTED
    assert "interrupted: cancelled 3 running job(s)" in stderr
    assert counts_line(stderr) == "0 done, 0 skipped, 0 failed, 5 not finished"
    assert sorted(job.status for job in server.jobs.values()) == ["CANCELLED"] * 3


def test_out_dir_must_differ_from_the_source(double, tmp_path):
    write_notes(tmp_path / "raw", 1)

    done = run_cli("--batch", "raw", "--out", "raw", env=cli_env(double), cwd=tmp_path)

    assert done.returncode == EXIT_USAGE


def test_stale_temp_files_are_removed_and_never_count_as_outputs(double, make_client, tmp_path, capsys):
    write_notes(tmp_path / "raw", 2)
    out = tmp_path / "summaries"
    out.mkdir()
    stale = out / f".note000.md.abc123{TEMP_SUFFIX}"
    stale.write_text("half a summ")

    report = BatchRun(tmp_path / "raw", out).run(make_client())

    assert not stale.exists()
    assert sorted(report.done) == ["note000.md", "ward-1/note001.md"]
    assert all_files(out) == {"note000.md", "ward-1/note001.md"}


@pytest.mark.slow
@pytest.mark.parametrize("use_async", [False, True], ids=["runsync", "run"])
def test_batch_survives_injected_faults_without_losing_anything(start_double, make_client, tmp_path, capsys, use_async):
    server = start_double(execution_s=0.02, queue_s=0.01)
    server.random_faults(0.3, seed=7, max_consecutive=2)
    notes = write_notes(tmp_path / "raw", 60)
    out = tmp_path / "summaries"
    batch = BatchRun(tmp_path / "raw", out, BatchOptions(concurrency=8, use_async=use_async))
    client = make_client(server, on_uncertain_submission=batch.note_possible_duplicate)

    report = batch.run(client)

    assert report.failed == {} and len(report.done) == 60
    assert all_files(out) == set(notes), "every summary written, no temp files left"
    for name, text in notes.items():
        assert read_summary(out / name)[1] == fake_answer(text)

    route = "run" if use_async else "runsync"
    kinds = {kind for _, kind, _ in server.faults}
    assert {"429", "500", "502", "503", "drop_before", "drop_after"} <= kinds
    uncertain = [key for seen, kind, key in server.faults if seen == route and kind != "429"]
    drops_after = [key for seen, kind, key in server.faults if seen == route and kind == "drop_after"]
    assert report.possible_duplicates == len(uncertain) > 0
    for text in notes.values():
        key = text_key(text)
        assert server.queued[key] == 1 + drops_after.count(key)
    stderr = capsys.readouterr().err
    assert stderr.strip().splitlines()[-1] == (
        f"60 done, 0 skipped, 0 failed, {len(uncertain)} possibly duplicated submissions"
    )
    assert stderr.count("may be processed twice") == len(uncertain)
    assert all(text not in stderr for text in notes.values())


@pytest.mark.slow
def test_killed_batch_resumes_without_redoing_finished_documents(start_double, tmp_path):
    server = start_double(execution_s=0.15)
    notes = write_notes(tmp_path / "raw", 16)
    out = tmp_path / "summaries"
    env = cli_env(server)
    command = cli_command("--batch", "raw", "--out", "summaries", "--concurrency", "2")

    first = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while len(list(out.rglob("*.md"))) < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()

    finished = {path.relative_to(out).as_posix(): path.stat() for path in out.rglob("*.md")}
    assert 4 <= len(finished) < len(notes), "the kill must land mid-batch"
    assert set(finished) <= set(notes), "only complete outputs carry the .md name"

    second = run_cli("--batch", "raw", "--out", "summaries", "--concurrency", "2", env=env, cwd=tmp_path)

    assert second.returncode == EXIT_OK, second.stderr
    assert counts_line(second.stderr) == (f"{len(notes) - len(finished)} done, {len(finished)} skipped, 0 failed")
    assert all_files(out) == set(notes), "nothing missing, no temp files left"
    for name, before in finished.items():
        after = (out / name).stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
        assert server.executed[text_key(notes[name])] == 1
    for name, text in notes.items():
        assert read_summary(out / name)[1] == fake_answer(text)


def test_raw_samples_are_synthetic_and_cover_the_brief():
    samples = {path.name: path.read_text(encoding="utf-8") for path in (REPO_ROOT / "raw").glob("*.md")}

    assert {"EP001.md", "FF349.md"} <= set(samples) and 8 <= len(samples) <= 10
    for name, text in samples.items():
        assert "SYNTHETIC" in text.splitlines()[0], f"{name} must say it is synthetic on line 1"
    assert any(2500 <= len(text.split()) <= 3500 for text in samples.values()), "one long document"
