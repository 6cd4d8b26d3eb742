"""Deraining with synthetic rain streaks (the paper's generator), intervened under the very same rain."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from scipy.signal import fftconvolve

from cemap.grid import Block
from cemap.tasks.base import Degraded, RandomSource, Task, quantize_8bit, randint
from cemap.validation import SettingError

SEED_SPREAD = np.array([[0.0, 0.1, 0.0], [0.1, 8.0, 0.1], [0.0, 0.1, 0.0]])
"""3x3 kernel that lightly spreads each streak seed before it is smeared into a streak."""


@dataclass(frozen=True)
class RainPreset:
    """Ranges the generator draws from: weight beta, seed density, streak length (px), angle (degrees), and the
    streak widths (odd Gaussian sizes) with their probabilities."""

    beta: tuple[float, float]
    density: tuple[float, float]
    length: tuple[int, int]
    angle: tuple[float, float]
    widths: tuple[int, ...]
    width_probs: tuple[float, ...]


RAIN_PRESETS: dict[str, RainPreset] = {
    # "medium" reproduces the paper's generator; small and large scale density, length and width around it.
    "small": RainPreset((0.6, 1.0), (0.002, 0.004), (20, 30), (-30, 30), (1, 3), (0.5, 0.5)),
    "medium": RainPreset((0.6, 1.0), (0.005, 0.007), (35, 45), (-30, 30), (3, 5, 7), (0.25, 0.5, 0.25)),
    "large": RainPreset((0.6, 1.0), (0.008, 0.010), (45, 55), (-30, 30), (5, 7, 9), (0.25, 0.5, 0.25)),
}


def streak_kernel(length: int, angle_deg: float, width: int) -> np.ndarray:
    """A line of ``length`` px through the centre at ``angle_deg`` from vertical, blurred by a Gaussian whose size is
    the streak ``width`` (sigma as OpenCV derives it from an odd kernel size)."""
    size = length + (1 - length % 2)
    k = np.zeros((size, size))
    c = (size - 1) / 2
    theta = np.deg2rad(angle_deg)
    t = np.linspace(-(length - 1) / 2, (length - 1) / 2, 4 * length)
    y, x = c + t * np.cos(theta), c + t * np.sin(theta)
    y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
    for dy in (0, 1):
        for dx in (0, 1):
            yy, xx = y0 + dy, x0 + dx
            inside = (yy >= 0) & (yy < size) & (xx >= 0) & (xx < size)
            weight = (1 - np.abs(y - yy)) * (1 - np.abs(x - xx))
            np.add.at(k, (yy[inside], xx[inside]), weight[inside])
    if width > 1:
        sigma = 0.3 * ((width - 1) * 0.5 - 1) + 0.8
        r = np.arange(width) - (width - 1) / 2
        g = np.exp(-(r**2) / (2 * sigma**2))
        g /= g.sum()
        k = _filter(k, np.outer(g, g))
    return k / k.sum()


def _filter(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """2-D correlation with reflected borders ("same" size), in float64; FFT-based, as streak kernels are large."""
    kh, kw = kernel.shape
    pads = ((kh // 2, kh - 1 - kh // 2), (kw // 2, kw - 1 - kw // 2))
    mode = "reflect" if min(image.shape) > max(kh, kw) else "edge"
    return fftconvolve(np.pad(image, pads, mode=mode), kernel[::-1, ::-1], mode="valid")


def rain_layer(height: int, width: int, rng: RandomSource, preset: RainPreset) -> tuple[np.ndarray, float]:
    """One rain layer in 0..255 (H x W) and its blending weight beta."""
    beta = rng.uniform(*preset.beta)
    density = rng.uniform(*preset.density)
    seeds = (rng.uniform(0.0, 1.0, (height, width)) < density).astype(np.float64)
    seeds = _filter(seeds, SEED_SPREAD)
    length = randint(rng, preset.length[0], preset.length[1])
    angle = rng.uniform(*preset.angle)
    width_px = int(rng.choice(np.array(preset.widths), p=np.array(preset.width_probs)))
    streaks = _filter(seeds, streak_kernel(length, angle, width_px))
    lo, hi = streaks.min(), streaks.max()
    streaks = np.floor((streaks - lo) / (hi - lo) * 255.0) if hi > lo else np.zeros_like(streaks)
    return streaks, float(beta)


@dataclass
class Derain(Task):
    """Synthetic rain streaks added to the clean image: ``rainy = min(clean + beta * rain, 255)``, rounded to 8 bits.

    ``preset``: small, medium (the paper's generator), large, or random (one of the three per image).

    Intervention consistency: the patch is written into the *clean* image and the very same rain layer (same streaks,
    same beta) is added again, so only the content under the rain changes.
    """

    preset: str = "medium"
    display_bound: float | None = None
    name: ClassVar[str] = "derain"
    scale: ClassVar[int] = 1

    def __post_init__(self) -> None:
        if self.preset not in (*RAIN_PRESETS, "random"):
            raise SettingError(f"rain preset={self.preset!r}; choose one of {[*RAIN_PRESETS, 'random']}")

    def _apply(self, clean: torch.Tensor, rain: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        return quantize_8bit(clean.to(torch.float64) + beta.to(torch.float64) * rain.to(torch.float64) / 255.0, "round")

    def degrade(self, clean: torch.Tensor, rng: RandomSource) -> Degraded:
        name = self.preset
        if name == "random":
            name = list(RAIN_PRESETS)[int(rng.choice(len(RAIN_PRESETS)))]
        rain, beta = rain_layer(clean.shape[-2], clean.shape[-1], rng, RAIN_PRESETS[name])
        rain_t = torch.from_numpy(rain).to(torch.float32)[None]
        beta_t = torch.tensor(beta, dtype=torch.float64)
        return Degraded(self._apply(clean, rain_t, beta_t).to(clean.dtype), {"rain": rain_t, "beta": beta_t})

    def intervene(self, degraded: Degraded, clean: torch.Tensor, block: Block, patches: torch.Tensor,
                  rng: np.random.Generator) -> torch.Tensor:
        rows, cols = block.scaled(1)
        rain = degraded.state["rain"][:, rows, cols]
        out = degraded.image.unsqueeze(0).repeat(patches.shape[0], 1, 1, 1)
        out[:, :, rows, cols] = self._apply(patches, rain, degraded.state["beta"]).to(out.dtype)
        return out

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "scale": 1, "preset": self.preset}
