"""The rehearsal's shape check: MedGemma 1.5 4B's widths at two decoder layers and one vision layer.

``python -m bench.rehearsal`` runs the production paths on a checkpoint with exactly MedGemma's
configuration (it takes ~20 GiB and half an hour, so it is not part of the suite). This runs
the same script with only the depth cut, so every width, the 262k vocabulary, the image
geometry and the token counts are MedGemma's, in about a minute.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from bench.gpu import TEXT_SHAPES, VISION_SHAPES
from tests.conftest import REPO

pytestmark = [pytest.mark.model, pytest.mark.slow]


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


def test_the_checkpoint_has_medgemmas_widths(rehearsal):
    config, _, _ = rehearsal
    text, vision = config["text_config"], config["vision_config"]
    for key in ("hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size"):
        assert text[key] == TEXT_SHAPES[key], key
    assert text["vocab_size"] == 262_208 and text["num_hidden_layers"] == 2
    assert text["layer_types"] == ["sliding_attention", "full_attention"]
    for key in ("image_size", "patch_size", "hidden_size", "intermediate_size"):
        assert vision[key] == VISION_SHAPES[key], key
    assert config["mm_tokens_per_image"] == 256


def test_the_dummy_image_costs_its_256_tokens_at_these_shapes(rehearsal):
    _, results, table = rehearsal
    run = results["float32"]["runs"][0]
    assert run["dummy"]["run_mode"] == run["text"]["run_mode"] == "cpu/none/float32"
    assert 256 < run["dummy"]["prompt_tokens"] - run["text"]["prompt_tokens"] <= 262
    assert "the dummy image's share of prefill" in table and "REDUCED DEPTH" in table


def test_a_batch_of_four_with_two_images_forms_one_batch(rehearsal):
    _, results, _ = rehearsal
    batch = results["float32"]["batch"]
    assert [job["batch_size"] for job in batch] == [4, 4, 4, 4]
    assert results["float32"]["batch_images"] == [1, 1, 0, 0]
    assert min(batch[0]["prompt_tokens"], batch[1]["prompt_tokens"]) > 256
    assert results["build"]["peak_anon"] > 0 and results["float32"]["load_s"] > 0
