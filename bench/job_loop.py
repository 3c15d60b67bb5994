"""MAX_CONCURRENCY measured through RunPod's own job loop: 32 notes queued at once (issue 19).

    python -m bench.job_loop                                  # the stand-in on CPU: ~20 min on 2 cores
    python -m bench.job_loop --concurrency 1 8 --no-transformers   # a subset

For each ``MAX_CONCURRENCY``, one worker (``python handler.py``: the runpod SDK's job loop, as on
RunPod) takes its jobs from ``tests/runpod_worker_api.py``'s double of RunPod's worker API on
127.0.0.1. The jobs: ``--jobs`` summarize jobs, the raw/*.md notes in turn cut to ``--doc-chars``
(each with its copy number, so no two prompts are the same), all queued at once, each asking for
``--new-tokens`` greedy tokens. Measured on the double's clock:

* docs/s: the jobs over the time from their queueing to the last result;
* latency: each job's queueing to its result, p50 and p95;
* the batches vLLM ran: each answer's ``batch_size`` (the most answers generated alongside it),
  mean and max, and the most jobs the SDK held at once (the double's count).

The worker runs at its defaults (``DUMMY_IMAGE=true``, ``MAX_NEW_TOKENS``, the KV cache) with
``ENFORCE_EAGER=true``; the ``default`` row leaves ``MAX_CONCURRENCY`` unset, so the worker's own
figure applies (its log's ``max_concurrency``). The transformers engine runs once, at its default.
Note text is never printed.
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.common import REPO_ROOT, Report, command_line
from tests.runpod_worker_api import WorkerApiDouble, start_loop_worker, stop_loop_worker

RESULTS_PATH = REPO_ROOT / "bench" / "RESULTS.md"
BLOCK = "bench.job_loop"
CONCURRENCY = ("1", "3", "8", "16", "32", "default")
VLLM_ENV = {"ENGINE": "vllm", "ENFORCE_EAGER": "true"}
TRANSFORMERS_ENV = {"ENGINE": "transformers"}
JOB_TIMEOUT_S = 1800
#: The knee: the least concurrency within this share of the best docs/s.
KNEE_SHARE = 0.9
_MAX_CONCURRENCY = re.compile(r"cold start done .* max_concurrency=(\d+)")


@dataclass(frozen=True)
class Run:
    engine: str
    concurrency: str  # as set: a number, or "default"
    worker_concurrency: int  # what the worker logged
    docs_per_s: float
    p50_s: float
    p95_s: float
    batch_mean: float
    batch_max: int
    held_max: int


def notes(jobs: int, chars: int) -> list[str]:
    documents = [path.read_text()[:chars] for path in sorted((REPO_ROOT / "raw").glob("*.md"))]
    return [f"{documents[k % len(documents)]}\n\n(copy {k // len(documents) + 1})" for k in range(jobs)]


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def measure(engine_env: dict[str, str], concurrency: str, texts: list[str], new_tokens: int) -> Run:
    """One worker at ``concurrency``, all of ``texts`` queued at once; the figures from the double."""
    env = dict(engine_env)
    if concurrency != "default":
        env["MAX_CONCURRENCY"] = concurrency
    with tempfile.TemporaryDirectory(prefix="job-loop-") as directory, WorkerApiDouble() as api:
        worker = start_loop_worker(api, Path(directory), env)
        try:
            inputs = [{"text": text, "max_new_tokens": new_tokens, "temperature": 0} for text in texts]
            jobs = api.wait_done(api.queue(*inputs), JOB_TIMEOUT_S)
        finally:
            log = stop_loop_worker(worker)
        failed = [job.result for job in jobs if not job.result or "output" not in job.result]
        if failed:
            raise RuntimeError(f"{len(failed)} jobs failed; the first: {str(failed[0])[:200]}")
        answers = [job.result["output"] for job in jobs if job.result]
        latencies = [job.done - job.queued for job in jobs if job.done is not None]
        first = min(job.queued for job in jobs)
        last = max(job.done for job in jobs if job.done is not None)
        batches = [answer["batch_size"] for answer in answers]
        logged = _MAX_CONCURRENCY.search(log)
        return Run(
            engine=engine_env["ENGINE"],
            concurrency=concurrency,
            worker_concurrency=int(logged.group(1)) if logged else 0,
            docs_per_s=len(jobs) / (last - first),
            p50_s=percentile(latencies, 0.5),
            p95_s=percentile(latencies, 0.95),
            batch_mean=statistics.fmean(batches),
            batch_max=max(batches),
            held_max=api.max_in_flight(),
        )


def knee(runs: list[Run]) -> Run:
    """The least concurrency that gets within KNEE_SHARE of the best docs/s."""
    best = max(run.docs_per_s for run in runs)
    return min((run for run in runs if run.docs_per_s >= KNEE_SHARE * best), key=lambda run: run.worker_concurrency)


def add(report: Report, run: Run, baseline: Run | None) -> None:
    label = f"{run.engine}, MAX_CONCURRENCY={run.concurrency}" + (
        f" ({run.worker_concurrency})" if run.concurrency == "default" else ""
    )
    ratio = f" ({run.docs_per_s / baseline.docs_per_s:.2f}x concurrency 1)" if baseline else ""
    report.add(
        label,
        f"{run.docs_per_s:.3f} docs/s{ratio}; latency p50 {run.p50_s:.1f} s, p95 {run.p95_s:.1f} s; "
        f"batch mean {run.batch_mean:.1f}, max {run.batch_max}; jobs held at once {run.held_max}",
    )


def run(args: argparse.Namespace, report: Report) -> None:
    texts = notes(args.jobs, args.doc_chars)
    report.notes += [
        f"jobs: {args.jobs} summarize jobs, raw/*.md in turn cut to {args.doc_chars} characters (plus a copy "
        f"number), queued at once; {args.new_tokens} greedy new tokens each",
        "worker: python handler.py (runpod.serverless.start's job loop) against tests/runpod_worker_api.py on "
        "127.0.0.1; the worker's default settings (DUMMY_IMAGE=true, MAX_NEW_TOKENS 512, vLLM's KV cache "
        "VLLM_CPU_KVCACHE_SPACE 2 GiB) with ENFORCE_EAGER=true; one worker start per row",
        "docs/s: jobs / (first queued to last result); latency: queued to result; batch: each answer's "
        "batch_size; jobs held: the most the SDK had taken and not finished",
        f"knee: the least concurrency within {KNEE_SHARE:.0%} of the best docs/s",
    ]
    runs: list[Run] = []
    report.section("vLLM")
    for concurrency in args.concurrency:
        found = measure(VLLM_ENV, concurrency, texts, args.new_tokens)
        runs.append(found)
        add(report, found, runs[0] if runs[0].worker_concurrency == 1 else None)
        report.write()
    if len(runs) > 1:
        bend = knee(runs)
        report.add("vLLM: the knee", f"MAX_CONCURRENCY {bend.worker_concurrency} ({bend.docs_per_s:.3f} docs/s)")
    if args.transformers:
        report.section("transformers")
        add(report, measure(TRANSFORMERS_ENV, "default", texts, args.new_tokens), None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--concurrency", nargs="+", default=list(CONCURRENCY), help="MAX_CONCURRENCY values, or default"
    )
    parser.add_argument("--jobs", type=int, default=32, help="jobs queued at once (32)")
    parser.add_argument("--doc-chars", type=int, default=1500, help="each note cut to this many characters (1500)")
    parser.add_argument("--new-tokens", type=int, default=64, help="max_new_tokens per job (64)")
    parser.add_argument("--no-transformers", dest="transformers", action="store_false", help="vLLM rows only")
    parser.add_argument("--out", type=Path, default=RESULTS_PATH, help="results file (its block is rewritten)")
    args = parser.parse_args(argv)
    report = Report(
        "MAX_CONCURRENCY through RunPod's job loop: 32 notes queued at once, stand-in, CPU",
        command_line("bench.job_loop"),
        args.out,
        block=BLOCK,
    )
    report.run(lambda: run(args, report))


if __name__ == "__main__":
    main()
