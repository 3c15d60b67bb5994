"""Which weights answered: a revision for the base model and for each adapter, found once at start-up.

A clinical deployment must be able to say which weights produced an answer, so every answer
carries the base model's and the adapter's revision:

- a hub id, or a directory inside a Hugging Face cache snapshot (``.../snapshots/<commit>/``):
  the hub commit hash (the cache's files are stored by content, so the commit names them);
- any other directory: ``sha256:<hex>``, a hash of every file's path and bytes, when all its
  files are at most ``FULL_HASH_BYTES``; otherwise ``fingerprint:<hex>``, in which each larger
  file (the weights) counts by its size, modification time and first MiB. Hashing MedGemma's
  8.6 GB in full would add ~8 s to every cold start (~1 GB/s, measured on the stand-in); a
  fingerprint costs milliseconds and changes whenever a file is rewritten.

Nothing heavy is imported: ``huggingface_hub`` only reads its cache.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection
from pathlib import Path

from medgemma.sources import ModelSource

#: Files up to this size are hashed in full (configs, tokenizers, adapters); larger ones are fingerprinted.
FULL_HASH_BYTES = 256 * 2**20
FINGERPRINT_HEAD_BYTES = 2**20
_SNAPSHOT = re.compile(r"[0-9a-f]{40}")


def revision(source: ModelSource, files: Collection[str] | None = None, probe_file: str = "config.json") -> str:
    """The revision of ``source``'s weights: a hub commit, or a hash of its directory (of ``files`` in it)."""
    path = Path(source.location)
    if path.is_dir():
        return snapshot_commit(path) or directory_hash(path, files)
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(source.location, probe_file, cache_dir=source.cache_dir)
    commit = snapshot_commit(Path(cached).parent) if isinstance(cached, str) else None
    return commit or "unknown (not in the local hub cache)"


def snapshot_commit(path: Path) -> str | None:
    """The commit of a hub cache snapshot directory (``models--org--name/snapshots/<commit>``), else None."""
    if (
        path.parent.name == "snapshots"
        and path.parent.parent.name.startswith("models--")
        and _SNAPSHOT.fullmatch(path.name)
    ):
        return path.name
    return None


def directory_hash(path: Path, only: Collection[str] | None = None) -> str:
    """``sha256:`` over every file's relative path and content, or ``fingerprint:`` if big files were sampled.

    ``only``: the names of the files that count (an adapter's two files, not a training run's
    checkpoints beside them). Hidden files (a build's completion marker, a download's
    ``.cache``) are left out.
    """
    digest = hashlib.sha256()
    sampled = False
    for file in sorted(path.rglob("*")):
        relative = file.relative_to(path)
        if any(part.startswith(".") for part in relative.parts) or not file.is_file():
            continue
        if only is not None and relative.as_posix() not in only:
            continue
        stat = file.stat()
        digest.update(f"{relative.as_posix()}\0{stat.st_size}\0".encode())
        with open(file, "rb") as handle:
            if stat.st_size <= FULL_HASH_BYTES:
                digest.update(hashlib.file_digest(handle, "sha256").digest())
            else:
                sampled = True
                digest.update(f"{stat.st_mtime_ns}\0".encode() + handle.read(FINGERPRINT_HEAD_BYTES))
    return f"{'fingerprint' if sampled else 'sha256'}:{digest.hexdigest()}"
