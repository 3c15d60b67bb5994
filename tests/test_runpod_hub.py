""".runpod/hub.json and .runpod/tests.json, checked against what RunPod documents and what the worker reads.

The fields are those of RunPod's Hub publishing guide (docs.runpod.io/hub/publishing-guide):
an unknown field, type or category is an error here, so a typo can't silently drop a setting
from the Hub's form. Then each file is held to the worker: every input is a setting the worker
reads, every default is the image's own, every preset and option parses with the worker's
``Settings``, and every test job passes the worker's own validation on the stand-in, with no
Hugging Face token.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

from test_builder import instructions

from medgemma import openai_api
from medgemma.errors import SettingsError
from medgemma.request import parse_job_input
from medgemma.settings import DEVICES, DTYPES, ENGINES, QUANTIZATIONS, Settings

REPO = Path(__file__).resolve().parent.parent
HUB = json.loads((REPO / ".runpod" / "hub.json").read_text())
TESTS = json.loads((REPO / ".runpod" / "tests.json").read_text())

# RunPod's documented fields: (required, optional).
HUB_FIELDS = ({"title", "description", "type", "category", "config"}, {"iconUrl"})
CATEGORIES = {"audio", "embedding", "language", "video", "image"}
CONFIG_FIELDS = (
    {"runsOn", "containerDiskInGb"},
    {"cpuFlavor", "gpuCount", "gpuIds", "allowedCudaVersions", "env", "presets"},
)
INPUT_FIELDS = (
    {"name", "type"},
    {"description", "default", "advanced", "options", "min", "max", "trueValue", "falseValue"},
)
INPUT_TYPES = {"string", "number", "boolean", "huggingface"}
TEST_FIELDS = ({"name", "input"}, {"timeout"})
TEST_CONFIG_FIELDS = (set(), {"gpuTypeId", "gpuCount", "cpuFlavor", "env", "allowedCudaVersions"})
CUDA_VERSION = re.compile(r"^\d+\.\d+$")
GPU_POOL_OR_ID = re.compile(r"^-?[A-Z0-9][A-Za-z0-9_ -]+$")

# Read by a library, not by medgemma/: the hub client reads HF_TOKEN from the environment.
READ_ELSEWHERE = {"HF_TOKEN"}


def image_env() -> dict[str, str]:
    """The environment the default image (the Dockerfile's worker stage) gives the worker."""
    env: dict[str, str] = {}
    for keyword, rest in instructions():
        if keyword == "FROM" and rest.startswith("worker "):
            break
        if keyword == "ENV":
            env.update(re.findall(r"(\w+)=(\S+)", rest))
    return env


def check_fields(where: str, obj: Any, fields: tuple[set[str], set[str]]) -> None:
    required, optional = fields
    assert isinstance(obj, dict), f"{where} must be an object"
    assert required <= set(obj), f"{where} lacks {sorted(required - set(obj))}"
    assert set(obj) <= required | optional, (
        f"{where}: fields RunPod does not document: {sorted(set(obj) - required - optional)}"
    )


def check_cuda_versions(where: str, versions: Any) -> None:
    assert isinstance(versions, list) and versions, f"{where}.allowedCudaVersions must be a non-empty list"
    assert all(isinstance(v, str) and CUDA_VERSION.match(v) for v in versions), versions


def env_inputs() -> dict[str, dict[str, Any]]:
    return {entry["key"]: entry["input"] for entry in HUB["config"]["env"] if "input" in entry}


def as_env_value(value: Any, spec: dict[str, Any]) -> str:
    """What the Hub puts in the environment for a form value."""
    if spec["type"] == "boolean":
        return spec["trueValue"] if value else spec["falseValue"]
    return str(value)


def names_the_worker_reads() -> set[str]:
    """Every upper-case string constant in medgemma/: the environment variables it can read."""
    names = set()
    for path in (REPO / "medgemma").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if re.fullmatch(r"[A-Z][A-Z0-9]*(_[A-Z0-9]+)+|[A-Z]{4,}", node.value):
                    names.add(node.value)
    return names


def worker_accepts(key: str, value: str) -> bool:
    try:
        Settings.from_env({**image_env(), key: value})
    except SettingsError:
        return False
    return True


# ---- the documented fields ---------------------------------------------------------------


def test_hub_json_has_the_documented_fields_and_values() -> None:
    check_fields("hub.json", HUB, HUB_FIELDS)
    assert HUB["type"] == "serverless"
    assert HUB["category"] in CATEGORIES
    assert all(isinstance(HUB[field], str) and HUB[field].strip() for field in ("title", "description"))
    config = HUB["config"]
    check_fields("hub.json config", config, CONFIG_FIELDS)
    assert config["runsOn"] in ("GPU", "CPU")
    assert isinstance(config["containerDiskInGb"], int) and config["containerDiskInGb"] > 0
    if config["runsOn"] == "GPU":
        assert isinstance(config["gpuCount"], int) and config["gpuCount"] >= 1
        assert all(GPU_POOL_OR_ID.match(part) for part in config["gpuIds"].split(",")), config["gpuIds"]
    else:
        assert isinstance(config["cpuFlavor"], str)
    check_cuda_versions("hub.json config", config["allowedCudaVersions"])


def test_every_env_entry_is_a_static_value_or_a_typed_input() -> None:
    keys = [entry["key"] for entry in HUB["config"]["env"]]
    assert len(keys) == len(set(keys)), "an env key is listed twice"
    for entry in HUB["config"]["env"]:
        key = entry["key"]
        assert set(entry) in ({"key", "value"}, {"key", "input"}), f"{key}: an entry has a value or an input"
        if "value" in entry:
            continue
        spec = entry["input"]
        check_fields(f"{key}.input", spec, INPUT_FIELDS)
        assert spec["type"] in INPUT_TYPES, f"{key}: type {spec['type']!r}"
        assert isinstance(spec.get("advanced", False), bool)
        assert spec.get("description", "x").strip(), f"{key}: empty description"
        if "options" in spec:
            assert spec["type"] == "string", f"{key}: options are a string input's"
            values = [option["value"] for option in spec["options"]]
            assert all(set(option) == {"label", "value"} for option in spec["options"]), key
            assert len(values) == len(set(values)), f"{key}: an option is listed twice"
            assert "default" not in spec or spec["default"] in values, f"{key}: the default is not an option"
        if spec["type"] == "number":
            assert spec["min"] <= spec.get("default", spec["min"]) <= spec["max"], key
        else:
            assert "min" not in spec and "max" not in spec, f"{key}: min/max are a number input's"
        if spec["type"] == "boolean":
            assert isinstance(spec["default"], bool), key
            assert isinstance(spec["trueValue"], str) and isinstance(spec["falseValue"], str), key
        else:
            assert "trueValue" not in spec and "falseValue" not in spec, f"{key}: true/falseValue are a boolean's"


def test_presets_set_only_inputs_to_valid_values() -> None:
    inputs = env_inputs()
    presets = HUB["config"]["presets"]
    engines = set()
    assert presets
    for preset in presets:
        assert set(preset) == {"name", "defaults"} and preset["name"].strip(), preset
        for key, value in preset["defaults"].items():
            assert key in inputs, f"preset {preset['name']!r} sets {key}, which is not an input"
            spec = inputs[key]
            if "options" in spec:
                assert value in [option["value"] for option in spec["options"]], (preset["name"], key, value)
            elif spec["type"] == "number":
                assert isinstance(value, int | float) and spec["min"] <= value <= spec["max"], (preset["name"], key)
            elif spec["type"] == "boolean":
                assert isinstance(value, bool), (preset["name"], key)
        engines.add(preset["defaults"].get("ENGINE"))
    assert {"vllm", "transformers"} <= engines, "a preset for each engine"


def test_tests_json_has_the_documented_fields() -> None:
    check_fields("tests.json", TESTS, ({"tests"}, {"config"}))
    names = [test["name"] for test in TESTS["tests"]]
    assert names and len(names) == len(set(names))
    for test in TESTS["tests"]:
        check_fields(f"test {test.get('name')}", test, TEST_FIELDS)
        assert isinstance(test["input"], dict)
        assert isinstance(test.get("timeout", 1), int) and test.get("timeout", 1) > 0
    config = TESTS["config"]
    check_fields("tests.json config", config, TEST_CONFIG_FIELDS)
    if HUB["config"]["runsOn"] == "GPU":
        assert isinstance(config["gpuTypeId"], str) and isinstance(config["gpuCount"], int)
    for entry in config.get("env", []):
        assert set(entry) == {"key", "value"} and isinstance(entry["value"], str), entry
    check_cuda_versions("tests.json config", config["allowedCudaVersions"])


# ---- what the worker reads -------------------------------------------------------------------


def test_every_input_is_a_setting_the_worker_reads() -> None:
    read = names_the_worker_reads()
    assert {"MODEL_ID", "QUANTIZATION", "MAX_NEW_TOKENS"} <= read
    for key in env_inputs():
        assert key in read | READ_ELSEWHERE, f"{key} is not a setting of this worker"


def test_choices_match_the_worker_and_defaults_are_the_images() -> None:
    inputs = env_inputs()
    offered = {key: {option["value"] for option in spec.get("options", [])} for key, spec in inputs.items()}
    assert offered["QUANTIZATION"] == set(QUANTIZATIONS) and offered["ENGINE"] == set(ENGINES)
    assert offered["DTYPE"] == {"auto", *DTYPES} and offered["DEVICE"] == set(DEVICES)
    image = Settings.from_env(image_env())
    for key, spec in inputs.items():
        for value in offered[key]:
            assert worker_accepts(key, value), f"the worker refuses {key}={value}"
        if "default" in spec:
            chosen = Settings.from_env({**image_env(), key: as_env_value(spec["default"], spec)})
            assert chosen == image, f"{key}'s default {spec['default']!r} is not the image's"


def test_every_preset_is_a_valid_worker_configuration() -> None:
    inputs = env_inputs()
    for preset in HUB["config"]["presets"]:
        env = {key: as_env_value(value, inputs[key]) for key, value in preset["defaults"].items()}
        settings = Settings.from_env({**image_env(), **env})
        assert settings.engine == preset["defaults"]["ENGINE"]


def test_hub_tests_run_the_standin_without_a_token() -> None:
    env = {entry["key"]: entry["value"] for entry in TESTS["config"]["env"]}
    assert not [key for key in env if re.search(r"TOKEN\b|SECRET|API_?KEY", key)], "Hub tests run without a token"
    settings = Settings.from_env({**image_env(), **env})
    assert settings.uses_standin, "MODEL_ID must be standin in the Hub tests: the stand-in needs no token"
    assert settings.engine == "vllm" and settings.dummy_image, "the Hub tests serve the image's default path"
    routes = []
    for test in TESTS["tests"]:
        if openai_api.is_openai_job({"input": test["input"]}):
            routes.append(test["input"]["openai_route"])
            assert test["input"]["openai_input"]["model"] in openai_api.model_aliases(settings)
        else:
            request = parse_job_input(test["input"], settings, job_id=test["name"])
            routes.append("text" if request.used_dummy_image else "image")
    assert sorted(routes) == ["/v1/chat/completions", "image", "text"]
