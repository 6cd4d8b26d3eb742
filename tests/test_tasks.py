"""Tasks: deterministic degradations, degradation-consistent interventions, and the engine on every task."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cemap import ROI, CausalEffectMap, Fixed
from cemap.data import DeadLeavesSet, FolderSet, dead_leaves
from cemap.grid import BlockGrid
from cemap.imageio import to_tensor
from cemap.resize import MatlabBicubic, PILBicubic, matlab_weights
from cemap.tasks import Deblur, Denoise, Derain, SuperResolution, UpsampledSR
from cemap.tasks.base import Task
from tests.conftest import conv_stack


@pytest.fixture
def clean(small_image: np.ndarray) -> torch.Tensor:
    return to_tensor(small_image[:40, :48])


def patches(n: int, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).random((n, 3, size, size))).to(torch.float32)


ALL_TASKS = [Denoise(), Denoise(sigma_range=(5.0, 50.0)), SuperResolution(2), SuperResolution(4, kernel="matlab"),
             UpsampledSR(4), Derain(), Derain(preset="random"), Deblur(noise_sigma=2.0), Deblur(kernel="motion")]


@pytest.mark.parametrize("task", ALL_TASKS, ids=lambda t: f"{t.name}-{t.describe()}")
def test_degradation_is_seeded_with_right_shape_and_range(task, clean: torch.Tensor) -> None:  # type: ignore[no-untyped-def]
    a = task.degrade(clean, np.random.RandomState(3))
    b = task.degrade(clean, np.random.RandomState(3))
    c = task.degrade(clean, np.random.RandomState(4))
    assert torch.equal(a.image, b.image)
    assert not torch.equal(a.image, c.image) or isinstance(task, (SuperResolution, UpsampledSR))  # SR is deterministic
    h, w = clean.shape[-2:]
    assert a.image.shape == (3, h // task.scale, w // task.scale)
    assert a.image.min() >= 0 and a.image.max() <= 1
    assert torch.equal(torch.round(a.image * 255) / 255, a.image)  # 8-bit levels


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_sr_intervention_changes_only_its_lr_block(scale: int) -> None:
    size = 12 * scale
    clean = torch.rand(3, size, size)
    task = SuperResolution(scale)
    degraded = task.degrade(clean, np.random.RandomState(0))
    grid = BlockGrid(size, size, 2 * scale * 2 if scale != 3 else 12, scale=scale)
    block = grid.block(len(grid) - 2)
    out = task.intervene(degraded, clean, block, patches(3, grid.block_size), np.random.default_rng(0))
    rows, cols = block.scaled(scale)
    assert (rows.stop - rows.start) * scale == block.height and (cols.start * scale) == block.x0
    mask = torch.zeros_like(degraded.image, dtype=torch.bool)
    mask[:, rows, cols] = True
    assert torch.equal(out[:, ~mask], degraded.image.unsqueeze(0).expand_as(out)[:, ~mask])
    assert not torch.equal(out[:, mask], degraded.image.unsqueeze(0).expand_as(out)[:, mask])


def test_sr_roi_maps_through_scale() -> None:
    grid = BlockGrid(64, 64, 8, scale=4)
    mask = grid.roi_mask(ROI(16, 24, 16))
    assert np.argwhere(mask).tolist() == [[3, 2], [3, 3], [4, 2], [4, 3]]
    assert grid.block(3 * 8 + 2).scaled(4) == (slice(6, 8), slice(4, 6))


def test_resize_kernels() -> None:
    w = matlab_weights(16, 4)
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    flat = torch.full((1, 3, 16, 16), 100 / 255)
    for resizer in (MatlabBicubic(), PILBicubic()):
        assert torch.allclose(resizer(flat, 4, 4), flat[..., :4, :4])


def test_derain_rain_layer_is_identical_across_interventions(clean: torch.Tensor) -> None:
    task = Derain()
    degraded = task.degrade(clean, np.random.RandomState(0))
    block = BlockGrid(40, 48, 8).block(7)
    out = task.intervene(degraded, clean, block, patches(4), np.random.default_rng(0))
    beta, rain = degraded.state["beta"], degraded.state["rain"]
    rows, cols = block.scaled(1)
    recomputed = torch.round((patches(4).double() + beta * rain[:, rows, cols].double() / 255).clamp(0, 1) * 255) / 255
    assert torch.equal(out[:, :, rows, cols], recomputed.float())
    outside = torch.ones(40, 48, dtype=torch.bool)
    outside[rows, cols] = False
    assert torch.equal(out[:, :, outside], degraded.image[:, outside].expand(4, -1, -1))
    # the same seed gives the same rain; the background under it is what changes
    assert torch.equal(task.degrade(clean, np.random.RandomState(0)).state["rain"], rain)


def test_rain_generator_medium_statistics() -> None:
    task = Derain()
    clean = torch.zeros(3, 128, 128)
    degraded = task.degrade(clean, np.random.RandomState(1))
    assert 0.6 <= float(degraded.state["beta"]) <= 1.0
    assert degraded.state["rain"].max() == 255 and degraded.state["rain"].min() == 0


def test_deblur_leaves_pixels_beyond_the_kernel_radius_unchanged(clean: torch.Tensor) -> None:
    task = Deblur(kernel_size=7, noise_sigma=3.0)
    degraded = task.degrade(clean, np.random.RandomState(0))
    block = BlockGrid(40, 48, 8).block(2 * 6 + 2)  # rows 16..23, cols 16..23
    out = task.intervene(degraded, clean, block, patches(3), np.random.default_rng(0))
    r = task.radius
    near = torch.zeros(40, 48, dtype=torch.bool)
    near[block.y0 - r : block.y1 + r, block.x0 - r : block.x1 + r] = True
    assert torch.equal(out[:, :, ~near], degraded.image[:, ~near].expand(3, -1, -1))
    assert not torch.equal(out[:, :, near], degraded.image[:, near].expand(3, -1, -1))


def test_deblur_intervention_with_original_content_is_identity(clean: torch.Tensor) -> None:
    task = Deblur(noise_sigma=2.0)
    degraded = task.degrade(clean, np.random.RandomState(0))
    block = BlockGrid(40, 48, 8).block(8)
    same = clean[:, block.y0 : block.y1, block.x0 : block.x1].unsqueeze(0)
    assert torch.equal(task.intervene(degraded, clean, block, same, np.random.default_rng(0))[0], degraded.image)


class Upsample(torch.nn.Module):
    """A fixed x``scale`` model for SR end-to-end tests: nearest upsampling then a 3x3 conv stack."""

    def __init__(self, scale: int) -> None:
        super().__init__()
        self.scale = scale
        self.body = conv_stack(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(torch.nn.functional.interpolate(x, scale_factor=self.scale, mode="nearest"))


@pytest.mark.parametrize(
    "task,model",
    [(Denoise(), conv_stack(3)), (SuperResolution(4), Upsample(4)), (Derain(), conv_stack(3)),
     (Deblur(kernel_size=5), conv_stack(3)), (UpsampledSR(4), conv_stack(3))],
    ids=["denoise", "sr_x4", "derain", "deblur", "sr_upsampled"],
)
def test_engine_runs_every_task(task, model, small_bank: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    image = dead_leaves(48, np.random.default_rng(0))
    result = CausalEffectMap(model, task, device="cpu").attribute(image, ROI(16, 16, 16), 8, Fixed(n_samples=2),
                                                                  patches=small_bank)
    assert result.shape == (6, 6) and np.isfinite(result.effects).all()
    assert (result.effects[result.roi_mask] != 0).any()
    assert result.meta["task"]["name"] == task.name


def test_dead_leaves_seeded_and_varied() -> None:
    a = list(DeadLeavesSet(n_images=2, size=32, seed=1))
    b = list(DeadLeavesSet(n_images=2, size=32, seed=1))
    assert all(np.array_equal(x[1], y[1]) for x, y in zip(a, b))
    assert not np.array_equal(a[0][1], a[1][1])
    assert a[0][1].std() > 10


def test_folder_set_paired_and_conversions(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image

    (tmp_path / "hr").mkdir()
    (tmp_path / "lr").mkdir()
    Image.fromarray(np.full((10, 14), 90, np.uint8)).save(tmp_path / "hr" / "a.png")        # gray
    Image.fromarray(np.full((2, 3, 3), 90, np.uint8)).save(tmp_path / "lr" / "ax4.png")
    s = FolderSet(gt=str(tmp_path / "hr"), lq=str(tmp_path / "lr"), lq_suffix="x4", multiple=4)
    (name, gt), = list(s)
    assert name == "a" and gt.shape == (8, 12, 3)
    (_, gt2, lq), = list(s.pairs())
    assert gt2.shape == (8, 12, 3) and lq.shape == (2, 3, 3)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list(FolderSet(gt=str(tmp_path / "nope")))


def test_every_task_names_its_classical_baseline() -> None:
    """Task.baseline replaces an isinstance chain: SR upsamples bicubically, denoising picks the best Gaussian
    filter, the rest are measured against their degraded input."""
    import torch

    from cemap.tasks.denoise import Denoise
    from cemap.tasks.derain import Derain
    from cemap.tasks.sr import SuperResolution, UpsampledSR

    clean = [torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))]
    lr = [torch.rand(3, 8, 8)]
    name, out = SuperResolution(scale=4).baseline(lr, clean)
    assert name == "bicubic" and out[0].shape == clean[0].shape
    assert UpsampledSR(sr_scale=4).baseline(clean, clean)[0] == "bicubic"
    name, out = Denoise(sigma=50).baseline([c + 0.2 * torch.randn_like(c) for c in clean], clean)
    assert name.startswith("gaussian(sigma=") and out[0].shape == clean[0].shape
    assert Derain().baseline(clean, clean) == ("degraded input", clean)


@pytest.mark.parametrize("task", ALL_TASKS, ids=lambda t: f"{t.name}-{t.describe()}")
def test_interventions_from_the_bank_equal_interventions_with_the_drawn_patches(task, small_bank: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    """``intervene_drawn`` (SR: the bank downscaled once and indexed) gives what ``intervene`` gives on the same
    patches, on a full block and on a partial block at the image edge."""
    from cemap.patches import PatchBank

    clean = to_tensor(dead_leaves(44, np.random.default_rng(1)))
    degraded = task.degrade(clean, np.random.RandomState(0))
    bank = PatchBank(small_bank)
    grid = BlockGrid(44, 44, 8, scale=task.scale)  # 44 = 5 blocks and a 4 px partial one
    chosen = torch.tensor([3, 0, 3, 7])
    for block in (grid.block(0), grid.block(len(grid) - 1)):
        drawn = task.intervene_drawn(degraded, clean, block, bank, chosen, np.random.default_rng(2))
        given = task.intervene(degraded, clean, block, bank.tensor("cpu", block.height, block.width)[chosen],
                               np.random.default_rng(2))
        assert torch.equal(drawn, given), block


class PerBatchSR(SuperResolution):
    """SR that resizes the drawn patches with every batch (the behaviour before the bank was downscaled once)."""

    intervene_drawn = Task.intervene_drawn  # the base class's: resize the drawn patches in every batch


@pytest.mark.parametrize("kernel", ["pil", "matlab"])
def test_sr_maps_are_identical_with_the_bank_downscaled_once(kernel: str, small_bank: np.ndarray) -> None:
    image = dead_leaves(48, np.random.default_rng(0))
    maps = [CausalEffectMap(Upsample(4), task, device="cpu", batch_size=5).attribute(
        image, ROI(16, 16, 16), 8, Fixed(n_samples=3), patches=small_bank).effects
        for task in (SuperResolution(4, kernel=kernel), PerBatchSR(4, kernel=kernel))]
    np.testing.assert_array_equal(maps[0], maps[1])
