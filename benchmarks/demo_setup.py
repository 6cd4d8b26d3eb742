"""Shared by the benchmarks: the paper's denoising demo (the authors' DnCNN, demo images and DIV2K patch pool from
../shared/reference, present in the project's workspace only; a clear exit otherwise) and the pure-forward timer."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from cemap import ROI, PatchBank
from cemap.checkpoint import load_checkpoint
from cemap.imageio import read_image, to_tensor
from cemap.models import DnCNN

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
DEMO_ROI = ROI(x=96, y=152, size=32)


def require_reference() -> Path:
    if not (REFERENCE / "dncnn_color_blind.pth").is_file():
        sys.exit(f"this benchmark needs the authors' demo files at {REFERENCE} (the project's workspace only)")
    return REFERENCE


def real_dncnn() -> DnCNN:
    model = DnCNN()
    load_checkpoint(model, require_reference() / "dncnn_color_blind.pth", strict=True)
    return model.eval()


def demo_image(name: str) -> torch.Tensor:
    return to_tensor(read_image(require_reference() / "images" / f"{name}.png"))


def author_bank() -> PatchBank:
    return PatchBank.load(require_reference() / "div2k_patches_8px.npz")


def pure_forward_rate(model: torch.nn.Module, shape: tuple[int, int], batch: int, device: torch.device,
                      repeats: int = 4, tf32: bool = False) -> float:
    """Images per second of the bare model on random inputs of ``shape`` in batches of ``batch``, under the TF32
    setting a map runs with (off by default, as in ``CausalEffectMap``): cuDNN's own default is TF32 *on*, which
    would time the bare model faster than the map's convolutions can run."""
    import time

    from cemap.engine import tf32_mode

    x = torch.rand(batch, 3, *shape, device=device)
    with torch.inference_mode(), tf32_mode(tf32):
        model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return repeats * batch / (time.perf_counter() - start)


def max_abs_diff(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    return float(np.max(np.abs(a[where] - b[where]))) if where.any() else 0.0
