"""Measuring the transformers engine on a device: memory counters, one job, N jobs at once, loads.

Shared by ``bench.gpu``'s sections and its vLLM sections (``bench.gpu_vllm``), with the
targets from the speed issue that their rows are checked against.
"""

from __future__ import annotations

import asyncio
import gc
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import Sample, Stopwatch, Target, decode_rate, sample

# Targets from the speed issue.
BF16_DECODE_TARGET = Target(150, " tok/s")
BATCH_TARGET = Target(4, "x")  # 8 concurrent, batched vs one at a time
NAIVE_TARGET = Target(3, "x")  # ours vs naive, end-to-end per document
NF4_WEIGHTS_TARGET = Target(4, " GB", at_least=False)
PREQUANTIZED_TARGET = Target(2, "x")  # cold start, pre-quantized vs quantize at load


class Device:
    """CUDA memory counters and sync, or no-ops for the CPU dry run."""

    def __init__(self, name: str):
        import torch

        self.torch, self.name, self.cuda = torch, name, name == "cuda"

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def allocated(self) -> int:
        return self.torch.cuda.memory_allocated() if self.cuda else 0

    def reset_peak(self) -> None:
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()

    def peak(self) -> int:
        return self.torch.cuda.max_memory_allocated() if self.cuda else 0

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()

    @property
    def map(self) -> dict[str, Any]:
        return {"": 0 if self.cuda else "cpu"}


@dataclass
class SingleJob:
    ttft: Sample
    rate: Sample
    seconds: Sample
    first_call_s: float
    peak_bytes: int


def measure_single(loaded: Any, prepared: Any, reps: int, device: Device, baseline: int) -> SingleJob:
    """One job at a time through HFBackend.generate_batch; the first call (warm-up/compile) is timed apart."""
    with Stopwatch() as first:
        loaded.generate_batch([prepared])
    device.reset_peak()
    ttft, rate, seconds = [], [], []
    for _ in range(reps):
        completion = loaded.generate_batch([prepared])[0]
        if completion.completion_tokens != prepared.request.max_new_tokens:
            raise RuntimeError(f"expected {prepared.request.max_new_tokens} tokens, got {completion.completion_tokens}")
        ttft.append(completion.time_to_first_token)
        seconds.append(completion.generate_seconds)
        rate.append(
            decode_rate(completion.completion_tokens, completion.time_to_first_token, completion.generate_seconds)
        )
    return SingleJob(
        sample(ttft, "s"), sample(rate, "tok/s"), sample(seconds, "s"), first.seconds, device.peak() - baseline
    )


def concurrent_docs_per_second(engine: Any, jobs: list[Any], max_batch_size: int) -> tuple[float, int]:
    """N jobs submitted at once to the engine at ``max_batch_size``; returns (docs/s, largest batch it formed).

    One long-lived engine (as in the worker) serves every measurement; only its
    ``max_batch_size`` changes, which it reads afresh for every batch.
    """

    async def run() -> tuple[float, int]:
        engine.max_batch_size = max_batch_size
        started = time.perf_counter()
        results = await asyncio.gather(*(engine.generate(job) for job in jobs))
        wall = time.perf_counter() - started
        return len(jobs) / wall, max(result.batch_size for result in results)

    return asyncio.run(run())


def timed_load(path: Path, device: Device, **kwargs: Any) -> tuple[Any, float]:
    """``from_pretrained`` wall time, device work included."""
    from transformers import AutoModelForImageTextToText

    device.sync()
    with Stopwatch() as watch:
        model = AutoModelForImageTextToText.from_pretrained(str(path), local_files_only=True, **kwargs).eval()
        device.sync()
    return model, watch.seconds


def ours_load_kwargs(quantization: str, device: Device) -> dict[str, Any]:
    """The keyword arguments ``load_checkpoint`` passes for a bf16 checkpoint on CUDA."""
    import torch

    from medgemma.engines.hf_loading import model_load_kwargs

    prequantized = quantization == "prequantized"
    return model_load_kwargs(
        "nf4" if prequantized else quantization,
        torch.bfloat16,
        "cuda" if device.cuda else "cpu",
        prequantized=prequantized,
    )
