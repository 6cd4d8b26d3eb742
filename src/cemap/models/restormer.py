"""Restormer (Zamir et al., 2022): a U-shaped transformer with channel-wise ("transposed") attention.

Its attention mixes every spatial position of the feature map (the covariance over H x W), so it is global.
Keys follow the authors' checkpoints; ``layer_norm`` = ``BiasFree`` (denoising) or ``WithBias`` (deraining).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cemap.models.base import ModelInfo, pad_to_multiple
from cemap.validation import SettingError


class LayerNorm2d(nn.Module):
    """Per-pixel LayerNorm over channels; ``bias=False`` also skips the mean subtraction (Restormer's BiasFree)."""

    def __init__(self, dim: int, with_bias: bool) -> None:
        super().__init__()
        self.body = _LayerNormParams(dim, with_bias)
        self.with_bias = with_bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var = x.var(dim=1, keepdim=True, unbiased=False)
        if self.with_bias:
            mu = x.mean(dim=1, keepdim=True)
            return (x - mu) / torch.sqrt(var + 1e-5) * self.body.weight.view(1, -1, 1, 1) + self.body.bias.view(1, -1, 1, 1)
        return x / torch.sqrt(var + 1e-5) * self.body.weight.view(1, -1, 1, 1)


class _LayerNormParams(nn.Module):
    def __init__(self, dim: int, with_bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        if with_bias:
            self.bias = nn.Parameter(torch.zeros(dim))


class FeedForward(nn.Module):
    """Gated depth-wise convolutional feed-forward network (GDFN)."""

    def __init__(self, dim: int, expansion: float) -> None:
        super().__init__()
        hidden = int(dim * expansion)
        self.project_in = nn.Conv2d(dim, hidden * 2, 1, bias=False)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2, bias=False)
        self.project_out = nn.Conv2d(hidden, dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(a) * b)


class Attention(nn.Module):
    """Multi-Dconv head transposed attention (MDTA): attention between channels, over all pixels."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=False)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, 3, padding=1, groups=dim * 3, bias=False)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1)
        q, k, v = (t.reshape(b, self.heads, c // self.heads, h * w) for t in (q, k, v))
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attn = ((q @ k.transpose(-2, -1)) * self.temperature).softmax(dim=-1)
        return self.project_out((attn @ v).reshape(b, c, h, w))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, expansion: float, with_bias: bool) -> None:
        super().__init__()
        self.norm1 = LayerNorm2d(dim, with_bias)
        self.attn = Attention(dim, heads)
        self.norm2 = LayerNorm2d(dim, with_bias)
        self.ffn = FeedForward(dim, expansion)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class Downsample(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(dim, dim // 2, 3, padding=1, bias=False), nn.PixelUnshuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Upsample(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(dim, dim * 2, 3, padding=1, bias=False), nn.PixelShuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class OverlapPatchEmbed(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Restormer(nn.Module):
    """Four-level encoder-decoder of transformer blocks, refinement blocks, and a global input skip.

    Paper size: ``dim`` 48, ``blocks`` (4, 6, 6, 8), ``refinement_blocks`` 4, ``heads`` (1, 2, 4, 8), FFN expansion
    2.66, convolutions without bias. Inputs are reflect-padded to a multiple of 8 (three 2x downsamplings).
    """

    def __init__(
        self,
        dim: int = 48,
        blocks: Sequence[int] = (4, 6, 6, 8),
        refinement_blocks: int = 4,
        heads: Sequence[int] = (1, 2, 4, 8),
        ffn_expansion: float = 2.66,
        layer_norm: str = "WithBias",
    ) -> None:
        super().__init__()
        if layer_norm not in ("WithBias", "BiasFree"):
            raise SettingError(f"layer_norm={layer_norm!r}; choose WithBias or BiasFree")
        wb = layer_norm == "WithBias"

        def stage(d: int, n: int, h: int) -> nn.Sequential:
            return nn.Sequential(*[TransformerBlock(d, h, ffn_expansion, wb) for _ in range(n)])

        self.patch_embed = OverlapPatchEmbed(dim)
        self.encoder_level1 = stage(dim, blocks[0], heads[0])
        self.down1_2 = Downsample(dim)
        self.encoder_level2 = stage(dim * 2, blocks[1], heads[1])
        self.down2_3 = Downsample(dim * 2)
        self.encoder_level3 = stage(dim * 4, blocks[2], heads[2])
        self.down3_4 = Downsample(dim * 4)
        self.latent = stage(dim * 8, blocks[3], heads[3])
        self.up4_3 = Upsample(dim * 8)
        self.reduce_chan_level3 = nn.Conv2d(dim * 8, dim * 4, 1, bias=False)
        self.decoder_level3 = stage(dim * 4, blocks[2], heads[2])
        self.up3_2 = Upsample(dim * 4)
        self.reduce_chan_level2 = nn.Conv2d(dim * 4, dim * 2, 1, bias=False)
        self.decoder_level2 = stage(dim * 2, blocks[1], heads[1])
        self.up2_1 = Upsample(dim * 2)
        self.decoder_level1 = stage(dim * 2, blocks[0], heads[0])
        self.refinement = stage(dim * 2, refinement_blocks, heads[0])
        self.output = nn.Conv2d(dim * 2, 3, 3, padding=1, bias=False)
        self.info = ModelInfo(scale=1, same_size=True, receptive_radius=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inp, h, w = pad_to_multiple(x, 8)
        e1 = self.encoder_level1(self.patch_embed(inp))
        e2 = self.encoder_level2(self.down1_2(e1))
        e3 = self.encoder_level3(self.down2_3(e2))
        lat = self.latent(self.down3_4(e3))
        d3 = self.decoder_level3(self.reduce_chan_level3(torch.cat([self.up4_3(lat), e3], 1)))
        d2 = self.decoder_level2(self.reduce_chan_level2(torch.cat([self.up3_2(d3), e2], 1)))
        d1 = self.decoder_level1(torch.cat([self.up2_1(d2), e1], 1))
        out = self.output(self.refinement(d1)) + inp
        return out[..., :h, :w]
