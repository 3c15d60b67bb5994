"""Worker settings: a pure function of an environment mapping, parsed once at boot.

Every value is checked here so that a typo in an endpoint's environment fails the
worker at start-up with one clear sentence, instead of failing every job later.
No heavy imports: this module must import and test in milliseconds.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from medgemma.errors import SettingsError

QUANTIZATIONS = ("nf4", "int8", "fp8", "none")  # fp8: ENGINE=vllm only
ENGINES = ("transformers", "vllm", "auto")
DTYPES = ("bfloat16", "float32")
DEVICES = ("auto", "cpu", "cuda")
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off", ""})

DEFAULT_MAX_NEW_TOKENS = 512
DEFAULT_MAX_NEW_TOKENS_CAP = 2048
DEFAULT_MAX_INPUT_CHARS = 200_000
DEFAULT_MAX_IMAGES = 8
DEFAULT_MAX_IMAGE_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
#: A job's images together: two at the per-image cap (decoded RGB: 240 MB).
DEFAULT_MAX_JOB_PIXELS = 80_000_000
#: A conversation's size, empty parts counted: each part costs tokenizer calls before the model runs.
DEFAULT_MAX_MESSAGES = 256
DEFAULT_MAX_PARTS_PER_MESSAGE = 64
DEFAULT_MAX_PARTS = 512
#: A caller's JSON schema once its $refs are expanded: what both engines compile, per request.
DEFAULT_MAX_GRAMMAR_CHARS = 65_536
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")  # any case
DEFAULT_GPU_MEMORY_UTILIZATION = 0.90
#: vLLM on CPU: the KV cache in GiB (vLLM's own VLLM_CPU_KVCACHE_SPACE), instead of 90% of the RAM.
DEFAULT_CPU_KV_CACHE_GIB = 2
DEFAULT_MAX_BATCH_SIZE = 8
#: A typical job's prompt, in tokens, before its images: a 1,500-character note (about 410 tokens
#: at the 3.65 characters per token measured on raw/) and the summarize system prompt (95).
DEFAULT_TYPICAL_PROMPT_TOKENS = 512
DEFAULT_BATCH_WAIT_MS = 20
DEFAULT_STANDIN_SUBDIR = "medgemma-runpod"
DEFAULT_RUNPOD_VOLUME = "/runpod-volume"  # where RunPod mounts a network volume and its cached models
STANDIN_MODEL_ID = "standin"  # MODEL_ID=standin: the embedded stand-in, as when MODEL_ID is unset
DEFAULT_IMAGE_URL_TIMEOUT_S = 10.0
DEFAULT_IMAGE_URL_DEADLINE_S = 30.0
DEFAULT_IMAGE_URL_JOB_DEADLINE_S = 60.0
#: vLLM's default max_lora_rank; the LoRA memory both engines reserve grows with it.
DEFAULT_MAX_LORA_RANK = 16
#: The adapter name meaning "no adapter" in a job's ``adapter`` field.
BASE_ADAPTER = "base"
ADAPTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
ADAPTERS_SYNTAX = (
    "name=hub-id-or-directory, comma-separated (e.g. cardio=org/medgemma-cardio-lora,notes=/adapters/notes)"
)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

FLOAT16_REFUSAL = (
    "DTYPE=float16 is refused: Gemma 3 overflows in float16 (NaN logits, empty or "
    "pad-only answers), and the 4-bit compute dtype must be bfloat16 too; use "
    "bfloat16 (GPU) or float32 (CPU)"
)

STATIC_AND_COMPILE_REFUSAL = (
    "STATIC_CACHE=true and TORCH_COMPILE=true are exclusive: with a static KV cache "
    "transformers already compiles the decoding step of an unquantized model itself, "
    "so compiling model.forward on top compiles it twice; set only one of them"
)

ADAPTERS_AND_COMPILE_REFUSAL = (
    "ADAPTERS can't be combined with STATIC_CACHE=true or TORCH_COMPILE=true: each batch's choice of "
    "adapters per row changes the compiled graph; unset one of them"
)

T = TypeVar("T")
D = TypeVar("D")  # a default: the parsed type, or None for "unset"


@dataclass(frozen=True)
class AdapterSpec:
    """One ``ADAPTERS`` entry: the name jobs choose it by, and where its files are."""

    name: str
    source: str  # a hub id, or a local directory holding adapter_config.json


@dataclass(frozen=True)
class Settings:
    """Everything the worker reads from its environment, already validated."""

    model_id: str | None  # None: the embedded stand-in
    served_model_name: str | None  # the OpenAI route's model id; None: derived from model_id
    engine: str  # "transformers" | "vllm" | "auto" (vLLM when it is installed and CUDA is present)
    quantization: str | None  # None: nf4 on CUDA, none on CPU
    dtype: str | None  # None: bfloat16 on CUDA, float32 on CPU
    device: str
    max_new_tokens: int
    max_new_tokens_cap: int
    dummy_image: bool
    hf_home: str | None
    hf_hub_cache: Path  # HF_HOME's hub cache: where baked weights are found
    runpod_volume: Path  # RunPod's cached models and network volume are under it (medgemma.sources)
    offline: bool
    standin_cache: Path
    max_input_chars: int
    max_images: int
    max_image_bytes: int
    max_image_pixels: int
    max_concurrency: int | None  # None: the engine's own figure (ModelInfo.max_concurrency)
    typical_prompt_tokens: int  # sizes vLLM's MAX_CONCURRENCY default (Settings.typical_job_tokens)
    max_batch_size: int
    batch_wait_ms: int
    streaming: bool
    static_cache: bool
    torch_compile: bool
    # The vLLM engine's settings, named as in runpod-workers/worker-vllm.
    max_model_len: int | None  # None: the model's own context length
    gpu_memory_utilization: float
    enforce_eager: bool
    max_num_seqs: int | None  # None: vLLM's default
    num_gpu_blocks_override: int | None  # None: as many KV blocks as memory allows
    cpu_kv_cache_gib: int  # vLLM on CPU only: VLLM_CPU_KVCACHE_SPACE
    image_url_allow_http: bool
    image_url_ca_bundle: Path | None  # extra CA certificates (PEM) trusted for image fetches
    image_url_allow_addresses: tuple[IPNetwork, ...]  # exempt from the SSRF rules (tests)
    image_url_timeout_s: float  # connect, and each read
    image_url_deadline_s: float  # one whole fetch, redirects included
    image_url_job_deadline_s: float  # all of one job's fetches together
    max_job_pixels: int  # all of one job's images together
    max_messages: int
    max_parts_per_message: int
    max_parts: int  # all of a conversation's content parts, empty ones included
    max_grammar_chars: int  # a caller's schema, $refs expanded (JsonSpec.grammar)
    log_level: str  # one of LOG_LEVELS (logging wants it upper-case)
    adapters: tuple[AdapterSpec, ...] = ()  # PEFT LoRA adapters served on top of the model
    max_lora_rank: int = DEFAULT_MAX_LORA_RANK
    adapter_merge: bool = False  # the one adapter merged into the weights (transformers engine; no base model)

    def typical_job_tokens(self, image_tokens: int) -> int:
        """A typical job's tokens: its prompt, the dummy image when it is on (``image_tokens``), its answer."""
        return self.typical_prompt_tokens + (image_tokens if self.dummy_image else 0) + self.max_new_tokens

    @property
    def uses_standin(self) -> bool:
        return self.model_id is None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Parse and validate; raise SettingsError naming the variable on a bad value."""
        reader = EnvReader(env)
        quantization = reader.choice("QUANTIZATION", QUANTIZATIONS, default=None)
        legacy = reader.boolean("USE_QUANTIZATION", default=None)
        if quantization is None and legacy is not None:
            quantization = "nf4" if legacy else "none"
        dtype = reader.text("DTYPE", default="auto").lower()
        if dtype in ("float16", "fp16", "half"):
            raise SettingsError(FLOAT16_REFUSAL)
        if dtype not in DTYPES + ("auto",):
            raise SettingsError(f"DTYPE must be one of auto, {', '.join(DTYPES)}, got {dtype!r}")
        max_new_tokens = reader.integer("MAX_NEW_TOKENS", DEFAULT_MAX_NEW_TOKENS, minimum=1)
        cap = reader.integer("MAX_NEW_TOKENS_CAP", DEFAULT_MAX_NEW_TOKENS_CAP, minimum=1)
        if max_new_tokens > cap:
            raise SettingsError(f"MAX_NEW_TOKENS ({max_new_tokens}) must not exceed MAX_NEW_TOKENS_CAP ({cap})")
        static_cache = reader.boolean("STATIC_CACHE", default=False)
        torch_compile = reader.boolean("TORCH_COMPILE", default=False)
        if static_cache and torch_compile:
            raise SettingsError(STATIC_AND_COMPILE_REFUSAL)
        adapters = adapter_specs(env.get("ADAPTERS", ""))
        if adapters and (static_cache or torch_compile):
            raise SettingsError(ADAPTERS_AND_COMPILE_REFUSAL)
        adapter_merge = reader.boolean("ADAPTER_MERGE", default=False)
        if adapter_merge and len(adapters) != 1:
            raise SettingsError(
                f"ADAPTER_MERGE=true merges one adapter into the weights, but ADAPTERS names {len(adapters)}; "
                "name exactly one, or unset ADAPTER_MERGE to serve them side by side"
            )
        hf_home = env.get("HF_HOME") or None
        hf_root = Path(hf_home or Path.home() / ".cache" / "huggingface")
        return cls(
            model_id=resolve_model_id(env.get("MODEL_ID", "").strip() or None),
            served_model_name=env.get("SERVED_MODEL_NAME", "").strip() or None,
            engine=reader.choice("ENGINE", ENGINES, default="auto"),
            quantization=quantization,
            dtype=None if dtype == "auto" else dtype,
            device=reader.choice("DEVICE", DEVICES, default="auto"),
            max_new_tokens=max_new_tokens,
            max_new_tokens_cap=cap,
            dummy_image=reader.boolean("DUMMY_IMAGE", default=True),
            hf_home=hf_home,
            hf_hub_cache=Path(env.get("HF_HUB_CACHE") or hf_root / "hub"),
            runpod_volume=Path(reader.text("RUNPOD_VOLUME", DEFAULT_RUNPOD_VOLUME)),
            offline=reader.boolean("HF_HUB_OFFLINE", default=False),
            standin_cache=Path(env.get("STANDIN_CACHE") or hf_root / DEFAULT_STANDIN_SUBDIR),
            max_input_chars=reader.integer("MAX_INPUT_CHARS", DEFAULT_MAX_INPUT_CHARS, minimum=1),
            max_images=reader.integer("MAX_IMAGES", DEFAULT_MAX_IMAGES, minimum=1),
            max_image_bytes=reader.integer("MAX_IMAGE_BYTES", DEFAULT_MAX_IMAGE_BYTES, minimum=1),
            max_image_pixels=reader.integer("MAX_IMAGE_PIXELS", DEFAULT_MAX_IMAGE_PIXELS, minimum=1),
            max_concurrency=reader.optional_integer("MAX_CONCURRENCY", minimum=1),
            typical_prompt_tokens=reader.integer("TYPICAL_PROMPT_TOKENS", DEFAULT_TYPICAL_PROMPT_TOKENS, minimum=1),
            max_batch_size=reader.integer("MAX_BATCH_SIZE", DEFAULT_MAX_BATCH_SIZE, minimum=1),
            batch_wait_ms=reader.integer("BATCH_WAIT_MS", DEFAULT_BATCH_WAIT_MS, minimum=0),
            streaming=reader.boolean("STREAMING", default=False),
            static_cache=static_cache,
            torch_compile=torch_compile,
            max_model_len=reader.optional_integer("MAX_MODEL_LEN", minimum=1),
            gpu_memory_utilization=reader.number(
                "GPU_MEMORY_UTILIZATION", DEFAULT_GPU_MEMORY_UTILIZATION, low=0.05, high=1.0
            ),
            enforce_eager=reader.boolean("ENFORCE_EAGER", default=False),
            max_num_seqs=reader.optional_integer("MAX_NUM_SEQS", minimum=1),
            num_gpu_blocks_override=reader.optional_integer("NUM_GPU_BLOCKS_OVERRIDE", minimum=1),
            cpu_kv_cache_gib=reader.integer("VLLM_CPU_KVCACHE_SPACE", DEFAULT_CPU_KV_CACHE_GIB, minimum=1),
            image_url_allow_http=reader.boolean("IMAGE_URL_ALLOW_HTTP", default=False),
            image_url_ca_bundle=ca_bundle("IMAGE_URL_CA_BUNDLE", env.get("IMAGE_URL_CA_BUNDLE", "").strip()),
            image_url_allow_addresses=networks("IMAGE_URL_ALLOW_ADDRESSES", env.get("IMAGE_URL_ALLOW_ADDRESSES", "")),
            image_url_timeout_s=reader.number("IMAGE_URL_TIMEOUT_S", DEFAULT_IMAGE_URL_TIMEOUT_S, low=0.1, high=600),
            image_url_deadline_s=reader.number(
                "IMAGE_URL_DEADLINE_S", DEFAULT_IMAGE_URL_DEADLINE_S, low=0.1, high=3600
            ),
            image_url_job_deadline_s=reader.number(
                "IMAGE_URL_JOB_DEADLINE_S", DEFAULT_IMAGE_URL_JOB_DEADLINE_S, low=0.1, high=3600
            ),
            max_job_pixels=reader.integer("MAX_JOB_PIXELS", DEFAULT_MAX_JOB_PIXELS, minimum=1),
            max_messages=reader.integer("MAX_MESSAGES", DEFAULT_MAX_MESSAGES, minimum=1),
            max_parts_per_message=reader.integer("MAX_PARTS_PER_MESSAGE", DEFAULT_MAX_PARTS_PER_MESSAGE, minimum=1),
            max_parts=reader.integer("MAX_PARTS", DEFAULT_MAX_PARTS, minimum=1),
            max_grammar_chars=reader.integer("MAX_GRAMMAR_CHARS", DEFAULT_MAX_GRAMMAR_CHARS, minimum=1),
            log_level=reader.choice("LOG_LEVEL", LOG_LEVELS, default="info"),
            adapters=adapters,
            max_lora_rank=reader.integer("MAX_LORA_RANK", DEFAULT_MAX_LORA_RANK, minimum=1),
            adapter_merge=adapter_merge,
        )


def load_settings(env: Mapping[str, str] | None = None, dotenv_path: str | None = ".env") -> Settings:
    """Read ``.env`` (real environment variables win), then parse ``os.environ``."""
    if env is None:
        if dotenv_path and Path(dotenv_path).is_file():
            from dotenv import load_dotenv

            load_dotenv(dotenv_path, override=False)
        env = os.environ
    return Settings.from_env(env)


def resolve_model_id(model_id: str | None) -> str | None:
    """Return a hub id unchanged, or the directory that actually holds ``config.json``.

    None, or ``STANDIN_MODEL_ID`` (for environments that can't pass an empty value, such as
    an image whose MODEL_ID is preset), means the embedded stand-in.

    A download often nests the checkpoint one level down (``models/medgemma/<snapshot>/``);
    a directory with exactly one such child is followed into.
    """
    if model_id is None or model_id == STANDIN_MODEL_ID:
        return None
    path = Path(model_id).expanduser()
    looks_like_path = model_id.startswith(("/", ".", "~")) or path.exists()
    if not looks_like_path:
        return model_id
    if not path.is_dir():
        raise SettingsError(f"MODEL_ID {model_id!r} is not a directory (nor a hub id like google/medgemma-1.5-4b-it)")
    if (path / "config.json").is_file():
        return str(path)
    children = [child for child in path.iterdir() if (child / "config.json").is_file()]
    if len(children) == 1:
        return str(children[0])
    raise SettingsError(
        f"MODEL_ID {model_id!r} holds no config.json"
        + (f" and {len(children)} candidate subdirectories; point it at one" if children else "")
    )


def adapter_specs(raw: str) -> tuple[AdapterSpec, ...]:
    """``ADAPTERS``: ``name=source`` entries, comma-separated; a bare source is named after its last part.

    A source is a hub id or a local directory; one that looks like a path must be a directory.
    """
    specs: list[AdapterSpec] = []
    for entry in (part.strip() for part in raw.split(",")):
        if not entry:
            continue
        name, source = (part.strip() for part in (entry.split("=", 1) if "=" in entry else ("", entry)))
        if not source:
            raise SettingsError(f"ADAPTERS entry {entry!r} names no adapter; write {ADAPTERS_SYNTAX}")
        name = name or Path(source.rstrip("/")).name
        if name == BASE_ADAPTER:
            raise SettingsError(f"ADAPTERS entry {entry!r}: the name {BASE_ADAPTER!r} is reserved for the base model")
        if not ADAPTER_NAME.fullmatch(name):
            raise SettingsError(
                f"ADAPTERS entry {entry!r}: the name {name!r} must be 1-64 letters, digits, '.', '_' or '-'; "
                f"write {ADAPTERS_SYNTAX}"
            )
        if any(spec.name == name for spec in specs):
            raise SettingsError(f"ADAPTERS names {name!r} twice; give each adapter its own name")
        path = Path(source).expanduser()
        if (source.startswith(("/", ".", "~")) or path.exists()) and not path.is_dir():
            raise SettingsError(f"ADAPTERS entry {name!r}: {source!r} is not a directory (nor a hub id like org/name)")
        specs.append(AdapterSpec(name, str(path) if path.is_dir() else source))
    return tuple(specs)


def ca_bundle(name: str, raw: str) -> Path | None:
    """A PEM file of CA certificates, loaded once here so a bad path fails at boot."""
    if not raw:
        return None
    path = Path(raw).expanduser()
    if not path.is_file():
        raise SettingsError(f"{name} {raw!r} is not a file (it must be a PEM file of CA certificates)")
    try:
        ssl.create_default_context().load_verify_locations(cafile=str(path))
    except (ssl.SSLError, OSError, ValueError):
        raise SettingsError(f"{name} {raw!r} holds no readable PEM CA certificate") from None
    return path


def networks(name: str, raw: str) -> tuple[IPNetwork, ...]:
    """Comma-separated addresses or CIDR networks; host bits set (10.0.0.1/8) are a typo, refused."""
    parsed = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        try:
            parsed.append(ipaddress.ip_network(item, strict=True))
        except ValueError:
            raise SettingsError(f"{name} must be comma-separated IP addresses or networks, got {item!r}") from None
    return tuple(parsed)


class EnvReader:
    """Typed access to an env mapping; every failure names the variable."""

    def __init__(self, env: Mapping[str, str]):
        self._env = env

    def text(self, name: str, default: str) -> str:
        return self._env.get(name, "").strip() or default

    def _parse(self, name: str, default: D, parse: Callable[[str], T]) -> T | D:
        raw = self._env.get(name, "").strip()
        return default if raw == "" else parse(raw)

    def boolean(self, name: str, default: D) -> bool | D:
        def parse(raw: str) -> bool:
            word = raw.lower()
            if word in TRUE_WORDS:
                return True
            if word in FALSE_WORDS:
                return False
            raise SettingsError(f"{name} must be true or false, got {raw!r}")

        return self._parse(name, default, parse)

    def integer(self, name: str, default: int, minimum: int) -> int:
        def parse(raw: str) -> int:
            try:
                value = int(raw)
            except ValueError:
                raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
            if value < minimum:
                raise SettingsError(f"{name} must be at least {minimum}, got {value}")
            return value

        return self._parse(name, default, parse)

    def optional_integer(self, name: str, minimum: int) -> int | None:
        """An integer, or None when unset (the engine then decides)."""
        return self.integer(name, 0, minimum) if self._env.get(name, "").strip() else None

    def number(self, name: str, default: float, low: float, high: float) -> float:
        def parse(raw: str) -> float:
            try:
                value = float(raw)
            except ValueError:
                raise SettingsError(f"{name} must be a number, got {raw!r}") from None
            if not low <= value <= high:
                raise SettingsError(f"{name} must be between {low} and {high}, got {value}")
            return value

        return self._parse(name, default, parse)

    def choice(self, name: str, choices: tuple[str, ...], default: D) -> str | D:
        def parse(raw: str) -> str:
            if raw.lower() not in choices:
                raise SettingsError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
            return raw.lower()

        return self._parse(name, default, parse)
