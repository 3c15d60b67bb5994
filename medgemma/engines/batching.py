"""Dynamic batching: jobs that arrive together are generated together on one model.

The handler is async and must never block RunPod's event loop, so generation runs on one
dedicated thread that owns the model. Jobs queue up; when the thread is free it waits
``batch_wait`` for company (and up to ``prepare_wait`` longer for jobs that have arrived but
are still being tokenized, so jobs submitted together are not split by tokenization time),
then takes up to ``max_batch_size`` queued jobs that share the first job's sampling settings
(jobs that can't share a batch keep their place for the next one) and generates them in
one call.

Before a batch is formed its KV cache is estimated (``backend.kv_cache_bytes``: prompt
lengths left-padded to the longest, plus max_new_tokens) against the memory the device has
free (``backend.memory_budget``). Jobs that would not fit wait for the next batch; a job that
can't fit even alone is refused with an InputError that says so.

A job that fails validation never reaches the queue, so a bad job fails alone; if a whole
batch still fails (e.g. out of GPU memory despite the estimate), its jobs are retried one
at a time so only the job that can't run fails. A GPU fault that poisons the process fails
every job in the batch, and every later one, with a HostError (the worker asks RunPod to
replace it). Nothing here imports torch: the backend does the model work.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from medgemma.adapters import Adapter
from medgemma.decoding import DeltaCallback
from medgemma.engines.base import Completion, EngineResult, ModelInfo, Prepared, host_fault, stream_deltas
from medgemma.engines.memory import GIB
from medgemma.errors import GenerationFailed, HostError, InputError, redacted_traceback
from medgemma.request import GenerationRequest, SamplingKey

log = logging.getLogger(__name__)


class _Stop(enum.Enum):
    STOP = "stop"  # put in the inbox: the generation thread ends


_STOP = _Stop.STOP

#: The longest a batch waits, beyond batch_wait, for jobs still being tokenized.
PREPARE_WAIT_SECONDS = 0.25
#: How often the gathering thread re-checks whether jobs are still being tokenized.
_POLL_SECONDS = 0.005


class Backend(Protocol):
    """A model that prepares one request and generates a batch of them."""

    info: ModelInfo

    def prepare(self, request: GenerationRequest) -> Prepared: ...

    def generate_batch(
        self, batch: list[Prepared], on_delta: list[DeltaCallback | None] | None = None
    ) -> list[Completion]: ...

    def kv_cache_bytes(self, prompt_tokens: list[int], max_new_tokens: int) -> int:
        """The KV cache one batch of these prompt lengths needs (``medgemma.engines.memory``)."""
        ...

    def memory_budget(self) -> int | None:
        """Bytes the next batch's KV cache may take now; None: no limit known."""
        ...

    def load_adapters(self, adapters: Sequence[Adapter]) -> None: ...


@dataclass
class _Job:
    prepared: Prepared
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Completion]
    on_delta: DeltaCallback | None
    enqueued_at: float = field(default_factory=time.perf_counter)
    batch_size: int = 1
    queue_seconds: float = 0.0

    @property
    def key(self) -> SamplingKey:
        return self.prepared.request.sampling_key


class BatchEngine:
    """An Engine (``medgemma.engines.base``) that batches jobs for one ``Backend``."""

    def __init__(
        self,
        backend: Backend,
        max_batch_size: int = 8,
        batch_wait_seconds: float = 0.02,
        prepare_wait_seconds: float = PREPARE_WAIT_SECONDS,
    ):
        self.backend = backend
        self.info = backend.info
        self.max_batch_size = max_batch_size
        self.batch_wait_seconds = batch_wait_seconds
        # BATCH_WAIT_MS=0 means "never wait for company", tokenizing jobs included.
        self.prepare_wait_seconds = prepare_wait_seconds if batch_wait_seconds > 0 else 0.0
        self._inbox: queue.Queue[_Job | _Stop] = queue.Queue()
        self._waiting: list[_Job] = []
        self._preparing = 0  # jobs being tokenized: they will be queued in a moment
        self._preparing_lock = threading.Lock()
        self._fault: HostError | None = None  # set once the GPU has failed: nothing can run any more
        self._thread = threading.Thread(target=self._run, name="medgemma-engine", daemon=True)
        self._thread.start()

    async def prepare(self, request: GenerationRequest) -> Prepared:
        """Tokenize off the event loop; raises InputError for prompts that can't fit."""
        with self._preparing_lock:
            self._preparing += 1
        try:
            return await asyncio.to_thread(self.backend.prepare, request)
        finally:
            with self._preparing_lock:
                self._preparing -= 1

    async def generate(self, prepared: Prepared, on_delta: DeltaCallback | None = None) -> EngineResult:
        """Queue one prepared job and wait for its completion."""
        loop = asyncio.get_running_loop()
        job = _Job(prepared, loop, loop.create_future(), on_delta)
        self._inbox.put(job)
        completion = await job.future
        return EngineResult(completion, prepared, job.batch_size, job.queue_seconds)

    def stream(self, prepared: Prepared) -> AsyncIterator[str | EngineResult]:
        """Yield text deltas as they are generated, then the EngineResult."""
        return stream_deltas(self.generate, prepared)

    def load_adapters(self, adapters: Sequence[Adapter]) -> None:
        """Load them on the backend (before any job runs: warmup); rows of one batch may use different ones."""
        self.backend.load_adapters(adapters)
        self.info = self.backend.info

    def close(self) -> None:
        self._inbox.put(_STOP)
        self._thread.join()

    # -- the generation thread -------------------------------------------------

    def _run(self) -> None:
        while True:
            if not self._waiting:
                item = self._inbox.get()
                if item is _STOP:
                    return
                self._waiting.append(item)
            self._gather()
            batch = self._take_batch()
            if batch:
                self._serve(batch)

    def _gather(self) -> None:
        """Wait briefly for more jobs to join the first one, then drain the inbox.

        While jobs are still being tokenized the wait stretches, by at most
        ``prepare_wait_seconds``, so that they can join this batch.
        """
        deadline = time.perf_counter() + self.batch_wait_seconds
        stretched = deadline + self.prepare_wait_seconds
        while len(self._waiting) < self.max_batch_size:
            remaining = (stretched if self._preparing else deadline) - time.perf_counter()
            try:
                item = (
                    self._inbox.get(timeout=min(remaining, _POLL_SECONDS))
                    if remaining > 0
                    else self._inbox.get_nowait()
                )
            except queue.Empty:
                if remaining > 0:
                    continue  # re-check: a job may have finished tokenizing, or the window ended
                return
            if item is _STOP:
                self._inbox.put(_STOP)
                return
            self._waiting.append(item)

    def _take_batch(self) -> list[_Job]:
        """The oldest job and the following ones that share its sampling key, in order, as many as fit.

        A job whose KV cache would overflow the memory left keeps its place for the next
        batch; one that can't fit alone is refused (and taken off the queue).
        """
        key = self._waiting[0].key
        candidates = [job for job in self._waiting if job.key == key][: self.max_batch_size]
        budget = self.backend.memory_budget()
        batch: list[_Job] = []
        refused: list[_Job] = []
        held = 0  # the KV cache the batch so far needs
        for job in candidates:
            rows = [chosen.prepared.prompt_tokens for chosen in batch] + [job.prepared.prompt_tokens]
            need = self.backend.kv_cache_bytes(rows, key.max_new_tokens)
            if budget is None or need <= budget:
                batch.append(job)
                held = need
            elif not batch:
                refused.append(job)
                self._settle(job, _too_big(job, need, budget))
        if budget is not None and len(batch) + len(refused) < len(candidates):
            log.info(
                "batch split to fit memory: %d of %d jobs now, KV cache %.2f GiB of %.2f GiB usable",
                len(batch), len(candidates) - len(refused), held / GIB, budget / GIB,
            )  # fmt: skip
        taken = set(map(id, batch + refused))
        self._waiting = [job for job in self._waiting if id(job) not in taken]
        return batch

    def _serve(self, batch: list[_Job]) -> None:
        now = time.perf_counter()
        for job in batch:
            job.batch_size, job.queue_seconds = len(batch), round(now - job.enqueued_at, 4)
        if self._fault is not None:
            for job in batch:
                self._settle(job, self._fault)
            return
        try:
            completions = self.backend.generate_batch([job.prepared for job in batch], [job.on_delta for job in batch])
        except GenerationFailed as error:
            if len(batch) > 1:
                log.warning("batch of %d failed (%s); retrying its jobs one at a time", len(batch), error)
                for job in batch:
                    self._serve([job])
                return
            self._settle(batch[0], error)
            return
        except Exception as error:  # never let one batch kill the thread
            self._fault = fault = host_fault(error)
            log.error("generation failed for a batch of %d:\n%s", len(batch), redacted_traceback(error))
            for job in batch:
                self._settle(job, fault or GenerationFailed(f"generation failed: {type(error).__name__}"))
            return
        for job, completion in zip(batch, completions, strict=True):
            self._settle(job, completion)

    @staticmethod
    def _settle(job: _Job, outcome: Completion | Exception) -> None:
        """Answer the job's caller, on its event loop: its completion, or the error it fails with."""

        def settle() -> None:
            if job.future.done():  # the caller went away (cancelled)
                return
            if isinstance(outcome, Exception):
                job.future.set_exception(outcome)
            else:
                job.future.set_result(outcome)

        try:
            job.loop.call_soon_threadsafe(settle)
        except RuntimeError:  # that caller's event loop has closed: nobody is waiting
            log.warning("job finished after its caller's event loop closed")


def _too_big(job: _Job, need: int, budget: int) -> InputError:
    prepared = job.prepared
    return InputError(
        "text",
        f"the prompt is {prepared.prompt_tokens} tokens and max_new_tokens is {prepared.request.max_new_tokens}, "
        f"whose KV cache (~{need / GIB:.2f} GiB) does not fit the {budget / GIB:.2f} GiB this worker has free; "
        "shorten the text or lower max_new_tokens",
    )
