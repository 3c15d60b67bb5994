"""What LoRA adapters cost on the transformers engine, measured on the embedded stand-in (CPU).

    python -m bench.adapters --quantized   # ~8 min on 2 busy shared cores; writes its block of bench/RESULTS.md
    python -m bench.adapters --quick       # ~2 min smoke run

Measured side by side in one process, alternating the paths within every repetition:

* start-up: building the base model's layer map (``model_modules``), checking and hashing one
  adapter (``resolve_adapters``), PEFT loading it onto an already wrapped model, and the base
  model's provenance (the fingerprint the worker uses vs a full sha256 of the directory);
* one job at a time: the base model without PEFT, a base job on the model carrying adapters,
  an adapter job with the adapter kept separate (the default), and the same adapter merged
  into the weights (``ADAPTER_MERGE=true``: one adapter per worker, no base model);
* four jobs: one batch mixing two adapters (what the worker does) vs one batch per adapter,
  and four base jobs in one batch without PEFT;
* optionally (``--quantized``) an nf4 base with an adapter: that it loads and answers.

Adapters are built with PEFT in code (``tests/lora_adapters.py``): ``attn`` rank 8 on the
attention's q/v, ``all`` rank 16 on every linear layer of the language model (what a typical
fine-tune adapts). Every job generates exactly ``--new-tokens`` tokens (EOS suppressed), greedy.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import handler  # noqa: F401  (first: it sets OMP_WAIT_POLICY=PASSIVE before torch loads, as the worker runs)
from bench.common import REPO_ROOT, Report, Sample, apply_presets, command_line, pin_generation, sample, speedup
from bench.documents import load_documents

RESULTS_PATH = REPO_ROOT / "bench" / "RESULTS.md"
BLOCK = "bench.adapters"
# Short jobs, many repetitions: on a shared machine short measurements taken in turn compare best.
NORMAL = {"reps": 5, "new_tokens": 8, "doc_chars": 300}
QUICK = {"reps": 1, "new_tokens": 4, "doc_chars": 100}
ALL_LINEAR = r"model\.(language_model\.)?layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.adapters", description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, help="repetitions; the median is reported (5; quick 1)")
    parser.add_argument("--new-tokens", type=int, help="tokens every job generates, exactly (8; quick 4)")
    parser.add_argument("--doc-chars", type=int, help="each document is cut to this many characters (300; quick 100)")
    parser.add_argument("--quantized", action="store_true", help="also load an nf4 base with an adapter (slow on CPU)")
    parser.add_argument("--quick", action="store_true", help="smoke run: the quick values above")
    parser.add_argument("--out", default=str(RESULTS_PATH), help="the file whose bench.adapters block is written")
    args = parser.parse_args(argv)
    apply_presets(args, NORMAL, QUICK)
    return args


def timed(action: Callable[[], Any]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


class Bench:
    """The stand-in loaded twice at a time: plain, carrying two separate adapters, then (instead of plain)
    with one merged in. Two copies, not three: the shared machine's memory is the limit."""

    def __init__(self, args: argparse.Namespace, workdir: Path, report: Report):
        from medgemma.engines.transformers import HFBackend
        from medgemma.settings import Settings
        from medgemma.sources import resolve_source

        self.args, self.report = args, report
        self.settings = Settings.from_env({"MAX_NEW_TOKENS": str(args.new_tokens)})
        self.source = resolve_source(self.settings)
        self.plain = HFBackend.load(self.settings, self.source)
        self.specs = self._build_adapters(workdir)
        self.adapted = HFBackend.load(self.settings, self.source)
        adapters = self._resolve(self.specs)
        self.wrap_seconds = timed(lambda: self.adapted.load_adapters(adapters))
        for backend in (self.plain, self.adapted):
            pin_generation(backend)
        self.documents, self.documents_source = load_documents(4, args.doc_chars)

    def spec(self, name: str) -> Any:
        return next(spec for spec in self.specs if spec.name == name)

    def _build_adapters(self, workdir: Path) -> tuple[Any, ...]:
        from medgemma.settings import AdapterSpec
        from tests.lora_adapters import ATTENTION, build_lora

        built = (
            ("attn", 8, ATTENTION, 1),
            ("all", 16, ALL_LINEAR, 2),
        )
        return tuple(
            AdapterSpec(name, str(build_lora(self.plain.model, workdir / name, seed=seed, rank=rank, targets=targets)))
            for name, rank, targets, seed in built
        )

    def _resolve(self, specs: tuple[Any, ...]) -> tuple[Any, ...]:
        from medgemma.adapters import resolve_adapters
        from medgemma.engines.modules import model_modules

        return resolve_adapters(replace(self.settings, adapters=specs), self.source, model_modules(self.source))

    def prepared(self, backend: Any, text: str, adapter: str | None) -> Any:
        from medgemma.request import parse_job_input

        names = [spec.name for spec in self.specs]
        data = {"text": text, "max_new_tokens": self.args.new_tokens, **({"adapter": adapter} if adapter else {})}
        return backend.prepare(parse_job_input(data, self.settings, adapters=names))

    def batch_seconds(self, backend: Any, rows: list[tuple[str, str | None]]) -> float:
        batch = [self.prepared(backend, text, adapter) for text, adapter in rows]
        return timed(lambda: backend.generate_batch(batch))

    # -- sections ---------------------------------------------------------------------------------

    def startup(self) -> None:
        import medgemma.provenance as provenance
        from medgemma.engines.modules import model_modules
        from medgemma.provenance import FULL_HASH_BYTES, directory_hash, revision

        reps = self.args.reps
        self.report.section("Start-up, per adapter (median of reps)")
        self.report.add(
            "first adapter onto the model: PEFT wraps it (once per worker; this run's two adapters)",
            f"{self.wrap_seconds:.2f} s",
        )
        self.report.add(
            "base model's layer map on the meta device (model_modules, once per worker)",
            sample([timed(lambda: model_modules(self.source)) for _ in range(reps)], "s").show(3),
        )
        for spec in self.specs:
            checked = sample([timed(lambda spec=spec: self._resolve((spec,))) for _ in range(reps)], "s")
            self.report.add(
                f"adapter {spec.name}: fetch, check against the layers, sha256 of its files", checked.show(3)
            )
            loads = []
            for rep in range(reps):
                name = f"{spec.name}-load-{rep}"
                loads.append(timed(lambda name=name, spec=spec: self.adapted.model.load_adapter(spec.source, name)))
                self.adapted.model.delete_adapter(name)
            self.report.add(f"adapter {spec.name}: PEFT load onto the wrapped model", sample(loads, "s").show(3))
            size = sum(path.stat().st_size for path in Path(spec.source).iterdir())
            self.report.add(f"adapter {spec.name}: files on disk", f"{size / 2**20:.1f} MiB")
        fingerprint = sample([timed(lambda: revision(self.source)) for _ in range(reps)], "s")
        original = FULL_HASH_BYTES
        try:
            provenance.FULL_HASH_BYTES = 2**62
            full = sample([timed(lambda: directory_hash(Path(self.source.location))) for _ in range(reps)], "s")
        finally:
            provenance.FULL_HASH_BYTES = original
        size = sum(path.stat().st_size for path in Path(self.source.location).rglob("*") if path.is_file())
        self.report.add("base model provenance, fingerprint (what the worker does)", fingerprint.show(4))
        self.report.add(f"base model provenance, full sha256 of its {size / 1e9:.2f} GB", full.show(3))

    def _alternate(self, paths: dict[str, tuple[Any, str | None]]) -> dict[str, Sample]:
        """s/job of each path, one job at a time, the paths taking turns within every repetition."""
        times: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(self.args.reps):
            for name, (backend, adapter) in paths.items():
                per_doc = [self.batch_seconds(backend, [(text, adapter)]) for text in self.documents[:2]]
                times[name].append(statistics.mean(per_doc))
        return {name: sample(values, "s") for name, values in times.items()}

    def one_at_a_time(self) -> None:
        """Against the plain model; then the plain copy makes way for a merged one, compared with the separate adapter."""
        from medgemma.engines.transformers import HFBackend

        separate = "adapter all, kept separate (the default)"
        first = self._alternate(
            {
                "base model, no PEFT": (self.plain, None),
                "base job on the model carrying adapters": (self.adapted, None),
                separate: (self.adapted, "all"),
                "adapter attn, kept separate": (self.adapted, "attn"),
            }
        )
        self.report.section(f"One job at a time, {self.args.new_tokens} new tokens: s/job (mean of 2 documents)")
        for name, value in first.items():
            self.report.add(name, value.show())
        base = first["base model, no PEFT"]
        for name in list(first)[1:]:
            self.report.add(f"cost: {name} / base model, no PEFT", f"{first[name].median / base.median:.2f}x")
        self.plain = None
        gc.collect()
        merging = replace(self.settings, adapters=(self.spec("all"),), adapter_merge=True)
        merged = HFBackend.load(merging, self.source)
        merged.load_adapters(self._resolve((self.spec("all"),)))  # as ADAPTER_MERGE=true does
        pin_generation(merged)
        second = self._alternate(
            {separate: (self.adapted, "all"), "adapter all, merged into the weights (ADAPTER_MERGE)": (merged, "all")}
        )
        self.report.section(
            "The same adapter merged into the weights (a second series, alternating with the separate one)"
        )
        for name, value in second.items():
            self.report.add(name, value.show())
        self.report.add(
            "separate / merged (adapter all)",
            f"{second[separate].median / second['adapter all, merged into the weights (ADAPTER_MERGE)'].median:.2f}x",
        )

    def batches(self) -> None:
        texts = self.documents
        mixed_rows = [(texts[0], "attn"), (texts[1], "all"), (texts[2], "attn"), (texts[3], "all")]
        times: dict[str, list[float]] = {"mixed": [], "per adapter": [], "base": []}
        for _ in range(self.args.reps):
            times["mixed"].append(self.batch_seconds(self.adapted, mixed_rows))
            times["per adapter"].append(
                self.batch_seconds(self.adapted, [mixed_rows[0], mixed_rows[2]])
                + self.batch_seconds(self.adapted, [mixed_rows[1], mixed_rows[3]])
            )
            times["base"].append(self.batch_seconds(self.plain, [(text, None) for text in texts]))
        samples = {name: sample(values, "s") for name, values in times.items()}
        self.report.section(f"Four jobs, two adapters (attn, all, attn, all), {self.args.new_tokens} new tokens")
        self.report.add("one batch of 4 mixing the adapters (what the worker does)", _rate(samples["mixed"]))
        self.report.add("one batch of 2 per adapter, one after the other", _rate(samples["per adapter"]))
        self.report.add("4 base jobs in one batch, no PEFT", _rate(samples["base"]))
        self.report.add("mixed / per adapter (docs/s)", f"{speedup(samples['per adapter'], samples['mixed']):.2f}x")
        self.report.add("mixed / base (docs/s)", f"{speedup(samples['base'], samples['mixed']):.2f}x")

    def quantized(self) -> None:
        from medgemma.engines.transformers import HFBackend

        self.report.section("nf4 base (bitsandbytes on CPU) with an adapter")
        self.adapted.model = None
        gc.collect()
        settings = replace(self.settings, quantization="nf4")
        started = time.perf_counter()
        backend = HFBackend.load(settings, self.source)
        loaded = time.perf_counter() - started
        adapters = self._resolve((self.spec("all"),))
        wrap = timed(lambda: backend.load_adapters(adapters))
        pin_generation(backend)
        answer = backend.generate_batch([self.prepared(backend, self.documents[0], "all")])[0]
        self.report.add("nf4 load / PEFT wrap with adapter all", f"{loaded:.1f} s / {wrap:.2f} s")
        self.report.add(
            "nf4 + adapter all answers", f"{answer.completion_tokens} tokens in {answer.generate_seconds:.1f} s"
        )


def _rate(seconds: Sample) -> str:
    rates = sample([4 / value for value in seconds.values], "docs/s")
    return f"{rates.show(3)} ({seconds.show()} per 4 jobs)"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    report = Report(
        title="MedGemma worker benchmark: LoRA adapters, transformers engine, CPU, embedded stand-in",
        command=command_line("bench.adapters"),
        path=out,
        block=BLOCK,
    )

    with tempfile.TemporaryDirectory(prefix="bench-adapters-") as workdir:
        bench = Bench(args, Path(workdir), report)
        report.notes += [
            f"documents: {bench.documents_source}; summarize mode, dummy image (the worker's defaults)",
            "model: the embedded stand-in (Gemma 3 270M decoder + tiny SigLIP), float32 on CPU; adapters built with "
            "PEFT in code: attn = rank 8 on q_proj/v_proj, all = rank 16 on q/k/v/o/gate/up/down of every decoder layer",
            "paths alternate within every repetition; ratios are of medians taken in this run; "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')} (as handler.py sets it)",
            f"peft {importlib.metadata.version('peft')}",
        ]
        for name, section in (
            ("startup", bench.startup),
            ("batches", bench.batches),
            ("one at a time", bench.one_at_a_time),  # last: it frees the plain copy
        ):
            try:
                section()
            except Exception as error:  # a broken section is a row, the rest still matters
                report.failed(name, error)
            report.write()
        if args.quantized:
            try:
                bench.quantized()
            except Exception as error:
                report.failed("nf4", error)
            report.write()
    print(out.read_text().split(f"<!-- begin {BLOCK} -->")[1].split(f"<!-- end {BLOCK} -->")[0])


if __name__ == "__main__":
    main()
