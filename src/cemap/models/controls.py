"""Control models: denoisers built to have (or not to have) the property an insight's test is about.

A test of "global denoisers stay local" or "far blocks hurt" only counts if it can come out either way; these models
make the answer known in advance. They need no training:

- ``branch="none"``: a fixed Gaussian filter of radius ``radius`` (a local denoiser; negative control for reach and
  for harm: blocks beyond ``radius`` have no effect, and a filter only loses when its neighbours are replaced);
- ``branch="global_mean"``: the same filter plus ``gain * (image mean - centre)`` added to every pixel, a planted
  global pathway (positive control for reach). With ``centre`` at the patch pool's mean brightness it is also a
  planted *harmful* far pathway: the image's own content pushes every output pixel off by ``gain * (mean - centre)``
  and a random patch anywhere moves the mean back towards ``centre``, so far blocks get negative effects on images
  whose mean is away from ``centre``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cemap.models.base import ModelInfo

BRANCHES = ("none", "global_mean")


class ControlDenoiser(nn.Module):
    """Fixed Gaussian filter (``sigma``, ``radius`` px) with an optional planted global-mean branch."""

    def __init__(self, radius: int = 3, sigma: float = 1.5, branch: str = "none", gain: float = 0.0,
                 centre: float = 0.5) -> None:
        super().__init__()
        if branch not in BRANCHES:
            raise ValueError(f"branch={branch!r}; choose one of {BRANCHES}")
        if radius < 1 or sigma <= 0 or not math.isfinite(gain):
            raise ValueError(f"need radius >= 1, sigma > 0 and a finite gain (got {radius}, {sigma}, {gain})")
        ax = torch.arange(-radius, radius + 1, dtype=torch.float32)
        g = torch.exp(-(ax**2) / (2 * sigma**2))
        kernel = torch.outer(g, g) / torch.outer(g, g).sum()
        self.register_buffer("kernel", kernel.expand(3, 1, -1, -1).clone())
        self.radius, self.branch, self.gain, self.centre = radius, branch, float(gain), float(centre)
        self.info = ModelInfo(scale=1, same_size=True, receptive_radius=radius if branch == "none" else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.radius
        out = F.conv2d(F.pad(x, (r, r, r, r), mode="replicate"), self.kernel, groups=3)
        if self.branch == "global_mean":
            out = out + self.gain * (x.mean(dim=(1, 2, 3), keepdim=True) - self.centre)
        return out
