"""Shared fixtures: tiny models, small images and the optional ../shared/reference data."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_REFERENCE = REPO.parent / "shared" / "reference"

if os.environ.get("PYTEST_XDIST_WORKER"):  # make test runs workers: the cores shared out, not oversubscribed
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))


def load_script(name: str) -> ModuleType:
    """``experiments/<name>.py`` imported as a module: the runners are scripts, not part of the package."""
    spec = importlib.util.spec_from_file_location(name, REPO / "experiments" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _deterministic_threads() -> None:
    torch.manual_seed(0)


@pytest.fixture
def reference_dir() -> Path:
    """../shared/reference, or skip: a user's fresh clone does not have the authors' files."""
    if not (SHARED_REFERENCE / "dncnn_color_blind.pth").is_file():
        pytest.skip(f"parity data not found at {SHARED_REFERENCE} (only present in the project's workspace)")
    return SHARED_REFERENCE


@pytest.fixture
def small_image() -> np.ndarray:
    """A 40 x 56 uint8 RGB test image with structure (smooth gradients plus texture), seeded."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:40, 0:56]
    base = np.stack([yy * 4, xx * 3, (yy + xx) * 2], axis=-1).astype(np.float64)
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


@pytest.fixture
def small_bank() -> np.ndarray:
    rng = np.random.default_rng(2)
    return rng.integers(0, 256, size=(64, 8, 8, 3), dtype=np.uint8)


def conv_stack(layers: int, channels: int = 8, global_branch: bool = False, seed: int = 0,
               claims_radius: int | None = None) -> torch.nn.Module:
    """``layers`` 3x3 convs (receptive radius = layers px), optionally plus a global-average-pooling branch;
    ``claims_radius`` attaches zoo-style metadata declaring that receptive radius (true or not)."""
    torch.manual_seed(seed)

    class Stack(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            convs: list[torch.nn.Module] = []
            c = 3
            for i in range(layers):
                out = 3 if i == layers - 1 else channels
                convs.append(torch.nn.Conv2d(c, out, 3, padding=1))
                if i < layers - 1:
                    convs.append(torch.nn.ReLU())
                c = out
            self.body = torch.nn.Sequential(*convs)
            self.gap = torch.nn.Conv2d(3, 3, 1) if global_branch else None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = x + 0.5 * self.body(x)
            if self.gap is not None:
                y = y + self.gap(x.mean(dim=(2, 3), keepdim=True))
            return y

    model = Stack().eval()
    if claims_radius is not None:
        from cemap.models.base import ModelInfo

        model.info = ModelInfo(receptive_radius=claims_radius)
    return model
