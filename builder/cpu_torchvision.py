"""CPU suite only: lets PyPI's torchvision import beside CPU torch (never installed in the image).

PyPI has torchvision only as a CUDA build. Beside ``torch==2.13.0+cpu`` its C ops don't load,
and its ``_meta_registrations`` then registers fake kernels for ``torchvision::nms`` and
``torchvision::qnms``, ops that were never defined, so ``import torchvision`` raises
``RuntimeError: operator torchvision::nms does not exist``. Its pure-Python transforms are all
that transformers' Gemma 3 image processor and vLLM's ``gemma3_mm`` need, and they work once
those two schemas exist. ``builder/setup_local.sh`` copies this file into the venv's
site-packages with a ``.pth`` line that imports it, so every interpreter of the venv, vLLM's
engine processes included, defines the schemas just before torchvision is first imported.
"""

from __future__ import annotations

import importlib.abc
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

#: The schemas torchvision's C ops would have defined (torchvision/csrc/ops/nms.cpp, qnms.cpp).
SCHEMAS = {
    "torchvision::nms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "torchvision::qnms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}


class DefineOpsBeforeTorchvision(importlib.abc.MetaPathFinder):
    """Defines SCHEMAS the first time ``torchvision`` is looked for, then steps aside."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname == "torchvision":
            sys.meta_path.remove(self)
            define_schemas()
        return None  # the regular finders import it


def define_schemas() -> None:
    import torch

    for name, schema in SCHEMAS.items():
        try:
            torch.library.define(name, schema)
        except RuntimeError:  # already defined (by an earlier import of this venv's torchvision attempt)
            pass


def install() -> None:
    if not any(isinstance(finder, DefineOpsBeforeTorchvision) for finder in sys.meta_path):
        sys.meta_path.insert(0, DefineOpsBeforeTorchvision())


install()
