"""OpenAI-compatible chat completions, as RunPod's ``/openai/v1`` route delivers them.

RunPod turns ``https://api.runpod.ai/v2/<endpoint_id>/openai/v1/<path>`` into a job whose
input is ``{"openai_route": "/v1/<path>", "openai_input": <the request body>}`` (a GET such
as ``/v1/models`` has no body, or an empty one), as runpod-workers/worker-vllm reads it.
RunPod returns what the job yields: a whole answer is one JSON object; a streamed one is
Server-Sent Events text (``data: {chunk}\\n\\n`` ... ``data: [DONE]\\n\\n``), yielded as
strings, which RunPod passes on as they come.

The ``model`` field names the base model (its id or an alias) or one of the worker's LoRA
adapters (``ADAPTERS``) by name, as vLLM exposes LoRA modules as models; ``/v1/models``
lists the base model and then each adapter, its ``parent`` the base model's id.

A chat completion is a native ``messages`` job: this module translates the request into the
native input, the worker's one job path validates, generates and shapes it, and
``ChatCompletions`` turns the native answer into OpenAI's objects. Parameters the worker
can't honour are refused with an OpenAI error object naming them, never ignored. Failures
carry a top-level ``error`` (OpenAI's error body), so RunPod marks such jobs FAILED.

``response_format`` maps onto the native JSON jobs (``medgemma.structured``): ``json_object``
is ``format: json`` in general mode (any one object), ``json_schema`` is ``json_schema`` with
the caller's schema, enforced by the grammar whatever ``strict`` says; the message content is
the JSON text.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from medgemma.errors import FieldPath, InputError, MedGemmaError, shown
from medgemma.request import GenerationRequest
from medgemma.settings import Settings

if TYPE_CHECKING:
    from medgemma.worker import Worker

CHAT_ROUTE = "/v1/chat/completions"
MODELS_ROUTE = "/v1/models"
#: The model id of the embedded stand-in (MODEL_ID unset).
STANDIN_MODEL_ID = "medgemma-standin"
#: Accepted as ``model`` whatever is served.
GENERIC_ALIAS = "medgemma"
OWNER = "medgemma-runpod"
STARTED = int(time.time())

#: OpenAI's parameter -> the native field it becomes.
PASSED_ON = {
    "messages": "messages",
    "max_tokens": "max_new_tokens",
    "max_completion_tokens": "max_new_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "stop": "stop",
    "stream": "stream",
}
HANDLED_HERE = frozenset({"model", "n", "stream_options", "response_format"})
#: Parameters accepted at the value that means "as without it".
NEUTRAL = {
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "logprobs": False,
    "top_logprobs": 0,
    "logit_bias": {},
    "modalities": ["text"],
    "store": False,
}
#: Known OpenAI parameters this worker can't honour, and why.
UNSUPPORTED = {
    "tools": "tool calling is not supported",
    "tool_choice": "tool calling is not supported",
    "parallel_tool_calls": "tool calling is not supported",
    "functions": "function calling is not supported",
    "function_call": "function calling is not supported",
    "logprobs": "log probabilities are not returned; only false is supported",
    "top_logprobs": "log probabilities are not returned; only 0 is supported",
    "logit_bias": "logit bias is not supported; only {} is",
    "presence_penalty": "penalties are not supported; only 0 is",
    "frequency_penalty": "penalties are not supported; only 0 is",
    "audio": "audio output is not supported",
    "modalities": 'only ["text"] is supported',
    "prediction": "predicted outputs are not supported",
    "reasoning_effort": "reasoning effort can't be set for this model",
    "web_search_options": "web search is not supported",
    "service_tier": "service tiers are not supported",
    "store": "stored completions are not supported; only false is",
    "metadata": "stored completions (and their metadata) are not supported",
    "user": "end-user ids are not supported",
    "safety_identifier": "safety identifiers are not supported",
    "prompt_cache_key": "prompt caching keys are not supported",
    "verbosity": "verbosity can't be set for this model",
}

RESPONSE_FORMATS = ("text", "json_object", "json_schema")
#: What ``response_format.json_schema`` may hold (OpenAI's fields), and the form of its name.
JSON_SCHEMA_FIELDS = frozenset({"name", "schema", "strict", "description"})
SCHEMA_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
SCHEMA_PARAM = "response_format.json_schema.schema"
#: The request body's top: a reply names its parameters bare, the log as ``body.<...>``.
BODY = FieldPath("", "body")


class OpenAIError(InputError):
    """A request OpenAI's API would refuse: ``code`` and HTTP-style ``kind`` go into the error object.

    ``param`` and ``quoted`` are as InputError's ``field`` and ``quoted``; the error object's
    param is the reply's form of it.
    """

    def __init__(
        self,
        param: str | FieldPath | None,
        problem: str,
        code: str | None = None,
        kind: str = "invalid_request_error",
        **quoted: object,
    ):
        super().__init__(param or "request", problem, **quoted)
        self.param, self.code, self.kind = (self.field if param else None), code, kind


def is_openai_job(job: dict[str, Any]) -> bool:
    """Whether RunPod delivered this job from the ``/openai/v1/...`` route."""
    data = job.get("input")
    return isinstance(data, dict) and ("openai_route" in data or "openai_input" in data)


async def run(worker: Worker, job: dict[str, Any]) -> dict[str, Any]:
    """Answer one OpenAI request on the plain handler: one JSON object."""
    route = _route(job)
    if route != CHAT_ROUTE:
        return _not_chat(worker, route)
    answer: dict[str, Any] = await worker.run(job, ChatCompletions(worker))
    return answer


async def run_stream(worker: Worker, job: dict[str, Any]) -> AsyncIterator[dict[str, Any] | str]:
    """Answer one OpenAI request on the generator handler: SSE text when it streams, else one object."""
    route = _route(job)
    if route != CHAT_ROUTE:
        yield _not_chat(worker, route)
        return
    async for item in worker.run_stream(job, ChatCompletions(worker)):
        yield item


def failure_output(native: dict[str, Any]) -> dict[str, Any]:
    """A native ``{"error": ...}`` (e.g. the worker could not start) as an OpenAI error."""
    output = error_body(native["error"], "server_error", None, None)
    if native.get("refresh_worker"):
        output["refresh_worker"] = True
    return output


def error_body(message: str, kind: str, param: str | None, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def served_model_id(settings: Settings) -> str:
    """The model id this worker answers to: SERVED_MODEL_NAME, or MODEL_ID's hub id or directory name."""
    if settings.served_model_name:
        return settings.served_model_name
    if settings.model_id is None:
        return STANDIN_MODEL_ID
    if settings.model_id.startswith(("/", ".", "~")):
        return settings.model_id.rstrip("/").rsplit("/", 1)[-1]
    return settings.model_id


def model_aliases(settings: Settings) -> frozenset[str]:
    """Every accepted ``model``: the served id, its name without the owner, and "medgemma"."""
    served = served_model_id(settings)
    return frozenset({served, served.rsplit("/", 1)[-1], GENERIC_ALIAS})


def model_object(settings: Settings) -> dict[str, Any]:
    return {"id": served_model_id(settings), "object": "model", "created": STARTED, "owned_by": OWNER}


def adapter_names(worker: Worker) -> list[str]:
    return [adapter.name for adapter in worker.engine.info.adapters]


def model_objects(worker: Worker) -> list[dict[str, Any]]:
    """The base model, then each adapter as a model of its own (vLLM's shape: ``root`` and ``parent``)."""
    base = model_object(worker.settings)
    return [base] + [
        {**base, "id": adapter.name, "root": adapter.source, "parent": base["id"]}
        for adapter in worker.engine.info.adapters
    ]


def _route(job: dict[str, Any]) -> str:
    route = job["input"].get("openai_route") or CHAT_ROUTE  # worker-vllm's default too
    return str(route).split("?", 1)[0].rstrip("/")


def _not_chat(worker: Worker, route: str) -> dict[str, Any]:
    """``/v1/models`` and ``/v1/models/<id>``; any other route is an error."""
    settings = worker.settings
    if route == MODELS_ROUTE:
        return {"object": "list", "data": model_objects(worker)}
    if route.startswith(MODELS_ROUTE + "/"):
        name = route[len(MODELS_ROUTE) + 1 :]
        if name in model_aliases(settings):
            return model_object(settings)
        adapters = {model["id"]: model for model in model_objects(worker)[1:]}
        if name in adapters:
            return adapters[name]
        error = _no_such_model(name, settings, list(adapters))
        return error_body(str(error), error.kind, error.param, error.code)
    return error_body(
        f"openai_route: {shown(route)} is not served; this worker serves {CHAT_ROUTE} and {MODELS_ROUTE}",
        "invalid_request_error",
        None,
        "unknown_route",
    )


def _no_such_model(name: object, settings: Settings, adapters: list[str]) -> OpenAIError:
    served = served_model_id(settings)
    others = ", ".join(sorted(model_aliases(settings) - {served}))
    with_adapters = f", and its adapters {', '.join(map(repr, adapters))}" if adapters else ""
    return OpenAIError(
        "model",
        f"the model {{got}} does not exist here; this worker serves {served!r} (also called {others}){with_adapters}",
        code="model_not_found",
        got=name,
    )


class ChatCompletions:
    """The OpenAI chat completions dialect of the worker's job path (``medgemma.worker.Dialect``), for one job."""

    def __init__(self, worker: Worker):
        self._settings = worker.settings
        self._adapters = adapter_names(worker)
        self._fingerprint = worker.engine.info.run_mode
        self._model = served_model_id(self._settings)
        self._created = int(time.time())
        self._id = f"chatcmpl-{uuid.uuid4().hex}"
        self._names: dict[str, str] = {}  # native field -> the OpenAI parameter the caller used
        self._include_usage = True
        self._role_sent = False

    # -- input ---------------------------------------------------------------

    def parse(self, worker: Worker, job: dict[str, Any]) -> GenerationRequest:
        job_id = str(job.get("id", "-"))
        self._id = f"chatcmpl-{job_id}" if job_id != "-" else self._id
        native = self._native_input(job["input"].get("openai_input"))
        request = worker.validate({"id": job_id, "input": native}, mode_prompts=False)
        return replace(request, mode="openai")

    def _native_input(self, body: object) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise OpenAIError(None, f"the request body must be a JSON object, got {type(body).__name__}")
        native: dict[str, Any] = {}
        for name, value in body.items():
            if value is None:  # JSON null: as if not given
                continue
            if name in PASSED_ON:
                field = PASSED_ON[name]
                if field in native:
                    raise OpenAIError(name, f"give {self._names[field]} or {name}, not both")
                native[field], self._names[field] = value, name
            elif name in NEUTRAL and _neutral(NEUTRAL[name], value):
                continue
            elif name in UNSUPPORTED:
                raise OpenAIError(name, f"{UNSUPPORTED[name]}", code="unsupported_parameter")
            elif name not in HANDLED_HERE:
                raise OpenAIError(
                    BODY.named(name, "unknown parameter"),
                    "is not a chat completions parameter this worker knows",
                    code="unknown_parameter",
                )
        if "messages" not in native:
            raise OpenAIError("messages", "is required")
        model = body.get("model")
        if model in self._adapters and model not in model_aliases(self._settings):
            native["adapter"], self._names["adapter"], self._model = model, "model", model
        elif model is not None and model not in model_aliases(self._settings):
            raise _no_such_model(model, self._settings, self._adapters)
        n = body.get("n")
        if n is not None and (isinstance(n, bool) or n != 1):
            raise OpenAIError("n", "only n=1 is supported: one answer per request", code="unsupported_value")
        self._stream_options(body.get("stream_options"), native.get("stream") is True)
        if body.get("response_format") is not None:
            native.update(self._response_format(body["response_format"]))
        return native

    def _response_format(self, value: object) -> dict[str, Any]:
        """``response_format`` as native fields: none for text, ``format``/``mode`` or ``json_schema`` for JSON."""
        if not isinstance(value, dict):
            raise OpenAIError("response_format", f"must be an object, got {type(value).__name__}")
        kind = value.get("type")
        if kind not in RESPONSE_FORMATS:
            raise OpenAIError(
                "response_format.type", f"must be one of {', '.join(RESPONSE_FORMATS)}, got {{got}}", got=kind
            )
        allowed = {"type", "json_schema"} if kind == "json_schema" else {"type"}
        extra = sorted(set(value) - allowed)
        if extra:
            raise OpenAIError(
                FieldPath.known("response_format").named(extra[0], "unknown field"),
                f"is not a field of the {kind} response format",
            )
        if kind == "text":
            return {}
        if kind == "json_object":
            self._names["format"] = "response_format"
            return {"format": "json", "mode": "general"}  # general mode: any one JSON object
        spec = value.get("json_schema")
        if not isinstance(spec, dict):
            raise OpenAIError("response_format.json_schema", "is required: an object with name and schema")
        unknown = sorted(set(spec) - JSON_SCHEMA_FIELDS)
        if unknown:
            raise OpenAIError(
                FieldPath.known("response_format.json_schema").named(unknown[0], "unknown field"),
                "is not a json_schema field",
            )
        name = spec.get("name")
        if not isinstance(name, str) or not SCHEMA_NAME.fullmatch(name):
            raise OpenAIError("response_format.json_schema.name", "is required: 1 to 64 of a-z, A-Z, 0-9, _ and -")
        if spec.get("description") is not None and not isinstance(spec["description"], str):
            raise OpenAIError("response_format.json_schema.description", "must be a string")
        if spec.get("strict") is not None and not isinstance(spec["strict"], bool):
            raise OpenAIError("response_format.json_schema.strict", "must be true or false")
        if spec.get("schema") is None:
            raise OpenAIError(SCHEMA_PARAM, "is required: the JSON Schema of the answer's object")
        self._names["json_schema"] = SCHEMA_PARAM
        return {"json_schema": spec["schema"]}  # enforced by the grammar whether or not strict is true

    def _stream_options(self, options: object, stream: bool) -> None:
        if options is None:
            return
        if not stream:
            raise OpenAIError("stream_options", "is only allowed when stream is true")
        if not isinstance(options, dict):
            raise OpenAIError("stream_options", f"must be an object, got {type(options).__name__}")
        extra = sorted(set(options) - {"include_usage"})
        if extra:
            raise OpenAIError(
                FieldPath.known("stream_options").named(extra[0], "unknown field"),
                "is not supported",
                code="unsupported_parameter",
            )
        include = options.get("include_usage")
        if include is not None and not isinstance(include, bool):
            raise OpenAIError("stream_options.include_usage", "must be true or false")
        self._include_usage = include is not False

    # -- output --------------------------------------------------------------

    def whole(self, request: GenerationRequest, output: dict[str, Any]) -> dict[str, Any]:
        return {
            **self._header("chat.completion"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": output["output"]},
                    "finish_reason": output["finish_reason"],
                    "logprobs": None,
                }
            ],
            "usage": _usage(output["usage"]),
        }

    def delta(self, request: GenerationRequest, text: str) -> str:
        return _event(self._chunk({"content": text}, None))

    def last(self, request: GenerationRequest, output: dict[str, Any]) -> str:
        chunk = self._chunk({}, output["finish_reason"])
        if self._include_usage:
            chunk["usage"] = _usage(output["usage"])
        return _event(chunk) + "data: [DONE]\n\n"

    def failed(self, error: MedGemmaError, failure: dict[str, Any]) -> dict[str, Any]:
        """OpenAI's error body; a native field in the message is renamed to the parameter the caller sent."""
        if isinstance(error, OpenAIError):
            param, code, kind = error.param, error.code, error.kind
            message = f"{param}: {error.problem}" if param else error.problem
        elif isinstance(error, InputError):
            param, code, kind = self._names.get(error.field, error.field), None, "invalid_request_error"
            message = f"{param}: {error.problem}"
        else:  # the worker or the machine failed, not the request
            param, code, kind, message = None, None, "server_error", str(error)
        output = error_body(message, kind, param, code)
        if failure.get("refresh_worker"):
            output["refresh_worker"] = True
        return output

    def _header(self, kind: str) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": kind,
            "created": self._created,
            "model": self._model,
            "system_fingerprint": self._fingerprint,
        }

    def _chunk(self, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        if not self._role_sent:
            delta, self._role_sent = {"role": "assistant", **delta}, True
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return {**self._header("chat.completion.chunk"), "choices": [choice]}


def _neutral(neutral: object, value: object) -> bool:
    """Whether ``value`` is the parameter's no-op value (0 and 0.0 alike; never true for 0)."""
    if isinstance(neutral, bool) or isinstance(value, bool):
        return value is neutral
    return value == neutral


def _usage(usage: dict[str, int]) -> dict[str, int]:
    prompt, completion = usage["prompt_tokens"], usage["completion_tokens"]
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _event(chunk: dict[str, Any]) -> str:
    return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
