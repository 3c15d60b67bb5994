"""Small LoRA adapters for the stand-in, built in code with PEFT: fixed random weights, saved as PEFT saves them.

PEFT initialises LoRA's B matrix to zero (a fresh adapter changes nothing); with
``init_lora_weights=False`` both matrices are random, so an adapter changes the answers
measurably. The target pattern matches the decoder's layers in both stand-ins
(``model.language_model.layers.N`` in the multimodal one, ``model.layers.N`` in the text one).
The benchmark builds its adapters with this too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

ATTENTION = r"model\.(language_model\.)?layers\.\d+\.self_attn\.(q_proj|v_proj)"
MLP = r"model\.(language_model\.)?layers\.\d+\.mlp\.(up_proj|down_proj)"


def build_lora(base: torch.nn.Module, directory: Path, *, seed: int, rank: int, targets: str = ATTENTION) -> Path:
    """Save a random LoRA adapter for ``base`` into ``directory``; ``base`` is left as it was."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets, init_lora_weights=False)
    model = get_peft_model(base, config)
    model.save_pretrained(directory)
    model.unload()  # the base model's layers are plain again
    return directory


def edited_copy(adapter: Path, directory: Path, **config: Any) -> Path:
    """A copy of ``adapter`` whose adapter_config.json has ``config``'s keys changed (a broken adapter)."""
    directory.mkdir(parents=True)
    (directory / "adapter_model.safetensors").write_bytes((adapter / "adapter_model.safetensors").read_bytes())
    changed = {**json.loads((adapter / "adapter_config.json").read_text()), **config}
    (directory / "adapter_config.json").write_text(json.dumps(changed))
    return directory
