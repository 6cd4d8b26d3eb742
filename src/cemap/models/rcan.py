"""RCAN (Zhang et al., 2018): one class for every channel-attention variant the paper compares.

``channel_attention`` chooses how each residual channel-attention block (RCAB) pools its features before the
squeeze-excitation:

| option | pooling | reach |
|---|---|---|
| ``global`` | global average (the original RCAN) | global |
| ``none`` | no attention at all (plain residual blocks) | local |
| ``half`` | the first half of the groups global, the rest none | global |
| ``window`` | average over ``pooling`` x ``pooling`` windows (stride = window), map upsampled back (nearest) | local, wide |
| ``grid`` | adaptive average to a ``pooling`` x ``pooling`` grid of regions, map upsampled back | global |

``layout`` picks the state-dict key names: ``basicsr`` (``conv_first``, ``body.{g}.residual_group.{b}.rcab``, ...),
the layout of the authors' variant checkpoints, or ``official`` (EDSR-PyTorch ``head`` / ``body`` / ``tail`` with
``sub_mean`` / ``add_mean``), the layout of the released x4 RCAN. ``scale`` = 1 gives the same-size denoising /
deraining RCAN (no upsampler, no input skip: output = conv_last(features) / 255 + mean).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cemap.models.base import DIV2K_MEAN, MeanShift, ModelInfo
from cemap.models.edsr import pixel_shuffle_upsampler
from cemap.validation import SettingError

CHANNEL_ATTENTION = ("global", "none", "half", "window", "grid")


def repeat_windows(w: torch.Tensor, pooling: int, like: torch.Tensor) -> torch.Tensor:
    """Each window's gate repeated over its ``pooling`` x ``pooling`` pixels, laid out in memory like ``like``.

    Exact (a copy, unlike ``F.interpolate``, whose nearest index rounds wrongly for some window sizes, e.g. 41), and
    in ``like``'s layout so that the gating product does not mix layouts: on channels-last features that product was
    most of the window model's non-convolution time (4x slower on an AVX2 CPU).
    """
    n, c, hp, wp = w.shape
    if like.is_contiguous(memory_format=torch.channels_last) and not like.is_contiguous():
        nhwc = w.permute(0, 2, 3, 1)[:, :, None, :, None, :].expand(n, hp, pooling, wp, pooling, c)
        return nhwc.reshape(n, hp * pooling, wp * pooling, c).permute(0, 3, 1, 2)
    return w[:, :, :, None, :, None].expand(n, c, hp, pooling, wp, pooling).reshape(n, c, hp * pooling, wp * pooling)


class ChannelAttention(nn.Module):
    """Squeeze-excitation on pooled features; ``pooling`` sets where the pooled statistics come from."""

    def __init__(self, features: int, reduction: int, mode: str = "global", pooling: int = 1, layout: str = "basicsr") -> None:
        super().__init__()
        self.mode, self.pooling = mode, pooling
        squeeze = [nn.Conv2d(features, features // reduction, 1), nn.ReLU(inplace=True),
                   nn.Conv2d(features // reduction, features, 1), nn.Sigmoid()]
        if layout == "official":
            self.conv_du = nn.Sequential(*squeeze)
        else:
            # BasicSR keeps the pooling layer inside the Sequential, so the convs sit at indices 1 and 3
            self.attention = nn.Sequential(nn.Identity(), *squeeze)

    def _squeeze(self) -> nn.Sequential:
        return self.conv_du if hasattr(self, "conv_du") else nn.Sequential(*list(self.attention)[1:])

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "global":
            return x.mean(dim=(2, 3), keepdim=True)
        if self.mode == "window":
            return F.avg_pool2d(x, self.pooling, self.pooling, ceil_mode=True)
        if self.mode == "grid":
            return F.adaptive_avg_pool2d(x, self.pooling)
        raise SettingError(f"channel attention mode {self.mode!r} has no pooling")

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """The attention map before it is broadcast back: (N, C, 1, 1) global, (N, C, H/p, W/p) window, (N, C, p, p)
        grid."""
        return self._squeeze()(self.pooled(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weights(x)
        if w.shape[-2:] != (1, 1):
            h, wd = x.shape[-2:]
            if self.mode == "window":
                w = repeat_windows(w, self.pooling, like=x)[..., :h, :wd]
            else:
                w = F.interpolate(w, size=(h, wd), mode="nearest")
        return x * w


class RCAB(nn.Module):
    """conv-ReLU-conv (+ channel attention) with a residual connection."""

    def __init__(self, features: int, reduction: int, attention: str, pooling: int, layout: str) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(features, features, 3, padding=1), nn.ReLU(inplace=True),
                                   nn.Conv2d(features, features, 3, padding=1)]
        if attention != "none":
            layers.append(ChannelAttention(features, reduction, attention, pooling, layout))
        if layout == "official":
            self.body = nn.Sequential(*layers)
        else:
            self.rcab = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + (self.body if hasattr(self, "body") else self.rcab)(x)


class ResidualGroup(nn.Module):
    def __init__(self, features: int, blocks: int, reduction: int, attention: str, pooling: int, layout: str) -> None:
        super().__init__()
        rcabs = [RCAB(features, reduction, attention, pooling, layout) for _ in range(blocks)]
        tail = nn.Conv2d(features, features, 3, padding=1)
        if layout == "official":
            self.body = nn.Sequential(*rcabs, tail)
        else:
            self.residual_group = nn.Sequential(*rcabs)
            self.conv = tail

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "body"):
            return x + self.body(x)
        return x + self.conv(self.residual_group(x))


class RCAN(nn.Module):
    """Residual channel attention network; see the module docstring for the options."""

    def __init__(
        self,
        scale: int = 4,
        features: int = 64,
        groups: int = 10,
        blocks: int = 20,
        reduction: int = 16,
        channel_attention: str = "global",
        pooling: int = 1,
        layout: str = "basicsr",
        img_range: float = 255.0,
    ) -> None:
        super().__init__()
        if channel_attention not in CHANNEL_ATTENTION:
            raise SettingError(f"channel_attention={channel_attention!r}; choose one of {CHANNEL_ATTENTION}")
        if channel_attention in ("window", "grid") and pooling < 1:
            raise SettingError(f"channel_attention={channel_attention} needs pooling >= 1, got {pooling}")
        if layout not in ("basicsr", "official"):
            raise SettingError(f"layout={layout!r}; choose basicsr or official")
        if layout == "official" and (channel_attention != "global" or scale == 1):
            raise SettingError("the official RCAN layout exists only for the x4 model with global channel attention")
        self.scale, self.img_range, self.layout = scale, img_range, layout

        def group(mode: str) -> ResidualGroup:
            return ResidualGroup(features, blocks, reduction, mode, pooling, layout)

        if layout == "official":
            self.sub_mean = MeanShift(img_range, sign=-1)
            self.add_mean = MeanShift(img_range, sign=1)
            self.head = nn.Sequential(nn.Conv2d(3, features, 3, padding=1))
            self.body = nn.Sequential(*[group("global") for _ in range(groups)], nn.Conv2d(features, features, 3, padding=1))
            self.tail = nn.Sequential(pixel_shuffle_upsampler(scale, features), nn.Conv2d(features, 3, 3, padding=1))
        else:
            self.register_buffer("mean", torch.tensor(DIV2K_MEAN).view(1, 3, 1, 1), persistent=False)
            self.conv_first = nn.Conv2d(3, features, 3, padding=1)
            if channel_attention == "half":
                self.body_ca = nn.Sequential(*[group("global") for _ in range(groups // 2)])
                self.body_no_ca = nn.Sequential(*[group("none") for _ in range(groups - groups // 2)])
            else:
                self.body = nn.Sequential(*[group(channel_attention) for _ in range(groups)])
            self.conv_after_body = nn.Conv2d(features, features, 3, padding=1)
            if scale > 1:
                self.upsample = pixel_shuffle_upsampler(scale, features)
            self.conv_last = nn.Conv2d(features, 3, 3, padding=1)

        conv_radius = 1 + groups * (2 * blocks + 1) + 1 + (2 if scale > 1 else 0) + 1
        if channel_attention == "none":
            radius: int | None = conv_radius
        elif channel_attention == "window":
            radius = conv_radius + groups * blocks * (pooling - 1)
        else:
            radius = None
        self.info = ModelInfo(scale=scale, same_size=scale == 1, receptive_radius=radius)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layout == "official":
            x = self.head(self.sub_mean(x * self.img_range))
            x = x + self.body(x)
            return self.add_mean(self.tail(x)) / self.img_range
        x = (x - self.mean) * self.img_range
        x = self.conv_first(x)
        features = self.body_no_ca(self.body_ca(x)) if hasattr(self, "body_ca") else self.body(x)
        res = self.conv_after_body(features) + x
        if self.scale > 1:
            res = self.upsample(res)
        return self.conv_last(res) / self.img_range + self.mean
