"""The worker's state and its job flow: validate -> generate -> shape the output.

One ``Worker`` lives per process (created by ``handler.warmup``). Every failure a
caller can cause or suffer becomes ``{"error": "<one sentence naming the field>"}``
and the worker carries on with the next job. Logs carry ids, sizes, token counts
and timings only, never note text, prompts, answers or images.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from medgemma.engine import BatchEngine, EngineResult
from medgemma.errors import GenerationFailed, InputError, MedGemmaError
from medgemma.request import GenerationRequest, parse_job_input
from medgemma.settings import Settings

log = logging.getLogger("medgemma.worker")

STREAM_OFF_PROBLEM = (
    "this worker was started without STREAMING=true, so it cannot stream; omit stream or redeploy with STREAMING=true"
)


@dataclass
class Worker:
    settings: Settings
    model: Any  # medgemma.model.LoadedModel
    engine: BatchEngine

    @classmethod
    def start(cls, settings: Settings) -> Worker:
        """Load the model once (the cold start) and start the batching engine."""
        from medgemma.model import load_model  # heavy: torch + transformers

        started = time.perf_counter()
        model = load_model(settings)
        engine = BatchEngine(model, settings.max_batch_size, settings.batch_wait_ms / 1000)
        log.info("warmup done in %.1f s (%s)", time.perf_counter() - started, model.info.run_mode)
        return cls(settings, model, engine)

    async def run(self, job: dict[str, Any], streaming_worker: bool = False) -> dict[str, Any]:
        """Serve one job and return its whole output object (or ``{"error": ...}``)."""
        started = time.perf_counter()
        try:
            request = self._validate(job)
            if request.stream and not streaming_worker:
                raise InputError("stream", STREAM_OFF_PROBLEM)
            prepared = await self.engine.prepare(request)
            result = await self.engine.generate(prepared)
        except MedGemmaError as error:
            return self._failed(job, error)
        return self._shaped(request, result, started)

    async def run_stream(self, job: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Yield ``{"delta": text}`` chunks then a final chunk with usage and finish reason.

        A job without ``stream: true`` yields exactly one item: its whole output object.
        """
        started = time.perf_counter()
        try:
            request = self._validate(job)
            prepared = await self.engine.prepare(request)
            if not request.stream:
                yield self._shaped(request, await self.engine.generate(prepared), started)
                return
            async for item in self.engine.stream(prepared):
                if isinstance(item, EngineResult):
                    final = self._shaped(request, item, started)
                    final.pop("output")
                    yield {"delta": "", "done": True, **final}
                else:
                    yield {"delta": item}
        except MedGemmaError as error:
            yield self._failed(job, error)

    def _validate(self, job: dict[str, Any]) -> GenerationRequest:
        return parse_job_input(job.get("input"), self.settings, job_id=str(job.get("id", "-")))

    def _shaped(self, request: GenerationRequest, result: EngineResult, started: float) -> dict[str, Any]:
        completion, info = result.completion, self.model.info
        total = time.perf_counter() - started
        timings = {
            "queue_s": result.queue_seconds,
            "prepare_s": round(result.prepared.prepare_seconds, 4),
            "time_to_first_token_s": completion.time_to_first_token,
            "generate_s": completion.generate_seconds,
            "total_s": round(total, 4),
        }
        log.info(
            "job %s done: mode=%s images=%d dummy=%s prompt_tokens=%d completion_tokens=%d finish=%s batch=%d "
            "queue_s=%.3f ttft_s=%.3f generate_s=%.3f",
            request.job_id,
            request.mode,
            len(request.images),
            request.used_dummy_image,
            completion.prompt_tokens,
            completion.completion_tokens,
            completion.finish_reason,
            result.batch_size,
            result.queue_seconds,
            completion.time_to_first_token,
            completion.generate_seconds,
        )
        return {
            "output": completion.text,
            "mode": request.mode,
            "model": info.source,
            "run_mode": info.run_mode,
            "usage": {"prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens},
            "finish_reason": completion.finish_reason,
            "used_dummy_image": request.used_dummy_image,
            "batch_size": result.batch_size,
            "timings": timings,
        }

    @staticmethod
    def _failed(job: dict[str, Any], error: MedGemmaError) -> dict[str, str]:
        kind = (
            "input"
            if isinstance(error, InputError)
            else ("generation" if isinstance(error, GenerationFailed) else "worker")
        )
        # The message names a field and a limit, never the caller's data.
        log.warning("job %s failed (%s error): %s", job.get("id", "-"), kind, error)
        return {"error": str(error)}
