"""Constrained (JSON) against free decoding on the stand-in, through the real worker.

    python -m bench.structured            # ~10 min on 2 cores; writes its section of bench/RESULTS.md
    python -m bench.structured --quick    # ~3 min smoke run

What it measures, all in one process on one loaded model (``Worker.run`` jobs on the
transformers engine, one at a time unless said otherwise):

* per-token cost: the same documents summarized as the built-in JSON summary and as free
  text from the very same prompt (the JSON job's system prompt, schema instruction included,
  given as ``system_prompt``: only the grammar differs), interleaved job by job; decode time
  per token after the first (prefill excluded), both paths generating ``--new-tokens`` tokens
  (the free one pinned there with EOS suppressed, the JSON one ends there because the
  summary object is longer). Target: <= 1.10x.
* compile: the first constrained job's grammar (which also builds llguidance's view of the
  262k vocabulary, once per worker), a second schema once that is built, and the cached
  lookup every later job with the same schema pays; and how many compiles a run of jobs
  caused (must be one per distinct schema).
* a batch of 8: four JSON jobs (two built-in, two caller schemas) and four free ones
  submitted together, against the same eight as free text (the JSON jobs' free twins, as
  above); time per decoding step of the batch.

Document text comes from ``raw/*.md`` (synthetic notes when absent) and is never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from pathlib import Path
from typing import Any

from bench.common import REPO_ROOT, Report, Target, apply_presets, command_line, decode_rate, sample
from bench.sample_schemas import PROBLEMS_LOOSE

RESULTS_PATH = REPO_ROOT / "bench" / "RESULTS.md"
TITLE = "Structured output: constrained vs free decoding, CPU, embedded stand-in model"
NORMAL = {"reps": 3, "new_tokens": 32, "docs": 2}
QUICK = {"reps": 1, "new_tokens": 16, "docs": 1}
OVERHEAD_TARGET = Target(1.10, "x", at_least=False)

ENUMS = {
    "type": "object",
    "properties": {
        "severity": {"enum": ["mild", "moderate", "severe"]},
        "admit": {"type": "boolean"},
        "reason": {"type": "string", "maxLength": 120},
    },
    "required": ["severity", "admit", "reason"],
}
NESTED = PROBLEMS_LOOSE


class _TimedProcessors:
    """Wraps ``Grammars.processor`` so every call of the processors it makes is timed: grammar work alone."""

    def __init__(self, grammars: Any):
        self._make = grammars.processor
        self.seconds: list[float] = []
        grammars.processor = self

    def __call__(self, compiled: Any) -> Any:
        processor, seconds = self._make(compiled), self.seconds

        def timed(input_ids: Any, scores: Any) -> Any:
            started = time.perf_counter()
            try:
                return processor(input_ids, scores)
            finally:
                seconds.append(time.perf_counter() - started)

        return timed


def _job(index: int, text: str, new_tokens: int, **extra: Any) -> dict[str, Any]:
    return {"id": f"bench-structured-{index}", "input": {"text": text, "max_new_tokens": new_tokens, **extra}}


def _free_twin(job: dict[str, Any], settings: Any) -> dict[str, Any]:
    """The same job as free text from the identical prompt: its system prompt, without the grammar."""
    from medgemma.request import parse_job_input

    fields = {key: value for key, value in job["input"].items() if key not in ("format", "json_schema")}
    if fields != job["input"]:
        fields["system_prompt"] = parse_job_input(job["input"], settings).system_prompt
    return {**job, "input": fields}


async def _run(args: argparse.Namespace, report: Report) -> None:
    import handler  # first: it sets OMP_WAIT_POLICY before torch is imported, as in production
    from bench.common import CHILD_ENV
    from bench.documents import load_documents
    from medgemma.settings import Settings
    from medgemma.structured import caller_spec, summary_spec

    worker = handler.warmup(Settings.from_env({**os.environ, **CHILD_ENV}))
    backend = worker.engine.backend
    grammars = backend.grammars
    documents, source = load_documents(args.docs, 1000)
    report.notes.append(f"documents: {source}; summarize mode; greedy")
    report.notes.append(f"run mode: {worker.engine.info.run_mode}; engine: {worker.engine.info.engine}")
    n = args.new_tokens

    async def run(job: dict[str, Any], pinned: bool) -> dict[str, Any]:
        # Pinned: EOS suppressed until max_new_tokens, so the free path does exactly n tokens.
        backend.generation_hook = (lambda key: {"min_new_tokens": key.max_new_tokens}) if pinned else None
        try:
            result = await worker.run(job)
        finally:
            backend.generation_hook = None
        if "error" in result:
            raise RuntimeError(f"job failed: {result['error']}")
        return result

    # -- compile --------------------------------------------------------------------------------
    report.section("Grammar compile (llguidance), once per schema per worker")
    started = time.perf_counter()
    grammars.compiled(summary_spec())
    first = time.perf_counter() - started
    started = time.perf_counter()
    grammars.compiled(caller_spec(NESTED))
    second = time.perf_counter() - started
    lookups = []
    for _ in range(50):
        started = time.perf_counter()
        grammars.compiled(summary_spec())
        lookups.append(time.perf_counter() - started)
    report.add("first use: vocabulary view (once per worker) + built-in summary schema", f"{first:.2f} s")
    report.add("a new caller schema (nested, enums), vocabulary view already built", f"{second * 1e3:.1f} ms")
    report.add(
        "cached: a later job with a schema already compiled",
        f"{statistics.median(lookups) * 1e6:.0f} us (median of 50)",
    )

    # -- per token, one job at a time ----------------------------------------------------------
    report.section(f"One job at a time: {n} new tokens, the built-in JSON summary vs free text from the same prompt")
    twin = lambda job: _free_twin(job, worker.settings)  # noqa: E731
    await run(twin(_job(0, documents[0], n, format="json")), pinned=True)  # warm-ups, untimed
    await run(_job(0, documents[0], n, format="json"), pinned=False)
    compiles_before, json_jobs = grammars.compiles, 0
    free_rates: list[list[float]] = []
    json_rates: list[list[float]] = []
    incomplete = complete = 0
    for _ in range(args.reps):
        free_rep, json_rep = [], []
        for index, text in enumerate(documents):
            job = _job(index, text, n, format="json")
            free = await run(twin(job), pinned=True)
            constrained = await run(job, pinned=False)
            json_jobs += 1
            for target, result in ((free_rep, free), (json_rep, constrained)):
                timings = result["timings"]
                target.append(
                    decode_rate(
                        result["usage"]["completion_tokens"], timings["time_to_first_token_s"], timings["generate_s"]
                    )
                )
            complete += constrained["parsed"] is not None
            incomplete += constrained["parsed"] is None
        free_rates.append(free_rep)
        json_rates.append(json_rep)
    free = sample((statistics.mean(rep) for rep in free_rates), "tok/s")
    constrained = sample((statistics.mean(rep) for rep in json_rates), "tok/s")
    ratio = free.median / constrained.median
    report.add("decode tokens/s, free text", free.show())
    report.add("decode tokens/s, JSON (built-in summary)", constrained.show())
    report.add("time per token, JSON / free", f"{ratio:.3f}x", OVERHEAD_TARGET, ratio)
    report.add(
        "grammar compiles during these JSON jobs",
        f"{grammars.compiles - compiles_before} for {json_jobs} jobs of one schema",
        Target(0, "", at_least=False),
        grammars.compiles - compiles_before,
    )
    report.add("JSON answers complete / cut off at max_new_tokens", f"{complete} / {incomplete}")

    # -- a batch of 8 mixed ----------------------------------------------------------------------
    report.section(f"A batch of 8 ({n} new tokens): 4 JSON + 4 free vs the same 8 as free text")

    def mixed_jobs() -> list[dict[str, Any]]:
        texts = [documents[index % len(documents)] for index in range(8)]
        extra = [
            {"format": "json"},
            {"format": "json"},
            {"json_schema": ENUMS},
            {"json_schema": NESTED},
            {},
            {},
            {},
            {},
        ]
        return [_job(index, text, n, **fields) for index, (text, fields) in enumerate(zip(texts, extra, strict=True))]

    def free_jobs() -> list[dict[str, Any]]:
        return [twin(job) for job in mixed_jobs()]

    async def batch(jobs: list[dict[str, Any]]) -> tuple[float, list[dict[str, Any]]]:
        results = await asyncio.gather(*(worker.run(job) for job in jobs))
        failures = [result["error"] for result in results if "error" in result]
        if failures:
            raise RuntimeError(f"{len(failures)} of {len(jobs)} jobs failed: {failures[0]}")
        if max(result["batch_size"] for result in results) != len(jobs):
            raise RuntimeError("the jobs did not form one batch")
        steps = max(result["usage"]["completion_tokens"] for result in results)
        timings = results[0]["timings"]  # one generate call: the same for every row
        return (timings["generate_s"] - timings["time_to_first_token_s"]) / max(steps - 1, 1), results

    await batch(mixed_jobs())  # warm-up
    timer = _TimedProcessors(grammars)
    mixed_steps, free_steps, parsed_ok = [], [], True
    for _ in range(args.reps):
        seconds, results = await batch(mixed_jobs())
        mixed_steps.append(seconds)
        parsed_ok &= all(
            (result["parsed"] is not None) == (result["finish_reason"] == "stop")
            for result in results
            if "parsed" in result
        )
        free_steps.append((await batch(free_jobs()))[0])
    mixed, plain = sample(mixed_steps, "s"), sample(free_steps, "s")
    report.add("time per decoding step, 8 free", plain.show(3))
    report.add("time per decoding step, 4 JSON + 4 free", mixed.show(3))
    step_ratio = mixed.median / plain.median
    report.add("time per step, mixed / free", f"{step_ratio:.3f}x", OVERHEAD_TARGET, step_ratio)
    grammar_step = statistics.median(timer.seconds)
    report.add(
        "grammar work per decoding step, 4 JSON rows (timed inside generate, median over the steps)",
        f"{grammar_step * 1e3:.2f} ms median = {grammar_step / plain.median * 100:.1f}% of a free step",
    )
    report.add("JSON rows: parsed exactly when finish_reason is stop", "yes" if parsed_ok else "NO")
    worker.engine.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, help="repetitions (3; quick 1)")
    parser.add_argument("--new-tokens", type=int, help="tokens per job (32; quick 16)")
    parser.add_argument("--docs", type=int, help="documents from raw/*.md (2; quick 1)")
    parser.add_argument("--quick", action="store_true", help="a smoke run with tiny settings")
    parser.add_argument(
        "--out", default=str(RESULTS_PATH), help="results file (its bench.structured block is rewritten)"
    )
    args = parser.parse_args(argv)
    apply_presets(args, NORMAL, QUICK)
    report = Report(TITLE, command_line("bench.structured"), Path(args.out), block="bench.structured")
    report.notes.append(
        "time per token: decode only (tokens after the first over generate time after the first token), "
        "per repetition the mean over the documents, then the median over repetitions; ratios are of medians "
        "taken in this run"
    )
    report.run(lambda: asyncio.run(_run(args, report)))


if __name__ == "__main__":
    main()
