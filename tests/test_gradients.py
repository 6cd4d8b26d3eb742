"""Pixel-level decomposition, the first-order map and LAM."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cemap import ROI, CausalEffectMap, Fixed
from cemap.decomposition import (
    FirstOrderMap,
    PixelDecomposition,
    PixelShares,
    spearman,
)
from cemap.grid import BlockGrid
from cemap.lam import LAM, LAMResult, diffusion_index, gini
from cemap.tasks import Denoise
from tests.conftest import conv_stack
from tests.test_engine import MeanROI


def linear_model() -> torch.nn.Module:
    torch.manual_seed(3)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.Conv2d(6, 3, 3, padding=1)).eval()


def test_first_order_map_is_exact_for_a_linear_model_and_metric(small_image, small_bank) -> None:
    model, task, roi = linear_model(), Denoise(sigma=25.0), ROI(24, 16, 8)
    preview = FirstOrderMap(model, task, metric=MeanROI(), device="cpu").attribute(
        small_image, roi, 8, n_interventions=4, patches=small_bank)
    exact = CausalEffectMap(model, task, metric=MeanROI(), device="cpu").attribute(
        small_image, roi, 8, Fixed(n_samples=4), patches=small_bank)
    np.testing.assert_allclose(preview.effects, exact.effects, atol=2e-6)
    # and the gradient it uses is autograd's: recompute one block by hand
    degraded = task.degrade(torch.from_numpy(small_image).permute(2, 0, 1).float() / 255, np.random.RandomState(0))
    x = degraded.image.unsqueeze(0).requires_grad_(True)
    (g,) = torch.autograd.grad(MeanROI()(model(x), None, roi).sum(), x)
    from cemap.engine import block_interventions
    from cemap.patches import PatchBank

    k = 5
    xs = block_interventions(task, degraded, None, PatchBank(small_bank), BlockGrid(40, 56, 8).block(k), 0, 4, 0,
                             torch.device("cpu"))
    by_hand = -float((g[0].double() * (xs.double() - degraded.image.double()).mean(dim=0)).sum())
    assert preview.effects.ravel()[k] == pytest.approx(by_hand, rel=1e-9, abs=1e-12)
    assert preview.meta["backwards"] == 1


def test_first_order_reports_rank_correlation(small_image, small_bank) -> None:
    model, task, roi = conv_stack(3), Denoise(sigma=25.0), ROI(24, 16, 8)
    cem = CausalEffectMap(model, task, device="cpu").attribute(small_image, roi, 8, Fixed(n_samples=4), patches=small_bank)
    preview = FirstOrderMap(model, task, device="cpu").attribute(small_image, roi, 8, 4, patches=small_bank,
                                                                 compare_to=cem)
    rho = preview.meta["rank_correlation"]
    assert rho == spearman(preview.effects.ravel(), cem.effects.ravel()) and rho > 0.3
    assert np.isnan(spearman(np.ones(5), np.arange(5.0)))


def test_pixel_shares_sum_to_the_block_effect(small_image, small_bank, tmp_path) -> None:
    model, task, roi = conv_stack(3), Denoise(sigma=25.0), ROI(24, 16, 8)
    decomposition = PixelDecomposition(model, task, device="cpu", steps=16)
    grid = BlockGrid(40, 56, 8)
    blocks = [2 * grid.cols + 3, 2 * grid.cols + 2, 1 * grid.cols + 3]  # the ROI's block and two neighbours
    shares = decomposition.attribute(small_image, roi, blocks, 8, n_interventions=4, patches=small_bank)
    assert np.all(shares.completeness <= 0.01), shares.completeness
    for i, k in enumerate(blocks):
        total = shares.shares[i].sum()
        assert total == pytest.approx(shares.effects[i], rel=0.01)
        block = grid.block(k)
        outside = shares.maps[i].copy()
        outside[block.y0 : block.y1, block.x0 : block.x1] = 0
        assert np.all(outside == 0)  # only the block's own pixels change, so only they get shares
    assert abs(shares.effects[0] - shares.effects_rounded[0]) < 0.5  # rounding moves the effect only a little
    again = PixelShares.load(shares.save(tmp_path))
    assert np.array_equal(again.shares, shares.shares) and again.meta == shares.meta


def test_top_k_blocks_come_from_a_map(small_image, small_bank) -> None:
    model, task, roi = conv_stack(2), Denoise(sigma=25.0), ROI(24, 16, 8)
    cem = CausalEffectMap(model, task, device="cpu").attribute(small_image, roi, 8, Fixed(n_samples=2), patches=small_bank)
    shares = PixelDecomposition(model, task, device="cpu", steps=8, max_steps=8).attribute(
        small_image, roi, cem=cem, top_k=2, n_interventions=2, patches=small_bank)
    top = np.argsort(-np.abs(cem.effects.ravel()), kind="stable")[:2]
    assert shares.blocks.tolist() == top.tolist()
    with pytest.raises(ValueError, match="top_k"):
        PixelDecomposition(model, task, device="cpu").attribute(small_image, roi)


def test_diffusion_index_extremes() -> None:
    assert diffusion_index(np.full((16, 16), 0.3)) == pytest.approx(100.0)
    one_hot = np.zeros((16, 16))
    one_hot[3, 7] = 1.0
    assert gini(one_hot) == pytest.approx(255 / 256)
    assert diffusion_index(one_hot) == pytest.approx(100 / 256)
    assert diffusion_index(np.arange(100.0)) < diffusion_index(np.ones(100))


def test_lam_is_local_for_a_local_model_and_complete(small_image, tmp_path) -> None:
    model = conv_stack(3)
    window = ROI(24, 16, 8)
    lam = LAM(model, Denoise(sigma=25.0), device="cpu", steps=50).attribute(small_image, window)
    assert lam.map.shape == (40, 56) and lam.map.max() == pytest.approx(1.0)
    reach = np.zeros_like(lam.map, dtype=bool)
    reach[16 - 4 : 24 + 4, 24 - 4 : 32 + 4] = True  # 3 layers + 1 px of forward differences + blur-free attribution
    assert np.all(lam.map[~reach] == 0)
    gap = lam.meta["energy_input"] - lam.meta["energy_blurred"]
    assert lam.meta["attribution_sum"] == pytest.approx(gap, rel=0.05)  # integrated gradients' completeness
    assert 0 < lam.diffusion_index < 100
    again = LAMResult.load(lam.save(tmp_path))
    assert again.diffusion_index == lam.diffusion_index and np.array_equal(again.map, lam.map)


def test_cem_and_lam_side_by_side(small_image, small_bank, tmp_path) -> None:
    from cemap.figures import save_cem_lam_figure

    model, roi = conv_stack(2), ROI(24, 16, 8)
    cem = CausalEffectMap(model, Denoise(sigma=25.0), device="cpu").attribute(
        small_image, roi, 8, Fixed(n_samples=1), patches=small_bank)
    lam = LAM(model, Denoise(sigma=25.0), device="cpu", steps=5).attribute(small_image, roi)
    path = save_cem_lam_figure(cem, lam.map, lam.diffusion_index, tmp_path / "side.png", small_image, "test")
    assert path.stat().st_size > 1000


def test_decomposition_on_the_locality_crop_equals_the_full_image(small_image, small_bank) -> None:
    from cemap.locality import LocalitySettings

    roi, blocks = ROI(24, 16, 8), [2 * 7 + 3]
    model = conv_stack(3, claims_radius=3)
    cropped = PixelDecomposition(model, Denoise(sigma=25.0), device="cpu", steps=8, max_steps=8).attribute(
        small_image, roi, blocks, n_interventions=2, patches=small_bank)
    full = PixelDecomposition(model, Denoise(sigma=25.0), device="cpu", steps=8, max_steps=8,
                              locality=LocalitySettings(mode="off")).attribute(
        small_image, roi, blocks, n_interventions=2, patches=small_bank)
    assert cropped.meta["window"] is not None and full.meta["window"] is None
    np.testing.assert_allclose(cropped.shares, full.shares, atol=1e-6)
    np.testing.assert_allclose(cropped.effects, full.effects, atol=1e-9)
