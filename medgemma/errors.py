"""The worker's error types: each one becomes a one-sentence ``{"error": ...}`` for the caller."""

from __future__ import annotations


class MedGemmaError(Exception):
    """Base class: anything the worker reports to a caller instead of crashing."""


class SettingsError(MedGemmaError):
    """A bad environment value; raised at boot so the worker never starts half-configured."""


class InputError(MedGemmaError):
    """A job's input is wrong. The message names the field and, where there is one, the limit."""

    def __init__(self, field: str, problem: str):
        self.field = field
        super().__init__(f"{field}: {problem}")


class GenerationFailed(MedGemmaError):
    """The model could not answer this job (e.g. out of GPU memory); the worker keeps serving."""
