"""Load run: N jobs, C at a time, through the worker's local API server; throughput, latency, memory.

    python -m bench.load                                 # 500 jobs at 8 concurrent: does RSS plateau?
    python -m bench.load --jobs 48 --concurrency 1,8     # one job at a time vs batched, same jobs
    python -m bench.load --quick                         # smoke run

It starts ``python handler.py --rp_serve_api`` on 127.0.0.1 (the stand-in, on CPU) and posts
jobs to ``/runsync`` from C threads. The local API server runs every request it receives at
once (it has no ``concurrency_modifier``), so C plays the part of ``MAX_CONCURRENCY``: C=1 is
what a worker with MAX_CONCURRENCY=1 sees while RunPod queues the rest. Each level runs the
same job list, in the same order.

The jobs are mixed: documents from ``raw/*.md`` cut to random lengths, both modes, two
``max_new_tokens`` values (jobs that can't share a batch), some with a real image, and about
one in ten a bad job (an unknown mode or field, bad base64, an over-long note) that must come
back as an error while the worker keeps serving. It reports documents/s, p50 and p95 latency
(request sent to answer received), the batch sizes formed, and the server's resident memory
sampled through the whole run. Nothing but loopback is contacted; no text is printed.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import random
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import requests

from bench.common import CHILD_ENV, REPO_ROOT, Report, Target, apply_presets, command_line, fmt_bytes
from bench.documents import load_documents
from bench.local_worker import LocalWorker, free_port, start_api_worker, stop_local_worker

RESULTS_PATH = REPO_ROOT / "bench" / "RESULTS.md"
SERVER_START_TIMEOUT_S = 600
REQUEST_TIMEOUT_S = 900
RSS_INTERVAL_S = 0.5
PLATEAU_TARGET = Target(5, "%", at_least=False)
NORMAL = {"jobs": 500, "concurrency": "8", "new_tokens": "2,6", "max_chars": 1500}
QUICK = {"jobs": 24, "concurrency": "1,8", "new_tokens": "2,4", "max_chars": 600}
BAD_INPUTS = (
    {"mode": "triage"},
    {"colour": "blue"},
    {"image": "definitely-not-base64!"},
    {"max_new_tokens": 10**6},
    {"text": "1234567890" * 4_000},  # ~40k tokens: over the stand-in's 32k context
)
BAD_SHARE = 0.1
IMAGE_SHARE = 0.05
SERVER_ENV = {**CHILD_ENV, "RUNPOD_LOG_LEVEL": "WARN"}  # the SDK spells it WARN


@dataclass(frozen=True)
class Job:
    payload: dict[str, Any]
    bad: bool


@dataclass
class Outcome:
    job: Job
    seconds: float
    ok: bool  # an answer for a good job, an error for a bad one
    batch_size: int | None = None
    finished_at: float = 0.0  # seconds since the level started: what a caller who sent them all at once waits


@dataclass
class RssTrace:
    """The server's RSS over time, with how many jobs had finished at each sample."""

    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (seconds, rss bytes, jobs done)
    done: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def finished_one(self) -> None:
        with self.lock:  # the posting threads finish concurrently: += alone loses counts
            self.done += 1


# -- jobs ------------------------------------------------------------------------------------------


def make_jobs(count: int, max_chars: int, new_tokens: list[int], seed: int = 0) -> list[Job]:
    """A reproducible mix of good jobs of many sizes and some bad ones."""
    rng = random.Random(seed)
    documents, _ = load_documents(9, 10_000)
    jobs = []
    for index in range(count):
        if rng.random() < BAD_SHARE:
            bad = BAD_INPUTS[index % len(BAD_INPUTS)]
            jobs.append(Job({"text": "SYNTHETIC NOTE. Stable.", **bad}, bad=True))
            continue
        document = rng.choice(documents)
        length = rng.randint(80, max_chars)
        start = rng.randint(0, max(0, len(document) - length))
        payload: dict[str, Any] = {
            "text": document[start : start + length],
            "mode": rng.choice(("summarize", "general")),
            "max_new_tokens": rng.choice(new_tokens),
        }
        if rng.random() < IMAGE_SHARE:
            payload["image"] = _png(rng)
        jobs.append(Job(payload, bad=False))
    return jobs


def _png(rng: random.Random) -> str:
    from PIL import Image

    image = Image.new("RGB", (rng.randint(64, 1200), rng.randint(64, 1200)), tuple(rng.randrange(256) for _ in "rgb"))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# -- the server -------------------------------------------------------------------------------------


def start_server(env_overrides: dict[str, str], log_path: Path) -> LocalWorker:
    """``python handler.py --rp_serve_api`` on a free loopback port, returned once it answers."""
    env = {**os.environ, **SERVER_ENV, **env_overrides}
    return start_api_worker(env, free_port(), log_path, SERVER_START_TIMEOUT_S)


def sample_rss(pid: int, trace: RssTrace, stop: threading.Event) -> None:
    process, started = psutil.Process(pid), time.perf_counter()
    while not stop.wait(RSS_INTERVAL_S):
        try:
            trace.samples.append((time.perf_counter() - started, process.memory_info().rss, trace.done))
        except psutil.Error:
            return


# -- running jobs ------------------------------------------------------------------------------------


def post(session: requests.Session, url: str, job: Job, index: int) -> Outcome:
    started = time.perf_counter()
    answer = session.post(
        f"{url}/runsync", json={"id": f"load-{index}", "input": job.payload}, timeout=REQUEST_TIMEOUT_S
    )
    seconds = time.perf_counter() - started
    body = answer.json() if answer.ok else {}
    output = body.get("output")
    if job.bad:
        error = body.get("error") or (output.get("error") if isinstance(output, dict) else None)
        return Outcome(job, seconds, ok=body.get("status") == "FAILED" and bool(error) and "\n" not in error)
    ok = body.get("status") == "COMPLETED" and isinstance(output, dict) and bool(output.get("output"))
    return Outcome(job, seconds, ok, output.get("batch_size") if ok else None)


def run_level(url: str, jobs: list[Job], concurrency: int, trace: RssTrace) -> tuple[list[Outcome], float]:
    """All ``jobs``, ``concurrency`` at a time; (outcomes in job order, wall seconds)."""
    local = threading.local()

    def one(item: tuple[int, Job]) -> Outcome:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        outcome = post(local.session, url, item[1], item[0])
        outcome.finished_at = time.perf_counter() - started
        trace.finished_one()
        return outcome

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        outcomes = list(pool.map(one, enumerate(jobs)))
    return outcomes, time.perf_counter() - started


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


# -- the report --------------------------------------------------------------------------------------


def report_level(report: Report, concurrency: int, outcomes: list[Outcome], wall: float) -> float:
    """Rows for one concurrency level; returns its documents/s."""
    good = [outcome for outcome in outcomes if not outcome.job.bad]
    answered = [outcome for outcome in good if outcome.ok]
    latencies = [outcome.seconds for outcome in answered]
    bad = [outcome for outcome in outcomes if outcome.job.bad]
    sizes = [outcome.batch_size for outcome in answered if outcome.batch_size]
    rate = len(answered) / wall
    report.section(f"C={concurrency}: {len(outcomes)} jobs ({len(bad)} bad), {concurrency} at a time")
    report.add("documents/s (answered good jobs / wall time)", f"{rate:.3f} docs/s ({len(answered)} in {wall:.0f} s)")
    if latencies:
        finished = [outcome.finished_at for outcome in answered]
        for name, values in (("request to answer", latencies), ("all sent at once, start to answer", finished)):
            report.add(
                f"latency p50 / p95 / max ({name})",
                f"{statistics.median(values):.2f} / {percentile(values, 0.95):.2f} / {max(values):.2f} s",
            )
    if sizes:
        report.add("batch size formed: mean / max", f"{statistics.mean(sizes):.2f} / {max(sizes)}")
    failed_good = len(good) - len(answered)
    wrong_bad = sum(not outcome.ok for outcome in bad)
    report.add(
        "good jobs not answered / bad jobs not refused with a one-line error",
        f"{failed_good} / {wrong_bad}",
        Target(0, "", at_least=False),
        failed_good + wrong_bad,
    )
    return rate


def report_rss(report: Report, trace: RssTrace, total_jobs: int) -> None:
    samples = trace.samples
    if not samples:
        report.failed("worker RSS", "no samples")
        return
    report.section("Worker RSS over the run (psutil, every 0.5 s)")
    for step in range(1, 11):
        goal = round(total_jobs * step / 10)
        at = next((sample for sample in samples if sample[2] >= goal), samples[-1])
        report.add(f"after {at[2]} jobs ({at[0]:.0f} s)", fmt_bytes(at[1]))
    # A leak climbs with every job; a warm worker's RSS only steps up when a batch of a new,
    # larger shape first runs (the allocators keep what they took). So the verdict compares
    # the level RSS holds at the end with where it stood halfway, and the peak is shown apart.
    half = [sample[1] for sample in samples if total_jobs * 0.45 <= sample[2] <= total_jobs * 0.55]
    end = [sample[1] for sample in samples if sample[2] >= total_jobs * 0.95]
    if not half or not end:
        report.failed("RSS plateau", "the run was too short to tell")
        return
    middle, last = statistics.median(half), statistics.median(end)
    growth = (last - middle) / middle * 100
    report.add(
        "growth over the second half: median RSS at 95-100% of the jobs vs at 45-55%",
        f"{growth:+.1f}% ({(last - middle) / 1e6:+.0f} MB)",
        PLATEAU_TARGET,
        growth,
    )
    report.add("peak RSS", fmt_bytes(max(sample[1] for sample in samples)))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, help=f"jobs per concurrency level (default {NORMAL['jobs']})")
    parser.add_argument(
        "--concurrency", help=f"comma-separated levels C, run in order (default {NORMAL['concurrency']})"
    )
    parser.add_argument("--new-tokens", help=f"max_new_tokens values the jobs use (default {NORMAL['new_tokens']})")
    parser.add_argument("--max-chars", type=int, help=f"longest document cut (default {NORMAL['max_chars']})")
    parser.add_argument(
        "--dummy-image", action="store_true", help="serve with DUMMY_IMAGE=true (default false: text-only jobs)"
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: few jobs, C=1 and 8")
    parser.add_argument("--out", type=Path, default=RESULTS_PATH, help="markdown file to write the table into")
    args = parser.parse_args(argv)
    apply_presets(args, NORMAL, QUICK)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    levels = [int(value) for value in args.concurrency.split(",")]
    new_tokens = [int(value) for value in args.new_tokens.split(",")]
    jobs = make_jobs(args.jobs, args.max_chars, new_tokens)
    report = Report(
        f"MedGemma worker load run: local API server, CPU, stand-in, C={args.concurrency}, "
        f"max_new_tokens {args.new_tokens}",
        command_line("bench.load"),
        args.out,
        block=f"bench.load C={args.concurrency} tokens={args.new_tokens}",  # other runs keep their own tables
    )
    dummy = "true" if args.dummy_image else "false"
    report.notes += [
        f"jobs: {len(jobs)} per level, {sum(job.bad for job in jobs)} of them bad (in turn: an unknown mode, an "
        "unknown field, bad base64, max_new_tokens over the cap, a ~40k-token note); the good ones: "
        f"raw/*.md cut to 80-{args.max_chars} chars at random, summarize or general, max_new_tokens in {new_tokens}, "
        f"{sum('image' in job.payload for job in jobs)} with a real PNG image; seed 0, the same list at every level",
        f"server: python handler.py --rp_serve_api on 127.0.0.1, the stand-in on CPU, DUMMY_IMAGE={dummy}, "
        "default MAX_BATCH_SIZE and BATCH_WAIT_MS; C threads post to /runsync (the local server runs every request "
        "it is sent at once, so C stands for MAX_CONCURRENCY)",
        "latency: client-side, good jobs only: from the request being sent (a caller C at a time), and from the "
        "level's start (a caller who hands over the whole list at once, RunPod queueing what the worker does not "
        "take); documents/s: good jobs answered over the level's wall time",
    ]
    trace, stop = RssTrace(), threading.Event()
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-load-worker-{os.getpid()}.log"
    server = start_server({"DUMMY_IMAGE": dummy}, log_path)
    url = server.url
    sampler = threading.Thread(target=sample_rss, args=(server.process.pid, trace, stop), daemon=True)
    try:
        sampler.start()
        post(requests.Session(), url, Job({"text": "SYNTHETIC NOTE. Warm-up.", "max_new_tokens": 1}, False), -1)
        rates = {}
        for concurrency in levels:
            print(f"bench.load: {len(jobs)} jobs at C={concurrency}", file=sys.stderr)
            outcomes, wall = run_level(url, jobs, concurrency, trace)
            rates[concurrency] = report_level(report, concurrency, outcomes, wall)
            report.write()
        if len(rates) > 1:
            first, last = levels[0], levels[-1]
            report.section("Comparison")
            report.add(f"documents/s, C={last} / C={first}", f"{rates[last] / rates[first]:.2f}x")
    finally:
        stop.set()
        sampler.join()
        stop_local_worker(server)
    report_rss(report, trace, len(jobs) * len(levels))
    report.write()
    print(report.markdown())


if __name__ == "__main__":
    main()
