"""Parity with the paper's denoising demo on the authors' real DnCNN (skipped without ../shared/reference)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cemap import ROI, CausalEffectMap, PatchBank, Reference
from cemap.checkpoint import load_checkpoint
from cemap.grid import BlockGrid
from cemap.imageio import read_image, to_tensor
from cemap.metrics import ROIPSNR
from cemap.models import DnCNN
from cemap.results import STATUS_STRUCTURAL_ZERO
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


def test_demo_map_signs(reference_dir: Path) -> None:
    """The paper's protocol on the full demo_2 image with the authors' patch pool: blocks beyond the 41 x 41 receptive
    field get exactly 0 without a forward pass, and the 4 blocks directly above and below the ROI's centre (block rows
    18 and 23, columns 13-14) come out positive. Only those 4 and a sample of far blocks are computed (212 forwards on
    the locality crop: about a minute on one AVX2 core); the slow test covers every block of both images."""
    model = real_dncnn(reference_dir)
    bank = PatchBank.load(reference_dir / "div2k_patches_8px.npz")
    grid = BlockGrid(256, 256, 8)
    far = beyond_receptive_field(grid, DEMO_ROI)
    target = np.zeros(grid.shape, dtype=bool)
    target[[18, 23], 13:15] = True
    far_sample = np.zeros_like(far)
    far_sample.ravel()[np.flatnonzero(far)[::77]] = True
    clean, degraded = demo(reference_dir, "demo_2")
    result = CausalEffectMap(model, Denoise(), device="cpu", batch_size=16).attribute(
        clean, DEMO_ROI, 8, Reference(n_coarse=3, n_fine=50), seed=0, patches=bank, degraded=degraded,
        blocks=np.flatnonzero(target | far_sample))
    assert far_sample.sum() == 12
    assert (result.effects[far_sample] == 0).all()
    assert (result.forwards[far_sample] == 0).all() and (result.status[far_sample] == STATUS_STRUCTURAL_ZERO).all()
    assert (result.effects[target] > 0).all(), result.effects[target]


def test_locality_plan_on_the_demo_geometry(reference_dir: Path) -> None:
    """The real DnCNN passes the locality probe: blocks beyond its 41 x 41 receptive field are structural zeros and
    the crop reproduces the full image's ROI output bit for bit (about 10 forwards)."""
    from cemap.locality import LocalitySettings, plan_locality

    model = real_dncnn(reference_dir)
    clean, degraded = demo(reference_dir, "demo_2")
    grid = BlockGrid(256, 256, 8)
    bank = PatchBank.load(reference_dir / "div2k_patches_8px.npz")

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(x)

    plan = plan_locality(forward, Denoise(), degraded, clean, [DEMO_ROI], grid, model.info.receptive_radius,
                         LocalitySettings(), bank.tensor("cpu", 8, 8)[:4], seed=0)
    assert plan.report["screened"] and plan.report["cropped"], plan.report
    assert plan.reachable is not None
    unreachable = ~plan.reachable[0].reshape(grid.shape)
    assert np.array_equal(unreachable, beyond_receptive_field(grid, DEMO_ROI))
    assert unreachable.sum() == 924


@pytest.mark.slow
@pytest.mark.parametrize("name", ["demo_2", "demo_3"])
def test_demo_map_on_full_image(reference_dir: Path, name: str) -> None:
    """The paper's statements on the full 256 x 256 image, every block (about 2 minutes per image on 2 cores with the
    locality acceleration), and the 8 blocks above and below the ROI equal to a full-image computation."""
    from cemap.locality import LocalitySettings

    model = real_dncnn(reference_dir)
    bank = PatchBank.load(reference_dir / "div2k_patches_8px.npz")
    grid = BlockGrid(256, 256, 8)
    far = beyond_receptive_field(grid, DEMO_ROI)
    target = np.zeros(grid.shape, dtype=bool)
    target[[18, 23], 12:16] = True
    clean = to_tensor(read_image(reference_dir / "images" / f"{name}.png"))
    result = CausalEffectMap(model, Denoise(), device="cpu", batch_size=16).attribute(
        clean, DEMO_ROI, 8, Reference(), seed=0, patches=bank)
    assert result.origin == pytest.approx(ORIGIN_PSNR[name], abs=1e-3)
    assert (result.effects[far] == 0).all() and (result.forwards[far] == 0).all()
    assert (result.effects[target] > 0).all(), result.effects[target]
    full = CausalEffectMap(model, Denoise(), device="cpu", batch_size=16, locality=LocalitySettings(mode="off")).attribute(
        clean, DEMO_ROI, 8, Reference(), seed=0, patches=bank, blocks=np.flatnonzero(target))
    assert np.max(np.abs(full.effects[target] - result.effects[target])) <= 1e-6
