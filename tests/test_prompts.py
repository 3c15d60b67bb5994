"""Modes map to their system prompts; a request's own prompt overrides; unknown modes fail."""

import pytest

from medgemma.errors import InputError
from medgemma.prompts import MODES, SYSTEM_PROMPTS, system_prompt_for


def test_modes_and_their_prompts():
    assert set(MODES) == {"summarize", "general"}
    summarize = system_prompt_for("summarize").lower()
    for heading in ("key findings", "diagnoses", "treatments", "follow-up"):
        assert heading in summarize
    assert system_prompt_for("general") == SYSTEM_PROMPTS["general"]
    assert "not a diagnosis" in summarize and "not a diagnosis" in system_prompt_for("general").lower()


def test_custom_prompt_overrides_the_mode():
    assert system_prompt_for("general", "Reply in one word.") == "Reply in one word."


def test_unknown_mode_is_an_error_not_a_fallback():
    with pytest.raises(InputError, match="mode: must be one of summarize, general"):
        system_prompt_for("diagnose")
