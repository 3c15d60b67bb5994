"""The transformers engine: Hugging Face ``generate`` on static batches (``BatchEngine``).

Its strengths are a cold start several times faster than vLLM's (what sporadic serverless
traffic pays for; docs/performance.md), images on CPU, and the pre-quantized nf4 path. ``HFBackend.prepare`` turns a
request into prompt tensors with the shared ``medgemma.tokens`` builder; ``generate_batch``
decodes several prompts together with left padding and reports, per row, the answer with
thinking stripped (``medgemma.decoding``), token counts and the finish reason.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

import torch
from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from medgemma import provenance
from medgemma.adapters import Adapter
from medgemma.decoding import DeltaCallback, RowDecoder, think_token_ids
from medgemma.engines.base import DEFAULT_SAMPLING, Completion, ModelInfo, Prepared, check_context
from medgemma.engines.batching import BatchEngine
from medgemma.engines.grammar import Grammars
from medgemma.engines.hf_loading import LoadedCheckpoint, load_checkpoint
from medgemma.engines.memory import KVCacheShape, release_freed_heap, system_memory, usable_bytes
from medgemma.errors import GenerationFailed, SettingsError
from medgemma.request import GenerationRequest, SamplingKey
from medgemma.settings import DEFAULT_GPU_MEMORY_UTILIZATION, Settings
from medgemma.sources import ModelSource
from medgemma.tokens import ImageSequence, PromptBuilder

if TYPE_CHECKING:
    import llguidance
    from peft import PeftModel
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)

#: PEFT's name for "no adapter" in a mixed batch's ``adapter_names``.
PEFT_BASE = "__base__"


def start(settings: Settings, source: ModelSource) -> BatchEngine:
    """Load the checkpoint and start the batching thread (the transformers cold start)."""
    backend = HFBackend.load(settings, source)
    return BatchEngine(backend, settings.max_batch_size, settings.batch_wait_ms / 1000)


class HFBackend:
    """One loaded checkpoint: prepares requests and generates batches of them.

    ``generation_hook`` is the documented hook for further ``GenerationConfig`` fields: called
    with each batch's SamplingKey, what it returns is applied to that ``generate`` call. The
    benchmarks use it (``lambda key: {"min_new_tokens": key.max_new_tokens}`` makes every job
    generate exactly its max_new_tokens, so compared paths do the same work).
    """

    def __init__(
        self,
        processor: Any,
        model: PreTrainedModel,
        info: ModelInfo,
        static_cache: bool = False,
        memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION,
        merge_adapters: bool = False,
    ):
        self.processor = processor
        # With separate adapters, PEFT's wrapper, which passes attribute reads on to the model.
        self.model: PreTrainedModel | PeftModel = model
        self.info = info
        self.kv_shape = KVCacheShape.from_text_config(model.config.get_text_config().to_dict(), info.dtype)
        self.memory_utilization = memory_utilization
        self.tokenizer = processor.tokenizer
        self.static_cache = static_cache
        self.merge_adapters = merge_adapters  # ADAPTER_MERGE: the one adapter goes into the weights
        self._separate_adapters = False  # each row of a batch names its adapter (PEFT's adapter_names)
        self.generation_hook: Callable[[SamplingKey], dict[str, Any]] | None = None
        self.prompts = PromptBuilder(
            self.tokenizer,
            self.processor.chat_template,
            ImageSequence(self.processor.boi_token, self.processor.full_image_sequence),
        )
        # The model's own: Gemma3Processor.image_token_id is the <start_of_image> marker.
        self.image_token_id = self.model.config.image_token_id
        base = self.model.generation_config
        eos = base.eos_token_id if base.eos_token_id is not None else self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        self.pad_id = base.pad_token_id if base.pad_token_id is not None else self.tokenizer.pad_token_id
        self.think_ids = think_token_ids(self.tokenizer)
        # Keep the checkpoint's sampling defaults for when sampling is asked for, and give
        # generate() a neutral base so greedy calls carry no sampling flags.
        self.sampling_defaults = {k: getattr(base, k, None) or v for k, v in DEFAULT_SAMPLING.items()}
        self.model.generation_config = GenerationConfig(
            eos_token_id=sorted(self.eos_ids), pad_token_id=self.pad_id, bos_token_id=base.bos_token_id
        )
        # JSON answers: one compiled grammar per schema for this worker's lifetime.
        self.grammars = Grammars(self.tokenizer, self.model.config.get_text_config().vocab_size, self.eos_ids)
        self._lock = threading.Lock()

    @classmethod
    def load(cls, settings: Settings, source: ModelSource) -> HFBackend:
        """Load ``source`` in the run mode this machine and the settings give."""
        checkpoint: LoadedCheckpoint = load_checkpoint(settings, source)
        runtime = checkpoint.runtime
        info = ModelInfo(
            engine="transformers",
            source=source.label,
            run_mode=runtime.run_mode,
            device=runtime.device,
            dtype=runtime.dtype,
            quantization=runtime.quantization,
            load_seconds=checkpoint.load_seconds,
            context_length=int(checkpoint.model.config.get_text_config().max_position_embeddings),
            vision=True,
            # As many jobs as one batch holds: batching pays on CPU too (docs/performance.md).
            max_concurrency=settings.max_batch_size,
            revision=provenance.revision(source),
        )
        if settings.torch_compile and runtime.device == "cuda" and runtime.quantization == "none":
            checkpoint.model.forward = torch.compile(checkpoint.model.forward, mode="reduce-overhead", dynamic=True)
        return cls(
            checkpoint.processor,
            checkpoint.model,
            info,
            static_cache=settings.static_cache and runtime.device == "cuda",
            memory_utilization=settings.gpu_memory_utilization,
            merge_adapters=settings.adapter_merge,
        )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def kv_cache_bytes(self, prompt_tokens: list[int], max_new_tokens: int) -> int:
        return self.kv_shape.batch_bytes(prompt_tokens, max_new_tokens)

    def memory_budget(self) -> int | None:
        """CUDA: free memory (what torch's allocator holds unused counts as free) less the
        GPU_MEMORY_UTILIZATION reserve. CPU: the RAM the kernel reports available, with no
        reserve: it already counts the page cache it can drop, and a shared machine's other
        processes come and go (a reserve there refused 40 MB batches with 2 GB available);
        the heap's free pages are given back first, so earlier batches don't count as used."""
        device = self.device
        if device.type == "cuda":
            free, total = torch.cuda.mem_get_info(device)
            unused = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
            return usable_bytes(free + unused, total, self.memory_utilization)
        release_freed_heap()  # what earlier batches freed is this batch's to use
        ram = system_memory()
        return None if ram is None else ram[0]

    def load_adapters(self, adapters: Sequence[Adapter]) -> None:
        """Put the adapters on the model with PEFT, kept separate so that each row of a batch picks its own,
        or (ADAPTER_MERGE) the one adapter merged into the weights."""
        from peft import PeftModel

        if self.merge_adapters:
            self._merge(adapters)
            return
        self._separate_adapters = True
        for adapter in adapters:
            started = time.perf_counter()
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(adapter.path, adapter_name=adapter.name, is_trainable=False)
            else:
                self.model = PeftModel.from_pretrained(
                    self.model, adapter.path, adapter_name=adapter.name, is_trainable=False
                )
            log.info(
                "adapter %s loaded in %.2f s: rank %d, %d layers, revision %s",
                adapter.name, time.perf_counter() - started, adapter.rank, adapter.layers, adapter.revision,
            )  # fmt: skip
        self.model.eval()
        self.info = replace(self.info, adapters=(*self.info.adapters, *adapters))

    def _merge(self, adapters: Sequence[Adapter]) -> None:
        from peft import PeftModel

        (adapter,) = adapters  # settings allow exactly one
        if self.info.quantization != "none":
            raise SettingsError(
                f"ADAPTER_MERGE=true needs unquantized weights: merging adapter {adapter.name!r} into "
                f"{self.info.quantization} weights would round it away; set QUANTIZATION=none, or unset ADAPTER_MERGE"
            )
        started = time.perf_counter()
        peft_model = PeftModel.from_pretrained(self.model, adapter.path, is_trainable=False)
        self.model = peft_model.merge_and_unload().eval()
        log.info(
            "adapter %s merged into the weights in %.2f s: rank %d, %d layers, revision %s",
            adapter.name, time.perf_counter() - started, adapter.rank, adapter.layers, adapter.revision,
        )  # fmt: skip
        self.info = replace(self.info, adapters=(adapter,))

    def prepare(self, request: GenerationRequest) -> Prepared:
        """Token ids (caller text as plain text), image pixels, the context check, and the compiled grammar."""
        started = time.perf_counter()
        prompt = self.prompts.build(request.messages())
        check_context(len(prompt.ids), request.max_new_tokens, self.info.context_length, request.input_field)
        input_ids = torch.tensor(prompt.ids, dtype=torch.long)
        features: dict[str, torch.Tensor | llguidance.LLMatcher] = {
            "input_ids": input_ids,
            "token_type_ids": (input_ids == self.image_token_id).long(),
        }
        if prompt.images:
            features["pixel_values"] = self.processor.image_processor(prompt.images, return_tensors="pt")[
                "pixel_values"
            ]
        if request.structured:  # compiled here, off the generation thread; InputError if it can't be
            features["grammar"] = self.grammars.compiled(request.structured)
        return Prepared(request, prompt, time.perf_counter() - started, features)

    def generate_batch(
        self, batch: list[Prepared], on_delta: list[DeltaCallback | None] | None = None
    ) -> list[Completion]:
        """Decode ``batch`` together; every row gets the answer it would get alone (greedy).

        All rows must share one SamplingKey; each row's adapter (``request.adapter``) is its own
        (PEFT's mixed-adapter batches). ``on_delta[i]``, when given, receives row i's answer
        text as it is generated.
        """
        keys = {prepared.request.sampling_key for prepared in batch}
        if len(keys) != 1:
            raise ValueError("a batch must share one sampling key")
        key = keys.pop()
        inputs = self._collate(batch)
        decoders = [
            RowDecoder(self.tokenizer, self.eos_ids, self.think_ids, callback, prepared.request.stop)
            for prepared, callback in zip(batch, on_delta or [None] * len(batch), strict=True)
        ]
        streamer = _BatchStreamer(decoders)
        grammars = [prepared.features.get("grammar") for prepared in batch]
        # Rows without a grammar are left alone; a batch of free rows gets no processor at all.
        processors = LogitsProcessorList(
            [self.grammars.processor(grammars)] if any(g is not None for g in grammars) else []
        )
        # A row whose answer reached a stop string ends there, as if it had generated EOS.
        stopping = StoppingCriteriaList([_DecoderStopped(decoders)] if any(p.request.stop for p in batch) else [])
        rows = [prepared.request.adapter or PEFT_BASE for prepared in batch]
        adapters = {"adapter_names": rows} if self._separate_adapters else {}
        with self._lock, torch.inference_mode():
            if key.seed is not None:
                torch.manual_seed(key.seed)
            started = time.perf_counter()
            try:
                # from_pretrained's class is a GenerationMixin; PreTrainedModel's type has no generate.
                cast(Callable[..., Any], self.model.generate)(
                    **inputs,
                    generation_config=self._generation_config(key),
                    streamer=streamer,
                    logits_processor=processors,
                    stopping_criteria=stopping,
                    **adapters,
                )
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
                finish_reason=decoder.finish_reason,
                time_to_first_token=round(ttft, 4),
                generate_seconds=round(elapsed, 4),
            )
            for prepared, decoder in zip(batch, decoders, strict=True)
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
        return GenerationConfig(
            max_new_tokens=key.max_new_tokens,
            eos_token_id=base.eos_token_id,
            pad_token_id=base.pad_token_id,
            bos_token_id=base.bos_token_id,
            **sampling,
            **{**extra, **(self.generation_hook(key) if self.generation_hook else {})},
        )

    def _collate(self, batch: list[Prepared]) -> dict[str, torch.Tensor]:
        """Left-pad the rows into one batch; images are concatenated in row order."""
        length = max(prepared.prompt_tokens for prepared in batch)
        input_ids = torch.full((len(batch), length), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), length), dtype=torch.long)
        token_type_ids = torch.zeros((len(batch), length), dtype=torch.long)
        for row, prepared in enumerate(batch):
            start = length - prepared.prompt_tokens
            input_ids[row, start:] = prepared.features["input_ids"]
            attention_mask[row, start:] = 1
            token_type_ids[row, start:] = prepared.features["token_type_ids"]
        device = self.device
        inputs = {
            "input_ids": input_ids.to(device),
            "attention_mask": attention_mask.to(device),
            "token_type_ids": token_type_ids.to(device),
        }
        pixels = [prepared.features["pixel_values"] for prepared in batch if "pixel_values" in prepared.features]
        if pixels:
            inputs["pixel_values"] = torch.cat(pixels).to(device, dtype=self.model.dtype)
        return inputs


class _DecoderStopped(StoppingCriteria):
    """Ends each row once its decoder has stopped (the streamer feeds it one step behind this check)."""

    def __init__(self, decoders: list[RowDecoder]):
        self._decoders = decoders

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        stopped = torch.tensor([decoder.stopped for decoder in self._decoders], device=input_ids.device)
        return cast(torch.BoolTensor, stopped)  # a bool tensor; torch types its constructors as Tensor


class _BatchStreamer(BaseStreamer):
    """Receives each step's tokens for the whole batch and routes them to the rows."""

    def __init__(self, decoders: list[RowDecoder]):
        self._decoders = decoders
        self._seen_prompt = False
        self.first_token_at: float | None = None

    def put(self, value: torch.Tensor) -> None:
        if not self._seen_prompt:  # generate() first echoes the prompt
            self._seen_prompt = True
            return
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        for decoder, token in zip(self._decoders, value.reshape(len(self._decoders), -1)[:, -1].tolist(), strict=True):
            decoder.push(token)

    def end(self) -> None:
        pass
