"""The KV-cache estimate a batch is sized by, against the cache a real ``generate`` builds.

The fast tests check the arithmetic on MedGemma 1.5 4B's own shapes; the ``model`` tests
measure the ``past_key_values`` of real generations on the stand-in (whose decoder has
MedGemma's layout: 5 sliding-window layers to 1 global, one KV head of 256) and batches
that the engine splits to fit a memory budget.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from bench.medgemma_shapes import TEXT_SHAPES, build_config
from medgemma.engines.batching import BatchEngine
from medgemma.engines.memory import KVCacheShape, system_memory, usable_bytes
from medgemma.request import parse_job_input
from medgemma.worker import Worker
from tests.conftest import run

MEDGEMMA = KVCacheShape.from_text_config(build_config(tiny=False).text_config.to_dict(), "bfloat16")


def test_medgemmas_kv_geometry_from_its_config():
    assert MEDGEMMA == KVCacheShape(
        full_layers=5, sliding_layers=29, sliding_window=1024, kv_heads=4, head_dim=256, bytes_per_value=2
    )
    assert TEXT_SHAPES["num_hidden_layers"] == 34


def test_a_short_batch_holds_every_token_in_every_layer():
    # 8 rows padded to 600 tokens + 200 new: under the 1024 window, so all 34 layers hold 800 tokens.
    per_token_layer = 2 * 8 * 4 * 256 * 2  # K and V, rows, KV heads, head dim, bf16
    assert MEDGEMMA.batch_bytes([600, 300, 120, 599, 1, 2, 3, 4], 200) == per_token_layer * 34 * 800


def test_sliding_layers_stop_at_their_window_but_not_before_the_first_step():
    one_row = 2 * 4 * 256 * 2
    # 4000 + 512: global layers hold everything, sliding ones 1024 tokens at the end...
    at_end = 5 * 4512 + 29 * 1024
    # ...but right after the prefill each sliding layer still holds the whole 4000-token prompt.
    after_prefill = 34 * 4000
    assert after_prefill > at_end
    assert MEDGEMMA.batch_bytes([4000], 512) == one_row * after_prefill
    # A long answer after a short prompt: the end is the peak.
    assert MEDGEMMA.batch_bytes([100], 30_000) == one_row * (5 * 30_100 + 29 * 1024)


def test_float32_doubles_it_and_an_empty_batch_needs_nothing():
    float32 = replace(MEDGEMMA, bytes_per_value=4)
    assert float32.batch_bytes([300, 200], 64) == 2 * MEDGEMMA.batch_bytes([300, 200], 64)
    assert MEDGEMMA.batch_bytes([], 64) == 0


def test_a_config_without_sliding_layers_or_head_dim():
    shape = KVCacheShape.from_text_config(
        {"num_hidden_layers": 4, "num_attention_heads": 8, "hidden_size": 512, "sliding_window": None}, "float32"
    )
    assert shape == KVCacheShape(4, 0, 0, 8, 64, 4)
    assert shape.batch_bytes([10], 5) == 2 * 8 * 64 * 4 * 4 * 15


def test_usable_memory_keeps_the_reserve_and_never_goes_negative():
    gib = 2**30
    assert usable_bytes(20 * gib, 80 * gib, 0.9) == 12 * gib
    assert usable_bytes(5 * gib, 80 * gib, 0.9) == 0


def test_system_memory_reads_meminfo(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24576000 kB\nMemFree:         1000 kB\nMemAvailable:   12288000 kB\n")
    assert system_memory(meminfo) == (12288000 * 1024, 24576000 * 1024)
    assert system_memory(tmp_path / "absent") is None
    meminfo.write_text("MemTotal: lots\n")
    assert system_memory(meminfo) is None


def test_a_containers_memory_limit_caps_the_ram_available(tmp_path):
    """cgroup v2: meminfo shows the host; memory.max is what the OOM killer enforces."""
    gib = 2**30
    meminfo, cgroup = tmp_path / "meminfo", tmp_path / "cgroup"
    meminfo.write_text(f"MemTotal: {64 * gib // 1024} kB\nMemAvailable: {40 * gib // 1024} kB\n")
    cgroup.mkdir()
    (cgroup / "memory.max").write_text(f"{16 * gib}\n")
    (cgroup / "memory.current").write_text(f"{12 * gib}\n")
    (cgroup / "memory.stat").write_text(f"anon {10 * gib}\nfile {2 * gib}\ninactive_file {gib}\n")
    assert system_memory(meminfo, cgroup) == (5 * gib, 16 * gib)  # 16 - 12 + 1 of droppable page cache
    (cgroup / "memory.max").write_text("max\n")
    assert system_memory(meminfo, cgroup) == (40 * gib, 64 * gib)  # no limit: the host's figures
    assert system_memory(meminfo, tmp_path / "no-cgroup") == (40 * gib, 64 * gib)


# ---- measured on the stand-in --------------------------------------------------------------------


def cache_bytes(past_key_values) -> int:
    """Bytes the cache's tensors keep alive: their storages (a trimmed sliding layer may be a view)."""
    storages = {}
    for layer in past_key_values.layers:
        for tensor in (layer.keys, layer.values):
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def generated_cache(backend, lengths: list[int], new_tokens: int) -> int:
    """Bytes of the KV cache a real greedy ``generate`` holds after ``new_tokens`` tokens."""
    import torch

    longest = max(lengths)
    ids = torch.randint(1000, 20_000, (len(lengths), longest))
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):  # left padding, as the engine collates
        ids[row, : longest - length] = backend.pad_id
        mask[row, longest - length :] = 1
    with torch.inference_mode():
        output = backend.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            return_dict_in_generate=True,
        )
    assert output.sequences.shape[1] == longest + new_tokens
    return cache_bytes(output.past_key_values)


@pytest.mark.model
@pytest.mark.parametrize(
    ("lengths", "new_tokens", "moment"),
    [
        ([200, 120], 16, "at the end, under the 512-token window"),
        ([700, 300], 1, "right after the prefill, over the window"),
        ([500, 200], 24, "at the end, over the window"),
    ],
)
def test_the_estimate_is_the_cache_a_real_generate_holds(transformers_worker, lengths, new_tokens, moment):
    backend = transformers_worker.engine.backend
    estimate = backend.kv_cache_bytes(lengths, new_tokens)
    measured = generated_cache(backend, lengths, new_tokens)
    # The estimate counts the last token, which generate never feeds back: a hair over, never under.
    assert measured <= estimate <= measured * 1.01, (moment, measured, estimate)


@pytest.mark.model
def test_a_long_prompt_peaks_right_after_its_prefill(transformers_worker):
    backend = transformers_worker.engine.backend
    after_prefill = generated_cache(backend, [700], 1)
    at_end = generated_cache(backend, [700], 8)
    assert at_end < after_prefill <= backend.kv_cache_bytes([700], 8) <= after_prefill * 1.01


@pytest.mark.model
def test_on_cpu_a_batch_may_use_the_ram_the_kernel_reports_available(transformers_worker):
    budget = transformers_worker.engine.backend.memory_budget()
    available, total = system_memory()
    assert budget is not None and abs(budget - available) < 0.05 * total


@pytest.mark.model
def test_what_a_finished_batch_freed_counts_as_available_again(transformers_worker):
    """A job that fits alone is never refused because an earlier batch ran: the heap glibc keeps
    after a batch goes back to the kernel before the budget is read."""
    import psutil

    backend, process = transformers_worker.engine.backend, psutil.Process()
    backend.memory_budget()
    before = process.memory_info().rss
    lengths = [1000] * 2  # a 70 MiB KV cache: untrimmed, RSS stayed ~70 MiB up (measured)
    generated_cache(backend, lengths, 1)
    held = process.memory_info().rss - before
    backend.memory_budget()
    kept = process.memory_info().rss - before
    assert kept < 0.5 * backend.kv_cache_bytes(lengths, 1), (held, kept)


class Budgeted:
    """The stand-in's backend with a fixed memory budget: how much is free is the one thing a test can't set."""

    def __init__(self, backend, budget: int):
        self._backend, self._budget = backend, budget
        self.info = backend.info

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def memory_budget(self) -> int:
        return self._budget


TEXTS = [
    "SYNTHETIC. Sodium 128, potassium 5.9, creatinine 2.4.",
    "SYNTHETIC. New atrial fibrillation, rate 132, started on apixaban 5 mg twice daily and metoprolol.",
    "SYNTHETIC. CT head: no acute haemorrhage.",
    "SYNTHETIC. Discharged on amoxicillin-clavulanate to complete seven days.",
]


@pytest.fixture
def budgeted_worker(transformers_worker):
    """An engine whose budget holds the KV cache of two of TEXTS' jobs, not three."""
    backend = transformers_worker.engine.backend
    settings = replace(transformers_worker.settings, dummy_image=False)
    lengths = [backend.prepare(parse_job_input({"text": text}, settings)).prompt_tokens for text in TEXTS]
    budget = backend.kv_cache_bytes(sorted(lengths)[-2:], settings.max_new_tokens)
    assert backend.kv_cache_bytes(sorted(lengths)[:3], settings.max_new_tokens) > budget  # three never fit
    engine = BatchEngine(Budgeted(backend, budget), max_batch_size=8, batch_wait_seconds=1.0)
    yield Worker(settings, engine)
    engine.close()


@pytest.mark.model
def test_a_batch_that_would_not_fit_is_split_and_every_job_answered(budgeted_worker, caplog):
    caplog.set_level("INFO")

    async def all_at_once():
        jobs = [budgeted_worker.run({"id": f"j{i}", "input": {"text": text}}) for i, text in enumerate(TEXTS)]
        return await asyncio.gather(*jobs)

    results = run(all_at_once())
    assert [result.get("batch_size") for result in results] == [2, 2, 2, 2], results
    assert all(result["output"] for result in results)
    assert "batch split to fit memory: 2 of 4 jobs now" in caplog.text


@pytest.mark.model
def test_a_job_that_cannot_fit_alone_is_refused_and_the_rest_served(budgeted_worker):
    async def together():
        long_job = budgeted_worker.run({"id": "long", "input": {"text": " ".join(TEXTS * 6)}})
        return await asyncio.gather(long_job, budgeted_worker.run({"id": "short", "input": {"text": TEXTS[0]}}))

    long_result, short_result = run(together())
    assert set(long_result) == {"error"}
    assert long_result["error"].startswith("text: the prompt is ")
    assert "does not fit the" in long_result["error"] and "lower max_new_tokens" in long_result["error"]
    assert short_result["output"] and short_result["batch_size"] == 1


@pytest.mark.model
def test_a_job_that_fits_alone_is_never_refused_for_the_jobs_beside_it(transformers_worker):
    """A budget that holds the longest job alone and no two: three sent together are each served alone."""
    backend, texts, tokens = transformers_worker.engine.backend, TEXTS[1:], 2
    settings = replace(transformers_worker.settings, dummy_image=False)
    lengths = [backend.prepare(parse_job_input({"text": text}, settings)).prompt_tokens for text in texts]
    budget = backend.kv_cache_bytes([max(lengths)], tokens)
    assert backend.kv_cache_bytes(sorted(lengths)[:2], tokens) > budget  # no two fit
    engine = BatchEngine(Budgeted(backend, budget), max_batch_size=8, batch_wait_seconds=1.0)
    worker = Worker(settings, engine)

    async def all_at_once():
        jobs = [{"id": f"j{i}", "input": {"text": text, "max_new_tokens": tokens}} for i, text in enumerate(texts)]
        return await asyncio.gather(*(worker.run(job) for job in jobs))

    try:
        results = run(all_at_once())
    finally:
        engine.close()
    assert [result.get("batch_size") for result in results] == [1, 1, 1], results
    assert all("error" not in result and result["usage"]["completion_tokens"] for result in results)
