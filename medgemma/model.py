"""Loading MedGemma and generating with it: the only module that imports torch/transformers.

``load_model`` resolves where the weights come from (hub id, local directory or the
embedded stand-in), how they run (device, dtype, quantization) and records it.
``LoadedModel.prepare`` turns a validated request into prompt tensors (and rejects
prompts that don't fit the context); ``generate_batch`` decodes several prepared
prompts together with left padding and reports, per row, the answer with thinking
stripped, token counts and the finish reason.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    BitsAndBytesConfig,
    GenerationConfig,
)
from transformers.generation.streamers import BaseStreamer

from medgemma.errors import GenerationFailed, InputError
from medgemma.request import GenerationRequest, SamplingKey
from medgemma.settings import Settings
from medgemma.standin import ensure_standin

log = logging.getLogger(__name__)

# MedGemma 1.5 may "think" first, between these two tokens (sometimes never closing).
THINK_START, THINK_END = "<unused94>", "<unused95>"
DEFAULT_SAMPLING = {"top_k": 64, "top_p": 0.95}  # MedGemma's published defaults

#: Called from the generation thread with (row, text_delta) as answer text appears.
DeltaCallback = Callable[[str], None]


@dataclass(frozen=True)
class ModelInfo:
    """What was loaded and how: reported with every answer and in the logs."""

    source: str  # hub id, local path, or "embedded-standin:<path>"
    run_mode: str  # e.g. "cuda/nf4/bfloat16"
    device: str
    dtype: str
    quantization: str
    load_seconds: float
    context_length: int


@dataclass
class Prepared:
    """One request's prompt tensors (on CPU), ready to be collated into a batch."""

    request: GenerationRequest
    input_ids: torch.Tensor  # (seq,)
    token_type_ids: torch.Tensor  # (seq,)
    pixel_values: torch.Tensor | None  # (n_images, 3, H, W)
    prepare_seconds: float

    @property
    def prompt_tokens(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass
class Completion:
    """One row's result."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length"
    time_to_first_token: float
    generate_seconds: float


def resolve_runtime(settings: Settings, checkpoint_dtype: str | None = None) -> tuple[str, str, str]:
    """(device, quantization, dtype) for this machine.

    Defaults: nf4 + bfloat16 on CUDA; no quantization + float32 on CPU, where
    bfloat16 matmuls without native support run ~2.6x slower end to end (measured on
    the stand-in on 2 AVX2 cores). A pre-quantized checkpoint computes in the dtype it
    was saved with (``checkpoint_dtype``), so DTYPE=auto follows it.
    """
    cuda = torch.cuda.is_available()
    if settings.device == "cuda" and not cuda:
        raise GenerationFailed("DEVICE=cuda but no CUDA device is available")
    device = "cuda" if settings.device == "auto" and cuda else ("cpu" if settings.device == "auto" else settings.device)
    quantization = settings.quantization or ("nf4" if device == "cuda" else "none")
    dtype = settings.dtype or checkpoint_dtype or ("bfloat16" if device == "cuda" else "float32")
    return device, quantization, dtype


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


def model_load_kwargs(quantization: str, dtype: torch.dtype, device: str, prequantized: bool = False) -> dict:
    """The ``from_pretrained`` keyword arguments for one run mode (the GPU benchmark loads with these too).

    A pre-quantized checkpoint carries its own quantization config, so none is
    passed; quantized weights are placed by ``device_map`` (bitsandbytes can't ``.to()``).
    """
    kwargs: dict = {"dtype": dtype, "attn_implementation": "sdpa"}
    config = None if prequantized else quantization_config(quantization, dtype)
    if config is not None:
        kwargs["quantization_config"] = config
    if prequantized or quantization != "none":
        kwargs["device_map"] = {"": device if device == "cpu" else 0}
    return kwargs


def load_model(settings: Settings) -> LoadedModel:
    started = time.perf_counter()
    if settings.uses_standin:
        path = ensure_standin(settings.standin_cache)
        source, location = f"embedded-standin:{path}", str(path)
    else:
        source = location = settings.model_id  # type: ignore[assignment]
    local_only = settings.offline or Path(location).is_dir()
    model_config_quant, compute_dtype = _checkpoint_quantization(location, local_only)
    device, quantization, dtype_name = resolve_runtime(settings, compute_dtype)
    dtype = getattr(torch, dtype_name)

    processor = AutoProcessor.from_pretrained(location, local_files_only=local_only)
    processor.tokenizer.padding_side = "left"
    if model_config_quant:
        quantization = f"{model_config_quant} (pre-quantized)"
    kwargs = model_load_kwargs(quantization, dtype, device, prequantized=bool(model_config_quant))
    model = AutoModelForImageTextToText.from_pretrained(location, local_files_only=local_only, **kwargs).eval()
    if quantization == "none":
        model.to(device)

    loaded = LoadedModel(
        processor=processor,
        model=model,
        info=ModelInfo(
            source=source,
            run_mode=f"{device}/{quantization.split()[0]}/{dtype_name}",
            device=device,
            dtype=dtype_name,
            quantization=quantization,
            load_seconds=round(time.perf_counter() - started, 2),
            context_length=int(model.config.get_text_config().max_position_embeddings),
        ),
        static_cache=settings.static_cache and device == "cuda",
    )
    if settings.torch_compile and device == "cuda" and quantization == "none":
        model.forward = torch.compile(model.forward, mode="reduce-overhead", dynamic=True)
    log.info("model ready: source=%s run_mode=%s load_s=%.1f", source, loaded.info.run_mode, loaded.info.load_seconds)
    return loaded


def _checkpoint_quantization(location: str, local_only: bool) -> tuple[str | None, str | None]:
    """(quant method, compute dtype) a checkpoint was saved with; (None, None) if unquantized."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(location, local_files_only=local_only)
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


@dataclass
class LoadedModel:
    processor: object
    model: torch.nn.Module
    info: ModelInfo
    static_cache: bool = False
    #: Benchmarks only: every job generates exactly its max_new_tokens (EOS suppressed),
    #: so compared paths do the same work.
    exact_new_tokens: bool = False
    #: Further GenerationConfig fields applied to every call (e.g. ``disable_compile``).
    generation_overrides: dict = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        tokenizer = self.processor.tokenizer
        base = self.model.generation_config
        eos = base.eos_token_id if base.eos_token_id is not None else tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        self.pad_id = base.pad_token_id if base.pad_token_id is not None else tokenizer.pad_token_id
        self.think_ids = _token_pair(tokenizer, THINK_START, THINK_END)
        # Keep the checkpoint's sampling defaults for when sampling is asked for, and
        # give generate() a neutral base so greedy calls carry no sampling flags.
        self.sampling_defaults = {k: getattr(base, k, None) or v for k, v in DEFAULT_SAMPLING.items()}
        self.model.generation_config = GenerationConfig(
            eos_token_id=sorted(self.eos_ids), pad_token_id=self.pad_id, bos_token_id=base.bos_token_id
        )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def prepare(self, request: GenerationRequest) -> Prepared:
        """Tokenize one request; raise InputError if it can't fit the model's context."""
        started = time.perf_counter()
        encoded = self.processor.apply_chat_template(
            request.messages(),
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
        )
        prompt_tokens = int(encoded["input_ids"].shape[1])
        context = self.info.context_length
        if prompt_tokens + request.max_new_tokens > context:
            raise InputError(
                "text",
                f"the prompt is {prompt_tokens} tokens and max_new_tokens is {request.max_new_tokens}, "
                f"over the model's context of {context} tokens; shorten the text or lower max_new_tokens",
            )
        token_type_ids = encoded.get("token_type_ids")
        return Prepared(
            request=request,
            input_ids=encoded["input_ids"][0],
            token_type_ids=token_type_ids[0]
            if token_type_ids is not None
            else torch.zeros_like(encoded["input_ids"][0]),
            pixel_values=encoded.get("pixel_values"),
            prepare_seconds=time.perf_counter() - started,
        )

    def generate_batch(
        self, batch: list[Prepared], on_delta: list[DeltaCallback | None] | None = None
    ) -> list[Completion]:
        """Decode ``batch`` together; every row gets the answer it would get alone (greedy).

        All rows must share one SamplingKey. ``on_delta[i]``, when given, receives row
        i's answer text as it is generated.
        """
        keys = {prepared.request.sampling_key for prepared in batch}
        if len(keys) != 1:
            raise ValueError("a batch must share one sampling key")
        key = keys.pop()
        inputs = self._collate(batch)
        decoders = [
            _RowDecoder(self.processor.tokenizer, self.eos_ids, self.think_ids, callback)
            for callback in (on_delta or [None] * len(batch))
        ]
        streamer = _BatchStreamer(decoders)
        with self._lock, torch.inference_mode():
            if key.seed is not None:
                torch.manual_seed(key.seed)
            started = time.perf_counter()
            try:
                self.model.generate(**inputs, generation_config=self._generation_config(key), streamer=streamer)
            except torch.OutOfMemoryError:
                torch.cuda.empty_cache()
                raise GenerationFailed(
                    f"out of GPU memory generating a batch of {len(batch)}; lower max_new_tokens or the input size"
                ) from None
            elapsed = time.perf_counter() - started
        ttft = (streamer.first_token_at - started) if streamer.first_token_at else elapsed
        return [
            Completion(
                text=decoder.text(),
                prompt_tokens=prepared.prompt_tokens,
                completion_tokens=decoder.generated,
                finish_reason="stop" if decoder.stopped else "length",
                time_to_first_token=round(ttft, 4),
                generate_seconds=round(elapsed, 4),
            )
            for prepared, decoder in zip(batch, decoders, strict=False)
        ]

    def _generation_config(self, key: SamplingKey) -> GenerationConfig:
        base = self.model.generation_config
        sampling = (
            {
                "do_sample": True,
                "temperature": key.temperature,
                "top_k": self.sampling_defaults["top_k"],
                "top_p": key.top_p or self.sampling_defaults["top_p"],
            }
            if key.temperature
            else {"do_sample": False}
        )
        extra = {"cache_implementation": "static"} if self.static_cache else {}
        if self.exact_new_tokens:
            extra["min_new_tokens"] = key.max_new_tokens
        return GenerationConfig(
            max_new_tokens=key.max_new_tokens,
            eos_token_id=base.eos_token_id,
            pad_token_id=base.pad_token_id,
            bos_token_id=base.bos_token_id,
            **sampling,
            **{**extra, **self.generation_overrides},
        )

    def _collate(self, batch: list[Prepared]) -> dict[str, torch.Tensor]:
        """Left-pad the rows into one batch; images are concatenated in row order."""
        length = max(prepared.prompt_tokens for prepared in batch)
        input_ids = torch.full((len(batch), length), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), length), dtype=torch.long)
        token_type_ids = torch.zeros((len(batch), length), dtype=torch.long)
        for row, prepared in enumerate(batch):
            start = length - prepared.prompt_tokens
            input_ids[row, start:] = prepared.input_ids
            attention_mask[row, start:] = 1
            token_type_ids[row, start:] = prepared.token_type_ids
        device = self.device
        inputs = {
            "input_ids": input_ids.to(device),
            "attention_mask": attention_mask.to(device),
            "token_type_ids": token_type_ids.to(device),
        }
        pixels = [prepared.pixel_values for prepared in batch if prepared.pixel_values is not None]
        if pixels:
            inputs["pixel_values"] = torch.cat(pixels).to(device, dtype=self.model.dtype)
        return inputs


def _token_pair(tokenizer, start: str, end: str) -> tuple[int, int] | None:
    ids = tokenizer.convert_tokens_to_ids([start, end])
    return None if tokenizer.unk_token_id in ids or None in ids else (ids[0], ids[1])


class _RowDecoder:
    """Turns one row's generated token ids into answer text, thinking stripped.

    Streaming and final text use the same code, so the streamed deltas always add
    up to exactly the final answer (leading/trailing whitespace trimmed in both).
    """

    def __init__(self, tokenizer, eos_ids: set[int], think_ids: tuple[int, int] | None, on_delta: DeltaCallback | None):
        self._tokenizer = tokenizer
        self._eos_ids = eos_ids
        self._think_ids = think_ids
        self._on_delta = on_delta
        self._visible: list[int] = []
        self._thinking = False
        self._emitted = ""
        self.generated = 0
        self.stopped = False

    def push(self, token_id: int) -> None:
        if self.stopped:
            return  # padding after this row's end
        self.generated += 1
        if token_id in self._eos_ids:
            self.stopped = True
        elif self._think_ids and token_id == self._think_ids[0]:
            self._thinking = True
        elif self._think_ids and token_id == self._think_ids[1]:
            self._thinking = False
        elif not self._thinking:
            self._visible.append(token_id)
            if self._on_delta:
                self._emit(final=False)

    def text(self) -> str:
        if self._on_delta:
            self._emit(final=True)
        return self._decode()

    def _decode(self) -> str:
        return self._tokenizer.decode(self._visible, skip_special_tokens=True).strip()

    def _emit(self, final: bool) -> None:
        text = self._decode()
        if not final:
            # Hold back a possibly incomplete UTF-8 character and trailing whitespace
            # (which .strip() might remove) until more text confirms them.
            text = text.rstrip("\ufffd").rstrip()
        if len(text) > len(self._emitted) and text.startswith(self._emitted):
            delta, self._emitted = text[len(self._emitted) :], text
            self._on_delta(delta)


class _BatchStreamer(BaseStreamer):
    """Receives each step's tokens for the whole batch and routes them to the rows."""

    def __init__(self, decoders: list[_RowDecoder]):
        self._decoders = decoders
        self._seen_prompt = False
        self.first_token_at: float | None = None

    def put(self, value: torch.Tensor) -> None:
        if not self._seen_prompt:  # generate() first echoes the prompt
            self._seen_prompt = True
            return
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        for decoder, token in zip(self._decoders, value.reshape(len(self._decoders), -1)[:, -1].tolist(), strict=False):
            decoder.push(token)

    def end(self) -> None:
        pass
