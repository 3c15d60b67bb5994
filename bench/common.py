"""Measurement helpers shared by the CPU and GPU benchmarks.

Both scripts report the same way: every number is the median of several
repetitions (one noisy rep must not decide a comparison), every comparison is a
ratio of two medians taken in the same run (so machine drift between runs can't
fake a speed-up), and the result is one markdown table that names the machine,
the date and the exact command, so a reader can tell which box produced it.

Only ``psutil`` and the standard library are imported at module level: the GPU
script must ``--help`` on a machine without CUDA and the CPU script's parent
process must stay small (its children do the heavy work).
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent
GB = 1e9
GIB = 2**30


# -- repeated measurements -----------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """Repeated measurements of one quantity; the median is what gets reported."""

    values: tuple[float, ...]
    unit: str

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def show(self, digits: int = 2) -> str:
        """``1.23 s`` for one value, ``1.23 s (n=3, 1.20-1.31)`` for several: the spread is part of the result."""
        head = f"{self.median:.{digits}f} {self.unit}".rstrip()
        if len(self.values) < 2:
            return head
        return f"{head} (n={len(self.values)}, {min(self.values):.{digits}f}-{max(self.values):.{digits}f})"


def sample(values: Iterable[float], unit: str) -> Sample:
    values = tuple(float(value) for value in values)
    if not values:
        raise ValueError("a sample needs at least one value")
    return Sample(values, unit)


def decode_rate(tokens: int, ttft_s: float, total_s: float) -> float:
    """Tokens/s after the first token: the decode loop alone, prefill excluded.

    The first token costs the whole prefill, so counting it would make short
    answers look slow; ``tokens - 1`` tokens are produced in ``total - ttft``.
    """
    if tokens < 2 or total_s <= ttft_s:
        return float("nan")
    return (tokens - 1) / (total_s - ttft_s)


class Stopwatch:
    """``with Stopwatch() as watch: ...`` then ``watch.seconds`` (perf_counter, monotonic)."""

    def __enter__(self) -> Stopwatch:
        self.started = time.perf_counter()
        self.seconds = float("nan")
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.started


class RssSampler:
    """Peak resident memory of this process, sampled on a background thread.

    ``ru_maxrss`` would be simpler but it is per-process-lifetime and counts the
    import of everything; sampling lets each phase report its own peak.
    """

    def __init__(self, interval_s: float = 0.02):
        self._process = psutil.Process()
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self.start_bytes = self.peak_bytes = self._process.memory_info().rss

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak_bytes = max(self.peak_bytes, self._process.memory_info().rss)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self._process.memory_info().rss)


# -- targets and the table -------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A goal from the speed issue: ``value >= threshold`` (or ``<=``)."""

    threshold: float
    unit: str
    at_least: bool = True

    def text(self) -> str:
        return f"{'>=' if self.at_least else '<='} {self.threshold:g}{self.unit}"

    def status(self, value: float) -> str:
        """``met`` or ``MISSED by 23% (3.08x)``: a miss always says by how much."""
        if value != value:  # NaN
            return "not measured"
        met = value >= self.threshold if self.at_least else value <= self.threshold
        if met:
            return "met"
        short = (
            (self.threshold - value) / self.threshold if self.at_least else (value - self.threshold) / self.threshold
        )
        return f"MISSED by {abs(short) * 100:.0f}% ({value:.2f}{self.unit})"


@dataclass
class Row:
    measure: str
    result: str
    target: str = ""
    status: str = ""


@dataclass
class Report:
    """One results table plus the context needed to trust it; written after every section."""

    title: str
    command: str
    path: Path
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    date: str = field(default_factory=lambda: datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"))
    machine: list[str] = field(default_factory=list)
    #: Set, the table is one named block of ``path`` (kept apart from the file's other tables:
    #: bench/RESULTS.md holds the CPU benchmark's and the engines' side by side); unset, the file's main table.
    block: str | None = None

    def __post_init__(self) -> None:
        if not self.machine:
            self.machine = describe_machine()

    def add(self, measure: str, result: str, target: Target | None = None, value: float | None = None) -> None:
        """Add a row; with a target, ``value`` is checked against it."""
        status = target.status(value) if target is not None and value is not None else ""
        self.rows.append(Row(measure, result, target.text() if target else "", status))

    def section(self, title: str) -> None:
        self.rows.append(Row(f"**{title}**", ""))

    def skipped(self, what: str, why: str) -> None:
        """An experiment not run (e.g. it can't fit this machine): a row that says why."""
        self.rows.append(Row(what, f"skipped: {why}", "", "SKIPPED"))

    def failed(self, what: str, error: BaseException | str) -> None:
        """A broken experiment becomes a row, not a crash: the rest of the table still matters."""
        message = (
            error
            if isinstance(error, str)
            else f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        )
        self.rows.append(Row(what, f"failed: {message[:200]}", "", "ERROR"))

    def markdown(self) -> str:
        lines = [
            f"# {self.title}",
            "",
            f"- date: {self.date}",
            f"- command: `{self.command}`",
            f"- wall time of the run: {time.perf_counter() - self.started:.0f} s",
            *(f"- {line}" for line in self.machine),
            "",
            "| Measure | Result | Target | Status |",
            "| --- | --- | --- | --- |",
            *(f"| {row.measure} | {row.result} | {row.target} | {row.status} |" for row in self.rows),
        ]
        if self.notes:
            lines += ["", "Notes:", "", *(f"- {note}" for note in self.notes)]
        return "\n".join(lines) + "\n"

    def write(self) -> None:
        """Rewrite this report's part of ``path``: its named block, or (no block) the text outside every block.

        Several benchmarks share one results file, each in its own block, so a run rewrites only its own.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        old = self.path.read_text() if self.path.is_file() else ""
        if self.block is None:
            blocks = "\n".join(match.group(0).rstrip() for match in _BLOCK.finditer(old))
            text = self.markdown().rstrip() + "\n" + (f"\n{blocks}\n" if blocks else "")
        else:
            text = splice_block(old, self.block, self.markdown())
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text(text)
        temporary.replace(self.path)

    def run(self, body: Callable[[], object]) -> None:
        """Run a benchmark's ``body``, then write this report: a broken run still leaves what it measured."""
        try:
            body()
        except Exception as error:
            self.failed("the run", error)
            raise
        finally:
            self.write()
            print(json.dumps({"written": str(self.path)}))


#: One named report's block in a results file (see ``Report.block``).
_BLOCK = re.compile(r"<!-- begin (\S+) -->\n.*?<!-- end \1 -->", re.DOTALL)


def splice_block(document: str, name: str, content: str) -> str:
    """``document`` with the block ``name`` (between its begin/end comments) replaced by ``content``, or appended."""
    begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    block = f"{begin}\n{content.rstrip()}\n{end}\n"
    if begin in document and end in document:
        head, rest = document.split(begin, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        return head + block + ("\n" + tail if tail.strip() else "")
    return (document.rstrip() + "\n\n" if document.strip() else "") + block


def speedup(slow: Sample, fast: Sample) -> float:
    """How many times faster ``fast`` is than ``slow`` (both durations): a ratio of medians."""
    return slow.median / fast.median


# -- the machine -----------------------------------------------------------------------


def describe_machine() -> list[str]:
    """CPU, cores, RAM, GPU, library versions and load: what the numbers depend on."""
    memory = psutil.virtual_memory().total
    flags = _cpu_flags()
    bf16 = "yes" if {"avx512_bf16", "amx_bf16"} & flags else "no (bf16 matmuls are emulated)"
    averages = os.getloadavg()
    load = ", ".join(f"{value:.2f}" for value in averages)
    cores = psutil.cpu_count(logical=True) or 1
    if averages[0] > cores / 2:  # other work was running: 2-thread BLAS slows down several-fold when oversubscribed
        load += " (BUSY MACHINE: other processes were running; timings are unreliable, rerun on a quiet machine)"
    lines = [
        f"CPU: {_cpu_model()}; {psutil.cpu_count(logical=True)} logical / {psutil.cpu_count(logical=False)} physical cores; "
        f"native bf16: {bf16}",
        f"RAM: {memory / GIB:.1f} GiB; load average at start: {load}",
        f"GPU: {_gpu_description()}",
        f"software: Python {platform.python_version()}, "
        + ", ".join(f"{name} {_version(name)}" for name in ("torch", "transformers", "bitsandbytes", "accelerate")),
        f"OS: {platform.platform()}",
    ]
    return lines


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _gpu_description() -> str:
    if "torch" not in sys.modules:  # importing torch only to say "none" would cost seconds
        return _nvidia_smi() + " (not used: CPU benchmark)"
    import torch

    if not torch.cuda.is_available():
        return "none"
    props = torch.cuda.get_device_properties(0)
    devices = torch.cuda.device_count()
    return (
        f"{props.name}, {props.total_memory / GIB:.0f} GiB, CUDA {torch.version.cuda}, driver-visible devices {devices}"
    )


def _nvidia_smi() -> str:
    if not shutil.which("nvidia-smi"):
        return "none (no nvidia-smi)"
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (nvidia-smi failed)"
    return "; ".join(listing.splitlines()) or "none"


def _version(name: str) -> str:
    module = sys.modules.get(name)
    if module is not None and getattr(module, "__version__", None):
        return str(module.__version__)
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


# A child's environment: the stand-in on CPU, offline, quiet; explicit so a
# developer's shell or .env can't silently change what is measured.
CHILD_ENV = {
    "MODEL_ID": "",
    "DEVICE": "cpu",
    "QUANTIZATION": "",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TOKENIZERS_PARALLELISM": "false",
    "LOG_LEVEL": "WARNING",
}


def child_env(**overrides: str) -> dict[str, str]:
    """A child process's environment: this one's, with ``CHILD_ENV``, the overrides, and the repo importable."""
    env = {**os.environ, **CHILD_ENV, **overrides}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    return env


def command_line(module: str) -> str:
    """The exact command that produced a table, so it can be rerun."""
    return f"python -m {module} {shlex.join(sys.argv[1:])}".rstrip()


def apply_presets(args: Any, normal: dict[str, Any], quick: dict[str, Any]) -> None:
    """Fill options left unset (None) from the quick or the normal preset.

    An option given on the command line always wins, so ``--quick --reps 2``
    does what it says and the recorded command reproduces the run.
    """
    preset = quick if getattr(args, "quick", False) else normal
    for name, value in {**normal, **preset}.items():
        if getattr(args, name) is None:
            setattr(args, name, value)


def fmt_bytes(size: float) -> str:
    return f"{size / GB:.2f} GB ({size / GIB:.2f} GiB)"


# -- generation helpers both benchmarks use -----------------------------------------


def pin_generation(backend: Any, **overrides: Any) -> None:
    """Make every ``generate`` of a ``medgemma.engines.transformers.HFBackend`` produce exactly max_new_tokens.

    A model that stops at EOS after 5 tokens on one path and 64 on another makes
    a meaningless comparison; ``min_new_tokens`` suppresses EOS until the limit, so
    every path does the same work. ``overrides`` set further GenerationConfig fields
    (e.g. ``cache_implementation``, ``disable_compile``) and replace any set by an
    earlier call. Uses the backend's public ``generation_hook``.
    """
    backend.generation_hook = lambda key: {"min_new_tokens": key.max_new_tokens, **overrides}


class FirstTokenClock:
    """A generate() streamer that only notes when the first new token appears.

    generate() first puts the prompt, then one put per step; each put receives
    a CPU tensor, so the time is taken after the device produced the token.
    """

    def __init__(self) -> None:
        self._puts = 0
        self.first_token_at: float | None = None

    def put(self, value: Any) -> None:
        self._puts += 1
        if self._puts == 2:
            self.first_token_at = time.perf_counter()

    def end(self) -> None:
        pass


@dataclass(frozen=True)
class NaiveTiming:
    output_ids: Any
    ttft_s: float
    seconds: float
    new_tokens: int


def naive_generate(model: Any, inputs: dict[str, Any], new_tokens: int) -> NaiveTiming:
    """What the original projects do per job: one greedy ``model.generate`` call, nothing else.

    ``inputs`` must already be on the model's device. Forced to exactly
    ``new_tokens`` like the pinned worker, so both paths do the same work.
    """
    import torch

    clock = FirstTokenClock()
    started = time.perf_counter()
    with torch.inference_mode():
        output = model.generate(
            **inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, streamer=clock
        )
    if output.is_cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    generated = int(output.shape[1] - inputs["input_ids"].shape[1])
    ttft = (clock.first_token_at - started) if clock.first_token_at else elapsed
    return NaiveTiming(output, ttft, elapsed, generated)
