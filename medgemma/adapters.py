"""LoRA adapters on top of the base model (``ADAPTERS``): found, checked once at start-up, chosen per job.

Each adapter's files come from where the model's do (``medgemma.sources.resolve_repo``: a local
directory, else a cached snapshot, baked, in RunPod's cache or on the network volume, else the
hub). Before any engine loads it, it is checked against the base model's layers (``ModelModules``,
which an engine builds without loading weights), so a mismatch stops the worker with one line naming the adapter and the problem:

- it is a plain LoRA: the PEFT features neither engine serves (vLLM refuses them: DoRA, biases,
  ``modules_to_save``, ...) are refused on both, so both engines serve the same adapters;
- it was trained on this model (``base_model_name_or_path``, by name: a local copy of
  ``google/medgemma-1.5-4b-it`` named ``medgemma-1.5-4b-it`` counts);
- its target modules are linear layers of this model, of the language model only (vLLM
  serves LoRA on Gemma 3's decoder only), and its weights' shapes fit them;
- its rank is at most ``MAX_LORA_RANK`` (what the engines reserve room for).

Only ``adapter_model.safetensors`` is read: a pickled ``adapter_model.bin`` can run code.
Nothing heavy is imported here: the safetensors header is JSON, read with the standard library.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medgemma.errors import SettingsError
from medgemma.model_access import model_access_errors
from medgemma.provenance import revision
from medgemma.settings import AdapterSpec, Settings
from medgemma.sources import ModelSource, resolve_repo

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS)
#: What PEFT's keys start with, before the base model's module name.
PEFT_PREFIX = "base_model.model."
#: PEFT features that change what an adapter computes and that neither engine serves (vLLM's list).
UNSERVED_FEATURES = {
    "use_dora": "DoRA",
    "lora_bias": "LoRA biases",
    "layer_replication": "layer replication",
    "alora_invocation_tokens": "activated LoRA (aLoRA)",
    "use_qalora": "QALoRA",
    "use_bdlora": "block-diagonal LoRA",
}
#: String values of init_lora_weights that only set the initial weights (the others rewrite the base model's).
PLAIN_INITS = frozenset({"gaussian", "eva", "orthogonal", "mica", "lora_ga"})
_LORA_KEY = re.compile(r"(?P<module>.+)\.lora_(?P<matrix>[AB])\.weight")
_MAX_HEADER_BYTES = 100 * 2**20


class AdapterProblem(Exception):
    """Why one adapter can't be served; becomes a SettingsError naming the adapter."""


@dataclass(frozen=True)
class ModelModules:
    """The base model's linear layers as PEFT names them (``model.language_model.layers.0.self_attn.q_proj``)."""

    linear: Mapping[str, tuple[int, int]]  # name -> (in_features, out_features)
    language_model: str  # the decoder's module prefix: adapters may adapt layers under it only


@dataclass(frozen=True)
class Adapter:
    """One adapter, checked and ready for an engine to load."""

    name: str  # what jobs choose it by
    source: str  # as configured: a hub id or a directory
    path: str  # the local directory holding its files
    revision: str  # the hub commit, or a hash of its two files
    rank: int  # its largest rank
    layers: int  # how many of the model's layers it adapts


def resolve_adapters(settings: Settings, base: ModelSource, modules: ModelModules) -> tuple[Adapter, ...]:
    """Fetch and check every ``ADAPTERS`` entry; SettingsError (or ModelAccessError) for the first bad one."""
    served = served_names(settings, base)
    adapters = []
    for spec in settings.adapters:
        path = fetch(spec, settings)
        try:
            config = read_config(path)
            shapes = safetensors_shapes(path / ADAPTER_WEIGHTS)
            check_config(config, served)
            rank, layers = check_weights(config, shapes, modules, settings.max_lora_rank)
        except AdapterProblem as problem:
            raise SettingsError(f"ADAPTERS: adapter {spec.name!r} ({spec.source}) {problem}") from None
        source = ModelSource(str(path), spec.source, local_only=True)
        adapters.append(Adapter(spec.name, spec.source, str(path), revision(source, ADAPTER_FILES), rank, layers))
    return tuple(adapters)


def fetch(spec: AdapterSpec, settings: Settings) -> Path:
    """The adapter's local directory: as configured, a cached snapshot (in the model's order), or a download."""
    source = resolve_repo(spec.source, settings, complete=has_adapter_files)
    if Path(source.location).is_dir():
        return Path(source.location)
    from huggingface_hub import snapshot_download

    with model_access_errors(source, subject=f"ADAPTERS: adapter {spec.name!r} ({spec.source})"):
        return Path(snapshot_download(spec.source, allow_patterns=list(ADAPTER_FILES), **source.hub_kwargs()))


def has_adapter_files(snapshot: Path) -> bool:
    """A usable cached copy of an adapter: both of its files."""
    return all((snapshot / name).is_file() for name in ADAPTER_FILES)


def read_config(path: Path) -> dict[str, Any]:
    config_path, weights = path / ADAPTER_CONFIG, path / ADAPTER_WEIGHTS
    if not config_path.is_file():
        raise AdapterProblem(f"has no {ADAPTER_CONFIG}; point it at the directory PEFT's save_pretrained wrote")
    if not weights.is_file():
        pickled = " (only adapter_model.bin, a pickle, which is never loaded: save with safetensors)"
        raise AdapterProblem(f"has no {ADAPTER_WEIGHTS}{pickled if (path / 'adapter_model.bin').is_file() else ''}")
    try:
        config = json.loads(config_path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise AdapterProblem(f"has an {ADAPTER_CONFIG} that is not JSON") from None
    if not isinstance(config, dict):
        raise AdapterProblem(f"has an {ADAPTER_CONFIG} that is not a JSON object")
    return config


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape, from the file's JSON header (8-byte length, then the header)."""
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > _MAX_HEADER_BYTES:
                raise ValueError("header too large")
            header = json.loads(handle.read(length))
        return {name: tuple(entry["shape"]) for name, entry in header.items() if name != "__metadata__"}
    except (OSError, ValueError, struct.error, KeyError, TypeError, AttributeError):
        raise AdapterProblem(f"has an {ADAPTER_WEIGHTS} that is not a readable safetensors file") from None


def served_names(settings: Settings, base: ModelSource) -> set[str]:
    """The names the served model goes by: what MODEL_ID says, and where it was loaded from."""
    return {name for name in (settings.model_id, base.location) if name}


def check_config(config: dict[str, Any], served: Collection[str]) -> None:
    """A plain LoRA, trained on the served model."""
    kind = config.get("peft_type")
    if kind != "LORA":
        raise AdapterProblem(f"is a {kind or 'non-PEFT'} adapter; only LoRA adapters are served")
    unserved = [label for key, label in UNSERVED_FEATURES.items() if config.get(key)]
    if config.get("bias", "none") != "none":
        unserved.append(f"bias={config['bias']!r}")
    if config.get("modules_to_save"):
        unserved.append(f"modules_to_save={config['modules_to_save']}")
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower() not in PLAIN_INITS:
        unserved.append(f"init_lora_weights={init!r} (it rewrites the base model's weights)")
    if unserved:
        raise AdapterProblem(
            f"uses {', '.join(unserved)}, which neither engine serves; train a plain LoRA on the linear layers"
        )
    base = config.get("base_model_name_or_path")
    if base and not same_model(base, served):
        served_name = sorted(served)[0]
        raise AdapterProblem(
            f"was trained on {base!r}, not on the model this worker serves ({served_name}); serve it with its own "
            f"base model, or, if {base!r} is a copy of this model, set base_model_name_or_path to {served_name!r} "
            f"in its {ADAPTER_CONFIG}"
        )


def same_model(base: str, served: Collection[str]) -> bool:
    """Whether an adapter's base names the served model: the same id or path, or the same model name."""
    return base in served or _model_name(base) in {_model_name(name) for name in served}


def _model_name(name: str) -> str:
    """``google/medgemma-1.5-4b-it``, ``/models/medgemma-1.5-4b-it`` and its hub cache snapshot -> ``medgemma-1.5-4b-it``."""
    cached = re.search(r"models--[^/]+--([^/]+)/snapshots/", name)
    return (cached.group(1) if cached else name.rstrip("/").rsplit("/", 1)[-1]).lower()


def check_weights(
    config: dict[str, Any], shapes: Mapping[str, tuple[int, ...]], modules: ModelModules, max_rank: int
) -> tuple[int, int]:
    """(largest rank, layers adapted) if the weights fit the model's language model; else AdapterProblem."""
    _check_targets(config.get("target_modules"), modules)
    matrices: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, shape in shapes.items():
        match = _LORA_KEY.fullmatch(key.removeprefix(PEFT_PREFIX)) if key.startswith(PEFT_PREFIX) else None
        if match is None:
            raise AdapterProblem(
                f"holds {key!r}, which is not a LoRA matrix; only plain LoRA on linear layers is served"
            )
        matrices.setdefault(match["module"], {})[match["matrix"]] = shape
    if not matrices:
        raise AdapterProblem("holds no LoRA weights")
    outside = sorted(name for name in matrices if not name.startswith(modules.language_model + "."))
    missing = [name for name in outside if name not in modules.linear]
    if missing:
        raise AdapterProblem(
            f"adapts {_some(missing)}, which this model does not have: it was trained on another model"
        )
    if outside:
        raise AdapterProblem(
            f"adapts {_some(outside)}, outside the language model ({modules.language_model}); only its layers take "
            "adapters (vLLM serves LoRA on Gemma 3's decoder only): train with target_modules limited to it"
        )
    rank = 0
    for name, pair in sorted(matrices.items()):
        if name not in modules.linear:
            raise AdapterProblem(
                f"adapts {name}, which is not a linear layer of this model: it was trained on another model"
            )
        in_features, out_features = modules.linear[name]
        a, b = pair.get("A"), pair.get("B")
        if a is None or b is None or len(a) != 2 or len(b) != 2 or a[0] != b[1]:
            raise AdapterProblem(f"has malformed LoRA matrices for {name} (A {a}, B {b})")
        if a[1] != in_features or b[0] != out_features:
            raise AdapterProblem(
                f"does not fit {name}: its LoRA maps {a[1]} -> {b[0]} features, the layer {in_features} -> "
                f"{out_features}; it was trained on another model"
            )
        rank = max(rank, a[0])
    if rank > max_rank:
        raise AdapterProblem(
            f"has rank {rank}, over MAX_LORA_RANK={max_rank} (the rank the engines reserve room for); "
            f"set MAX_LORA_RANK={rank} or more"
        )
    return rank, len(matrices)


def _check_targets(targets: Any, modules: ModelModules) -> None:
    """Every name in ``target_modules`` is a linear layer of the model (PEFT skips the ones that aren't)."""
    if targets is None or targets == "all-linear":
        return
    if isinstance(targets, str):
        if not any(re.fullmatch(targets, name) for name in modules.linear):
            raise AdapterProblem(f"targets {targets!r}, which matches no linear layer of this model")
        return
    absent = [
        target
        for target in targets
        if not any(name == target or name.endswith("." + target) for name in modules.linear)
    ]
    if absent:
        raise AdapterProblem(
            f"targets {_some(absent)}, which this model has no linear layers named; it was trained on another model"
        )


def _some(names: list[str], shown: int = 3) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
