"""The dummy image's cost on vLLM with prefix caching: later notes, with and without it (issue 18).

    python -m bench.dummy_image                        # the stand-in: ~3 min on 2 cores
    python -m bench.dummy_image --model DIR --dtype bfloat16 --block real-shapes
                                                       # bench.rehearsal's checkpoint (MedGemma's shapes)

Every summarize job starts with the same system text; with ``DUMMY_IMAGE=true`` the same white
image follows it, then the note (``GenerationRequest.messages``' order). vLLM's prefix cache
keys a block by its tokens and the images in it, so from the second note on, the system text
and the dummy image should come from the cache: their KV blocks are reused and the vision
tower does not run. This measures it on one vLLM engine (``ENGINE=vllm``, started as
``handler.warmup`` starts it), one job at a time, the two variants taking turns note by note:

* prefill tokens actually computed: the prompt's tokens less vLLM's ``num_cached_tokens``;
* time to first token: submit to the one-token answer (``max_tokens=1``, greedy), wall clock.

The first note of each variant is reported apart (nothing of it is cached); both caches are
emptied after a warm-up job. Document text comes from ``raw/*.md`` and is never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.common import REPO_ROOT, Report, command_line, sample
from bench.engines import ENGINE_ENV

RESULTS_PATH = REPO_ROOT / "bench" / "RESULTS.md"
VLLM_ENV = {**ENGINE_ENV["vllm eager"], "DUMMY_IMAGE": "true"}


@dataclass(frozen=True)
class FirstToken:
    prompt_tokens: int
    cached_tokens: int
    seconds: float

    @property
    def computed(self) -> int:
        return self.prompt_tokens - self.cached_tokens


def measure(worker: Any, job_input: dict[str, Any], request_id: str) -> FirstToken:
    """One job's prompt, as the worker builds it, answered with one greedy token on the worker's vLLM."""
    from vllm import SamplingParams

    from medgemma.request import parse_job_input

    engine = worker.engine
    prepared = asyncio.run(engine.prepare(parse_job_input(job_input, worker.settings)))
    params = SamplingParams(max_tokens=1, temperature=0.0)

    async def generate() -> tuple[Any, float]:
        started = time.perf_counter()
        outputs = [output async for output in engine.llm.generate(prepared.features, params, request_id)]
        return outputs[-1], time.perf_counter() - started

    output, seconds = engine.call(generate()).result()
    return FirstToken(len(output.prompt_token_ids), output.num_cached_tokens or 0, seconds)


def run(args: argparse.Namespace, report: Report) -> None:
    import handler  # first: it sets OMP_WAIT_POLICY before torch is imported, as in production
    from bench.common import CHILD_ENV
    from bench.documents import load_documents
    from medgemma.settings import Settings
    from medgemma.worker import Worker

    env = {**os.environ, **CHILD_ENV, **VLLM_ENV, "MODEL_ID": args.model}
    if args.dtype:
        env["DTYPE"] = args.dtype
    with_dummy = handler.warmup(Settings.from_env(env))
    engine = with_dummy.engine
    without = Worker(replace(with_dummy.settings, dummy_image=False), engine)
    variants = {"dummy image": with_dummy, "no image": without}
    documents, source = load_documents(args.docs, args.doc_chars)
    cache = engine.llm.vllm_config.cache_config
    report.notes += [
        f"model: {engine.info.source}; run mode: {engine.info.run_mode}; vLLM prefix caching: "
        f"{'on' if cache.enable_prefix_caching else 'OFF'} (block size {cache.block_size} tokens)",
        f"documents: {source}; summarize mode; one job at a time; the variants take turns note by note",
        "computed = prompt tokens - vLLM's num_cached_tokens; time to first token: max_tokens=1, greedy, wall clock",
    ]

    measure(with_dummy, {"text": "Warm-up.", "system_prompt": "Warm-up."}, "warm-up")
    engine.call(engine.llm.reset_prefix_cache()).result()
    engine.call(engine.llm.reset_mm_cache()).result()

    results: dict[str, list[FirstToken]] = {name: [] for name in variants}
    for index, text in enumerate(documents):
        order = list(variants) if index % 2 == 0 else list(reversed(variants))
        for name in order:
            results[name].append(measure(variants[name], {"text": text}, f"note-{index}-{name}"))

    for name, runs in results.items():
        first, later = runs[0], runs[1:]
        report.section(name)
        report.add(
            "first note: prompt / computed tokens, time to first token",
            f"{first.prompt_tokens} / {first.computed}, {first.seconds:.3f} s",
        )
        report.add(
            f"later notes ({len(later)}): prompt / cached / computed tokens (median)",
            f"{statistics.median(r.prompt_tokens for r in later):.0f} / "
            f"{statistics.median(r.cached_tokens for r in later):.0f} / "
            f"{statistics.median(r.computed for r in later):.0f}",
        )
        report.add(f"later notes ({len(later)}): time to first token", sample((r.seconds for r in later), "s").show(3))
    report.section("dummy image / no image, later notes")
    for label, value in (
        ("computed tokens", lambda r: r.computed),
        ("time to first token", lambda r: r.seconds),
    ):
        ratios = [value(a) / value(b) for a, b in zip(results["dummy image"][1:], results["no image"][1:], strict=True)]
        report.add(f"{label}, note by note (median)", f"{statistics.median(ratios):.2f}x")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="", help="MODEL_ID (default: the embedded stand-in)")
    parser.add_argument("--dtype", default="", help="DTYPE (default: the worker's, float32 on CPU)")
    parser.add_argument("--docs", type=int, default=6, help="notes from raw/*.md (6)")
    parser.add_argument("--doc-chars", type=int, default=600, help="each note cut to this many characters (600)")
    parser.add_argument("--block", default="stand-in", help="the results block's suffix (stand-in)")
    parser.add_argument("--out", default=str(RESULTS_PATH), help="results file (its block is rewritten)")
    args = parser.parse_args(argv)
    if args.docs < 2:
        parser.error("--docs must be at least 2: the first note of each variant is reported apart")
    report = Report(
        f"The dummy image's cost on vLLM with prefix caching ({args.block})",
        command_line("bench.dummy_image"),
        Path(args.out),
        block=f"bench.dummy_image.{args.block}",
    )
    report.run(lambda: run(args, report))


if __name__ == "__main__":
    main()
