"""What every model in the zoo declares about itself, and the padding every model applies to any H x W input."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

DIV2K_MEAN = (0.4488, 0.4371, 0.4040)
"""RGB mean of DIV2K, subtracted by EDSR, RCAN, SwinIR and HAT before their first convolution."""


@dataclass(frozen=True)
class ModelInfo:
    """``scale``: output / input size. ``receptive_radius``: input pixels a single output pixel can see on each side
    (None for global models: attention over the whole image, global pooling, image-size-dependent pooling)."""

    scale: int = 1
    same_size: bool = True
    receptive_radius: int | None = None

    @property
    def is_local(self) -> bool:
        return self.receptive_radius is not None

    @property
    def receptive_field(self) -> int | None:
        """Side of the square receptive field in input pixels (41 for the 20-layer DnCNN)."""
        return None if self.receptive_radius is None else 2 * self.receptive_radius + 1


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, int, int]:
    """Pad the bottom and right of ``x`` (reflecting, as SwinIR's and HAT's test code do) to a multiple; returns the
    padded tensor and the original height and width, so the caller can crop its output back."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, h, w


class MeanShift(nn.Conv2d):
    """Adds (``sign`` = 1) or subtracts (-1) the RGB mean times ``img_range`` as a frozen 1x1 convolution, stored in the
    state dict as EDSR-PyTorch stores it (``sub_mean`` / ``add_mean``)."""

    def __init__(self, img_range: float, mean: tuple[float, float, float] = DIV2K_MEAN, sign: int = -1) -> None:
        super().__init__(3, 3, kernel_size=1)
        with torch.no_grad():
            self.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            self.bias.copy_(sign * img_range * torch.tensor(mean))
        for p in self.parameters():
            p.requires_grad = False
