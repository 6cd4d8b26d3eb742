"""Training our own restoration models: seeded patch sampling, EMA, schedules, resumable checkpoints, baselines.

Everything random is a function of (seed, step): the patches, the degradation of each patch and, for multi-task
training, the task of each batch. A run resumed from a checkpoint therefore sees exactly the batches the
uninterrupted run would have seen and, on the CPU, ends with the same weights.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cemap import results
from cemap.imageio import to_tensor
from cemap.metrics import psnr, ssim
from cemap.tasks.base import Task
from cemap.validation import SettingError


def step_rng(seed: int, step: int, stream: int = 0) -> np.random.Generator:
    """The generator of one training step (``stream`` separates independent uses, e.g. DDP ranks)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(step, stream))))


class PatchSampler:
    """Random training pairs: crops of the source images, degraded by the step's task.

    ``tasks`` maps a name to (task, weight); with several tasks, each batch comes from one task drawn with the
    configured weights (multi-task "mix" training). ``patch_size`` is in output (ground-truth) pixels.
    """

    def __init__(self, images: Sequence[np.ndarray], tasks: dict[str, tuple[Task, float]], patch_size: int,
                 batch_size: int, seed: int) -> None:
        self.images = [im for im in images if min(im.shape[:2]) >= patch_size]
        if not self.images:
            raise SettingError(f"no training image is at least {patch_size} px on each side")
        total = sum(w for _, w in tasks.values())
        if not tasks or total <= 0:
            raise SettingError("at least one task with a positive weight is needed")
        self.names = list(tasks)
        self.tasks = [tasks[n][0] for n in self.names]
        self.weights = np.array([tasks[n][1] / total for n in self.names])
        self.patch_size, self.batch_size, self.seed = patch_size, batch_size, seed
        for task in self.tasks:
            if patch_size % task.block_multiple:
                raise SettingError(f"patch_size={patch_size} is not a multiple of task {task.name}'s scale")

    def task_index(self, step: int) -> int:
        return int(step_rng(self.seed, step, 1).choice(len(self.tasks), p=self.weights))

    def batch(self, step: int, rank: int = 0, world: int = 1) -> tuple[torch.Tensor, torch.Tensor, str]:
        """(inputs, targets, task name) of ``step``; with ``world`` > 1 each rank gets its slice of the batch."""
        k = self.task_index(step)
        task = self.tasks[k]
        rng = step_rng(self.seed, step)
        p = self.patch_size
        lq, gt = [], []
        for i in range(self.batch_size):
            im = self.images[int(rng.integers(len(self.images)))]  # every image equally: large dark ones do not dominate
            y = int(rng.integers(0, im.shape[0] - p + 1))
            x = int(rng.integers(0, im.shape[1] - p + 1))
            crop = im[y : y + p, x : x + p]
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            if rng.random() < 0.5:
                crop = crop[::-1]
            seed_i = int(rng.integers(0, 2**31 - 1))
            if i % world != rank:
                continue
            clean = to_tensor(np.ascontiguousarray(crop))
            lq.append(task.degrade(clean, np.random.RandomState(seed_i)).image)
            gt.append(clean)
        return torch.stack(lq), torch.stack(gt), self.names[k]


class EMA:
    """Exponential moving average of a model's weights (BasicSR's ``params_ema``)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """``ema = decay * ema + (1 - decay) * model`` for float tensors (one fused call for all of them, which
        matters on a GPU where per-tensor launches dominate a small model's step); other buffers are copied."""
        floats_e, floats_m = [], []
        for e, m in zip(self.model.state_dict().values(), model.state_dict().values()):
            if e.is_floating_point():
                floats_e.append(e)
                floats_m.append(m.detach())
            else:
                e.copy_(m)
        if floats_e:
            torch._foreach_mul_(floats_e, self.decay)
            torch._foreach_add_(floats_e, floats_m, alpha=1 - self.decay)


def make_optimizer(params: Iterable[nn.Parameter], name: str, lr: float, betas: Sequence[float], weight_decay: float) -> torch.optim.Optimizer:
    optimizers = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    if name not in optimizers:
        raise SettingError(f"optimizer={name!r}; choose one of {sorted(optimizers)}")
    return optimizers[name](params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)


def lr_factor(step: int, steps: int, scheduler: str, warmup: int, eta_min_ratio: float, milestones: Sequence[int], gamma: float) -> float:
    """Learning-rate multiplier at ``step``: linear warm-up, then ``cosine`` decay to ``eta_min_ratio`` or ``step``
    decay by ``gamma`` at each milestone, or ``constant``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if scheduler == "cosine":
        t = (step - warmup) / max(1, steps - warmup)
        return eta_min_ratio + (1 - eta_min_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    if scheduler == "step":
        return gamma ** sum(step >= m for m in milestones)
    if scheduler == "constant":
        return 1.0
    raise SettingError(f"scheduler={scheduler!r}; choose cosine, step or constant")


LOSSES = {"l1": F.l1_loss, "l2": F.mse_loss}


# --- evaluation ------------------------------------------------------------------------------------------------------


@dataclass
class EvalRow:
    task: str
    psnr: float
    ssim: float
    baseline: str
    baseline_psnr: float
    baseline_ssim: float


def _mean_metrics(outputs: list[torch.Tensor], targets: list[torch.Tensor], crop_border: int) -> tuple[float, float]:
    p = [psnr(o, t, crop_border).item() for o, t in zip(outputs, targets)]
    s = [ssim(o, t, crop_border).item() for o, t in zip(outputs, targets)]
    return float(np.mean(p)), float(np.mean(s))


def evaluation_pairs(task: Task, images: Sequence[np.ndarray], seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(targets, degraded inputs) of an evaluation: image ``i`` degraded with seed ``seed + i``."""
    targets = [to_tensor(im) for im in images]
    return targets, [task.degrade(t, np.random.RandomState(seed + i)).image for i, t in enumerate(targets)]


def baseline_scores(task: Task, images: Sequence[np.ndarray], seed: int, crop_border: int = 0) -> tuple[str, float, float]:
    """(name, PSNR, SSIM) of the task's classical baseline on the evaluation images (no model needed)."""
    targets, degraded = evaluation_pairs(task, images, seed)
    name, base = task.baseline(degraded, targets, crop_border)
    return (name, *_mean_metrics(base, targets, crop_border))


@torch.no_grad()
def evaluation_outputs(model: nn.Module, task: Task, images: Sequence[np.ndarray], seed: int,
                       device: torch.device) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(outputs on the CPU, targets) of ``model`` on ``images`` degraded by ``task`` as every evaluation degrades them."""
    model.eval()
    targets, degraded = evaluation_pairs(task, images, seed)
    return [model(d.unsqueeze(0).to(device))[0].cpu() for d in degraded], targets


def evaluate(model: nn.Module, task: Task, images: Sequence[np.ndarray], seed: int, device: torch.device,
             crop_border: int = 0, with_baseline: bool = True) -> EvalRow:
    """Full-image PSNR / SSIM of ``model`` on ``images`` degraded by ``task`` (seeded), and of the classical baseline."""
    outputs, targets = evaluation_outputs(model, task, images, seed, device)
    p, s = _mean_metrics(outputs, targets, crop_border)
    if not with_baseline:
        return EvalRow(task.name, p, s, "", float("nan"), float("nan"))
    return EvalRow(task.name, p, s, *baseline_scores(task, images, seed, crop_border))


# --- checkpoints -----------------------------------------------------------------------------------------------------


def save_training_checkpoint(path: Path, model: nn.Module, ema: EMA | None, step: int, config: dict[str, Any],
                             optimizer: torch.optim.Optimizer | None = None, extra: dict[str, Any] | None = None) -> Path:
    """BasicSR-convention checkpoint (``params``, ``params_ema``, ``iter``, the resolved config), plus the training
    state needed to resume when ``optimizer`` is given. Written atomically; loads with ``weights_only=True``."""
    state: dict[str, Any] = {
        "params": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "iter": step,
        "config": config,
    }
    if ema is not None:
        state["params_ema"] = {k: v.detach().cpu() for k, v in ema.model.state_dict().items()}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
        state["torch_rng"] = torch.get_rng_state()
    state.update(extra or {})
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    return results.atomic_write_bytes(path, buf.getvalue())


def load_training_state(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)

