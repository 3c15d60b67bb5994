"""The image's default path on CPU: vLLM's multimodal Gemma 3 against transformers, image and dummy-image jobs.

Both engines serve the one stand-in checkpoint. For each job the test checks what reaches each
vision tower (the prompt ids and the pixel values: vLLM's rendered request against the
transformers engine's batch, one image processor's output) and then the greedy answers.

Gemma 3 lets an image's tokens attend to each other both ways. transformers does so, and so does
vLLM on a GPU (``is_mm_prefix_lm``), but vLLM's CPU attention backend is chosen without that
check and attends causally over the image: on CPU the two engines run different attention over
every image, so their answers may differ from the image on. The test shows it: vLLM's answers are
compared with transformers' run with the same attention vLLM's platform gives (causal on CPU),
where they must agree token for token, or part at a tie: a top-two logit gap under FLOAT_NOISE on
both engines. Their distance from transformers' own (bidirectional) answers is reported.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace

import pytest
from PIL import Image

from medgemma.images import encode_image
from medgemma.request import parse_job_input
from medgemma.worker import Worker
from tests.test_vllm_engine import FLOAT_NOISE, parity_jobs, run

pytestmark = pytest.mark.model

TOKENS = 16


def image_jobs() -> list[dict]:
    """Four raw/ notes with the dummy image, two jobs with one image each, one with two."""
    red = encode_image(Image.new("RGB", (300, 200), (200, 30, 30)))
    gradient = encode_image(Image.radial_gradient("L").convert("RGB"))
    notes = [{**job, "input": {**job["input"], "max_new_tokens": TOKENS}} for job in parity_jobs()]
    return [
        *notes,
        {"id": "one-image", "input": {"text": "Describe the image.", "image": red, "max_new_tokens": TOKENS}},
        {"id": "gradient", "input": {"text": "What does this show?", "image": gradient, "max_new_tokens": TOKENS}},
        {"id": "two-images", "input": {"text": "Compare them.", "images": [red, gradient], "max_new_tokens": TOKENS}},
    ]


@dataclass(frozen=True)
class Greedy:
    ids: list[int]
    gaps: list[float]  # the top-two logit gap at each generated step


def vllm_greedy(worker: Worker, request) -> Greedy:
    """vLLM's greedy ids with its top-two logprobs (their gap is the logits' gap)."""
    from vllm import SamplingParams

    engine = worker.engine
    prepared = run(engine.prepare(request))
    params = SamplingParams(max_tokens=TOKENS, temperature=0.0, stop_token_ids=engine.stop_ids, logprobs=2)

    async def generate():
        outputs = [output async for output in engine.llm.generate(prepared.features, params, f"parity-{id(request)}")]
        return outputs[-1].outputs[0]

    output = engine.call(generate()).result()
    gaps = []
    for step in output.logprobs:
        top = sorted((entry.logprob for entry in step.values()), reverse=True)
        gaps.append(top[0] - top[1] if len(top) > 1 else float("inf"))
    return Greedy(list(output.token_ids), gaps)


def transformers_greedy(worker: Worker, request, bidirectional: bool) -> Greedy:
    """The transformers engine's own batch of one, greedy; ``bidirectional=False`` attends causally over images."""
    import torch

    backend = worker.engine.backend
    inputs = backend._collate([backend.prepare(request)])
    if not bidirectional:
        inputs.pop("token_type_ids")  # without them Gemma 3 builds its plain causal mask
    with torch.inference_mode():
        out = backend.model.generate(
            **inputs, max_new_tokens=TOKENS, do_sample=False, output_logits=True, return_dict_in_generate=True,
            eos_token_id=sorted(backend.eos_ids), pad_token_id=backend.pad_id,
        )  # fmt: skip
    ids = out.sequences[0, inputs["input_ids"].shape[1] :].tolist()
    gaps = [float(step[0].topk(2).values[0] - step[0].topk(2).values[1]) for step in out.logits]
    return Greedy(ids, gaps)


def parted(a: Greedy, b: Greedy) -> int | None:
    """The first generated step where two answers differ (a shorter one that stopped counts), or None."""
    for step, (x, y) in enumerate(zip(a.ids, b.ids, strict=False)):
        if x != y:
            return step
    return None if len(a.ids) == len(b.ids) else min(len(a.ids), len(b.ids))


@pytest.fixture(scope="module")
def with_dummy(vllm_worker, transformers_worker):
    """Both engines with DUMMY_IMAGE=true, the image's default."""
    return (
        Worker(replace(vllm_worker.settings, dummy_image=True), vllm_worker.engine),
        Worker(replace(transformers_worker.settings, dummy_image=True), transformers_worker.engine),
    )


def test_each_vision_tower_gets_the_same_prompt_ids_and_pixels(with_dummy):
    """vLLM's rendered request (what its engine core's tower receives) against the transformers engine's batch."""
    on_vllm, on_transformers = with_dummy
    engine, backend = on_vllm.engine, on_transformers.engine.backend
    # Rendering here fills the front end's image cache without the engine core seeing the images: clear
    # both caches before (so each image is sent whole the first time) and after (so later jobs stay served).
    engine.call(engine.llm.reset_mm_cache()).result()
    try:
        _compare_rendered_requests(engine, backend, on_transformers.settings)
    finally:
        engine.call(engine.llm.reset_mm_cache()).result()


def _compare_rendered_requests(engine, backend, settings) -> None:
    import torch
    from vllm.renderers.inputs.preprocess import parse_model_prompt

    sent: dict[str, torch.Tensor] = {}  # the pixels vLLM's front end sent, by the image's hash
    for job in image_jobs():
        request = parse_job_input(job["input"], settings)
        assert request.images or request.used_dummy_image, job["id"]
        prepared = run(engine.prepare(request))

        async def render(features=prepared.features):
            (rendered,) = await engine.llm.renderer.render_cmpl_async(
                [parse_model_prompt(engine.llm.model_config, features)]
            )
            return rendered

        rendered = engine.call(render()).result()
        theirs = backend.prepare(request).features
        assert rendered["prompt_token_ids"] == theirs["input_ids"].tolist(), job["id"]
        # One (patches, 3, 896, 896) tensor per image (MedGemma has no pan-and-scan: one patch). An image
        # vLLM's processor cache has seen (the dummy image, every job after the first) is sent by its hash.
        for digest, item in zip(rendered["mm_hashes"]["image"], rendered["mm_kwargs"]["image"], strict=True):
            if item is not None:
                sent[digest] = item["pixel_values"].data
        pixels = torch.cat([sent[digest] for digest in rendered["mm_hashes"]["image"]])
        assert pixels.dtype == theirs["pixel_values"].dtype and torch.equal(pixels, theirs["pixel_values"]), job["id"]


@pytest.mark.bench  # ~70 s of greedy runs on both engines; its table is in bench/RESULTS.md
def test_greedy_image_answers_agree_with_transformers_or_part_at_a_tie(with_dummy, capsys):
    from vllm.platforms import current_platform

    on_vllm, on_transformers = with_dummy
    # The attention vLLM's platform runs over an image (see the module docstring).
    bidirectional = not current_platform.is_cpu()
    rows, failures = [], []
    for job in image_jobs():
        request = parse_job_input(job["input"], on_transformers.settings)
        ours = vllm_greedy(on_vllm, request)
        same_attention = transformers_greedy(on_transformers, request, bidirectional)
        own = same_attention if bidirectional else transformers_greedy(on_transformers, request, True)
        step = parted(ours, same_attention)
        if step is None:
            verdict = "identical"
        else:
            gap_vllm = ours.gaps[step] if step < len(ours.gaps) else float("inf")
            gap_hf = same_attention.gaps[step] if step < len(same_attention.gaps) else float("inf")
            tie = max(gap_vllm, gap_hf) < FLOAT_NOISE
            verdict = (
                f"{'tie' if tie else 'DIVERGED'} at step {step}: gaps vLLM {gap_vllm:.2e}, transformers {gap_hf:.2e}"
            )
            if not tie:
                failures.append(job["id"])
        own_step = parted(ours, own)
        rows.append(f"| {job['id']} | {verdict} | {'identical' if own_step is None else f'from step {own_step}'} |")
    with capsys.disabled():
        attention = "bidirectional" if bidirectional else "causal"
        print(f"\n| job | vLLM vs transformers ({attention} over images) | vs transformers' bidirectional |")
        print("|---|---|---|")
        print("\n".join(rows))
    assert not failures, failures


def test_image_jobs_batched_with_text_jobs_answer_as_alone(with_dummy):
    """vLLM's continuous batch mixes image, dummy-image and text-only jobs; each answers as it does alone."""
    on_vllm, _ = with_dummy
    text_only = Worker(replace(on_vllm.settings, dummy_image=False), on_vllm.engine)
    jobs = [(on_vllm, job) for job in image_jobs()[3:]] + [(text_only, job) for job in parity_jobs()[:2]]

    async def together():
        return await asyncio.gather(*(worker.run(job) for worker, job in jobs))

    batched = run(together())
    for (worker, job), answer in zip(jobs, batched, strict=True):
        alone = run(worker.run(job))
        assert "error" not in answer, answer
        assert (answer["output"], answer["usage"]) == (alone["output"], alone["usage"]), job["id"]
    assert max(answer["batch_size"] for answer in batched) > 1
