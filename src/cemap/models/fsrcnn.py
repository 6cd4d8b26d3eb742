"""FSRCNN (Dong et al., 2016) with the width ``s`` and depth ``m`` of the paper's receptive-field sweeps."""

from __future__ import annotations

import torch
from torch import nn

from cemap.models.base import ModelInfo
from cemap.validation import SettingError


class FSRCNN(nn.Module):
    """Feature extraction (5x5, ``d`` ch), shrinking (1x1 to ``s``), ``m`` mapping layers (3x3), expanding (1x1 to
    ``d``), PReLU after each, and a 9x9 transposed convolution with stride ``scale``.

    Keys ``first_part``, ``mid_part``, ``last_part`` as in the authors' FSRCNN-s-m checkpoints (s = 16..128 with
    m = 6; m = 2..16 with s = 48).

    ``init="paper"`` initialises as Dong et al. did: convolutions He-normal for PReLU, the deconvolution from
    N(0, 0.001^2), zero biases (PyTorch's default gives the deconvolution weights up to 0.064, so the untrained
    output is strong noise); ``init="default"`` keeps PyTorch's (the initialisation does not matter when loading).
    """

    def __init__(self, scale: int = 4, d: int = 56, s: int = 48, m: int = 6, init: str = "default") -> None:
        super().__init__()
        if init not in ("paper", "default"):
            raise SettingError(f"FSRCNN init={init!r}; choose paper or default")
        self.first_part = nn.Sequential(nn.Conv2d(3, d, 5, padding=2), nn.PReLU(d))
        mid: list[nn.Module] = [nn.Conv2d(d, s, 1), nn.PReLU(s)]
        for _ in range(m):
            mid += [nn.Conv2d(s, s, 3, padding=1), nn.PReLU(s)]
        mid += [nn.Conv2d(s, d, 1), nn.PReLU(d)]
        self.mid_part = nn.Sequential(*mid)
        self.last_part = nn.ConvTranspose2d(d, 3, 9, stride=scale, padding=4, output_padding=scale - 1)
        # 5x5 head (2) + m 3x3 layers (m) + the 9x9 deconvolution (at most 2 input px for scale >= 2)
        self.info = ModelInfo(scale=scale, same_size=False, receptive_radius=2 + m + 2)
        if init == "paper":
            self._paper_init()

    def _paper_init(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, a=0.25, mode="fan_in", nonlinearity="leaky_relu")
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.last_part.weight, std=0.001)
        nn.init.zeros_(self.last_part.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_part(self.mid_part(self.first_part(x)))
