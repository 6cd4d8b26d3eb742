"""Control models: restorers built to have (or not to have) the property an insight's test is about.

A test of "global denoisers stay local" or "far blocks hurt" only counts if it can come out either way; these models
make the answer known in advance. They need no training:

- ``branch="none"``: a fixed Gaussian filter of radius ``radius`` (a local denoiser; negative control for reach and
  for harm: blocks beyond ``radius`` have no effect, and a filter only loses when its neighbours are replaced);
- ``branch="global_mean"``: the same filter plus ``gain * (image mean - centre)`` added to every pixel, a planted
  global pathway (positive control for reach). With ``centre`` at the patch pool's mean brightness it is also a
  planted *harmful* far pathway: the image's own content pushes every output pixel off by ``gain * (mean - centre)``
  and a random patch anywhere moves the mean back towards ``centre``, so far blocks get negative effects on images
  whose mean is away from ``centre``.

``checker`` adds a fixed +/-``checker`` checkerboard to the output: a planted defect that adds ``checker**2`` to the
MSE whatever the image (a constant shift would not: it can offset the clipping bias of a noisy input and *gain*
PSNR, measured +2.7 dB on one ROI) and leaves the maps alone, the worse member of the control pair for tests that
compare PSNR between models.

With ``scale`` > 1 the filtered image is upsampled by bicubic interpolation (the x4 SR versions of the same three
controls; interpolation adds 2 input pixels to the local reach).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cemap.models.base import ModelInfo
from cemap.validation import SettingError

BRANCHES = ("none", "global_mean")


class ControlRestorer(nn.Module):
    """Fixed Gaussian filter (``sigma``, ``radius`` px), bicubic upsampling by ``scale``, and an optional planted
    global-mean branch."""

    def __init__(self, radius: int = 3, sigma: float = 1.5, branch: str = "none", gain: float = 0.0,
                 centre: float = 0.5, scale: int = 1, checker: float = 0.0) -> None:
        super().__init__()
        if branch not in BRANCHES:
            raise SettingError(f"branch={branch!r}; choose one of {BRANCHES}")
        if radius < 1 or sigma <= 0 or not math.isfinite(gain + checker) or scale < 1:
            raise SettingError(f"need radius >= 1, sigma > 0, a finite gain and scale >= 1 (got {radius}, {sigma}, "
                             f"{gain}, {scale})")
        ax = torch.arange(-radius, radius + 1, dtype=torch.float32)
        g = torch.exp(-(ax**2) / (2 * sigma**2))
        kernel = torch.outer(g, g) / torch.outer(g, g).sum()
        self.register_buffer("kernel", kernel.expand(3, 1, -1, -1).clone())
        self.radius, self.branch, self.gain, self.centre, self.scale = radius, branch, float(gain), float(centre), scale
        self.checker = float(checker)
        reach = radius + (2 if scale > 1 else 0)
        self.info = ModelInfo(scale=scale, same_size=scale == 1, receptive_radius=reach if branch == "none" else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.radius
        out = F.conv2d(F.pad(x, (r, r, r, r), mode="replicate"), self.kernel, groups=3)
        if self.scale > 1:
            out = F.interpolate(out, scale_factor=self.scale, mode="bicubic", align_corners=False)
        if self.branch == "global_mean":
            out = out + self.gain * (x.mean(dim=(1, 2, 3), keepdim=True) - self.centre)
        if self.checker:
            h, w = out.shape[-2:]
            signs = (torch.arange(h, device=out.device)[:, None] + torch.arange(w, device=out.device)[None, :]) % 2
            out = out + self.checker * (2.0 * signs.to(out.dtype) - 1.0)
        return out
