"""Quantize the model to 4-bit nf4 once, ahead of time, and save it ready to load.

Loading the bf16 checkpoint with a BitsAndBytesConfig reads all 8.6 GB and quantizes it
on every cold start; a checkpoint saved already quantized is ~3 GB that loads as is.
``medgemma.engines.hf_loading.load_checkpoint`` finds the saved ``quantization_config`` and loads it as
"nf4 (pre-quantized)", so the worker needs nothing but ``MODEL_ID=<output dir>``.

    python -m builder.prequantize --output /models/nf4/medgemma-1.5-4b-it   # MODEL_ID (the stand-in when unset)
    python -m builder.prequantize --model ./models/medgemma --output ./models/medgemma-nf4

The quantization is the worker's own (``medgemma.engines.hf_loading``: nf4, double quant,
bfloat16 compute), and the weights are found where the worker finds them
(``medgemma.sources``: baked, RunPod's cache, a network volume, else a download). The output
is then reloaded through the worker's own loader and asked for one token of a short
text-only prompt, so a broken checkpoint fails here rather than at the first job; one
summary line follows. The check is kept that small because a Docker build runs it on CPU,
where bfloat16 is emulated: at MedGemma's size the dummy image alone (a 400M-parameter
SigLIP over 4096 patches) would cost minutes.
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
    from medgemma.sources import ModelSource

# A synthetic note: the check needs a token out, not a good answer.
CHECK_JOB = {"text": "SYNTHETIC NOTE. Cough for 3 days, no fever.", "mode": "summarize", "max_new_tokens": 1}
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
    prompt_tokens: int
    size_bytes: int
    run_mode: str
    quantization: str
    tokens: int
    generate_s: float

    def line(self) -> str:
        return (
            f"prequantize: {self.source} -> {self.output}: {self.size_bytes / 1e9:.2f} GB on disk; "
            f"load {self.quantize_load_s:.1f} s quantizing vs {self.prequantized_load_s:.1f} s pre-quantized "
            f"({self.run_mode}, {self.quantization}); {self.tokens} tokens generated in {self.generate_s:.1f} s "
            f"from a {self.prompt_tokens}-token prompt"
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
    source = resolve_source(quantizing)
    loaded = load_checkpoint(quantizing, source)
    quantize_load_s = loaded.load_seconds
    loaded.model.save_pretrained(output)
    loaded.processor.save_pretrained(output)
    _copy_checkpoint_files(source, output)
    del loaded
    gc.collect()  # the 4B model twice over would not fit a small builder

    # DTYPE unset: the worker must pick the checkpoint's own compute dtype, as it will when serving.
    settings = Settings.from_env(
        {**{k: v for k, v in env.items() if k != "DTYPE"}, "MODEL_ID": str(output), "DUMMY_IMAGE": "false"}
    )
    reloaded = HFBackend.load(settings, resolve_source(settings))
    completion = _generate(reloaded, settings)
    return Report(
        source=source.label,
        output=output,
        quantize_load_s=quantize_load_s,
        prequantized_load_s=reloaded.info.load_seconds,
        prompt_tokens=completion.prompt_tokens,
        size_bytes=sum(path.stat().st_size for path in output.rglob("*") if path.is_file()),
        run_mode=reloaded.info.run_mode,
        quantization=reloaded.info.quantization,
        tokens=completion.completion_tokens,
        generate_s=completion.generate_seconds,
    )


def _copy_checkpoint_files(source: ModelSource, output: Path) -> None:
    """Copy the source's own generation config (its sampling defaults) over the in-memory one."""
    from huggingface_hub import hf_hub_download

    for name in CHECKPOINT_FILES:
        local = Path(source.location) / name
        path = local if local.is_file() else Path(hf_hub_download(source.location, name, **source.hub_kwargs()))
        shutil.copyfile(path, output / name)


def _generate(loaded: HFBackend, settings: Settings) -> Completion:
    """Answer CHECK_JOB as the worker would: text only, one token (see the module's docstring)."""
    from medgemma.request import parse_job_input

    completion = loaded.generate_batch([loaded.prepare(parse_job_input(CHECK_JOB, settings))])[0]
    if completion.completion_tokens < 1:
        raise GenerationFailed("the pre-quantized checkpoint loaded but generated no tokens")
    return completion


if __name__ == "__main__":
    main()
