"""The stand-in's image path has MedGemma's geometry, so token counts and image costs are the real ones.

MedGemma 1.5 4B's own figures are those ``bench/medgemma_shapes.py`` builds its model with (from the
checkpoint's config.json): 896 px images, 14 px patches, 256 tokens per image.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from bench.medgemma_shapes import MM_TOKENS, VISION_SHAPES
from medgemma import standin
from medgemma.request import parse_job_input
from medgemma.sources import resolve_source

pytestmark = pytest.mark.model


def test_the_geometry_constants_are_medgemmas():
    assert standin.VISION_IMAGE_SIZE == VISION_SHAPES["image_size"] == 896
    assert standin.VISION_PATCH_SIZE == VISION_SHAPES["patch_size"] == 14
    assert standin.MM_TOKENS_PER_IMAGE == MM_TOKENS == 256


def test_the_checkpoint_pools_a_64x64_patch_grid_to_256_tokens(transformers_worker):
    backend = transformers_worker.engine.backend
    config = backend.model.config
    assert (config.vision_config.image_size, config.vision_config.patch_size) == (896, 14)
    assert config.mm_tokens_per_image == 256
    projector = backend.model.model.multi_modal_projector
    assert (projector.patches_per_image, projector.tokens_per_side, projector.kernel_size) == (64, 16, 4)


def test_an_image_is_preprocessed_to_896_px_and_becomes_256_tokens(transformers_worker):
    import torch

    backend = transformers_worker.engine.backend
    processor = backend.processor
    assert processor.image_seq_length == 256
    assert processor.full_image_sequence.count(standin.IMAGE_TOKEN) == 256
    # Any image, whatever its size, is resized to MedGemma's 896 x 896.
    pixels = processor.image_processor([Image.new("RGB", (300, 120), "red")], return_tensors="pt")["pixel_values"]
    assert tuple(pixels.shape) == (1, 3, 896, 896)
    with torch.inference_mode():
        features = backend.model.get_image_features(pixel_values=pixels.to(backend.model.dtype))
    features = getattr(features, "pooler_output", features)
    hidden = backend.model.config.text_config.hidden_size
    assert tuple(features.shape) == (1, 256, hidden)


def test_the_dummy_image_costs_its_256_tokens(transformers_worker):
    backend = transformers_worker.engine.backend
    settings = replace(transformers_worker.settings, dummy_image=True)
    with_dummy = backend.prepare(parse_job_input({"text": "SYNTHETIC NOTE. Stable."}, settings))
    assert with_dummy.request.used_dummy_image
    assert int(with_dummy.features["token_type_ids"].sum()) == 256
    assert tuple(with_dummy.features["pixel_values"].shape) == (1, 3, 896, 896)


#: The real checkpoint's tensor names, layer numbers folded (the file says where they come from).
REAL_KEYS = Path(__file__).with_name("medgemma_keys.txt")


def folded(name: str) -> str:
    """``...layers.12.mlp...`` -> ``...layers.N.mlp...``: the stand-in is shallower than MedGemma."""
    return re.sub(r"\.\d+\.", ".N.", name)


def test_the_checkpoint_has_the_real_checkpoints_key_layout(settings):
    """vLLM maps only the Hub's layout: a stand-in key the real checkpoint lacks would fail to load there."""
    from safetensors import safe_open

    real = {line for line in REAL_KEYS.read_text().splitlines() if line and not line.startswith("#")}
    with safe_open(Path(resolve_source(settings).location) / standin.WEIGHTS_FILE, "pt") as weights:
        ours = {folded(name) for name in weights.keys()}  # noqa: SIM118 (safe_open is not a mapping)
    assert sorted(ours - real) == [], "stand-in keys the real checkpoint doesn't have"
    assert sorted(real - ours) == [], "real keys the stand-in doesn't have"


def test_a_transformers_5_key_is_renamed_to_the_hubs_layout():
    assert standin.hub_key("vision_tower.encoder.layers.0.mlp.fc1.weight") == (
        "vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight"
    )
    assert (
        standin.hub_key("vision_tower.vision_model.post_layernorm.bias")
        == "vision_tower.vision_model.post_layernorm.bias"
    )
    assert standin.hub_key("language_model.model.norm.weight") == "language_model.model.norm.weight"
