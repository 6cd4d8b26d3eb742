"""EDSR (Lim et al., 2017) in the EDSR-PyTorch layout, with the width W and depth D of the paper's sweeps."""

from __future__ import annotations

import math

import torch
from torch import nn

from cemap.models.base import MeanShift, ModelInfo
from cemap.validation import SettingError


class ResBlock(nn.Module):
    def __init__(self, width: int, res_scale: float) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(width, width, 3, padding=1))
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) * self.res_scale


def pixel_shuffle_upsampler(scale: int, width: int) -> nn.Sequential:
    """conv W -> 4W + pixel shuffle 2, log2(scale) times (or one conv W -> 9W + shuffle 3 for x3)."""
    layers: list[nn.Module] = []
    if scale & (scale - 1) == 0:
        for _ in range(int(math.log2(scale))):
            layers += [nn.Conv2d(width, 4 * width, 3, padding=1), nn.PixelShuffle(2)]
    elif scale == 3:
        layers += [nn.Conv2d(width, 9 * width, 3, padding=1), nn.PixelShuffle(3)]
    else:
        raise SettingError(f"scale={scale} is not supported (use 2^n or 3)")
    return nn.Sequential(*layers)


class EDSR(nn.Module):
    """Mean shift, 3x3 head, ``depth`` residual blocks (conv-ReLU-conv), body conv, global skip, pixel-shuffle
    upsampler, conv to RGB, mean shift back. Inputs in [0, 1] are scaled to ``img_range`` (255 in EDSR-PyTorch)."""

    def __init__(self, scale: int = 4, width: int = 64, depth: int = 16, res_scale: float = 1.0, img_range: float = 255.0) -> None:
        super().__init__()
        self.img_range = img_range
        self.sub_mean = MeanShift(img_range, sign=-1)
        self.add_mean = MeanShift(img_range, sign=1)
        self.head = nn.Sequential(nn.Conv2d(3, width, 3, padding=1))
        self.body = nn.Sequential(*[ResBlock(width, res_scale) for _ in range(depth)], nn.Conv2d(width, width, 3, padding=1))
        self.tail = nn.Sequential(pixel_shuffle_upsampler(scale, width), nn.Conv2d(width, 3, 3, padding=1))
        up_convs = max(1, int(math.log2(scale))) if scale != 3 else 1
        self.info = ModelInfo(scale=scale, same_size=scale == 1, receptive_radius=1 + 2 * depth + 1 + up_convs + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.sub_mean(x * self.img_range)
        x = self.head(x)
        x = x + self.body(x)
        return self.add_mean(self.tail(x)) / self.img_range
