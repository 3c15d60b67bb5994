"""The vLLM engine: continuous batching on vLLM's ``AsyncLLM``, fed token ids built by the worker.

vLLM never sees caller text as a string: ``medgemma.tokens`` builds the prompt ids (caller
text as plain text), vLLM is given those ids (and the images, which its processor expands at
each ``<start_of_image>``), and ``medgemma.decoding`` turns the generated ids back into the
answer, so a job means the same as on the transformers engine. A job whose caller goes away
(cancelled or timed out) aborts its vLLM request.

``AsyncLLM`` serves from the event loop it was started on, while jobs arrive on RunPod's loop
(and, in tests, on a new loop per test), so it runs on a private loop in its own thread and
each job is handed over to it. Its engine core runs in child processes; their start-up
failures reach this process only as "see root cause above", so vLLM's error log is also
written to a file for the start-up path to read the cause and name the fix.

Settings: ``MAX_MODEL_LEN`` (default: the longest job the settings accept, ``longest_job``), ``GPU_MEMORY_UTILIZATION``,
``ENFORCE_EAGER``, ``MAX_NUM_SEQS``, ``NUM_GPU_BLOCKS_OVERRIDE``, ``QUANTIZATION``, ``DTYPE``; on CPU the KV cache gets
``VLLM_CPU_KVCACHE_SPACE`` GiB. ``MAX_CONCURRENCY`` defaults to the number of typical jobs
(``Settings.typical_job_tokens``) the KV cache holds at once (``medgemma.engines.capacity``),
at most ``MAX_NUM_SEQS``.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import copy
import importlib.util
import itertools
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import vllm
from transformers import AutoConfig, AutoProcessor, AutoTokenizer
from vllm import SamplingParams, TokensPrompt
from vllm.config import StructuredOutputsConfig
from vllm.config.logging import LoggingConfig
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.lora.request import LoRARequest
from vllm.renderers.inputs.preprocess import parse_model_prompt
from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError

from medgemma import provenance
from medgemma.adapters import Adapter
from medgemma.decoding import DeltaCallback, RowDecoder, think_token_ids
from medgemma.engines.base import (
    DEFAULT_SAMPLING,
    Completion,
    EngineResult,
    ModelInfo,
    Prepared,
    check_context,
    error_summary,
    stream_deltas,
)
from medgemma.engines.capacity import jobs_held, longest_job
from medgemma.engines.grammar import check_grammar
from medgemma.engines.vllm_parent import ParentWatchingExecutor
from medgemma.errors import (
    GenerationFailed,
    HostError,
    MedGemmaError,
    ModelAccessError,
    SettingsError,
    redacted_traceback,
)
from medgemma.model_access import model_access_errors
from medgemma.request import GenerationRequest, SamplingKey
from medgemma.settings import Settings
from medgemma.sources import ModelSource
from medgemma.structured import COMPACT_JSON, JsonSpec
from medgemma.tokens import ImageSequence, PromptBuilder

log = logging.getLogger(__name__)

GIB = 2**30
#: JSON jobs: llguidance (vLLM's ``guidance`` backend, the transformers engine's library) with the
#: worker's compact JSON; vLLM 0.32 reads these from the engine config only, not per request.
STRUCTURED_OUTPUTS: dict[str, Any] = {"backend": "guidance", "disable_any_whitespace": COMPACT_JSON}
#: Compute capability from which a GPU has fp8 tensor cores (Ada, Hopper, Blackwell).
FP8_CAPABILITY = (8, 9)
#: What QUANTIZATION means to vLLM; int8 has no in-flight vLLM path.
VLLM_QUANTIZATION = {"fp8": "fp8", "nf4": "bitsandbytes", "none": None}
#: An exception line in vLLM's log, after its "(EngineCore pid=...) ERROR ... [core.py:...]" prefix.
#: The LoRA ranks vLLM reserves room for (``LoRAConfig.max_lora_rank``).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
_EXCEPTION_LINE = re.compile(r"\] (?:[\w.]+\.)?(\w+(?:Error|Exception)): (.+)$")


def start(settings: Settings, source: ModelSource) -> VllmEngine:
    """Start vLLM on ``source`` (the vLLM cold start: its processes, the weights, the KV cache)."""
    started = time.perf_counter()
    device = _device(settings)
    with model_access_errors(source):
        config = AutoConfig.from_pretrained(source.location, local_files_only=source.local_only)
        vision = getattr(config, "vision_config", None) is not None
        processor = (
            AutoProcessor.from_pretrained(source.location, local_files_only=source.local_only) if vision else None
        )
        tokenizer = (
            processor.tokenizer
            if processor
            else AutoTokenizer.from_pretrained(source.location, local_files_only=source.local_only)
        )
    if vision and importlib.util.find_spec("torchvision") is None:
        raise SettingsError(
            f"vLLM serves {source.label}'s vision tower only with torchvision, which is not installed: use the CUDA "
            "image, ENGINE=transformers, or on CPU builder/setup_local.sh (it makes PyPI's torchvision import)"
        )
    if device == "cpu":
        _check_cpu_kv_cache(settings)
    saved_quantization = _saved_quantization(config)
    quantization = saved_quantization or _quantization(settings, device)
    dtype = settings.dtype or ("float32" if device == "cpu" else "bfloat16")
    image_tokens = len(tokenizer(processor.full_image_sequence, add_special_tokens=False).input_ids) if processor else 0
    max_model_len = settings.max_model_len or longest_job(settings, config, tokenizer, processor, image_tokens)
    kwargs = engine_kwargs(
        settings, source, device, dtype, None if saved_quantization else quantization, vision, max_model_len
    )

    # llguidance's own log (vLLM's default level 1) may quote a schema or generated text.
    os.environ.setdefault("LLGUIDANCE_LOG_LEVEL", "0")
    loop = _EngineLoop()
    capture = _ErrorCapture()
    try:
        llm = loop.run(_start_llm(AsyncEngineArgs(**kwargs, logging_config=capture.logging_config())))
    except Exception as error:
        loop.stop()
        cause = capture.cause()
        capture.close()
        raise _startup_error(error, cause, settings) from error

    vllm_config = llm.vllm_config
    max_num_seqs = vllm_config.scheduler_config.max_num_seqs
    job_tokens = settings.typical_job_tokens(image_tokens)
    groups = loop.run(llm.engine_core.call_utility_async("get_kv_cache_group_metadata"))
    typical_jobs = jobs_held(vllm_config.cache_config.num_gpu_blocks or 0, groups, job_tokens)
    label = quantization if not saved_quantization else f"{saved_quantization} (pre-quantized)"
    info = ModelInfo(
        engine="vllm",
        source=source.label,
        run_mode=f"{device}/{label.split()[0]}/{dtype}",
        device=device,
        dtype=dtype,
        quantization=label,
        load_seconds=round(time.perf_counter() - started, 2),
        context_length=int(llm.model_config.max_model_len),
        vision=vision,
        max_concurrency=max(1, min(max_num_seqs, typical_jobs)),
        revision=provenance.revision(source),
    )
    log.info(
        "vLLM ready: kv_cache_blocks=%s kv_max_concurrency=%.2f (at max_model_len=%d) typical_job_tokens=%d "
        "typical_jobs_held=%d max_num_seqs=%d",
        vllm_config.cache_config.num_gpu_blocks,
        vllm_config.cache_config.kv_cache_max_concurrency or 0,
        info.context_length,
        job_tokens,
        typical_jobs,
        max_num_seqs,
    )
    return VllmEngine(llm, loop, capture, kwargs, tokenizer, processor, config, info)


def structured_params(spec: JsonSpec) -> StructuredOutputsParams:
    """One JSON job's vLLM structured output: the schema text the transformers engine compiles too."""
    return StructuredOutputsParams(json=spec.grammar)


def engine_kwargs(
    settings: Settings,
    source: ModelSource,
    device: str,
    dtype: str,
    quantization: str | None,
    vision: bool,
    max_model_len: int | None = None,
) -> dict[str, Any]:
    """vLLM's engine arguments for these settings (``max_model_len``: None for ``MAX_MODEL_LEN``'s)."""
    return dict(
        model=source.location,
        dtype=dtype,
        quantization=VLLM_QUANTIZATION[quantization] if quantization else None,
        max_model_len=max_model_len or settings.max_model_len,
        gpu_memory_utilization=settings.gpu_memory_utilization,
        # On CPU, vLLM would otherwise reserve GPU_MEMORY_UTILIZATION of the machine's RAM.
        kv_cache_memory_bytes=settings.cpu_kv_cache_gib * GIB if device == "cpu" else None,
        enforce_eager=settings.enforce_eager,
        # Its engine core ends when the worker does, even when the worker is killed.
        distributed_executor_backend=ParentWatchingExecutor,
        max_num_seqs=settings.max_num_seqs,
        num_gpu_blocks_override=settings.num_gpu_blocks_override,
        # vLLM sizes its image encoder's cache for the most images a job may carry.
        limit_mm_per_prompt={"image": settings.max_images} if vision else None,
        # Per-request stats give each job its queue time; vLLM logs only aggregate throughput.
        disable_log_stats=False,
        structured_outputs_config=StructuredOutputsConfig(**STRUCTURED_OUTPUTS),
        **lora_kwargs(settings, device),
    )


def lora_kwargs(settings: Settings, device: str) -> dict[str, Any]:
    """vLLM's LoRA arguments: room for every ``ADAPTERS`` entry at once, of up to ``MAX_LORA_RANK``.

    vLLM reserves its LoRA buffers at start-up, for one of a fixed set of ranks: the next one
    up from MAX_LORA_RANK. All adapters stay on the device, so a batch may mix any of them.
    On CPU one more slot is reserved and left empty: vLLM's torch LoRA ops index the slots with
    -1 for a base-model row, which Python reads as the last slot, so without an empty last slot
    a base job batched with adapter jobs would get the last adapter (measured: a test fails).
    """
    if not settings.adapters:
        return {}
    rank = next((rank for rank in VLLM_LORA_RANKS if rank >= settings.max_lora_rank), None)
    if rank is None:
        raise SettingsError(f"MAX_LORA_RANK={settings.max_lora_rank} is over vLLM's largest, {VLLM_LORA_RANKS[-1]}")
    count = len(settings.adapters) + (device == "cpu")
    return {"enable_lora": True, "max_loras": count, "max_cpu_loras": count, "max_lora_rank": rank}


def _device(settings: Settings) -> str:
    """vLLM runs where its build runs: the CUDA build on a GPU, vllm-cpu on the CPU."""
    from vllm.platforms import current_platform

    device = "cpu" if current_platform.is_cpu() else "cuda" if current_platform.is_cuda() else None
    if device is None:
        raise HostError(
            "vLLM found no usable device (its CUDA build needs a visible NVIDIA GPU, vllm-cpu runs on the CPU); "
            "this worker asks RunPod for a fresh one"
        )
    if settings.device == "cuda" and device == "cpu":
        raise HostError(
            "DEVICE=cuda but vLLM runs on the CPU here (vllm-cpu, or no usable CUDA device is visible); "
            "this image needs a GPU"
        )
    if settings.device == "cpu" and device == "cuda":
        raise SettingsError("DEVICE=cpu needs the CPU build of vLLM (vllm-cpu); use ENGINE=transformers on CPU")
    return device


def _quantization(settings: Settings, device: str) -> str:
    """QUANTIZATION for vLLM: fp8 where the GPU has fp8 cores, else none (bf16); nf4 only if asked.

    MedGemma 4B in bf16 (~9 GB) fits every GPU the hub presets allow, so vLLM's fastest path is
    chosen: fp8 weights on Ada/Hopper/Blackwell (half the memory traffic, fp8 matmuls), bf16
    elsewhere. bitsandbytes nf4 is slower in vLLM than bf16 and is for a GPU too small for it.
    """
    if settings.quantization == "int8":
        raise SettingsError("QUANTIZATION=int8 has no vLLM path; with ENGINE=vllm use fp8, nf4 or none")
    if device == "cpu":
        if settings.quantization not in (None, "none"):
            raise SettingsError(
                f"QUANTIZATION={settings.quantization} is not served by vLLM on CPU; use QUANTIZATION=none"
            )
        return "none"
    if settings.quantization is not None:
        return settings.quantization
    import torch

    return "fp8" if torch.cuda.get_device_capability() >= FP8_CAPABILITY else "none"


def _saved_quantization(config: Any) -> str | None:
    """A pre-quantized checkpoint's method (vLLM reads its config itself), or None."""
    quant = getattr(config, "quantization_config", None)
    if not quant:
        return None
    quant = quant if isinstance(quant, dict) else quant.to_dict()
    if quant.get("load_in_4bit"):
        method: str = quant.get("bnb_4bit_quant_type", "4bit")
        return method
    return str(quant.get("quant_method", "quantized"))


def _check_cpu_kv_cache(settings: Settings) -> None:
    """Refuse a CPU KV cache larger than the free memory before vLLM spends a minute starting to find out.

    vLLM's CPU worker makes the same check once its engine core is up (``_startup_error`` maps it).
    """
    free = psutil.virtual_memory().available
    if settings.cpu_kv_cache_gib * GIB > free:
        raise _kv_space_error(settings, f"{free / GIB:.1f} GiB available")


def _kv_space_error(settings: Settings, reason: str) -> SettingsError:
    return SettingsError(
        f"VLLM_CPU_KVCACHE_SPACE={settings.cpu_kv_cache_gib} GiB is more memory than this machine has free "
        f"({reason}); lower VLLM_CPU_KVCACHE_SPACE"
    )


async def _start_llm(args: AsyncEngineArgs) -> AsyncLLM:
    # Created on the engine's loop: AsyncLLM binds its output handler to the running loop.
    return AsyncLLM.from_engine_args(args)


async def _shutdown(llm: AsyncLLM) -> None:
    llm.shutdown()
    await asyncio.sleep(0)  # let the output handler's cancellation run before the loop stops


def _startup_error(error: Exception, cause: str | None, settings: Settings) -> MedGemmaError:
    """One line for a failed vLLM start, naming the fix (``cause``: what its engine core logged)."""
    reason = cause or error_summary(error)
    if "requested memory for kv" in reason:
        return _kv_space_error(settings, reason)
    if "KV cache is needed" in reason:
        more = "VLLM_CPU_KVCACHE_SPACE" if "VLLM_CPU_KVCACHE_SPACE" in reason else "GPU_MEMORY_UTILIZATION"
        return SettingsError(
            f"vLLM's KV cache can't hold one request of MAX_MODEL_LEN tokens ({reason}); lower MAX_MODEL_LEN "
            f"or raise {more}"
        )
    if "No available memory for the cache blocks" in reason or "out of memory" in reason.lower():
        return SettingsError(
            f"the model leaves vLLM no room for its KV cache ({reason}); raise GPU_MEMORY_UTILIZATION, "
            "set QUANTIZATION=fp8 (or nf4), or use a GPU with more memory"
        )
    if "max_model_len" in reason:
        return SettingsError(f"MAX_MODEL_LEN={settings.max_model_len} can't be served ({reason}); lower or unset it")
    if "architectures" in reason:
        return SettingsError(f"vLLM {vllm.__version__} can't serve this model ({reason}); use ENGINE=transformers")
    if "CUDA" in reason or "NVIDIA" in reason:
        return HostError(f"vLLM could not use the GPU ({reason}); this worker asks RunPod for a fresh one")
    if "HTTP" in reason or "huggingface" in reason.lower():
        return ModelAccessError(f"vLLM could not fetch the weights ({reason}); check MODEL_ID and HF_TOKEN")
    return SettingsError(f"vLLM could not start ({reason}); check the vLLM settings (the log above has details)")


class VllmEngine:
    """The Engine protocol on a running ``AsyncLLM``.

    ``sampling_hook`` mirrors the transformers engine's ``generation_hook``: called with each
    job's SamplingKey, what it returns is added to that job's ``SamplingParams`` (the
    benchmarks use ``{"min_tokens": key.max_new_tokens}`` so every job generates exactly its
    max_new_tokens, EOS suppressed as transformers' ``min_new_tokens`` does).
    """

    def __init__(
        self,
        llm: AsyncLLM,
        loop: _EngineLoop,
        capture: _ErrorCapture,
        engine_kwargs: dict[str, Any],
        tokenizer: Any,
        processor: Any,
        config: Any,
        info: ModelInfo,
    ):
        self.llm: AsyncLLM | None = llm  # None once closed
        self.info = info
        self.tokenizer = tokenizer
        self.sampling_hook: Callable[[SamplingKey], dict[str, Any]] | None = None
        #: The arguments vLLM was started with (the benchmark starts plain vLLM with the same ones).
        self.engine_kwargs = engine_kwargs
        self._loop = loop
        self._capture = capture  # vLLM's processes keep writing their errors there until close()
        atexit.register(self.close)
        self._ids = itertools.count()
        self._generating = 0  # requests between their first token and their end (touched on the engine loop only)
        self._loras: dict[str, LoRARequest] = {}  # adapter name -> its vLLM LoRA request
        template = (processor or tokenizer).chat_template
        if processor is not None:
            boi = processor.boi_token
            self.prompts = PromptBuilder(tokenizer, template, ImageSequence(boi, processor.full_image_sequence))
            # vLLM expands each image placeholder itself, so it is given them unexpanded.
            self._vllm_prompts: PromptBuilder | None = PromptBuilder(tokenizer, template, ImageSequence(boi, boi))
        else:
            self.prompts = PromptBuilder(tokenizer, template, None)
            self._vllm_prompts = None
        generation = llm.model_config.try_get_generation_config()
        eos = generation.get("eos_token_id") or getattr(config, "eos_token_id", None) or tokenizer.eos_token_id
        self.stop_ids = sorted(set(eos if isinstance(eos, list) else [eos]))
        self.think_ids = think_token_ids(tokenizer)
        self.sampling_defaults = {key: generation.get(key) or value for key, value in DEFAULT_SAMPLING.items()}

    async def prepare(self, request: GenerationRequest) -> Prepared:
        """Token ids (caller text as plain text) and the context check, off the event loop."""
        return await asyncio.to_thread(self._prepare, request)

    def _prepare(self, request: GenerationRequest) -> Prepared:
        started = time.perf_counter()
        messages = request.messages()
        prompt = self.prompts.build(messages)
        check_context(len(prompt.ids), request.max_new_tokens, self.info.context_length, request.input_field)
        if request.structured:  # vLLM compiles it in its engine process; a bad one is refused here, by field
            check_grammar(request.structured)
        features = TokensPrompt(prompt_token_ids=prompt.ids)
        if prompt.images and self._vllm_prompts is not None:
            features = TokensPrompt(
                prompt_token_ids=self._vllm_prompts.build(messages).ids, multi_modal_data={"image": prompt.images}
            )
        return Prepared(request, prompt, time.perf_counter() - started, features)

    async def generate(self, prepared: Prepared, on_delta: DeltaCallback | None = None) -> EngineResult:
        """Run one job on vLLM; cancelling this (the caller went away) aborts its request."""
        return await asyncio.wrap_future(self._loop.submit(self._generate(prepared, on_delta)))

    def stream(self, prepared: Prepared) -> AsyncIterator[str | EngineResult]:
        return stream_deltas(self.generate, prepared)

    def load_adapters(self, adapters: Sequence[Adapter]) -> None:
        """Load each checked adapter into vLLM (started with room for them: ``lora_kwargs``)."""
        for adapter in adapters:
            started = time.perf_counter()
            lora = LoRARequest(adapter.name, len(self._loras) + 1, adapter.path)
            try:
                self.call(self._running.add_lora(lora)).result()
            except Exception as error:
                raise SettingsError(
                    f"ADAPTERS: vLLM could not load adapter {adapter.name!r} ({adapter.source}): {error_summary(error)}"
                ) from None
            self._loras[adapter.name] = lora
            log.info(
                "adapter %s loaded in %.2f s: rank %d, %d layers, revision %s",
                adapter.name, time.perf_counter() - started, adapter.rank, adapter.layers, adapter.revision,
            )  # fmt: skip
        self.info = replace(self.info, adapters=(*self.info.adapters, *adapters))

    @property
    def _running(self) -> AsyncLLM:
        """``self.llm``; once closed, the AttributeError that reading it on None would give."""
        if self.llm is None:
            raise AttributeError("the vLLM engine is closed")
        return self.llm

    def call(self, coroutine: Coroutine[Any, Any, Any]) -> Future[Any]:
        """Run ``coroutine`` on the engine's loop, where ``self.llm`` lives (tests and benchmarks use AsyncLLM directly)."""
        return self._loop.submit(coroutine)

    def close(self) -> None:
        """Stop vLLM's processes; also run at interpreter exit, so a process that never called it exits cleanly."""
        atexit.unregister(self.close)
        if self.llm is None:
            return
        llm, self.llm = self.llm, None  # collected now, not at interpreter exit (where its __del__ fails)
        self._loop.run(_shutdown(llm))
        self._loop.stop()
        self._capture.close()

    # -- on the engine's loop ----------------------------------------------------

    def sampling_params(self, key: SamplingKey, structured: JsonSpec | None = None) -> SamplingParams:
        """Greedy is plain argmax; sampling takes the checkpoint's top_k and top_p defaults; a JSON job its grammar."""
        sampling: dict[str, Any] = (
            {
                "temperature": key.temperature,
                "top_k": self.sampling_defaults["top_k"],
                "top_p": key.top_p or self.sampling_defaults["top_p"],
                "seed": key.seed,
            }
            if key.temperature
            else {"temperature": 0.0}
        )
        return SamplingParams(
            max_tokens=key.max_new_tokens,
            stop_token_ids=self.stop_ids,
            detokenize=False,  # medgemma.decoding decodes (and strips thinking) from the ids
            output_kind=RequestOutputKind.DELTA,
            structured_outputs=structured_params(structured) if structured else None,
            **sampling,
            **(self.sampling_hook(key) if self.sampling_hook else {}),
        )

    async def _generate(self, prepared: Prepared, on_delta: DeltaCallback | None) -> EngineResult:
        decoder = RowDecoder(self.tokenizer, self.stop_ids, self.think_ids, on_delta, prepared.request.stop)
        params = self.sampling_params(prepared.request.sampling_key, prepared.request.structured)
        submitted = time.perf_counter()
        first_token_at: float | None = None
        batch_size, queue_seconds = 1, 0.0
        try:
            llm = self._running
            (engine_input,) = await llm.renderer.render_cmpl_async(
                [parse_model_prompt(llm.model_config, prepared.features)]
            )
            lora = self._loras.get(prepared.request.adapter or "")
            outputs = llm.generate(engine_input, params, f"medgemma-{next(self._ids)}", lora_request=lora)
            async with contextlib.aclosing(outputs):  # leaving early (a stop string) aborts the request
                async for output in outputs:
                    tokens = output.outputs[0].token_ids
                    if tokens and first_token_at is None:
                        first_token_at = time.perf_counter()
                        self._generating += 1
                        stats = output.metrics  # engine-core timestamps, on the machine's monotonic clock
                        if stats is not None and stats.scheduled_ts and stats.queued_ts:
                            queue_seconds = max(0.0, stats.scheduled_ts - stats.queued_ts)
                    # The most answers vLLM generated alongside this one: its "batch".
                    batch_size = max(batch_size, self._generating)
                    for token in tokens:
                        decoder.push(token)
                    if decoder.stopped:  # EOS (vLLM ends there too) or one of the request's stop strings
                        break
        except EngineDeadError:
            raise HostError(
                "vLLM's engine process died; this worker can't serve any more jobs and asks RunPod for a fresh "
                "one; resubmit the job"
            ) from None
        except Exception as error:  # vLLM refused or failed this request alone; the engine keeps serving
            log.error("job %s: vLLM failed:\n%s", prepared.request.job_id, redacted_traceback(error))
            raise GenerationFailed(f"vLLM could not generate this answer ({type(error).__name__})") from None
        finally:
            if first_token_at is not None:
                self._generating -= 1
        finished = time.perf_counter()
        first_token_at = first_token_at or finished
        completion = Completion(
            text=decoder.text(),
            prompt_tokens=prepared.prompt_tokens,
            completion_tokens=decoder.generated,
            finish_reason=decoder.finish_reason,
            time_to_first_token=round(max(0.0, first_token_at - submitted - queue_seconds), 4),
            generate_seconds=round(max(0.0, finished - submitted - queue_seconds), 4),
        )
        return EngineResult(completion, prepared, batch_size, round(queue_seconds, 4))


class _EngineLoop:
    """An event loop on its own thread, where AsyncLLM lives and every job's coroutine runs."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="medgemma-vllm", daemon=True)
        self._thread.start()

    def submit(self, coroutine: Coroutine[Any, Any, Any]) -> Future[Any]:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return self.submit(coroutine).result()

    def stop(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        self._loop.close()


class _ErrorCapture:
    """vLLM's error log, also written to a file: a failed engine core's cause, readable after start-up.

    Left alone when the deployment configures vLLM's logging itself.
    """

    def __init__(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="medgemma-vllm-"))
        self.path = self._dir / "errors.log"

    def logging_config(self) -> LoggingConfig | None:
        from vllm import envs
        from vllm.logger import DEFAULT_LOGGING_CONFIG

        if not envs.VLLM_CONFIGURE_LOGGING or envs.VLLM_LOGGING_CONFIG_PATH:
            return None
        config = copy.deepcopy(DEFAULT_LOGGING_CONFIG)
        config["handlers"]["medgemma_errors"] = {
            "class": "logging.FileHandler",
            "filename": str(self.path),
            "level": "ERROR",
            "formatter": "vllm",
            "delay": True,
        }
        config["loggers"]["vllm"]["handlers"].append("medgemma_errors")
        config_path = self._dir / "logging.json"
        config_path.write_text(json.dumps(config))
        return LoggingConfig(pylogging_config_file=str(config_path))

    def cause(self) -> str | None:
        """The last exception line vLLM logged, e.g. ``ValueError: To serve at least one request ...``."""
        try:
            lines = self.path.read_text(errors="replace").splitlines()
        except OSError:
            return None
        for line in reversed(lines):
            match = _EXCEPTION_LINE.search(line.rstrip())
            if match:
                return f"{match.group(1)}: {match.group(2)[:300]}"
        return None

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)
