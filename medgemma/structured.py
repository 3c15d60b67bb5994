"""Structured (JSON) answers: which schema a job asks for, what may be enforced, and what comes back.

Pure Python, no torch or grammar library: request validation imports and tests in
milliseconds. The grammar is compiled and enforced by llguidance inside the engines
(``medgemma/engines/grammar.py`` for transformers; vLLM's structured outputs with its
``guidance`` backend, set up in ``medgemma/engines/vllm.py``, for vLLM),
both from ``JsonSpec.grammar``, so both engines enforce the same schema in the same
compact format. Why llguidance: docs/structured-output.md.

A caller's schema is checked against an allow-list of keywords that llguidance enforces
(each one proven in tests/test_structured.py by a violating answer the grammar refuses);
anything else is refused by name rather than ignored, because an ignored keyword would
let a "valid" answer break the caller's schema.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from medgemma.errors import FieldPath, GenerationFailed, InputError
from medgemma.settings import DEFAULT_MAX_GRAMMAR_CHARS

#: The built-in summary's list fields, in the order the Markdown summary uses them as headings.
SUMMARY_SECTIONS = ("key_findings", "diagnoses", "treatments_and_medications", "follow_up_and_pending")
#: The most items one summary list may hold, and the longest one item may be (characters).
MAX_SUMMARY_ITEMS = 12
MAX_SUMMARY_ITEM_CHARS = 200

#: The object ``"format": "json"`` returns in summarize mode.
SUMMARY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        **{
            name: {
                "type": "array",
                "items": {"type": "string", "maxLength": MAX_SUMMARY_ITEM_CHARS},
                "maxItems": MAX_SUMMARY_ITEMS,
            }
            for name in SUMMARY_SECTIONS
        },
        "not_documented": {
            "type": "array",
            "items": {"enum": list(SUMMARY_SECTIONS)},
            "maxItems": len(SUMMARY_SECTIONS),
        },
    },
    "required": [*SUMMARY_SECTIONS, "not_documented"],
    "additionalProperties": False,
}

FORMATS = ("text", "json")

# Limits on a caller's schema: they bound the work per schema and the prompt the schema is
# copied into. (Per-token work is bounded by llguidance's own parser limits.)
MAX_SCHEMA_CHARS = 16_384  # the schema as compact JSON text
MAX_SCHEMA_DEPTH = 8  # nested subschemas below the root
MAX_SCHEMA_NODES = 256  # subschemas in all, after $ref is expanded
MAX_PROPERTIES = 64  # per object
MAX_ENUM_VALUES = 256
MAX_ANY_OF = 16
MAX_ITEMS_BOUND = 1_000  # the largest minItems/maxItems
MAX_LENGTH_BOUND = 10_000  # the largest minLength/maxLength
MAX_PATTERN_CHARS = 512

ANNOTATIONS = frozenset(
    {"title", "description", "default", "examples", "$comment", "deprecated", "readOnly", "writeOnly"}
)
TYPES = ("string", "integer", "number", "boolean", "null", "object", "array")
STRING_FORMATS = ("date", "time", "date-time", "duration", "email", "hostname", "ipv4", "ipv6", "uuid")
#: Keywords enforced exactly, by the type they constrain (None: any type).
KEYWORDS: dict[str | None, frozenset[str]] = {
    None: frozenset({"type", "enum", "const", "anyOf", "$ref"}),
    "object": frozenset({"properties", "required", "additionalProperties"}),
    "array": frozenset({"items", "minItems", "maxItems"}),
    "string": frozenset({"minLength", "maxLength", "pattern", "format"}),
    "number": frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"}),
}
ALLOWED = frozenset().union(*KEYWORDS.values()) | ANNOTATIONS
#: Why some common keywords are refused, and what to do instead.
REFUSAL_HINTS = {
    "oneOf": "use anyOf ('exactly one branch' cannot be enforced while generating)",
    "allOf": "merge the branches into one schema",
    "items[]": "give items one schema for every element (tuple-style items lists are not supported)",
    "uniqueItems": "it cannot be enforced while generating",
    "minProperties": "list the properties and make them required instead",
    "maxProperties": "list the properties and set additionalProperties to false instead",
}

ROOT_DEFS = ("$defs", "definitions")


@dataclass(frozen=True)
class JsonSpec:
    """What a constrained job must produce: one JSON object fitting ``schema``."""

    kind: str  # "summary" (built-in), "object" (any JSON object), "schema" (the caller's)
    schema: dict[str, Any]  # what is enforced: annotations dropped, $ref expanded, keys in canonical order
    grammar: str  # ``schema`` as compact JSON text: what both engines compile
    key: str  # sha256 of ``grammar``: one compiled grammar per key per worker
    instruction: str  # appended to the system prompt, so the model knows what it is filling in


def json_spec(
    output_format: str | None, json_schema: Any, mode: str, max_grammar_chars: int = DEFAULT_MAX_GRAMMAR_CHARS
) -> JsonSpec | None:
    """The job's JsonSpec from its ``format`` and ``json_schema`` fields; None for a free-text job."""
    if output_format is not None and output_format not in FORMATS:
        raise InputError("format", f"must be one of {', '.join(FORMATS)}, got {{got}}", got=output_format)
    if json_schema is not None:
        if output_format == "text":
            raise InputError("format", "must be json or omitted when json_schema is given")
        return caller_spec(json_schema, max_grammar_chars)
    if output_format != "json":
        return None
    return summary_spec() if mode == "summarize" else object_spec()


def summary_spec() -> JsonSpec:
    return _spec(
        "summary",
        SUMMARY_SCHEMA,
        "Give the summary as one JSON object instead of headings, and nothing else: each list holds short "
        "statements taken from the document (key_findings, diagnoses, treatments_and_medications, "
        "follow_up_and_pending); a list the document has nothing for stays empty and its name goes in not_documented.",
    )


def object_spec() -> JsonSpec:
    return _spec("object", {"type": "object"}, "Answer with one JSON object and nothing else.")


def caller_spec(json_schema: Any, max_grammar_chars: int = DEFAULT_MAX_GRAMMAR_CHARS) -> JsonSpec:
    """Check a caller's schema against the limits and the allow-list; InputError names what is wrong.

    ``max_grammar_chars`` (MAX_GRAMMAR_CHARS) bounds the schema once its ``$ref``s are expanded:
    a definition used many times is copied into the grammar each time, which both engines compile.
    The prompt's instruction carries the schema as sent, within MAX_SCHEMA_CHARS.
    """
    if not isinstance(json_schema, dict):
        raise InputError("json_schema", f"must be a JSON Schema object, got {type(json_schema).__name__}")
    size = len(_compact(json_schema))
    if size > MAX_SCHEMA_CHARS:
        raise InputError("json_schema", f"is {size} characters as JSON, over the limit of {MAX_SCHEMA_CHARS}")
    if json_schema.get("type") != "object":
        raise InputError("json_schema", 'must describe an object at its root ("type": "object")')
    defs = {}
    for name in ROOT_DEFS:
        value = json_schema.get(name, {})
        if not isinstance(value, dict):
            raise InputError("json_schema", f"{name} must be an object of named schemas")
        defs.update({f"#/{name}/{key}": schema for key, schema in value.items()})
    root = {key: value for key, value in json_schema.items() if key not in ROOT_DEFS and key != "$schema"}
    walker = _Walker(defs)
    enforced = walker.check(root, FieldPath.known("json_schema"), depth=0, refs=())
    spec = _spec(
        "schema",
        enforced,
        "Answer with one JSON object and nothing else, matching this JSON Schema: " + _compact(json_schema),
    )
    if len(spec.grammar) > max_grammar_chars:
        raise InputError(
            "json_schema",
            f"is {len(spec.grammar)} characters as JSON once its $refs are expanded, "
            f"over the limit of {max_grammar_chars}; define fewer copies",
        )
    return spec


def _spec(kind: str, schema: dict[str, Any], instruction: str) -> JsonSpec:
    grammar = _compact(schema)
    return JsonSpec(kind, schema, grammar, hashlib.sha256(grammar.encode()).hexdigest(), instruction)


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _refused(path: FieldPath, problem: str, **quoted: object) -> InputError:
    """A schema error at ``path`` (``problem`` follows it): the property names in the path reach the reply only."""
    return InputError("json_schema", "{path}" + problem, path=path, **quoted)


def _finite(value: Any) -> bool:
    """Whether ``value`` holds no NaN or infinity, which Python's json reads (``NaN``, ``1e400``) and no grammar takes."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_finite(item) for item in value)
    if isinstance(value, dict):
        return all(_finite(item) for item in value.values())
    return True


class _Walker:
    """Checks every subschema and builds the enforced copy (canonical key order, refs expanded)."""

    def __init__(self, defs: dict[str, Any]):
        self.defs = defs
        self.nodes = 0

    def check(self, node: Any, path: FieldPath, depth: int, refs: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(node, dict):
            raise _refused(path, f" must be a schema object, got {type(node).__name__}")
        self.nodes += 1
        if self.nodes > MAX_SCHEMA_NODES:
            raise InputError("json_schema", f"has more than {MAX_SCHEMA_NODES} subschemas (after expanding $ref)")
        if depth > MAX_SCHEMA_DEPTH:
            raise _refused(path, f" is nested deeper than the limit of {MAX_SCHEMA_DEPTH} levels")
        if "$ref" in node:
            return self._ref(node, path, depth, refs)
        for key in node:
            hint = REFUSAL_HINTS.get(key)
            if key not in ALLOWED:
                keyword = path.then(f"/{key}") if hint else path.named(key, "keyword", "/")
                raise _refused(
                    keyword,
                    " is not supported"
                    + (f": {hint}" if hint else "")
                    + f"; supported keywords: {', '.join(sorted(ALLOWED - ANNOTATIONS))}",
                )
        types = self._types(node, path)
        out: dict[str, Any] = {}
        for key in sorted(node):
            value = node[key]
            if key in ANNOTATIONS:
                continue
            where = path.then(f"/{key}")
            if key == "type":
                out[key] = value
            elif key in ("enum", "const"):
                out[key] = self._values(key, value, where)
            elif key == "anyOf":
                if not isinstance(value, list) or not 1 <= len(value) <= MAX_ANY_OF:
                    raise _refused(where, f" must be a list of 1 to {MAX_ANY_OF} schemas")
                out[key] = [self.check(item, where.then(f"/{i}"), depth + 1, refs) for i, item in enumerate(value)]
            elif key == "properties":
                out[key] = self._properties(value, where, depth, refs)
            elif key == "additionalProperties":
                out[key] = value if isinstance(value, bool) else self.check(value, where, depth + 1, refs)
            elif key == "items":
                if isinstance(value, list):
                    raise _refused(where, f" is not supported: {REFUSAL_HINTS['items[]']}")
                out[key] = self.check(value, where, depth + 1, refs)
            else:
                out[key] = value
        if "properties" in out:
            # Only the listed properties unless the schema says otherwise (as in OpenAI's strict mode):
            # a model left free to add keys can keep adding them until it runs out of tokens.
            out.setdefault("additionalProperties", False)
        self._check_values(node, path, types)
        return out

    def _ref(self, node: dict[str, Any], path: FieldPath, depth: int, refs: tuple[str, ...]) -> dict[str, Any]:
        ref = node["$ref"]
        extra = sorted(set(node) - {"$ref"} - ANNOTATIONS)
        if extra:
            raise _refused(path, ": $ref cannot be combined with {got}; move it into the definition", got=extra[0])
        if ref not in self.defs:
            raise _refused(path, "/$ref must name a schema under #/$defs or #/definitions, got {got}", got=ref)
        if ref in refs:
            raise _refused(path, "/$ref is recursive ({got}); recursive schemas are not supported", got=ref)
        return self.check(self.defs[ref], path, depth, (*refs, ref))

    @staticmethod
    def _types(node: dict[str, Any], path: FieldPath) -> set[str]:
        value = node.get("type")
        if value is None:
            return set()
        names = value if isinstance(value, list) else [value]
        if not names or any(not isinstance(name, str) or name not in TYPES for name in names):
            raise _refused(path, f"/type must be one of {', '.join(TYPES)} (or a list of them)")
        if len(set(names)) != len(names):
            raise _refused(path, "/type lists a type twice")
        return set(names) | ({"number"} if "integer" in names else set())

    def _properties(self, value: Any, where: FieldPath, depth: int, refs: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise _refused(where, " must be an object of named schemas")
        if len(value) > MAX_PROPERTIES:
            raise _refused(where, f" has {len(value)} properties, over the limit of {MAX_PROPERTIES}")
        # Declared order is kept: the grammar writes properties in this order.
        return {
            name: self.check(schema, where.named(name, "property", "/"), depth + 1, refs)
            for name, schema in value.items()
        }

    @staticmethod
    def _values(key: str, value: Any, where: FieldPath) -> Any:
        if key == "enum" and (not isinstance(value, list) or not 1 <= len(value) <= MAX_ENUM_VALUES):
            raise _refused(where, f" must be a list of 1 to {MAX_ENUM_VALUES} values")
        if not _finite(value):
            raise _refused(where, " holds NaN or an infinite number, which JSON has no value for")
        return value

    @staticmethod
    def _check_values(node: dict[str, Any], path: FieldPath, types: set[str]) -> None:
        """Bounds must be numbers in range and consistent; keywords for other types are refused."""
        for kind, keywords in KEYWORDS.items():
            if kind is None:
                continue
            used = sorted(keywords & set(node))
            if used and types and kind not in types:
                raise _refused(path, f"/{used[0]} applies to {kind}s, but type is {sorted(types)}")
        for low, high, limit in (
            ("minItems", "maxItems", MAX_ITEMS_BOUND),
            ("minLength", "maxLength", MAX_LENGTH_BOUND),
        ):
            for key in (low, high):
                value = node.get(key)
                if value is not None and (
                    isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit
                ):
                    raise _refused(path, f"/{key} must be an integer from 0 to {limit}")
            if node.get(low, 0) > node.get(high, limit):
                raise _refused(path, f": {low} is greater than {high}")
        for key in sorted(KEYWORDS["number"]):
            value = node.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise _refused(path, f"/{key} must be a finite number")
            if key == "multipleOf" and value <= 0:
                raise _refused(path, "/multipleOf must be greater than 0")
        if "pattern" in node:
            pattern = node["pattern"]
            if not isinstance(pattern, str) or not 0 < len(pattern) <= MAX_PATTERN_CHARS:
                raise _refused(path, f"/pattern must be a regular expression of 1 to {MAX_PATTERN_CHARS} characters")
        if "format" in node and node["format"] not in STRING_FORMATS:
            raise _refused(path, f"/format must be one of {', '.join(STRING_FORMATS)}")
        required = node.get("required")
        if required is not None:
            names = node.get("properties", {})
            if not isinstance(required, list) or any(not isinstance(name, str) for name in required):
                raise _refused(path, "/required must be a list of property names")
            if len(set(required)) != len(required):
                raise _refused(path, "/required lists a property twice")
            missing = [name for name in required if name not in names]
            if missing:
                raise _refused(path, "/required names {got}, which is not under properties", got=missing[0])


# -- the answer ----------------------------------------------------------------------

INCOMPLETE = (
    "the answer reached max_new_tokens ({limit}) before the JSON object was closed: output holds the unfinished "
    "JSON text and parsed is null; raise max_new_tokens"
)


@dataclass(frozen=True)
class JsonAnswer:
    """A constrained job's result as the caller sees it."""

    parsed: dict[str, Any] | None  # the object; None when it is incomplete
    finish_reason: str  # "stop": complete object; "length": cut off, never a valid object
    incomplete: str | None  # why parsed is None, for the caller (None when complete)


def json_answer(text: str, finish_reason: str, max_new_tokens: int) -> JsonAnswer:
    """Parse a constrained answer. ``length`` means exactly "the object is incomplete".

    The grammar only lets an answer end once the object is closed, so a closed object is
    valid even if the token budget ran out on the very token that closed it (reported as
    ``stop``); an unclosed one is reported as ``length`` with ``parsed`` null.
    """
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        return JsonAnswer(parsed, "stop", None)
    if finish_reason == "stop":
        # The grammar allows the stop token only after a complete object: this is a bug, not an answer.
        raise GenerationFailed("the constrained answer ended without a complete JSON object")
    return JsonAnswer(None, "length", INCOMPLETE.format(limit=max_new_tokens))


#: Both engines write JSON compact: no free whitespace, "," and ":" separators (llguidance's
#: ``whitespace_flexible`` off in medgemma/engines/grammar.py, vLLM's ``disable_any_whitespace`` on).
COMPACT_JSON = True
