"""The engine's guarantees: exact zeros, locality, a closed-form case, batch/seed invariance, resume."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cemap import ROI, CausalEffectMap, Fixed, PatchBank, Reference
from cemap.engine import ModelOutputError, block_rng
from cemap.grid import BlockGrid, GeometryError
from cemap.imageio import to_tensor
from cemap.results import STATUS_NOT_COMPUTED, STATUS_SCREENED, CEMResult
from cemap.tasks import Degraded, Denoise, Task
from tests.conftest import conv_stack


@dataclass
class Identity(Task):
    """Input = clean image; an intervention writes a patch with no noise (a test double for the task interface)."""

    name = "identity"
    scale = 1

    def degrade(self, clean, rng):  # type: ignore[override]
        return Degraded(clean.clone())

    def intervene(self, degraded, clean, block, patches, rng):  # type: ignore[override]
        out = degraded.image.unsqueeze(0).repeat(patches.shape[0], 1, 1, 1)
        out[:, :, block.y0 : block.y1, block.x0 : block.x1] = patches
        return out


@dataclass(frozen=True)
class MeanROI:
    """A linear ROI metric: the mean output value over the ROI."""

    name: str = "mean"
    higher_is_better: bool = True

    def __call__(self, outputs, clean, roi):  # type: ignore[no-untyped-def]
        return outputs[..., roi.rows, roi.cols].to(torch.float64).mean(dim=(1, 2, 3))


def test_identity_intervention_gives_exact_zeros(small_image: np.ndarray) -> None:
    """Patches equal to the original content (a constant image and a bank of that constant) change nothing."""
    constant = np.full_like(small_image, 77)
    bank = PatchBank(np.full((10, 8, 8, 3), 77, dtype=np.uint8))
    cem = CausalEffectMap(conv_stack(3), Denoise(sigma=0.0, quantize="none"), device="cpu")
    result = cem.attribute(constant, ROI(16, 16, 8), 8, Fixed(n_samples=4), patches=bank)
    assert np.array_equal(result.effects, np.zeros_like(result.effects))
    assert not result.significant.any()


def test_effects_vanish_exactly_beyond_receptive_field(small_image: np.ndarray, small_bank: np.ndarray) -> None:
    layers = 5  # receptive radius 5 px
    cem = CausalEffectMap(conv_stack(layers), Denoise(sigma=25.0), device="cpu", batch_size=8)
    roi = ROI(24, 16, 8)
    result = cem.attribute(small_image, roi, 8, Fixed(n_samples=3), patches=small_bank)
    grid = BlockGrid(40, 56, 8)
    for block in grid.blocks:
        gap_y = max(roi.y - block.y1 + 1, block.y0 - (roi.y + roi.size - 1), 0)
        gap_x = max(roi.x - block.x1 + 1, block.x0 - (roi.x + roi.size - 1), 0)
        reach = max(gap_y, gap_x)
        effect = result.effects[block.row, block.col]
        if reach > layers:
            assert effect == 0.0, f"block {block.row, block.col} is {reach} px away yet has effect {effect}"
        elif reach <= 1:
            assert effect != 0.0
    assert result.effects[result.roi_mask].min() > 0  # the ROI's own content helps it


class ScalesItsInputInPlace(torch.nn.Module):
    """Like spandrel's RCAN (``x *= rgb_range`` ... ``x /= rgb_range``): in-place work on the input tensor."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x *= 255.0
        return self.inner(x / 255.0)


def test_a_model_that_scales_its_input_in_place_gets_the_map_of_its_cloning_twin(small_image, small_bank) -> None:  # type: ignore[no-untyped-def]
    inner = conv_stack(3)
    maps = [CausalEffectMap(model, Denoise(sigma=25.0), device="cpu", batch_size=4).attribute(
                small_image, ROI(16, 16, 8), 8, Fixed(n_samples=2), patches=small_bank).effects
            for model in (inner, ScalesItsInputInPlace(inner))]
    assert np.array_equal(maps[0], maps[1])


def test_global_pooling_reaches_far_blocks(small_image: np.ndarray, small_bank: np.ndarray) -> None:
    cem = CausalEffectMap(conv_stack(3, global_branch=True), Denoise(sigma=25.0), device="cpu")
    result = cem.attribute(small_image, ROI(0, 0, 8), 8, Fixed(n_samples=3), patches=small_bank)
    far = result.effects[-1, -1]
    assert far != 0.0


def test_linear_model_matches_closed_form(small_image: np.ndarray) -> None:
    """Linear model (3x3 box blur), linear metric (ROI mean), every patch the constant v: the effect of block k is the
    ROI mean of blur(x - x_k->v), computed here directly."""
    blur = torch.full((3, 1, 3, 3), 1.0 / 9.0, dtype=torch.float64)

    def model(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x.to(torch.float64), blur, padding=1, groups=3).to(x.dtype)

    v = 200
    bank = PatchBank(np.full((5, 8, 8, 3), v, dtype=np.uint8))
    roi = ROI(20, 12, 12)
    cem = CausalEffectMap(model, Identity(), metric=MeanROI(), device="cpu")
    result = cem.attribute(small_image, roi, 8, Fixed(n_samples=2), patches=bank)

    x = to_tensor(small_image).to(torch.float64)
    expected = np.zeros(result.shape)
    for block in BlockGrid(40, 56, 8).blocks:
        delta = torch.zeros_like(x)
        delta[:, block.y0 : block.y1, block.x0 : block.x1] = x[:, block.y0 : block.y1, block.x0 : block.x1] - v / 255.0
        out = F.conv2d(delta[None], blur, padding=1, groups=3)
        expected[block.row, block.col] = out[..., roi.rows, roi.cols].mean().item()
    np.testing.assert_allclose(result.effects, expected, atol=2e-7)
    assert np.abs(expected).max() > 1e-3


def test_batch_size_and_seed(small_image: np.ndarray, small_bank: np.ndarray) -> None:
    model = conv_stack(4)
    maps = []
    for batch_size in (1, 7, 64):
        cem = CausalEffectMap(model, Denoise(), device="cpu", batch_size=batch_size)
        maps.append(cem.attribute(small_image, ROI(16, 8, 16), 8, Fixed(n_samples=5), seed=3, patches=small_bank))
    for other in maps[1:]:
        assert np.array_equal(maps[0].effects, other.effects)
        assert np.array_equal(maps[0].se, other.se, equal_nan=True)
    again = CausalEffectMap(model, Denoise(), device="cpu").attribute(
        small_image, ROI(16, 8, 16), 8, Fixed(n_samples=5), seed=3, patches=small_bank
    )
    assert np.array_equal(maps[0].effects, again.effects)
    different = CausalEffectMap(model, Denoise(), device="cpu").attribute(
        small_image, ROI(16, 8, 16), 8, Fixed(n_samples=5), seed=4, patches=small_bank
    )
    assert not np.array_equal(maps[0].effects, different.effects)


def test_common_random_numbers_do_not_depend_on_model() -> None:
    a = block_rng(0, 1, 17).random(5)
    assert np.array_equal(a, block_rng(0, 1, 17).random(5))
    assert not np.array_equal(a, block_rng(0, 0, 17).random(5))
    assert not np.array_equal(a, block_rng(0, 1, 18).random(5))


def test_non_square_image_with_partial_blocks(small_bank: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(21, 35, 3), dtype=np.uint8)
    cem = CausalEffectMap(conv_stack(2), Denoise(), device="cpu")
    result = cem.attribute(image, ROI(30, 14, 5), 8, Fixed(n_samples=2), patches=small_bank)
    assert result.shape == (3, 5)
    assert result.roi_mask[1:, 3:].all() and result.roi_mask.sum() == 4
    assert np.isfinite(result.effects).all()


@pytest.mark.parametrize(
    "roi,block,message",
    [(ROI(50, 0, 8), 8, "outside"), (ROI(0, 0, 0), 8, "roi.size=0"), (ROI(0, 0, 8), 0, "block_size=0"),
     (ROI(0, 0, 8), 100, "larger than")],
)
def test_invalid_geometry_raises_before_any_forward(small_image, small_bank, roi, block, message) -> None:  # type: ignore[no-untyped-def]
    calls = []

    def model(x: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return x

    with pytest.raises(GeometryError, match=message):
        CausalEffectMap(model, Denoise(), device="cpu").attribute(small_image, roi, block, "fixed", patches=small_bank)
    assert not calls


def test_bad_model_output_is_named(small_image: np.ndarray, small_bank: np.ndarray) -> None:
    cem = CausalEffectMap(lambda x: x[..., :-1], Denoise(), device="cpu", model_name="cropper")
    with pytest.raises(ModelOutputError, match="cropper returned .* task denoise"):
        cem.attribute(small_image, ROI(0, 0, 8), 8, "fixed", patches=small_bank)
    cem = CausalEffectMap(lambda x: x * float("nan"), Denoise(), device="cpu", model_name="nanmodel")
    with pytest.raises(ModelOutputError, match="nanmodel returned NaN"):
        cem.attribute(small_image, ROI(0, 0, 8), 8, "fixed", patches=small_bank)


def test_reference_estimator_screens_and_refines(small_image: np.ndarray, small_bank: np.ndarray) -> None:
    cem = CausalEffectMap(conv_stack(3), Denoise(), device="cpu")
    result = cem.attribute(small_image, ROI(16, 16, 8), 8, Reference(n_coarse=3, n_fine=6), patches=small_bank)
    screened = result.status == STATUS_SCREENED
    assert screened.any() and (~screened).any()
    assert (result.effects[screened] == 0).all() and (result.forwards[screened] == 3).all()
    assert (result.forwards[~screened] == 9).all() and (result.n[~screened] == 6).all()
    assert np.isfinite(result.se[~screened]).all()


def test_block_subset_marks_the_rest_not_computed(small_image: np.ndarray, small_bank: np.ndarray) -> None:
    cem = CausalEffectMap(conv_stack(3), Denoise(), device="cpu")
    full = cem.attribute(small_image, ROI(16, 16, 8), 8, Fixed(n_samples=3), patches=small_bank)
    part = cem.attribute(small_image, ROI(16, 16, 8), 8, Fixed(n_samples=3), patches=small_bank, blocks=[0, 9, 10])
    done = part.status != STATUS_NOT_COMPUTED
    assert np.flatnonzero(done).tolist() == [0, 9, 10]
    assert np.array_equal(part.effects[done], full.effects[done])
    assert np.isnan(part.effects[~done]).all()


def test_out_of_range_block_indices_are_named(small_image: np.ndarray, small_bank: np.ndarray) -> None:
    """The message lists the offending indices (40 x 56 px at 8 px: 35 blocks), not the first ones asked for."""
    cem = CausalEffectMap(conv_stack(3), Denoise(), device="cpu")
    with pytest.raises(GeometryError, match=r"\[0, 35\); out of range: \[35, 40\]"):
        cem.attribute(small_image, ROI(16, 16, 8), 8, Fixed(n_samples=1), patches=small_bank, blocks=[0, 35, 40])


class Interrupted(RuntimeError):
    pass


class CrashAfter(torch.nn.Module):
    """Wraps a model and raises after ``limit`` forward calls, like a job killed mid-run."""

    def __init__(self, inner: torch.nn.Module, limit: int) -> None:
        super().__init__()
        self.inner, self.limit, self.calls = inner, limit, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls > self.limit:
            raise Interrupted
        return self.inner(x)


@pytest.mark.parametrize("estimator", [Fixed(n_samples=4), Reference(n_coarse=2, n_fine=5)])
def test_kill_and_resume_gives_the_uninterrupted_map(tmp_path, small_image, small_bank, estimator) -> None:  # type: ignore[no-untyped-def]
    inner = conv_stack(3)
    uninterrupted = CausalEffectMap(inner, Denoise(), device="cpu", batch_size=5).attribute(
        small_image, ROI(16, 16, 8), 8, estimator, patches=small_bank
    )
    state = tmp_path / "cem.partial.npz"
    crashing = CrashAfter(inner, limit=9)
    # the crash wrapper has the inner model's parameters under other names; give it the same fingerprint
    with pytest.raises(Interrupted):
        CausalEffectMap(crashing, Denoise(), device="cpu", batch_size=5, model_name="m").attribute(
            small_image, ROI(16, 16, 8), 8, estimator, patches=small_bank, state_path=state, checkpoint_every_s=0
        )
    assert state.is_file()
    crashing.limit = 10**9
    crashing.calls = 0
    resumed = CausalEffectMap(crashing, Denoise(), device="cpu", batch_size=5, model_name="m").attribute(
        small_image, ROI(16, 16, 8), 8, estimator, patches=small_bank, state_path=state, checkpoint_every_s=0
    )
    assert np.array_equal(resumed.effects, uninterrupted.effects)
    assert np.array_equal(resumed.se, uninterrupted.se, equal_nan=True)
    assert resumed.meta["forwards"] < uninterrupted.meta["forwards"]


def test_result_round_trip(tmp_path, small_image, small_bank) -> None:  # type: ignore[no-untyped-def]
    cem = CausalEffectMap(conv_stack(2), Denoise(), device="cpu")
    result = cem.attribute(small_image, ROI(8, 8, 8), 8, Fixed(n_samples=3), patches=small_bank, keep_samples=True)
    result.save(tmp_path)
    loaded = CEMResult.load(tmp_path)
    assert np.array_equal(loaded.effects, result.effects)
    assert loaded.meta["seed"] == 0 and loaded.meta["estimator"]["name"] == "fixed"
    assert loaded.samples["stage0"].shape == (*result.shape, 3)
    assert {"model", "task", "roi", "block_size", "versions", "git_commit", "patch_bank"} <= set(loaded.meta)


def test_lower_is_better_metric_is_oriented(small_image: np.ndarray, small_bank: np.ndarray) -> None:
    psnr = CausalEffectMap(conv_stack(3), Denoise(), device="cpu").attribute(
        small_image, ROI(16, 16, 8), 8, Fixed(n_samples=4), patches=small_bank
    )
    mse = CausalEffectMap(conv_stack(3), Denoise(), metric="mse", device="cpu").attribute(
        small_image, ROI(16, 16, 8), 8, Fixed(n_samples=4), patches=small_bank
    )
    roi = psnr.roi_mask
    assert (np.sign(psnr.effects[roi]) == np.sign(mse.effects[roi])).all()


@pytest.mark.parametrize("estimator", [Fixed(n_samples=3), Reference(n_coarse=2, n_fine=4)])
def test_many_rois_equal_separate_runs(small_image, small_bank, estimator) -> None:  # type: ignore[no-untyped-def]
    cem = CausalEffectMap(conv_stack(3), Denoise(), device="cpu", batch_size=6)
    rois = [ROI(8, 8, 8), ROI(30, 20, 12), ROI(0, 32, 8)]
    together = cem.attribute(small_image, rois, 8, estimator, patches=small_bank)
    assert isinstance(together, list) and len(together) == 3
    shared = together[0].meta["forwards"]
    separate_forwards = 0
    for roi, joint in zip(rois, together):
        alone = cem.attribute(small_image, roi, 8, estimator, patches=small_bank)
        separate_forwards += alone.meta["forwards"]
        assert np.array_equal(alone.effects, joint.effects)
        assert np.array_equal(alone.se, joint.se, equal_nan=True)
        assert alone.origin == joint.origin and joint.meta["roi"]["x"] == roi.x
    assert shared < separate_forwards


def test_channels_last_and_bf16_run_and_stay_close(small_image: np.ndarray, small_bank: np.ndarray) -> None:
    roi, est = ROI(24, 16, 8), Fixed(n_samples=2)
    fp32 = CausalEffectMap(conv_stack(3), Denoise(sigma=25.0), device="cpu").attribute(
        small_image, roi, 8, est, patches=small_bank)
    cl = CausalEffectMap(conv_stack(3), Denoise(sigma=25.0), device="cpu", channels_last=True).attribute(
        small_image, roi, 8, est, patches=small_bank)
    bf16 = CausalEffectMap(conv_stack(3), Denoise(sigma=25.0), device="cpu", precision="bf16").attribute(
        small_image, roi, 8, est, patches=small_bank)
    assert np.max(np.abs(cl.effects - fp32.effects)) < 1e-3
    assert bf16.meta["precision"] == "bf16" and np.max(np.abs(bf16.effects - fp32.effects)) < 1.0
    with pytest.raises(ValueError, match="precision"):
        CausalEffectMap(conv_stack(1), Denoise(), precision="fp8")


@pytest.mark.slow
def test_torch_compile_gives_the_same_map(small_image: np.ndarray, small_bank: np.ndarray) -> None:
    roi, est = ROI(24, 16, 8), Fixed(n_samples=2)
    eager = CausalEffectMap(conv_stack(3), Denoise(sigma=25.0), device="cpu").attribute(
        small_image, roi, 8, est, patches=small_bank)
    compiled = CausalEffectMap(conv_stack(3), Denoise(sigma=25.0), device="cpu", compile=True).attribute(
        small_image, roi, 8, est, patches=small_bank)
    assert np.max(np.abs(compiled.effects - eager.effects)) < 1e-3
