"""Batch summarisation: every ``<source>/**/*.md`` becomes ``<out>/<same path>.md``
(or ``.json`` with ``output_format="json"``: the built-in clinical summary object).

Resumable by construction: a document whose summary exists is skipped, and
summaries are written atomically, so a batch killed at any moment can simply
be started again. One failing document never stops the others (only an
authentication failure, which would fail them all, does).

Worker threads are daemons so that Ctrl-C returns at once (after cancelling
the jobs in flight) instead of waiting for polls to finish.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from .constants import BATCH_CONCURRENCY
from .errors import APIError, AuthenticationError, MedGemmaClientError
from .inputs import InputOptions
from .jobs import Job
from .medgemma_client import MedGemmaClient
from .summary_files import remove_stale_temp_files, render_json_summary, render_summary, write_atomic

log = logging.getLogger(__name__)

FORMATS = ("text", "json")  # what a summary file holds: Markdown prose, or the JSON object
SUFFIXES = {"text": ".md", "json": ".json"}


@dataclass(frozen=True)
class Document:
    """One source file; ``id`` (its relative path) is the only name used in messages."""

    id: str
    source: Path
    output: Path


@dataclass(frozen=True)
class BatchOptions:
    concurrency: int = BATCH_CONCURRENCY
    overwrite: bool = False
    use_async: bool = False
    output_format: str = "text"  # one of FORMATS; "json" asks for format="json" unless given a json_schema
    input_options: InputOptions = field(default_factory=InputOptions)


@dataclass
class BatchReport:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    not_finished: int = 0
    possible_duplicates: int = 0
    interrupted: bool = False
    aborted: str | None = None

    def counts_line(self) -> str:
        parts = [f"{len(self.done)} done", f"{len(self.skipped)} skipped", f"{len(self.failed)} failed"]
        if self.not_finished:
            parts.append(f"{self.not_finished} not finished")
        if self.possible_duplicates:
            parts.append(f"{self.possible_duplicates} possibly duplicated submissions")
        return ", ".join(parts)


def find_documents(source_dir: Path, out_dir: Path, suffix: str = ".md") -> list[Document]:
    """All ``*.md`` under ``source_dir`` (sorted), ignoring anything inside ``out_dir``;
    each one's summary is the same relative path under ``out_dir``, with ``suffix``."""
    source_root, out_root = source_dir.resolve(), out_dir.resolve()
    documents = []
    for source in sorted(source_root.rglob("*.md")):
        if not source.is_file() or source.is_relative_to(out_root):
            continue
        relative = source.relative_to(source_root)
        documents.append(Document(relative.as_posix(), source, out_root / relative.with_suffix(suffix)))
    return documents


class BatchRun:
    """One batch invocation; pass ``note_possible_duplicate`` to the client as
    ``on_uncertain_submission`` so lost submissions are re-sent and counted."""

    def __init__(
        self,
        source_dir: Path,
        out_dir: Path,
        options: BatchOptions = BatchOptions(),
        *,
        stderr: TextIO | None = None,
    ) -> None:
        self.source_dir = source_dir
        self.out_dir = out_dir
        self.options = options
        self.report = BatchReport()
        self._stderr = stderr or sys.stderr
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._in_flight: set[Job] = set()
        self._submitting = 0  # submissions whose answer (and so job id) has not arrived

    def note_possible_duplicate(self, label: str | None, error: APIError) -> None:
        with self._lock:
            self.report.possible_duplicates += 1
        self._say(
            f"warning: {label}: answer to the submission was lost ({error}); "
            "re-submitting, so this document may be processed twice"
        )

    def run(self, client: MedGemmaClient) -> BatchReport:
        """Process the batch; Ctrl-C cancels running jobs and returns an ``interrupted`` report."""
        stale = remove_stale_temp_files(self.out_dir)
        if stale:
            log.info("removed %d temp files left by an interrupted run", stale)
        todo = []
        for document in find_documents(self.source_dir, self.out_dir, SUFFIXES[self.options.output_format]):
            if document.output.exists() and not self.options.overwrite:
                self.report.skipped.append(document.id)
            else:
                todo.append(document)
        try:
            self._process_all(client, todo)
        except KeyboardInterrupt:
            self._stop.set()
            self.report.interrupted = True
            self._say(self._cancel_in_flight())
        self._finish(len(todo))
        return self.report

    # ------------------------------------------------------------------ internals

    def _process_all(self, client: MedGemmaClient, todo: list[Document]) -> None:
        pending: queue.Queue[Document] = queue.Queue()
        for document in todo:
            pending.put(document)
        outcomes: queue.Queue[tuple[Document, str | None] | None] = queue.Queue()
        workers = min(self.options.concurrency, len(todo))
        for number in range(workers):
            threading.Thread(
                target=self._worker,
                args=(client, pending, outcomes),
                name=f"batch-{number}",
                daemon=True,
            ).start()
        with tqdm(total=len(todo), unit="doc", file=self._stderr, disable=None) as progress:
            finished_workers = 0
            while finished_workers < workers:
                outcome = outcomes.get()
                if outcome is None:
                    finished_workers += 1
                    continue
                document, failure = outcome
                with self._lock:
                    if failure is None:
                        self.report.done.append(document.id)
                    else:
                        self.report.failed[document.id] = failure
                if failure is not None:
                    self._say(f"failed: {document.id}: {failure}")
                progress.update()

    def _worker(
        self,
        client: MedGemmaClient,
        pending: queue.Queue[Document],
        outcomes: queue.Queue[tuple[Document, str | None] | None],
    ) -> None:
        try:
            while not self._stop.is_set():
                try:
                    document = pending.get_nowait()
                except queue.Empty:
                    return
                outcomes.put((document, self._process(client, document)))
        finally:
            outcomes.put(None)

    def _process(self, client: MedGemmaClient, document: Document) -> str | None:
        """Summarise one document; return why it failed, or None."""
        try:
            text = document.source.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            return "not valid UTF-8 text"
        except OSError as exc:
            return f"cannot read it: {exc.strerror or exc}"
        if not text.strip():
            return "empty file, nothing to summarise (not sent)"
        options = self.options.input_options
        if self.options.output_format == "json" and not {"format", "json_schema"} & options.keys():
            options = {**options, "format": "json"}
        try:
            with self._lock:
                self._submitting += 1
            try:
                job = client.run(text, sync=not self.options.use_async, label=document.id, **options)
            finally:
                with self._lock:
                    self._submitting -= 1
            with self._lock:
                self._in_flight.add(job)
            try:
                result = job.wait(cancel_on_timeout=True)
            finally:
                with self._lock:
                    self._in_flight.discard(job)
            if self.options.output_format == "json":
                write_atomic(document.output, render_json_summary(result, document.id))
            else:
                write_atomic(document.output, render_summary(result, document.id))
        except AuthenticationError as exc:
            self._abort(str(exc))
            return str(exc)
        except MedGemmaClientError as exc:
            return str(exc)
        except OSError as exc:
            return f"cannot write the summary: {exc.strerror or exc}"
        except Exception as exc:  # a bug must not sink the rest of the batch
            log.debug("unexpected error on %s", document.id, exc_info=True)
            return f"internal error: {type(exc).__name__}"
        return None

    def _abort(self, reason: str) -> None:
        with self._lock:
            if self.report.aborted is None:
                self.report.aborted = reason
        self._stop.set()

    def _cancel_in_flight(self) -> str:
        """Cancel the running jobs; return what the user needs to know about it."""
        with self._lock:
            jobs, submitting = list(self._in_flight), self._submitting
        cancelled = 0
        for job in jobs:
            try:
                cancelled += job.cancel()
            except MedGemmaClientError as exc:
                self._say(f"could not cancel job {job.id} ({job.label}): {exc}")
        message = f"interrupted: cancelled {cancelled} running job(s)"
        if submitting:
            message += (
                f"; {submitting} submission(s) had no job id yet and may still run"
                " (use --async to make every job cancellable)"
            )
        return message + "; finished summaries are kept, run again to resume"

    def _finish(self, attempted: int) -> None:
        with self._lock:
            report = self.report
            report.not_finished = attempted - len(report.done) - len(report.failed)
            if report.aborted:
                self._say(f"aborted: {report.aborted}")
            if report.failed:
                self._say("failed files: " + ", ".join(sorted(report.failed)))
            self._say(report.counts_line())

    def _say(self, message: str) -> None:
        tqdm.write(message, file=self._stderr)
