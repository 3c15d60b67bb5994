"""Quantize the model to 4-bit nf4 once, ahead of time, and save it ready to load.

Loading the bf16 checkpoint with a BitsAndBytesConfig reads all 8.6 GB and quantizes it
on every cold start; a checkpoint saved already quantized is ~3 GB that loads as is.
``medgemma.engines.hf_loading.load_checkpoint`` finds the saved ``quantization_config`` and loads it as
"nf4 (pre-quantized)", so the worker needs nothing but ``MODEL_ID=<output dir>``.

    python -m builder.prequantize --output /models/nf4/medgemma-1.5-4b-it   # MODEL_ID (the stand-in when unset)
    python -m builder.prequantize --model ./models/medgemma --output ./models/medgemma-nf4

The quantization is the worker's own (``medgemma.model``: nf4, double quant, bfloat16
compute). The output is then reloaded through ``load_checkpoint`` and asked for a few tokens,
so a broken checkpoint fails here rather than at the first job; one summary line follows.
With no GPU it quantizes on CPU: bitsandbytes 0.50.2 ships a CPU path (a pure PyTorch
kernel writing the same packed layout as the CUDA one), so a GPU-less docker build works.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from medgemma.errors import GenerationFailed, MedGemmaError
from medgemma.settings import Settings
from medgemma.standin import ensure_standin

if TYPE_CHECKING:
    from medgemma.engines.base import Completion
    from medgemma.engines.transformers import HFBackend

# A synthetic note: the check needs tokens out, not a good answer.
CHECK_JOB = {
    "text": "SYNTHETIC NOTE. Cough for 3 days, no fever. Chest clear.",
    "mode": "summarize",
    "max_new_tokens": 4,
}
CHECKPOINT_FILES = ("generation_config.json",)  # kept from the source: load_model rewrites it in memory
# The GPU's compute dtype, saved into the checkpoint's quantization_config. The reload
# uses it too: load_model's CPU default (float32) would clash with the saved bf16 compute.
COMPUTE_DTYPE = "bfloat16"


@dataclass(frozen=True)
class Report:
    """What one run measured, for the summary line."""

    source: str
    output: Path
    quantize_load_s: float
    prequantized_load_s: float
    size_bytes: int
    run_mode: str
    quantization: str
    tokens: int
    generate_s: float

    def line(self) -> str:
        return (
            f"prequantize: {self.source} -> {self.output}: {self.size_bytes / 1e9:.2f} GB on disk; "
            f"load {self.quantize_load_s:.1f} s quantizing vs {self.prequantized_load_s:.1f} s pre-quantized "
            f"({self.run_mode}, {self.quantization}); {self.tokens} tokens generated in {self.generate_s:.1f} s"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, required=True, help="directory to write (must be new or empty)")
    parser.add_argument("--model", help="hub id or local directory (default: MODEL_ID, or the stand-in when unset)")
    args = parser.parse_args(argv)
    if args.output.exists() and any(args.output.iterdir()):
        sys.exit(f"prequantize: {args.output} is not empty; give a new --output or remove it")
    try:
        report = prequantize(args.model or os.environ.get("MODEL_ID"), args.output, os.environ)
    except (MedGemmaError, OSError) as error:
        sys.exit(f"prequantize: {type(error).__name__}: {str(error).splitlines()[0]}")
    print(report.line())


def prequantize(model: str | None, output: Path, env: Mapping[str, str]) -> Report:
    """Quantize ``model`` (None: the stand-in) into ``output``, then reload it and generate."""
    from medgemma.engines.hf_loading import load_checkpoint
    from medgemma.engines.transformers import HFBackend
    from medgemma.sources import resolve_source

    base = Settings.from_env(env)
    quantizing = Settings.from_env(
        {
            **env,
            "MODEL_ID": model or str(ensure_standin(base.standin_cache)),
            "QUANTIZATION": "nf4",
            "DTYPE": COMPUTE_DTYPE,
        }
    )
    source = str(quantizing.model_id)  # resolved: a local download's nested snapshot dir is followed
    loaded = load_checkpoint(quantizing, resolve_source(quantizing))
    quantize_load_s = loaded.load_seconds
    loaded.model.save_pretrained(output)
    loaded.processor.save_pretrained(output)
    _copy_checkpoint_files(source, output, base.offline)
    del loaded
    gc.collect()  # the 4B model twice over would not fit a small builder

    # DTYPE unset: the worker must pick the checkpoint's own compute dtype, as it will when serving.
    settings = Settings.from_env({k: v for k, v in {**env, "MODEL_ID": str(output)}.items() if k != "DTYPE"})
    source_of_copy = resolve_source(settings)
    reloaded = HFBackend.load(settings, source_of_copy)
    completion = _generate(reloaded, settings)
    return Report(
        source=source,
        output=output,
        quantize_load_s=quantize_load_s,
        prequantized_load_s=reloaded.info.load_seconds,
        size_bytes=sum(path.stat().st_size for path in output.rglob("*") if path.is_file()),
        run_mode=reloaded.info.run_mode,
        quantization=reloaded.info.quantization,
        tokens=completion.completion_tokens,
        generate_s=completion.generate_seconds,
    )


def _copy_checkpoint_files(source: str, output: Path, offline: bool) -> None:
    """Copy the source's own generation config (its sampling defaults) over the in-memory one."""
    from huggingface_hub import hf_hub_download

    for name in CHECKPOINT_FILES:
        local = Path(source) / name
        path = local if local.is_file() else Path(hf_hub_download(source, name, local_files_only=offline))
        shutil.copyfile(path, output / name)


def _generate(loaded: HFBackend, settings: Settings) -> Completion:
    """Answer CHECK_JOB as the worker would (with its dummy image by default, so the vision tower runs too)."""
    from medgemma.request import parse_job_input

    completion = loaded.generate_batch([loaded.prepare(parse_job_input(CHECK_JOB, settings))])[0]
    if completion.completion_tokens < 1:
        raise GenerationFailed("the pre-quantized checkpoint loaded but generated no tokens")
    return completion


if __name__ == "__main__":
    main()
