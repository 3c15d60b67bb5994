"""vLLM in ``bench.gpu``: the helpers, and the sections that measure vLLM beside transformers bf16.

vLLM is started with the worker's own engine arguments
(``medgemma.engines.vllm.engine_kwargs``) plus ``skip_tokenizer_init`` (no
tokenizer offline) and fed ``TokensPrompt`` ids through ``LLM.generate``.
Prompts are text only on both engines here: vLLM's image path needs the HF
processor, which needs a tokenizer (``language_model_only`` leaves the vision
tower out). Compiled by default (the worker's ``ENFORCE_EAGER=false``; its
torch.compile and CUDA-graph capture count in the cold start), eager under
``--quick`` or ``--vllm-eager``.

The transformers engine in bf16 is measured on the same text-only prompts first
(``vllm_prepare``), and every vLLM row is set beside it (``compare``).
"""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import Report, Sample, Stopwatch, decode_rate, fmt_bytes, sample, speedup
from bench.gpu_measure import (
    BF16_DECODE_TARGET,
    Device,
    SingleJob,
    concurrent_docs_per_second,
    measure_single,
    ours_load_kwargs,
    timed_load,
)
from bench.medgemma_shapes import Shape, make_prepared

VLLM_NOTE = (
    "vLLM rows: vllm.LLM(**medgemma.engines.vllm.engine_kwargs(...), skip_tokenizer_init=True) on the bf16 "
    "checkpoint, fed the transformers rows' token ids as TokensPrompt, SamplingParams(min_tokens=max_tokens="
    "--new-tokens, ignore_eos=True, temperature=0); TTFT is vLLM's first_token_latency (request arrival to first "
    "token), decode tok/s from its engine-core token timestamps, s/job and docs/s from LLM.generate's wall time; "
    "cold start is LLM(...) constructed (its processes, weights, compilation unless eager, KV cache) vs "
    "transformers' in-process from_pretrained; no vLLM memory rows: vLLM takes GPU_MEMORY_UTILIZATION of the GPU "
    "in its own process"
)  # the report's note on how the vLLM rows are measured


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def save_text_only(model: Any, path: Path) -> None:
    """The decoder alone as ``Gemma3ForCausalLM``, laid out as ``medgemma.standin``'s text-only stand-in.

    What vLLM serves where torchvision is missing (its multimodal Gemma 3 imports it; PyPI
    has no torchvision for CPU torch): the same decoder weights and shapes.
    """
    from safetensors.torch import save_file

    text = copy.deepcopy(model.config.get_text_config())
    text.architectures = ["Gemma3ForCausalLM"]
    text.dtype = "bfloat16"
    text.save_pretrained(path)
    model.generation_config.save_pretrained(path)
    weights = {
        f"model.{name}": tensor.detach().cpu().contiguous()
        for name, tensor in model.model.language_model.state_dict().items()
    }
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})


def exact_tokens(new_tokens: int) -> Any:
    """Greedy, exactly ``new_tokens`` tokens (EOS ignored), ids only: the transformers rows' work."""
    from vllm import SamplingParams

    return SamplingParams(
        max_tokens=new_tokens, min_tokens=new_tokens, ignore_eos=True, temperature=0.0, detokenize=False
    )


def vllm_generate(llm: Any, prompts: list[Any], new_tokens: int) -> tuple[list[Any], float]:
    """``LLM.generate`` on token-id prompts; (outputs, wall seconds), every job checked for its token count."""
    with Stopwatch() as watch:
        outputs = llm.generate(prompts, exact_tokens(new_tokens), use_tqdm=False)
    counts = {len(output.outputs[0].token_ids) for output in outputs}
    if counts != {new_tokens}:
        raise RuntimeError(f"vLLM generated {sorted(counts)} tokens per job, expected {new_tokens}")
    return outputs, watch.seconds


def vllm_single(llm: Any, prompt: Any, new_tokens: int, reps: int) -> SingleJob:
    """One job at a time; TTFT is vLLM's own (request arrival to first token), decode rate its engine core's."""
    with Stopwatch() as first:
        vllm_generate(llm, [prompt], new_tokens)
    ttft, rate, seconds = [], [], []
    for _ in range(reps):
        (output,), wall = vllm_generate(llm, [prompt], new_tokens)
        stats = output.metrics  # filled because engine_kwargs sets disable_log_stats=False
        if stats is None or not stats.first_token_ts:
            raise RuntimeError("vLLM returned no request timings (RequestOutput.metrics)")
        ttft.append(stats.first_token_latency)
        rate.append(
            decode_rate(new_tokens, stats.first_token_ts - stats.queued_ts, stats.last_token_ts - stats.queued_ts)
        )
        seconds.append(wall)
    return SingleJob(sample(ttft, "s"), sample(rate, "tok/s"), sample(seconds, "s"), first.seconds, 0)


@dataclass
class EngineRows:
    """One engine's side-by-side figures: cold start, one job, and docs/s per concurrency."""

    start: Sample
    single: SingleJob
    docs_per_s: dict[int, Sample]


class VllmSections:
    """``bench.gpu.Run``'s vLLM sections, last in priority order; they read and set the run's shared state."""

    args: Any
    report: Report
    device: Device
    scratch: Path
    reps: int
    concurrency: list[int]
    config: Any
    text_shape: Shape
    bf16: Any
    text_reference: EngineRows | None
    vllm_checkpoint: Path | None
    vllm_rows: dict[str, EngineRows]
    vllm_missing: str
    section: Callable[[str | None, str, Callable[[], None]], str]
    job_set: Callable[..., list[Any]]
    add_single: Callable[..., None]

    def engines_line(self) -> str:
        """The report's plain statement of which engines this run measured."""
        if self.vllm_rows:
            return f"engines measured: transformers, vllm ({', '.join(self.vllm_rows)})"
        return f"engines measured: transformers ({self.vllm_missing})"

    def vllm_section(self, name: str, quantization: str) -> None:
        """One vLLM engine (bf16 or fp8), last in priority order; the header says whether vLLM was measured."""
        title = f"vLLM, {'bf16' if quantization == 'none' else quantization}, text only, vs transformers bf16"
        if not vllm_installed():
            self.section(name, title, lambda: self.report.add("skipped", "vllm is not installed"))
        else:
            outcome = self.section(name, title, lambda: self.vllm_engine(quantization))
            if not self.vllm_rows:
                self.vllm_missing = f"vllm installed, vLLM rows {outcome if outcome != 'done' else 'not served here'}"
        self.report.machine[-1] = self.engines_line()
        self.report.write()

    # 9.
    def vllm_prepare(self) -> None:
        """Once, before the first vLLM engine: the transformers bf16 baseline, vLLM's checkpoint, then GPU room.

        The resident bf16 model is measured on the same text-only prompts vLLM gets and then
        released (nothing after vLLM needs it), so vLLM finds the GPU as the worker would.
        """
        import torch

        from medgemma.engines.batching import BatchEngine

        if self.bf16 is None:
            raise RuntimeError("the resident bf16 model is gone: an earlier vLLM section failed part-way")
        single = measure_single(self.bf16, make_prepared(self.text_shape, self.config, 1), self.reps, self.device, 0)
        jobs = self.job_set(max(self.concurrency), image=False)
        engine = BatchEngine(self.bf16, max(self.concurrency), 0.02)
        rates: dict[int, list[float]] = {}
        try:
            concurrent_docs_per_second(engine, jobs, max(self.concurrency))  # warm-up at the largest batch shape
            for _ in range(self.reps):
                for n in self.concurrency:
                    rates.setdefault(n, []).append(concurrent_docs_per_second(engine, jobs[:n], n)[0])
        finally:
            engine.close()
        if importlib.util.find_spec("torchvision") is not None:
            self.vllm_checkpoint = self.scratch / "bf16"  # the multimodal checkpoint; language_model_only at start
        else:
            self.vllm_checkpoint = self.scratch / "text-only"
            save_text_only(self.bf16.model, self.vllm_checkpoint)
            self.report.notes.append(
                "vLLM: torchvision is not installed (its multimodal Gemma 3 imports it), so vLLM served the same "
                "decoder saved as Gemma3ForCausalLM (as on CPU in the tests)"
            )
        self.bf16 = None
        if self.device.cuda:
            torch._dynamo.reset()  # compiled graphs (TORCH_COMPILE rows) would keep their CUDA-graph pools
        self.device.free()
        load_kwargs = {**ours_load_kwargs("none", self.device), "device_map": self.device.map}
        model, load_s = timed_load(self.scratch / "bf16", self.device, **load_kwargs)
        del model
        self.device.free()
        self.text_reference = EngineRows(
            sample([load_s], "s"), single, {n: sample(values, "docs/s") for n, values in rates.items()}
        )
        add = self.report.add
        add("transformers bf16 (ours): load bf16 checkpoint from local disk (from_pretrained, in this process)",
            f"{load_s:.1f} s")  # fmt: skip
        self.add_single("transformers bf16 (ours), batch 1, text only", single)
        for n, docs in self.text_reference.docs_per_s.items():
            add(f"transformers bf16 (ours), text only: N={n} at once through BatchEngine", docs.show(3))

    def vllm_engine(self, quantization: str) -> None:
        """Start vLLM with the worker's engine arguments on the bf16 checkpoint, measure it, shut it down."""
        from vllm import LLM, TokensPrompt

        from medgemma.engines import vllm as ours
        from medgemma.settings import Settings
        from medgemma.sources import ModelSource

        device = self.device.name
        if quantization == "fp8" and ours._quantization(Settings.from_env({}), device) != "fp8":
            reason = "vLLM on CPU serves no fp8" if device == "cpu" else "this GPU has no fp8 tensor cores"
            self.report.add("skipped", f"{reason} (QUANTIZATION's vLLM default here is none, i.e. bf16)")
            return
        if self.text_reference is None:
            self.vllm_prepare()
        assert self.vllm_checkpoint is not None and self.text_reference is not None
        eager = self.args.vllm_eager
        settings = Settings.from_env(
            {"ENGINE": "vllm", "QUANTIZATION": quantization, "ENFORCE_EAGER": str(eager).lower(),
             "VLLM_CPU_KVCACHE_SPACE": "1"}
        )  # fmt: skip
        source = ModelSource(str(self.vllm_checkpoint), f"random-weights:{self.vllm_checkpoint.name}", True)
        kwargs = ours.engine_kwargs(settings, source, device, "bfloat16", quantization, vision=False)
        kwargs["skip_tokenizer_init"] = True  # no tokenizer offline; prompts arrive as token ids
        if self.vllm_checkpoint.name == "bf16":
            kwargs["language_model_only"] = True  # text-only prompts: no vision tower, no HF processor
        label = f"vLLM {'bf16' if quantization == 'none' else quantization}"
        if self.device.cuda:
            import torch

            self.report.add(f"{label}: GPU memory free before start", fmt_bytes(torch.cuda.mem_get_info()[0]))
        with Stopwatch() as watch:
            llm = LLM(**kwargs)
        try:
            mode = "eager: enforce_eager" if eager else "compiled: torch.compile and CUDA-graph capture included"
            self.report.add(f"{label}: cold start, LLM(...) to ready ({mode})", f"{watch.seconds:.1f} s")
            cache = llm.llm_engine.vllm_config.cache_config
            self.report.add(
                f"{label}: KV cache (vLLM's report)",
                f"{cache.kv_cache_size_tokens} tokens; {cache.kv_cache_max_concurrency or 0:.1f} requests of "
                f"max_model_len {llm.llm_engine.model_config.max_model_len}",
            )
            prompt = TokensPrompt(prompt_token_ids=make_prepared(self.text_shape, self.config, 1).prompt.ids)
            single = vllm_single(llm, prompt, self.args.new_tokens, self.reps)
            self.report.add(f"{label}: first call (warm-up, not in the medians)", f"{single.first_call_s:.2f} s")
            self.add_vllm_single(label, single)
            prompts = [
                TokensPrompt(prompt_token_ids=job.prompt.ids) for job in self.job_set(max(self.concurrency), False)
            ]
            vllm_generate(llm, prompts, self.args.new_tokens)  # warm-up at the largest load
            rates: dict[int, list[float]] = {}
            for _ in range(self.reps):
                for n in self.concurrency:
                    rates.setdefault(n, []).append(n / vllm_generate(llm, prompts[:n], self.args.new_tokens)[1])
        finally:
            llm.llm_engine.engine_core.shutdown()  # its processes end and give the GPU back
            del llm
            self.device.free()
        rows = EngineRows(
            sample([watch.seconds], "s"), single, {n: sample(values, "docs/s") for n, values in rates.items()}
        )
        for n, docs in rows.docs_per_s.items():
            self.report.add(f"{label}: N={n} at once (LLM.generate)", docs.show(3))
        self.vllm_rows[quantization if quantization != "none" else "bf16"] = rows
        self.compare(label, rows, "transformers bf16", self.text_reference)
        if label != "vLLM bf16" and "bf16" in self.vllm_rows:
            self.compare(label, rows, "vLLM bf16", self.vllm_rows["bf16"])

    def add_vllm_single(self, label: str, result: SingleJob) -> None:
        add = self.report.add
        add(f"{label}, batch 1, text only: time to first token", result.ttft.show(3))
        add(
            f"{label}, batch 1, text only: decode tokens/s", result.rate.show(1), BF16_DECODE_TARGET, result.rate.median
        )
        add(f"{label}, batch 1, text only: seconds per job ({self.args.new_tokens} tokens)", result.seconds.show(3))

    def compare(self, label: str, rows: EngineRows, base_label: str, base: EngineRows) -> None:
        """Ratios of ``rows`` over ``base``, measured in this run on the same token ids.

        Above 1 means ``label`` is faster, except the cold start's (``label`` s / ``base`` s: above 1 is slower).
        """
        add = self.report.add
        add(f"{label} vs {base_label}: one job, {base_label} s/job / {label} s/job",
            f"{speedup(base.single.seconds, rows.single.seconds):.2f}x")  # fmt: skip
        add(f"{label} vs {base_label}: decode tok/s, {label} / {base_label}",
            f"{rows.single.rate.median / base.single.rate.median:.2f}x")  # fmt: skip
        add(f"{label} vs {base_label}: time to first token, {base_label} / {label}",
            f"{speedup(base.single.ttft, rows.single.ttft):.2f}x")  # fmt: skip
        for n, docs in rows.docs_per_s.items():
            if n in base.docs_per_s:
                add(f"{label} vs {base_label}: N={n} at once, docs/s {label} / {base_label}",
                    f"{docs.median / base.docs_per_s[n].median:.2f}x")  # fmt: skip
        add(f"{label} vs {base_label}: cold start, {label} s / {base_label} s",
            f"{rows.start.median / base.start.median:.2f}x")  # fmt: skip
