"""CPU benchmark: the real worker on the embedded stand-in model vs the naive path.

    python -m bench                 # default run (~10 min on 2 quiet cores), writes bench/RESULTS.md
    python -m bench --quick         # ~2 min smoke run with tiny settings
    python -m bench --reps 5 --new-tokens 64 --docs 4 --variant DTYPE=bfloat16

Why it is built this way:

* Each path runs in its own child process (``--role ours`` / ``--role naive``):
  peak RSS is per process and never shrinks after a model is freed, so two
  models in one process would contaminate each other's memory figure. The
  parent only orchestrates and writes the one table.
* Cold start is measured the way a RunPod worker experiences it: a fresh
  ``python -c`` that imports and loads, timed from spawn to "ready".
* "Ours" is the real job flow: ``handler.warmup()`` then ``Worker.run(job)``
  through the worker's one long-lived ``BatchEngine``; concurrency is N
  ``Worker.run`` calls gathered on one event loop, once with the engine's
  ``max_batch_size`` at N and once at 1 (one at a time). Extra "ours" children
  (``--variant``) measure other settings one job at a time, e.g. float32.
* "Naive" is what the original projects do: float32 weights (CPU has no useful
  float16 / nf4 compute), eager attention, a dummy white image on every job,
  ``processor.apply_chat_template`` then one greedy ``model.generate`` per job.
* Every job generates exactly ``--new-tokens`` tokens on both paths (EOS is
  suppressed until then), greedy, so both paths do the same work.

Document text is read from ``raw/*.md`` (synthetic notes of similar length
when absent) and is never logged or printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.common import (
    REPO_ROOT,
    Report,
    RssSampler,
    Sample,
    Target,
    apply_presets,
    child_env,
    command_line,
    decode_rate,
    fmt_bytes,
    naive_generate,
    pin_generation,
    sample,
    speedup,
)
from bench.documents import load_documents

RESULTS_PATH = REPO_ROOT / "bench" / "RESULTS.md"
CHILD_TIMEOUT_S = 3600
CONCURRENCY_TARGET = Target(1.5, "x")  # 8 concurrent, batched vs one at a time, on CPU
# Extra "ours" configurations (--variant), each measured one job at a time. By
# default OMP_WAIT_POLICY=ACTIVE, the opposite of the PASSIVE that handler.py sets:
# with 2 cores and any other process running, libgomp's spin-waiting threads made
# jobs 4-11x slower in development. Also worth a row: DTYPE=bfloat16 (emulated,
# ~10x slower on CPUs without AVX512-BF16/AMX), BATCH_WAIT_MS=100.
DEFAULT_VARIANTS: tuple[str, ...] = ("OMP_WAIT_POLICY=ACTIVE",)
# Defaults sized for ~10 min on 2 quiet cores, and a smoke run; explicit options win over both.
# Measured on 2 quiet AVX2 cores (float32): a 380-token prompt + 48 tokens takes ~9 s, mostly
# decode (~6 tok/s: the 262k-row lm_head is read every token), so 32 tokens x 2 documents.
NORMAL = {"reps": 3, "new_tokens": 32, "docs": 2, "doc_chars": 1000, "concurrency": "1,4,8"}
QUICK = {"reps": 1, "new_tokens": 4, "docs": 1, "doc_chars": 300, "concurrency": "1,4"}


OURS_COLD_START = "import handler; handler.warmup(); print('READY', flush=True)"
NAIVE_COLD_START = "import sys; from bench.cpu import naive_load; naive_load(sys.argv[1]); print('READY', flush=True)"

# -- the parent: orchestration and the table ------------------------------------------------


def cold_start(code: str, args: list[str], env: dict[str, str]) -> float:
    """Seconds from spawning ``python -c code`` to its READY line (process start to ready)."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    ready = None
    for line in process.stdout:  # type: ignore[union-attr]
        if line.startswith("READY"):
            ready = time.perf_counter() - started
            break
    _, stderr = process.communicate(timeout=CHILD_TIMEOUT_S)
    if ready is None:
        raise RuntimeError(f"cold-start child exited {process.returncode} without READY: {stderr.strip()[-300:]}")
    return ready


def run_child(name: str, role: str, spec: dict[str, Any], env: dict[str, str], workdir: Path) -> dict[str, Any]:
    """Run ``--role`` in a fresh interpreter and return the JSON it wrote."""
    slug = "".join(char if char.isalnum() else "-" for char in name)
    spec_path, result_path = workdir / f"{slug}-spec.json", workdir / f"{slug}-result.json"
    spec_path.write_text(json.dumps(spec))
    result_path.unlink(missing_ok=True)
    completed = subprocess.run(
        [sys.executable, "-m", "bench.cpu", "--role", role, "--spec", str(spec_path), "--result", str(result_path)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
    )
    if completed.returncode != 0 or not result_path.is_file():
        raise RuntimeError(f"child {name!r} exited {completed.returncode}: {completed.stderr.strip()[-400:]}")
    return json.loads(result_path.read_text())


def per_rep_mean(values: list[list[float]], unit: str) -> Sample:
    """Per repetition the mean over the document set, then (in Sample) the median over reps."""
    return sample((sum(rep) / len(rep) for rep in values), unit)


def parse_variant(text: str) -> dict[str, str]:
    """``DTYPE=float32,OMP_WAIT_POLICY=ACTIVE`` -> environment overrides for one extra "ours" child."""
    pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
    if not pairs or any(len(pair) != 2 or not pair[0].strip() for pair in pairs):
        raise argparse.ArgumentTypeError(f"--variant must look like NAME=VALUE[,NAME=VALUE], got {text!r}")
    return {key.strip(): value.strip() for key, value in pairs}


def run_parent(args: argparse.Namespace) -> None:
    report = Report(
        "MedGemma worker benchmark: CPU, embedded stand-in model",
        command_line("bench"),
        Path(args.out),
        block="bench.cpu",
    )
    documents, source = load_documents(args.docs, args.doc_chars)
    concurrency = [int(value) for value in args.concurrency.split(",")]
    skip = set(filter(None, args.skip.split(",")))
    defaults = _default_settings()
    report.notes += [
        f"documents: {source}; summarize mode; every job generates exactly {args.new_tokens} tokens (greedy, "
        "EOS suppressed until then) on every path",
        "model: the embedded stand-in (Gemma 3 270M text decoder + tiny SigLIP, MedGemma-shaped; "
        "~0.5B parameters with MedGemma's 262k vocabulary)",
        f"ours: handler.warmup() + Worker.run(job) through the worker's one long-lived BatchEngine, default settings "
        f"(sdpa, DUMMY_IMAGE={str(defaults.dummy_image).lower()}, BATCH_WAIT_MS={defaults.batch_wait_ms}; device, "
        "quantization and dtype in the configuration rows) unless the row says otherwise; MAX_BATCH_SIZE is varied "
        "by setting that engine's max_batch_size",
        "naive: the original projects' path on CPU: float32 weights, attn_implementation='eager', a white dummy "
        "image on every job, processor.apply_chat_template + one model.generate per job, one job at a time "
        "(no nf4/float16 on CPU: bitsandbytes has no fast CPU float16 compute to compare against)",
        f"times per document: per repetition the mean over the {len(documents)} documents, then the median over "
        f"{args.reps} repetitions; speed-ups are ratios of those medians, all taken in this run",
        "peak RSS: psutil resident memory of the child process that does the work, sampled every 20 ms",
    ]
    common_spec = {"documents": documents, "new_tokens": args.new_tokens, "reps": args.reps}
    print(
        f"bench: {len(documents)} documents, {args.new_tokens} new tokens, {args.reps} reps; writing {args.out}",
        file=sys.stderr,
    )

    children: list[tuple[str, str, dict[str, str], dict[str, Any]]] = [
        (
            "ours",
            "ours",
            {},
            {
                **common_spec,
                "concurrency": concurrency,
                "sections": ["single"] + [name for name in ("text", "concurrency") if name not in skip],
            },
        ),
        ("naive", "naive", {}, common_spec),
    ]
    if "variants" not in skip:
        for variant in args.variant if args.variant is not None else DEFAULT_VARIANTS:
            children.append(
                (
                    f"ours {variant}",
                    "ours",
                    parse_variant(variant),
                    {**common_spec, "sections": ["single"], "concurrency": []},
                )
            )
    children = [child for child in children if child[0] not in skip]

    results: dict[str, dict[str, Any]] = {}
    cold: dict[str, Sample] = {}
    failures: list[tuple[str, BaseException]] = []

    def refresh() -> None:
        """Rewrite the table from everything measured so far, so an interrupted run still leaves one."""
        report.rows.clear()
        _tabulate(report, cold, results, concurrency, args)
        for what, error in failures:
            report.failed(what, error)
        report.write()

    with tempfile.TemporaryDirectory(prefix="medgemma-bench-") as scratch:
        workdir = Path(scratch)
        standin = _standin_dir()
        if "cold" not in skip:
            _progress("cold start")
            ours_times, naive_times = [], []
            for _ in range(args.cold_reps):  # interleaved, so drift hits both paths alike
                ours_times.append(cold_start(OURS_COLD_START, [], child_env()))
                naive_times.append(cold_start(NAIVE_COLD_START, [str(standin)], child_env()))
            cold.update(ours=sample(ours_times, "s"), naive=sample(naive_times, "s"))
            refresh()
        for name, role, overrides, spec in children:
            if _is_default(overrides, results.get("ours")):
                report.notes.append(f"{name} not measured: it is the default configuration")
                continue
            _progress(f"{name} child")
            try:
                results[name] = run_child(
                    name, role, {**spec, "standin": str(standin)}, child_env(**overrides), workdir
                )
            except (RuntimeError, subprocess.TimeoutExpired) as error:
                failures.append((f"{name} path", error))
            refresh()
    print(report.markdown())


def _tabulate(
    report: Report,
    cold: dict[str, Sample],
    results: dict[str, dict[str, Any]],
    concurrency: list[int],
    args: argparse.Namespace,
) -> None:
    ours, _naive = results.get("ours"), results.get("naive")

    if cold:
        report.section("Cold start: spawn `python -c` -> imports -> model loaded (median of reps)")
        report.add("ours: `import handler; handler.warmup()`", cold["ours"].show())
        report.add("naive: import transformers, from_pretrained (float32, eager)", cold["naive"].show())
        report.add("naive / ours (>1: ours starts faster)", f"{speedup(cold['naive'], cold['ours']):.2f}x")

    report.section(f"One job at a time, summarize mode, {args.new_tokens} new tokens")
    for name, result in results.items():
        report.add(f"configuration, {name}", result["configuration"])
    single = {
        name: {
            "ttft": per_rep_mean(result["single"]["ttft"], "s"),
            "rate": per_rep_mean(result["single"]["rate"], "tok/s"),
            "doc": per_rep_mean(result["single"]["seconds"], "s"),
        }
        for name, result in results.items()
    }
    for metric, title in (
        ("ttft", "time to first token"),
        ("rate", "decode tokens/s"),
        ("doc", "end-to-end s/document"),
    ):
        for name, values in single.items():
            report.add(f"{title}, {name}", values[metric].show())
    if ours:
        report.add(
            "prepare per job, ours (validate, chat template, tokenize, image)",
            per_rep_mean(ours["single"]["prepare"], "s").show(3),
        )
    if "ours" in single and "naive" in single:
        report.add(
            "ours vs naive, one at a time: naive s/doc / ours s/doc",
            f"{speedup(single['naive']['doc'], single['ours']['doc']):.2f}x",
        )
    for name in single:
        if name.startswith("ours ") and "ours" in single:
            report.add(
                f"{name} vs default ours: default s/doc / variant s/doc",
                f"{speedup(single['ours']['doc'], single[name]['doc']):.2f}x",
            )
    for name, result in results.items():
        report.add(f"peak RSS, {name} process, load + one-at-a-time jobs", fmt_bytes(result["rss"]["single"]))

    if ours and ours.get("text"):
        report.section("Text-only vs dummy image (ours, one job at a time)")
        text_only = per_rep_mean(ours["text"]["seconds"], "s")
        report.add("end-to-end s/document, DUMMY_IMAGE=false", text_only.show())
        report.add("end-to-end s/document, DUMMY_IMAGE=true", single["ours"]["doc"].show())
        report.add("dummy image cost: true / false", f"{speedup(single['ours']['doc'], text_only):.2f}x")

    if ours and ours.get("concurrency"):
        report.section("N concurrent jobs (asyncio.gather of Worker.run): MAX_BATCH_SIZE=N vs MAX_BATCH_SIZE=1")
        top = max(concurrency)
        for n in concurrency:
            runs = ours["concurrency"][str(n)]
            batched = sample(runs["batched"], "docs/s")
            if n == 1:
                report.add("N=1 (both settings are the same configuration)", batched.show(3))
                continue
            one_by_one = sample(runs["one_at_a_time"], "docs/s")
            ratio = batched.median / one_by_one.median
            report.add(f"N={n}, batched (largest batch formed: {runs['max_batch']})", batched.show(3))
            report.add(f"N={n}, one at a time", one_by_one.show(3))
            target = CONCURRENCY_TARGET if n == top and n >= 8 else None
            report.add(f"N={n}, batched / one at a time (docs/s)", f"{ratio:.2f}x", target, ratio)
        report.add(f"peak RSS, ours process, incl. batches of {top}", fmt_bytes(ours["rss"]["all"]))
        if "naive" in single:
            per_doc = sample((1 / value for value in ours["concurrency"][str(top)]["batched"]), "s")
            report.add(
                f"ours at N={top} batched vs naive: naive s/doc / ours s/doc",
                f"{speedup(single['naive']['doc'], per_doc):.2f}x",
            )


def _is_default(overrides: dict[str, str], ours: dict[str, Any] | None) -> bool:
    """Whether a variant changes nothing (e.g. DTYPE=float32 where float32 is already the default)."""
    if not overrides or ours is None:
        return False
    effective = {**child_env(), "DTYPE": ours["dtype"], "OMP_WAIT_POLICY": ours.get("omp_wait_policy", "")}
    return all(effective.get(key, "").lower() == value.lower() for key, value in overrides.items())


def _default_settings() -> Any:
    """The worker's settings in a child's environment (light: no torch import)."""
    from medgemma.settings import Settings

    return Settings.from_env(child_env())


def _standin_dir() -> Path:
    """The stand-in's directory, built first if needed (once; a child must not time its build)."""
    from medgemma.standin import ensure_standin

    return ensure_standin(_default_settings().standin_cache)


def _progress(what: str) -> None:
    print(f"bench: {what} ...", file=sys.stderr, flush=True)


# -- the children: the work itself ------------------------------------------------------------------


def naive_load(path: str) -> tuple[Any, Any]:
    """The original projects' load on CPU: processor + float32 model, eager attention."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    model = AutoModelForImageTextToText.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager", local_files_only=True
    ).eval()
    return processor, model


def run_naive(spec: dict[str, Any]) -> dict[str, Any]:
    """Each document: chat template with a dummy image, one generate, decode; one at a time."""
    from medgemma.images import create_dummy_image
    from medgemma.prompts import SUMMARIZE_PROMPT

    with RssSampler() as rss:
        processor, model = naive_load(spec["standin"])
        new_tokens = spec["new_tokens"]

        def one(text: str) -> tuple[float, float, float]:
            started = time.perf_counter()
            messages = [
                {"role": "system", "content": [{"type": "text", "text": SUMMARIZE_PROMPT}]},
                {
                    "role": "user",
                    "content": [{"type": "image", "image": create_dummy_image()}, {"type": "text", "text": text}],
                },
            ]
            inputs = processor.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
            )
            timing = naive_generate(model, dict(inputs), new_tokens)
            processor.decode(timing.output_ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            return (
                time.perf_counter() - started,
                timing.ttft_s,
                decode_rate(timing.new_tokens, timing.ttft_s, timing.seconds),
            )

        one(spec["documents"][0])  # warm-up, not timed
        single: dict[str, list[list[float]]] = {"seconds": [], "ttft": [], "rate": []}
        for _ in range(spec["reps"]):
            rows = [one(text) for text in spec["documents"]]
            for key, column in zip(("seconds", "ttft", "rate"), zip(*rows, strict=False), strict=False):
                single[key].append(list(column))
    return {
        "single": single,
        "rss": {"single": rss.peak_bytes, "all": rss.peak_bytes},
        "configuration": "cpu/float32, eager attention, dummy image on every job, OpenMP's default wait policy",
        "dtype": "float32",
    }


def run_ours(spec: dict[str, Any]) -> dict[str, Any]:
    return asyncio.run(_run_ours(spec))


async def _run_ours(spec: dict[str, Any]) -> dict[str, Any]:
    import handler
    from medgemma.settings import Settings
    from medgemma.worker import Worker

    out: dict[str, Any] = {"rss": {}}
    with RssSampler() as rss:
        settings = Settings.from_env(os.environ)
        worker = handler.warmup(settings)
        pin_generation(worker.engine.backend)
        info = worker.engine.info
        omp = os.environ.get("OMP_WAIT_POLICY")
        out["dtype"], out["omp_wait_policy"] = info.dtype, omp or ""
        out["configuration"] = f"run_mode {info.run_mode}, sdpa" + (f", OMP_WAIT_POLICY={omp}" if omp else "")
        documents, new_tokens, reps = spec["documents"], spec["new_tokens"], spec["reps"]

        def job(index: int) -> dict[str, Any]:
            text = documents[index % len(documents)]
            return {"id": f"bench-{index}", "input": {"text": text, "mode": "summarize", "max_new_tokens": new_tokens}}

        async def timed(runner: Worker, index: int) -> tuple[float, float, float, float]:
            started = time.perf_counter()
            result = await runner.run(job(index))
            seconds = time.perf_counter() - started
            if "error" in result:
                raise RuntimeError(f"job failed: {result['error']}")
            timings, tokens = result["timings"], result["usage"]["completion_tokens"]
            if tokens != new_tokens:
                raise RuntimeError(f"expected {new_tokens} tokens, got {tokens}")
            ttft = timings["time_to_first_token_s"]
            return seconds, ttft, decode_rate(tokens, ttft, timings["generate_s"]), timings["prepare_s"]

        async def concurrent(n: int, batch_size: int) -> tuple[float, int]:
            """N jobs gathered on the worker's own engine: (docs/s, largest batch it formed).

            The long-lived engine thread is what production uses; a fresh engine
            per measurement would run on a thread with different OpenMP state.
            """
            worker.engine.max_batch_size = batch_size
            runner = Worker(replace(settings, max_batch_size=batch_size, max_concurrency=n), worker.engine)
            try:
                started = time.perf_counter()
                results = await asyncio.gather(*(runner.run(job(index)) for index in range(n)))
                wall = time.perf_counter() - started
            finally:
                worker.engine.max_batch_size = settings.max_batch_size
            failures = [result["error"] for result in results if "error" in result]
            if failures:
                raise RuntimeError(f"{len(failures)} of {n} concurrent jobs failed: {failures[0]}")
            return n / wall, max(result["batch_size"] for result in results)

        sections, columns = spec["sections"], ("seconds", "ttft", "rate", "prepare")
        text_worker = Worker(replace(settings, dummy_image=False), worker.engine)
        await timed(worker, 0)  # warm-ups, not timed
        out["single"] = {key: [] for key in columns}
        if "text" in sections:
            await timed(text_worker, 0)
            out["text"] = {key: [] for key in columns}
        if "concurrency" in sections and spec["concurrency"]:
            out["concurrency"] = {
                str(n): {"batched": [], "one_at_a_time": [], "max_batch": 0} for n in spec["concurrency"]
            }
        # Every repetition runs every measurement in turn, so slow drift of the
        # machine (other load, thermal) spreads over all of them alike.
        for rep in range(reps):
            single_rows, text_rows = [], []
            for index in range(len(documents)):  # default and text-only interleaved, document by document
                single_rows.append(await timed(worker, index))
                if "text" in sections:
                    text_rows.append(await timed(text_worker, index))
            for target, rows in ((out["single"], single_rows), (out.get("text"), text_rows)):
                if target is not None and rows:
                    for key, column in zip(columns, zip(*rows, strict=False), strict=False):
                        target[key].append(list(column))
            if rep == 0:
                out["rss"]["single"] = rss.peak_bytes  # before any batch has run
                if "concurrency" in out:  # warm the batched shapes too, untimed
                    await concurrent(max(spec["concurrency"]), max(spec["concurrency"]))
            for n in spec["concurrency"] if "concurrency" in out else []:
                entry = out["concurrency"][str(n)]
                for mode, batch_size in (("batched", n), ("one_at_a_time", 1)):
                    if n == 1 and mode == "one_at_a_time":
                        continue  # the same configuration as batched at N=1
                    rate, largest = await concurrent(n, batch_size)
                    entry[mode].append(rate)
                    if mode == "batched":
                        entry["max_batch"] = max(entry["max_batch"], largest)
        worker.engine.close()
    out["rss"]["all"] = rss.peak_bytes
    return out


# -- entry point ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="CPU benchmark of the MedGemma worker (embedded stand-in) vs the naive path; writes one table.",
    )
    parser.add_argument(
        "--reps", type=int, help="repetitions of every measurement; the median is reported (3; quick 1)"
    )
    parser.add_argument("--cold-reps", type=int, help="cold-start repetitions (default: --reps)")
    parser.add_argument("--new-tokens", type=int, help="tokens every job generates, exactly (32; quick 4)")
    parser.add_argument("--docs", type=int, help="documents from raw/*.md per repetition (2; quick 1)")
    parser.add_argument("--doc-chars", type=int, help="each document is cut to this many characters (1000; quick 300)")
    parser.add_argument("--concurrency", help="concurrent job counts to compare (1,4,8; quick 1,4)")
    parser.add_argument("--skip", default="", help="comma list of: cold, naive, text, concurrency, variants")
    parser.add_argument(
        "--variant",
        action="append",
        metavar="NAME=VALUE[,NAME=VALUE]",
        help="extra 'ours' configuration (environment overrides) measured one job at a time; "
        "repeatable, e.g. --variant DTYPE=bfloat16 --variant OMP_WAIT_POLICY=ACTIVE",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run (~2 min on a quiet machine): the quick values above"
    )
    parser.add_argument(
        "--out", default=str(RESULTS_PATH), help=f"where the table is written ({RESULTS_PATH.relative_to(REPO_ROOT)})"
    )
    parser.add_argument("--role", choices=("ours", "naive"), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    apply_presets(args, NORMAL, QUICK)
    if args.cold_reps is None:
        args.cold_reps = args.reps
    for name, least in (("reps", 1), ("cold_reps", 1), ("new_tokens", 2), ("docs", 1), ("doc_chars", 1)):
        if getattr(args, name) < least:
            parser.error(f"--{name.replace('_', '-')} must be at least {least}")
    try:
        for variant in args.variant or []:
            parse_variant(variant)
        if any(int(value) < 1 for value in args.concurrency.split(",")):
            raise ValueError("--concurrency counts must be at least 1")
    except (ValueError, argparse.ArgumentTypeError) as error:
        parser.error(str(error))
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.role:
        spec = json.loads(Path(args.spec).read_text())
        result = run_ours(spec) if args.role == "ours" else run_naive(spec)
        Path(args.result).write_text(json.dumps(result))
        return
    run_parent(args)


if __name__ == "__main__":
    main()
