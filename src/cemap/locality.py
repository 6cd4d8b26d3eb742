"""Exact locality acceleration: skip the blocks a local model cannot see, and run the rest on a crop.

A model with a finite receptive field of radius ``r`` (input pixels) computes an ROI's output from the input pixels
within ``r`` of the ROI only. Two savings follow, and both are exact:

* **Structural zeros.** A block whose intervention changes no pixel in that reach cannot change the ROI: its effect
  is exactly 0 and needs no forward pass (status ``STATUS_STRUCTURAL_ZERO`` in the result).
* **Crop.** The remaining interventions run on a window of the input (the reach, clamped to the image) instead of
  the whole image; the ROI output is the same and each forward is cheaper.

The radius comes from the model's ``info.receptive_radius`` (or the user's override) but is never trusted: a probe
compares ROI outputs (a) of the full image and of the crop, on the real input and on random perturbations, and
(b) of the real input and of inputs randomised everywhere beyond the reach. Any difference above ``atol`` (0 by
default: bit-identical) refuses the acceleration it would invalidate, so a model with global pooling or attention is
never screened or cropped even when its metadata claims locality. Convolution kernels may sum in a different order
for different input sizes (oneDNN does for some crop widths), so the probe tries a few wider windows before it gives
up on cropping. The task side is checked too: an intervention on a sample block must change no pixel farther from the
block than the task's declared ``intervention_spread``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from cemap.grid import ROI, Block, BlockGrid
from cemap.patches import PatchBank
from cemap.tasks.base import Degraded, Task
from cemap.validation import SettingError, check_number

MODES = ("auto", "off")
EXTRA_MARGINS = (0, 8, 16, 32)
"""Input pixels added around the reach when the tightest crop does not reproduce the full image bit for bit."""


@dataclass(frozen=True)
class LocalitySettings:
    """``mode``: ``auto`` (accelerate when a radius is known and the probe confirms it) or ``off``. ``radius``
    overrides the model's declared receptive radius (input pixels). ``atol``: largest accepted ROI output difference.
    ``probes``: random perturbations per check."""

    mode: str = "auto"
    radius: int | None = None
    atol: float = 0.0
    probes: int = 2

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise SettingError(f"cem.locality.mode={self.mode!r}; choose one of {MODES}")
        if self.radius is not None and self.radius < 0:
            raise SettingError(f"cem.locality.radius={self.radius} must be >= 0 (input pixels) or null")
        check_number("cem.locality.atol", self.atol, 0.0)
        if self.probes < 1:
            raise SettingError(f"cem.locality needs atol >= 0 and probes >= 1, got {self.atol}, {self.probes}")


@dataclass(frozen=True)
class Window:
    """A rectangle ``[y0, y1) x [x0, x1)`` of input pixels."""

    y0: int
    y1: int
    x0: int
    x1: int

    def crop(self, batch: torch.Tensor) -> torch.Tensor:
        return batch[..., self.y0 : self.y1, self.x0 : self.x1]

    def intersects(self, other: Window) -> bool:
        return self.y0 < other.y1 and other.y0 < self.y1 and self.x0 < other.x1 and other.x0 < self.x1

    def grown(self, margin: int, height: int, width: int) -> Window:
        return Window(max(0, self.y0 - margin), min(height, self.y1 + margin),
                      max(0, self.x0 - margin), min(width, self.x1 + margin))

    def union(self, other: Window) -> Window:
        return Window(min(self.y0, other.y0), max(self.y1, other.y1), min(self.x0, other.x0), max(self.x1, other.x1))

    @property
    def area(self) -> int:
        return (self.y1 - self.y0) * (self.x1 - self.x0)

    def as_list(self) -> list[int]:
        return [self.y0, self.y1, self.x0, self.x1]


@dataclass
class LocalityPlan:
    """What the engine may skip: ``reachable[r, k]`` says whether block ``k`` can change ROI ``r`` (None: all can);
    ``window`` is the input crop every forward runs on (None: the full image). ``report`` goes into result metadata."""

    reachable: np.ndarray | None = None
    window: Window | None = None
    report: dict[str, Any] = field(default_factory=dict)

    def crop_output(self, clean: torch.Tensor, rois: Sequence[ROI], scale: int) -> tuple[torch.Tensor, list[ROI]]:
        """The clean image and the ROIs in the coordinates of the crop's output."""
        if self.window is None:
            return clean, list(rois)
        w = self.window
        cropped = clean[:, w.y0 * scale : w.y1 * scale, w.x0 * scale : w.x1 * scale]
        return cropped, [ROI(r.x - w.x0 * scale, r.y - w.y0 * scale, r.size) for r in rois]


def roi_reach(roi: ROI, radius: int, scale: int, height: int, width: int) -> Window:
    """Input pixels within ``radius`` of the input pixels under the ROI, clamped to the ``height`` x ``width`` input."""
    core = Window(roi.y // scale, -(-(roi.y + roi.size) // scale), roi.x // scale, -(-(roi.x + roi.size) // scale))
    return core.grown(radius, height, width)


def block_footprint(block: Block, scale: int, spread: int, height: int, width: int) -> Window:
    """Input pixels an intervention on ``block`` may change."""
    rows, cols = block.scaled(scale)
    return Window(rows.start, rows.stop, cols.start, cols.stop).grown(spread, height, width)


Forward = Callable[[torch.Tensor], torch.Tensor]


def _roi_out(out: torch.Tensor, roi: ROI) -> torch.Tensor:
    return out[..., roi.y : roi.y + roi.size, roi.x : roi.x + roi.size]


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.to(torch.float64) - b.to(torch.float64)).abs().max())


def _randomise_outside(image: torch.Tensor, keep: Window, generator: torch.Generator) -> torch.Tensor:
    noise = torch.rand(image.shape, generator=generator, dtype=torch.float32).to(image.device, image.dtype)
    out = noise.clone()
    out[..., keep.y0 : keep.y1, keep.x0 : keep.x1] = image[..., keep.y0 : keep.y1, keep.x0 : keep.x1]
    return out


def check_task_spread(task: Task, degraded: Degraded, clean: torch.Tensor, grid: BlockGrid, patches: torch.Tensor,
                      seed: int) -> int | None:
    """Farthest (Chebyshev) input pixel an intervention on a central block changed beyond the block, if that exceeds
    the task's declared spread; None when the declaration holds."""
    block = grid.block((grid.rows // 2) * grid.cols + grid.cols // 2)
    patches = patches[..., : block.height, : block.width]  # the central block can be a partial edge block
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(9999,))))
    changed = (task.intervene(degraded, clean, block, patches, rng) != degraded.image.unsqueeze(0)).any(dim=(0, 1))
    ys, xs = torch.nonzero(changed, as_tuple=True)
    if ys.numel() == 0:
        return None
    rows, cols = block.scaled(task.scale)
    reach_y = torch.clamp(torch.maximum(rows.start - ys, ys - (rows.stop - 1)), min=0)
    reach_x = torch.clamp(torch.maximum(cols.start - xs, xs - (cols.stop - 1)), min=0)
    farthest = int(torch.maximum(reach_y, reach_x).max())
    return farthest if farthest > task.intervention_spread else None


def plan_for_model(forward: Forward, model: object, task: Task, degraded: Degraded, clean: torch.Tensor,
                   rois: Sequence[ROI], grid: BlockGrid, bank: PatchBank, settings: LocalitySettings,
                   seed: int) -> LocalityPlan:
    """:func:`plan_locality` with the radius the model declares (``model.info.receptive_radius``, zoo models) and a
    few patches of ``bank`` for the task-spread check."""
    block = grid.block(0)
    sample = bank.tensor(clean.device, block.height, block.width)[:4]
    radius = getattr(getattr(model, "info", None), "receptive_radius", None)
    return plan_locality(forward, task, degraded, clean, rois, grid, radius, settings, sample, seed)


def plan_locality(
    forward: Forward,
    task: Task,
    degraded: Degraded,
    clean: torch.Tensor,
    rois: Sequence[ROI],
    grid: BlockGrid,
    declared_radius: int | None,
    settings: LocalitySettings,
    sample_patches: torch.Tensor,
    seed: int,
) -> LocalityPlan:
    """Decide, and verify by probing the model, which blocks to skip and which crop to run on.

    ``forward`` maps a (1, C, h, w) input to its output. Costs 1 + (probes + 1) x len(rois) forwards of the full image
    plus a few of crops; nothing when the mode is ``off`` or no radius is known.
    """
    radius = settings.radius if settings.radius is not None else declared_radius
    report: dict[str, Any] = {"mode": settings.mode, "radius": radius, "atol": settings.atol, "screened": False,
                              "cropped": False}
    if settings.mode == "off":
        return LocalityPlan(report={**report, "reason": "locality acceleration is off"})
    if radius is None:
        return LocalityPlan(report={**report, "reason": "the model declares no finite receptive field (global model)"})
    spread_breach = check_task_spread(task, degraded, clean, grid, sample_patches, seed)
    if spread_breach is not None:
        return LocalityPlan(report={**report, "reason": f"task {task.name} changed input pixels {spread_breach} px "
                                    f"beyond a block, more than its declared spread {task.intervention_spread}"})

    image = degraded.image.unsqueeze(0)
    calls = 0

    def counted(batch: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        return forward(batch)

    plan = _probe(counted, task, image, rois, grid, radius, settings, seed, report)
    plan.report["probe_forwards"] = calls
    return plan


def _probe(forward: Forward, task: Task, image: torch.Tensor, rois: Sequence[ROI], grid: BlockGrid, radius: int,
           settings: LocalitySettings, seed: int, report: dict[str, Any]) -> LocalityPlan:
    _, _, height, width = image.shape
    scale = task.scale
    reaches = [roi_reach(r, radius, scale, height, width) for r in rois]
    footprints = [block_footprint(b, scale, task.intervention_spread, height, width) for b in grid.blocks]
    reachable = np.array([[fp.intersects(reach) for fp in footprints] for reach in reaches])

    generator = torch.Generator().manual_seed(seed)
    full = forward(image)
    probes: list[tuple[torch.Tensor, torch.Tensor]] = [(image, full)]
    outside = 0.0
    for roi, reach in zip(rois, reaches):
        for _ in range(settings.probes):
            perturbed = _randomise_outside(image, reach, generator)
            out = forward(perturbed)
            outside = max(outside, _max_diff(_roi_out(out, roi), _roi_out(full, roi)))
            probes.append((perturbed, out))
    report["probe_beyond_reach_max_diff"] = outside
    if outside > settings.atol:
        return LocalityPlan(report={**report, "reason": f"probe: randomising the input beyond the claimed radius "
                                    f"{radius} px moved the ROI output by {outside:.3g} (> atol {settings.atol}); the "
                                    "model is not that local, so the full image and every block are used"})
    report.update(screened=True, n_structural_zero=int((~reachable).all(axis=0).sum()))

    union = reaches[0]
    for reach in reaches[1:]:
        union = union.union(reach)
    tried = []
    for extra in EXTRA_MARGINS:
        window = union.grown(extra, height, width)
        if window == Window(0, height, 0, width):
            break
        worst = 0.0
        for inp, out in probes:
            cropped = forward(window.crop(inp).contiguous())
            for roi in rois:
                local = ROI(roi.x - window.x0 * scale, roi.y - window.y0 * scale, roi.size)
                worst = max(worst, _max_diff(_roi_out(cropped, local), _roi_out(out, roi)))
        tried.append({"window": window.as_list(), "max_diff": worst})
        if worst <= settings.atol:
            report.update(cropped=True, window=window.as_list(), crop_trials=tried)
            return LocalityPlan(reachable, window, report)
    reason = "the crop would be the whole image" if not tried else \
        f"no crop within {EXTRA_MARGINS[-1]} px of the reach reproduced the full-image ROI output within atol"
    return LocalityPlan(reachable, None, {**report, "crop_trials": tried, "reason": reason})
