"""The four grammar libraries compared on the stand-in's Gemma 3 tokenizer (262k vocabulary).

    python -m bench.grammar_libs                      # all four, ~10 min on 2 cores; prints a markdown table
    python -m bench.grammar_libs --libs xgrammar,llguidance --reps 5

This is the measurement behind the choice in docs/structured-output.md. For each library,
in its own child process (imports and caches never mix):

* tokenizer preparation: the once-per-worker cost of indexing the vocabulary;
* compile: one schema compiled from scratch (every library's cache off or bypassed);
* mask per token: the library's own work per decoding step (compute the allowed-token
  bitmask, then advance by one token), walked along a fixed valid answer's tokens; the
  bitmask is checked to allow each next token, so a library that can't follow the answer
  fails loudly instead of looking fast. Applying the bitmask to the logits is the same
  kernel for all of them and is measured once (xgrammar's CPU kernel).

No model is loaded: grammar work does not depend on the weights, only on the tokenizer.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

from bench.common import REPO_ROOT, describe_machine
from bench.sample_schemas import PROBLEMS
from medgemma.structured import MAX_SUMMARY_ITEM_CHARS, SUMMARY_SCHEMA, SUMMARY_SECTIONS

LIBS = ("xgrammar", "llguidance", "outlines", "lmfe")
STOP_IDS = (1, 106)  # <eos>, <end_of_turn>
CHILD_TIMEOUT_S = 300
#: A child's address-space limit: one library's compile grew past 12 GB on a 24 GB machine shared with others.
CHILD_MEMORY_BYTES = 8 * 2**30


def _unbounded(schema: dict) -> dict:
    """The summary schema without its maxLength on strings (the bound some libraries compile slowly)."""
    copy = json.loads(json.dumps(schema))
    for name in SUMMARY_SECTIONS:
        del copy["properties"][name]["items"]["maxLength"]
    return copy


NESTED_SCHEMA = PROBLEMS

SUMMARY_ANSWER = {
    "key_findings": ["BP 142/91 mmHg on admission, afebrile", "Troponin I 0.02 ng/mL (normal)"],
    "diagnoses": ["Hypertension, poorly controlled"],
    "treatments_and_medications": ["Amlodipine 5 mg daily started", "Continue metformin 500 mg twice daily"],
    "follow_up_and_pending": ["HbA1c pending", "GP review in 2 weeks"],
    "not_documented": [],
}
NESTED_ANSWER = {
    "patient": {"age": 67, "sex": "female"},
    "problems": [
        {"name": "Type 2 diabetes", "status": "active"},
        {"name": "Community-acquired pneumonia", "status": "resolved"},
    ],
}

#: (label, schema, a valid answer); the answer is compact JSON, the format every library is asked for.
#: The length-bounded schema goes last: a library that can't compile it must not cost the other rows.
CASES = (
    ("built-in summary without maxLength", _unbounded(SUMMARY_SCHEMA), SUMMARY_ANSWER),
    ("nested caller schema (enums, integer range)", NESTED_SCHEMA, NESTED_ANSWER),
    (f"built-in summary (strings maxLength {MAX_SUMMARY_ITEM_CHARS})", SUMMARY_SCHEMA, SUMMARY_ANSWER),
)


# -- the child: one library --------------------------------------------------------


class _Xgrammar:
    def __init__(self, tokenizer: Any, vocab_size: int):
        import xgrammar as xgr

        self.xgr = xgr
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=list(STOP_IDS))
        self.compiler = xgr.GrammarCompiler(info, cache_enabled=False)

    def compile(self, schema: dict) -> Any:
        return self.compiler.compile_json_schema(json.dumps(schema), any_whitespace=False, separators=(",", ":"))

    def matcher(self, compiled: Any) -> Any:
        return self.xgr.GrammarMatcher(compiled)

    def fill(self, matcher: Any, bitmask: Any) -> None:
        matcher.fill_next_token_bitmask(bitmask, 0)

    def accept(self, matcher: Any, token: int) -> bool:
        return matcher.accept_token(token)


class _Llguidance:
    def __init__(self, tokenizer: Any, vocab_size: int):
        import llguidance
        import llguidance.hf
        import llguidance.torch

        self.llg = llguidance
        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=list(STOP_IDS))

    def compile(self, schema: dict) -> Any:
        grammar = self.llg.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})
        return grammar

    def matcher(self, compiled: Any) -> Any:
        matcher = self.llg.LLMatcher(self.tokenizer, compiled)
        if matcher.is_error():
            raise RuntimeError(matcher.get_error())
        return matcher

    def fill(self, matcher: Any, bitmask: Any) -> None:
        self.llg.torch.fill_next_token_bitmask(matcher, bitmask, 0)

    def accept(self, matcher: Any, token: int) -> bool:
        return matcher.consume_token(token)


class _Outlines:
    def __init__(self, tokenizer: Any, vocab_size: int):
        import outlines_core
        from vllm.v1.structured_output.utils import get_outlines_vocabulary  # vLLM's own HF -> outlines vocabulary

        self.oc = outlines_core
        self.vocabulary = get_outlines_vocabulary(tokenizer).inner

    def compile(self, schema: dict) -> Any:
        return self.oc.Index(self.oc.json_schema.build_regex_from_schema(json.dumps(schema)), self.vocabulary)

    def matcher(self, compiled: Any) -> Any:
        return self.oc.Guide(compiled)

    def fill(self, matcher: Any, bitmask: Any) -> None:
        row = bitmask[0]
        matcher.write_mask_into(row.data_ptr(), row.numel(), row.element_size())

    def accept(self, matcher: Any, token: int) -> bool:
        if token in STOP_IDS:  # outlines never advances on EOS (vLLM tracks that itself)
            return matcher.is_finished()
        matcher.advance(token)
        return True


class _Lmfe:
    def __init__(self, tokenizer: Any, vocab_size: int):
        import torch
        import transformers.tokenization_utils_base

        # lm-format-enforcer 0.11.3 imports PreTrainedTokenizerBase from transformers.tokenization_utils,
        # which transformers 5 no longer has: its transformers integration fails to import unpatched.
        sys.modules["transformers.tokenization_utils"] = transformers.tokenization_utils_base
        from lmformatenforcer import JsonSchemaParser, TokenEnforcer
        from lmformatenforcer.integrations.transformers import build_token_enforcer_tokenizer_data

        self.torch, self.parser, self.enforcer = torch, JsonSchemaParser, TokenEnforcer
        self.data = build_token_enforcer_tokenizer_data(tokenizer, vocab_size=vocab_size)
        self.vocab_size = vocab_size
        self.bit_weights = torch.tensor([1 << bit for bit in range(32)], dtype=torch.int64)

    def compile(self, schema: dict) -> Any:
        return schema  # the parser is built per sequence

    def matcher(self, compiled: Any) -> Any:
        return {"enforcer": self.enforcer(self.data, self.parser(compiled)), "tokens": []}

    def fill(self, matcher: Any, bitmask: Any) -> None:
        allowed = matcher["enforcer"].get_allowed_tokens(matcher["tokens"]).allowed_tokens
        bits = self.torch.zeros(bitmask.shape[1] * 32, dtype=self.torch.int64)
        bits[self.torch.tensor(allowed)] = 1
        words = (bits.view(-1, 32) * self.bit_weights).sum(1)
        bitmask[0] = (words - (words >= 2**31).long() * 2**32).to(self.torch.int32)

    def accept(self, matcher: Any, token: int) -> bool:
        matcher["tokens"].append(token)
        return True


ADAPTERS = {"xgrammar": _Xgrammar, "llguidance": _Llguidance, "outlines": _Outlines, "lmfe": _Lmfe}


def run_child(lib: str, reps: int) -> None:
    """Print one JSON line per measurement, so a timeout still leaves the earlier ones."""
    resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY_BYTES, CHILD_MEMORY_BYTES))
    import torch
    from transformers import AutoConfig, AutoTokenizer

    from medgemma.settings import load_settings
    from medgemma.standin import ensure_standin

    torch.set_num_threads(1)
    path = ensure_standin(load_settings().standin_cache)
    tokenizer = AutoTokenizer.from_pretrained(path)
    vocab_size = AutoConfig.from_pretrained(path).get_text_config().vocab_size

    def emit(**row: Any) -> None:
        print(json.dumps({"lib": lib, **row}), flush=True)

    started = time.perf_counter()
    adapter = ADAPTERS[lib](tokenizer, vocab_size)
    emit(what="prep", seconds=time.perf_counter() - started)
    bitmask = torch.full((1, (vocab_size + 31) // 32), -1, dtype=torch.int32)
    for label, schema, answer in CASES:
        tokens = [*tokenizer.encode(json.dumps(answer, separators=(",", ":")), add_special_tokens=False), STOP_IDS[0]]
        started = time.perf_counter()
        try:
            compiled = adapter.compile(schema)
            matcher = adapter.matcher(compiled)  # llguidance compiles lazily: building the matcher is part of it
        except Exception as error:  # a library that can't take the schema is a result, not a crash
            emit(what="case", case=label, error=f"{type(error).__name__}: {str(error)[:160]}")
            continue
        compile_s = time.perf_counter() - started
        per_token: list[float] = []
        for rep in range(reps):
            if rep:
                matcher = adapter.matcher(compiled)
            for index, token in enumerate(tokens):
                started = time.perf_counter()
                adapter.fill(matcher, bitmask)
                allowed = bool((int(bitmask[0, token // 32]) >> (token % 32)) & 1)
                accepted = allowed and adapter.accept(matcher, token)
                per_token.append(time.perf_counter() - started)
                if not accepted:
                    emit(what="case", case=label, compile_s=compile_s, error=f"refused answer token {index}")
                    break
        per_token.sort()
        emit(
            what="case",
            case=label,
            compile_s=compile_s,
            tokens=len(tokens),
            median_ms=statistics.median(per_token) * 1e3,
            p90_ms=per_token[int(0.9 * (len(per_token) - 1))] * 1e3,
            max_ms=per_token[-1] * 1e3,
        )
    if lib == "xgrammar":
        from xgrammar import apply_token_bitmask_inplace

        logits = torch.randn(1, vocab_size)
        for fill, name in ((-1, "all allowed"), (0, "all masked")):
            bitmask.fill_(fill)
            times = []
            for _ in range(50):
                started = time.perf_counter()
                apply_token_bitmask_inplace(logits, bitmask)
                times.append(time.perf_counter() - started)
            emit(what="apply", case=name, median_ms=statistics.median(times) * 1e3)


# -- the parent: one table -----------------------------------------------------------


def run_parent(libs: list[str], reps: int) -> None:
    rows: dict[str, list[dict]] = {}
    for lib in libs:
        command = [sys.executable, "-m", "bench.grammar_libs", "--child", lib, "--reps", str(reps)]
        print(f"running {lib} ...", file=sys.stderr, flush=True)
        try:
            done = subprocess.run(
                command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, env=os.environ
            )
            stdout = done.stdout
            failure = f"exit status {done.returncode}: {_last_error(done.stderr)}" if done.returncode else ""
        except subprocess.TimeoutExpired as expired:
            stdout = expired.stdout.decode() if isinstance(expired.stdout, bytes) else (expired.stdout or "")
            failure = f"did not finish in {CHILD_TIMEOUT_S} s"
        rows[lib] = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
        if failure:
            rows[lib].append({"what": "failure", "error": failure[:200]})
    print(markdown(rows, reps))


def _last_error(stderr: str) -> str:
    """The exception line of a child's traceback (warnings printed after it are skipped)."""
    lines = [line for line in stderr.splitlines() if line.strip() and "Warning" not in line and "Triton" not in line]
    return lines[-1] if lines else "no error message"


def markdown(rows: dict[str, list[dict]], reps: int) -> str:
    lines = [
        f"command: `python -m bench.grammar_libs --libs {','.join(rows)} --reps {reps}`",
        *(f"- {line}" for line in describe_machine()),
        "",
        "| library | tokenizer prep | schema | compile | mask per token: median / p90 / max |",
        "| --- | --- | --- | --- | --- |",
    ]
    for lib, results in rows.items():
        prep = next((f"{row['seconds']:.1f} s" for row in results if row["what"] == "prep"), "-")
        for row in results:
            if row["what"] == "case":
                compile_text = f"{row['compile_s'] * 1e3:.0f} ms" if "compile_s" in row else "-"
                mask = (
                    f"{row['median_ms']:.3f} / {row['p90_ms']:.3f} / {row['max_ms']:.1f} ms ({row['tokens']} tokens x {reps})"
                    if "median_ms" in row
                    else f"failed: {row['error']}"
                )
                lines.append(f"| {lib} | {prep} | {row['case']} | {compile_text} | {mask} |")
            elif row["what"] == "failure":
                lines.append(f"| {lib} | {prep} | - | - | failed: {row['error']} |")
    applies = [row for results in rows.values() for row in results if row["what"] == "apply"]
    if applies:
        lines += ["", "Applying a bitmask to one row of 262,208 logits (xgrammar CPU kernel): "]
        lines[-1] += "; ".join(f"{row['case']} {row['median_ms']:.3f} ms" for row in applies)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--libs", default=",".join(LIBS), help=f"comma-separated, from {', '.join(LIBS)}")
    parser.add_argument("--reps", type=int, default=3, help="walks of each answer (default 3)")
    parser.add_argument("--child", choices=LIBS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        run_child(args.child, args.reps)
        return
    libs = [lib for lib in args.libs.split(",") if lib]
    unknown = sorted(set(libs) - set(LIBS))
    if unknown:
        parser.error(f"unknown library {unknown[0]!r}; choose from {', '.join(LIBS)}")
    run_parent(libs, args.reps)


if __name__ == "__main__":
    main()
