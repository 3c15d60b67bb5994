"""The worker's error types: each one becomes a one-sentence ``{"error": ...}`` for the caller.

Start-up failures come in two kinds the caller can act on (``SettingsError``: the endpoint's
configuration; ``ModelAccessError``: the weights can't be had) and one that belongs to the
machine (``HostError``: no usable GPU, or a CUDA fault that poisoned the process), which
makes the worker ask RunPod for a fresh one.
"""

from __future__ import annotations

import re
import traceback
from dataclasses import dataclass


class MedGemmaError(Exception):
    """Base class: anything the worker reports to a caller instead of crashing."""

    @property
    def logged(self) -> str:
        """This error as the log may give it; only an InputError's reply can name what the caller sent."""
        return str(self)


class SettingsError(MedGemmaError):
    """A bad or unservable configuration, found at boot so the worker never starts half-configured."""


class ModelAccessError(MedGemmaError):
    """The weights can't be loaded: gated or missing model, no token, offline without a snapshot."""


class HostError(MedGemmaError):
    """This machine can't serve: no usable GPU, or a CUDA fault that leaves the process unusable."""


class InputError(MedGemmaError):
    """A job's input is wrong. The message names the field and, where there is one, the limit.

    ``problem`` is fixed text with a ``{name}`` for each of ``quoted``: a value the caller sent,
    which the reply shows cut and escaped (``shown``) and the log by its kind and size
    (``described``), or a ``FieldPath``, each form its own. ``field`` is a known name, or a
    FieldPath when the caller named part of it. So ``str(error)`` is the reply and
    ``error.logged`` the same sentence without the caller's strings.
    """

    def __init__(self, field: str | FieldPath, problem: str, **quoted: object):
        path = field if isinstance(field, FieldPath) else FieldPath.known(field)
        self.field = path.shown
        self.problem = _filled(problem, quoted, reply=True)
        self._logged = f"{path.logged}: {_filled(problem, quoted, reply=False)}"
        super().__init__(f"{self.field}: {self.problem}")

    @property
    def logged(self) -> str:
        return self._logged


class GenerationFailed(MedGemmaError):
    """The model could not answer this job (e.g. out of GPU memory); the worker keeps serving."""


#: The start-up failures the worker reports to every job instead of crash-looping.
StartupError = (SettingsError, ModelAccessError, HostError)

# -- what a reply and the log may say of the caller's values ----------------------------
#
# A caller's string can be a clinical note sent in the wrong field, a megabyte long, or a
# newline and a forged log line. A reply may quote it, cut and escaped; the log never does.

#: The most characters of a caller's value a reply quotes.
SHOWN_CHARS = 40
#: A caller-named key shown as it is in a field path; any other is shown quoted and escaped.
_PLAIN_NAME = re.compile(r"[A-Za-z_$][A-Za-z0-9_$-]{0,39}")
#: A job id logged as it is: RunPod's ids are letters, digits and dashes; note text has spaces.
_PLAIN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")


def shown(value: object) -> str:
    """A caller's value as a reply may quote it: escaped as ``repr`` does (no newline or control
    character survives), cut to SHOWN_CHARS; a value that is not a string or a number by its type."""
    if isinstance(value, str):
        return repr(value[:SHOWN_CHARS]) + ("..." if len(value) > SHOWN_CHARS else "")
    if value is None or isinstance(value, (bool, int, float)):
        text = repr(value)
        return text[:SHOWN_CHARS] + ("..." if len(text) > SHOWN_CHARS else "")
    return type(value).__name__


def described(value: object) -> str:
    """A caller's value as the log may give it: its kind and size, never the value."""
    if isinstance(value, str):
        return f"<{_characters(len(value))}>"
    if isinstance(value, (list, dict)):
        return f"<{type(value).__name__} of {len(value)}>"
    return f"<{type(value).__name__}>"


def logged_id(job_id: object) -> str:
    """A job id as the log may give it: as it is when it has an id's form, else by its size.

    RunPod assigns the ids of queued jobs, but a caller of the local API's realtime route, or
    of the handler itself, sets its own.
    """
    text = str(job_id)
    return text if _PLAIN_ID.fullmatch(text) else f"<job id of {_characters(len(text))}>"


@dataclass(frozen=True)
class FieldPath:
    """A field's path as the reply names it (``shown``) and as the log may (``logged``).

    A part the caller named (an unknown key, a schema's property name) is shown as it is when
    it is a plain name, else quoted and escaped; the log gets only its kind and size.
    """

    shown: str
    logged: str

    @classmethod
    def known(cls, path: str) -> FieldPath:
        """A path of known names only, the same in the reply and the log."""
        return cls(path, path)

    def then(self, known: str) -> FieldPath:
        """This path followed by known text: ``".role"``, ``"[2]"``, ``"/items"``."""
        return FieldPath(self.shown + known, self.logged + known)

    def named(self, name: str, what: str, separator: str = ".") -> FieldPath:
        """This path followed by a part the caller named, ``what`` saying what it is (``"unknown field"``)."""
        part = name if _PLAIN_NAME.fullmatch(name) else shown(name)
        return FieldPath(
            self.shown + separator + part if self.shown else part,
            f"{self.logged}{separator}<{what}, {_characters(len(name))}>",
        )


#: The top of a job's input: a reply names its fields bare, the log as ``input.<...>``.
INPUT = FieldPath("", "input")


def _characters(count: int) -> str:
    return f"{count} character" + ("" if count == 1 else "s")


_QUOTE = re.compile(r"\{(\w+)\}")


def _filled(problem: str, quoted: dict[str, object], reply: bool) -> str:
    """``problem`` with each ``{name}`` of ``quoted`` filled in, for the reply or for the log (in one pass,
    so a caller's text is never filled in itself); other braces stay as they are."""

    def fill(match: re.Match[str]) -> str:
        if match.group(1) not in quoted:
            return match.group(0)
        value = quoted[match.group(1)]
        if isinstance(value, FieldPath):
            return value.shown if reply else value.logged
        return shown(value) if reply else described(value)

    return _QUOTE.sub(fill, problem)


def redacted_traceback(error: BaseException) -> str:
    """Where an unexpected error happened, for the log, without its message.

    An exception's text can quote the input it choked on (a note, a prompt), so only the
    frames and the exception's type are logged.
    """
    return "".join(traceback.format_tb(error.__traceback__)) + f"{type(error).__module__}.{type(error).__name__}"
