"""Exact locality acceleration: same map as the full image for local models, refused for anything global."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from cemap import ROI, CausalEffectMap, Fixed, Reference
from cemap.grid import BlockGrid
from cemap.locality import LocalitySettings, Window, block_footprint, roi_reach
from cemap.results import STATUS_STRUCTURAL_ZERO
from cemap.tasks import Deblur, Denoise, SuperResolution
from tests.conftest import conv_stack

OFF = LocalitySettings(mode="off")


def maps(model, task, image, bank, roi, estimator=None, **kw):  # type: ignore[no-untyped-def]
    estimator = estimator or Fixed(n_samples=3)
    fast = CausalEffectMap(model, task, device="cpu", batch_size=8, **kw).attribute(image, roi, 8, estimator, patches=bank)
    full = CausalEffectMap(model, task, device="cpu", batch_size=8, locality=OFF).attribute(
        image, roi, 8, estimator, patches=bank)
    return fast, full


@pytest.mark.parametrize("estimator", [Fixed(n_samples=3), Reference(n_coarse=2, n_fine=4)])
def test_crop_and_screening_equal_the_full_image_on_a_local_model(small_image, small_bank, estimator) -> None:
    fast, full = maps(conv_stack(3, claims_radius=3), Denoise(sigma=25.0), small_image, small_bank, ROI(24, 16, 8),
                      estimator)
    report = fast.meta["locality"]
    assert report["screened"] and report["cropped"], report
    assert np.max(np.abs(fast.effects - full.effects)) <= 1e-6
    structural = fast.status == STATUS_STRUCTURAL_ZERO
    assert structural.sum() == report["n_structural_zero"] > 0
    assert np.all(fast.effects[structural] == 0) and np.all(fast.forwards[structural] == 0)
    assert fast.meta["forwards"] < full.meta["forwards"]


def test_several_rois_with_locality_equal_separate_runs(small_image, small_bank) -> None:
    model, task, rois = conv_stack(2, claims_radius=2), Denoise(sigma=25.0), [ROI(8, 8, 8), ROI(40, 24, 8)]
    cem = CausalEffectMap(model, task, device="cpu", batch_size=8)
    together = cem.attribute(small_image, rois, 8, Fixed(n_samples=2), patches=small_bank)
    for roi, joint in zip(rois, together):
        alone = cem.attribute(small_image, roi, 8, Fixed(n_samples=2), patches=small_bank)
        assert np.array_equal(joint.effects, alone.effects)
        assert np.array_equal(joint.status, alone.status)


def test_far_apart_rois_of_a_local_model_run_apart_and_give_the_full_image_maps(small_image, small_bank,
                                                                                  tmp_path) -> None:
    model, task, rois = conv_stack(2, claims_radius=2), Denoise(sigma=25.0), [ROI(0, 0, 8), ROI(48, 32, 8)]
    cem = CausalEffectMap(model, task, device="cpu", batch_size=8)
    apart = cem.attribute(small_image, rois, 8, Fixed(n_samples=2), patches=small_bank,
                          state_path=tmp_path / "cem.partial.npz", checkpoint_every_s=0.0)
    full = CausalEffectMap(model, task, device="cpu", batch_size=8, locality=OFF).attribute(
        small_image, rois, 8, Fixed(n_samples=2), patches=small_bank)
    for one, reference in zip(apart, full):
        assert one.meta["rois_sharing_forwards"] == 1 and one.meta["locality"]["cropped"]
        assert np.max(np.abs(one.effects - reference.effects)) <= 1e-6
        assert (one.status == STATUS_STRUCTURAL_ZERO).any()
    assert [a.meta["roi"] for a in apart] == [{"x": 0, "y": 0, "size": 8}, {"x": 48, "y": 32, "size": 8}]
    assert sorted(f.name for f in tmp_path.iterdir()) == ["cem.part0.partial.npz", "cem.part1.partial.npz"]


def test_neighbouring_rois_of_a_local_model_share_their_forwards(small_image, small_bank) -> None:
    model, task, rois = conv_stack(2, claims_radius=2), Denoise(sigma=25.0), [ROI(16, 16, 8), ROI(24, 16, 8)]
    together = CausalEffectMap(model, task, device="cpu", batch_size=8).attribute(
        small_image, rois, 8, Fixed(n_samples=2), patches=small_bank)
    assert [one.meta["rois_sharing_forwards"] for one in together] == [2, 2]


def test_global_pooling_is_refused_even_when_metadata_claims_locality(small_image, small_bank) -> None:
    liar = conv_stack(3, global_branch=True, claims_radius=3)
    fast, full = maps(liar, Denoise(sigma=25.0), small_image, small_bank, ROI(0, 0, 8))
    report = fast.meta["locality"]
    assert not report["screened"] and not report["cropped"]
    assert "probe" in report["reason"] and report["probe_beyond_reach_max_diff"] > 0
    assert np.array_equal(fast.effects, full.effects)
    assert fast.effects[-1, -1] != 0.0  # far blocks are sampled, and matter


def test_an_understated_radius_is_refused(small_image, small_bank) -> None:
    fast, full = maps(conv_stack(5, claims_radius=2), Denoise(sigma=25.0), small_image, small_bank, ROI(24, 16, 8))
    assert not fast.meta["locality"]["screened"]
    assert np.array_equal(fast.effects, full.effects)


def test_a_model_without_a_radius_is_never_probed(small_image, small_bank) -> None:
    result = CausalEffectMap(conv_stack(2), Denoise(sigma=25.0), device="cpu").attribute(
        small_image, ROI(0, 0, 8), 8, Fixed(n_samples=1), patches=small_bank)
    report = result.meta["locality"]
    assert not report["screened"] and "probe_forwards" not in report


def test_a_radius_override_enables_a_model_without_metadata(small_image, small_bank) -> None:
    fast, full = maps(conv_stack(2), Denoise(sigma=25.0), small_image, small_bank, ROI(24, 16, 8),
                      locality=LocalitySettings(radius=2))
    assert fast.meta["locality"]["screened"]
    assert np.max(np.abs(fast.effects - full.effects)) <= 1e-6


def test_sr_reach_and_crop_are_in_input_pixels(small_bank) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(64, 96, 3), dtype=np.uint8)
    bank = np.repeat(np.repeat(small_bank[:, ::2, ::2], 2, axis=1), 2, axis=2)
    model = UpsampleStack(conv_stack(2), 2)
    fast, full = maps(model, SuperResolution(scale=2), image, bank, ROI(32, 16, 16))
    assert fast.meta["locality"]["cropped"]
    assert np.max(np.abs(fast.effects - full.effects)) <= 1e-6


def test_a_task_that_spreads_beyond_its_declaration_is_refused(small_image, small_bank) -> None:
    @dataclass
    class Understated(Deblur):
        @property
        def intervention_spread(self) -> int:
            return 0

    result = CausalEffectMap(conv_stack(2, claims_radius=2), Understated(kernel_size=5), device="cpu").attribute(
        small_image, ROI(24, 16, 8), 8, Fixed(n_samples=1), patches=small_bank)
    assert not result.meta["locality"]["screened"]
    assert "declared spread" in result.meta["locality"]["reason"]


def test_deblur_footprints_include_the_kernel_spread(small_image, small_bank) -> None:
    fast, full = maps(conv_stack(2, claims_radius=2), Deblur(kernel_size=5), small_image, small_bank, ROI(24, 16, 8))
    assert fast.meta["locality"]["screened"]
    assert np.max(np.abs(fast.effects - full.effects)) <= 1e-6


def test_reach_geometry() -> None:
    assert roi_reach(ROI(8, 8, 8), 3, 1, 40, 40) == Window(5, 19, 5, 19)
    assert roi_reach(ROI(8, 8, 8), 3, 4, 10, 10) == Window(0, 7, 0, 7)  # input 2..4, grown and clamped
    block = BlockGrid(40, 40, 8).block(0)
    assert block_footprint(block, 1, 2, 40, 40) == Window(0, 10, 0, 10)
    with pytest.raises(ValueError, match="mode"):
        LocalitySettings(mode="on")


class UpsampleStack:
    """A local x``scale`` SR test model: nearest upsampling after a conv stack (radius = the stack's layers)."""

    def __init__(self, body, scale: int) -> None:  # type: ignore[no-untyped-def]
        from cemap.models.base import ModelInfo

        self.body, self.scale = body, scale
        self.info = ModelInfo(scale=scale, same_size=False, receptive_radius=2)
        self.__name__ = "upsample_stack"

    def __call__(self, x):  # type: ignore[no-untyped-def]
        import torch.nn.functional as F

        return F.interpolate(self.body(x), scale_factor=self.scale, mode="nearest")


@pytest.mark.parametrize("family,kwargs", [
    ("restormer", dict(dim=8, blocks=[1, 1, 1, 1], refinement_blocks=1, heads=[1, 1, 2, 2], ffn_expansion=2.0)),
    ("rcan", dict(scale=1, features=8, groups=1, blocks=1, reduction=4, channel_attention="global")),
])
def test_zoo_models_with_global_attention_are_refused_despite_a_false_radius(family, kwargs, small_bank) -> None:
    from cemap.models import create_model
    from cemap.models.base import ModelInfo

    torch.manual_seed(0)
    model = create_model(family, **kwargs).eval()
    model.info = ModelInfo(receptive_radius=4)  # a lie: transposed attention / global channel attention
    image = np.random.default_rng(0).integers(0, 256, size=(48, 48, 3), dtype=np.uint8)
    result = CausalEffectMap(model, Denoise(sigma=25.0), device="cpu").attribute(
        image, ROI(0, 0, 8), 8, Fixed(n_samples=1), patches=small_bank)
    report = result.meta["locality"]
    assert not report["screened"] and not report["cropped"] and report["probe_beyond_reach_max_diff"] > 0
    assert (result.status != STATUS_STRUCTURAL_ZERO).all()
