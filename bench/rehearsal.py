"""Rehearsal at MedGemma 1.5 4B's real shapes, on CPU, through the production code paths.

    python -m bench.rehearsal --workdir /var/tmp/rehearsal      # all steps: ~30 min, ~20 GiB of free RAM
    python -m bench.rehearsal --steps float32 --workdir DIR     # one step, on a checkpoint already built
    python -m bench.rehearsal --text-layers 2 --vision-layers 1  # the suite's fast shape check (same widths)

It builds a checkpoint with exactly MedGemma 1.5 4B's configuration (``bench.medgemma_shapes``:
the 34-layer 2560-wide Gemma 3 decoder, the 27-layer SigLIP at 896 px, 262k vocabulary) and
random bfloat16 weights, saved as MedGemma's own is, with the stand-in's tokenizer, chat
template and processor (which have MedGemma's image geometry). Then, each step in a fresh
process so that no two copies of the model are ever in memory together:

``build``        the checkpoint (its size on disk);
``float32``      the worker's CPU default (QUANTIZATION=none): load, then a one-line summarize job
                 with and without the dummy image, and one batch of 4 jobs of which two carry an image;
``nf4``          QUANTIZATION=nf4, quantized at load; one short text-only job;
``prequantize``  ``python -m builder.prequantize`` on the checkpoint, as a PREQUANTIZE image build runs it;
``prequantized`` loading its output, as that image's worker does.

Each step's load time and its process's peak memory (RSS, and the anonymous part of it: RSS
also counts the checkpoint's file pages the loader maps, which the kernel can drop) are
recorded, with token counts and times to first token.

It never pushes a shared machine into the OOM killer. Each step's need is estimated from the
parameter count (``step_need``: the weights as that step holds them, the loader's one-shard
transient, the interpreter); a step waits up to ``--wait-s`` for that much RAM to be
available, else it is reported as ``skipped: needs ~X GiB, Y GiB available``. While a step
runs, a watchdog stops it if the machine's available RAM falls under ``FLOOR_GIB`` (other
processes grew), and says so. Not part of the test suite; its reduced-depth run is the
suite's ``--bench`` check (``tests/test_rehearsal.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil

from bench.common import GIB, REPO_ROOT, Report, command_line, fmt_bytes
from bench.documents import load_documents
from bench.medgemma_shapes import TEXT_SHAPES, VISION_SHAPES

RESULTS_PATH = REPO_ROOT / "bench" / "RESULTS.md"
STEPS = ("build", "float32", "nf4", "prequantize", "prequantized")
# Bytes per parameter each step holds at its peak, on top of the loader's shard and the
# interpreter. build: the bf16 model and the save's buffers (measured: 10.2 GB anonymous for
# 4.30 B parameters, 2.4 B/param); float32: the float32 weights; nf4 and prequantize: the
# bf16 weights being quantized (prequantize measured 12.2 GB RSS); prequantized: the 4-bit
# weights, with the bf16 embeddings and vision tower (its output is 3.26 GB).
BYTES_PER_PARAMETER = {"build": 2.4, "float32": 4.0, "nf4": 2.5, "prequantize": 2.5, "prequantized": 1.0}
SHARD_BYTES = 2 * 10**9  # the checkpoint's shard size (max_shard_size): the loader holds one more in flight
RUNTIME_BYTES = GIB  # Python, torch, transformers, the tokenizer, a job's activations
FLOOR_GIB = 0.5  # the watchdog stops a step when the machine's available RAM falls under this
STANDIN_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "processor_config.json",
    "generation_config.json",
)
NOTE = "SYNTHETIC NOTE. 58-year-old man, three days of productive cough and fever; right basal crackles."
EXPECTED_NF4_GB = 3.0  # the README's "~3 GB expected"
CHILD_ENV = {
    "DEVICE": "cpu",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TOKENIZERS_PARALLELISM": "false",
    "LOG_LEVEL": "WARNING",
    "OMP_WAIT_POLICY": "PASSIVE",
}


# -- memory of a child process ---------------------------------------------------------------------


class ChildMemory:
    """Peak RSS and peak anonymous RSS of a process, sampled on a thread; the process is
    stopped (SIGKILL, before the kernel's OOM killer picks a victim) if the machine's
    available RAM falls under ``floor`` bytes."""

    def __init__(self, pid: int, interval_s: float = 0.1, floor: int = int(FLOOR_GIB * GIB)):
        self.pid, self.interval, self.floor = pid, interval_s, floor
        self.peak_rss = self.peak_anon = 0
        self.least_available: int | None = None
        self.stopped = False  # the watchdog killed it
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        status = Path(f"/proc/{self.pid}/status")
        while not self._stop.wait(self.interval):
            try:
                fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
                rss, anon = (int(fields[name].split()[0]) * 1024 for name in ("VmRSS", "RssAnon"))
            except (OSError, KeyError, ValueError):
                return
            self.peak_rss, self.peak_anon = max(self.peak_rss, rss), max(self.peak_anon, anon)
            available = psutil.virtual_memory().available
            self.least_available = min(available, self.least_available or available)
            if available < self.floor:
                self.stopped = True
                os.kill(self.pid, signal.SIGKILL)
                return

    def __enter__(self) -> ChildMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def parameter_count(text_layers: int | None = None, vision_layers: int | None = None) -> int:
    """Gemma3ForConditionalGeneration's parameters at ``bench.medgemma_shapes``'s shapes, counted from them (no torch).

    The rehearsal's parent never imports torch (it would hold ~1 GiB beside each step);
    ``tests/test_rehearsal.py`` holds this count to the built model's.
    """
    text, vision = TEXT_SHAPES, VISION_SHAPES
    hidden, head_dim, inter = text["hidden_size"], text["head_dim"], text["intermediate_size"]
    attention = hidden * head_dim * (2 * text["num_attention_heads"] + 2 * text["num_key_value_heads"])
    decoder_layer = attention + 3 * hidden * inter + 2 * head_dim + 4 * hidden  # + q/k norms, 4 RMS norms
    width, v_inter = vision["hidden_size"], vision["intermediate_size"]
    patches = (vision["image_size"] // vision["patch_size"]) ** 2
    vision_layer = 4 * (width * width + width) + 2 * width * v_inter + v_inter + width + 4 * width
    embeddings = 3 * vision["patch_size"] ** 2 * width + width + patches * width  # patches, positions
    return (
        text["vocab_size"] * hidden  # the embedding, tied to the LM head
        + (text_layers or text["num_hidden_layers"]) * decoder_layer
        + hidden  # the final norm
        + (vision_layers or vision["num_hidden_layers"]) * vision_layer
        + embeddings
        + 2 * width  # the vision tower's final norm
        + width * hidden
        + width  # the projector and its norm
    )


def step_need(step: str, parameters: int) -> int:
    """Bytes of RAM ``step`` needs available when it starts, for a model of ``parameters``."""
    weights = int(parameters * BYTES_PER_PARAMETER[step])
    shard = 0 if step == "build" else min(SHARD_BYTES, 2 * parameters)
    return weights + shard + RUNTIME_BYTES


def wait_for_memory(need_gib: float, wait_s: float) -> float:
    """Block until ``need_gib`` of RAM is available (or ``wait_s`` passed); returns GiB available."""
    deadline = time.monotonic() + wait_s
    while True:
        available = psutil.virtual_memory().available / GIB
        if available >= need_gib or time.monotonic() >= deadline:
            return available
        print(f"rehearsal: {available:.1f} GiB free, waiting for {need_gib:.1f} GiB", file=sys.stderr)
        time.sleep(15)


def run_step(step: str, spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """One step in a fresh interpreter, its memory sampled (and watched) from outside; returns its result."""
    result_path = workdir / f"{step}.json"
    result_path.unlink(missing_ok=True)
    command = [sys.executable, "-m", "bench.rehearsal", "--role", step, "--spec", json.dumps(spec)]
    command += ["--result", str(result_path)]
    if step == "prequantize":  # the build's own command, measured from outside
        shutil.rmtree(spec["prequantized"], ignore_errors=True)
        command = [sys.executable, "-m", "builder.prequantize", "--model", spec["checkpoint"]]
        command += ["--output", spec["prequantized"]]
    env = {**os.environ, **CHILD_ENV, "PYTHONPATH": str(REPO_ROOT)}
    started = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    with ChildMemory(process.pid) as memory:
        stdout, stderr = process.communicate()
    wall = time.perf_counter() - started
    least = f"{(memory.least_available or 0) / GIB:.1f} GiB"
    if memory.stopped:
        raise RuntimeError(f"stopped: the machine's available RAM fell to {least} (other processes grew)")
    if process.returncode == -signal.SIGKILL:
        raise RuntimeError(f"killed (SIGKILL: the kernel's OOM killer?); least RAM available during the step {least}")
    if process.returncode != 0:
        raise RuntimeError(f"{step} exited {process.returncode}: {stderr.strip()[-600:]}")
    result = json.loads(result_path.read_text()) if result_path.is_file() else {"stdout": stdout.strip()}
    return {**result, "wall_s": wall, "peak_rss": memory.peak_rss, "peak_anon": memory.peak_anon}


# -- the steps (children) ----------------------------------------------------------------------------


def build(spec: dict[str, Any]) -> dict[str, Any]:
    """MedGemma 1.5 4B's configuration, random bf16 weights, the stand-in's tokenizer and processor."""
    from bench.medgemma_shapes import build_config, build_model
    from medgemma.settings import Settings
    from medgemma.standin import ensure_standin

    standin = ensure_standin(Settings.from_env(os.environ).standin_cache)
    out = Path(spec["checkpoint"])
    started = time.perf_counter()
    config = build_config(tiny=False, text_layers=spec["text_layers"], vision_layers=spec["vision_layers"])
    model = build_model(config, "cpu")
    parameters = sum(parameter.numel() for parameter in model.parameters())
    model.save_pretrained(out, max_shard_size="2GB")  # small shards: saving adds little to the peak
    for name in STANDIN_FILES:
        shutil.copyfile(standin / name, out / name)
    return {"parameters": parameters, "seconds": time.perf_counter() - started, "bytes": directory_bytes(out)}


def directory_bytes(path: Path) -> int:
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file())


def start_worker(model_dir: str, quantization: str) -> Any:
    from medgemma.settings import Settings
    from medgemma.worker import Worker

    env = {
        **os.environ,
        "MODEL_ID": model_dir,
        "QUANTIZATION": quantization,
        "MAX_NEW_TOKENS": "2",
        "DUMMY_IMAGE": "true",
    }
    return Worker.start(Settings.from_env(env))


def answer(worker: Any, payload: dict[str, Any]) -> dict[str, Any]:
    result = asyncio.run(worker.run({"id": "rehearsal", "input": payload}))
    if "error" in result:
        raise RuntimeError(result["error"])
    return result


def job_figures(result: dict[str, Any]) -> dict[str, Any]:
    return {
        "prompt_tokens": result["usage"]["prompt_tokens"],
        "ttft_s": result["timings"]["time_to_first_token_s"],
        "total_s": result["timings"]["total_s"],
        "batch_size": result["batch_size"],
        "run_mode": result["run_mode"],
    }


def float32_step(spec: dict[str, Any]) -> dict[str, Any]:
    """The CPU default: load, the dummy image on and off, and a batch of 4 with two images."""
    from PIL import Image

    from medgemma.engines.batching import BatchEngine
    from medgemma.images import encode_image
    from medgemma.worker import Worker

    worker = start_worker(spec["checkpoint"], "none")
    text_only = Worker(replace(worker.settings, dummy_image=False), worker.engine)
    runs = []
    for _ in range(spec["reps"]):
        runs.append(
            {
                "dummy": job_figures(answer(worker, {"text": NOTE})),
                "text": job_figures(answer(text_only, {"text": NOTE})),
            }
        )
    documents, _ = load_documents(4, 600)
    image = encode_image(Image.radial_gradient("L").resize((1024, 768)).convert("RGB"))
    payloads = [{"text": text, **({"image": image} if index < 2 else {})} for index, text in enumerate(documents)]
    engine = BatchEngine(worker.engine.backend, max_batch_size=8, batch_wait_seconds=5.0)
    batcher = Worker(text_only.settings, engine)

    async def together() -> list[dict[str, Any]]:
        return await asyncio.gather(*(batcher.run({"id": f"b{i}", "input": p}) for i, p in enumerate(payloads)))

    started = time.perf_counter()
    batch = asyncio.run(together())
    batch_wall = time.perf_counter() - started
    engine.close()
    if any("error" in result for result in batch):
        raise RuntimeError(next(result["error"] for result in batch if "error" in result))
    return {
        "load_s": worker.engine.info.load_seconds,
        "runs": runs,
        "batch": [job_figures(result) for result in batch],
        "batch_wall_s": batch_wall,
        "batch_images": [int("image" in payload) for payload in payloads],
    }


def load_and_answer(spec: dict[str, Any], model_dir: str, quantization: str) -> dict[str, Any]:
    """Load in one mode and answer one short text-only job (the worker serves in that mode)."""
    from medgemma.worker import Worker

    worker = start_worker(model_dir, quantization)
    text_only = Worker(replace(worker.settings, dummy_image=False), worker.engine)
    figures = job_figures(answer(text_only, {"text": NOTE, "max_new_tokens": 1}))
    return {"load_s": worker.engine.info.load_seconds, "run_mode": worker.engine.info.run_mode, "job": figures}


def run_role(role: str, spec: dict[str, Any]) -> dict[str, Any]:
    if role == "build":
        return build(spec)
    if role == "float32":
        return float32_step(spec)
    if role == "nf4":
        return load_and_answer(spec, spec["checkpoint"], "nf4")
    if role == "prequantized":
        return {**load_and_answer(spec, spec["prequantized"], ""), "bytes": directory_bytes(Path(spec["prequantized"]))}
    raise ValueError(role)


# -- the table ----------------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return (
        ordered[len(ordered) // 2]
        if len(ordered) % 2
        else (ordered[len(ordered) // 2 - 1] + ordered[len(ordered) // 2]) / 2
    )


def seconds(runs: list[dict[str, Any]]) -> str:
    return ", ".join(f"{run['ttft_s']:.1f}" for run in runs)


def memory_text(result: dict[str, Any]) -> str:
    return f"peak RSS {fmt_bytes(result['peak_rss'])}; anonymous {fmt_bytes(result['peak_anon'])}"


def add_rows(report: Report, step: str, result: dict[str, Any]) -> None:
    if step == "build":
        report.add("build: parameters, seconds", f"{result['parameters'] / 1e9:.2f} B in {result['seconds']:.0f} s")
        report.add("build: checkpoint on disk (bf16)", fmt_bytes(result["bytes"]))
        report.add("build: process memory", memory_text(result))
    elif step == "float32":
        report.add("QUANTIZATION=none (float32): load", f"{result['load_s']:.1f} s; {memory_text(result)}")
        dummy = [run["dummy"] for run in result["runs"]]
        text = [run["text"] for run in result["runs"]]
        with_ttft, without_ttft = median([r["ttft_s"] for r in dummy]), median([r["ttft_s"] for r in text])
        report.add(
            "one-line summarize job, prompt tokens: without / with the dummy image",
            f"{text[0]['prompt_tokens']} / {dummy[0]['prompt_tokens']}",
        )
        report.add(
            "time to first token (prefill): without / with the dummy image",
            f"{without_ttft:.1f} s / {with_ttft:.1f} s (median of {len(dummy)}; runs {seconds(text)} / {seconds(dummy)})",
        )
        share = (with_ttft - without_ttft) / with_ttft if with_ttft else float("nan")
        report.add(
            "the dummy image's share of prefill",
            f"{share * 100:.0f}% (with / without: {with_ttft / without_ttft:.1f}x)",
        )
        batch = result["batch"]
        report.add(
            "batch of 4 (2 with a real image): batch sizes, prompt tokens",
            f"{[r['batch_size'] for r in batch]}; {[r['prompt_tokens'] for r in batch]} (images: {result['batch_images']})",
        )
        report.add(
            "batch of 4: wall time, time to first token", f"{result['batch_wall_s']:.1f} s; {batch[0]['ttft_s']:.1f} s"
        )
    elif step in ("nf4", "prequantized"):
        name = "QUANTIZATION=nf4 (quantized at load)" if step == "nf4" else "pre-quantized nf4 checkpoint"
        report.add(f"{name}: load", f"{result['load_s']:.1f} s ({result['run_mode']}); {memory_text(result)}")
        job = result["job"]
        report.add(
            f"{name}: one text-only job, 1 token", f"{job['prompt_tokens']} prompt tokens, {job['total_s']:.1f} s"
        )
        if step == "prequantized":
            report.add(
                "pre-quantized checkpoint on disk (README: ~3 GB expected)",
                f"{fmt_bytes(result['bytes'])} ({result['bytes'] / 1e9 / EXPECTED_NF4_GB:.2f}x the expected {EXPECTED_NF4_GB:g} GB)",
            )
    elif step == "prequantize":
        report.add("builder.prequantize: wall time (a PREQUANTIZE image build)", f"{result['wall_s']:.0f} s")
        report.add("builder.prequantize: process memory (the builder it needs)", memory_text(result))
        report.add(
            "builder.prequantize: its summary line", result["stdout"].splitlines()[-1] if result["stdout"] else ""
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/medgemma-rehearsal"), help="checkpoints go here")
    parser.add_argument(
        "--steps", default=",".join(STEPS), help=f"comma-separated, in order (default: {','.join(STEPS)})"
    )
    parser.add_argument("--reps", type=int, default=2, help="repetitions of each one-line job (default 2)")
    parser.add_argument("--text-layers", type=int, help="cut the decoder to this many layers (shape check only)")
    parser.add_argument("--vision-layers", type=int, help="cut the vision tower to this many layers (shape check only)")
    parser.add_argument("--wait-s", type=float, default=1800, help="how long a step waits for free RAM (default 1800)")
    parser.add_argument("--out", type=Path, default=RESULTS_PATH, help="markdown file to write the table into")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoints (default: delete them at the end)")
    parser.add_argument("--role", choices=STEPS, help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.role:
        args.result.write_text(json.dumps(run_role(args.role, json.loads(args.spec))))
        return
    steps = [step for step in args.steps.split(",") if step]
    if unknown := set(steps) - set(STEPS):
        sys.exit(f"rehearsal: unknown steps {sorted(unknown)}; known: {', '.join(STEPS)}")
    reduced = args.text_layers is not None or args.vision_layers is not None
    args.workdir.mkdir(parents=True, exist_ok=True)
    spec = {
        "checkpoint": str(args.workdir / "medgemma-shaped"),
        "prequantized": str(args.workdir / "medgemma-shaped-nf4"),
        "text_layers": args.text_layers,
        "vision_layers": args.vision_layers,
        "reps": args.reps,
    }
    depth = f"text layers {args.text_layers or 34}, vision layers {args.vision_layers or 27}"
    report = Report(
        "MedGemma 1.5 4B rehearsal: real shapes, random weights, CPU"
        + (f" (REDUCED DEPTH: {depth})" if reduced else ""),
        command_line("bench.rehearsal"),
        args.out,
        block="bench.rehearsal" + ("-reduced" if reduced else ""),
    )
    report.notes += [
        f"checkpoint: Gemma3ForConditionalGeneration with bench/medgemma_shapes.py's MedGemma 1.5 4B shapes ({depth}), random "
        "bfloat16 weights, the stand-in's tokenizer, chat template and processor (896 px, 256 image tokens)",
        "each step runs in its own process; memory: that process's peak VmRSS and RssAnon from /proc, every 0.1 s "
        "(RSS includes the checkpoint's mapped file pages, which the kernel can drop; anonymous memory is what must fit)",
        f"jobs: a one-line synthetic note in summarize mode, max_new_tokens 2, {args.reps} runs each with and without "
        "the dummy image; the batch: 4 raw/*.md documents cut to 600 characters, the first two with a 1024x768 PNG, "
        "through the worker's BatchEngine (5 s window so all 4 form one batch)",
    ]
    results: dict[str, Any] = {}
    results_path = args.workdir / "results.json"
    parameters = parameter_count(args.text_layers, args.vision_layers)
    for step in steps:
        need = step_need(step, parameters) / GIB
        available = wait_for_memory(need, args.wait_s)
        report.section(f"{step} (needs ~{need:.1f} GiB; started with {available:.1f} GiB of RAM available)")
        if available < need:
            report.skipped(step, f"needs ~{need:.1f} GiB, {available:.1f} GiB available")
            report.write()
            continue
        print(f"rehearsal: {step}", file=sys.stderr)
        try:
            results[step] = run_step(step, spec, args.workdir)
            add_rows(report, step, results[step])
        except (RuntimeError, OSError, ValueError, KeyError) as error:
            report.failed(step, error)
        results_path.write_text(json.dumps(results, indent=1))
        report.write()
    if not args.keep:
        for key in ("checkpoint", "prequantized"):
            shutil.rmtree(spec[key], ignore_errors=True)
    print(report.markdown())


if __name__ == "__main__":
    main()
