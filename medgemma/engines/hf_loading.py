"""Loading a checkpoint with transformers: device, dtype and quantization, chosen once.

Defaults: nf4 + bfloat16 on CUDA; no quantization + float32 on CPU, where bfloat16 matmuls
without native support are several times slower (docs/performance.md). A pre-quantized
checkpoint (``builder/prequantize.py``) carries its own quantization config and computes in the
dtype it was saved with.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, BitsAndBytesConfig

from medgemma.errors import HostError, SettingsError
from medgemma.model_access import model_access_errors
from medgemma.settings import Settings
from medgemma.sources import ModelSource

if TYPE_CHECKING:
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)

QUANTIZATIONS = ("nf4", "int8", "none")


@dataclass(frozen=True)
class Runtime:
    device: str  # "cuda" | "cpu"
    quantization: str  # "nf4" | "int8" | "none", or "<method> (pre-quantized)"
    dtype: str  # "bfloat16" | "float32"

    @property
    def run_mode(self) -> str:
        return f"{self.device}/{self.quantization.split()[0]}/{self.dtype}"


@dataclass
class LoadedCheckpoint:
    processor: Any
    model: PreTrainedModel  # from_pretrained's class for the checkpoint (a GenerationMixin too)
    runtime: Runtime
    load_seconds: float


def resolve_runtime(settings: Settings, checkpoint_dtype: str | None = None) -> Runtime:
    """(device, quantization, dtype) for this machine; no silent CPU when CUDA was asked for."""
    cuda = torch.cuda.is_available()
    if settings.device == "cuda" and not cuda:
        raise HostError(
            "DEVICE=cuda but no usable CUDA device is visible (driver missing or too old for CUDA 13, "
            "or the GPU failed); this image needs a GPU"
        )
    device = "cuda" if settings.device == "auto" and cuda else ("cpu" if settings.device == "auto" else settings.device)
    quantization = settings.quantization or ("nf4" if device == "cuda" else "none")
    if quantization not in QUANTIZATIONS:
        raise SettingsError(
            f"QUANTIZATION={quantization} is served by ENGINE=vllm only; the transformers engine takes "
            f"{', '.join(QUANTIZATIONS)}"
        )
    dtype = settings.dtype or checkpoint_dtype or ("bfloat16" if device == "cuda" else "float32")
    return Runtime(device, quantization, dtype)


def quantization_config(quantization: str, compute_dtype: torch.dtype) -> BitsAndBytesConfig | None:
    """The bitsandbytes config for ``nf4`` (double quant) or ``int8``; None for ``none``."""
    if quantization == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def model_load_kwargs(quantization: str, dtype: torch.dtype, device: str, prequantized: bool = False) -> dict[str, Any]:
    """The ``from_pretrained`` keyword arguments for one run mode (the GPU benchmark loads with these too).

    A pre-quantized checkpoint carries its own quantization config, so none is passed;
    quantized weights are placed by ``device_map`` (bitsandbytes can't ``.to()``).
    """
    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": "sdpa"}
    config = None if prequantized else quantization_config(quantization, dtype)
    if config is not None:
        kwargs["quantization_config"] = config
    if prequantized or quantization != "none":
        kwargs["device_map"] = {"": device if device == "cpu" else 0}
    return kwargs


def load_checkpoint(settings: Settings, source: ModelSource) -> LoadedCheckpoint:
    """Load processor and model from ``source`` in the run mode this machine and the settings give."""
    started = time.perf_counter()
    with model_access_errors(source):
        saved_quantization, saved_dtype = checkpoint_quantization(source)
        runtime = resolve_runtime(settings, saved_dtype)
        processor = AutoProcessor.from_pretrained(source.location, **source.hub_kwargs())
        if saved_quantization:
            runtime = Runtime(runtime.device, f"{saved_quantization} (pre-quantized)", runtime.dtype)
        kwargs = model_load_kwargs(
            runtime.quantization, getattr(torch, runtime.dtype), runtime.device, prequantized=bool(saved_quantization)
        )
        model = AutoModelForImageTextToText.from_pretrained(source.location, **source.hub_kwargs(), **kwargs).eval()
    if runtime.quantization == "none":
        model.to(runtime.device)
    return LoadedCheckpoint(processor, model, runtime, round(time.perf_counter() - started, 2))


def checkpoint_quantization(source: ModelSource) -> tuple[str | None, str | None]:
    """(quant method, compute dtype) a checkpoint was saved with; (None, None) if unquantized."""
    config = AutoConfig.from_pretrained(source.location, **source.hub_kwargs())
    quant = getattr(config, "quantization_config", None)
    if not quant:
        return None, None
    quant = quant if isinstance(quant, dict) else quant.to_dict()
    compute = quant.get("bnb_4bit_compute_dtype")
    compute = str(compute).removeprefix("torch.") if compute else None
    if quant.get("load_in_4bit"):
        return quant.get("bnb_4bit_quant_type", "4bit"), compute
    if quant.get("load_in_8bit"):
        return "int8", None
    return str(quant.get("quant_method", "quantized")), compute
