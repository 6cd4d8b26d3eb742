"""HAT (Chen et al., CVPR 2023): hybrid attention transformer for x4 SR, in the layout of the authors' checkpoint.

Each hybrid attention block (HAB) runs (shifted) window self-attention and, in parallel, a convolution block with
global channel attention (CAB); each group ends with an overlapping cross-attention block (OCAB) whose keys and
values come from enlarged windows. Swin building blocks (MLP, patch (un)embedding, window partitioning, upsampler)
come from BasicSR through :mod:`cemap.models.basicsr_compat`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cemap.models.base import DIV2K_MEAN, ModelInfo, pad_to_multiple
from cemap.models.basicsr_compat import (
    Mlp,
    PatchEmbed,
    PatchUnEmbed,
    Upsample,
    window_partition,
    window_reverse,
)


def _grid(size: int) -> torch.Tensor:
    return torch.stack(torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")).flatten(1)


def self_attention_index(window: int) -> torch.Tensor:
    """(window^2, window^2) index into the (2 window - 1)^2 relative-position bias table of window self-attention."""
    rel = (_grid(window)[:, :, None] - _grid(window)[:, None, :]).permute(1, 2, 0).contiguous()
    rel += window - 1
    rel[:, :, 0] *= 2 * window - 1
    return rel.sum(-1)


def overlap_attention_index(window: int, overlap: int) -> torch.Tensor:
    """(window^2, overlap^2) index into the (window + overlap - 1)^2 bias table of overlapping cross-attention."""
    rel = (_grid(overlap)[:, None, :] - _grid(window)[:, :, None]).permute(1, 2, 0).contiguous()
    rel += window - overlap + 1
    rel[:, :, 0] *= window + overlap - 1
    return rel.sum(-1)


class ChannelAttention(nn.Module):
    def __init__(self, features: int, squeeze_factor: int) -> None:
        super().__init__()
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(features, features // squeeze_factor, 1), nn.ReLU(inplace=True),
            nn.Conv2d(features // squeeze_factor, features, 1), nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.attention(x)


class CAB(nn.Module):
    def __init__(self, features: int, compress_ratio: int, squeeze_factor: int) -> None:
        super().__init__()
        self.cab = nn.Sequential(
            nn.Conv2d(features, features // compress_ratio, 3, padding=1), nn.GELU(),
            nn.Conv2d(features // compress_ratio, features, 3, padding=1), ChannelAttention(features, squeeze_factor),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cab(x)


class WindowAttention(nn.Module):
    def __init__(self, dim: int, window_size: int, heads: int) -> None:
        super().__init__()
        self.window_size, self.heads = window_size, heads
        self.scale = (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, index: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[index.view(-1)].view(n, n, -1).permute(2, 0, 1)
        attn = attn + bias.unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(b // nw, nw, self.heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.heads, n, n)
        return self.proj((attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, c))


class HAB(nn.Module):
    """Hybrid attention block: window attention + scaled convolution block, then an MLP."""

    def __init__(self, dim: int, heads: int, window_size: int, shift_size: int, compress_ratio: int,
                 squeeze_factor: int, conv_scale: float, mlp_ratio: float) -> None:
        super().__init__()
        self.window_size, self.shift_size, self.conv_scale = window_size, shift_size, conv_scale
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, heads)
        self.conv_block = CAB(dim, compress_ratio, squeeze_factor)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: torch.Tensor, size: tuple[int, int], index: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h, w = size
        b, _, c = x.shape
        shortcut = x
        x = self.norm1(x).view(b, h, w, c)
        conv_x = self.conv_block(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1).reshape(b, h * w, c)
        s, ws = self.shift_size, self.window_size
        shifted = torch.roll(x, shifts=(-s, -s), dims=(1, 2)) if s else x
        windows = window_partition(shifted, ws).view(-1, ws * ws, c)
        attn = window_reverse(self.attn(windows, index, mask if s else None).view(-1, ws, ws, c), ws, h, w)
        attn = torch.roll(attn, shifts=(s, s), dims=(1, 2)) if s else attn
        x = shortcut + attn.reshape(b, h * w, c) + conv_x * self.conv_scale
        return x + self.mlp(self.norm2(x))


class OCAB(nn.Module):
    """Overlapping cross-attention: queries from a window, keys and values from the enlarged window around it."""

    def __init__(self, dim: int, window_size: int, overlap_ratio: float, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.dim, self.heads, self.window_size = dim, heads, window_size
        self.scale = (dim // heads) ** -0.5
        self.overlap = int(window_size * overlap_ratio) + window_size
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, dim * 3)
        self.unfold = nn.Unfold(kernel_size=self.overlap, stride=window_size, padding=(self.overlap - window_size) // 2)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((window_size + self.overlap - 1) ** 2, heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: torch.Tensor, size: tuple[int, int], index: torch.Tensor) -> torch.Tensor:
        h, w = size
        b, _, c = x.shape
        ws, ow, d = self.window_size, self.overlap, self.dim // self.heads
        shortcut = x
        qkv = self.qkv(self.norm1(x).view(b, h, w, c)).reshape(b, h, w, 3, c).permute(3, 0, 4, 1, 2)
        q = window_partition(qkv[0].permute(0, 2, 3, 1), ws).view(-1, ws * ws, c)
        kv = self.unfold(torch.cat((qkv[1], qkv[2]), dim=1))  # b, 2*c*ow*ow, nw
        nw = kv.shape[-1]
        kv = kv.view(b, 2, c, ow * ow, nw).permute(1, 0, 4, 3, 2).reshape(2, b * nw, ow * ow, c)
        k, v = kv[0], kv[1]
        bn = q.shape[0]
        q = q.reshape(bn, ws * ws, self.heads, d).permute(0, 2, 1, 3) * self.scale
        k = k.reshape(bn, ow * ow, self.heads, d).permute(0, 2, 1, 3)
        v = v.reshape(bn, ow * ow, self.heads, d).permute(0, 2, 1, 3)
        bias = self.relative_position_bias_table[index.view(-1)].view(ws * ws, ow * ow, -1).permute(2, 0, 1)
        attn = ((q @ k.transpose(-2, -1)) + bias.unsqueeze(0)).softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(bn, ws * ws, self.dim).view(-1, ws, ws, self.dim)
        x = self.proj(window_reverse(out, ws, h, w).view(b, h * w, self.dim)) + shortcut
        return x + self.mlp(self.norm2(x))


class AttenBlocks(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, window_size: int, compress_ratio: int, squeeze_factor: int,
                 conv_scale: float, overlap_ratio: float, mlp_ratio: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([
            HAB(dim, heads, window_size, 0 if i % 2 == 0 else window_size // 2, compress_ratio, squeeze_factor,
                conv_scale, mlp_ratio)
            for i in range(depth)
        ])
        self.overlap_attn = OCAB(dim, window_size, overlap_ratio, heads, mlp_ratio)

    def forward(self, x: torch.Tensor, size: tuple[int, int], params: dict[str, torch.Tensor]) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, size, params["rpi_sa"], params["attn_mask"])
        return self.overlap_attn(x, size, params["rpi_oca"])


class RHAG(nn.Module):
    """Residual hybrid attention group: attention blocks, a 3x3 conv, and a residual connection."""

    def __init__(self, dim: int, img_size: int, **blocks: object) -> None:
        super().__init__()
        self.residual_group = AttenBlocks(dim, **blocks)  # type: ignore[arg-type]
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)
        self.patch_embed = PatchEmbed(img_size=img_size, patch_size=1, in_chans=0, embed_dim=dim, norm_layer=None)
        self.patch_unembed = PatchUnEmbed(img_size=img_size, patch_size=1, in_chans=0, embed_dim=dim, norm_layer=None)

    def forward(self, x: torch.Tensor, size: tuple[int, int], params: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.patch_embed(self.conv(self.patch_unembed(self.residual_group(x, size, params), size))) + x


class HAT(nn.Module):
    """HAT for x``scale`` SR. Paper size: embedding 180, 6 groups of depth 6, 6 heads, window 16, compress ratio 3,
    squeeze factor 30, conv scale 0.01, overlap ratio 0.5, MLP ratio 2. Inputs are reflect-padded to a multiple of the
    window size and cropped back."""

    def __init__(
        self,
        scale: int = 4,
        img_size: int = 64,
        embed_dim: int = 180,
        depths: Sequence[int] = (6, 6, 6, 6, 6, 6),
        num_heads: Sequence[int] = (6, 6, 6, 6, 6, 6),
        window_size: int = 16,
        compress_ratio: int = 3,
        squeeze_factor: int = 30,
        conv_scale: float = 0.01,
        overlap_ratio: float = 0.5,
        mlp_ratio: float = 2.0,
        num_feat: int = 64,
        img_range: float = 1.0,
    ) -> None:
        super().__init__()
        self.scale, self.window_size, self.img_range = scale, window_size, img_range
        self.register_buffer("mean", torch.tensor(DIV2K_MEAN).view(1, 3, 1, 1), persistent=False)
        overlap = int(window_size * overlap_ratio) + window_size
        self.register_buffer("relative_position_index_SA", self_attention_index(window_size))
        self.register_buffer("relative_position_index_OCA", overlap_attention_index(window_size, overlap))
        self.conv_first = nn.Conv2d(3, embed_dim, 3, padding=1)
        self.patch_embed = PatchEmbed(img_size=img_size, patch_size=1, in_chans=embed_dim, embed_dim=embed_dim,
                                      norm_layer=nn.LayerNorm)
        self.patch_unembed = PatchUnEmbed(img_size=img_size, patch_size=1, in_chans=embed_dim, embed_dim=embed_dim,
                                          norm_layer=None)
        self.layers = nn.ModuleList([
            RHAG(embed_dim, img_size, depth=depth, heads=heads, window_size=window_size, compress_ratio=compress_ratio,
                 squeeze_factor=squeeze_factor, conv_scale=conv_scale, overlap_ratio=overlap_ratio, mlp_ratio=mlp_ratio)
            for depth, heads in zip(depths, num_heads)
        ])
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, padding=1)
        self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, num_feat, 3, padding=1), nn.LeakyReLU(inplace=True))
        self.upsample = Upsample(scale, num_feat)
        self.conv_last = nn.Conv2d(num_feat, 3, 3, padding=1)
        self.info = ModelInfo(scale=scale, same_size=False, receptive_radius=None)

    def attention_mask(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        """Mask of the shifted windows: -100 between positions that the cyclic shift brought together."""
        ws, s = self.window_size, self.window_size // 2
        img = torch.zeros((1, h, w, 1), device=device)
        cnt = 0
        for hs in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
            for wsl in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
                img[:, hs, wsl, :] = cnt
                cnt += 1
        windows = window_partition(img, ws).view(-1, ws * ws)
        mask = windows.unsqueeze(1) - windows.unsqueeze(2)
        return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, h, w = pad_to_multiple(x, self.window_size)
        x = (x - self.mean) * self.img_range
        x = self.conv_first(x)
        size = (x.shape[2], x.shape[3])
        params = {"attn_mask": self.attention_mask(*size, x.device), "rpi_sa": self.relative_position_index_SA,
                  "rpi_oca": self.relative_position_index_OCA}
        feats = self.patch_embed(x)
        for layer in self.layers:
            feats = layer(feats, size, params)
        feats = self.patch_unembed(self.norm(feats), size)
        x = self.conv_after_body(feats) + x
        x = self.conv_last(self.upsample(self.conv_before_upsample(x)))
        x = x / self.img_range + self.mean
        return x[..., : h * self.scale, : w * self.scale]
