"""Summary files on disk: their header, and crash-safe writing.

A Markdown summary is YAML front matter (provenance, token counts) and the answer; a JSON
summary is one object with the same provenance fields and the answer's object as ``summary``.

A summary only ever appears under its final name complete: it is written to a
hidden temp file in the same directory, fsynced, then renamed over the target.
Temp files carry ``TEMP_SUFFIX`` (never ``.md`` or ``.json``) so they are never mistaken for
outputs; ones left by a killed run are removed when the next batch starts.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .results import JobResult

TEMP_SUFFIX = ".medgemma-tmp"


def summary_header(result: JobResult, source: str, *, now: datetime | None = None) -> dict[str, Any]:
    """Where a summary came from: the source, the weights (model, adapter, what the worker
    reports of their revisions), the job, and its token counts."""
    header: dict[str, Any] = {
        "source": source,
        "model": result.model,
        "adapter": result.adapter,
        "mode": result.mode,
        "date": (now or datetime.now(UTC)).isoformat(timespec="seconds"),
        "job_id": result.job_id,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "finish_reason": result.finish_reason,
    }
    if result.provenance:
        header["provenance"] = result.provenance
    return header


def render_summary(result: JobResult, source: str, *, now: datetime | None = None) -> str:
    """YAML front matter (``summary_header``) followed by the answer text."""
    # JSON values are valid YAML (scalars, and objects as flow mappings), so they need no
    # hand-made quoting rules.
    header = summary_header(result, source, now=now)
    lines = [f"{key}: {json.dumps(value, ensure_ascii=False)}" for key, value in header.items()]
    return "---\n" + "\n".join(lines) + "\n---\n\n" + result.text.strip() + "\n"


def render_json_summary(result: JobResult, source: str, *, now: datetime | None = None) -> str:
    """``summary_header`` and the answer's object as ``summary``; raises if the object was cut off."""
    document = {**summary_header(result, source, now=now), "summary": result.json_object()}
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
    _fsync_directory(path.parent)


def remove_stale_temp_files(root: Path) -> int:
    """Delete temp files a killed run left under ``root``; return how many."""
    if not root.is_dir():
        return 0
    removed = 0
    for stale in root.rglob(f".*{TEMP_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
            removed += 1
    return removed


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
