"""Bicubic resizing as SR datasets make their low-resolution inputs.

Two conventions, selectable by name:

- ``pil``: Pillow's bicubic on 8-bit images, antialiased (the kernel widened by the scale factor), as in the paper's
  demo. Runs on the CPU.
- ``matlab``: MATLAB's ``imresize`` (cubic kernel with a = -0.5, antialiased when shrinking, symmetric boundary), the
  convention of most SR papers' benchmarks, computed in float64 as two matrix products (on any device).

Both return images quantised to 8 bits (rounded), because SR inputs are stored as 8-bit images.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from cemap.validation import SettingError


class Resizer(Protocol):
    name: str

    def __call__(self, images: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Resize (N, 3, h, w) images in [0, 1] to (N, 3, height, width), quantised to 8 bits."""
        ...


def _cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    ax = np.abs(x)
    return np.where(
        ax <= 1,
        (a + 2) * ax**3 - (a + 3) * ax**2 + 1,
        np.where(ax < 2, a * ax**3 - 5 * a * ax**2 + 8 * a * ax - 4 * a, 0.0),
    )


@lru_cache(maxsize=64)
def matlab_weights(in_len: int, out_len: int) -> np.ndarray:
    """(out_len, in_len) matrix of MATLAB ``imresize`` bicubic weights (antialiased, symmetric boundary)."""
    scale = out_len / in_len
    kernel_width = 4.0 / scale if scale < 1 else 4.0
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - kernel_width / 2)
    taps = int(math.ceil(kernel_width)) + 2
    idx = left[:, None] + np.arange(taps)[None, :]
    dist = u[:, None] - idx
    w = scale * _cubic(dist * scale) if scale < 1 else _cubic(dist)
    w = w / w.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len)[::-1]])
    cols = mirror[(idx.astype(np.int64) - 1) % (2 * in_len)]
    matrix = np.zeros((out_len, in_len))
    np.add.at(matrix, (np.repeat(np.arange(out_len), taps), cols.ravel()), w.ravel())
    return matrix


class MatlabBicubic:
    """MATLAB-style ``imresize`` bicubic (float64 matrix products, then rounded to 8 bits)."""

    name = "matlab"

    def __call__(self, images: torch.Tensor, height: int, width: int) -> torch.Tensor:
        h, w = images.shape[-2:]
        wh = torch.from_numpy(matlab_weights(h, height)).to(images.device)
        ww = torch.from_numpy(matlab_weights(w, width)).to(images.device)
        out = torch.einsum("oh,nchw,pw->ncop", wh, images.to(torch.float64), ww)
        return (torch.round(out.clamp(0, 1) * 255) / 255).to(images.dtype)


class PILBicubic:
    """Pillow's antialiased bicubic on 8-bit images (the paper's demo), one image at a time on the CPU."""

    name = "pil"

    def __call__(self, images: torch.Tensor, height: int, width: int) -> torch.Tensor:
        arrays = torch.round(images.detach().clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        out = np.stack([np.asarray(Image.fromarray(a).resize((width, height), Image.BICUBIC)) for a in arrays])
        return torch.from_numpy(out).permute(0, 3, 1, 2).to(device=images.device, dtype=images.dtype) / 255


RESIZERS: dict[str, type] = {"pil": PILBicubic, "matlab": MatlabBicubic}


def make_resizer(name: str) -> Resizer:
    try:
        return RESIZERS[name]()
    except KeyError:
        raise SettingError(f"unknown resize kernel {name!r}; choose one of {sorted(RESIZERS)}") from None
