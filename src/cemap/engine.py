"""The Causal Effect Map engine: interventions per block, batched forward passes, effects with uncertainty."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import platform
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

import cemap
from cemap import results
from cemap.estimators import Estimator, make_estimator
from cemap.grid import ROI, Block, BlockGrid, GeometryError
from cemap.locality import LocalityPlan, LocalitySettings, plan_for_model
from cemap.metrics import ROIMetric, roi_metric
from cemap.patches import PatchBank
from cemap.results import STATUS_STRUCTURAL_ZERO, CEMResult
from cemap.tasks.base import Degraded, Task
from cemap.validation import SettingError

log = logging.getLogger(__name__)

ImageModel = torch.nn.Module | Callable[[torch.Tensor], torch.Tensor]


class ModelOutputError(RuntimeError):
    """The model returned something a causal effect map cannot be computed from."""


class DeviceError(ValueError):
    """The configured device does not exist or is not available on this machine."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; anything else must name a device this machine has."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        d = torch.device(device)
    except RuntimeError:
        raise DeviceError(f"device={device!r} is not a device name (cpu, cuda, cuda:1, mps or auto)") from None
    if d.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device={device!r} but this machine has no usable CUDA GPU; use device=cpu or device=auto")
    if d.type == "cuda" and d.index is not None and d.index >= torch.cuda.device_count():
        raise DeviceError(f"device={device!r} but this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    if d.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"device={device!r} but MPS is not available here; use device=cpu or device=auto")
    return d


@contextlib.contextmanager
def tf32_mode(enabled: bool) -> Iterator[None]:
    """Set TF32 for CUDA matmuls and convolutions, restoring the previous setting afterwards.

    Off by default during a CEM: the effects of interest are ~0.01 dB and TF32 moves ROI PSNR by up to 0.005 dB.
    """
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def block_rng(seed: int, stage: int, block_index: int) -> np.random.Generator:
    """The generator of block ``block_index``'s draws in ``stage``: a function of these three numbers only."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(stage, block_index))))


def block_interventions(task: Task, degraded: Degraded, clean: torch.Tensor, bank: PatchBank, block: Block,
                        stage: int, n: int, seed: int, device: torch.device) -> torch.Tensor:
    """The ``n`` interventions of ``block`` in ``stage``: patches drawn and degraded with ``block_rng(seed, stage,
    block.index)``, so every caller (maps, decompositions, previews) sees the very same draws."""
    rng = block_rng(seed, stage, block.index)
    chosen = bank.draw(rng, n)
    patches = bank.tensor(device, block.height, block.width)[torch.as_tensor(chosen, device=device)]
    return task.intervene(degraded, clean, block, patches, rng)


def as_clean_tensor(clean: torch.Tensor | np.ndarray) -> torch.Tensor:
    """The ground truth as a (3, H, W) float32 CPU tensor in [0, 1]. Accepted, by explicit rules: H x W x 3 arrays
    and (3, H, W) tensors, uint8 (0..255) or float in [0, 1]. Anything else is refused, not guessed: a float array
    in [0, 1] used to be cast to uint8 (an almost black image), a uint8 tensor read as floats."""
    if isinstance(clean, np.ndarray):
        if clean.ndim != 3 or clean.shape[2] != 3:
            raise SettingError(f"clean image array must be H x W x 3, got shape {clean.shape}")
        chw = torch.from_numpy(np.ascontiguousarray(clean)).permute(2, 0, 1)
    elif isinstance(clean, torch.Tensor):
        if clean.dim() != 3 or clean.shape[0] != 3:
            raise SettingError(f"clean image tensor must be (3, H, W), got shape {tuple(clean.shape)}")
        chw = clean.detach().cpu()
    else:
        raise TypeError(f"clean image must be a numpy array or a torch tensor, got {type(clean).__name__}")
    return unit_range(chw)


def unit_range(chw: torch.Tensor) -> torch.Tensor:
    if chw.dtype == torch.uint8:
        return chw.to(torch.float32) / 255.0
    if not chw.is_floating_point():
        raise SettingError(f"clean image of dtype {chw.dtype}: give uint8 (0..255) or float in [0, 1]")
    x = chw.to(torch.float32)
    if not bool(torch.isfinite(x).all()) or (x.numel() and (float(x.min()) < 0 or float(x.max()) > 1)):
        lo, hi = float(x.nan_to_num(0).min()), float(x.nan_to_num(0).max())
        raise SettingError(f"float clean image must be finite and in [0, 1], got [{lo:.4g}, {hi:.4g}]"
                         f"{' with NaN/inf' if not bool(torch.isfinite(x).all()) else ''}; for 0..255 values give uint8")
    return x.clone()


def as_patch_bank(patches: PatchBank | np.ndarray | None, block_size: int) -> PatchBank:
    """A bank as given, built from an (N, b, b, 3) array, or the default bank for ``block_size``."""
    if isinstance(patches, PatchBank):
        return patches
    if patches is not None:
        return PatchBank(np.asarray(patches))
    from cemap.data import default_patch_bank

    return default_patch_bank(block_size)


def model_fingerprint(model: ImageModel) -> str:
    """sha256 of a module's parameters and buffers (or of a callable's qualified name): ties saved state to a model."""
    h = hashlib.sha256()
    if isinstance(model, torch.nn.Module):
        h.update(type(model).__qualname__.encode())
        for name, t in model.state_dict().items():
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().cpu().numpy().tobytes())
    else:
        h.update(getattr(model, "__qualname__", repr(model)).encode())
    return h.hexdigest()


def _sha256_tensor(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def git_commit() -> str | None:
    """The commit of the cemap checkout in use, when it is one."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(cemap.__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str]:
    return {
        "cemap": cemap.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


@dataclass
class _Pending:
    """Interventions waiting for a forward pass, and scores still on the device waiting to be copied back."""

    inputs: list[torch.Tensor]
    targets: list[tuple[np.ndarray, int, np.ndarray]]
    size: int = 0
    scored: list[tuple[torch.Tensor, torch.Tensor, list[tuple[np.ndarray, int, np.ndarray]]]] = field(default_factory=list)


DRAIN_EVERY = 8
"""Batches whose scores stay on the device before one copy brings them back: the host keeps building interventions
while the device computes, instead of waiting for every batch."""

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
AUTO_BATCH_CAP = 256
"""Largest batch the automatic choice picks: beyond it GPUs gain little and a back-off costs more."""
OUTPUT_MEDIAN_RANGE = (-0.5, 1.5)
"""Where the median of a model's output on the unmodified input must lie for it to be in [0, 1] units."""


class CausalEffectMap:
    """Causal effect maps of an image-to-image model on one task.

    ``model`` maps a (N, C, h, w) batch in [0, 1] to (N, 3, H, W) outputs, where (H, W) = task.scale x (h, w).
    ``batch_size`` only changes speed: every intervention's draws are fixed before batching, and each sample is
    scored alone, so the map is the same for any batch size (0 = automatic: from free GPU memory, 16 on the CPU).

    Everything per sample stays on ``device``: the patch bank is resident there, interventions are built there (only
    the few random numbers of a block's draws are made on the host, so that CPU and GPU runs draw identically), the ROI
    metric is computed there, and only one score per sample and ROI comes back. ``locality`` (default: ``auto``)
    skips blocks a verified-local model cannot see and crops the input (see ``cemap.locality``); ``precision``
    ``bf16``/``fp16`` (autocast) and ``compile`` (``torch.compile``) are off by default because they move effects.
    """

    def __init__(
        self,
        model: ImageModel,
        task: Task,
        metric: str | ROIMetric = "psnr",
        device: str | torch.device = "auto",
        batch_size: int = 16,
        tf32: bool = False,
        progress: bool = False,
        model_name: str | None = None,
        locality: LocalitySettings | None = None,
        precision: str = "fp32",
        compile: bool = False,
        channels_last: bool = False,
    ) -> None:
        if batch_size < 0:
            raise SettingError(f"batch_size={batch_size} must be >= 1, or 0 for automatic")
        if precision not in PRECISIONS:
            raise SettingError(f"precision={precision!r}; choose one of {sorted(PRECISIONS)}")
        self.device = resolve_device(device)
        self.model = model
        if isinstance(model, torch.nn.Module):
            model.to(self.device).eval()
            if channels_last:
                model.to(memory_format=torch.channels_last)
        self.locality = locality or LocalitySettings()
        self.precision = precision
        self.compile = compile
        self.channels_last = channels_last
        self._runner: Callable[[torch.Tensor], torch.Tensor] = torch.compile(model) if compile else model  # type: ignore[assignment]
        self.task = task
        self.metric = roi_metric(metric) if isinstance(metric, str) else metric
        self.batch_size = batch_size
        self.automatic_batch = batch_size == 0
        self.tf32 = tf32
        self.progress = progress
        self.model_name = model_name or (type(model).__name__ if isinstance(model, torch.nn.Module) else getattr(model, "__name__", "model"))
        self.forwards = 0

    # --- scoring --------------------------------------------------------------------------------------------------

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        """The model's float32 output under the configured precision and memory format, without autograd. The model
        gets its own copy of the batch: one that scales its input in place (spandrel's RCAN: ``x *= rgb_range``)
        would otherwise corrupt the degraded image that every later intervention is built from."""
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        dtype = PRECISIONS[self.precision]
        cast = torch.autocast(self.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with torch.inference_mode(), cast:
            out = self._runner(batch.clone(memory_format=memory_format))
        return out.float() if isinstance(out, torch.Tensor) else out

    def _output(self, batch: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        """The model's output for ``batch``, checked to have the shape the task needs."""
        out = self._forward(batch)
        expected = (batch.shape[0], 3, clean.shape[1], clean.shape[2])
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ModelOutputError(
                f"model {self.model_name} returned {got} for input {tuple(batch.shape)}; task {self.task.name} "
                f"(scale {self.task.scale}) needs {expected}"
            )
        self.forwards += batch.shape[0]
        return out

    def _roi_scores(self, out: torch.Tensor, clean: torch.Tensor, rois: Sequence[ROI]) -> torch.Tensor:
        return torch.stack([self.metric(out, clean, roi) for roi in rois], dim=1).detach().to(torch.float64)

    def _score_on_device(self, batch: torch.Tensor, clean: torch.Tensor, rois: Sequence[ROI]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, R) ROI metric of each input in ``batch`` for each ROI, left on the device, and whether every output
        was finite (a device flag too, so nothing waits for the device here)."""
        out = self._output(batch, clean)
        return self._roi_scores(out, clean, rois), torch.isfinite(out).all()

    def _check_finite(self, finite: torch.Tensor) -> None:
        if not bool(finite):
            raise ModelOutputError(f"model {self.model_name} returned NaN or inf on task {self.task.name}")

    def _check_units(self, out: torch.Tensor) -> None:
        """Refuse a model whose typical output is not in [0, 1] units (one working in 0..255 gave origin PSNR 4 dB
        and a meaningless map). The median, not the extremes: unclamped or untrained networks overshoot."""
        median = float(out.median())
        if not OUTPUT_MEDIAN_RANGE[0] <= median <= OUTPUT_MEDIAN_RANGE[1]:
            raise ModelOutputError(
                f"model {self.model_name} returned values with median {median:.4g} on task {self.task.name}; cemap "
                "needs outputs in [0, 1] (a model working in 0..255 needs its output divided by 255)")

    def _score(self, batch: torch.Tensor, clean: torch.Tensor, rois: Sequence[ROI]) -> np.ndarray:
        """Scores on the host, at once, for the unmodified input (whose output is also checked for its units)."""
        out = self._output(batch, clean)
        self._check_finite(torch.isfinite(out).all())
        self._check_units(out)
        return self._roi_scores(out, clean, rois).cpu().numpy()

    def _score_backing_off(self, batch: torch.Tensor, clean: torch.Tensor, rois: Sequence[ROI]) -> tuple[torch.Tensor, torch.Tensor]:
        """Score ``batch``; on out-of-memory, halve it (and the batch size for the rest of the run) and retry.

        Each sample is scored on its own, so splitting a batch never changes a score.
        """
        try:
            return self._score_on_device(batch, clean, rois)
        except torch.OutOfMemoryError:
            if batch.shape[0] == 1:
                raise
            if batch.device.type == "cuda":
                torch.cuda.empty_cache()
            half = batch.shape[0] // 2
            self.batch_size = max(1, min(self.batch_size or half, half))
            log.warning("out of memory at batch %d: continuing with batch size %d", batch.shape[0], self.batch_size)
            first, first_ok = self._score_backing_off(batch[:half], clean, rois)
            second, second_ok = self._score_backing_off(batch[half:], clean, rois)
            return torch.cat([first, second]), first_ok & second_ok

    def _auto_batch_size(self, sample: torch.Tensor) -> int:
        """A batch that fits: on CUDA, half the free memory over one sample's peak use (at most AUTO_BATCH_CAP);
        16 elsewhere. Out-of-memory back-off still guards the choice."""
        if self.device.type != "cuda":
            return 16
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        self._forward(sample)
        torch.cuda.synchronize(self.device)
        per_sample = max(1, torch.cuda.max_memory_allocated(self.device) - before)
        free, _ = torch.cuda.mem_get_info(self.device)
        return int(max(1, min(AUTO_BATCH_CAP, free // 2 // per_sample)))

    def _flush(self, pending: _Pending, clean: torch.Tensor, rois: Sequence[ROI]) -> None:
        if pending.size:
            scores, finite = self._score_backing_off(torch.cat(pending.inputs), clean, rois)
            pending.scored.append((scores, finite, list(pending.targets)))
            pending.inputs.clear()
            pending.targets.clear()
            pending.size = 0
        if len(pending.scored) >= DRAIN_EVERY:
            self._drain(pending)

    def _drain(self, pending: _Pending) -> None:
        """Copy the scores still on the device into their sample stores, in one transfer."""
        if not pending.scored:
            return
        self._check_finite(torch.stack([finite for _, finite, _ in pending.scored]).all())
        host = torch.cat([scores for scores, _, _ in pending.scored]).cpu().numpy()
        i = 0
        for _, _, targets in pending.scored:
            for store, block, draws in targets:
                store[:, block, draws] = host[i : i + len(draws)].T
                i += len(draws)
        pending.scored.clear()

    # --- the map --------------------------------------------------------------------------------------------------

    def attribute(
        self,
        clean: torch.Tensor | np.ndarray,
        roi: ROI | tuple[int, int, int] | Sequence[ROI | tuple[int, int, int]],
        block_size: int = 8,
        estimator: str | Estimator = "reference",
        seed: int = 0,
        patches: PatchBank | np.ndarray | None = None,
        degraded: Degraded | None = None,
        state_path: str | Path | None = None,
        checkpoint_every_s: float = 30.0,
        keep_samples: bool = False,
        blocks: Sequence[int] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> CEMResult | list[CEMResult]:
        """Compute the causal effect map of every block on the ROI.

        ``clean`` is the ground truth (3, H, W) in [0, 1] (or H x W x 3 uint8); ``roi`` = (x, y, size) in output
        pixels, or a list of them: several ROIs are scored from the same forward passes and a list of results comes
        back (each equal to a separate run for that ROI). The degradation is drawn from ``RandomState(seed)`` (the
        paper's demo stream) unless ``degraded`` is given. With ``state_path``, the samples measured so far are saved
        every ``checkpoint_every_s`` seconds and a rerun with the same settings resumes from them. ``blocks``
        restricts the work to those flat block indices (the others are marked not computed), e.g. one shard of a map
        split over several jobs.
        """
        started = time.perf_counter()
        forwards_before = self.forwards
        clean_t = as_clean_tensor(clean)
        single = isinstance(roi, ROI) or (isinstance(roi, tuple) and len(roi) == 3 and all(isinstance(v, int) for v in roi))
        rois = [roi] if single else list(roi)  # type: ignore[list-item]
        rois = [r if isinstance(r, ROI) else ROI(*r) for r in rois]
        if not rois:
            raise GeometryError("at least one ROI is needed")
        _, height, width = clean_t.shape
        grid = BlockGrid(height, width, block_size, scale=self.task.block_multiple)
        roi_masks = [grid.roi_mask(r) for r in rois]
        est = make_estimator(estimator) if isinstance(estimator, str) else estimator
        selected = np.ones(len(grid), dtype=bool)
        if blocks is not None:
            chosen_blocks = np.asarray(list(blocks), dtype=np.int64)
            if chosen_blocks.size and (chosen_blocks.min() < 0 or chosen_blocks.max() >= len(grid)):
                raise GeometryError(f"blocks must be flat indices in [0, {len(grid)}), got {sorted(set(chosen_blocks.tolist()))[:5]}...")
            selected[:] = False
            selected[chosen_blocks] = True
        bank = as_patch_bank(patches, block_size)
        bank.check_block(min(block_size, height), min(block_size, width))

        if degraded is None:
            degraded = self.task.degrade(clean_t, np.random.RandomState(seed))
        degraded = degraded.to(self.device, torch.float32)
        clean_d = clean_t.to(self.device)

        n_rois, n_blocks = len(rois), len(grid)
        with tf32_mode(self.tf32):
            plan = self._plan_locality(degraded, clean_d, rois, grid, bank, seed)
            reachable = np.ones((n_rois, n_blocks), dtype=bool) if plan.reachable is None else plan.reachable
            window = plan.window
            scored_clean, scored_rois = plan.crop_output(clean_d, rois, self.task.scale)

            def model_input(batch: torch.Tensor) -> torch.Tensor:
                return batch if window is None else window.crop(batch).contiguous()

            origin_input = model_input(degraded.image.unsqueeze(0))
            if self.automatic_batch:
                self.batch_size = self._auto_batch_size(origin_input)
            key = self._state_key(clean_t, degraded, rois, grid, est, seed, bank, plan)
            resumed = results.load_partial(Path(state_path), key) if state_path else None
            stages: list[np.ndarray] = resumed[1] if resumed else []
            if resumed:
                log.info("resuming from %s (%d stage(s) saved)", state_path, len(stages))

            origin = self._score(origin_input, scored_clean, scored_rois)[0]
            if resumed and not np.array_equal(resumed[0], origin):
                log.warning("saved origin %s differs from recomputed %s: starting over", resumed[0], origin)
                stages = []
            orient = 1.0 if self.metric.higher_is_better else -1.0
            last_save = time.monotonic()

            pending = _Pending([], [])

            def checkpoint(force: bool = False) -> None:
                nonlocal last_save
                if state_path and (force or time.monotonic() - last_save >= checkpoint_every_s):
                    self._drain(pending)
                    results.save_partial(Path(state_path), key, origin, stages)
                    last_save = time.monotonic()

            def differences(r: int, upto: int) -> list[np.ndarray]:
                return [orient * (origin[r] - st[r]) for st in stages[:upto]]

            sampled = selected & reachable.any(axis=0)
            stage = 0
            while True:
                plans = [est.plan(stage, n_blocks, differences(r, stage)) for r in range(n_rois)]
                if all(p is None for p in plans):
                    break
                wanted = np.max(np.stack([np.zeros(n_blocks, dtype=np.int64) if p is None else p for p in plans]), axis=0)
                counts = np.where(sampled, wanted, 0)
                depth = int(counts.max(initial=0))
                if stage < len(stages) and stages[stage].shape == (n_rois, n_blocks, depth):
                    store = stages[stage]
                else:
                    store = np.full((n_rois, n_blocks, depth), np.nan)
                    stages[stage:] = [store]
                todo = [
                    (k, np.flatnonzero(np.isnan(store[0, k, : counts[k]])))
                    for k in range(n_blocks)
                    if counts[k] and np.isnan(store[0, k, : counts[k]]).any()
                ]
                total = int(sum(len(d) for _, d in todo))
                bar = tqdm(total=total, desc=f"CEM stage {stage}", unit="fwd", disable=not self.progress, leave=False)
                for k, draws in todo:
                    block = grid.block(k)
                    interventions = model_input(block_interventions(
                        self.task, degraded, clean_d, bank, block, stage, int(counts[k]), seed, self.device))
                    start = 0
                    while start < len(draws):
                        take = draws[start : start + max(1, self.batch_size - pending.size)]
                        pending.inputs.append(interventions[torch.as_tensor(take, device=self.device)])
                        pending.targets.append((store, k, take))
                        pending.size += len(take)
                        start += len(take)
                        if pending.size >= self.batch_size:
                            flushed = pending.size
                            self._flush(pending, scored_clean, scored_rois)
                            bar.update(flushed)
                            checkpoint()
                flushed = pending.size
                self._flush(pending, scored_clean, scored_rois)
                self._drain(pending)
                bar.update(flushed)
                bar.close()
                checkpoint(force=True)
                stage += 1

        elapsed = round(time.perf_counter() - started, 3)
        forwards = np.zeros(n_blocks, dtype=np.int64)
        for st in stages:
            forwards += np.sum(~np.isnan(st[0]), axis=1)
        shape = grid.shape
        common = {
            "model": self.model_name,
            "model_fingerprint": model_fingerprint(self.model),
            "task": self.task.describe(),
            "metric": self.metric.name,
            "image_size": [height, width],
            "block_size": block_size,
            "grid": list(shape),
            "estimator": est.describe(),
            "seed": seed,
            "blocks": None if blocks is None else np.flatnonzero(selected).tolist(),
            "patch_bank": {"source": bank.source, "n_patches": len(bank), "patch_size": bank.patch_size, "sha256": bank.sha256},
            "forwards": self.forwards - forwards_before,
            "seconds": elapsed,
            "rois_sharing_forwards": n_rois,
            "device": str(self.device),
            "tf32": self.tf32,
            "precision": self.precision,
            "compile": self.compile,
            "batch_size": self.batch_size,
            "locality": plan.report,
            "state_key": key,
            "versions": versions(),
            "git_commit": git_commit(),
        }
        out: list[CEMResult] = []
        for r, (one, mask) in enumerate(zip(rois, roi_masks)):
            estimate = est.estimate(differences(r, len(stages)))
            unseen = ~reachable[r]
            effects = np.where(selected, np.where(unseen, 0.0, estimate.effects), np.nan).reshape(shape)
            se = np.where(selected, np.where(unseen, 0.0, estimate.se), np.nan).reshape(shape)
            status = np.where(unseen, STATUS_STRUCTURAL_ZERO, estimate.status)
            status = np.where(selected, status, results.STATUS_NOT_COMPUTED).astype(np.uint8).reshape(shape)
            out.append(CEMResult(
                effects=effects,
                se=se,
                n=np.where(selected & ~unseen, estimate.n, 0).reshape(shape),
                forwards=forwards.reshape(shape),
                significant=est.significant(np.nan_to_num(effects), se),
                status=status,
                roi_mask=mask,
                origin=float(origin[r]),
                samples={f"stage{i}": st[r].reshape(*shape, -1) for i, st in enumerate(stages)} if keep_samples else {},
                meta={**common, "roi": {"x": one.x, "y": one.y, "size": one.size}, "origin": float(origin[r]), **(meta or {})},
            ))
        return out[0] if single else out

    # --- helpers --------------------------------------------------------------------------------------------------

    def _plan_locality(self, degraded: Degraded, clean: torch.Tensor, rois: Sequence[ROI], grid: BlockGrid,
                       bank: PatchBank, seed: int) -> LocalityPlan:
        return plan_for_model(self._forward, self.model, self.task, degraded, clean, rois, grid, bank, self.locality,
                              seed)

    def _state_key(
        self, clean: torch.Tensor, degraded: Degraded, rois: Sequence[ROI], grid: BlockGrid, est: Estimator, seed: int,
        bank: PatchBank, plan: LocalityPlan,
    ) -> str:
        """Everything that changes the samples, hashed: saved state resumes only into an identical computation."""
        settings = {
            "clean": _sha256_tensor(clean),
            "degraded": _sha256_tensor(degraded.image),
            "state": {k: _sha256_tensor(v) for k, v in sorted(degraded.state.items())},
            "model": model_fingerprint(self.model),
            "task": self.task.describe(),
            "metric": self.metric.name,
            "rois": [[r.x, r.y, r.size] for r in rois],
            "grid": [grid.height, grid.width, grid.block_size],
            "estimator": est.describe(),
            "seed": seed,
            "bank": bank.sha256,
            "device": self.device.type,
            "tf32": self.tf32,
            "precision": self.precision,
            "compile": self.compile,
            "window": None if plan.window is None else plan.window.as_list(),
            "reachable": None if plan.reachable is None else hashlib.sha256(plan.reachable.tobytes()).hexdigest(),
        }
        return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()
