"""Image-quality metrics in torch, batched, with the conventions of the SR literature (BasicSR).

Images are float tensors in [0, 1], shaped (N, 3, H, W) or (3, H, W). Before comparison they are quantised as a saved
8-bit image would be: clipped to [0, 1], times 255, rounded. Errors are computed in float64, so the ~0.01 dB effects a
causal effect map resolves are not drowned by float32 rounding.

The ROI metrics at the bottom are what the CEM engine scores every forward pass with; ``higher_is_better`` tells the
engine how to orient effects so that a positive effect always means "this block helps the ROI".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from cemap.grid import ROI
from cemap.validation import SettingError

PSNR_CAP_DB = 100.0
"""PSNR reported for a perfect match (MSE 0), so effects stay finite."""


def quantize(img: torch.Tensor) -> torch.Tensor:
    """Clip to [0, 1] and round to the 256 levels of a uint8 image, returned in 0..255 as float64."""
    return torch.round(img.clamp(0.0, 1.0).to(torch.float64) * 255.0)


def _batched(img: torch.Tensor) -> torch.Tensor:
    return img if img.dim() == 4 else img.unsqueeze(0)


def rgb_to_y(img255: torch.Tensor) -> torch.Tensor:
    """ITU-R BT.601 luma of 0..255 RGB (N, 3, H, W) -> (N, 1, H, W), the "test_y_channel" of SR papers."""
    weights = img255.new_tensor([65.481, 128.553, 24.966]).view(1, 3, 1, 1) / 255.0
    return (img255 * weights).sum(dim=1, keepdim=True) + 16.0


def _prepare(pred: torch.Tensor, target: torch.Tensor, crop_border: int, y_channel: bool) -> tuple[torch.Tensor, torch.Tensor]:
    pred, target = quantize(_batched(pred)), quantize(_batched(target))
    if pred.shape[1:] != target.shape[1:]:
        raise SettingError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in size")
    if crop_border:
        pred = pred[..., crop_border:-crop_border, crop_border:-crop_border]
        target = target[..., crop_border:-crop_border, crop_border:-crop_border]
    if y_channel:
        pred, target = rgb_to_y(pred), rgb_to_y(target)
    return pred, target


def mse_to_psnr(mse: torch.Tensor) -> torch.Tensor:
    """PSNR of an 8-bit mean squared error; identical images get the cap, and a NaN error (a model that returned NaN)
    stays NaN instead of passing for a perfect 100 dB."""
    psnr = 10.0 * torch.log10(255.0**2 / mse.clamp_min(1e-300))
    return torch.where(mse == 0, torch.full_like(psnr, PSNR_CAP_DB), psnr)


def psnr(pred: torch.Tensor, target: torch.Tensor, crop_border: int = 0, y_channel: bool = False) -> torch.Tensor:
    """PSNR in dB per image, shape (N,), on 8-bit-quantised images."""
    p, t = _prepare(pred, target, crop_border, y_channel)
    mse = ((p - t) ** 2).flatten(1).mean(dim=1)
    return mse_to_psnr(mse)


def offset_corrected_psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per image after removing the error's per-channel mean over the image: the part of the error that a
    whole-image colour offset cannot explain. Diagnoses models whose global statistics (e.g. channel attention's
    average pooling) shift the colour of unseen images; equals ``psnr`` when the error has zero mean per channel."""
    p, t = _prepare(pred, target, 0, False)
    error = p - t
    error = error - error.mean(dim=(2, 3), keepdim=True)
    return mse_to_psnr((error**2).flatten(1).mean(dim=1))


def _gaussian_window(size: int = 11, sigma: float = 1.5, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    coords = torch.arange(size, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim(pred: torch.Tensor, target: torch.Tensor, crop_border: int = 0, y_channel: bool = False) -> torch.Tensor:
    """SSIM per image, shape (N,): 11x11 Gaussian window (sigma 1.5), valid region, mean over channels (BasicSR)."""
    p, t = _prepare(pred, target, crop_border, y_channel)
    if min(p.shape[-2:]) < 11:
        raise SettingError(f"SSIM needs at least 11x11 pixels, got {tuple(p.shape[-2:])}")
    c = p.shape[1]
    window = _gaussian_window().to(p.device).expand(c, 1, 11, 11).contiguous()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, window, groups=c)

    mu_p, mu_t = blur(p), blur(t)
    var_p = blur(p * p) - mu_p**2
    var_t = blur(t * t) - mu_t**2
    cov = blur(p * t) - mu_p * mu_t
    ssim_map = ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p**2 + mu_t**2 + c1) * (var_p + var_t + c2))
    return ssim_map.flatten(1).mean(dim=1)


class ROIMetric(Protocol):
    """Scores a batch of model outputs on the ROI against the clean image: (N, 3, H, W) -> (N,) float64."""

    name: str
    higher_is_better: bool

    def __call__(self, outputs: torch.Tensor, clean: torch.Tensor, roi: ROI) -> torch.Tensor: ...


def _crop(img: torch.Tensor, roi: ROI) -> torch.Tensor:
    return img[..., roi.rows, roi.cols]


@dataclass(frozen=True)
class ROIPSNR:
    """The paper's outcome: PSNR over the ROI on RGB, 8-bit quantised output, float64 MSE, no border crop."""

    name: str = "psnr"
    higher_is_better: bool = True

    def __call__(self, outputs: torch.Tensor, clean: torch.Tensor, roi: ROI) -> torch.Tensor:
        return psnr(_crop(outputs, roi), _crop(clean, roi))


@dataclass(frozen=True)
class ROISSIM:
    """SSIM over the ROI (needs an ROI of at least 11 pixels)."""

    name: str = "ssim"
    higher_is_better: bool = True

    def __call__(self, outputs: torch.Tensor, clean: torch.Tensor, roi: ROI) -> torch.Tensor:
        return ssim(_crop(outputs, roi), _crop(clean, roi))


@dataclass(frozen=True)
class ROIMSE:
    """Mean squared error over the ROI in 0..255 units; lower is better, so the engine flips the effect's sign."""

    name: str = "mse"
    higher_is_better: bool = False

    def __call__(self, outputs: torch.Tensor, clean: torch.Tensor, roi: ROI) -> torch.Tensor:
        p, t = _prepare(_crop(outputs, roi), _crop(clean, roi), 0, False)
        return ((p - t) ** 2).flatten(1).mean(dim=1)


@dataclass(frozen=True)
class ROISmoothPSNR:
    """ROI PSNR without the 8-bit rounding (output clipped to [0, 1], float64): differentiable, for gradient-based
    decompositions; it differs from ``psnr`` by the rounding only."""

    name: str = "psnr_smooth"
    higher_is_better: bool = True

    def __call__(self, outputs: torch.Tensor, clean: torch.Tensor, roi: ROI) -> torch.Tensor:
        p = _crop(outputs, roi).clamp(0.0, 1.0).to(torch.float64) * 255.0
        t = _crop(clean, roi).to(torch.float64) * 255.0
        return mse_to_psnr(((p - t) ** 2).flatten(1).mean(dim=1))


ROI_METRICS: dict[str, type] = {"psnr": ROIPSNR, "ssim": ROISSIM, "mse": ROIMSE, "psnr_smooth": ROISmoothPSNR}


def roi_metric(name: str) -> ROIMetric:
    """The ROI metric registered under ``name`` (psnr, ssim, mse, psnr_smooth)."""
    try:
        return ROI_METRICS[name]()
    except KeyError:
        raise SettingError(f"unknown metric {name!r}; choose one of {sorted(ROI_METRICS)}") from None
