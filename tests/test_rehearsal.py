"""The rehearsal: its memory guard in the suite, its reduced-depth run behind ``--bench``.

``python -m bench.rehearsal`` runs the production paths on a checkpoint with exactly MedGemma's
configuration (it takes ~20 GiB and half an hour, so it is not part of the suite). The suite
checks, in seconds, what keeps it from pushing a shared machine into the OOM killer: the
parameter count each step's need is estimated from (held to the real model's, built on the
meta device), a step that can't fit reported as skipped, and the watchdog. ``pytest --bench``
also runs the script with only the depth cut (every width, the 262k vocabulary, the image
geometry and the token counts are MedGemma's): ~100 s and ~6 GB on 2 cores, too much for CI.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import psutil
import pytest

from bench.common import GIB
from bench.medgemma_shapes import TEXT_SHAPES, VISION_SHAPES, build_config
from bench.rehearsal import ChildMemory, main, parameter_count, step_need
from tests.conftest import REPO


@pytest.mark.parametrize("depth", [(None, None), (2, 1)], ids=["full depth", "2 decoder layers, 1 vision layer"])
def test_the_parameter_count_is_the_models(depth):
    import torch
    from transformers import Gemma3ForConditionalGeneration

    config = build_config(tiny=False, text_layers=depth[0], vision_layers=depth[1])
    with torch.device("meta"):
        model = Gemma3ForConditionalGeneration(config)
    assert parameter_count(*depth) == sum(parameter.numel() for parameter in model.parameters())
    text, vision = config.text_config, config.vision_config
    for key in ("hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size"):
        assert getattr(text, key) == TEXT_SHAPES[key], key
    for key in ("image_size", "patch_size", "hidden_size", "intermediate_size"):
        assert getattr(vision, key) == VISION_SHAPES[key], key
    assert config.mm_tokens_per_image == 256


def test_float32_at_full_depth_needs_its_weights_and_more():
    """4.30 B parameters in float32 are 16.0 GiB; with a shard in flight and the interpreter ~19 GiB."""
    parameters = parameter_count()
    assert parameters == 4_300_079_472  # the full-depth build's own count (bench.rehearsal, build step)
    assert 4 * parameters < step_need("float32", parameters) < 20 * GIB
    assert step_need("prequantized", parameters) < step_need("nf4", parameters) < step_need("float32", parameters)


def test_a_step_that_cannot_fit_is_skipped_and_says_what_it_needs(tmp_path):
    """1000 decoder layers in float32 need ~360 GiB: no machine here has that, so nothing is loaded."""
    out = tmp_path / "rehearsal.md"
    main(
        ["--text-layers", "1000", "--steps", "float32", "--wait-s", "0", "--workdir", str(tmp_path), "--out", str(out)]
    )
    need = step_need("float32", parameter_count(1000)) / GIB
    table = out.read_text()
    assert f"skipped: needs ~{need:.1f} GiB, " in table and " GiB available" in table
    assert not (tmp_path / "float32.json").exists()


def test_the_watchdog_stops_a_step_before_the_machine_runs_out():
    """A floor above the machine's RAM: the step (here a sleeping child) is killed at the first sample."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with ChildMemory(process.pid, interval_s=0.05, floor=psutil.virtual_memory().total + GIB) as memory:
            assert process.wait(timeout=20) == -9
        assert memory.stopped and memory.least_available is not None
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# ---- the reduced-depth run (pytest --bench) ------------------------------------------------------


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("rehearsal")
    command = [sys.executable, "-m", "bench.rehearsal", "--text-layers", "2", "--vision-layers", "1"]
    command += ["--steps", "build,float32", "--reps", "1", "--workdir", str(workdir), "--keep"]
    command += ["--out", str(workdir / "rehearsal.md")]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((workdir / "medgemma-shaped" / "config.json").read_text())
    shutil.rmtree(workdir / "medgemma-shaped")  # 1.8 GB pytest would otherwise keep
    return config, json.loads((workdir / "results.json").read_text()), (workdir / "rehearsal.md").read_text()


@pytest.mark.model
@pytest.mark.slow
@pytest.mark.bench
def test_the_checkpoint_has_medgemmas_widths(rehearsal):
    config, results, _ = rehearsal
    text, vision = config["text_config"], config["vision_config"]
    for key in ("hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size"):
        assert text[key] == TEXT_SHAPES[key], key
    assert results["build"]["parameters"] == parameter_count(2, 1)
    assert text["vocab_size"] == 262_208 and text["num_hidden_layers"] == 2
    assert text["layer_types"] == ["sliding_attention", "full_attention"]
    for key in ("image_size", "patch_size", "hidden_size", "intermediate_size"):
        assert vision[key] == VISION_SHAPES[key], key
    assert config["mm_tokens_per_image"] == 256


@pytest.mark.model
@pytest.mark.slow
@pytest.mark.bench
def test_the_dummy_image_costs_its_256_tokens_at_these_shapes(rehearsal):
    _, results, table = rehearsal
    run = results["float32"]["runs"][0]
    assert run["dummy"]["run_mode"] == run["text"]["run_mode"] == "cpu/none/float32"
    assert 256 < run["dummy"]["prompt_tokens"] - run["text"]["prompt_tokens"] <= 262
    assert "the dummy image's share of prefill" in table and "REDUCED DEPTH" in table


@pytest.mark.model
@pytest.mark.slow
@pytest.mark.bench
def test_a_batch_of_four_with_two_images_forms_one_batch(rehearsal):
    _, results, _ = rehearsal
    batch = results["float32"]["batch"]
    assert [job["batch_size"] for job in batch] == [4, 4, 4, 4]
    assert results["float32"]["batch_images"] == [1, 1, 0, 0]
    assert min(batch[0]["prompt_tokens"], batch[1]["prompt_tokens"]) > 256
    assert results["build"]["peak_anon"] > 0 and results["float32"]["load_s"] > 0
