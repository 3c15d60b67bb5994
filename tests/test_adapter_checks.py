"""ADAPTERS parses strictly, and every adapter is checked against the base model before it loads (no model here)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from medgemma.adapters import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    AdapterProblem,
    ModelModules,
    check_config,
    check_weights,
    read_config,
    safetensors_shapes,
    same_model,
)
from medgemma.errors import InputError, SettingsError
from medgemma.provenance import directory_hash, snapshot_commit
from medgemma.request import parse_job_input
from medgemma.settings import AdapterSpec, Settings

LM = "model.language_model"
MODULES = ModelModules(
    linear={
        f"{LM}.layers.0.self_attn.q_proj": (64, 128),
        f"{LM}.layers.0.self_attn.v_proj": (64, 32),
        "model.vision_tower.encoder.layers.0.self_attn.q_proj": (16, 16),
        "lm_head": (64, 1000),
    },
    language_model=LM,
)
SERVED = {"/cache/medgemma-standin-v1"}
LORA = {"peft_type": "LORA", "base_model_name_or_path": "/cache/medgemma-standin-v1", "target_modules": ["q_proj"]}


def lora(module: str, rank: int, in_features: int, out_features: int) -> dict[str, tuple[int, ...]]:
    key = f"base_model.model.{module}"
    return {f"{key}.lora_A.weight": (rank, in_features), f"{key}.lora_B.weight": (out_features, rank)}


Q = f"{LM}.layers.0.self_attn.q_proj"


# ---- ADAPTERS -------------------------------------------------------------------------------


def test_adapters_parse_names_and_sources(tmp_path):
    settings = Settings.from_env({"ADAPTERS": f"cardio=org/cardio-lora, org/notes-style ,local = {tmp_path}"})
    assert settings.adapters == (
        AdapterSpec("cardio", "org/cardio-lora"),
        AdapterSpec("notes-style", "org/notes-style"),
        AdapterSpec("local", str(tmp_path)),
    )
    assert Settings.from_env({}).adapters == ()
    assert Settings.from_env({}).max_lora_rank == 16


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("cardio=", "names no adapter"),
        ("base=org/x", "reserved for the base model"),
        ("a b=org/x", "must be 1-64 letters"),
        ("a=org/x,a=org/y", "names 'a' twice"),
        ("a=/no/such/dir", "is not a directory"),
    ],
)
def test_bad_adapters_fail_in_one_line_naming_the_variable(value, problem):
    with pytest.raises(SettingsError, match=problem) as caught:
        Settings.from_env({"ADAPTERS": value})
    assert "ADAPTERS" in str(caught.value) and "\n" not in str(caught.value)


def test_merging_takes_exactly_one_adapter():
    assert Settings.from_env({"ADAPTERS": "a=org/x", "ADAPTER_MERGE": "true"}).adapter_merge is True
    for adapters in ("", "a=org/x,b=org/y"):
        with pytest.raises(SettingsError, match="ADAPTER_MERGE=true merges one adapter"):
            Settings.from_env({"ADAPTERS": adapters, "ADAPTER_MERGE": "true"})


def test_adapters_refuse_compiled_graphs():
    for flag in ("STATIC_CACHE", "TORCH_COMPILE"):
        with pytest.raises(SettingsError, match="ADAPTERS can't be combined"):
            Settings.from_env({"ADAPTERS": "a=org/x", flag: "true"})


# ---- the job field --------------------------------------------------------------------------


def test_the_job_field_picks_an_adapter_or_the_base_model():
    settings = Settings.from_env({})

    def adapter(value):
        return parse_job_input({"text": "x", "adapter": value}, settings, adapters=["cardio"]).adapter

    assert adapter("cardio") == "cardio"
    assert adapter("base") is None and adapter(None) is None
    assert parse_job_input({"text": "x"}, settings, adapters=["cardio"]).adapter is None
    with pytest.raises(InputError, match=r"^adapter: unknown adapter 'nope' \(known: base, cardio\)$"):
        adapter("nope")
    with pytest.raises(InputError, match="adapter: must be a string"):
        adapter(3)
    with pytest.raises(InputError, match=r"known: base\)"):  # a worker without adapters
        parse_job_input({"text": "x", "adapter": "cardio"}, settings)


def test_on_a_merged_worker_its_adapter_answers_every_job():
    settings = Settings.from_env({})

    def adapter(**field):
        return parse_job_input({"text": "x", **field}, settings, adapters=["cardio"], merged=True).adapter

    assert adapter() == "cardio" and adapter(adapter="cardio") == "cardio"
    with pytest.raises(InputError, match="merged into its weights .*not the base model"):
        adapter(adapter="base")
    with pytest.raises(InputError, match="unknown adapter 'notes'"):
        adapter(adapter="notes")


# ---- the adapter's config -------------------------------------------------------------------


def test_a_plain_lora_for_the_served_model_passes():
    check_config(LORA, SERVED)
    check_config({**LORA, "base_model_name_or_path": None}, SERVED)  # nothing to compare


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"peft_type": "IA3"}, "is a IA3 adapter; only LoRA"),
        ({"use_dora": True}, "uses DoRA"),
        ({"bias": "all"}, "bias='all'"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save=\\['lm_head'\\]"),
        ({"init_lora_weights": "pissa"}, "rewrites the base model's weights"),
        ({"base_model_name_or_path": "google/gemma-3-270m-it"}, "was trained on 'google/gemma-3-270m-it'"),
    ],
)
def test_config_problems_are_named(change, problem):
    with pytest.raises(AdapterProblem, match=problem):
        check_config({**LORA, **change}, SERVED)


def test_a_base_model_is_recognised_by_id_path_or_name():
    served = {"google/medgemma-1.5-4b-it"}
    assert same_model("google/medgemma-1.5-4b-it", served)
    assert same_model("/content/models/medgemma-1.5-4b-it/", served)  # a local copy where it was trained
    assert same_model("/hf/hub/models--google--medgemma-1.5-4b-it/snapshots/" + "a" * 40, served)
    assert not same_model("google/medgemma-4b-it", served)  # MedGemma 1, another model
    assert not same_model("google/gemma-3-4b-it", served)


# ---- the adapter's weights against the model's layers ---------------------------------------


def test_weights_that_fit_the_language_model_pass_with_their_rank():
    shapes = {**lora(Q, 8, 64, 128), **lora(f"{LM}.layers.0.self_attn.v_proj", 4, 64, 32)}
    assert check_weights(LORA, shapes, MODULES, max_rank=16) == (8, 2)


@pytest.mark.parametrize(
    ("config", "shapes", "problem"),
    [
        ({"target_modules": ["q_proj", "wqkv"]}, lora(Q, 8, 64, 128), "targets wqkv, which this model has no"),
        ({"target_modules": ".*\\.attention\\.wq"}, lora(Q, 8, 64, 128), "matches no linear layer"),
        ({}, lora("model.layers.0.self_attn.q_proj", 8, 64, 128), "which this model does not have"),
        ({}, lora(Q, 8, 1152, 128), "its LoRA maps 1152 -> 128 features, the layer 64 -> 128"),
        ({}, lora("model.vision_tower.encoder.layers.0.self_attn.q_proj", 8, 16, 16), "outside the language model"),
        ({}, lora("lm_head", 8, 64, 1000), "outside the language model"),
        ({}, lora(Q, 32, 64, 128), r"has rank 32, over MAX_LORA_RANK=16 .*; set MAX_LORA_RANK=32 or more"),
        ({}, {f"base_model.model.{Q}.lora_A.weight": (8, 64)}, "malformed LoRA matrices"),
        ({}, {"base_model.model.lm_head.weight": (1000, 64)}, "not a LoRA matrix"),
        ({}, {}, "holds no LoRA weights"),
    ],
)
def test_weight_problems_are_named(config, shapes, problem):
    with pytest.raises(AdapterProblem, match=problem):
        check_weights({**LORA, **config}, shapes, MODULES, max_rank=16)


def test_the_files_are_read_without_torch(tmp_path):
    save_file({f"base_model.model.{Q}.lora_A.weight": np.zeros((8, 64), dtype=np.float32)}, tmp_path / ADAPTER_WEIGHTS)
    (tmp_path / ADAPTER_CONFIG).write_text(json.dumps(LORA))
    assert read_config(tmp_path) == LORA
    assert safetensors_shapes(tmp_path / ADAPTER_WEIGHTS) == {f"base_model.model.{Q}.lora_A.weight": (8, 64)}
    (tmp_path / ADAPTER_WEIGHTS).write_bytes(b"\xff" * 16)
    with pytest.raises(AdapterProblem, match="not a readable safetensors file"):
        safetensors_shapes(tmp_path / ADAPTER_WEIGHTS)
    (tmp_path / ADAPTER_WEIGHTS).unlink()
    (tmp_path / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(AdapterProblem, match="only adapter_model.bin, a pickle, which is never loaded"):
        read_config(tmp_path)


# ---- provenance -----------------------------------------------------------------------------


def test_a_directory_hash_follows_content_and_ignores_what_is_not_loaded(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "adapter_model.safetensors").write_bytes(b"weights")
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "lock").write_text("x")
    files = ("adapter_config.json", "adapter_model.safetensors")
    first = directory_hash(tmp_path, files)
    assert first.startswith("sha256:") and len(first) == len("sha256:") + 64
    (tmp_path / "checkpoint-500.pt").write_bytes(b"optimizer state")  # beside the adapter, not loaded
    assert directory_hash(tmp_path, files) == first
    assert directory_hash(tmp_path) != first
    (tmp_path / "adapter_model.safetensors").write_bytes(b"weightz")
    assert directory_hash(tmp_path, files) != first


def test_big_files_are_fingerprinted_not_hashed(tmp_path, monkeypatch):
    import medgemma.provenance as provenance

    monkeypatch.setattr(provenance, "FULL_HASH_BYTES", 4)
    (tmp_path / "model.safetensors").write_bytes(b"0123456789")
    assert directory_hash(tmp_path).startswith("fingerprint:")


def test_a_hub_snapshot_is_named_by_its_commit(tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = tmp_path / "models--org--cardio-lora" / "snapshots" / commit
    snapshot.mkdir(parents=True)
    assert snapshot_commit(snapshot) == commit
    assert snapshot_commit(tmp_path) is None
    assert snapshot_commit(Path("/models/snapshots") / commit) is None
