"""Both engines side by side on the same documents (issue 15's table), and plain vLLM for our overhead.

    python -m bench.engines            # ~30 min on 2 quiet cores; writes its table into bench/RESULTS.md
    python -m bench.engines --quick    # smoke run (~6 min): 2 documents, few tokens, vLLM eager only

What is measured, per engine (``ENGINE=transformers``; ``ENGINE=vllm`` eager, then compiled):

* process start -> ready: a fresh ``python`` that imports and runs ``handler.warmup()``;
* one job at a time: every document in turn, seconds per document;
* 8 jobs at once (one per document): documents per second;
* 16 jobs of mixed length at once (12 x 8 tokens, 4 x 128): documents per second, and the
  p50 / p95 of each job's latency (submitted to answered).

Every job is a summarize-mode ``Worker.run`` of one document, greedy, generating exactly its
token count (EOS suppressed until then, so every path does the same work). vLLM without our
layer runs the same loads on the same token ids and sampling parameters twice: our engine's
own ``AsyncLLM`` called directly, taking turns with ours load by load (our overhead, free of
drift), and plain ``vllm.LLM.generate`` started with exactly our engine's arguments once ours
is closed.

Each engine runs in its own child process (its memory is its own, and vLLM's processes end
with it). Document text is read from ``raw/*.md`` and never logged or printed.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from bench.common import REPO_ROOT, Report, Sample, Target, apply_presets, child_env, command_line, fmt_bytes, sample
from bench.documents import load_documents

RESULTS_PATH = REPO_ROOT / "bench" / "RESULTS.md"
CHILD_TIMEOUT_S = 3 * 3600
OVERHEAD_TARGET = Target(1.05, "x", at_least=False)  # ours vs vLLM's AsyncLLM alone, time per document
NORMAL = {"reps": 2, "docs": 8, "doc_chars": 1500, "new_tokens": 64, "mixed": "12x8,4x128", "modes": "eager,compiled"}
QUICK = {"reps": 1, "docs": 2, "doc_chars": 600, "new_tokens": 8, "mixed": "3x4,1x16", "modes": "eager"}
AT_ONCE = 8  # jobs in the "at once" load
#: The engines' own settings on top of the CPU benchmark's child environment.
ENGINE_ENV = {
    "transformers": {"ENGINE": "transformers"},
    "vllm eager": {"ENGINE": "vllm", "ENFORCE_EAGER": "true", "VLLM_CPU_KVCACHE_SPACE": "1"},
    "vllm compiled": {"ENGINE": "vllm", "ENFORCE_EAGER": "false", "VLLM_CPU_KVCACHE_SPACE": "1"},
}


# -- the parent ---------------------------------------------------------------------------------


def run_parent(args: argparse.Namespace) -> None:
    report = Report(
        "Engines side by side: transformers vs vLLM on the stand-in (CPU)",
        command_line("bench.engines"),
        Path(args.out),
        block="bench.engines",
    )
    documents, source = load_documents(args.docs, args.doc_chars)
    mixed = parse_mixed(args.mixed)
    names = ["transformers"] + [f"vllm {mode}" for mode in args.modes.split(",")]
    report.notes += [
        f"documents: {source}; summarize mode; greedy; every job generates exactly its token count (EOS suppressed)",
        f"one at a time and {AT_ONCE} at once: {args.new_tokens} tokens per job; mixed: "
        + " + ".join(f"{count} x {tokens} tokens" for count, tokens in mixed)
        + " submitted together, documents in turn",
        "ours: Worker.run(job) on the engine handler.warmup() starts (medgemma.tokens builds the ids, "
        "medgemma.decoding decodes them); transformers: default settings (static batches of MAX_BATCH_SIZE=8, "
        "jobs with another token count wait for the next batch); vLLM: VLLM_CPU_KVCACHE_SPACE=1 GiB, "
        "MAX_MODEL_LEN unset (32768), vLLM's default CPU threads (it binds its worker to one core and keeps "
        "one for its scheduler)",
        "AsyncLLM direct: our engine's own AsyncLLM.generate on the same token ids and SamplingParams, called on "
        "its loop, taking turns with ours load by load; what our layer adds (validation, prompt building, the hop "
        "to the engine's loop, per-token decoding, output shaping) is the overhead ratio",
        "plain vLLM LLM.generate: vllm.LLM(**our engine's arguments, disable_log_stats=True).generate(token ids, "
        "SamplingParams) in the same child, started after our engine is closed (two vLLM engines don't fit this "
        "shared machine at once), so it runs minutes after ours; offline generate returns all answers at once, "
        "so it has no per-job latency",
    ]
    results: dict[str, dict[str, Any]] = {}
    failures: list[tuple[str, BaseException]] = []

    def refresh() -> None:
        report.rows.clear()
        tabulate(report, results, args)
        for what, error in failures:
            report.failed(what, error)
        report.write()

    spec = {"documents": documents, "reps": args.reps, "new_tokens": args.new_tokens, "mixed": mixed}
    with tempfile.TemporaryDirectory(prefix="medgemma-engines-bench-") as scratch:
        for name in names:
            print(f"bench.engines: {name} ...", file=sys.stderr, flush=True)
            try:
                results[name] = run_child(name, spec, Path(scratch))
            except (RuntimeError, subprocess.TimeoutExpired) as error:
                failures.append((name, error))
            refresh()
    print(report.markdown())


def run_child(name: str, spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    slug = name.replace(" ", "-")
    spec_path, result_path, log_path = (workdir / f"{slug}.{ext}" for ext in ("spec.json", "result.json", "log"))
    spec_path.write_text(json.dumps({**spec, "plain": name.startswith("vllm")}))
    spawned = time.time()  # wall clock: the child reports when it was ready on the same clock
    with open(log_path, "w") as log:  # vLLM's processes log to stdout; nobody reads a pipe
        completed = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.engines",
                "--role",
                "child",
                "--spec",
                str(spec_path),
                "--result",
                str(result_path),
            ],
            cwd=REPO_ROOT,
            env=child_env(**ENGINE_ENV[name]),
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=CHILD_TIMEOUT_S,
        )
    if completed.returncode != 0 or not result_path.is_file():
        tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"child exited {completed.returncode}: {' | '.join(tail)[-400:]}")
    result = json.loads(result_path.read_text())
    result["cold_s"] = result.pop("ready_at") - spawned
    return result


def parse_mixed(text: str) -> list[tuple[int, int]]:
    """``12x8,4x128`` -> [(12, 8), (4, 128)]: (jobs, tokens each)."""
    try:
        pairs = [tuple(int(part) for part in item.split("x")) for item in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--mixed must look like 12x8,4x128, got {text!r}") from None
    if not pairs or any(len(pair) != 2 or min(pair) < 1 for pair in pairs):
        raise argparse.ArgumentTypeError(f"--mixed must look like 12x8,4x128, got {text!r}")
    return [(pair[0], pair[1]) for pair in pairs]


def tabulate(report: Report, results: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    if not results:
        return
    for name, result in results.items():
        report.add(f"configuration, {name}", result["configuration"])
    report.section("Process start -> ready (spawn -> handler.warmup() returned)")
    for name, result in results.items():
        report.add(name, f"{result['cold_s']:.1f} s")
    if "transformers" in results:
        for name, result in results.items():
            if name != "transformers":
                report.add(f"{name} / transformers", f"{result['cold_s'] / results['transformers']['cold_s']:.1f}x")

    report.section(f"One job at a time, {args.new_tokens} tokens: seconds per document")
    _load_rows(report, results, "single", "s", per_document=True)
    report.section(f"{AT_ONCE} jobs at once, {args.new_tokens} tokens each: documents per second")
    _load_rows(report, results, "at_once", "docs/s", per_document=False)
    report.section(f"{sum(count for count, _ in parse_mixed(args.mixed))} jobs of mixed length at once ({args.mixed})")
    _load_rows(report, results, "mixed", "docs/s", per_document=False)
    for name, result in results.items():
        if result.get("latency"):
            p50 = sample((rep["p50"] for rep in result["latency"]), "s")
            p95 = sample((rep["p95"] for rep in result["latency"]), "s")
            report.add(f"job latency p50 / p95, {name}", f"{p50.show()} / {p95.show()}")

    report.section("Memory")
    for name, result in results.items():
        report.add(f"peak PSS, {name} (all its processes)", fmt_bytes(result["peak_pss"]))


def _load_rows(report: Report, results: dict[str, dict[str, Any]], load: str, unit: str, per_document: bool) -> None:
    """One row per engine (and vLLM without our layer), then each engine vs transformers and ours vs vLLM alone."""
    medians: dict[str, Sample] = {}
    for name, result in results.items():
        medians[name] = sample(result[load]["ours"], unit)
        report.add(name, medians[name].show())
        for who, label in (("direct", "AsyncLLM direct"), ("plain", "plain vLLM LLM.generate")):
            if result[load].get(who):
                medians[f"{name} {who}"] = sample(result[load][who], unit)
                report.add(f"{label} ({name.removeprefix('vllm ')})", medians[f"{name} {who}"].show())
    # Faster is a smaller s/doc but a larger docs/s: every ratio below reads "x times as fast".
    for name in results:
        if name != "transformers" and "transformers" in medians:
            ratio = _as_fast(medians[name], medians["transformers"], per_document)
            report.add(f"{name} vs transformers (x as fast)", f"{ratio:.2f}x")
        if f"{name} direct" in medians:
            overhead = 1 / _as_fast(medians[name], medians[f"{name} direct"], per_document)
            report.add(
                f"our overhead on {name}: ours time / AsyncLLM direct time",
                f"{overhead:.3f}x",
                OVERHEAD_TARGET,
                overhead,
            )
        if f"{name} plain" in medians:
            ratio = 1 / _as_fast(medians[name], medians[f"{name} plain"], per_document)
            report.add(f"{name}: ours time / LLM.generate time (run after ours)", f"{ratio:.3f}x")


def _as_fast(ours: Sample, baseline: Sample, per_document: bool) -> float:
    return baseline.median / ours.median if per_document else ours.median / baseline.median


# -- the child ----------------------------------------------------------------------------------


class TreeMemory:
    """Peak PSS of this process and all its children (vLLM's engine core and worker), sampled."""

    def __init__(self, interval_s: float = 0.5):
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pss-sampler", daemon=True)
        self.peak = 0

    def _loop(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(self._interval):
            total = 0
            for process in [me, *me.children(recursive=True)]:
                try:
                    total += process.memory_full_info().pss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            self.peak = max(self.peak, total)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_child_role(spec: dict[str, Any]) -> dict[str, Any]:
    with TreeMemory() as memory:
        import handler
        from medgemma.settings import Settings

        worker = handler.warmup(Settings.from_env(os.environ))
        ready_at = time.time()
        out = asyncio.run(_measure(worker, spec, memory))
    return {**out, "ready_at": ready_at}


async def _measure(worker: Any, spec: dict[str, Any], memory: TreeMemory) -> dict[str, Any]:
    """Every load on our engine (vLLM: taking turns with its AsyncLLM called directly), then on plain vLLM.

    Two vLLM engines on CPU (~6.5 GiB each here) don't fit a shared 24 GiB machine at once, so
    ``LLM`` starts after ours is closed, and drift between the two phases is part of that ratio;
    the overhead ratio comes from the same engine, turn by turn.
    """
    from medgemma.request import parse_job_input

    engine, info = worker.engine, worker.engine.info
    documents, new_tokens = spec["documents"], spec["new_tokens"]
    if info.engine == "vllm":
        engine.sampling_hook = lambda key: {"min_tokens": key.max_new_tokens}
    else:
        from bench.common import pin_generation

        pin_generation(engine.backend)

    def job(index: int, tokens: int) -> dict[str, Any]:
        text = documents[index % len(documents)]
        return {"id": f"bench-{index}", "input": {"text": text, "mode": "summarize", "max_new_tokens": tokens}}

    # (document index, tokens) per job; all of a load's jobs are submitted at the same moment.
    mixed = [tokens for count, tokens in spec["mixed"] for _ in range(count)]
    loads = {
        "single": [(index, new_tokens) for index in range(len(documents))],
        "at_once": [(index, new_tokens) for index in range(AT_ONCE)],
        "mixed": list(enumerate(mixed)),
    }

    async def ours(items: list[tuple[int, int]]) -> tuple[float, list[float]]:
        async def timed(index: int, tokens: int) -> float:
            started = time.perf_counter()
            result = await worker.run(job(index, tokens))
            if "error" in result or result["usage"]["completion_tokens"] != tokens:
                raise RuntimeError(f"job {index}: {result.get('error') or result['usage']}")
            return time.perf_counter() - started

        started = time.perf_counter()
        latencies = await asyncio.gather(*(timed(index, tokens) for index, tokens in items))
        return time.perf_counter() - started, list(latencies)

    out: dict[str, Any] = {
        "configuration": f"{info.engine}, run_mode {info.run_mode}, max_concurrency {worker.max_concurrency}"
        + (
            f", {'eager' if engine.engine_kwargs.get('enforce_eager') else 'compiled'}" if info.engine == "vllm" else ""
        ),
        **{name: {"ours": [], "direct": [], "plain": []} for name in loads},
        "latency": [],
    }
    if info.engine != "vllm":
        await _repeat({"ours": ours}, loads, spec["reps"], out)
        out["peak_pss"] = memory.peak
        engine.close()
        return out
    prompts = {
        item: (await engine.prepare(parse_job_input(job(*item)["input"], worker.settings, vision=info.vision))).features
        for items in loads.values()
        for item in items
    }
    await _repeat({"ours": ours, "direct": _direct_vllm(engine, prompts)}, loads, spec["reps"], out)
    out["peak_pss"] = memory.peak
    kwargs, stop_ids = engine.engine_kwargs, engine.stop_ids
    engine.close()
    await _repeat({"plain": _plain_vllm(kwargs, stop_ids, prompts)}, loads, spec["reps"], out)
    return out


async def _repeat(
    runners: dict[str, Any], loads: dict[str, list[tuple[int, int]]], reps: int, out: dict[str, Any]
) -> None:
    """A warm-up of every shape, then ``reps`` repetitions of every load, into ``out[load][runner]``.

    Several runners take turns load by load, so drift of the machine hits them alike.
    """
    for run in runners.values():
        await run(loads["at_once"])
        await run(loads["mixed"])
    for _ in range(reps):
        for who, run in runners.items():
            out["single"][who].append(statistics.mean([(await run([item]))[0] for item in loads["single"]]))
        for name in ("at_once", "mixed"):
            for who, run in runners.items():
                wall, latencies = await run(loads[name])
                out[name][who].append(len(loads[name]) / wall)
                if latencies and name == "mixed":
                    cuts = statistics.quantiles(latencies, n=20, method="inclusive")
                    out["latency"].append({"p50": statistics.median(latencies), "p95": cuts[18]})


def _direct_vllm(engine: Any, prompts: dict[tuple[int, int], Any]) -> Any:
    """Our engine's own AsyncLLM called directly on its loop, with the same token ids and SamplingParams.

    What our layer adds is left out: validation, prompt building, the hop to the engine's loop,
    per-token decoding and output shaping. Timed inside the engine's loop.
    """
    from medgemma.request import SamplingKey

    ids = itertools.count()

    async def on_engine_loop(items: list[tuple[int, int]]) -> float:
        async def one(item: tuple[int, int]) -> None:
            params = engine.sampling_params(SamplingKey(item[1], None, None, None))
            generated = 0
            async for output in engine.llm.generate(prompts[item], params, f"direct-{next(ids)}"):
                generated += len(output.outputs[0].token_ids)
            if generated != item[1]:
                raise RuntimeError(f"direct vLLM generated {generated} tokens, not {item[1]}")

        started = time.perf_counter()
        await asyncio.gather(*(one(item) for item in items))
        return time.perf_counter() - started

    async def run(items: list[tuple[int, int]]) -> tuple[float, list[float]]:
        return await asyncio.wrap_future(engine.call(on_engine_loop(items))), []

    return run


def _plain_vllm(kwargs: dict[str, Any], stop_ids: list[int], prompts: dict[tuple[int, int], Any]) -> Any:
    """``vllm.LLM.generate`` on our token ids with our sampling: (seconds, no per-job latencies)."""
    from vllm import LLM, SamplingParams

    plain = LLM(**{**kwargs, "disable_log_stats": True})

    async def run(items: list[tuple[int, int]]) -> tuple[float, list[float]]:
        params = [
            SamplingParams(
                max_tokens=tokens, min_tokens=tokens, temperature=0.0, stop_token_ids=stop_ids, detokenize=False
            )
            for _, tokens in items
        ]
        started = time.perf_counter()
        outputs = plain.generate([prompts[item] for item in items], params, use_tqdm=False)
        elapsed = time.perf_counter() - started
        if [len(output.outputs[0].token_ids) for output in outputs] != [tokens for _, tokens in items]:
            raise RuntimeError("plain vLLM generated other token counts")
        return elapsed, []

    return run


# -- entry point --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.engines", description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, help="repetitions of every load; the median is reported (2; quick 1)")
    parser.add_argument("--docs", type=int, help="documents from raw/*.md (8; quick 2)")
    parser.add_argument("--doc-chars", type=int, help="each document is cut to this many characters (1500; quick 600)")
    parser.add_argument("--new-tokens", type=int, help="tokens per job, one at a time and at once (64; quick 8)")
    parser.add_argument("--mixed", help="the mixed load, JOBSxTOKENS,... (12x8,4x128; quick 3x4,1x16)")
    parser.add_argument("--modes", help="vLLM modes to measure: eager, compiled (eager,compiled; quick eager)")
    parser.add_argument("--quick", action="store_true", help="smoke run: the quick values above")
    parser.add_argument("--out", default=str(RESULTS_PATH), help="the results file (its 'engines' block is rewritten)")
    parser.add_argument("--role", choices=("child",), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    apply_presets(args, NORMAL, QUICK)
    try:
        parse_mixed(args.mixed)
    except argparse.ArgumentTypeError as error:
        parser.error(str(error))
    if set(args.modes.split(",")) - {"eager", "compiled"}:
        parser.error(f"--modes takes eager and/or compiled, got {args.modes!r}")
    for name in ("reps", "docs", "doc_chars", "new_tokens"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.role:
        result = run_child_role(json.loads(Path(args.spec).read_text()))
        Path(args.result).write_text(json.dumps(result))
        return
    run_parent(args)


if __name__ == "__main__":
    main()
