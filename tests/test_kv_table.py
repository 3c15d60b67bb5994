"""The GPU table of ``bench.kv_table``: vLLM's own KV-cache planning on MedGemma's config, in seconds.

Only vLLM's classes and functions are imported (its KV-cache specs and planning code); no engine
is started and no GPU is needed. The dummy image's 260 tokens are the stand-in processor's count
(``bench.kv_table.full_image_tokens``), given here so that no processor is loaded.
"""

from __future__ import annotations

import pytest
import torch
from vllm.config import CacheConfig, SchedulerConfig
from vllm.v1.kv_cache_interface import AttentionSpec, FullAttentionSpec, KVCacheSpec, SlidingWindowSpec

from bench import kv_table
from bench.common import GIB
from medgemma.engines.capacity import jobs_held
from medgemma.settings import Settings

IMAGE_TOKENS = 260  # "\n\n<start_of_image>" + 256 image tokens + "<end_of_image>\n\n" (Gemma 3's tokenizer)
ALLOWANCE = 2 * GIB
PER_TOKEN_PER_LAYER = 2 * 4 * 256 * 2  # K and V, 4 KV heads, head dim 256, bf16


@pytest.fixture(scope="module")
def specs() -> dict[str, KVCacheSpec]:
    return kv_table.layer_specs()


@pytest.fixture(scope="module")
def rows() -> list[kv_table.TableRow]:
    return kv_table.table(IMAGE_TOKENS, ALLOWANCE)


def test_the_specs_are_medgemmas_layers(specs: dict[str, KVCacheSpec]) -> None:
    kinds = [type(spec) for spec in specs.values()]
    assert len(kinds) == 34
    assert [index for index, kind in enumerate(kinds) if kind is FullAttentionSpec] == [5, 11, 17, 23, 29]
    assert all(spec.sliding_window == 1024 for spec in specs.values() if isinstance(spec, SlidingWindowSpec))
    assert all(isinstance(spec, AttentionSpec) for spec in specs.values())
    assert all(
        spec.dtype == torch.bfloat16 and spec.block_size == 16
        for spec in specs.values()
        if isinstance(spec, AttentionSpec)
    )


def test_the_table_uses_vllms_defaults() -> None:
    assert kv_table.BLOCK_SIZE == CacheConfig.DEFAULT_BLOCK_SIZE
    assert Settings.from_env({}).max_num_seqs is None  # unset: vLLM's SchedulerConfig.DEFAULT_MAX_NUM_SEQS


def test_a_layer_costs_k_and_v_of_4_heads_of_256_in_bf16_per_token(specs: dict[str, KVCacheSpec]) -> None:
    full = next(spec for spec in specs.values() if type(spec) is FullAttentionSpec)
    assert full.page_size_bytes == 16 * PER_TOKEN_PER_LAYER
    assert kv_table.bytes_per_token(specs) == {"full": 5 * PER_TOKEN_PER_LAYER, "sliding": 29 * PER_TOKEN_PER_LAYER}


def test_vllm_groups_the_layers_in_sevens_of_five_and_sizes_its_pool_so(specs: dict[str, KVCacheSpec]) -> None:
    budget = 10 * GIB
    plan = kv_table.plan(budget, 131_072, specs)
    assert [group["kind"] for group in plan.groups].count("full_attention") == 1
    assert [group["kind"] for group in plan.groups].count("sliding_window") == 6
    assert sorted(plan.layers_per_group) == [4, 5, 5, 5, 5, 5, 5]  # 29 sliding layers: one slot is padding
    assert plan.bytes_per_block == 5 * 16 * PER_TOKEN_PER_LAYER
    assert plan.num_blocks == budget // plan.bytes_per_block
    # vLLM's figure: a 131,072-token request holds 8,192 full blocks, and in each sliding group its
    # window plus two 2,048-token batches in flight (async scheduling), plus one block.
    sliding_blocks = -(-(1023 + 2 * 2048) // 16) + 1
    assert plan.kv_max_concurrency == pytest.approx(plan.num_blocks / (8192 + 6 * sliding_blocks))


def test_the_table_concurrency_is_jobs_held_capped_at_max_num_seqs(rows: list[kv_table.TableRow]) -> None:
    settings = Settings.from_env({})
    job_tokens = settings.typical_job_tokens(IMAGE_TOKENS)
    assert job_tokens == 512 + 260 + 512
    for row in rows:
        assert row.plan is not None and row.context_plan is not None and not row.refused
        assert row.jobs_held == jobs_held(row.plan.num_blocks, row.plan.groups, job_tokens)
        assert row.max_concurrency == max(1, min(SchedulerConfig.DEFAULT_MAX_NUM_SEQS, row.jobs_held))
        assert row.jobs_held > 4 * row.context_plan.kv_max_concurrency  # short jobs: many more than long requests


def test_more_memory_or_lighter_weights_hold_more_jobs(rows: list[kv_table.TableRow]) -> None:
    by_key = {(row.memory_gib, row.weights): row for row in rows}
    for weights in kv_table.WEIGHTS:
        held = [by_key[(memory, weights)].jobs_held for memory in (24, 48, 80)]
        assert held == sorted(held) and len(set(held)) == 3
    for memory in (24, 48, 80):
        assert by_key[(memory, "fp8")].jobs_held > by_key[(memory, "bf16")].jobs_held
    assert kv_table.weight_bytes("bf16") == pytest.approx(8.6e9, rel=0.01)  # MedGemma 1.5 4B, vision tower included


def test_a_gpu_without_room_for_one_max_model_len_request_is_refused_as_vllm_refuses() -> None:
    (row,) = kv_table.table(IMAGE_TOKENS, ALLOWANCE, gpus=[("tiny", 12, {})], weights=["bf16"])
    assert row.plan is None and row.refused  # vLLM's own ValueError: it would not start
    assert row.max_concurrency == 1
    assert "vLLM won't start" in kv_table.markdown_table([row])
