"""Stop strings: the answer ends before the first one, the same way on every engine."""

from __future__ import annotations

import pytest

import handler
from tests.conftest import run

pytestmark = pytest.mark.model

QUESTION = "SYNTHETIC. 70-year-old with sudden painless loss of vision in one eye. What is the differential?"
EOS = [1, 106]


@pytest.fixture(scope="module")
def tokenizer(transformers_worker):
    return transformers_worker.engine.backend.tokenizer


def decode(tokenizer, text: str, stops: list[str], streamed: bool = True) -> tuple[str, list[str], object]:
    """Feed ``text``'s tokens to a RowDecoder; return its text, the deltas it streamed, and itself."""
    from medgemma.decoding import RowDecoder, think_token_ids

    deltas: list[str] = []
    decoder = RowDecoder(tokenizer, EOS, think_token_ids(tokenizer), deltas.append if streamed else None, stops)
    for token in tokenizer.encode(text, add_special_tokens=False):
        decoder.push(token)
    return decoder.text(), deltas, decoder


def test_the_answer_ends_before_the_first_stop_string(tokenizer):
    text, deltas, decoder = decode(
        tokenizer, "Retinal artery occlusion. END Giant cell arteritis. STOP", ["STOP", "END"]
    )
    assert text == "Retinal artery occlusion." and "".join(deltas) == text
    assert decoder.stopped and decoder.finish_reason == "stop"
    assert decoder.generated == len(tokenizer.encode("Retinal artery occlusion. END", add_special_tokens=False))
    assert decode(tokenizer, "Retinal artery occlusion. END", ["END"], streamed=False)[0] == text


def test_streaming_never_sends_the_start_of_a_stop_string(tokenizer):
    # "\n\nNote" may be a stop string in the making until "Notes" shows it is not.
    text, deltas, decoder = decode(tokenizer, "One line.\n\nNotes follow.\n\nNote: none.", ["\n\nNote:"])
    assert text == "One line.\n\nNotes follow." and "".join(deltas) == text
    assert not any(delta.endswith(("\n", "\n\nNote")) for delta in deltas[:-1])
    assert decoder.finish_reason == "stop"


def test_without_a_match_nothing_changes(tokenizer):
    plain = decode(tokenizer, "Central retinal vein occlusion.", [])
    stopped = decode(tokenizer, "Central retinal vein occlusion.", ["zebra", "."])
    assert stopped[0] == "Central retinal vein occlusion" and plain[0] == "Central retinal vein occlusion."
    kept = decode(tokenizer, "Central retinal vein occlusion.", ["zebra"])
    assert kept[0] == plain[0] and "".join(kept[1]) == plain[0] and not kept[2].stopped


def test_thinking_is_never_matched(tokenizer):
    from medgemma.decoding import THINK_END, THINK_START

    text, _, decoder = decode(tokenizer, f"{THINK_START}END of thought{THINK_END}Embolus. END", ["END"])
    assert text == "Embolus." and decoder.stopped


@pytest.mark.parametrize("stream", [False, True])
def test_a_job_with_a_stop_string_ends_early(worker, stream):
    plain = run(handler.handler({"id": "p", "input": {"text": QUESTION, "max_new_tokens": 6}}))
    words = plain["output"].split()
    assert len(words) >= 2, plain
    stop = words[1]  # a word the greedy answer reaches
    job = {"id": "s", "input": {"text": QUESTION, "max_new_tokens": 6, "stop": [stop, "\u2603"], "stream": stream}}
    if stream:

        async def collect():
            return [chunk async for chunk in handler.stream_handler(job)]

        *deltas, final = run(collect())
        answer = "".join(chunk["delta"] for chunk in deltas)
    else:
        final = run(handler.handler(job))
        answer = final["output"]
    assert final["finish_reason"] == "stop", final
    assert plain["output"].startswith(answer) and stop not in answer
    # The engine ended the answer there: fewer tokens than the run that went on.
    assert final["usage"]["completion_tokens"] < plain["usage"]["completion_tokens"]
