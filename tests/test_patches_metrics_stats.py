"""Patch banks, metrics, statistics and figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cemap import ROI, CausalEffectMap, Fixed, PatchBank
from cemap.figures import save_map_figure
from cemap.imageio import ImageError, read_image
from cemap.metrics import offset_corrected_psnr, psnr, ssim
from cemap.patches import PatchBankError
from cemap.results import STATUS_ESTIMATED, CEMResult
from cemap.stats import effect_profile, effective_radius, summarize
from cemap.tasks import Denoise
from tests.conftest import conv_stack


def test_bank_from_images_is_seeded_and_deduplicated() -> None:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 50, 3), dtype=np.uint8), np.zeros((30, 30, 3), np.uint8)]
    a = PatchBank.from_images(images, 100, 8, seed=5)
    b = PatchBank.from_images(images, 100, 8, seed=5)
    c = PatchBank.from_images(images, 100, 8, seed=6)
    assert np.array_equal(a.patches, b.patches) and not np.array_equal(a.patches, c.patches)
    flat = a.patches.reshape(len(a), -1)
    assert len(np.unique(flat, axis=0)) == len(a)  # the black image yields one patch, not fifty
    sharp = PatchBank.from_images(images, 100, 8, seed=5, min_sharpness=1.0)
    assert not (sharp.patches == 0).all(axis=(1, 2, 3)).any()
    assert a.stats()["n_patches"] == len(a)


def test_bank_save_load_and_errors(tmp_path: Path) -> None:
    bank = PatchBank(np.random.default_rng(0).integers(0, 256, (20, 8, 8, 3), dtype=np.uint8), source="t")
    bank.save(tmp_path / "bank.npz")
    loaded = PatchBank.load(tmp_path / "bank.npz")
    assert np.array_equal(loaded.patches, bank.patches) and loaded.source == "t"
    with pytest.raises(PatchBankError, match="empty"):
        PatchBank(np.zeros((0, 8, 8, 3), np.uint8))
    with pytest.raises(PatchBankError, match=r"\(N, P, P, 3\)"):
        PatchBank(np.zeros((4, 8, 6, 3), np.uint8))
    with pytest.raises(PatchBankError, match="at least that large"):
        bank.check_block(16, 16)


def test_patch_folder_import(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / f"p{i}.png")
    assert len(PatchBank.from_patch_folder(tmp_path)) == 3


def test_authors_pool_loads_as_rgb(reference_dir: Path) -> None:
    bank = PatchBank.load(reference_dir / "div2k_patches_8px.npz")
    assert bank.patches.shape == (10_000, 8, 8, 3) and bank.patches.dtype == np.uint8


def test_psnr_and_ssim_conventions() -> None:
    a = torch.rand(2, 3, 24, 24, dtype=torch.float64)
    assert (psnr(a, a) == 100.0).all()
    b = (torch.round(a * 255) + 1).clamp(0, 255) / 255
    assert psnr(a, b)[0].item() == pytest.approx(48.13, abs=0.2)  # MSE ~1 level
    assert ssim(a, a).allclose(torch.ones(2, dtype=torch.float64))
    assert psnr(a, b, crop_border=4, y_channel=True).shape == (2,)


def test_read_image_conversions_and_errors(tmp_path: Path) -> None:
    Image.fromarray(np.full((8, 9), 100, np.uint8)).save(tmp_path / "gray.png")
    assert read_image(tmp_path / "gray.png").shape == (8, 9, 3)
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 3] = 255
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    assert read_image(tmp_path / "rgba.png").shape == (8, 8, 3)
    rgba[0, 0, 3] = 10
    Image.fromarray(rgba).save(tmp_path / "transparent.png")
    with pytest.raises(ImageError, match="transparent"):
        read_image(tmp_path / "transparent.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ImageError, match="cannot be read"):
        read_image(tmp_path / "text.png")


def synthetic_result(effects: np.ndarray, roi_mask: np.ndarray, block: int = 8) -> CEMResult:
    return CEMResult(
        effects=effects, se=np.full(effects.shape, 0.001), n=np.full(effects.shape, 50),
        forwards=np.full(effects.shape, 50), significant=np.abs(effects) >= 0.01,
        status=np.full(effects.shape, STATUS_ESTIMATED, np.uint8), roi_mask=roi_mask, origin=30.0,
        meta={"block_size": block, "metric": "psnr"},
    )


def test_summary_statistics_on_a_known_map() -> None:
    eff = np.zeros((7, 7))
    roi = np.zeros((7, 7), bool)
    roi[3, 3] = True
    eff[3, 3] = 1.0          # ROI
    eff[2, 3] = 0.5          # distance 1, positive
    eff[0, 0] = -0.5         # distance 3, negative
    eff[6, 6] = 0.005        # below tol: not significant
    s = summarize(synthetic_result(eff, roi))
    assert (s["n_positive"], s["n_negative"], s["n_zero"]) == (1, 1, 46)
    assert s["effect_min_at"] == [0, 0] and s["effect_max_at"] == [2, 3]  # outside the ROI
    assert (s["effect_min"], s["effect_max"]) == (-0.5, 0.5) and s["roi_effect_max"] == 1.0
    assert s["negative_mass_fraction"] == pytest.approx(0.5)
    assert effective_radius(synthetic_result(eff, roi)) == 3   # 1.5 of 2.0 within d<=1 is 75% < 90%
    assert s["paper_n_positive_incl_roi"] == 3
    profile = effect_profile(synthetic_result(eff, roi))
    assert profile["abs_mass"][:4] == [1.0, 0.5, 0.0, 0.5]


def test_figure_is_written(tmp_path: Path, small_image: np.ndarray, small_bank: np.ndarray) -> None:
    result = CausalEffectMap(conv_stack(2), Denoise(), device="cpu").attribute(
        small_image, ROI(8, 8, 8), 8, Fixed(n_samples=2), patches=small_bank)
    path = save_map_figure(result, tmp_path / "map.png", small_image)
    assert Image.open(path).size[0] > 100


def test_psnr_of_a_nan_output_is_nan_and_identical_images_get_the_cap() -> None:
    target = torch.rand(2, 3, 8, 8)
    pred = target.clone()
    pred[1, 0, 0, 0] = float("nan")
    values = psnr(pred, target)
    assert values[0].item() == 100.0 and torch.isnan(values[1])


def test_offset_corrected_psnr_removes_a_whole_image_colour_offset_and_nothing_else() -> None:
    """A per-channel constant error is removed entirely (the cap); a zero-mean error is left as it is; in general the
    8-bit MSE splits into the offset-free part plus the mean over channels of the squared offset."""
    target = torch.round(torch.rand(1, 3, 16, 16) * 100 + 60) / 255
    offset = torch.tensor([10.0, -5.0, 0.0]).view(1, 3, 1, 1) / 255
    assert offset_corrected_psnr(target + offset, target).item() == 100.0
    assert psnr(target + offset, target).item() == pytest.approx(10 * np.log10(255**2 / ((100 + 25) / 3)))
    checker = ((torch.arange(16).view(-1, 1) + torch.arange(16)) % 2 * 2 - 1).expand(1, 3, 16, 16) * 3.0 / 255
    assert offset_corrected_psnr(target + checker, target).item() == pytest.approx(psnr(target + checker, target).item())
    both = target + checker + offset
    mse = 255**2 / 10 ** (psnr(both, target).item() / 10)
    mse_free = 255**2 / 10 ** (offset_corrected_psnr(both, target).item() / 10)
    assert mse_free == pytest.approx(9.0) and mse == pytest.approx(9.0 + 125 / 3)


def test_the_colour_scale_is_set_by_the_effects_outside_the_roi() -> None:
    import matplotlib.pyplot as plt

    from cemap.figures import CMAP, color_bound, map_rgba

    eff, roi = np.zeros((5, 5)), np.zeros((5, 5), bool)
    roi[2, 2], eff[2, 2] = True, 1.0          # the ROI's own block, 100x the rest
    eff[0, 0], eff[4, 4] = 0.01, -0.01         # significant outside blocks
    eff[0, 4] = 0.005                          # below tol: not significant
    result = synthetic_result(eff, roi)
    bound = color_bound(result)
    assert bound == pytest.approx(0.01)
    rgba = map_rgba(result, bound)
    cmap = plt.get_cmap(CMAP)
    assert np.allclose(rgba[0, 0], cmap(1.0)) and np.allclose(rgba[4, 4], cmap(0.0))  # full colour, not white
    assert np.allclose(rgba[2, 2], cmap(1.0))                                          # the ROI saturates
    assert rgba[0, 4, :3].min() > 0.7                                                  # pale: not significant


def test_grid_panels_are_blended_over_the_degraded_input_the_map_was_computed_on() -> None:
    from cemap.data import load_image
    from cemap.report import input_underlay
    from cemap.tasks import SuperResolution

    result = synthetic_result(np.zeros((4, 4)), np.eye(4, dtype=bool))
    result.meta["config"] = {"image": "embedded:chelsea", "crop": 32, "seed": 3,
                             "task": {"_target_": "cemap.tasks.SuperResolution", "scale": 4}}
    cache: dict = {}
    shown = input_underlay(result, cache)
    clean, _ = load_image("embedded:chelsea", 32, multiple=4)
    assert shown is not None and shown.shape == (32, 32, 3) and shown.dtype == np.uint8
    assert np.array_equal(shown, SuperResolution(scale=4).input_view(clean, 3))
    assert np.array_equal(shown[::4, ::4], shown[3::4, 3::4])  # the 8 px LR input on the output grid
    assert len(cache) == 1 and input_underlay(result, cache) is shown
    result.meta["config"] = {"image": "/nonexistent.png", "crop": 32, "seed": 0, "task": result.meta["config"]["task"]}
    assert input_underlay(result, {}) is None and input_underlay(synthetic_result(np.zeros((2, 2)),
                                                                                   np.eye(2, dtype=bool)), {}) is None


def test_a_map_without_negative_blocks_has_a_negative_mass_share_of_plus_zero() -> None:
    from cemap.stats import map_statistics, summarize

    eff, roi = np.zeros((5, 5)), np.zeros((5, 5), bool)
    roi[2, 2], eff[2, 2], eff[0, 0] = True, 1.0, 0.5
    result = synthetic_result(eff, roi)
    result.meta.update(roi={"x": 16, "y": 16, "size": 8}, image_size=[40, 40])
    for share in (summarize(result)["negative_mass_fraction"],
                  map_statistics(result, 8, 0.9)["negative_mass_fraction"]):
        assert share == 0.0 and np.copysign(1.0, share) == 1.0
