"""Gradient-driven views of a causal effect map: per-pixel shares of block effects, and a first-order preview.

**Pixel decomposition.** A block's effect is ``M(x0) - mean_j M(x_j)``, where ``x_j`` are its interventions. Along the
straight path ``x0 + a (x_j - x0)``, integrated gradients split ``M(x_j) - M(x0)`` into one term per input pixel
(completeness: the terms sum to the difference, up to the quadrature error, which is checked and refined). Averaged
over the interventions and negated, the pixel terms sum to the block's effect: which pixels of the block carry its
help or harm. The ROI metric must be differentiable, so the decomposition explains ``psnr_smooth`` (PSNR without the
8-bit rounding); the rounded effect of the same draws is reported next to it.

**First-order map.** One backward pass gives ``g = dM/dx`` at the unmodified input; the first-order effect of block
``k`` is ``-g . mean_j (x_jk - x0)``. Exact for a model and metric that are linear, a fast preview otherwise: it
misses the curvature term (a large change adds squared error whatever its direction), so it is weakest, even of the
wrong sign, on the ROI's own blocks. Its rank correlation with an intervention map is stored in the result.

Both use the engine's stage-0 draws (same seed, same generator per block), so they explain the very interventions a
``fixed`` map averages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cemap import results
from cemap.engine import (
    ImageModel,
    as_clean_tensor,
    as_patch_bank,
    block_interventions,
    resolve_device,
)
from cemap.grid import ROI, BlockGrid
from cemap.locality import LocalitySettings, Window, plan_for_model
from cemap.metrics import ROIPSNR, ROIMetric, ROISmoothPSNR
from cemap.patches import PatchBank
from cemap.results import STATUS_ESTIMATED, CEMResult
from cemap.tasks.base import Degraded, Task
from cemap.validation import SettingError

COMPLETENESS_TOL = 0.01
"""Largest relative gap between a block's summed pixel shares and its effect before the quadrature is refined."""


@dataclass
class _Inputs:
    """What both gradient views start from, laid out as the engine lays it out."""

    roi: ROI
    grid: BlockGrid
    bank: PatchBank
    degraded: Degraded
    clean: torch.Tensor

    def interventions(self, task: Task, block_index: int, n: int, seed: int, device: torch.device) -> torch.Tensor:
        """The engine's stage-0 interventions of a block (same draws, same order)."""
        return block_interventions(task, self.degraded, self.clean, self.bank, self.grid.block(block_index), 0, n, seed,
                                   device)


def _inputs(task: Task, clean: torch.Tensor | np.ndarray, roi: ROI | tuple[int, int, int], block_size: int,
            patches: PatchBank | np.ndarray | None, degraded: Degraded | None, seed: int, device: torch.device) -> _Inputs:
    roi = roi if isinstance(roi, ROI) else ROI(*roi)
    clean_t = as_clean_tensor(clean)
    grid = BlockGrid(clean_t.shape[1], clean_t.shape[2], block_size, scale=task.block_multiple)
    grid.roi_mask(roi)
    if degraded is None:
        degraded = task.degrade(clean_t, np.random.RandomState(seed))
    return _Inputs(roi, grid, as_patch_bank(patches, block_size), degraded.to(device, torch.float32), clean_t.to(device))


@dataclass
class PixelShares:
    """Per-pixel shares of chosen blocks' effects (input pixels; channels summed in ``maps``).

    ``effects[i]`` is block ``blocks[i]``'s effect on ``psnr_smooth`` from these draws, ``effects_rounded[i]`` the
    paper's rounded-PSNR effect of the same draws; ``shares[i]`` (C, h, w) sums to ``effects[i]`` within
    ``completeness[i]`` (relative gap).
    """

    blocks: np.ndarray
    effects: np.ndarray
    effects_rounded: np.ndarray
    shares: np.ndarray
    completeness: np.ndarray
    steps: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def maps(self) -> np.ndarray:
        return self.shares.sum(axis=1)

    def save(self, directory: str | Path) -> Path:
        d = Path(directory)
        results.atomic_save_npz(d / results.DECOMPOSITION_ARRAYS, blocks=self.blocks, effects=self.effects,
                                effects_rounded=self.effects_rounded, shares=self.shares,
                                completeness=self.completeness, steps=self.steps)
        results.atomic_write_json(d / results.DECOMPOSITION_META, self.meta)
        return d

    @classmethod
    def load(cls, directory: str | Path) -> PixelShares:
        d = Path(directory)
        with np.load(d / results.DECOMPOSITION_ARRAYS, allow_pickle=False) as z:
            a = {k: z[k] for k in z.files}
        return cls(meta=results.read_json(d / results.DECOMPOSITION_META), **a)


class PixelDecomposition:
    """Integrated-gradients decomposition of block effects into pixel shares (see the module docstring).

    ``steps`` midpoint nodes on [0, 1] per path, doubled (up to ``max_steps``) for any block whose shares miss
    completeness by more than ``COMPLETENESS_TOL``. A model that passes the locality probe runs on the crop around
    the ROI (``locality``, as in the engine); pixels outside it have no share. Like the engine, it moves the model to
    ``device`` and sets eval mode (no copy).
    """

    def __init__(self, model: ImageModel, task: Task, device: str | torch.device = "auto", steps: int = 32,
                 max_steps: int = 256, batch_size: int = 16, metric: ROIMetric | None = None,
                 locality: LocalitySettings | None = None) -> None:
        if steps < 1 or max_steps < steps:
            raise SettingError(f"need 1 <= steps <= max_steps, got steps={steps}, max_steps={max_steps}")
        self.device = resolve_device(device)
        self.model = model
        if isinstance(model, torch.nn.Module):
            model.to(self.device).eval()
        self.task = task
        self.steps, self.max_steps, self.batch_size = steps, max_steps, batch_size
        self.metric = metric or ROISmoothPSNR()
        self.locality = locality or LocalitySettings()

    def _metric_and_grad(self, inputs: torch.Tensor, clean: torch.Tensor, roi: ROI) -> tuple[torch.Tensor, torch.Tensor]:
        values, grads = [], []
        for chunk in inputs.split(self.batch_size):
            x = chunk.detach().clone().requires_grad_(True)
            with torch.enable_grad():
                m = self.metric(self.model(x), clean, roi)
                (g,) = torch.autograd.grad(m.sum(), x)
            values.append(m.detach())
            grads.append(g)
        return torch.cat(values), torch.cat(grads)

    def _integrated(self, x0: torch.Tensor, delta: torch.Tensor, clean: torch.Tensor, roi: ROI, steps: int) -> torch.Tensor:
        """Sum over the path of gradient x step, per intervention: (n, C, h, w)."""
        total = torch.zeros_like(delta, dtype=torch.float64)
        alphas = (torch.arange(steps, dtype=torch.float64) + 0.5) / steps
        for alpha in alphas:
            _, g = self._metric_and_grad(x0 + float(alpha) * delta, clean, roi)
            total += g.to(torch.float64)
        return delta.to(torch.float64) * total / steps

    def _crop(self, inputs: _Inputs, seed: int) -> tuple[Window | None, torch.Tensor, ROI]:
        """The verified locality crop (see cemap.locality) when the model has one, so each pass is cheaper."""

        def forward(batch: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return self.model(batch)

        plan = plan_for_model(forward, self.model, self.task, inputs.degraded, inputs.clean, [inputs.roi], inputs.grid,
                              inputs.bank, self.locality, seed)
        cropped_clean, (cropped_roi,) = plan.crop_output(inputs.clean, [inputs.roi], self.task.scale)
        return plan.window, cropped_clean, cropped_roi

    def _converged_share(self, x0: torch.Tensor, xs: torch.Tensor, base: torch.Tensor, clean: torch.Tensor,
                         roi: ROI) -> tuple[torch.Tensor, float, float, int]:
        """Pixel shares of one block's interventions ``xs``: integrated gradients along the straight path, with the
        steps doubled until the shares add up to the block's effect (completeness) or ``max_steps`` is reached.
        Returns (shares, effect, completeness gap, steps used)."""
        values, _ = self._metric_and_grad(xs, clean, roi)
        effect = float(base - values.mean())
        steps = self.steps
        while True:
            share = -self._integrated(x0, xs - x0, clean, roi, steps).mean(dim=0)
            gap = abs(float(share.sum()) - effect) / max(abs(effect), 1e-12)
            if gap <= COMPLETENESS_TOL or steps >= self.max_steps:
                return share, effect, gap, steps
            steps = min(2 * steps, self.max_steps)

    def attribute(
        self,
        clean: torch.Tensor | np.ndarray,
        roi: ROI | tuple[int, int, int],
        blocks: Sequence[int] | None = None,
        block_size: int = 8,
        n_interventions: int = 8,
        seed: int = 0,
        patches: PatchBank | np.ndarray | None = None,
        cem: CEMResult | None = None,
        top_k: int = 4,
        degraded: Degraded | None = None,
    ) -> PixelShares:
        """Pixel shares of ``blocks`` (flat indices), or of the ``top_k`` blocks by |effect| of ``cem``."""
        inputs = _inputs(self.task, clean, roi, block_size, patches, degraded, seed, self.device)
        if blocks is None:
            if cem is None:
                raise SettingError("give blocks=[...] or a CEMResult (cem=...) to take its top_k blocks by |effect|")
            order = np.argsort(-np.abs(np.nan_to_num(cem.effects.ravel())), kind="stable")
            blocks = order[:top_k].tolist()
        chosen = np.asarray(list(blocks), dtype=np.int64)
        full_shape = inputs.degraded.image.shape
        window, scored_clean, scored_roi = self._crop(inputs, seed)
        x0 = inputs.degraded.image.unsqueeze(0)
        x0 = window.crop(x0).contiguous() if window else x0
        base, _ = self._metric_and_grad(x0, scored_clean, scored_roi)
        with torch.inference_mode():
            base_rounded = ROIPSNR()(self.model(x0), scored_clean, scored_roi)

        effects, rounded, shares, gaps, used = [], [], [], [], []
        for k in chosen.tolist():
            xs = inputs.interventions(self.task, k, n_interventions, seed, self.device)
            xs = window.crop(xs).contiguous() if window else xs
            share, effect, gap, steps = self._converged_share(x0, xs, base[0], scored_clean, scored_roi)
            with torch.inference_mode():
                rounded_values = ROIPSNR()(self.model(xs), scored_clean, scored_roi)
            placed = np.zeros(full_shape, dtype=np.float32)
            if window:
                placed[:, window.y0 : window.y1, window.x0 : window.x1] = share.cpu().numpy()
            else:
                placed[:] = share.cpu().numpy()
            effects.append(effect)
            rounded.append(float(base_rounded[0] - rounded_values.mean()))
            shares.append(placed)
            gaps.append(gap)
            used.append(steps)
        return PixelShares(
            blocks=chosen, effects=np.array(effects), effects_rounded=np.array(rounded),
            shares=np.stack(shares) if shares else np.zeros((0, *full_shape), np.float32),
            completeness=np.array(gaps), steps=np.array(used, dtype=np.int64),
            meta={"method": "integrated_gradients_straight_path", "metric": self.metric.name,
                  "roi": [inputs.roi.x, inputs.roi.y, inputs.roi.size],
                  "block_size": block_size, "n_interventions": n_interventions, "seed": seed,
                  "completeness_tol": COMPLETENESS_TOL, "task": self.task.describe(), "patch_bank": inputs.bank.sha256,
                  "window": window.as_list() if window else None},
        )


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation of two maps over the blocks where both are finite (NaN when either is constant)."""
    from scipy.stats import spearmanr

    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return float("nan")
    return float(spearmanr(a[ok], b[ok]).statistic)


class FirstOrderMap:
    """First-order preview of the whole CEM from one backward pass (see the module docstring), with the protocol
    every attribution method here shares: built from (model, task, metric, device), ``attribute(clean, roi, ...)``.
    Like the engine, it moves the model to ``device`` and sets eval mode (no copy)."""


    def __init__(self, model: ImageModel, task: Task, metric: ROIMetric | None = None,
                 device: str | torch.device = "auto") -> None:
        self.device = resolve_device(device)
        self.model, self.task, self.metric = model, task, metric or ROISmoothPSNR()
        if isinstance(model, torch.nn.Module):
            model.to(self.device).eval()

    def attribute(self, clean: torch.Tensor | np.ndarray, roi: ROI | tuple[int, int, int], block_size: int = 8,
                  n_interventions: int = 8, seed: int = 0, patches: PatchBank | np.ndarray | None = None,
                  compare_to: CEMResult | None = None, degraded: Degraded | None = None) -> CEMResult:
        """The preview map; with ``compare_to``, ``meta["rank_correlation"]`` is the Spearman correlation with that
        intervention map."""
        task, metric, dev = self.task, self.metric, self.device
        inputs = _inputs(task, clean, roi, block_size, patches, degraded, seed, dev)
        roi, grid, image = inputs.roi, inputs.grid, inputs.degraded.image
        x0 = image.unsqueeze(0).detach().clone().requires_grad_(True)
        with torch.enable_grad():
            origin = metric(self.model(x0), inputs.clean, roi)
            (grad,) = torch.autograd.grad(origin.sum(), x0)
        grad = grad[0].to(torch.float64)
        sign = 1.0 if metric.higher_is_better else -1.0
        effects = np.zeros(len(grid))
        for k in range(len(grid)):
            xs = inputs.interventions(task, k, n_interventions, seed, dev)
            mean_change = (xs.to(torch.float64) - image.to(torch.float64)).mean(dim=0)
            effects[k] = -sign * float((grad * mean_change).sum())
        shape = grid.shape
        effects = effects.reshape(shape)
        meta: dict[str, Any] = {"method": "first_order", "metric": metric.name,
                                "roi": {"x": roi.x, "y": roi.y, "size": roi.size}, "block_size": block_size,
                                "n_interventions": n_interventions, "seed": seed, "task": task.describe(),
                                "forwards": 1, "backwards": 1}
        if compare_to is not None:
            meta["rank_correlation"] = spearman(effects.ravel(), compare_to.effects.ravel())
        return CEMResult(
            effects=effects, se=np.full(shape, np.nan), n=np.full(shape, n_interventions),
            forwards=np.zeros(shape, np.int64), significant=np.zeros(shape, bool),
            status=np.full(shape, STATUS_ESTIMATED, np.uint8), roi_mask=grid.roi_mask(roi),
            origin=float(origin.detach()[0]), meta=meta,
        )

