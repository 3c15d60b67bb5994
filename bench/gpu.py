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
   vLLM is started with the worker's own engine arguments
   (``medgemma.engines.vllm.engine_kwargs``) plus ``skip_tokenizer_init`` (no
   tokenizer offline) and fed ``TokensPrompt`` ids through ``LLM.generate``.
   Prompts are text only on both engines here: vLLM's image path needs the HF
   processor, which needs a tokenizer (``language_model_only`` leaves the vision
   tower out). Compiled by default (the worker's ``ENFORCE_EAGER=false``; its
   torch.compile and CUDA-graph capture count in the cold start), eager under
   ``--quick`` or ``--vllm-eager``.

Memory figures are the model's own: ``torch.cuda.memory_allocated`` after load
minus before (weights), and ``max_memory_allocated`` during generation minus
the allocation before the model was loaded (peak). The bf16 model stays
resident for sections 6 and 8, so absolute figures would include it.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import gc
import importlib.util
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
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

# Targets from the speed issue.
BF16_DECODE_TARGET = Target(150, " tok/s")
BATCH_TARGET = Target(4, "x")  # 8 concurrent, batched vs one at a time
NAIVE_TARGET = Target(3, "x")  # ours vs naive, end-to-end per document
NF4_WEIGHTS_TARGET = Target(4, " GB", at_least=False)
PREQUANTIZED_TARGET = Target(2, "x")  # cold start, pre-quantized vs quantize at load

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

# MedGemma 1.5 4B (google/medgemma-1.5-4b-it), as in its config.json.
BOS, BOI, EOI, IMAGE_TOKEN = 2, 255_999, 256_000, 262_144
EOS_IDS, PAD = [1, 106], 0
TEXT_SHAPES: dict[str, Any] = dict(
    vocab_size=262_208,
    hidden_size=2560,
    num_hidden_layers=34,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=256,
    intermediate_size=10_240,
    sliding_window=1024,
    query_pre_attn_scalar=256,
    max_position_embeddings=131_072,
    rms_norm_eps=1e-6,
    hidden_activation="gelu_pytorch_tanh",
)
VISION_SHAPES: dict[str, Any] = dict(
    image_size=896,
    patch_size=14,
    hidden_size=1152,
    num_hidden_layers=27,
    intermediate_size=4304,
    num_attention_heads=16,
    layer_norm_eps=1e-6,
    vision_use_head=False,
)
MM_TOKENS = 256
SLIDING_PATTERN = 6  # 5 local layers then 1 global
ROPE = {"global": 1_000_000.0, "local": 10_000.0, "linear_factor": 8.0}
# Plumbing check without a GPU (--cpu-dry-run): the same code on toy shapes. Every width is
# a multiple of 64: bitsandbytes' CPU 4-bit kernels quantize in blocks of 64 input features.
TINY_TEXT: dict[str, Any] = {
    **TEXT_SHAPES,
    "hidden_size": 64,
    "num_hidden_layers": 6,
    "head_dim": 32,  # the smallest head vLLM's CPU attention serves
    "intermediate_size": 128,
    "sliding_window": 64,
}
TINY_VISION: dict[str, Any] = {
    **VISION_SHAPES,
    "image_size": 56,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "intermediate_size": 64,
    "num_attention_heads": 2,
}
TINY_MM_TOKENS = 4

# Job set for batching and the naive comparison: prompt lengths spread around
# --prompt-len, as real documents are, so left padding costs what it costs.
JOB_LENGTH_FACTORS = (1.0, 0.8, 1.2, 0.9, 1.1, 0.75, 1.25, 0.95)


# -- the model -------------------------------------------------------------------------------


def build_config(tiny: bool, text_layers: int | None = None, vision_layers: int | None = None) -> Any:
    """A Gemma3Config with MedGemma 1.5 4B's shapes (or toy shapes for the CPU dry run).

    ``text_layers`` / ``vision_layers`` cut the depth and nothing else (a fast shape check);
    a cut decoder still ends with a global-attention layer, so both kinds are exercised.
    """
    from transformers import Gemma3Config, Gemma3TextConfig, SiglipVisionConfig

    shapes = dict(TINY_TEXT if tiny else TEXT_SHAPES)
    vision_shapes = dict(TINY_VISION if tiny else VISION_SHAPES)
    if vision_layers is not None:
        vision_shapes["num_hidden_layers"] = vision_layers
    layer_types = [
        "full_attention" if (index + 1) % SLIDING_PATTERN == 0 else "sliding_attention"
        for index in range(shapes["num_hidden_layers"])
    ]
    if text_layers is not None:
        shapes["num_hidden_layers"] = text_layers
        layer_types = layer_types[: text_layers - 1] + ["full_attention"]
    common = dict(shapes, layer_types=layer_types, eos_token_id=EOS_IDS, pad_token_id=PAD, bos_token_id=BOS)
    try:  # transformers 5: one rope dict per attention type
        text = Gemma3TextConfig(
            **common,
            rope_parameters={
                "full_attention": {
                    "rope_type": "linear",
                    "factor": ROPE["linear_factor"],
                    "rope_theta": ROPE["global"],
                },
                "sliding_attention": {"rope_type": "default", "rope_theta": ROPE["local"]},
            },
        )
    except TypeError:  # transformers 4.x spelling
        text = Gemma3TextConfig(
            **common,
            rope_theta=ROPE["global"],
            rope_local_base_freq=ROPE["local"],
            rope_scaling={"rope_type": "linear", "factor": ROPE["linear_factor"]},
        )
    vision = SiglipVisionConfig(**vision_shapes)
    return Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=TINY_MM_TOKENS if tiny else MM_TOKENS,
        boi_token_index=BOI,
        eoi_token_index=EOI,
        image_token_index=IMAGE_TOKEN,
        eos_token_id=EOS_IDS,
    )


def build_model(config: Any, device: str) -> Any:
    """Random-weight bf16 model created on the device itself (no minutes-long CPU init and copy)."""
    import torch
    from transformers import Gemma3ForConditionalGeneration

    torch.manual_seed(0)
    with torch.device(device):
        model = Gemma3ForConditionalGeneration._from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa")
    # HF zero-initialises the projector, which would make images a no-op.
    torch.nn.init.normal_(model.model.multi_modal_projector.mm_input_projection_weight, std=0.02)
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = EOS_IDS, PAD
    model.generation_config.bos_token_id = BOS
    return model.eval()


class _IdsOnlyTokenizer:
    """What HFBackend needs from a tokenizer when prompts arrive as token ids."""

    eos_token_id, pad_token_id, unk_token_id = EOS_IDS[0], PAD, 3

    def convert_tokens_to_ids(self, tokens: list[str]) -> list[int]:
        return [self.unk_token_id] * len(tokens)  # no thinking markers to strip

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return ""  # random weights: the text is meaningless, and decoding is not what is measured


class _IdsOnlyProcessor:
    """What HFBackend needs from a processor when prompts arrive as token ids (its prompt builder is unused)."""

    tokenizer = _IdsOnlyTokenizer()
    chat_template = ""
    boi_token = full_image_sequence = "<start_of_image>"


def as_loaded(model: Any, label: str, load_seconds: float, **overrides: Any) -> Any:
    """Wrap a model in the worker's own HFBackend, so "ours" runs the worker's collate/generate code."""
    from medgemma.engines.base import ModelInfo
    from medgemma.engines.transformers import HFBackend

    device = str(next(model.parameters()).device.type)
    info = ModelInfo(
        engine="transformers",
        source=f"random-weights:{label}",
        run_mode=f"{device}/{label}",
        device=device,
        dtype="bfloat16",
        quantization=label,
        load_seconds=round(load_seconds, 2),
        context_length=int(model.config.get_text_config().max_position_embeddings),
        vision=True,
        max_concurrency=1,
    )
    loaded = HFBackend(_IdsOnlyProcessor(), model, info)
    pin_generation(loaded, **overrides)
    return loaded


# -- prompts ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """Everything that decides a prompt's cost."""

    text_tokens: int
    image: bool
    new_tokens: int


def make_prepared(shape: Shape, config: Any, seed: int) -> Any:
    """A ``medgemma.engines.base.Prepared`` built from token ids, laid out like the chat template's output."""
    import torch

    from medgemma.engines.base import Prepared
    from medgemma.request import GenerationRequest
    from medgemma.tokens import Prompt

    generator = torch.Generator().manual_seed(seed)
    text = torch.randint(1000, 250_000, (shape.text_tokens,), generator=generator)
    text[0] = BOS
    types = torch.zeros_like(text)
    pixels = None
    if shape.image:  # system prompt, then the image, then the document, as the template puts them
        head, tail = text[:16], text[16:]
        mm = config.mm_tokens_per_image
        image = torch.tensor([BOI] + [IMAGE_TOKEN] * mm + [EOI])
        text = torch.cat([head, image, tail])
        types = torch.zeros_like(text)
        types[len(head) + 1 : len(head) + 1 + mm] = 1
        size = config.vision_config.image_size
        pixels = torch.ones((1, 3, size, size))  # a white image after (x - 0.5) / 0.5 normalisation
    request = GenerationRequest(
        text="(token ids)",
        system_prompt="",
        mode="summarize",
        used_dummy_image=shape.image,
        max_new_tokens=shape.new_tokens,
    )
    features = {"input_ids": text, "token_type_ids": types}
    if pixels is not None:
        features["pixel_values"] = pixels
    return Prepared(request=request, prompt=Prompt(ids=text.tolist()), prepare_seconds=0.0, features=features)


def naive_inputs(prepared: Any, device: Any, dtype: Any) -> dict[str, Any]:
    """What ``processor(...).to(device, dtype)`` hands to ``generate`` in the original projects."""
    inputs = {
        "input_ids": prepared.features["input_ids"][None].to(device),
        "attention_mask": prepared.features["input_ids"].new_ones((1, prepared.prompt_tokens)).to(device),
        "token_type_ids": prepared.features["token_type_ids"][None].to(device),
    }
    if "pixel_values" in prepared.features:
        inputs["pixel_values"] = prepared.features["pixel_values"].to(device, dtype=dtype)
    return inputs


# -- measurement --------------------------------------------------------------------------------------


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


# -- vLLM -------------------------------------------------------------------------------------------------


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


# -- the run ----------------------------------------------------------------------------------------------


class Run:
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

    def engines_line(self) -> str:
        """The report's plain statement of which engines this run measured."""
        if self.vllm_rows:
            return f"engines measured: transformers, vllm ({', '.join(self.vllm_rows)})"
        return f"engines measured: transformers ({self.vllm_missing})"

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
            "quantization_config": _naive_quantization(),
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


def _naive_quantization() -> Any:
    """The original projects' BitsAndBytesConfig: nf4 with float16 compute."""
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float16,
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
        "vLLM rows: vllm.LLM(**medgemma.engines.vllm.engine_kwargs(...), skip_tokenizer_init=True) on the bf16 "
        "checkpoint, fed the transformers rows' token ids as TokensPrompt, SamplingParams(min_tokens=max_tokens="
        "--new-tokens, ignore_eos=True, temperature=0); TTFT is vLLM's first_token_latency (request arrival to first "
        "token), decode tok/s from its engine-core token timestamps, s/job and docs/s from LLM.generate's wall time; "
        "cold start is LLM(...) constructed (its processes, weights, compilation unless eager, KV cache) vs "
        "transformers' in-process from_pretrained; no vLLM memory rows: vLLM takes GPU_MEMORY_UTILIZATION of the GPU "
        "in its own process",
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
