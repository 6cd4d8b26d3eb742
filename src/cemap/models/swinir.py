"""SwinIR (Liang et al., 2021), BasicSR's implementation, in the four configurations the paper's checkpoints use."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cemap.models import basicsr_compat
from cemap.models.base import ModelInfo, pad_to_multiple


class SwinIR(basicsr_compat.SwinIR):
    """BasicSR's SwinIR with cemap metadata. Variants by argument:

    - classical x4 SR: ``scale=4, upsampler="pixelshuffle", img_size=64``;
    - same-size denoising: ``scale=1, upsampler="", img_size=128`` (output = input + conv_last(features));
    - same-size mix / DR / MIO head: ``scale=1, upsampler="pixelshuffle"`` (conv 180->64 + LeakyReLU, conv 64->3, no
      input skip), ``img_size`` 64 (mix, DR) or 128 (MIO).

    ``img_size`` matters for strict loading only: the shifted-window attention masks are stored buffers of that size;
    any other input size gets masks computed on the fly. Inputs are reflect-padded to a multiple of the window size
    and cropped back.
    """

    def __init__(
        self,
        scale: int = 4,
        img_size: int = 64,
        window_size: int = 8,
        depths: Sequence[int] = (6, 6, 6, 6, 6, 6),
        embed_dim: int = 180,
        num_heads: Sequence[int] = (6, 6, 6, 6, 6, 6),
        mlp_ratio: float = 2.0,
        upsampler: str = "pixelshuffle",
        resi_connection: str = "1conv",
        img_range: float = 1.0,
        drop_path_rate: float = 0.1,
    ) -> None:
        super().__init__(
            upscale=scale, img_size=img_size, window_size=window_size, depths=list(depths), embed_dim=embed_dim,
            num_heads=list(num_heads), mlp_ratio=mlp_ratio, upsampler=upsampler, resi_connection=resi_connection,
            img_range=img_range, drop_path_rate=drop_path_rate,
        )
        self.info = ModelInfo(scale=scale, same_size=scale == 1, receptive_radius=None)
        self.scale, self.window = scale, window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded, h, w = pad_to_multiple(x, self.window)
        return super().forward(padded)[..., : h * self.scale, : w * self.scale]
