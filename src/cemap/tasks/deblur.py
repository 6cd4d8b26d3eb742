"""Deblurring: Gaussian or motion blur plus optional small noise, intervened under the same blur and noise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from cemap.grid import Block
from cemap.tasks.base import Degraded, RandomSource, Task, quantize_8bit
from cemap.tasks.derain import streak_kernel
from cemap.validation import SettingError


def gaussian_kernel(size: int, sigma: float) -> np.ndarray:
    r = np.arange(size) - (size - 1) / 2
    g = np.exp(-(r**2) / (2 * sigma**2))
    k = np.outer(g, g)
    return k / k.sum()


def blur(images: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Per-channel correlation of (N, 3, H, W) with a k x k kernel, reflected borders, "same" size, float64."""
    k = kernel.shape[-1]
    x = F.pad(images.to(torch.float64), (k // 2,) * 4, mode="reflect")
    weight = kernel.to(device=images.device, dtype=torch.float64).expand(images.shape[1], 1, k, k)
    return F.conv2d(x, weight, groups=images.shape[1])


@dataclass
class Deblur(Task):
    """Blur by a seeded kernel, add Gaussian noise of ``noise_sigma`` (0..255 units), round to 8 bits.

    ``kernel``: ``gaussian`` (sigma drawn from ``sigma_range``) or ``motion`` (a line of ``kernel_size`` px at a random
    angle, softened by a 3 px Gaussian). ``kernel_size`` is odd; its radius bounds how far a block's content spreads.

    Intervention consistency: the patch is written into the *clean* image and the very same kernel and the very same
    noise realisation are applied again (by linearity: the stored blurred image plus the blur of the change), so pixels
    farther from the block than the kernel radius do not change at all.
    """

    kernel: str = "gaussian"
    kernel_size: int = 15
    sigma_range: tuple[float, float] = (1.5, 3.0)
    noise_sigma: float = 0.0
    display_bound: float | None = None
    name: ClassVar[str] = "deblur"
    scale: ClassVar[int] = 1

    def __post_init__(self) -> None:
        if self.kernel not in ("gaussian", "motion"):
            raise SettingError(f"blur kernel={self.kernel!r}; choose gaussian or motion")
        if self.kernel_size < 3 or self.kernel_size % 2 == 0:
            raise SettingError(f"kernel_size={self.kernel_size} must be odd and >= 3")
        self.sigma_range = tuple(self.sigma_range)  # type: ignore[assignment]

    @property
    def radius(self) -> int:
        return self.kernel_size // 2

    @property
    def intervention_spread(self) -> int:
        return self.radius

    def make_kernel(self, rng: RandomSource) -> np.ndarray:
        if self.kernel == "gaussian":
            return gaussian_kernel(self.kernel_size, float(rng.uniform(*self.sigma_range)))
        return streak_kernel(self.kernel_size, float(rng.uniform(-90.0, 90.0)), 3)[: self.kernel_size, : self.kernel_size]

    def degrade(self, clean: torch.Tensor, rng: RandomSource) -> Degraded:
        if min(clean.shape[-2:]) <= self.radius:
            raise SettingError(f"image {tuple(clean.shape[-2:])} is smaller than the blur kernel radius {self.radius}")
        kernel = torch.from_numpy(self.make_kernel(rng))
        blurred = blur(clean.unsqueeze(0), kernel)[0]
        noise = torch.from_numpy(rng.normal(0.0, self.noise_sigma / 255.0, tuple(clean.shape)))
        image = quantize_8bit(blurred + noise, "round").to(clean.dtype)
        return Degraded(image, {"kernel": kernel, "blurred": blurred, "noise": noise})

    def intervene(self, degraded: Degraded, clean: torch.Tensor, block: Block, patches: torch.Tensor,
                  rng: np.random.Generator) -> torch.Tensor:
        n = patches.shape[0]
        delta = torch.zeros((n, *clean.shape), dtype=torch.float64, device=clean.device)
        delta[:, :, block.y0 : block.y1, block.x0 : block.x1] = (
            patches.to(torch.float64) - clean[:, block.y0 : block.y1, block.x0 : block.x1].to(torch.float64)
        )
        changed = degraded.state["blurred"] + blur(delta, degraded.state["kernel"]) + degraded.state["noise"]
        return quantize_8bit(changed, "round").to(degraded.image.dtype)

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "scale": 1, "kernel": self.kernel, "kernel_size": self.kernel_size,
                "sigma_range": list(self.sigma_range), "noise_sigma": self.noise_sigma}
