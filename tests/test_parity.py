"""Parity with the paper's denoising demo on the authors' real DnCNN (skipped without ../shared/reference)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cemap import CausalEffectMap, PatchBank, Reference, ROI
from cemap.checkpoint import load_checkpoint
from cemap.grid import BlockGrid
from cemap.imageio import read_image, to_tensor
from cemap.metrics import ROIPSNR
from cemap.models import DnCNN
from cemap.tasks import Degraded, Denoise

pytestmark = pytest.mark.parity

DEMO_ROI = ROI(x=96, y=152, size=32)
ORIGIN_PSNR = {"demo_1": 23.6442, "demo_2": 24.0414, "demo_3": 22.4441}
DNCNN_SHA256 = "dfe11a6b703304df82cdf236f431fc6492766c7b9119d97e943edeb392c710a3"
RF_RADIUS = 20  # 41 x 41 receptive field


def real_dncnn(reference_dir: Path) -> DnCNN:
    model = DnCNN()
    sha = load_checkpoint(model, reference_dir / "dncnn_color_blind.pth", strict=True)
    assert sha == DNCNN_SHA256
    return model.eval()


def demo(reference_dir: Path, name: str) -> tuple[torch.Tensor, Degraded]:
    clean = to_tensor(read_image(reference_dir / "images" / f"{name}.png"))
    return clean, Denoise().degrade(clean, np.random.RandomState(0))


def test_real_dncnn_origin_psnr(reference_dir: Path) -> None:
    model = real_dncnn(reference_dir)
    assert sum(p.numel() for p in model.parameters()) == 668_227
    for name, expected in ORIGIN_PSNR.items():
        clean, degraded = demo(reference_dir, name)
        with torch.inference_mode():
            out = model(degraded.image[None])
        assert ROIPSNR()(out, clean, DEMO_ROI).item() == pytest.approx(expected, abs=1e-3), name


def beyond_receptive_field(grid: BlockGrid, roi: ROI, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Blocks none of whose pixels lies within RF_RADIUS px (Chebyshev) of the ROI."""
    far = np.zeros(grid.shape, dtype=bool)
    for b in grid.blocks:
        gap_y = max(roi.y - b.y1 + 1, b.y0 - (roi.y + roi.size - 1), 0)
        gap_x = max(roi.x - b.x1 + 1, b.x0 - (roi.x + roi.size - 1), 0)
        far[b.row, b.col] = max(gap_y, gap_x) > RF_RADIUS
    return far


def test_demo_map_signs_on_the_roi_window(reference_dir: Path) -> None:
    """The paper's protocol on demo_2, evaluated on a 96 x 96 window around the ROI (the noise is drawn on the whole
    image first, as in the demo): blocks beyond the 41 x 41 receptive field get exactly 0, and the 8 blocks directly
    above and below the ROI (block rows 18 and 23, columns 12-15) come out positive. The window's ring of far blocks
    is sampled at its corners and edge midpoints to keep the test under a minute; the slow test covers demo_3 on the
    full image."""
    model = real_dncnn(reference_dir)
    bank = PatchBank.load(reference_dir / "div2k_patches_8px.npz")
    y0, x0 = 120, 64  # window = block rows 15..26, columns 8..19
    roi = ROI(DEMO_ROI.x - x0, DEMO_ROI.y - y0, DEMO_ROI.size)
    grid = BlockGrid(96, 96, 8)
    far = beyond_receptive_field(grid, roi)
    assert far.sum() == 44  # the window's outer ring
    far_sample = np.zeros_like(far)
    far_sample[np.ix_([0, 5, 11], [0, 5, 11])] = True
    far_sample &= far
    target = np.zeros(grid.shape, dtype=bool)
    target[[18 - 15, 23 - 15], 12 - 8 : 16 - 8] = True
    chosen = np.flatnonzero(target | far_sample)
    cem = CausalEffectMap(model, Denoise(), device="cpu", batch_size=16)
    for name in ("demo_2",):
        clean, degraded = demo(reference_dir, name)
        window = (slice(None), slice(y0, y0 + 96), slice(x0, x0 + 96))
        result = cem.attribute(
            clean[window], roi, 8, Reference(n_coarse=3, n_fine=50), seed=0, patches=bank,
            degraded=Degraded(degraded.image[window].contiguous()), blocks=chosen,
        )
        assert far_sample.sum() == 8
        assert (result.effects[far_sample] == 0).all(), name
        assert (result.forwards[far_sample] == 3).all()  # screened after the coarse stage
        assert (result.effects[target] > 0).all(), (name, result.effects[target])


@pytest.mark.slow
def test_demo_map_on_full_image(reference_dir: Path) -> None:
    """The same statements for demo_3 on the full 256 x 256 image (about 3 minutes on 2 cores)."""
    model = real_dncnn(reference_dir)
    bank = PatchBank.load(reference_dir / "div2k_patches_8px.npz")
    grid = BlockGrid(256, 256, 8)
    far = beyond_receptive_field(grid, DEMO_ROI)
    target = np.zeros(grid.shape, dtype=bool)
    target[[18, 23], 12:16] = True
    far_sample = np.flatnonzero(far)[:: max(1, far.sum() // 12)]
    chosen = np.union1d(np.flatnonzero(target), far_sample)
    clean = to_tensor(read_image(reference_dir / "images" / "demo_3.png"))
    result = CausalEffectMap(model, Denoise(), device="cpu", batch_size=8).attribute(
        clean, DEMO_ROI, 8, Reference(), seed=0, patches=bank, blocks=chosen
    )
    assert result.origin == pytest.approx(ORIGIN_PSNR["demo_3"], abs=1e-3)
    assert (result.effects.ravel()[far_sample] == 0).all()
    assert (result.effects[target] > 0).all()
