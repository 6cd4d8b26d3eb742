"""The task interface: how a clean image is degraded, and how one block is intervened on consistently.

A task turns a clean image into the model's input (``degrade``) and, for one block of the grid, replaces that block's
content by natural patches pushed through the *same* degradation (``intervene``). Everything random is drawn from the
generator the engine passes in, so maps are reproducible and two models see identical interventions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np
import torch

from cemap.grid import Block
from cemap.imageio import to_tensor, to_uint8
from cemap.patches import PatchBank
from cemap.validation import SettingError

RandomSource = np.random.Generator | np.random.RandomState
"""Degradations accept either; the engine passes ``RandomState(seed)`` (the paper's demo stream) for the degradation and
a per-block ``Generator`` for interventions."""


def randint(rng: RandomSource, low: int, high: int) -> int:
    """An integer in [low, high] (inclusive) from either kind of numpy generator."""
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(low, high + 1))
    return int(rng.randint(low, high + 1))


@dataclass
class Degraded:
    """The model input (C, h, w) in [0, 1] plus whatever an intervention must reuse (rain layer, kernel, noise)."""

    image: torch.Tensor
    state: dict[str, torch.Tensor] = field(default_factory=dict)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Degraded:
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=device, dtype=dtype if (dtype is not None and t.is_floating_point()) else t.dtype)

        return Degraded(move(self.image), {k: move(v) for k, v in self.state.items()})


def quantize_8bit(img: torch.Tensor, mode: str) -> torch.Tensor:
    """Store ``img`` in [0, 1] as an 8-bit image would: ``truncate`` (the paper's ``uint8`` cast), ``round`` or ``none``."""
    img = img.clamp(0.0, 1.0)
    if mode == "truncate":
        return torch.floor(img * 255.0) / 255.0
    if mode == "round":
        return torch.round(img * 255.0) / 255.0
    if mode == "none":
        return img
    raise SettingError(f"quantize={mode!r}; choose truncate, round or none")


class Task(ABC):
    """A restoration task as the CEM engine sees it.

    ``scale`` is output size / input size (1 for same-size tasks). ``display_bound`` is the default symmetric colour
    bound (in metric units, dB for PSNR) of figures; ``None`` means "the largest absolute effect".
    """

    name: str = "task"
    scale: int = 1
    display_bound: float | None = None

    @abstractmethod
    def degrade(self, clean: torch.Tensor, rng: RandomSource) -> Degraded:
        """Degrade a clean (3, H, W) image in [0, 1] into the model's input."""

    @abstractmethod
    def intervene(
        self,
        degraded: Degraded,
        clean: torch.Tensor,
        block: Block,
        patches: torch.Tensor,
        rng: np.random.Generator,
    ) -> torch.Tensor:
        """Return (n, C, h, w) copies of ``degraded.image`` whose ``block`` carries the n ``patches`` (n, 3, bh, bw).

        ``block`` and ``patches`` are in output (clean) pixels; the task maps them into its input domain.
        ``degraded`` and ``clean`` must not be modified.
        """

    def intervene_drawn(self, degraded: Degraded, clean: torch.Tensor, block: Block, bank: PatchBank,
                        chosen: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """:meth:`intervene` with the bank's patches ``chosen`` (indices on the engine's device). Tasks that transform
        every patch the same way whatever the image (SR's downscale) override it to transform the bank once and keep
        it on the device, instead of once per batch."""
        patches = bank.tensor(chosen.device, block.height, block.width)[chosen]
        return self.intervene(degraded, clean, block, patches, rng)

    @property
    def block_multiple(self) -> int:
        """Block sizes and image sizes must be multiples of this (the scale, for tasks that work at low resolution)."""
        return self.scale

    @property
    def intervention_spread(self) -> int:
        """Input pixels beyond a block that an intervention may change (0: only the block's own pixels). The locality
        acceleration relies on it, after checking it on a sample block."""
        return 0

    def baseline(self, degraded: list[torch.Tensor], targets: list[torch.Tensor],
                 crop_border: int = 0) -> tuple[str, list[torch.Tensor]]:
        """The task's classical answer on evaluation images (what a trained model must beat): its name and outputs.
        Here the degraded input itself, the bar for tasks without a classical method computed here (deraining,
        deblurring); SR and denoising override it."""
        return "degraded input", degraded

    def input_view(self, clean: np.ndarray, seed: int) -> np.ndarray:
        """The degraded input a map of ``clean`` (H x W x 3 uint8) with ``seed`` was computed on, as uint8 on the
        output grid (SR inputs repeated ``scale`` times): what map figures are blended over, as in the paper."""
        view = to_uint8(self.degrade(to_tensor(clean), np.random.RandomState(seed)).image)
        return np.repeat(np.repeat(view, self.scale, axis=0), self.scale, axis=1)

    def describe(self) -> dict[str, object]:
        """Settings that change results, for result metadata and cache keys."""
        return {"name": self.name, "scale": self.scale}
