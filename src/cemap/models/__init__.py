"""The model zoo: an explicit registry of architecture families, each one parametrised class.

``conf/model/<name>.yaml`` holds ``_target_`` and constructor arguments of the paper-size and tiny presets; this
registry maps family names to classes for code that does not go through Hydra. Families built on BasicSR (SwinIR,
HAT) are imported on first use, so ``import cemap`` stays fast.
"""

from __future__ import annotations

from importlib import import_module

from omegaconf import DictConfig
from torch import nn

from cemap.models.base import ModelInfo
from cemap.models.dncnn import DnCNN
from cemap.validation import SettingError

MODELS: dict[str, str] = {
    "dncnn": "cemap.models.dncnn:DnCNN",
    "srcnn": "cemap.models.srcnn:SRCNN",
    "fsrcnn": "cemap.models.fsrcnn:FSRCNN",
    "edsr": "cemap.models.edsr:EDSR",
    "srresnet": "cemap.models.srresnet:SRResNet",
    "rcan": "cemap.models.rcan:RCAN",
    "swinir": "cemap.models.swinir:SwinIR",
    "restormer": "cemap.models.restormer:Restormer",
    "hat": "cemap.models.hat:HAT",
    "control": "cemap.models.controls:ControlRestorer",
}
CONTROL_FAMILIES = frozenset({"control"})
"""Families of planted-pathway controls: untrained and small by construction, so no paper or tiny preset."""

AUTHOR_LAYOUTS: dict[str, tuple[str, dict[str, object]]] = {
    "dn_DnCNN": ("dncnn", {}),
    "dn_RCAN_DN": ("rcan_dn", {}),
    "dr_RCAN_DR": ("rcan_dn", {}),
    "dn_RCAN_mix": ("rcan_mix", {}),
    "dn_Restormer_DN": ("restormer", {}),
    "dr_Restormer_DR": ("restormer_dr", {}),
    "dn_SRResNet_DN": ("srresnet_same", {}),
    "dn_SRResNet_MIO": ("srresnet_same", {}),
    "dn_SRResNet_mix": ("srresnet_same", {}),
    "dr_SRResNet_DR": ("srresnet_same", {}),
    "dn_SwinIR_DN": ("swinir_dn", {}),
    "dn_SwinIR_mix": ("swinir_mix", {}),
    "dr_SwinIR_DR": ("swinir_mix", {}),
    "dn_SwinIR_MIO": ("swinir_mix", {"img_size": 128}),
    "sr_EDSR-32-16": ("edsr", {"width": 32, "depth": 16}),
    "sr_EDSR-64-10": ("edsr", {"width": 64, "depth": 10}),
    "sr_EDSR-64-16": ("edsr", {"width": 64, "depth": 16}),
    "sr_FSRCNN-16-6": ("fsrcnn", {"s": 16, "m": 6}),
    "sr_FSRCNN-48-6": ("fsrcnn", {"s": 48, "m": 6}),
    "sr_FSRCNN-48-16": ("fsrcnn", {"s": 48, "m": 16}),
    "sr_HAT": ("hat", {}),
    "sr_RCAN": ("rcan", {}),
    "sr_RCAN_no_ca": ("rcan_no_ca", {}),
    "sr_RCAN_half_ca": ("rcan_half_ca", {}),
    "sr_RCAN_pooling4": ("rcan_pooling4", {}),
    "sr_RCAN_pooling16": ("rcan_pooling16", {}),
    "sr_RCAN_pooling2x2": ("rcan_pooling2x2", {}),
    "sr_RCAN_pooling3x3": ("rcan_pooling3x3", {}),
    "sr_SRCNN": ("srcnn", {}),
    "sr_SRResNet": ("srresnet", {}),
    "sr_SwinIR": ("swinir", {}),
}
"""The authors' checkpoint layouts (``{task}_{name}``) and the ``conf/model`` preset (plus overrides) that loads each
strictly, e.g. ``model=fsrcnn model.s=16 model.m=6 ckpt=sr_FSRCNN-16-6.pth``."""


def model_class(family: str) -> type[nn.Module]:
    try:
        module, name = MODELS[family].split(":")
    except KeyError:
        raise SettingError(f"unknown model family {family!r}; registered: {sorted(MODELS)}") from None
    return getattr(import_module(module), name)


def create_model(family: str, **kwargs: object) -> nn.Module:
    """Build the registered family ``family`` with constructor arguments ``kwargs``."""
    return model_class(family)(**kwargs)


def model_info(model: object) -> ModelInfo:
    """The model's declared metadata, or the conservative default (same-size, global) for foreign models."""
    info = getattr(model, "info", None)
    return info if isinstance(info, ModelInfo) else ModelInfo()


def build_model(model_cfg: DictConfig) -> tuple[nn.Module, str]:
    """The model a ``conf/model`` node describes (its ``_target_`` and arguments) and its name; used by the map CLI,
    the trainer and the runner alike, so none of them imports another."""
    import hydra
    from omegaconf import OmegaConf

    node = OmegaConf.to_container(model_cfg, resolve=True)
    assert isinstance(node, dict)
    name = str(node.pop("name", node.get("_target_", "model")))
    return hydra.utils.instantiate(node), name


__all__ = ["CONTROL_FAMILIES", "MODELS", "DnCNN", "ModelInfo", "build_model", "create_model", "model_class", "model_info"]
