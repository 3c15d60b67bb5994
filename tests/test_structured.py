"""Structured answers: schema checks (pure), and the grammar on the stand-in's real tokenizer.

The grammar tests drive ``GrammarLogitsProcessor`` step by step with deterministic logits
instead of a model (job tests with the model: tests/test_structured_jobs.py): every answer
it lets through must parse and validate with ``jsonschema``, and every keyword the allow-list
admits must be enforced, shown by an answer breaking it that the grammar refuses.
"""

from __future__ import annotations

import json
import random
import re

import jsonschema
import pytest

from bench.sample_schemas import PROBLEMS_BOUNDED as NESTED
from medgemma.errors import GenerationFailed, InputError
from medgemma.structured import (
    ALLOWED,
    ANNOTATIONS,
    MAX_LENGTH_BOUND,
    MAX_SCHEMA_CHARS,
    MAX_SCHEMA_DEPTH,
    SUMMARY_SCHEMA,
    SUMMARY_SECTIONS,
    caller_spec,
    json_answer,
    json_spec,
    summary_spec,
)


def obj(**properties) -> dict:
    return {"type": "object", "properties": properties, "required": sorted(properties)}


# -- which spec a job gets ---------------------------------------------------------


def test_no_format_is_a_free_text_job() -> None:
    assert json_spec(None, None, "summarize") is None
    assert json_spec("text", None, "general") is None


def test_format_json_means_the_built_in_summary_in_summarize_mode_and_any_object_otherwise() -> None:
    summary = json_spec("json", None, "summarize")
    assert summary.kind == "summary" and summary.schema == SUMMARY_SCHEMA
    assert json_spec("json", None, "general").schema == {"type": "object"}


def test_a_caller_schema_applies_in_any_mode_and_format_may_say_json() -> None:
    for mode in ("summarize", "general"):
        assert json_spec(None, NESTED, mode).kind == "schema"
        assert json_spec("json", NESTED, mode).kind == "schema"


@pytest.mark.parametrize(
    ("output_format", "schema", "field", "says"),
    [
        ("yaml", None, "format", "must be one of text, json"),
        ("text", NESTED, "format", "must be json or omitted"),
        (None, [1], "json_schema", "must be a JSON Schema object"),
    ],
)
def test_bad_format_fields_name_the_field(output_format, schema, field, says) -> None:
    with pytest.raises(InputError) as caught:
        json_spec(output_format, schema, "general")
    assert caught.value.field == field and says in str(caught.value)


def test_the_schema_instruction_follows_whatever_system_prompt_the_job_gets() -> None:
    from medgemma.prompts import SYSTEM_PROMPTS
    from medgemma.request import parse_job_input
    from medgemma.settings import Settings

    settings = Settings.from_env({"DUMMY_IMAGE": "false"})
    instruction = summary_spec().instruction
    text = parse_job_input({"text": "Note.", "format": "json"}, settings)
    assert text.system_prompt == f"{SYSTEM_PROMPTS['summarize']}\n\n{instruction}"
    own = parse_job_input({"text": "Note.", "format": "json", "system_prompt": "Be brief."}, settings)
    assert own.system_prompt == f"Be brief.\n\n{instruction}"
    turns = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Note."}]
    assert parse_job_input({"messages": turns, "format": "json"}, settings).system_prompt.startswith("Be kind.\n\n")
    bare = parse_job_input({"messages": turns[1:], "format": "json"}, settings, mode_prompts=False)
    assert bare.system_prompt == instruction  # no system turn of its own: the instruction alone
    assert parse_job_input({"text": "Note."}, settings).system_prompt == SYSTEM_PROMPTS["summarize"]


def test_stop_strings_cannot_cut_a_json_answer() -> None:
    from medgemma.request import STOP_WITH_JSON_PROBLEM, parse_job_input
    from medgemma.settings import Settings

    with pytest.raises(InputError) as caught:
        parse_job_input({"text": "Note.", "json_schema": NESTED, "stop": ["}"]}, Settings.from_env({}))
    assert caught.value.field == "stop" and STOP_WITH_JSON_PROBLEM in str(caught.value)


def test_the_built_in_summary_lists_the_four_sections_and_not_documented() -> None:
    assert list(SUMMARY_SCHEMA["properties"]) == [*SUMMARY_SECTIONS, "not_documented"]
    assert set(SUMMARY_SCHEMA["required"]) == set(SUMMARY_SCHEMA["properties"])
    assert SUMMARY_SCHEMA["properties"]["not_documented"]["items"]["enum"] == list(SUMMARY_SECTIONS)
    assert "not_documented" in summary_spec().instruction


# -- caller schemas: refused with the keyword and the limit named ----------------------


def _nested(depth: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(depth):
        schema = obj(child=schema)
    return schema


@pytest.mark.parametrize(
    ("schema", "says"),
    [
        ({"type": "array"}, 'root ("type": "object")'),
        (
            obj(tags={"type": "array", "items": {"type": "string"}, "uniqueItems": True}),
            "json_schema/properties/tags/uniqueItems is not supported",
        ),
        (obj(x={"oneOf": [{"type": "string"}, {"type": "integer"}]}), "use anyOf"),
        (obj(x={"allOf": [{"type": "string"}]}), "merge the branches"),
        (obj(x={"type": "array", "items": [{"type": "string"}]}), "tuple-style"),
        (
            obj(x={"type": "string", "maxLength": MAX_LENGTH_BOUND + 1}),
            f"maxLength must be an integer from 0 to {MAX_LENGTH_BOUND}",
        ),
        (obj(x={"type": "string", "minLength": 5, "maxLength": 2}), "minLength is greater than maxLength"),
        (obj(x={"type": "integer", "maxLength": 3}), "maxLength applies to strings"),
        (obj(x={"type": "date"}), "type must be one of"),
        (obj(x={"enum": []}), "enum must be a list of 1 to"),
        (obj(x={"type": "string", "format": "credit-card"}), "format must be one of"),
        (obj(x={"type": "number", "minimum": "0"}), "minimum must be a finite number"),
        ({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["b"]}, "required names 'b'"),
        (obj(x={"$ref": "#/$defs/missing"}), "$ref must name a schema under"),
        ({**obj(x={"$ref": "#/$defs/node"}), "$defs": {"node": obj(next={"$ref": "#/$defs/node"})}}, "recursive"),
        (_nested(MAX_SCHEMA_DEPTH + 1), f"deeper than the limit of {MAX_SCHEMA_DEPTH}"),
        (obj(x={"type": "string", "description": "x" * MAX_SCHEMA_CHARS}), f"over the limit of {MAX_SCHEMA_CHARS}"),
    ],
)
def test_schemas_the_grammar_cannot_enforce_or_over_a_limit_are_refused(schema, says) -> None:
    with pytest.raises(InputError) as caught:
        caller_spec(schema)
    assert caught.value.field == "json_schema"
    assert says in str(caught.value)


def test_the_cache_key_ignores_keyword_order_and_annotations_but_not_property_order() -> None:
    base = caller_spec(NESTED)
    reordered = json.loads(json.dumps(NESTED, sort_keys=True))  # keywords sorted; property names already were
    annotated = {**NESTED, "title": "encounter", "description": "what the note says"}
    assert caller_spec(reordered).key == base.key == caller_spec(annotated).key
    swapped = {**NESTED, "properties": dict(reversed(list(NESTED["properties"].items())))}
    assert caller_spec(swapped).key != base.key  # properties are generated in the declared order


def test_refs_are_expanded_and_listed_properties_close_the_object() -> None:
    with_refs = {**obj(patient={"$ref": "#/$defs/patient"}), "$defs": {"patient": NESTED["properties"]["patient"]}}
    inline = obj(patient=NESTED["properties"]["patient"])
    assert caller_spec(with_refs).key == caller_spec(inline).key
    patient = caller_spec(inline).schema["properties"]["patient"]
    assert patient["additionalProperties"] is False
    assert caller_spec({"type": "object"}).schema == {"type": "object"}  # no properties: any object


def test_every_allowed_keyword_is_proven_enforced_below() -> None:
    covered = {keyword for keyword, *_ in ENFORCED}
    assert covered == ALLOWED - ANNOTATIONS


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400"])
@pytest.mark.parametrize("keyword", ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"])
def test_a_bound_that_is_no_number_json_has_is_an_input_error_naming_its_path(keyword, literal) -> None:
    """Python's json reads NaN, Infinity and overflowing numbers; the grammar's JSON has none (was "internal error")."""
    schema = json.loads(f'{{"type": "object", "properties": {{"age": {{"type": "number", "{keyword}": {literal}}}}}}}')
    with pytest.raises(InputError) as caught:
        caller_spec(schema)
    assert caught.value.field == "json_schema"
    assert str(caught.value) == f"json_schema: json_schema/properties/age/{keyword} must be a finite number"
    assert (
        caught.value.logged
        == f"json_schema: json_schema/properties/<property, 3 characters>/{keyword} must be a finite number"
    )


@pytest.mark.parametrize("keyword", ["enum", "const"])
def test_an_enum_or_const_holding_nan_is_an_input_error_naming_its_path(keyword) -> None:
    value = [1, float("nan")] if keyword == "enum" else {"a": [float("-inf")]}
    with pytest.raises(InputError, match=f"json_schema/properties/x/{keyword} holds NaN or an infinite number"):
        caller_spec(obj(x={keyword: value}))


def test_multiple_of_must_be_positive() -> None:
    with pytest.raises(InputError, match="json_schema/properties/x/multipleOf must be greater than 0"):
        caller_spec(obj(x={"type": "number", "multipleOf": 0}))


def _copied(copies: int) -> dict:
    """A schema of about 14 kB whose one definition, a 256-value enum, is used ``copies`` times."""
    codes = [f"code-{index:03}-{'x' * 40}" for index in range(256)]
    properties = {f"p{index}": {"$ref": "#/$defs/code"} for index in range(copies)}
    return {"type": "object", "properties": properties, "$defs": {"code": {"enum": codes}}}


def test_the_expanded_grammar_is_bounded_by_max_grammar_chars() -> None:
    """$ref expansion made a 14 kB schema a 1.3 MB grammar inside the node cap: every engine compiles it per job."""
    from medgemma.request import parse_job_input
    from medgemma.settings import DEFAULT_MAX_GRAMMAR_CHARS, Settings

    schema = _copied(60)
    assert len(json.dumps(schema)) < MAX_SCHEMA_CHARS
    with pytest.raises(InputError) as caught:
        caller_spec(schema)
    assert caught.value.field == "json_schema"
    assert re.fullmatch(
        rf"json_schema: is \d+ characters as JSON once its \$refs are expanded, over the limit of "
        rf"{DEFAULT_MAX_GRAMMAR_CHARS}; define fewer copies",
        str(caught.value),
    )
    assert len(caller_spec(_copied(3)).grammar) < DEFAULT_MAX_GRAMMAR_CHARS  # a few copies fit
    settings = Settings.from_env({"MAX_GRAMMAR_CHARS": "5000", "DUMMY_IMAGE": "false"})
    with pytest.raises(InputError, match="over the limit of 5000"):
        parse_job_input({"text": "Note.", "json_schema": _copied(1)}, settings)


# -- the answer ------------------------------------------------------------------------


def test_a_complete_object_parses_and_reports_stop() -> None:
    answer = json_answer('{"a":[1]}', "stop", 64)
    assert answer.parsed == {"a": [1]} and answer.finish_reason == "stop" and answer.incomplete is None
    # Closed on the last allowed token: complete, even though the budget ran out.
    assert json_answer('{"a":[1]}', "length", 64).finish_reason == "stop"


def test_an_unclosed_object_is_length_with_parsed_null_and_says_so() -> None:
    answer = json_answer('{"a":[1,', "length", 64)
    assert answer.parsed is None and answer.finish_reason == "length"
    assert "max_new_tokens (64)" in answer.incomplete


def test_a_stop_without_a_complete_object_is_a_failure_not_an_answer() -> None:
    with pytest.raises(GenerationFailed):
        json_answer('{"a":', "stop", 64)


def test_vllm_gets_the_same_schema_text_and_library() -> None:
    vllm_engine = pytest.importorskip("medgemma.engines.vllm")
    spec = caller_spec(NESTED)
    assert json.loads(vllm_engine.structured_params(spec).json) == spec.schema
    assert vllm_engine.STRUCTURED_OUTPUTS == {"backend": "guidance", "disable_any_whitespace": True}


# -- the grammar, on the stand-in's tokenizer ----------------------------------------------

#: (keyword, schema, an answer that fits, an answer that breaks the keyword)
ENFORCED = [
    ("type", obj(x={"type": "integer"}), {"x": 3}, {"x": "3"}),
    ("enum", obj(x={"enum": ["a", "b"]}), {"x": "b"}, {"x": "c"}),
    ("const", obj(x={"const": "yes"}), {"x": "yes"}, {"x": "no"}),
    ("anyOf", obj(x={"anyOf": [{"type": "integer"}, {"type": "null"}]}), {"x": None}, {"x": "1"}),
    ("$ref", {**obj(x={"$ref": "#/$defs/n"}), "$defs": {"n": {"type": "integer"}}}, {"x": 1}, {"x": True}),
    ("properties", obj(x={"type": "boolean"}), {"x": False}, {"x": 0}),
    ("required", {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}, {"x": 1}, {}),
    (
        "additionalProperties",
        {"type": "object", "properties": {"x": {"type": "integer"}}, "additionalProperties": False},
        {"x": 1},
        {"x": 1, "y": 2},
    ),
    ("items", obj(x={"type": "array", "items": {"type": "integer"}}), {"x": [1, 2]}, {"x": [1, "2"]}),
    ("minItems", obj(x={"type": "array", "items": {"type": "integer"}, "minItems": 2}), {"x": [1, 2]}, {"x": [1]}),
    ("maxItems", obj(x={"type": "array", "items": {"type": "integer"}, "maxItems": 1}), {"x": [1]}, {"x": [1, 2]}),
    ("minLength", obj(x={"type": "string", "minLength": 3}), {"x": "abc"}, {"x": "ab"}),
    ("maxLength", obj(x={"type": "string", "maxLength": 3}), {"x": "abc"}, {"x": "abcd"}),
    ("pattern", obj(x={"type": "string", "pattern": "^[A-Z]{2}[0-9]+$"}), {"x": "AB12"}, {"x": "ab12"}),
    ("format", obj(x={"type": "string", "format": "date"}), {"x": "2024-02-29"}, {"x": "29/02/2024"}),
    ("minimum", obj(x={"type": "integer", "minimum": 10}), {"x": 10}, {"x": 9}),
    ("maximum", obj(x={"type": "number", "maximum": 1.5}), {"x": 1.5}, {"x": 1.6}),
    ("exclusiveMinimum", obj(x={"type": "integer", "exclusiveMinimum": 0}), {"x": 1}, {"x": 0}),
    ("exclusiveMaximum", obj(x={"type": "integer", "exclusiveMaximum": 5}), {"x": 4}, {"x": 5}),
    ("multipleOf", obj(x={"type": "integer", "multipleOf": 5}), {"x": 15}, {"x": 12}),
]


@pytest.fixture(scope="module")
def tokenizer_and_vocab(settings):
    from transformers import AutoConfig, AutoTokenizer

    from medgemma.standin import ensure_standin

    path = ensure_standin(settings.standin_cache)
    return AutoTokenizer.from_pretrained(path), AutoConfig.from_pretrained(path).get_text_config().vocab_size


@pytest.fixture(scope="module")
def grammars(tokenizer_and_vocab):
    from medgemma.engines.grammar import Grammars

    tokenizer, vocab_size = tokenizer_and_vocab
    return Grammars(tokenizer, vocab_size, STOP_IDS)


STOP_IDS = (1, 106)  # <eos>, <end_of_turn>: the stand-in's (and MedGemma's) stop tokens


def _produces(grammars, tokenizer, spec, value) -> bool:
    """Whether the grammar lets the model write ``value`` (compact JSON) and then stop."""
    matcher = grammars.compiled(spec).deep_copy()
    tokens = tokenizer.encode(json.dumps(value, separators=(",", ":")), add_special_tokens=False)
    return matcher.validate_tokens(tokens) == len(tokens) and matcher.consume_tokens(tokens) and matcher.is_accepting()


@pytest.mark.model
@pytest.mark.parametrize(("keyword", "schema", "fits", "breaks"), ENFORCED, ids=[case[0] for case in ENFORCED])
def test_each_allowed_keyword_is_enforced(grammars, tokenizer_and_vocab, keyword, schema, fits, breaks) -> None:
    jsonschema.validate(fits, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(breaks, schema, format_checker=jsonschema.FormatChecker())
    spec = caller_spec(schema)
    assert _produces(grammars, tokenizer_and_vocab[0], spec, fits)
    assert not _produces(grammars, tokenizer_and_vocab[0], spec, breaks)


@pytest.mark.model
def test_a_pattern_the_grammar_cannot_compile_is_an_input_error(grammars) -> None:
    with pytest.raises(InputError) as caught:
        grammars.compiled(caller_spec(obj(x={"type": "string", "pattern": "^(?=a)a$"})))
    assert caught.value.field == "json_schema" and "look-around" in str(caught.value)


@pytest.mark.model
def test_a_schema_compiles_once_per_worker(grammars) -> None:
    schema = obj(only_here={"type": "string", "maxLength": 7})
    before = grammars.compiles
    first = grammars.compiled(caller_spec(schema))
    again = grammars.compiled(caller_spec(json.loads(json.dumps(schema))))  # an equal schema from another job
    assert again is first and grammars.compiles == before + 1


# -- decoding rows through the logits processor ----------------------------------------------


class _FakeModel:
    """Deterministic logits that depend only on a row's own tokens so far (like a model's).

    Each row's logits are one fixed random vector rolled by a hash of the row's history (cheap
    on a 262k vocabulary). Tokens that close strings, lists and objects get a bonus, so random
    answers finish within a few hundred steps instead of filling every length bound.
    """

    def __init__(self, tokenizer, vocab_size: int):
        import torch

        self.torch, self.vocab_size = torch, vocab_size
        self.noise = torch.randn(vocab_size, generator=torch.Generator().manual_seed(0))
        pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        self.bonus = torch.zeros(vocab_size)
        self.bonus[[index for index, piece in enumerate(pieces) if piece and any(c in piece for c in '"]}')]] = 3.0

    def logits(self, seed: int, history: list[int]):
        return self.torch.roll(self.noise, hash((seed, *history)) % self.vocab_size) + self.bonus


def _decode(model: _FakeModel, grammars, rows: list[tuple[int, object]], steps: int) -> list[list[int]]:
    """Greedy decoding of ``rows`` (seed, spec or None) as one batch; returns each row's tokens."""
    torch = model.torch
    processor = grammars.processor([grammars.compiled(spec) if spec else None for _, spec in rows])
    histories: list[list[int]] = [[] for _ in rows]
    done = [False] * len(rows)
    input_ids = torch.zeros((len(rows), 1), dtype=torch.long)  # the "prompt"
    for _ in range(steps):
        scores = torch.stack([model.logits(seed, history) for (seed, _), history in zip(rows, histories, strict=True)])
        unmasked = scores.clone()
        scores = processor(input_ids, scores)
        chosen = scores.argmax(-1).tolist()
        for row, ((_, spec), token) in enumerate(zip(rows, chosen, strict=True)):
            if spec is None:
                assert torch.equal(scores[row], unmasked[row])  # free rows are never touched
            if done[row]:
                chosen[row] = 0  # generate() pads a finished row
                continue
            histories[row].append(token)
            done[row] = token in STOP_IDS
        input_ids = torch.cat([input_ids, torch.tensor(chosen).unsqueeze(1)], dim=1)
        constrained = [done[row] for row, (_, spec) in enumerate(rows) if spec is not None]
        if constrained and all(constrained):
            break
    return histories


@pytest.mark.model
def test_mixed_batch_answers_parse_validate_and_match_the_answers_alone(grammars, tokenizer_and_vocab) -> None:
    tokenizer, vocab_size = tokenizer_and_vocab
    model = _FakeModel(tokenizer, vocab_size)
    enums = obj(severity={"enum": ["mild", "moderate", "severe"]}, admitted={"type": "boolean"})
    rows = [(1, summary_spec()), (2, None), (3, caller_spec(NESTED)), (4, caller_spec(enums)), (5, summary_spec())]
    batched = _decode(model, grammars, rows, steps=400)
    for (seed, spec), tokens in zip(rows, batched, strict=True):
        alone = _decode(model, grammars, [(seed, spec)], steps=400)[0]
        if spec is None:  # free rows run on until the batch's constrained rows are done
            assert alone[: len(tokens)] == tokens
            continue
        assert alone == tokens
        assert tokens[-1] in STOP_IDS, "a constrained row must close its object and stop"
        value = json.loads(tokenizer.decode(tokens[:-1]))
        jsonschema.validate(value, spec.schema)
        jsonschema.validate(value, json.loads(spec.grammar))


@pytest.mark.model
def test_random_walks_on_the_built_in_schema_always_validate(grammars, tokenizer_and_vocab) -> None:
    tokenizer, vocab_size = tokenizer_and_vocab
    model = _FakeModel(tokenizer, vocab_size)
    seeds = random.Random(11).sample(range(10_000), 3)
    for tokens in _decode(model, grammars, [(seed, summary_spec()) for seed in seeds], steps=400):
        assert tokens[-1] in STOP_IDS
        jsonschema.validate(json.loads(tokenizer.decode(tokens[:-1])), SUMMARY_SCHEMA)
