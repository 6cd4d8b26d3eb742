"""SRCNN (Dong et al., 2014): three convolutions on the bicubic-upsampled input."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cemap.models.base import ModelInfo


class SRCNN(nn.Module):
    """9-5-5 convolutions (``features`` = (64, 32) channels) after an in-network bicubic x``scale`` upsampling.

    Keys ``conv1``, ``conv2``, ``conv3`` as in the authors' SRCNN checkpoint.
    """

    def __init__(self, scale: int = 4, features: tuple[int, int] = (64, 32), kernels: tuple[int, int, int] = (9, 5, 5)) -> None:
        super().__init__()
        f1, f2 = features
        k1, k2, k3 = kernels
        self.scale = scale
        self.conv1 = nn.Conv2d(3, f1, k1, padding=k1 // 2)
        self.conv2 = nn.Conv2d(f1, f2, k2, padding=k2 // 2)
        self.conv3 = nn.Conv2d(f2, 3, k3, padding=k3 // 2)
        hr_radius = (k1 + k2 + k3 - 3) // 2
        self.info = ModelInfo(scale=scale, same_size=scale == 1, receptive_radius=2 + -(-hr_radius // scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        return self.conv3(x)
