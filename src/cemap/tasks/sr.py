"""Super-resolution: bicubic downscaling, and its same-size variant for multi-task models."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from cemap.grid import Block
from cemap.patches import PatchBank
from cemap.resize import Resizer, make_resizer
from cemap.tasks.base import Degraded, RandomSource, Task
from cemap.validation import SettingError


def _check_size(clean: torch.Tensor, scale: int) -> None:
    h, w = clean.shape[-2:]
    if h % scale or w % scale:
        raise SettingError(
            f"image size {h}x{w} is not divisible by the SR scale {scale}; crop it to "
            f"{h - h % scale}x{w - w % scale} (the CLI's crop= option trims to a multiple of the scale)"
        )


@dataclass
class SuperResolution(Task):
    """x``scale`` SR: the input is the clean image downscaled by ``kernel`` (``pil`` = the demo's Pillow bicubic,
    ``matlab`` = MATLAB ``imresize``), stored as 8 bits.

    Intervention consistency: a block of b x b output pixels corresponds to (b/s) x (b/s) input pixels; the natural
    b x b patch is downscaled with the *same* kernel to that size and written into the LR input, so the intervened LR
    block is exactly what the degradation would have produced from that content (up to the kernel's reach across the
    block border, which the paper's protocol also ignores).
    """

    scale: int = 4
    kernel: str = "pil"
    display_bound: float | None = None
    name: ClassVar[str] = "sr"
    resizer: Resizer = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.scale < 2:
            raise SettingError(f"SR scale={self.scale} must be >= 2")
        self.resizer = make_resizer(self.kernel)

    def degrade(self, clean: torch.Tensor, rng: RandomSource) -> Degraded:
        _check_size(clean, self.scale)
        h, w = clean.shape[-2:]
        return Degraded(self.resizer(clean.unsqueeze(0), h // self.scale, w // self.scale)[0])

    def intervene(self, degraded: Degraded, clean: torch.Tensor, block: Block, patches: torch.Tensor,
                  rng: np.random.Generator) -> torch.Tensor:
        rows, cols = block.scaled(self.scale)
        return self._write(degraded, rows, cols, self.resizer(patches, rows.stop - rows.start, cols.stop - cols.start))

    def intervene_drawn(self, degraded: Degraded, clean: torch.Tensor, block: Block, bank: PatchBank,
                        chosen: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """The bank downscaled once per (block size, LR size, kernel) and kept on the device: the Pillow kernel runs
        on the CPU, so resizing every batch's patches sent each batch of a GPU map back to the host."""
        rows, cols = block.scaled(self.scale)
        lr_size = (rows.stop - rows.start, cols.stop - cols.start)
        small = bank.resized(chosen.device, block.height, block.width, lr_size, self.resizer)[chosen]
        return self._write(degraded, rows, cols, small)

    @staticmethod
    def _write(degraded: Degraded, rows: slice, cols: slice, small: torch.Tensor) -> torch.Tensor:
        out = degraded.image.unsqueeze(0).repeat(small.shape[0], 1, 1, 1)
        out[:, :, rows, cols] = small.to(out.dtype)
        return out

    def baseline(self, degraded: list[torch.Tensor], targets: list[torch.Tensor],
                 crop_border: int = 0) -> tuple[str, list[torch.Tensor]]:
        """Bicubic upsampling of the low-resolution input (the task's own resize kernel)."""
        up = make_resizer(self.kernel)
        return "bicubic", [up(d.unsqueeze(0), t.shape[-2], t.shape[-1])[0] for d, t in zip(degraded, targets)]

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "scale": self.scale, "kernel": self.kernel}


@dataclass
class UpsampledSR(Task):
    """Same-size SR input for multi-task ("mix") models: the bicubic LR upsampled back to the HR size.

    Interventions happen in the LR domain, exactly as for :class:`SuperResolution`, and the intervened LR image is then
    upsampled with the same kernel. This keeps the intervention consistent with how the mix model's SR input was made
    (it never sees HR-resolution detail), at the price of a spread of about 2 x ``sr_scale`` pixels around the block
    that the upsampling kernel introduces; the block grid stays in HR pixels.
    """

    sr_scale: int = 4
    kernel: str = "pil"
    display_bound: float | None = None
    name: ClassVar[str] = "sr_upsampled"
    scale: ClassVar[int] = 1
    _lr_task: SuperResolution = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._lr_task = SuperResolution(scale=self.sr_scale, kernel=self.kernel)

    def degrade(self, clean: torch.Tensor, rng: RandomSource) -> Degraded:
        lr = self._lr_task.degrade(clean, rng).image
        h, w = clean.shape[-2:]
        return Degraded(self._lr_task.resizer(lr.unsqueeze(0), h, w)[0], {"lr": lr})

    def intervene(self, degraded: Degraded, clean: torch.Tensor, block: Block, patches: torch.Tensor,
                  rng: np.random.Generator) -> torch.Tensor:
        lr = self._lr_task.intervene(Degraded(degraded.state["lr"]), clean, block, patches, rng)
        return self._upsample(lr, degraded)

    def intervene_drawn(self, degraded: Degraded, clean: torch.Tensor, block: Block, bank: PatchBank,
                        chosen: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        lr = self._lr_task.intervene_drawn(Degraded(degraded.state["lr"]), clean, block, bank, chosen, rng)
        return self._upsample(lr, degraded)

    def _upsample(self, lr: torch.Tensor, degraded: Degraded) -> torch.Tensor:
        h, w = degraded.image.shape[-2:]
        return self._lr_task.resizer(lr, h, w)

    @property
    def block_multiple(self) -> int:
        return self.sr_scale

    @property
    def intervention_spread(self) -> int:
        return 2 * self.sr_scale  # the cubic kernel reaches 2 LR pixels

    def baseline(self, degraded: list[torch.Tensor], targets: list[torch.Tensor],
                 crop_border: int = 0) -> tuple[str, list[torch.Tensor]]:
        """The input is already the bicubic upsampling: it is the classical baseline."""
        return "bicubic", degraded

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "scale": 1, "sr_scale": self.sr_scale, "kernel": self.kernel}
