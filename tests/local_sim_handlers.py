"""Model-free handlers for the runpod SDK's local API server (what ``--rp_serve_api`` serves).

They let the client's local mode be tested against the real simulator routes
(POST /status and /stream that run the job, no /cancel or /health) without
loading MedGemma. Output follows the worker's job contract; the generator
variant mirrors the worker with ``STREAMING=true``.
"""

from __future__ import annotations

import hashlib

META = {
    "mode": "summarize",
    "model": "local-sim",
    "run_mode": "local-sim",
    "finish_reason": "stop",
    "used_dummy_image": False,
    "timings": {},
}


def answer_for(text: str) -> str:
    return f"Local summary {hashlib.sha256(text.encode()).hexdigest()[:12]} ({len(text)} chars)."


def _outcome(job_input: dict) -> tuple[str | None, dict]:
    text = str(job_input.get("text") or "")
    if not text.strip():
        return "Field 'text' is empty and no 'image' was given.", {}
    answer = answer_for(text)
    usage = {"prompt_tokens": len(text) // 4 or 1, "completion_tokens": len(answer.split())}
    return None, {**META, "mode": job_input.get("mode", "summarize"), "usage": usage, "output": answer}


def handler(job: dict) -> dict:
    error, output = _outcome(job["input"])
    return {"error": error} if error else output


def streaming_handler(job: dict):
    error, output = _outcome(job["input"])
    if error:
        yield {"error": error}
        return
    if not job["input"].get("stream"):
        yield output
        return
    answer = output.pop("output")
    for index, word in enumerate(answer.split(" ")):
        yield {"delta": word if index == 0 else " " + word}
    yield {"delta": "", "done": True, **output}
