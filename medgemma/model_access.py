"""Turning a loader's failure to get the weights into one sentence that says the fix.

The Hugging Face loaders raise long, nested errors (an ``OSError`` wrapping a hub error
wrapping a connection error). A start-up failure must reach the caller of every job as
one line, so the chain is walked for the cause that matters and that cause named, with
what to do about it. No heavy imports: both engines and the tests use it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from huggingface_hub import errors as hub_errors

from medgemma.errors import ModelAccessError, SettingsError
from medgemma.sources import ModelSource

GATED_FIX = "accept the model's terms on huggingface.co with the account whose read token is HF_TOKEN"


@contextmanager
def model_access_errors(source: ModelSource, subject: str | None = None) -> Iterator[None]:
    """Re-raise the weights' loading failures as ModelAccessError; other errors pass through.

    ``subject`` names the weights in the message (default: ``MODEL_ID <location>``).
    """
    try:
        yield
    except (SettingsError, ModelAccessError):
        raise
    except Exception as error:
        reason = describe_access_failure(error, source, subject)
        if reason is None:
            raise
        raise ModelAccessError(reason) from error


def describe_access_failure(error: BaseException, source: ModelSource, subject: str | None = None) -> str | None:
    """One sentence for a failure to get ``source``'s files, or None if it is something else."""
    name = source.location
    subject = subject or f"MODEL_ID {name}"
    causes = list(_chain(error))
    token = bool(os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN"))
    if any(isinstance(cause, hub_errors.GatedRepoError) for cause in causes):
        if not token:
            return f"{subject} is a gated model and no HF_TOKEN is set: {GATED_FIX}, and set HF_TOKEN"
        return f"{subject} is a gated model and HF_TOKEN has no access to it: {GATED_FIX}"
    if any(isinstance(cause, hub_errors.RepositoryNotFoundError) for cause in causes):
        hint = "check the id" if token else "check the id, or set HF_TOKEN if it is private"
        return f"{subject} was not found on the Hugging Face hub: {hint}"
    if any(isinstance(cause, hub_errors.RevisionNotFoundError) for cause in causes):
        return f"{subject}: the requested revision does not exist on the hub"
    if any(isinstance(cause, hub_errors.LocalEntryNotFoundError) for cause in causes):
        if any(isinstance(cause, ConnectionError) or "ConnectError" in type(cause).__name__ for cause in causes):
            return (
                f"cannot reach the Hugging Face hub to download {name}, and no copy is cached: check the "
                "network, or bake the weights into the image (PRELOAD_MODEL=true) or attach a volume that holds them"
            )
        return (
            f"no copy of {name} is cached and downloads are off (HF_HUB_OFFLINE=1 or a local-only source): "
            "bake the weights into the image (PRELOAD_MODEL=true), attach the volume that holds them, "
            "or unset HF_HUB_OFFLINE"
        )
    if source.local_only and isinstance(error, OSError) and os.path.isdir(name):
        return f"{subject} is a directory without a loadable checkpoint ({type(error).__name__}); point it at one"
    return None


def _chain(error: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__
