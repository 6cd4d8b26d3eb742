"""Local Attribution Maps (LAM; Gu & Dong, CVPR 2021), the gradient-based method the CEM paper compares against.

LAM attributes the *edge energy* of an output window (the sum over the window of the gradient magnitude of the
output, from forward differences) to input pixels with integrated gradients along a *progressive blur* path: from the
input blurred by a Gaussian of ``sigma`` (default 1.2, kernel 9) to the input itself, in ``steps`` (50) stages. The
map is the absolute attribution summed over channels; its spread is summarised by the Diffusion Index
``DI = (1 - Gini) x 100`` (0: one pixel holds everything; 100: every pixel the same). Unlike a CEM, LAM has no sign
(help vs harm) and measures the output's structure, not its fidelity to the ground truth; showing both side by side is
the paper's comparison. It works for any task: the window is in output pixels, the map in input pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cemap import results
from cemap.engine import ImageModel, as_clean_tensor, resolve_device
from cemap.grid import ROI
from cemap.tasks.base import Degraded, Task
from cemap.tasks.deblur import blur, gaussian_kernel
from cemap.validation import SettingError


def gini(values: np.ndarray) -> float:
    """Gini coefficient of non-negative values (negative inputs are shifted to start at 0): 0 = all equal,
    (n - 1) / n = one value holds everything."""
    v = np.sort(np.asarray(values, dtype=np.float64).ravel())
    if v.size == 0:
        raise ValueError("gini of an empty array")
    if v[0] < 0:
        v = v - v[0]
    total = v.sum()
    if total == 0:
        return 0.0
    ranks = np.arange(1, v.size + 1)
    return float(np.sum((2 * ranks - v.size - 1) * v) / (v.size * total))


def diffusion_index(attribution: np.ndarray) -> float:
    """LAM's Diffusion Index (1 - Gini) x 100 of an attribution map."""
    return (1.0 - gini(attribution)) * 100.0


def edge_energy(output: torch.Tensor, window: ROI) -> torch.Tensor:
    """Sum over ``window`` of the output's gradient magnitude (forward differences, summed over channels): (N,)."""
    dy = output[:, :, :-1, :-1] - output[:, :, 1:, :-1]
    dx = output[:, :, :-1, :-1] - output[:, :, :-1, 1:]
    magnitude = torch.sqrt(dy**2 + dx**2 + 1e-12)
    return magnitude[:, :, window.rows, window.cols].flatten(1).sum(dim=1)


@dataclass
class LAMResult:
    """``attribution`` (C, h, w) signed path-integrated gradients; ``map`` (h, w) their absolute values summed over
    channels, normalised to a maximum of 1; ``diffusion_index`` of that map."""

    attribution: np.ndarray
    map: np.ndarray
    diffusion_index: float
    meta: dict[str, Any] = field(default_factory=dict)

    def save(self, directory: str | Path) -> Path:
        d = Path(directory)
        results.atomic_save_npz(d / results.LAM_ARRAYS, attribution=self.attribution, map=self.map)
        results.atomic_write_json(d / results.LAM_META, {**self.meta, "diffusion_index": self.diffusion_index})
        return d

    @classmethod
    def load(cls, directory: str | Path) -> LAMResult:
        d = Path(directory)
        meta = results.read_json(d / results.LAM_META)
        with np.load(d / results.LAM_ARRAYS, allow_pickle=False) as z:
            return cls(attribution=z["attribution"], map=z["map"], diffusion_index=float(meta["diffusion_index"]), meta=meta)


class LAM:
    """LAM of an image-to-image model, with the protocol every attribution method here shares: built from (model,
    task, device), ``attribute(clean, roi, ...)`` on the task's degraded input. It takes no metric: its target is
    the ROI's edge energy, by definition. Like the engine, it moves the model to ``device`` and sets eval mode (no
    copy)."""

    def __init__(self, model: ImageModel, task: Task, device: str | torch.device = "auto", sigma: float = 1.2,
                 steps: int = 50, kernel_size: int = 9, batch_size: int = 10) -> None:
        if steps < 1 or kernel_size < 1 or kernel_size % 2 == 0 or sigma < 0:
            raise SettingError(f"LAM needs steps >= 1, an odd kernel_size and sigma >= 0; got {steps}, {kernel_size}, {sigma}")
        self.device = resolve_device(device)
        self.model, self.task = model, task
        if isinstance(model, torch.nn.Module):
            model.to(self.device).eval()
        self.sigma, self.steps, self.kernel_size, self.batch_size = sigma, steps, kernel_size, batch_size

    def path(self, image: torch.Tensor) -> torch.Tensor:
        """The ``steps + 1`` path images, from the most blurred (sigma) to the input itself (sigma 0)."""
        sigmas = [self.sigma * (1 - i / self.steps) for i in range(self.steps + 1)]
        x = image.unsqueeze(0).to(self.device, torch.float32)
        return torch.cat([blur(x, torch.from_numpy(gaussian_kernel(self.kernel_size, s))).float() if s > 0 else x
                          for s in sigmas])

    def attribute(self, clean: torch.Tensor | np.ndarray, roi: ROI | tuple[int, int, int], seed: int = 0,
                  degraded: Degraded | None = None) -> LAMResult:
        """LAM for the output window ``roi`` of the model input: ``clean`` ((3, H, W) in [0, 1] or H x W x 3
        uint8) degraded by the task with ``RandomState(seed)`` as the engine does, or ``degraded`` when given."""
        window = roi if isinstance(roi, ROI) else ROI(*roi)
        if degraded is None:
            degraded = self.task.degrade(as_clean_tensor(clean), np.random.RandomState(seed))
        points = self.path(degraded.image.detach().to(torch.float32))
        grads = []
        for chunk in points[:-1].split(self.batch_size):
            inp = chunk.detach().clone().requires_grad_(True)
            with torch.enable_grad():
                out = self.model(inp)
                window.validate(out.shape[-2] - 1, out.shape[-1] - 1)
                (g,) = torch.autograd.grad(edge_energy(out, window).sum(), inp)
            grads.append(g.to(torch.float64))
        steps = (points[1:] - points[:-1]).to(torch.float64)
        attribution = (torch.cat(grads) * steps).sum(dim=0)  # left Riemann sum of gradient x path step
        magnitude = attribution.abs().sum(dim=0).cpu().numpy()
        peak = magnitude.max()
        normalised = magnitude / peak if peak > 0 else magnitude
        with torch.no_grad():
            energy = edge_energy(self.model(points[[0, -1]]), window).cpu().numpy()
        return LAMResult(
            attribution=attribution.cpu().numpy(), map=normalised, diffusion_index=diffusion_index(magnitude),
            meta={"method": "LAM", "sigma": self.sigma, "steps": self.steps, "kernel_size": self.kernel_size,
                  "window": [window.x, window.y, window.size], "energy_blurred": float(energy[0]),
                  "energy_input": float(energy[1]), "attribution_sum": float(attribution.sum())},
        )
