"""The model zoo: an explicit registry of architecture families, each one parametrised class.

``conf/model/<name>.yaml`` holds ``_target_`` and constructor arguments for the paper-size and tiny presets; this
registry maps short names to classes for code that does not go through Hydra.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from cemap.models.base import ModelInfo
from cemap.models.dncnn import DnCNN

MODELS: dict[str, Callable[..., nn.Module]] = {
    "dncnn": DnCNN,
}


def create_model(family: str, **kwargs: object) -> nn.Module:
    """Build the registered family ``family`` with constructor arguments ``kwargs``."""
    try:
        cls = MODELS[family]
    except KeyError:
        raise ValueError(f"unknown model family {family!r}; registered: {sorted(MODELS)}") from None
    return cls(**kwargs)


def model_info(model: object) -> ModelInfo:
    """The model's declared metadata, or the conservative default (same-size, global) for foreign models."""
    info = getattr(model, "info", None)
    return info if isinstance(info, ModelInfo) else ModelInfo()


__all__ = ["MODELS", "DnCNN", "ModelInfo", "create_model", "model_info"]
