"""The worker's error types: each one becomes a one-sentence ``{"error": ...}`` for the caller.

Start-up failures come in two kinds the caller can act on (``SettingsError``: the endpoint's
configuration; ``ModelAccessError``: the weights can't be had) and one that belongs to the
machine (``HostError``: no usable GPU, or a CUDA fault that poisoned the process), which
makes the worker ask RunPod for a fresh one.
"""

from __future__ import annotations

import traceback


class MedGemmaError(Exception):
    """Base class: anything the worker reports to a caller instead of crashing."""


class SettingsError(MedGemmaError):
    """A bad or unservable configuration, found at boot so the worker never starts half-configured."""


class ModelAccessError(MedGemmaError):
    """The weights can't be loaded: gated or missing model, no token, offline without a snapshot."""


class HostError(MedGemmaError):
    """This machine can't serve: no usable GPU, or a CUDA fault that leaves the process unusable."""


class InputError(MedGemmaError):
    """A job's input is wrong. The message names the field and, where there is one, the limit."""

    def __init__(self, field: str, problem: str):
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class GenerationFailed(MedGemmaError):
    """The model could not answer this job (e.g. out of GPU memory); the worker keeps serving."""


#: The start-up failures the worker reports to every job instead of crash-looping.
StartupError = (SettingsError, ModelAccessError, HostError)


def redacted_traceback(error: BaseException) -> str:
    """Where an unexpected error happened, for the log, without its message.

    An exception's text can quote the input it choked on (a note, a prompt), so only the
    frames and the exception's type are logged.
    """
    return "".join(traceback.format_tb(error.__traceback__)) + f"{type(error).__module__}.{type(error).__name__}"
