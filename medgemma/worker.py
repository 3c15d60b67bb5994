"""The worker's state and its one job path: validate -> generate -> shape the output.

One ``Worker`` lives per process (created by ``handler.warmup``). Every failure a caller
can cause or suffer becomes ``{"error": "<one sentence>"}`` and the worker carries on with
the next job; a GPU fault also asks RunPod for a fresh worker (``refresh_worker``). Logs
carry ids, sizes, token counts and timings only, never note text, prompts, answers, images or
any other string the caller sent: an input error is logged as ``InputError.logged``, a job id
as ``logged_id``.

A job's input and output come in a dialect: the native one here, or OpenAI's chat
completions (``medgemma.openai_api``). A dialect validates the input into a
GenerationRequest and shapes what comes out; the path between them is the same for both.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from medgemma.engines.base import Engine, EngineResult
from medgemma.errors import GenerationFailed, HostError, InputError, MedGemmaError, logged_id, redacted_traceback
from medgemma.request import GenerationRequest, parse_job_input
from medgemma.settings import Settings
from medgemma.structured import json_answer

log = logging.getLogger("medgemma.worker")

STREAM_OFF_PROBLEM = (
    "this worker was started without STREAMING=true, so it cannot stream; omit stream or redeploy with STREAMING=true"
)


class Dialect(Protocol):
    """How one kind of job reads its input and shapes its answers (``NativeDialect`` shows the contract)."""

    def parse(self, worker: Worker, job: dict[str, Any]) -> GenerationRequest: ...

    def whole(self, request: GenerationRequest, output: dict[str, Any]) -> Any:
        """A whole answer, from the native output object."""
        ...

    def delta(self, request: GenerationRequest, text: str) -> Any: ...

    def last(self, request: GenerationRequest, output: dict[str, Any]) -> Any:
        """The item that ends a stream, from the native output object (its "output" removed)."""
        ...

    def failed(self, error: MedGemmaError, failure: dict[str, Any]) -> dict[str, Any]:
        """A failed job's item, from the native ``{"error": ...}`` (plus ``refresh_worker``)."""
        ...


@dataclass
class Worker:
    settings: Settings
    engine: Engine

    @classmethod
    def start(cls, settings: Settings) -> Worker:
        """Load the model once (the cold start) and start its engine."""
        from medgemma.engines import load_engine  # heavy: torch and the chosen engine

        started = time.perf_counter()
        worker = cls(settings, load_engine(settings))
        info = worker.engine.info
        log.info(
            "cold start done in %.1f s: engine=%s model=%s revision=%s adapters=%s run_mode=%s load_s=%.1f "
            "max_concurrency=%d",
            time.perf_counter() - started, info.engine, info.source, info.revision,
            ",".join(adapter.name for adapter in info.adapters) or "none", info.run_mode, info.load_seconds,
            worker.max_concurrency,
        )  # fmt: skip
        return worker

    @property
    def max_concurrency(self) -> int:
        """How many jobs RunPod may hand this worker at once: MAX_CONCURRENCY, or the engine's figure."""
        return self.settings.max_concurrency or self.engine.info.max_concurrency

    async def run(self, job: dict[str, Any], dialect: Dialect | None = None) -> Any:
        """Serve one job and return its whole output object (or ``{"error": ...}``)."""
        answers = self.answer(job, streaming_worker=False, dialect=dialect)
        try:
            return await anext(answers)
        finally:
            await answers.aclose()

    async def run_stream(self, job: dict[str, Any], dialect: Dialect | None = None) -> AsyncIterator[Any]:
        """Yield ``{"delta": text}`` chunks then a final chunk with usage and finish reason.

        A job without ``stream: true`` yields exactly one item: its whole output object.
        """
        async for item in self.answer(job, streaming_worker=True, dialect=dialect):
            yield item

    async def answer(
        self, job: dict[str, Any], streaming_worker: bool, dialect: Dialect | None = None
    ) -> AsyncGenerator[Any, None]:
        """The one job path, for plain and streamed jobs alike, in the job's dialect (native by default)."""
        dialect = dialect or NATIVE
        started = time.perf_counter()
        try:
            request = await asyncio.to_thread(dialect.parse, self, job)
            if request.stream and not streaming_worker:
                raise InputError("stream", STREAM_OFF_PROBLEM)
            prepared = await self.engine.prepare(request)
            if not request.stream:
                yield dialect.whole(request, self._shaped(request, await self.engine.generate(prepared), started))
                return
            async for item in self.engine.stream(prepared):
                if isinstance(item, EngineResult):
                    final = self._shaped(request, item, started)
                    final.pop("output")
                    yield dialect.last(request, final)
                else:
                    yield dialect.delta(request, item)
        except MedGemmaError as error:
            yield dialect.failed(error, self._failed(job, error))
        except Exception as error:  # a bug, not the caller's fault: report it, keep serving
            log.error("job %s failed unexpectedly:\n%s", logged_id(job.get("id", "-")), redacted_traceback(error))
            failure = GenerationFailed(
                f"internal error ({type(error).__name__}) while serving this job; the worker keeps serving"
            )
            yield dialect.failed(failure, {"error": str(failure)})

    def validate(self, job: dict[str, Any], mode_prompts: bool = True) -> GenerationRequest:
        """A native job's input as a GenerationRequest for this worker's model (and its adapters)."""
        info = self.engine.info
        return parse_job_input(
            job.get("input"),
            self.settings,
            job_id=logged_id(job.get("id", "-")),
            vision=info.vision,
            mode_prompts=mode_prompts,
            adapters=[adapter.name for adapter in info.adapters],
            merged=self.settings.adapter_merge,
        )

    def provenance(self, adapter_name: str | None) -> dict[str, str | None]:
        """Which weights answered: the base model's source and revision, and the adapter's (None: none)."""
        info = self.engine.info
        adapter = next((adapter for adapter in info.adapters if adapter.name == adapter_name), None)
        return {
            "model": self.settings.model_id or info.source,
            "model_revision": info.revision,
            "adapter": adapter.name if adapter else None,
            "adapter_revision": adapter.revision if adapter else None,
        }

    def _shaped(self, request: GenerationRequest, result: EngineResult, started: float) -> dict[str, Any]:
        completion, info = result.completion, self.engine.info
        total = time.perf_counter() - started
        timings = {
            "queue_s": result.queue_seconds,
            "prepare_s": round(result.prepared.prepare_seconds, 4),
            "time_to_first_token_s": completion.time_to_first_token,
            "generate_s": completion.generate_seconds,
            "total_s": round(total, 4),
        }
        structured = request.structured
        answer = json_answer(completion.text, completion.finish_reason, request.max_new_tokens) if structured else None
        finish_reason = answer.finish_reason if answer else completion.finish_reason
        log.info(
            "job %s done: engine=%s adapter=%s mode=%s format=%s images=%d dummy=%s prompt_tokens=%d "
            "completion_tokens=%d finish=%s batch=%d queue_s=%.3f ttft_s=%.3f generate_s=%.3f",
            request.job_id, info.engine, request.adapter or "base", request.mode,
            structured.kind if structured else "text", len(request.images), request.used_dummy_image,
            completion.prompt_tokens, completion.completion_tokens, finish_reason, result.batch_size,
            result.queue_seconds, completion.time_to_first_token, completion.generate_seconds,
        )  # fmt: skip
        shaped: dict[str, Any] = {
            "output": completion.text,
            "mode": request.mode,
            "model": info.source,
            "run_mode": info.run_mode,
            "usage": {"prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens},
            "finish_reason": finish_reason,
            "used_dummy_image": request.used_dummy_image,
            "batch_size": result.batch_size,
            "timings": timings,
            "adapter": request.adapter,
            "provenance": self.provenance(request.adapter),
        }
        if answer:
            # parsed is the object, or null with finish_reason "length" and incomplete saying why.
            shaped["parsed"] = answer.parsed
            if answer.incomplete:
                shaped["incomplete"] = answer.incomplete
        return shaped

    @staticmethod
    def _failed(job: dict[str, Any], error: MedGemmaError) -> dict[str, Any]:
        kinds = {InputError: "input", GenerationFailed: "generation", HostError: "host"}
        kind = next((name for cls, name in kinds.items() if isinstance(error, cls)), "worker")
        log.warning("job %s failed (%s error): %s", logged_id(job.get("id", "-")), kind, error.logged)
        failure: dict[str, Any] = {"error": str(error)}
        if isinstance(error, HostError):
            failure["refresh_worker"] = True  # RunPod replaces this worker after the job
        return failure


class NativeDialect:
    """This worker's own job format (docs/worker.md, Jobs)."""

    def parse(self, worker: Worker, job: dict[str, Any]) -> GenerationRequest:
        return worker.validate(job)

    def whole(self, request: GenerationRequest, output: dict[str, Any]) -> dict[str, Any]:
        return output

    def delta(self, request: GenerationRequest, text: str) -> dict[str, Any]:
        return {"delta": text}

    def last(self, request: GenerationRequest, output: dict[str, Any]) -> dict[str, Any]:
        return {"delta": "", "done": True, **output}

    def failed(self, error: MedGemmaError, failure: dict[str, Any]) -> dict[str, Any]:
        return failure


NATIVE = NativeDialect()
