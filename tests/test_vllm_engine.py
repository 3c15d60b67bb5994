"""The vLLM engine on the stand-in: parity with transformers, aborts, refusals, start-up.

The job tests of the other files already run on both engines (the ``worker`` fixture); these
cover what only the vLLM engine has. All share the session's one vLLM engine (eager, 1 GiB
KV cache), except the start-up checks, which start their own.
"""

from __future__ import annotations

import ast
import asyncio
import os
import subprocess
import sys
import time
from dataclasses import replace

import pytest
from transformers import AutoProcessor

from medgemma.engines.capacity import jobs_held
from medgemma.errors import SettingsError
from medgemma.request import parse_job_input
from medgemma.standin import STANDIN_DIRNAME
from medgemma.worker import Worker
from tests.conftest import REPO, TEST_ENV, VLLM_TEST_ENV, run
from tests.test_vllm_lifetime import left_after

pytestmark = pytest.mark.model

PARITY_TOKENS = 16
PARITY_CHARS = 1_500
PARITY_DOCS = 4  # the first four make the prompts of issue 15: 514, 484, 516 and 515 tokens
#: Float32 on both engines: top-two logits closer than this are a tie that summation order may break.
FLOAT_NOISE = 1e-3
NOTE = "SYNTHETIC NOTE. 71-year-old with new atrial fibrillation, rate 132, started on apixaban and metoprolol."


def parity_jobs() -> list[dict]:
    """The benchmark's documents (raw/ notes cut to 1,500 characters, summarize mode), the first four."""
    notes = [path.read_text()[:PARITY_CHARS] for path in sorted((REPO / "raw").glob("*.md"))[:PARITY_DOCS]]
    return [
        {"id": f"parity-{i}", "input": {"text": note, "max_new_tokens": PARITY_TOKENS}} for i, note in enumerate(notes)
    ]


def test_greedy_answers_agree_token_for_token_with_transformers(vllm_worker, transformers_worker):
    """Same prompt ids on both engines (no dummy image), 16 greedy tokens, each engine batching them."""
    text_only = Worker(replace(transformers_worker.settings, dummy_image=False), transformers_worker.engine)
    jobs = parity_jobs()
    for job in jobs:
        request = parse_job_input(job["input"], text_only.settings)
        ours = run(transformers_worker.engine.prepare(request)).prompt.ids
        assert run(vllm_worker.engine.prepare(request)).prompt.ids == ours, job["id"]

    async def all_at_once(worker: Worker) -> list[dict]:
        return await asyncio.gather(*(worker.run(job) for job in jobs))

    on_vllm, on_transformers = run(all_at_once(vllm_worker)), run(all_at_once(text_only))
    diverged = []
    for job, answer, expected in zip(jobs, on_vllm, on_transformers, strict=True):
        assert "error" not in answer and "error" not in expected, (answer, expected)
        assert answer["usage"]["prompt_tokens"] == expected["usage"]["prompt_tokens"]
        if (answer["output"], answer["usage"], answer["finish_reason"]) != (
            expected["output"],
            expected["usage"],
            expected["finish_reason"],
        ):
            diverged.append(job)
    # A pair may part where float32 summation order breaks a near tie; then it must be one.
    for job in diverged:
        step, gap = divergence(vllm_worker, transformers_worker, job)
        print(f"{job['id']} diverges at generated token {step}: top-two logit gap {gap:.2e}")
        assert gap < FLOAT_NOISE, (job["id"], step, gap)
    assert max(answer["batch_size"] for answer in on_vllm) > 1  # vLLM really generated them together


def divergence(vllm_worker: Worker, transformers_worker: Worker, job: dict) -> tuple[int, float]:
    """Where two greedy answers part, and the gap between transformers' top two logits there."""
    import torch
    from vllm import SamplingParams

    request = parse_job_input(job["input"], replace(transformers_worker.settings, dummy_image=False))
    prepared = run(vllm_worker.engine.prepare(request))
    params = SamplingParams(max_tokens=PARITY_TOKENS, temperature=0.0, stop_token_ids=vllm_worker.engine.stop_ids)

    async def vllm_ids() -> list[int]:
        outputs = [output async for output in vllm_worker.engine.llm.generate(prepared.features, params, "divergence")]
        return list(outputs[-1].outputs[0].token_ids)

    ids = run(asyncio.wrap_future(vllm_worker.engine.call(vllm_ids())))
    model = transformers_worker.engine.backend.model
    with torch.inference_mode():
        expected = model.generate(
            torch.tensor([prepared.prompt.ids]), attention_mask=torch.ones(1, prepared.prompt_tokens, dtype=torch.long),
            max_new_tokens=PARITY_TOKENS, do_sample=False, output_logits=True, return_dict_in_generate=True,
        )  # fmt: skip
    theirs = expected.sequences[0, len(prepared.prompt.ids) :].tolist()
    step = next(i for i, (a, b) in enumerate(zip(ids, theirs, strict=False)) if a != b)
    top = expected.logits[step][0].topk(2).values
    return step, float(top[0] - top[1])


def test_concurrent_answers_equal_answers_alone(vllm_worker):
    texts = [NOTE, "What is sepsis?", NOTE + " Potassium 5.9.", "SYNTHETIC. CT head: no acute haemorrhage."]

    async def together() -> list[dict]:
        return await asyncio.gather(
            *(vllm_worker.run({"id": f"c{i}", "input": {"text": t}}) for i, t in enumerate(texts))
        )

    results = run(together())
    for text, result in zip(texts, results, strict=True):
        alone = run(vllm_worker.run({"id": "alone", "input": {"text": text}}))
        assert result["output"] == alone["output"] and result["usage"] == alone["usage"]
    assert max(result["batch_size"] for result in results) > 1


async def _wait_for(condition, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def test_a_cancelled_job_aborts_its_vllm_request(vllm_worker):
    llm = vllm_worker.engine.llm

    async def cancel_one() -> None:
        job = asyncio.ensure_future(vllm_worker.run({"id": "long", "input": {"text": NOTE, "max_new_tokens": 2000}}))
        await _wait_for(lambda: llm.get_num_unfinished_requests() == 1)
        job.cancel()
        await asyncio.gather(job, return_exceptions=True)
        await _wait_for(lambda: llm.get_num_unfinished_requests() == 0, timeout_s=5)

    run(cancel_one())
    assert run(vllm_worker.run({"id": "after", "input": {"text": NOTE, "max_new_tokens": 3}}))["output"]


def test_a_stream_whose_reader_goes_away_aborts_its_vllm_request(vllm_worker):
    llm = vllm_worker.engine.llm

    async def read_one_delta() -> None:
        chunks = vllm_worker.run_stream({"id": "s", "input": {"text": NOTE, "stream": True, "max_new_tokens": 2000}})
        assert "delta" in await anext(chunks)
        await chunks.aclose()
        await _wait_for(lambda: llm.get_num_unfinished_requests() == 0, timeout_s=5)

    run(read_one_delta())


def test_a_stop_string_ends_the_vllm_request_early(vllm_worker):
    """The answer reaches its stop string in a few tokens; its 2,000-token request is aborted then."""
    plain = run(vllm_worker.run({"id": "p", "input": {"text": NOTE, "max_new_tokens": 6}}))
    stop = plain["output"].split()[1]  # a word the greedy answer reaches

    async def stopped() -> dict:
        job = {"id": "s", "input": {"text": NOTE, "max_new_tokens": 2000, "stop": [stop]}}
        return await asyncio.wait_for(vllm_worker.run(job), timeout=60)  # 2,000 tokens would take minutes

    result = run(stopped())
    assert result["finish_reason"] == "stop" and result["usage"]["completion_tokens"] <= 6
    assert vllm_worker.engine.llm.get_num_unfinished_requests() == 0


def test_the_engine_reports_what_vllm_planned_at_start_up(vllm_worker):
    info, config = vllm_worker.engine.info, vllm_worker.engine.llm.vllm_config
    assert (info.engine, info.vision, info.run_mode) == ("vllm", True, "cpu/none/float32")
    assert info.source.startswith("embedded-standin:") and info.source.endswith(STANDIN_DIRNAME)
    assert info.context_length == 32768
    # MAX_CONCURRENCY's default: how many typical jobs vLLM's KV cache holds, from what its engine core reports.
    engine = vllm_worker.engine
    groups = engine.call(engine.llm.engine_core.call_utility_async("get_kv_cache_group_metadata")).result()
    processor = AutoProcessor.from_pretrained(engine.llm.model_config.model)
    image_tokens = len(engine.tokenizer(processor.full_image_sequence, add_special_tokens=False).input_ids)
    typical = jobs_held(
        config.cache_config.num_gpu_blocks, groups, vllm_worker.settings.typical_job_tokens(image_tokens)
    )
    assert info.max_concurrency == min(config.scheduler_config.max_num_seqs, typical)
    # ... many more than the requests of the whole context it would hold.
    assert info.max_concurrency > 4 * config.cache_config.kv_cache_max_concurrency
    assert vllm_worker.max_concurrency == info.max_concurrency


def handler_run(extra_env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess, int]:
    """``handler.py`` run to its end, in a session of its own; its result and its pid (the session's id)."""
    env = {**os.environ, **TEST_ENV, **VLLM_TEST_ENV, "HF_ENDPOINT": "http://127.0.0.1:9", **extra_env}
    env.pop("HF_HUB_OFFLINE", None)
    command = [sys.executable, "handler.py", *args]
    pipe = subprocess.PIPE
    with subprocess.Popen(
        command, cwd=REPO, env=env, stdout=pipe, stderr=pipe, text=True, start_new_session=True
    ) as process:
        stdout, stderr = process.communicate(timeout=400)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr), process.pid


@pytest.mark.slow
@pytest.mark.own_vllm
def test_the_handler_answers_test_input_json_on_vllm(session_vllm_closed):
    """``ENGINE=vllm python handler.py`` runs test_input.json on the stand-in, with the dummy image (the image's default)."""
    result, session = handler_run({"DUMMY_IMAGE": "true"})
    assert result.returncode == 0, result.stderr[-3000:]
    # vLLM is closed before the interpreter exits: no traceback, and none of its processes left behind.
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert left_after(session) == []
    logged = result.stdout + result.stderr
    output = ast.literal_eval(logged.split("Job result: ", 1)[1].splitlines()[0])["output"]  # the SDK logs a repr
    assert output["run_mode"] == "cpu/none/float32" and output["model"].endswith(STANDIN_DIRNAME)
    assert output["output"] and output["used_dummy_image"] is True
    assert "engine=vllm" in logged


@pytest.mark.slow
@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"max_model_len": 65536}, "MAX_MODEL_LEN=65536 can't be served"),
        ({"cpu_kv_cache_gib": 100_000}, "VLLM_CPU_KVCACHE_SPACE=100000 GiB is more memory than this machine has free"),
    ],
)
@pytest.mark.own_vllm
def test_a_vllm_start_up_failure_is_one_line_with_the_fix(session_vllm_closed, vllm_settings, change, reason):
    """The second one is refused before vLLM starts (vLLM's own check comes a minute later, in its engine core)."""
    from medgemma.engines import vllm as vllm_engine
    from medgemma.sources import resolve_source

    settings = replace(vllm_settings, **change)
    with pytest.raises(SettingsError) as failure:
        vllm_engine.start(settings, resolve_source(settings))
    assert reason in str(failure.value) and "\n" not in str(failure.value), failure.value
