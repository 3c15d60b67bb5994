"""Jobs through the real handler on the embedded stand-in model.

The stand-in is a base model, so these tests assert structure and behaviour
(shapes, counts, errors, that images change the prompt), never wording.
"""

from __future__ import annotations

import pytest
from PIL import Image

import handler
from medgemma.images import encode_image
from medgemma.standin import MM_TOKENS_PER_IMAGE
from tests.conftest import run

pytestmark = pytest.mark.model

NOTE = (
    "SYNTHETIC NOTE. 58-year-old man with type 2 diabetes and hypertension, seen for "
    "three days of productive cough and fever to 38.6 C. Right basal crackles. CXR: right "
    "lower lobe consolidation. Started amoxicillin 1 g three times daily for 5 days."
)
OUTPUT_KEYS = {
    "output",
    "mode",
    "model",
    "run_mode",
    "usage",
    "finish_reason",
    "used_dummy_image",
    "batch_size",
    "timings",
    "adapter",
    "provenance",
}


def job(**fields) -> dict:
    return {"id": "test-job", "input": {"text": NOTE, **fields}}


def assert_answer(result: dict) -> None:
    assert "error" not in result, result
    assert set(result) == OUTPUT_KEYS
    assert isinstance(result["output"], str) and result["output"].strip()
    assert result["finish_reason"] in ("stop", "length")
    assert result["usage"]["prompt_tokens"] > 0
    assert 0 < result["usage"]["completion_tokens"] <= 12  # TEST_ENV's MAX_NEW_TOKENS
    assert result["model"].startswith("embedded-standin:") and result["run_mode"] == "cpu/none/float32"
    assert {"queue_s", "prepare_s", "time_to_first_token_s", "generate_s", "total_s"} <= set(result["timings"])


def test_summarize(worker_with_dummy):
    result = run(handler.handler(job(mode="summarize")))
    assert_answer(result)
    assert result["mode"] == "summarize" and result["used_dummy_image"] is True


def test_general_question(worker):
    result = run(
        handler.handler(
            {"id": "q", "input": {"text": "What is the first-line treatment of anaphylaxis?", "mode": "general"}}
        )
    )
    assert_answer(result)
    assert result["mode"] == "general"


def test_custom_system_prompt_changes_the_prompt(worker):
    default = run(handler.handler(job(mode="general")))
    custom = run(
        handler.handler(job(mode="general", custom_prompt="List the medications only, one per line, nothing else."))
    )
    assert_answer(custom)
    assert custom["usage"]["prompt_tokens"] != default["usage"]["prompt_tokens"]


def test_with_an_image(vision_worker):
    image = Image.radial_gradient("L").convert("RGB")
    result = run(handler.handler(job(image="data:image/png;base64," + encode_image(image))))
    assert_answer(result)
    assert result["used_dummy_image"] is False


def test_two_images_cost_two_images_of_tokens(vision_worker):
    one = run(handler.handler(job(images=[encode_image(Image.new("RGB", (64, 64), "red"))])))
    two = run(handler.handler(job(images=[encode_image(Image.new("RGB", (64, 64), c)) for c in ("red", "blue")])))
    assert_answer(two)
    # each image adds its soft tokens plus boi/eoi and the surrounding newlines
    assert two["usage"]["prompt_tokens"] - one["usage"]["prompt_tokens"] >= MM_TOKENS_PER_IMAGE + 2


def test_text_only_with_dummy_image_on_and_off(vision_worker, worker_with_dummy):
    with_dummy = run(worker_with_dummy.run(job()))
    text_only = run(vision_worker.run(job()))
    assert_answer(with_dummy)
    assert_answer(text_only)
    assert with_dummy["used_dummy_image"] is True and text_only["used_dummy_image"] is False
    assert with_dummy["usage"]["prompt_tokens"] - text_only["usage"]["prompt_tokens"] >= MM_TOKENS_PER_IMAGE


def test_greedy_is_deterministic(worker):
    first = run(handler.handler(job()))
    second = run(handler.handler(job()))
    assert first["output"] == second["output"]


def test_sampling_with_a_seed_is_reproducible(worker):
    first = run(handler.handler(job(temperature=1.0, top_p=0.9, seed=7)))
    second = run(handler.handler(job(temperature=1.0, top_p=0.9, seed=7)))
    assert_answer(first)
    assert first["output"] == second["output"]


def test_max_new_tokens_limits_the_answer(worker):
    result = run(handler.handler(job(max_tokens=3)))
    assert result["usage"]["completion_tokens"] <= 3
    assert result["finish_reason"] in ("stop", "length")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"mode": "triage"}, "mode: must be one of summarize, general"),
        ({"temperature": "warm"}, "temperature: must be a number"),
        ({"max_new_tokens": 10**6}, "max_new_tokens: must be between 1 and"),
        ({"image": "definitely-not-base64!"}, "image: is not valid base64"),
        ({"image": encode_image(Image.new("1", (9000, 9000)))}, "image: image is 9000x9000 pixels"),
        ({"stream": True}, "stream: this worker was started without STREAMING=true"),
        ({"colour": "blue"}, "colour: is not a known field"),
    ],
)
def test_bad_input_fails_alone_and_the_worker_keeps_serving(worker, fields, message):
    result = run(handler.handler(job(**fields)))
    assert set(result) == {"error"}
    assert result["error"].startswith(message.split(":")[0] + ":")
    assert message.split(": ", 1)[1] in result["error"]
    assert "\n" not in result["error"]
    assert_answer(run(handler.handler(job())))


def test_missing_input_is_an_error(worker):
    assert run(handler.handler({"id": "x"})) == {"error": "input: must be a JSON object, got NoneType"}


def test_input_longer_than_the_context_is_a_clear_error(worker):
    # The stand-in's context is 32k tokens; Gemma splits digits one per token, so this
    # is ~40k tokens while staying under the character limit.
    long_text = "1234567890" * 4_000
    result = run(handler.handler(job(text=long_text)))
    assert result["error"].startswith("text: the prompt is ")
    assert "over the model's context of 32768 tokens" in result["error"]
    assert_answer(run(handler.handler(job())))


def test_thinking_blocks_are_stripped(transformers_worker):
    """MedGemma 1.5 may think between <unused94> and <unused95>: only the answer is returned."""
    from medgemma.decoding import RowDecoder, think_token_ids

    tokenizer = transformers_worker.engine.backend.tokenizer
    think_ids = think_token_ids(tokenizer)
    start, end = think_ids
    answer = tokenizer.encode("Pneumonia, treated.", add_special_tokens=False)
    thought = tokenizer.encode("thought: the patient has", add_special_tokens=False)
    eos = [1, 106]

    def decode(ids: list[int]) -> tuple[str, str]:
        streamed: list[str] = []
        decoder = RowDecoder(tokenizer, eos, think_ids, streamed.append)
        for token in ids:
            decoder.push(token)
        return decoder.text(), "".join(streamed)

    closed = decode([start, *thought, end, *answer, eos[0], *thought])
    assert closed == ("Pneumonia, treated.", "Pneumonia, treated.")
    unclosed = decode([*answer, start, *thought])
    assert unclosed == ("Pneumonia, treated.", "Pneumonia, treated.")


def test_no_generation_flag_warnings_on_a_greedy_call(worker, caplog):
    caplog.set_level("WARNING")
    run(handler.handler(job()))
    assert not [r for r in caplog.records if "generation flags" in r.getMessage() or "not valid" in r.getMessage()]


def test_logs_carry_no_note_text_or_answer(worker, caplog):
    caplog.set_level("DEBUG")
    result = run(handler.handler(job()))
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "job test-job done" in logged and "prompt_tokens=" in logged
    assert "58-year-old" not in logged and "amoxicillin" not in logged
    assert result["output"] not in logged
