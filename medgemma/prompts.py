"""System prompts per mode, and how a request's own prompt overrides them."""

from __future__ import annotations

from medgemma.errors import InputError

SUMMARIZE_PROMPT = (
    "You are a clinical documentation assistant supporting a licensed clinician. "
    "Summarize the clinical document you are given in plain clinical language. "
    "Organize the summary under these headings: Key findings; Diagnoses; Treatments "
    "and medications; Follow-up and pending items. Report only what the document "
    "states, keep numbers and units exactly as written, say 'not documented' where a "
    "section has nothing, and do not invent findings. The clinician reviews your "
    "summary; it is decision support, not a diagnosis."
)

GENERAL_PROMPT = (
    "You are a medical knowledge assistant supporting a licensed clinician. Answer "
    "the question accurately and concisely, state uncertainty where it exists, and "
    "say when the answer depends on information you were not given. Your answer is "
    "decision support for a clinician to review, not a diagnosis."
)

SYSTEM_PROMPTS: dict[str, str] = {"summarize": SUMMARIZE_PROMPT, "general": GENERAL_PROMPT}
MODES = tuple(SYSTEM_PROMPTS)
DEFAULT_MODE = "summarize"


def check_mode(mode: str) -> str:
    """Return ``mode`` if known; an unknown mode is an error, never a silent fallback."""
    if mode not in SYSTEM_PROMPTS:
        raise InputError("mode", f"must be one of {', '.join(MODES)}, got {{got}}", got=mode)
    return mode


def system_prompt_for(mode: str, override: str | None = None) -> str:
    """The request's own system prompt wins over the mode's default."""
    check_mode(mode)
    return override if override else SYSTEM_PROMPTS[mode]


def with_answer_format(prompt: str | None, answer_format: str) -> str:
    """The system prompt with ``answer_format`` (the JSON the answer must be) appended, or it alone.

    The grammar enforces the format; the model writes better content when it knows what it
    is filling in.
    """
    return f"{prompt}\n\n{answer_format}" if prompt else answer_format
