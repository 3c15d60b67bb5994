"""Grammar-constrained decoding for the transformers engine, with llguidance.

``Grammars`` compiles each ``JsonSpec`` once per worker (keyed by ``spec.key``) and keeps
the compiled matcher; every ``generate`` call takes fresh copies of it, so a retried batch
starts its rows from scratch. ``GrammarLogitsProcessor`` masks, at each step, every
constrained row's logits to the tokens its own grammar allows and leaves free rows alone:
constrained and free jobs share a batch, and a row's greedy answer is the same batched or
alone (its mask depends only on its own tokens).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import llguidance
import llguidance.hf
import torch
from transformers import LogitsProcessor

from medgemma.errors import GenerationFailed, InputError
from medgemma.structured import COMPACT_JSON, JsonSpec

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions  # only in llguidance's stub

#: Compiled grammars kept per worker (least recently used dropped first); each is small (KBs)
#: but holds its lexer's states, which grow with use.
MAX_CACHED_GRAMMARS = 64
JSON_OPTIONS: JsonCompileOptions = {"whitespace_flexible": not COMPACT_JSON}
#: llguidance's default per-step work limits; error texts without grammar details (they could
#: quote the caller's schema, and errors are logged).
LIMITS = llguidance.LLParserLimits(verbose_errors=False)


class Grammars:
    """The compiled grammars of one worker, for one tokenizer.

    The llguidance view of the 262k vocabulary takes seconds to build (holding the GIL), so
    it is built on the first constrained job, not at load: a worker that never serves JSON
    never pays for it.
    """

    def __init__(self, tokenizer: Any, vocab_size: int, stop_ids: Iterable[int]):
        self.vocab_size = vocab_size
        self._hf_tokenizer = tokenizer
        self._stop_ids = sorted(stop_ids)
        self._tokenizer: llguidance.LLTokenizer | None = None
        self._compiled: OrderedDict[str, llguidance.LLMatcher] = OrderedDict()
        self._lock = threading.Lock()
        self.compiles = 0  # grammars compiled so far: the benchmark and tests check "once per schema"

    def processor(self, compiled: Sequence[llguidance.LLMatcher | None]) -> GrammarLogitsProcessor:
        """The logits processor for one ``generate`` call; ``compiled[i]`` is row i's grammar or None."""
        return GrammarLogitsProcessor(compiled, self.vocab_size, self._stop_ids)

    def compiled(self, spec: JsonSpec) -> llguidance.LLMatcher:
        """The compiled grammar for ``spec`` (never advanced: copy it per row); InputError if it can't compile."""
        with self._lock:
            matcher = self._compiled.get(spec.key)
            if matcher is None:
                matcher = self._compile(spec)
                self._compiled[spec.key] = matcher
                if len(self._compiled) > MAX_CACHED_GRAMMARS:
                    self._compiled.popitem(last=False)
            else:
                self._compiled.move_to_end(spec.key)
            return matcher

    def _compile(self, spec: JsonSpec) -> llguidance.LLMatcher:
        if self._tokenizer is None:
            self._tokenizer = llguidance.hf.from_tokenizer(
                self._hf_tokenizer, n_vocab=self.vocab_size, eos_token=self._stop_ids
            )
        grammar = llguidance.LLMatcher.grammar_from_json_schema(spec.grammar, defaults=JSON_OPTIONS)
        matcher = llguidance.LLMatcher(self._tokenizer, grammar, log_level=0, limits=LIMITS)
        if matcher.is_error():
            raise InputError(_field(spec), _compile_problem(matcher.get_error()))
        self.compiles += 1
        return matcher


def check_grammar(spec: JsonSpec) -> None:
    """InputError if ``spec`` can't compile; for the vLLM engine, whose engine process compiles it itself."""
    grammar = llguidance.LLMatcher.grammar_from_json_schema(spec.grammar, defaults=JSON_OPTIONS)
    problem = llguidance.LLMatcher.validate_grammar(grammar)
    if problem:
        raise InputError(_field(spec), _compile_problem(problem))


def _field(spec: JsonSpec) -> str:
    """The job field that asked for this grammar."""
    return "json_schema" if spec.kind == "schema" else "format"


def _compile_problem(message: str) -> str:
    """A caller-facing reason that quotes nothing of the schema (llguidance's text may)."""
    if "regex" in message:
        return "a pattern is not a regular expression the grammar supports (look-around and backreferences are not)"
    if "format" in message:
        return "a string format is not supported"
    return "the schema cannot be compiled into a grammar; simplify it"


class GrammarLogitsProcessor(LogitsProcessor):
    """Masks each constrained row of one ``generate`` call; rows without a grammar are untouched.

    Made per call: it holds the rows' grammar states. Once a row's object is complete its
    grammar allows only the stop tokens, so the row ends right after it.
    """

    def __init__(self, compiled: Sequence[llguidance.LLMatcher | None], vocab_size: int, stop_ids: Iterable[int]):
        self._rows = [(row, grammar.deep_copy()) for row, grammar in enumerate(compiled) if grammar is not None]
        self._stop_ids = frozenset(stop_ids)
        self._ended: set[int] = set()  # rows that have generated their stop token
        # One int32 word per 32 tokens, bit set = allowed; pinned so the copy to a GPU is cheap.
        # (llguidance.torch has helpers for this, but importing it costs seconds of torch._dynamo.)
        self._bitmask = torch.full(
            (len(self._rows), (vocab_size + 31) // 32), -1, dtype=torch.int32, pin_memory=torch.cuda.is_available()
        )
        self._shifts: torch.Tensor | None = None
        self._started = False

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._started:  # the first call comes before any token was generated
            last = input_ids[:, -1].tolist()
            for row, matcher in self._rows:
                if row in self._ended:
                    continue  # generate() pads a finished row
                if last[row] in self._stop_ids:
                    self._ended.add(row)
                elif not matcher.consume_token(last[row]):
                    raise GenerationFailed("the grammar refused a generated token; retry the job")
        self._started = True
        active = [(index, row, matcher) for index, (row, matcher) in enumerate(self._rows) if row not in self._ended]
        if not active:
            return scores
        for index, _, matcher in active:
            words = self._bitmask[index]
            # A complete object's matcher is "stopped" and allows exactly the stop tokens.
            matcher.unsafe_compute_mask_ptr(words.data_ptr(), words.numel() * words.element_size())
            if matcher.is_error():  # e.g. a per-step work limit: fail this job, not the worker
                raise GenerationFailed(
                    "the grammar could not compute the next tokens within its limits; simplify the schema"
                )
        rows = [row for _, row, _ in active]
        scores[rows] = scores[rows].masked_fill(
            ~self._allowed([index for index, _, _ in active], scores), float("-inf")
        )
        return scores

    def _allowed(self, indices: list[int], scores: torch.Tensor) -> torch.Tensor:
        """The rows' bitmasks unpacked on the logits' device: (len(indices), vocab) booleans."""
        if self._shifts is None:
            self._shifts = torch.arange(32, dtype=torch.int32, device=scores.device)
        words = self._bitmask[indices].to(scores.device, non_blocking=True)
        bits = (words.unsqueeze(-1) >> self._shifts) & 1
        return bits.flatten(1)[:, : scores.shape[-1]].bool()
