"""The engine interface: what the worker needs from a model runtime, whichever it is.

The worker never asks which engine it has. Both engines build prompts with
``medgemma.tokens`` and decode answers with ``medgemma.decoding``, so a job means the same
on either; they differ in how they batch and run the model. Nothing here imports torch.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from medgemma.adapters import Adapter
from medgemma.decoding import DeltaCallback
from medgemma.errors import HostError, InputError
from medgemma.request import GenerationRequest
from medgemma.tokens import Prompt

#: MedGemma's published sampling defaults, used where the checkpoint's generation config sets none.
DEFAULT_SAMPLING = {"top_k": 64, "top_p": 0.95}
#: Substrings of the errors after which a CUDA context is unusable: every later call fails too.
_POISONED_CUDA = (
    "illegal memory access",
    "device-side assert",
    "unspecified launch failure",
    "an illegal instruction",
    "misaligned address",
    "CUDA error: uncorrectable ECC",
    "CUDA-capable device(s) is/are busy or unavailable",
)


@dataclass(frozen=True)
class ModelInfo:
    """What was loaded and how: reported with every answer and in the logs."""

    engine: str  # "transformers" | "vllm"
    source: str  # hub id, local path, or "embedded-standin:<path>": the output's "model"
    run_mode: str  # e.g. "cuda/nf4/bfloat16": the output's "run_mode"
    device: str
    dtype: str
    quantization: str
    load_seconds: float
    context_length: int  # prompt tokens + max_new_tokens must fit
    vision: bool  # False: a text-only checkpoint, which takes no images
    max_concurrency: int  # jobs this engine holds at once: MAX_CONCURRENCY's default
    revision: str = ""  # the weights' hub commit or content hash (medgemma.provenance)
    adapters: tuple[Adapter, ...] = ()  # the LoRA adapters served on top (Engine.load_adapters)


@dataclass
class Prepared:
    """One request, tokenized and ready for its engine."""

    request: GenerationRequest
    prompt: Prompt
    prepare_seconds: float
    features: Any = None  # engine-specific inputs (the transformers engine: tensors)

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt.ids)


@dataclass(frozen=True)
class Completion:
    """One answer."""

    text: str  # thinking stripped
    prompt_tokens: int
    completion_tokens: int  # generated tokens, the stop token included when one ended the answer
    finish_reason: str  # "stop" | "length"
    time_to_first_token: float
    generate_seconds: float


@dataclass(frozen=True)
class EngineResult:
    """A completion plus how the engine served it."""

    completion: Completion
    prepared: Prepared
    batch_size: int
    queue_seconds: float


class Engine(Protocol):
    info: ModelInfo

    async def prepare(self, request: GenerationRequest) -> Prepared:
        """Tokenize (off the event loop); InputError if the prompt can't be served."""
        ...

    async def generate(self, prepared: Prepared) -> EngineResult: ...

    def stream(self, prepared: Prepared) -> AsyncIterator[str | EngineResult]:
        """Text deltas as they are generated, then the EngineResult."""
        ...

    def load_adapters(self, adapters: Sequence[Adapter]) -> None:
        """Load checked LoRA adapters once, at start-up; then ``request.adapter`` picks one per job.

        Jobs for different adapters may share a batch. Sets ``info.adapters``.
        """
        ...

    def close(self) -> None: ...


#: An engine's generate: one job, with a callback for its answer text as it appears.
Generate = Callable[[Prepared, DeltaCallback | None], Awaitable[EngineResult]]


async def stream_deltas(generate: Generate, prepared: Prepared) -> AsyncIterator[str | EngineResult]:
    """``generate`` as a stream: text deltas as they are generated, then the EngineResult.

    ``on_delta`` may be called from any thread. A caller that stops reading cancels the job.
    """
    loop = asyncio.get_running_loop()
    deltas: asyncio.Queue[str] = asyncio.Queue()

    def on_delta(text: str) -> None:
        loop.call_soon_threadsafe(deltas.put_nowait, text)

    task = asyncio.ensure_future(generate(prepared, on_delta))
    try:
        while True:
            getter = asyncio.ensure_future(deltas.get())
            done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                yield getter.result()
                continue
            getter.cancel()
            while not deltas.empty():  # deltas that raced the completion
                yield deltas.get_nowait()
            yield task.result()
            return
    finally:
        task.cancel()  # the caller went away: nobody waits for this job's answer


def check_context(prompt_tokens: int, max_new_tokens: int, context_length: int, field: str = "text") -> None:
    """A prompt and its answer must fit the model's context; ``field`` is the input that holds the prompt."""
    if prompt_tokens + max_new_tokens > context_length:
        raise InputError(
            field,
            f"the prompt is {prompt_tokens} tokens and max_new_tokens is {max_new_tokens}, "
            f"over the model's context of {context_length} tokens; shorten the {field} or lower max_new_tokens",
        )


def host_fault(error: BaseException) -> HostError | None:
    """A HostError if ``error`` means this process's GPU is unusable from now on, else None."""
    if type(error).__name__ == "AcceleratorError" or any(marker in str(error) for marker in _POISONED_CUDA):
        return HostError(
            f"the GPU failed ({error_summary(error)}); this worker can't serve "
            "any more jobs and asks RunPod for a fresh one; resubmit the job"
        )
    return None


def error_summary(error: BaseException) -> str:
    """``Type: first line``, for an error a start-up or a GPU failure reports; for pydantic's validation errors the message inside."""
    errors = getattr(error, "errors", None)
    if callable(errors):
        try:
            text = str(errors()[0]["msg"])
        except (IndexError, KeyError, TypeError):
            text = str(error)
    else:
        text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:300] if text else 'no message'}"
