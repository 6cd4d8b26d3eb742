"""Denoising with additive white Gaussian noise, exactly as the paper's demo."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Optional

import numpy as np
import torch

from cemap.grid import Block
from cemap.metrics import psnr
from cemap.tasks.base import Degraded, RandomSource, Task, quantize_8bit
from cemap.tasks.deblur import blur, gaussian_kernel
from cemap.validation import SettingError


@dataclass
class Denoise(Task):
    """AWGN of standard deviation ``sigma`` (in 0..255 units), stored as an 8-bit image.

    Degradation: noise drawn once over the whole H x W x 3 array (the demo's array order, so ``RandomState(0)``
    reproduces the paper's noisy image bit for bit), added to the clean image, clipped and quantised (``truncate`` is
    the demo's ``uint8`` cast).

    Intervention consistency: the replacement patch receives *fresh* noise of the same sigma and is quantised the same
    way, so the intervened block is a plausible noisy observation of other content, and the noise everywhere else is
    untouched.

    ``sigma_range`` (lo, hi) makes the task noise-level-blind: each degradation draws its sigma uniformly from it (for
    training blind denoisers), and interventions on that image reuse the drawn sigma.
    """

    sigma: float = 50.0
    quantize: str = "truncate"
    sigma_range: Optional[tuple[float, float]] = None
    display_bound: float | None = None

    name: ClassVar[str] = "denoise"
    scale: ClassVar[int] = 1

    def __post_init__(self) -> None:
        if self.sigma < 0:
            raise SettingError(f"sigma={self.sigma} must be >= 0 (in 0..255 units)")
        if self.sigma_range is not None:
            lo, hi = self.sigma_range
            if not 0 <= lo <= hi:
                raise SettingError(f"sigma_range={self.sigma_range} must satisfy 0 <= lo <= hi")
            self.sigma_range = (float(lo), float(hi))
        quantize_8bit(torch.zeros(1), self.quantize)  # fail now on an unknown mode

    def degrade(self, clean: torch.Tensor, rng: RandomSource) -> Degraded:
        sigma = self.sigma if self.sigma_range is None else float(rng.uniform(*self.sigma_range))
        x = clean.detach().cpu().to(torch.float64).permute(1, 2, 0).numpy()  # H, W, 3 like the demo
        noise = rng.normal(0.0, sigma / 255.0, x.shape)
        noisy = quantize_8bit(torch.from_numpy(x + noise), self.quantize)
        return Degraded(noisy.permute(2, 0, 1).to(clean.dtype).contiguous(), {"sigma": torch.tensor(sigma)})

    def intervene(
        self,
        degraded: Degraded,
        clean: torch.Tensor,
        block: Block,
        patches: torch.Tensor,
        rng: np.random.Generator,
    ) -> torch.Tensor:
        n = patches.shape[0]
        sigma = float(degraded.state["sigma"]) if "sigma" in degraded.state else self.sigma
        noise = torch.from_numpy(rng.normal(0.0, sigma / 255.0, tuple(patches.shape)))
        noisy_patches = quantize_8bit(patches.to(torch.float64) + noise.to(patches.device), self.quantize)
        out = degraded.image.unsqueeze(0).repeat(n, 1, 1, 1)
        rows, cols = block.scaled(self.scale)
        out[:, :, rows, cols] = noisy_patches.to(out.dtype)
        return out

    def baseline(self, degraded: list[torch.Tensor], targets: list[torch.Tensor],
                 crop_border: int = 0) -> tuple[str, list[torch.Tensor]]:
        """The best Gaussian filter, its sigma chosen on these very images (an optimistic classical baseline)."""
        best: tuple[float, float, list[torch.Tensor]] | None = None
        for sigma in np.arange(0.4, 3.01, 0.1):
            k = torch.from_numpy(gaussian_kernel(2 * math.ceil(3 * sigma) + 1, float(sigma)))
            out = [blur(d.unsqueeze(0), k)[0].float() for d in degraded]
            score = float(np.mean([psnr(o, t, crop_border).item() for o, t in zip(out, targets)]))
            if best is None or score > best[0]:
                best = (score, float(sigma), out)
        assert best is not None
        return f"gaussian(sigma={best[1]:.1f})", best[2]

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "scale": self.scale, "sigma": self.sigma, "quantize": self.quantize,
                "sigma_range": None if self.sigma_range is None else list(self.sigma_range)}
