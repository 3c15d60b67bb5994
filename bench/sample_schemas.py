"""The nested caller schemas that the structured-output benchmarks and tests send, defined once.

Each one is a note's patient (an integer age in a range, a sex from an enum) beside a list of
objects: what a caller's ``json_schema`` typically looks like. Each user needs a slightly
different one (a looser one for the speed benchmark, bounded ones where an answer must close
within a small token budget), so each variant is named here with what sets it apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

SEXES = ("female", "male", "other", "unknown")


def patient(sexes: Sequence[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "age": {"type": "integer", "minimum": 0, "maximum": 130},
            "sex": {"enum": list(sexes)},
        },
        "required": ["age", "sex"],
    }


def nested(sexes: Sequence[str], list_name: str, item: dict[str, Any], max_items: int | None = None) -> dict[str, Any]:
    """``{"patient": ..., list_name: [item, ...]}``, both required."""
    array: dict[str, Any] = {"type": "array", "items": item}
    if max_items is not None:
        array["maxItems"] = max_items
    return {
        "type": "object",
        "properties": {"patient": patient(sexes), list_name: array},
        "required": ["patient", list_name],
    }


def problem(name_max_length: int | None = None) -> dict[str, Any]:
    name: dict[str, Any] = {"type": "string"}
    if name_max_length is not None:
        name["maxLength"] = name_max_length
    return {
        "type": "object",
        "properties": {"name": name, "status": {"enum": ["active", "resolved"]}},
        "required": ["name", "status"],
    }


#: ``bench.grammar_libs``' nested row: enums, an integer range, up to 8 problems.
PROBLEMS = nested(SEXES, "problems", problem(), max_items=8)
#: ``tests/test_structured.py``: the same, bounded (names up to 40 characters, up to 3 problems).
PROBLEMS_BOUNDED = nested(SEXES, "problems", problem(name_max_length=40), max_items=3)
#: ``bench.structured``'s nested jobs: two sexes, problems with an unconstrained name and an ``active`` flag.
PROBLEMS_LOOSE = nested(
    ("female", "male"),
    "problems",
    {"type": "object", "properties": {"name": {"type": "string"}, "active": {"type": "boolean"}}},
)
#: ``tests/test_structured_jobs.py``: at most 2 short medications, so an answer closes within the jobs' budget.
MEDICATIONS = nested(
    ("female", "male", "unknown"),
    "medications",
    {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 30}, "dose": {"type": "string", "maxLength": 20}},
        "required": ["name", "dose"],
    },
    max_items=2,
)
