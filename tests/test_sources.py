"""Where the weights are loaded from: baked, RunPod's cached models, a network volume, or a download.

The fast tests lay out Hugging Face hub caches by hand (config and weight files only); the
``model`` test lays the real stand-in out exactly as RunPod's cached models are laid out and
serves a job from it with the hub unreachable.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from medgemma.adapters import fetch
from medgemma.settings import AdapterSpec, Settings
from medgemma.sources import ModelSource, find_snapshot, resolve_source
from tests.conftest import REPO, TEST_ENV

MODEL = "google/medgemma-1.5-4b-it"
COMMIT = "e9792b6a5f4c1d2e3f40a1b2c3d4e5f60718293a"
OTHER_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_repo(hub_cache: Path, model_id: str = MODEL) -> Path:
    return hub_cache / f"models--{model_id.replace('/', '--')}"


def lay_out(
    hub_cache: Path, commit: str = COMMIT, files: dict[str, bytes] | None = None, ref: bool = True, repo_id: str = MODEL
) -> Path:
    """A snapshot in the hub's layout: files in blobs/, the snapshot's entries symlinks to them."""
    repo = hub_repo(hub_cache, repo_id)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for name, content in (files or {"config.json": b"{}", "model.safetensors": b"weights"}).items():
        blob = repo / "blobs" / f"{commit[:8]}-{name}"
        blob.write_bytes(content)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    if ref:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
    return snapshot


def settings_for(tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env(
        {"MODEL_ID": MODEL, "HF_HOME": str(tmp_path / "hf"), "RUNPOD_VOLUME": str(tmp_path / "volume"), **env}
    )


def baked(tmp_path: Path) -> Path:
    return tmp_path / "hf" / "hub"


def runpod_cache(tmp_path: Path) -> Path:
    return tmp_path / "volume" / "huggingface-cache" / "hub"


def network_volume(tmp_path: Path) -> Path:
    return tmp_path / "volume" / "huggingface" / "hub"


def test_nothing_local_and_no_volume_downloads_into_hf_home(tmp_path):
    source = resolve_source(settings_for(tmp_path))
    assert source == ModelSource(MODEL, f"{MODEL} (download)", local_only=False)


def test_offline_with_nothing_local_asks_no_hub(tmp_path):
    source = resolve_source(settings_for(tmp_path, HF_HUB_OFFLINE="1"))
    assert source.location == MODEL and source.local_only


def test_a_mounted_volume_without_a_copy_downloads_into_the_volume(tmp_path):
    (tmp_path / "volume").mkdir()
    source = resolve_source(settings_for(tmp_path))
    assert source == ModelSource(
        MODEL, f"{MODEL} (download to network volume)", local_only=False, cache_dir=str(network_volume(tmp_path))
    )
    assert source.hub_kwargs() == {"local_files_only": False, "cache_dir": str(network_volume(tmp_path))}


@pytest.mark.parametrize(
    ("present", "expected"),
    [
        (["network-volume"], "network-volume"),
        (["runpod-cache", "network-volume"], "runpod-cache"),
        (["baked", "runpod-cache", "network-volume"], "baked"),
        (["baked", "network-volume"], "baked"),
    ],
)
def test_the_first_local_copy_in_order_wins_and_is_loaded_offline(tmp_path, present, expected):
    places = {
        "baked": baked(tmp_path),
        "runpod-cache": runpod_cache(tmp_path),
        "network-volume": network_volume(tmp_path),
    }
    snapshots = {kind: lay_out(places[kind]) for kind in present}
    source = resolve_source(settings_for(tmp_path))
    assert source == ModelSource(str(snapshots[expected]), f"{MODEL} ({expected}:{COMMIT[:12]})", local_only=True)
    assert source.hub_kwargs() == {"local_files_only": True}


def test_refs_main_names_the_snapshot(tmp_path):
    newer = lay_out(runpod_cache(tmp_path), OTHER_COMMIT, ref=False)
    named = lay_out(runpod_cache(tmp_path), COMMIT)
    os.utime(newer, (2e9, 2e9))
    assert find_snapshot(runpod_cache(tmp_path), MODEL) == named


def test_without_refs_main_the_newest_complete_snapshot(tmp_path):
    older = lay_out(runpod_cache(tmp_path), COMMIT, ref=False)
    newer = lay_out(runpod_cache(tmp_path), OTHER_COMMIT, ref=False)
    os.utime(older, (1e9, 1e9))
    os.utime(newer, (2e9, 2e9))
    assert find_snapshot(runpod_cache(tmp_path), MODEL) == newer


def test_an_interrupted_download_is_not_a_copy(tmp_path):
    index = json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    )
    files = {
        "config.json": b"{}",
        "model.safetensors.index.json": index.encode(),
        "model-00001-of-00002.safetensors": b"x",
    }
    lay_out(network_volume(tmp_path), files=files)
    assert find_snapshot(network_volume(tmp_path), MODEL) is None
    assert resolve_source(settings_for(tmp_path)).label == f"{MODEL} (download to network volume)"
    (hub_repo(network_volume(tmp_path)) / "snapshots" / COMMIT / "model-00002-of-00002.safetensors").write_bytes(b"y")
    assert resolve_source(settings_for(tmp_path)).label == f"{MODEL} (network-volume:{COMMIT[:12]})"


def test_a_snapshot_without_config_or_with_a_dangling_weights_link_is_skipped(tmp_path):
    snapshot = lay_out(runpod_cache(tmp_path))
    (snapshot / "config.json").unlink()
    assert find_snapshot(runpod_cache(tmp_path), MODEL) is None
    shutil.rmtree(hub_repo(runpod_cache(tmp_path)))
    snapshot = lay_out(runpod_cache(tmp_path))
    for blob in (hub_repo(runpod_cache(tmp_path)) / "blobs").glob("*model.safetensors"):
        blob.unlink()
    assert find_snapshot(runpod_cache(tmp_path), MODEL) is None


def test_a_local_directory_is_served_as_given(tmp_path):
    directory = tmp_path / "medgemma-nf4"
    directory.mkdir()
    (directory / "config.json").write_text("{}")
    lay_out(runpod_cache(tmp_path))  # a cached hub copy never overrides an explicit directory
    source = resolve_source(settings_for(tmp_path, MODEL_ID=str(directory)))
    assert source == ModelSource(str(directory), str(directory), local_only=True)


def test_hf_hub_cache_moves_the_baked_location(tmp_path):
    snapshot = lay_out(tmp_path / "elsewhere")
    source = resolve_source(settings_for(tmp_path, HF_HUB_CACHE=str(tmp_path / "elsewhere")))
    assert source.location == str(snapshot) and source.label.endswith(f"(baked:{COMMIT[:12]})")


def test_an_adapter_is_found_in_the_same_order_and_only_with_both_its_files(tmp_path):
    """ADAPTERS entries follow MODEL_ID's rule; a model's files are not an adapter's (nor the reverse)."""
    adapter = "org/medgemma-cardio-lora"
    files = {"adapter_config.json": b"{}", "adapter_model.safetensors": b"weights"}
    settings = settings_for(tmp_path, HF_HUB_OFFLINE="1")
    spec = AdapterSpec("cardio", adapter)
    lay_out(baked(tmp_path), files={"adapter_config.json": b"{}"}, repo_id=adapter)  # interrupted: no weights
    in_volume = lay_out(network_volume(tmp_path), OTHER_COMMIT, files=files, repo_id=adapter)
    assert fetch(spec, settings) == in_volume
    in_runpod_cache = lay_out(runpod_cache(tmp_path), files=files, repo_id=adapter)
    assert fetch(spec, settings) == in_runpod_cache
    assert find_snapshot(runpod_cache(tmp_path), adapter) is None  # not a checkpoint: no config.json


# ---- the stand-in, laid out as RunPod's cached models are ------------------------------------


def lay_out_checkpoint(checkpoint: Path, hub_cache: Path, commit: str) -> Path:
    """``checkpoint``'s files as RunPod places a cached model: blobs, snapshot symlinks, refs/main."""
    repo = hub_repo(hub_cache)
    snapshot, blobs = repo / "snapshots" / commit, repo / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    for path in sorted(checkpoint.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            blob = blobs / f"{commit[:8]}{path.name.encode().hex()}"
            try:
                os.link(path, blob)  # same filesystem: no 0.5 GB copy
            except OSError:
                shutil.copyfile(path, blob)
            (snapshot / path.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


@pytest.mark.model
@pytest.mark.slow
def test_a_job_is_served_from_runpods_cache_with_the_hub_unreachable(tmp_path, settings):
    from medgemma.standin import ensure_standin

    lay_out_checkpoint(ensure_standin(settings.standin_cache), runpod_cache(tmp_path), COMMIT)
    env = {
        **os.environ,
        **TEST_ENV,
        "MODEL_ID": MODEL,
        "RUNPOD_VOLUME": str(tmp_path / "volume"),
        "HF_HOME": str(tmp_path / "hf"),  # nothing baked
        "HF_ENDPOINT": "http://127.0.0.1:9",  # any hub request would fail: nothing may be downloaded
        "DEVICE": "cpu",
    }
    env.pop("HF_HUB_OFFLINE", None)
    job = json.dumps({"input": {"text": "SYNTHETIC NOTE. Stable.", "mode": "summarize", "max_new_tokens": 2}})
    result = subprocess.run(
        [sys.executable, "handler.py", "--test_input", job],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    output = ast.literal_eval(log.split("Job result: ", 1)[1].splitlines()[0])["output"]
    label = f"{MODEL} (runpod-cache:{COMMIT[:12]})"
    assert output["model"] == label and "error" not in output
    assert f"weights: {label}, loaded from {runpod_cache(tmp_path)}" in log
    assert f"model={label}" in log  # the cold-start line
    assert not list((tmp_path / "hf").glob("hub/models--*"))  # nothing was downloaded into HF_HOME
