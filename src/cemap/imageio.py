"""Reading users' images as 8-bit RGB, with a clear error for anything that is not a usable image."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)


class ImageError(ValueError):
    """A file that cannot be used as an input image; the message says what to fix."""


def to_rgb8(array: np.ndarray, what: str = "image") -> np.ndarray:
    """Convert gray, gray+alpha, RGBA or 16-bit arrays to H x W x 3 uint8, logging each conversion.

    An alpha channel is dropped only when it is fully opaque; a transparent image has no single RGB meaning, so it is
    refused instead of silently composited.
    """
    a = np.asarray(array)
    if a.dtype == np.uint16:
        log.info("%s: 16-bit image converted to 8 bits (rounded)", what)
        a = np.round(a.astype(np.float64) / 257.0).astype(np.uint8)
    elif a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif np.issubdtype(a.dtype, np.floating):
        if a.size and (np.nanmin(a) < 0 or np.nanmax(a) > 1):
            raise ImageError(f"{what}: float image values must lie in [0, 1], got [{np.nanmin(a):.3g}, {np.nanmax(a):.3g}]")
        a = np.round(a * 255.0).astype(np.uint8)
    elif a.dtype != np.uint8:
        raise ImageError(f"{what}: unsupported pixel type {a.dtype}; use 8- or 16-bit integers or floats in [0, 1]")
    if a.ndim == 2:
        log.info("%s: gray image replicated to RGB", what)
        return np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4):
        raise ImageError(f"{what}: shape {a.shape} is not an image; expected H x W, H x W x 3 or H x W x 4")
    if a.shape[2] in (2, 4):
        alpha = a[:, :, -1]
        if alpha.min() < 255:
            raise ImageError(
                f"{what}: has transparent pixels (alpha min {int(alpha.min())}); flatten it onto a background first"
            )
        log.info("%s: opaque alpha channel dropped", what)
        a = a[:, :, :-1]
    if a.shape[2] == 1:
        log.info("%s: gray image replicated to RGB", what)
        a = np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a)


READABLE_MODES = ("RGB", "RGBA", "RGBX", "L", "LA", "P", "1", "I;16", "I;16B", "I;16L", "I", "F", "CMYK", "YCbCr")
"""Pillow modes read (or converted) as RGB; others (LAB, HSV) are refused rather than read as if they were RGB."""


def upright(im: Image.Image, name: str) -> Image.Image:
    """The picture as a viewer shows it: a camera's EXIF orientation applied, so ROI coordinates refer to what the
    user sees (logged, since the array differs from the stored one)."""
    orientation = im.getexif().get(0x0112, 1)
    if orientation in (None, 1):
        return im
    log.info("%s: EXIF orientation %s applied", name, orientation)
    return ImageOps.exif_transpose(im)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as H x W x 3 uint8 RGB (palette, gray, RGBA and 16-bit files are converted)."""
    p = Path(path)
    if not p.exists():
        raise ImageError(f"image {str(p)!r} does not exist")
    if not p.is_file():
        raise ImageError(f"image {str(p)!r} is not a file")
    try:
        with Image.open(p) as opened:
            opened.load()
            im = upright(opened, p.name)
            if im.mode not in READABLE_MODES:
                raise ImageError(f"image {str(p)!r} is in colour mode {im.mode}, not RGB or gray; convert it to sRGB "
                                 "first (reading its channels as RGB would give wrong colours)")
            if im.mode in ("YCbCr", "1"):
                im = im.convert("RGB" if im.mode == "YCbCr" else "L")
            if im.mode == "P":
                log.info("%s: palette image converted to RGB(A)", p.name)
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im)
                return to_rgb8(arr.astype(np.uint16) if arr.max() < 65536 else arr, what=p.name)
            elif im.mode == "CMYK":
                im = im.convert("RGB")
            arr = np.asarray(im)
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image {str(p)!r} is too large to open safely ({exc})") from exc
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ImageError(f"image {str(p)!r} cannot be read as an image (truncated or not an image file): {exc}") from exc
    except PermissionError as exc:
        raise ImageError(f"image {str(p)!r} is not readable: {exc}") from exc
    return to_rgb8(arr, what=p.name)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """H x W x 3 uint8 -> (3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1).to(torch.float32) / 255.0


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] -> H x W x 3 uint8 (clipped, rounded)."""
    return torch.round(image.detach().clamp(0, 1) * 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
