"""DnCNN (Zhang et al., 2017) in the KAIR layout, so the authors' denoiser loads strictly."""

from __future__ import annotations

import torch
from torch import nn

from cemap.models.base import ModelInfo


class DnCNN(nn.Module):
    """``depth`` 3x3 convolutions of ``features`` channels, ReLU after all but the last, predicting the noise.

    Keys ``model.{0,2,...,2*(depth-1)}.{weight,bias}`` as in KAIR's ``act_mode='R'`` (no BatchNorm); output = input -
    predicted noise. Receptive field 2 * depth + 1 pixels (41 for the paper's 20 layers).
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 3, features: int = 64, depth: int = 20) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError(f"DnCNN depth={depth} must be >= 2")
        layers: list[nn.Module] = [nn.Conv2d(in_channels, features, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(features, features, 3, padding=1), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(features, out_channels, 3, padding=1))
        self.model = nn.Sequential(*layers)
        self.info = ModelInfo(scale=1, same_size=True, receptive_radius=depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.model(x)
