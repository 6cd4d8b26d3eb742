"""Structured (dataclass) configs: a misspelt key or a wrong type fails when the config is composed.

Model and task nodes come from the ``conf/model`` and ``conf/task`` groups and are instantiated from their
``_target_``; an unknown constructor argument there fails at instantiation, before any forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class ROIConfig:
    """Square output region, in output pixels."""

    x: int = 96
    y: int = 152
    size: int = 32


@dataclass
class CEMConfig:
    block_size: int = 8
    estimator: str = "reference"
    n_samples: int = 50
    n_coarse: int = 3
    tol: float = 0.01
    z: float = 1.96
    metric: str = "psnr"
    batch_size: int = 16
    tf32: bool = False
    keep_samples: bool = False
    checkpoint_every_s: float = 30.0


@dataclass
class PatchesConfig:
    """``source``: ``embedded`` (crops of the embedded training split), ``npz`` (a saved bank, e.g. the authors'
    DIV2K pool, at ``path``) or ``folder`` (random crops of the images in ``path``)."""

    source: str = "embedded"
    path: Optional[str] = None
    n_patches: int = 10000
    seed: int = 0
    min_sharpness: float = 0.0


@dataclass
class RunConfig:
    model: Any = MISSING
    task: Any = MISSING
    cem: CEMConfig = field(default_factory=CEMConfig)
    roi: ROIConfig = field(default_factory=ROIConfig)
    patches: PatchesConfig = field(default_factory=PatchesConfig)
    image: str = "embedded:chelsea"
    crop: Optional[int] = None
    ckpt: Optional[str] = None
    strict: bool = True
    seed: int = 0
    device: str = "auto"
    output_root: str = "outputs"
    progress: bool = True
    figure_bound: Optional[float] = None


def register_configs() -> None:
    ConfigStore.instance().store(name="run_schema", node=RunConfig)
