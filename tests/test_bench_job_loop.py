"""bench.job_loop: its figures from a run's records, and (``--bench``) a reduced run through the real loop."""

from __future__ import annotations

import pytest

from bench import job_loop
from bench.job_loop import Run


def run_at(concurrency: int, docs_per_s: float) -> Run:
    return Run("vllm", str(concurrency), concurrency, docs_per_s, 1.0, 2.0, 1.0, 1, concurrency)


def test_the_knee_is_the_least_concurrency_near_the_best_throughput():
    runs = [run_at(1, 0.2), run_at(3, 0.5), run_at(8, 0.93), run_at(16, 1.0), run_at(32, 0.98)]
    assert job_loop.knee(runs).worker_concurrency == 8  # 0.93 >= 0.9 x 1.0; 3 is not
    assert job_loop.knee([run_at(1, 1.0), run_at(8, 1.05)]).worker_concurrency == 1


def test_percentiles_are_values_of_the_sample():
    values = [float(v) for v in range(1, 21)]
    assert job_loop.percentile(values, 0.5) == 11.0 and job_loop.percentile(values, 0.95) == 19.0
    assert job_loop.percentile([3.0], 0.95) == 3.0


def test_no_two_notes_are_the_same_prompt():
    texts = job_loop.notes(32, 200)
    assert len(set(texts)) == 32 and all(len(text) < 220 for text in texts)


@pytest.mark.bench
@pytest.mark.model
@pytest.mark.slow
def test_a_reduced_run_writes_its_block(tmp_path):
    out = tmp_path / "RESULTS.md"
    job_loop.main(["--concurrency", "2", "--jobs", "4", "--new-tokens", "4", "--no-transformers", "--out", str(out)])
    text = out.read_text()
    assert "<!-- begin bench.job_loop -->" in text and "vllm, MAX_CONCURRENCY=2" in text and "failed" not in text
