"""GPU benchmark with MedGemma 1.5 4B's exact shapes and random weights.

    python -m bench.gpu --out "$OUT"            # full run, ~8 min on one H100
    python -m bench.gpu --out "$OUT" --quick    # smoke run, ~2 min
    python -m bench.gpu --help                  # works without CUDA
    python -m bench.gpu --out "$OUT" --skip nf4,naive,coldstart,static,int8,compile,lead-compile
                                                # the vLLM rows and their transformers baseline alone

Why random weights: the GPU machine has no network and no hub access, and
speed and memory depend only on shapes, dtypes and kernels, not on weight
values. The model is ``Gemma3ForConditionalGeneration`` built in code with the
real config (34-layer 2560-wide decoder, 5 sliding : 1 global attention,
262k vocabulary; 27-layer SigLIP at 896 px giving 256 image tokens), created
directly on the GPU in bfloat16. Prompts are token ids (random text ids, plus
``<start_of_image>`` + 256 image tokens + ``<end_of_image>`` and a white
image's pixel values where a dummy image is sent), so no tokenizer is needed;
every job generates exactly ``--new-tokens`` tokens (EOS suppressed until then),
greedy, so throughput numbers are comparable across paths.

What is measured, in priority order (sections past ``--budget-s`` are skipped
and say so; the table is rewritten after every section so a timeout keeps
what was done):

1. bf16, our path (``HFBackend.generate_batch``): TTFT, decode tok/s, memory.
2. nf4 (our GPU default: bf16 compute, sdpa), quantized at load from a bf16
   checkpoint on local disk exactly as ``medgemma.engines.hf_loading.load_checkpoint`` does (same
   ``quantization_config``); TTFT, decode tok/s, text-only vs dummy image,
   static KV cache (bitsandbytes models are never auto-compiled).
3. nf4 batching: N concurrent jobs through the real ``BatchEngine`` with
   ``max_batch_size=N`` vs ``1``.
4. The naive path as a peer: nf4 with float16 compute and float16 weights,
   ``attn_implementation="eager"``, a dummy image on every job, one
   ``model.generate`` per job, one job at a time; "ours vs naive" per document.
5. Cold start: loading a pre-quantized nf4 checkpoint vs quantizing bf16 at load.
6. bf16 static KV cache without compilation vs plain.
7. int8 (bitsandbytes LLM.int8): TTFT, decode tok/s, memory.
8. bf16 static cache + transformers' automatic torch.compile (what
   ``STATIC_CACHE=true`` does on CUDA), then the worker's ``TORCH_COMPILE=true``
   recipe, each vs plain; the first call, compilation included, is shown apart.
9. vLLM (only where ``vllm`` is installed; the header's "engines measured" line
   says whether it was), bf16 then fp8 (``QUANTIZATION``'s vLLM default on
   Ada/Hopper/Blackwell): cold start (``vllm.LLM(...)`` constructed to ready),
   TTFT and decode tok/s for one job, N jobs at once in docs/s, each vs the
   transformers engine in bf16 measured in the same run on the same token ids.
   How vLLM is started and fed: ``bench.gpu_vllm``.

Memory figures are the model's own: ``torch.cuda.memory_allocated`` after load
minus before (weights), and ``max_memory_allocated`` during generation minus
the allocation before the model was loaded (peak). The bf16 model stays
resident for sections 6 and 8, so absolute figures would include it.

The model and its prompts are ``bench.medgemma_shapes``'s, the measurement helpers and
targets ``bench.gpu_measure``'s, the vLLM sections ``bench.gpu_vllm``'s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import (
    REPO_ROOT,
    Report,
    Sample,
    Stopwatch,
    Target,
    apply_presets,
    command_line,
    decode_rate,
    fmt_bytes,
    naive_generate,
    pin_generation,
    sample,
    speedup,
)
from bench.gpu_measure import (
    BATCH_TARGET,
    BF16_DECODE_TARGET,
    NAIVE_TARGET,
    NF4_WEIGHTS_TARGET,
    PREQUANTIZED_TARGET,
    Device,
    SingleJob,
    concurrent_docs_per_second,
    measure_single,
    ours_load_kwargs,
    timed_load,
)
from bench.gpu_vllm import VLLM_NOTE, EngineRows, VllmSections, vllm_installed
from bench.medgemma_shapes import (
    EOS_IDS,
    PAD,
    Shape,
    as_loaded,
    build_config,
    build_model,
    make_prepared,
    naive_inputs,
    naive_quantization,
)

# Defaults sized for ~8 min on one H100, and a smoke run; explicit options win over both.
NORMAL = {"reps": 3, "prompt_len": 512, "new_tokens": 64, "concurrency": "1,4,8", "skip": "", "vllm_eager": False}
QUICK = {
    "reps": 1,
    "prompt_len": 128,
    "new_tokens": 8,
    "concurrency": "1,4,8",
    "skip": "compile,lead-compile",
    "vllm_eager": True,
}
SECTIONS = (
    "bf16",
    "nf4",
    "batching",
    "naive",
    "coldstart",
    "int8",
    "static",
    "compile",
    "lead-compile",
    "vllm",
    "vllm-fp8",
)

# Job set for batching and the naive comparison: prompt lengths spread around
# --prompt-len, as real documents are, so left padding costs what it costs.
JOB_LENGTH_FACTORS = (1.0, 0.8, 1.2, 0.9, 1.1, 0.75, 1.25, 0.95)


# -- the run ----------------------------------------------------------------------------------------------


class Run(VllmSections):
    """Sections share state (checkpoints on disk, the resident bf16 model) and one report."""

    def __init__(self, args: argparse.Namespace, report: Report, device: Device, scratch: Path):
        self.args, self.report, self.device, self.scratch = args, report, device, scratch
        self.reps = args.reps
        self.skip = set(filter(None, args.skip.split(",")))
        self.concurrency = [int(value) for value in args.concurrency.split(",")]
        self.config = build_config(args.cpu_dry_run)
        self.shape = Shape(args.prompt_len, True, args.new_tokens)  # ours by default: DUMMY_IMAGE=true
        self.text_shape = Shape(args.prompt_len, False, args.new_tokens)  # what vLLM gets (no processor offline)
        self.bf16: Any = None
        self.bf16_single: SingleJob | None = None
        self.ours_batched_per_doc: Sample | None = None
        self.ours_sequential_per_doc: Sample | None = None
        self.quantize_at_load_s: list[float] = []
        self.text_reference: EngineRows | None = None  # transformers bf16 on vLLM's (text-only) prompts
        self.vllm_checkpoint: Path | None = None
        self.vllm_rows: dict[str, EngineRows] = {}  # quantization -> vLLM's figures
        self.vllm_missing = "vllm not installed: vLLM rows skipped" if not vllm_installed() else "not run yet"
        self.started = time.perf_counter()

    def job_set(self, count: int, image: bool = True) -> list[Any]:
        return [
            make_prepared(
                Shape(
                    max(32, int(self.args.prompt_len * JOB_LENGTH_FACTORS[index % len(JOB_LENGTH_FACTORS)])),
                    image,
                    self.args.new_tokens,
                ),
                self.config,
                seed=100 + index,
            )
            for index in range(count)
        ]

    def section(self, name: str | None, title: str, body: Callable[[], None]) -> str:
        """Run one section unless skipped or over budget; a failure becomes a row, never a crash.

        Returns what happened: "done", "skipped by --skip", "skipped by the time budget" or "failed".
        """
        if name in self.skip:
            return "skipped by --skip"
        self.report.section(title)
        elapsed = time.perf_counter() - self.started
        outcome = "done"
        if elapsed > self.args.budget_s:
            self.report.add("skipped", f"time budget: {elapsed:.0f} s used of --budget-s {self.args.budget_s:.0f}")
            outcome = "skipped by the time budget"
        else:
            print(f"bench.gpu: {title} ...", file=sys.stderr, flush=True)
            try:
                body()
            except Exception as error:  # the rest of the table still matters
                traceback.print_exc()
                self.report.failed(title, error)
                self.device.free()
                outcome = "failed"
        self.report.write()
        return outcome

    def add_single(self, label: str, result: SingleJob, decode_target: Target | None = None) -> None:
        add = self.report.add
        add(f"{label}: time to first token", result.ttft.show(3))
        add(f"{label}: decode tokens/s", result.rate.show(1), decode_target, result.rate.median)
        add(f"{label}: seconds per job ({self.args.new_tokens} tokens)", result.seconds.show(3))
        add(f"{label}: peak memory during generation", fmt_bytes(result.peak_bytes))

    # 0. the bf16 model and its checkpoint
    def build(self) -> None:
        base = self.device.allocated()
        with Stopwatch() as watch:
            model = build_model(self.config, self.device.name)
            self.device.sync()
        self.report.add("build random-weight model in bf16 on the device", f"{watch.seconds:.1f} s")
        self.report.add("bf16 weights (memory_allocated after build)", fmt_bytes(self.device.allocated() - base))
        params = sum(parameter.numel() for parameter in model.parameters())
        self.report.add("parameters", f"{params / 1e9:.2f} B")
        with Stopwatch() as watch:
            model.save_pretrained(self.scratch / "bf16")
        self.report.add("save bf16 checkpoint to local disk", f"{watch.seconds:.1f} s")
        self.bf16 = as_loaded(model, "bf16", watch.seconds)

    # 1.
    def bf16_section(self) -> None:
        self.bf16_single = measure_single(
            self.bf16, make_prepared(self.shape, self.config, 1), self.reps, self.device, 0
        )
        self.add_single("bf16, batch 1, dummy image", self.bf16_single, BF16_DECODE_TARGET)

    # 2. + 3.
    def nf4_section(self) -> None:
        base = self.device.allocated()
        model, load_s = timed_load(self.scratch / "bf16", self.device, **ours_load_kwargs("nf4", self.device))
        self.quantize_at_load_s.append(load_s)
        weights = self.device.allocated() - base
        self.report.add("nf4: quantize-at-load time (bf16 checkpoint on local disk)", f"{load_s:.1f} s")
        self.report.add(
            "nf4: weights (memory_allocated after load)", fmt_bytes(weights), NF4_WEIGHTS_TARGET, weights / 1e9
        )
        ours = as_loaded(model, "nf4", load_s)
        image = measure_single(ours, make_prepared(self.shape, self.config, 1), self.reps, self.device, base)
        self.add_single("nf4 (ours), batch 1, dummy image", image)
        text = measure_single(
            ours,
            make_prepared(Shape(self.args.prompt_len, False, self.args.new_tokens), self.config, 1),
            self.reps,
            self.device,
            base,
        )
        self.report.add("nf4 (ours), batch 1, text only: seconds per job", text.seconds.show(3))
        self.report.add(
            "dummy image cost on nf4: dummy s/job / text-only s/job", f"{speedup(image.seconds, text.seconds):.2f}x"
        )
        self.report.add("nf4 (ours), text only: time to first token", text.ttft.show(3))
        if "static" not in self.skip:
            pin_generation(ours, cache_implementation="static")  # bitsandbytes models are never auto-compiled
            static = measure_single(ours, make_prepared(self.shape, self.config, 1), self.reps, self.device, base)
            pin_generation(ours)
            self.report.add(
                "nf4 + static KV cache (STATIC_CACHE=true; not compiled: bnb is not compileable)",
                f"{static.rate.show(1)}; {static.seconds.show(3)} per job",
            )
            self.report.add(
                "nf4 static cache vs dynamic: dynamic s/job / static s/job",
                f"{speedup(image.seconds, static.seconds):.2f}x",
            )
        if "batching" not in self.skip:
            self.report.section("nf4 (ours): N concurrent jobs through BatchEngine, max_batch_size=N vs 1")
            self.batching(ours)
        if "coldstart" not in self.skip:
            with Stopwatch() as watch:
                model.save_pretrained(self.scratch / "nf4")
            self.report.add("save pre-quantized nf4 checkpoint", f"{watch.seconds:.1f} s")
        del ours, model
        self.device.free()

    def batching(self, ours: Any) -> None:
        from medgemma.engines.batching import BatchEngine

        jobs = self.job_set(max(self.concurrency))
        rates: dict[tuple[int, str], list[float]] = {}
        largest: dict[int, int] = {}
        engine = BatchEngine(ours, max(self.concurrency), 0.02)
        try:
            concurrent_docs_per_second(engine, jobs, max(self.concurrency))  # warm-up at the largest batch shape
            for _ in range(self.reps):
                for n in self.concurrency:
                    for mode, batch_size in (("batched", n), ("one", 1)):
                        if n == 1 and mode == "one":
                            continue  # the same configuration as batched at N=1
                        rate, batch = concurrent_docs_per_second(engine, jobs[:n], batch_size)
                        rates.setdefault((n, mode), []).append(rate)
                        if mode == "batched":
                            largest[n] = max(largest.get(n, 0), batch)
        finally:
            engine.close()
        for n in self.concurrency:
            batched = sample(rates[(n, "batched")], "docs/s")
            if n == 1:
                self.report.add("N=1 (both settings are the same configuration)", batched.show(3))
                continue
            one = sample(rates[(n, "one")], "docs/s")
            ratio = batched.median / one.median
            self.report.add(f"N={n}, batched (largest batch formed: {largest[n]})", batched.show(3))
            self.report.add(f"N={n}, one at a time", one.show(3))
            target = BATCH_TARGET if n == max(self.concurrency) and n >= 8 else None
            self.report.add(f"N={n}, batched / one at a time (docs/s)", f"{ratio:.2f}x", target, ratio)
        top = max(self.concurrency)
        self.ours_batched_per_doc = sample((1 / rate for rate in rates[(top, "batched")]), "s")
        if (top, "one") in rates:
            self.ours_sequential_per_doc = sample((1 / rate for rate in rates[(top, "one")]), "s")

    # 4.
    def naive_section(self) -> None:
        import torch

        self.report.notes.append(
            "naive (GPU): nf4 quantized at load with bnb_4bit_compute_dtype=float16 and dtype=float16, "
            "attn_implementation='eager', a dummy image on every job, one model.generate per job, one job at a time"
        )
        base = self.device.allocated()
        kwargs = {
            "dtype": torch.float16,
            "attn_implementation": "eager",
            "device_map": self.device.map,
            "quantization_config": naive_quantization(),
        }
        model, load_s = timed_load(self.scratch / "bf16", self.device, **kwargs)
        model.generation_config.eos_token_id, model.generation_config.pad_token_id = EOS_IDS, PAD
        self.report.add("naive: load (quantize at load, float16)", f"{load_s:.1f} s")
        jobs = self.job_set(max(self.concurrency))
        target_device = next(model.parameters()).device
        inputs = [naive_inputs(job, target_device, torch.float16) for job in jobs]
        naive_generate(model, inputs[0], self.args.new_tokens)  # warm-up
        self.device.reset_peak()
        per_doc, ttft, rate = [], [], []
        for _ in range(self.reps):
            timings = []
            with Stopwatch() as watch:
                for job_inputs in inputs:
                    timings.append(naive_generate(model, job_inputs, self.args.new_tokens))
            per_doc.append(watch.seconds / len(inputs))
            ttft.append(timings[0].ttft_s)
            rate.append(decode_rate(timings[0].new_tokens, timings[0].ttft_s, timings[0].seconds))
        naive = sample(per_doc, "s")
        self.report.add("naive: time to first token (job 1)", sample(ttft, "s").show(3))
        self.report.add("naive: decode tokens/s (job 1)", sample(rate, "tok/s").show(1))
        self.report.add(f"naive: end-to-end s/document ({len(inputs)} jobs one at a time)", naive.show(3))
        self.report.add("naive: peak memory during generation", fmt_bytes(self.device.peak() - base))
        if self.ours_sequential_per_doc is not None:
            self.report.add(
                "ours one at a time vs naive: naive s/doc / ours s/doc",
                f"{speedup(naive, self.ours_sequential_per_doc):.2f}x",
            )
        if self.ours_batched_per_doc is not None:
            ratio = speedup(naive, self.ours_batched_per_doc)
            self.report.add(
                f"ours (batched, N={max(self.concurrency)}) vs naive: naive s/doc / ours s/doc",
                f"{ratio:.2f}x",
                NAIVE_TARGET,
                ratio,
            )
        del model, inputs
        self.device.free()

    # 5.
    def coldstart_section(self) -> None:
        nf4_dir = self.scratch / "nf4"
        if not nf4_dir.is_dir():  # the nf4 section was skipped: quantize once here (that load counts as a rep)
            model, seconds = timed_load(self.scratch / "bf16", self.device, **ours_load_kwargs("nf4", self.device))
            self.quantize_at_load_s.append(seconds)
            model.save_pretrained(nf4_dir)
            del model
            self.device.free()
        prequantized = []
        for _rep in range(self.reps):  # interleaved so cache state and drift hit both alike
            model, seconds = timed_load(nf4_dir, self.device, **ours_load_kwargs("prequantized", self.device))
            prequantized.append(seconds)
            del model
            self.device.free()
            if len(self.quantize_at_load_s) < self.reps:
                model, seconds = timed_load(self.scratch / "bf16", self.device, **ours_load_kwargs("nf4", self.device))
                self.quantize_at_load_s.append(seconds)
                del model
                self.device.free()
        pre, quant = sample(prequantized, "s"), sample(self.quantize_at_load_s, "s")
        ratio = speedup(quant, pre)
        self.report.add("load pre-quantized nf4 checkpoint", pre.show(2))
        self.report.add("quantize bf16 checkpoint at load (nf4)", quant.show(2))
        self.report.add(
            "pre-quantized vs quantize-at-load: quantize s / pre-quantized s",
            f"{ratio:.2f}x",
            PREQUANTIZED_TARGET,
            ratio,
        )
        sizes = {
            name: sum(path.stat().st_size for path in (self.scratch / name).glob("*.safetensors"))
            for name in ("bf16", "nf4")
        }
        self.report.add(
            "checkpoint size on disk: bf16 / pre-quantized nf4",
            f"{sizes['bf16'] / 1e9:.2f} GB / {sizes['nf4'] / 1e9:.2f} GB",
        )

    # 6.
    def int8_section(self) -> None:
        base = self.device.allocated()
        model, load_s = timed_load(self.scratch / "bf16", self.device, **ours_load_kwargs("int8", self.device))
        weights = self.device.allocated() - base
        self.report.add("int8: quantize-at-load time", f"{load_s:.1f} s")
        self.report.add("int8: weights (memory_allocated after load)", fmt_bytes(weights))
        loaded = as_loaded(model, "int8", load_s)
        self.add_single(
            "int8, batch 1, dummy image",
            measure_single(loaded, make_prepared(self.shape, self.config, 1), self.reps, self.device, base),
        )
        del loaded, model
        self.device.free()

    # 7.
    def static_section(self) -> None:
        self._bf16_variant(
            "bf16 + static KV cache, no compile (disable_compile=True)",
            cache_implementation="static",
            disable_compile=True,
        )

    def compile_section(self) -> None:
        self._bf16_variant(
            "bf16 + static KV cache + transformers' automatic torch.compile (STATIC_CACHE=true)",
            cache_implementation="static",
        )

    def lead_compile_section(self) -> None:
        """The worker's TORCH_COMPILE=true: model.forward compiled (reduce-overhead, dynamic), dynamic cache."""
        import torch

        model = self.bf16.model
        original = model.forward
        model.forward = torch.compile(original, mode="reduce-overhead", dynamic=True)
        try:
            self._bf16_variant("bf16 + TORCH_COMPILE=true (forward compiled, dynamic cache)")
        finally:
            model.forward = original

    def _bf16_variant(self, label: str, **overrides: Any) -> None:
        if self.bf16_single is None:
            raise RuntimeError("needs the bf16 section")
        pin_generation(self.bf16, **overrides)
        try:
            result = measure_single(self.bf16, make_prepared(self.shape, self.config, 1), self.reps, self.device, 0)
        finally:
            pin_generation(self.bf16)
        self.report.add(f"{label}: first call (includes any compilation)", f"{result.first_call_s:.1f} s")
        self.report.add(f"{label}: decode tokens/s", result.rate.show(1), BF16_DECODE_TARGET, result.rate.median)
        self.report.add(f"{label}: time to first token", result.ttft.show(3))
        self.report.add(
            f"{label} vs plain bf16: plain s/job / this s/job",
            f"{speedup(self.bf16_single.seconds, result.seconds):.2f}x",
        )


def run(args: argparse.Namespace) -> None:
    import torch

    device_name = "cpu" if args.cpu_dry_run else "cuda"
    if device_name == "cuda" and not torch.cuda.is_available():
        print(
            "bench.gpu: no CUDA device is available (torch.cuda.is_available() is False); this benchmark needs one. "
            "Use `python -m bench` for the CPU benchmark.",
            file=sys.stderr,
        )
        sys.exit(2)
    out = Path(args.out)
    title = "MedGemma worker benchmark: GPU, MedGemma 1.5 4B shapes, random weights"
    if args.cpu_dry_run:
        title += " (CPU DRY RUN: toy shapes, numbers meaningless)"
    report = Report(title, command_line("bench.gpu"), out / "RESULTS-gpu.md")
    scratch = Path(tempfile.mkdtemp(prefix="medgemma-gpu-bench-", dir=args.scratch))
    device = Device(device_name)
    bench = Run(args, report, device, scratch)
    report.machine.append(bench.engines_line())  # kept up to date as the vLLM sections run
    report.notes += [
        f"prompts: {args.prompt_len} random text token ids; with a dummy image, plus <start_of_image> + "
        f"{bench.config.mm_tokens_per_image} image tokens + <end_of_image> and "
        f"{bench.config.vision_config.image_size}x{bench.config.vision_config.image_size} pixel values; every job "
        f"generates exactly {args.new_tokens} tokens (greedy, EOS suppressed until then)",
        "ours: medgemma.engines.transformers.HFBackend.generate_batch (the worker's collate + generate) and "
        "medgemma.engines.batching.BatchEngine; loaded with the kwargs load_checkpoint uses (bfloat16, sdpa, device_map)",
        "end-to-end per document here = job submitted -> completion; tokenization and image preprocessing are "
        "excluded on both paths (no tokenizer offline)",
        f"medians of {args.reps} repetitions after one untimed warm-up call; job set for batching/naive: prompt "
        f"lengths {args.prompt_len} x {', '.join(f'{factor:g}' for factor in JOB_LENGTH_FACTORS)}",
        "memory: the model's own (allocated after load minus before; peak during generation minus before load)",
        "quantize-at-load reads a bf16 checkpoint from local disk (page cache); from the hub it would also download 8.6 GB",
        VLLM_NOTE,
    ]
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        report.notes.append("bitsandbytes is not installed: nf4/int8/naive/cold-start sections fail")
    try:
        bench.section(None, "bf16 model (built on the device, random weights)", bench.build)
        if bench.bf16 is None:
            raise SystemExit("bench.gpu: the model could not be built; see the table")
        bench.section("bf16", "bf16, our path, one job", bench.bf16_section)
        bench.section("nf4", "nf4, our GPU default (bf16 compute, sdpa)", bench.nf4_section)
        bench.section(
            "naive", "naive path (nf4 + float16 compute, eager, dummy image, one generate per job)", bench.naive_section
        )
        bench.section(
            "coldstart", "cold start: pre-quantized nf4 checkpoint vs quantizing at load", bench.coldstart_section
        )
        bench.section("static", "bf16 static KV cache", bench.static_section)
        bench.section("int8", "int8 (bitsandbytes LLM.int8)", bench.int8_section)
        bench.section("compile", "bf16 static KV cache + torch.compile", bench.compile_section)
        bench.section(
            "lead-compile", "bf16 TORCH_COMPILE=true as HFBackend.load applies it", bench.lead_compile_section
        )
        bench.vllm_section("vllm", "none")
        bench.vllm_section("vllm-fp8", "fp8")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        report.write()
    print(report.markdown())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gpu",
        description="GPU benchmark of the MedGemma worker on a random-weight model with MedGemma 1.5 4B's shapes.",
    )
    parser.add_argument(
        "--out",
        default=os.environ.get("OUT") or str(REPO_ROOT / "bench" / "out"),
        help="directory for RESULTS-gpu.md ($OUT, else bench/out)",
    )
    parser.add_argument(
        "--reps", type=int, help="repetitions of every measurement; the median is reported (3; quick 1)"
    )
    parser.add_argument("--prompt-len", type=int, help="text tokens per prompt (512; quick 128)")
    parser.add_argument("--new-tokens", type=int, help="tokens every job generates, exactly (64; quick 8)")
    parser.add_argument("--concurrency", help="concurrent job counts (1,4,8)")
    parser.add_argument(
        "--skip", help=f"comma list of sections to skip: {', '.join(SECTIONS)} (quick: compile, lead-compile)"
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=450,
        help="start no new section after this many seconds (450); skipped sections say so, "
        "and a second run with --skip of the finished ones completes the table",
    )
    parser.add_argument(
        "--scratch", default=None, help="directory for the temporary checkpoints (~12 GB; default: $TMPDIR)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run (~2 min): the quick values above")
    parser.add_argument(
        "--vllm-eager",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="start vLLM with enforce_eager (no torch.compile or CUDA-graph capture, which take minutes); "
        "default: compiled, as the worker's ENFORCE_EAGER=false (quick: eager)",
    )
    parser.add_argument(
        "--cpu-dry-run",
        action="store_true",
        help="check the script's plumbing without a GPU: toy shapes on CPU, numbers meaningless",
    )
    args = parser.parse_args(argv)
    apply_presets(args, NORMAL, QUICK)
    unknown = set(filter(None, args.skip.split(","))) - set(SECTIONS)
    if unknown:
        parser.error(f"--skip: unknown section(s) {', '.join(sorted(unknown))}; known: {', '.join(SECTIONS)}")
    if min(args.reps, args.new_tokens, args.prompt_len) < 1 or args.new_tokens < 2:
        parser.error("--reps and --prompt-len must be at least 1 and --new-tokens at least 2")
    try:
        if any(int(value) < 1 for value in args.concurrency.split(",")):
            raise ValueError
    except ValueError:
        parser.error(f"--concurrency must be comma-separated counts >= 1, got {args.concurrency!r}")
    return args


def main(argv: list[str] | None = None) -> None:
    run(parse_args(argv))


if __name__ == "__main__":
    main()
