"""SRResNet as BasicSR's MSRResNet (x4) and its same-size variant used for denoising, deraining and mix models."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cemap.models.base import ModelInfo
from cemap.validation import SettingError


class ResidualBlockNoBN(nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class SRResNet(nn.Module):
    """``blocks`` residual blocks without BatchNorm, then (for ``scale`` 4) two conv + pixel-shuffle stages, ``conv_hr``
    and ``conv_last`` with LeakyReLU(0.1), plus the bilinear-upsampled input (the input itself when ``scale`` = 1).

    Keys ``conv_first``, ``body.{i}.conv1/2``, ``upconv1/2``, ``conv_hr``, ``conv_last``: BasicSR's MSRResNet at x4, and
    the layout of the authors' same-size SRResNet_DN / _DR / _mix / _MIO checkpoints at ``scale`` = 1.
    """

    def __init__(self, scale: int = 4, features: int = 64, blocks: int = 16) -> None:
        super().__init__()
        if scale not in (1, 2, 3, 4):
            raise SettingError(f"SRResNet scale={scale}; choose 1, 2, 3 or 4")
        self.scale = scale
        self.conv_first = nn.Conv2d(3, features, 3, padding=1)
        self.body = nn.Sequential(*[ResidualBlockNoBN(features) for _ in range(blocks)])
        if scale in (2, 3):
            self.upconv1 = nn.Conv2d(features, features * scale * scale, 3, padding=1)
            self.pixel_shuffle = nn.PixelShuffle(scale)
        elif scale == 4:
            self.upconv1 = nn.Conv2d(features, features * 4, 3, padding=1)
            self.upconv2 = nn.Conv2d(features, features * 4, 3, padding=1)
            self.pixel_shuffle = nn.PixelShuffle(2)
        self.conv_hr = nn.Conv2d(features, features, 3, padding=1)
        self.conv_last = nn.Conv2d(features, 3, 3, padding=1)
        self.lrelu = nn.LeakyReLU(0.1)
        up = {1: 0, 2: 1, 3: 1, 4: 2}[scale]
        self.info = ModelInfo(scale=scale, same_size=scale == 1, receptive_radius=1 + 2 * blocks + up + 2 + (1 if scale > 1 else 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.lrelu(self.conv_first(x))
        out = self.body(out)
        if self.scale == 4:
            out = self.lrelu(self.pixel_shuffle(self.upconv1(out)))
            out = self.lrelu(self.pixel_shuffle(self.upconv2(out)))
        elif self.scale in (2, 3):
            out = self.lrelu(self.pixel_shuffle(self.upconv1(out)))
        out = self.conv_last(self.lrelu(self.conv_hr(out)))
        base = x if self.scale == 1 else F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
        return out + base
