"""The base model's linear layers, named as PEFT names them, built without loading any weights.

Adapters are checked against these before an engine loads anything (``medgemma.adapters``),
so both engines accept exactly the same adapters and a mismatch fails in about a second,
not after the weights' download. The model is built on the meta device: shapes, no memory.
"""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

from medgemma.adapters import ModelModules
from medgemma.model_access import model_access_errors
from medgemma.sources import ModelSource


def model_modules(source: ModelSource) -> ModelModules:
    """Every ``nn.Linear`` of the checkpoint's transformers model, and its decoder's prefix."""
    with model_access_errors(source):
        config = AutoConfig.from_pretrained(source.location, **source.hub_kwargs())
    vision = getattr(config, "vision_config", None) is not None
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config) if vision else AutoModelForCausalLM.from_config(config)
    decoder = model.get_decoder()
    prefix = next(name for name, module in model.named_modules() if module is decoder)
    linear = {
        name: (module.in_features, module.out_features)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
    }
    return ModelModules(linear, prefix)
