"""The Causal Effect Map engine: interventions per block, batched forward passes, effects with uncertainty."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from cemap import results
from cemap.estimators import Estimator, make_estimator
from cemap.grid import ROI, Block, BlockGrid, GeometryError
from cemap.locality import LocalityPlan, LocalitySettings, Window, plan_for_model, roi_reach
from cemap.metrics import ROIMetric, roi_metric
from cemap.patches import PatchBank
from cemap.provenance import ImageModel, git_commit, model_fingerprint, sha256_tensor, versions
from cemap.results import STATUS_STRUCTURAL_ZERO, CEMResult
from cemap.tasks.base import Degraded, Task
from cemap.validation import SettingError

log = logging.getLogger(__name__)


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
    chosen = torch.as_tensor(bank.draw(rng, n), device=device)
    return task.intervene_drawn(degraded, clean, block, bank, chosen, rng)


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
APART_SHARE = 0.8
"""A local model's ROIs run apart when their own crops cost less than this share of the shared crop: each part
re-probes the model and scores its own origin, so a small saving is not worth it."""
OUTPUT_MEDIAN_RANGE = (-2.0, 3.0)
"""Where the median of a model's output on the unmodified input must lie for it to be in [0, 1] units. Wide enough
for the planted-pathway controls (``control_reach``: + 3 x (crop mean - 0.4), up to 2.8 on a white crop; 1.57 on a
32 px crop of the paper's demo_1 was refused at 1.5), narrow enough for a model working in 0..255 (median above 3
on any crop that is not nearly black)."""


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

    The model itself is moved to ``device`` and set to eval mode (``channels_last`` also changes its memory format):
    it is not copied, because a paper-size model would take twice the memory; pass a copy to keep yours as it was.
    Input tensors are never modified.
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
        job = MapJob.prepare(clean, roi, block_size, estimator, seed, patches, blocks, self.task.block_multiple)
        if degraded is None:
            degraded = self.task.degrade(job.clean, np.random.RandomState(seed))
        fingerprint = model_fingerprint(self.model)
        out: list[CEMResult] = []
        with tf32_mode(self.tf32):
            for run in self._runners(job, degraded.to(self.device, torch.float32), fingerprint, state_path,
                                     checkpoint_every_s):
                run.run()
                common = self._provenance(run, fingerprint, blocks is not None)
                common.update(forwards=self.forwards - run.forwards_before,
                              seconds=round(time.perf_counter() - run.started, 3))
                out += [run.result(r, common, keep_samples, meta) for r in range(len(run.job.rois))]
        return out[0] if job.single else out

    def _runners(self, job: MapJob, degraded: Degraded, fingerprint: str, state_path: str | Path | None,
                 checkpoint_every_s: float) -> Iterator[_StageRunner]:
        """One runner for all ROIs (every forward scores them all), or, for a local model whose ROIs lie far apart,
        one per ROI on its own smaller crop when that costs less. The maps are the same either way: a block's draws
        depend on the block, stage and seed only, and the locality probe checks each crop bit for bit."""
        shared = _StageRunner(self, job, degraded, fingerprint, state_path, checkpoint_every_s)
        if not shared.cheaper_apart():
            yield shared
            return
        log.info("the %d ROIs run apart on their own crops (cheaper than one shared crop)", len(job.rois))
        for r in range(len(job.rois)):
            part_path = results.partial_part_path(state_path, r) if state_path else None
            yield _StageRunner(self, job.one_roi(r), degraded, fingerprint, part_path, checkpoint_every_s)

    def _provenance(self, run: _StageRunner, fingerprint: str, sharded: bool) -> dict[str, Any]:
        """The metadata the ROIs of one run share: model, task, settings, locality report, versions, commit."""
        job = run.job
        return {
            "model": self.model_name,
            "model_fingerprint": fingerprint,
            "task": self.task.describe(),
            "metric": self.metric.name,
            "image_size": [job.grid.height, job.grid.width],
            "block_size": job.grid.block_size,
            "grid": list(job.grid.shape),
            "estimator": job.estimator.describe(),
            "seed": job.seed,
            "blocks": np.flatnonzero(job.selected).tolist() if sharded else None,
            "patch_bank": {"source": job.bank.source, "n_patches": len(job.bank), "patch_size": job.bank.patch_size,
                           "sha256": job.bank.sha256},
            "forwards": 0,
            "seconds": 0.0,
            "rois_sharing_forwards": len(job.rois),
            "device": str(self.device),
            "tf32": self.tf32,
            "precision": self.precision,
            "compile": self.compile,
            "batch_size": self.batch_size,
            "locality": run.plan.report,
            "state_key": run.key,
            "versions": versions(),
            "git_commit": git_commit(),
        }

    # --- helpers --------------------------------------------------------------------------------------------------

    def _plan_locality(self, degraded: Degraded, clean: torch.Tensor, rois: Sequence[ROI], grid: BlockGrid,
                       bank: PatchBank, seed: int) -> LocalityPlan:
        return plan_for_model(self._forward, self.model, self.task, degraded, clean, rois, grid, bank, self.locality,
                              seed)

    def _state_key(
        self, clean: torch.Tensor, degraded: Degraded, rois: Sequence[ROI], grid: BlockGrid, est: Estimator, seed: int,
        bank: PatchBank, plan: LocalityPlan, fingerprint: str,
    ) -> str:
        """Everything that changes the samples, hashed: saved state resumes only into an identical computation."""
        settings = {
            "clean": sha256_tensor(clean),
            "degraded": sha256_tensor(degraded.image),
            "state": {k: sha256_tensor(v) for k, v in sorted(degraded.state.items())},
            "model": fingerprint,
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


@dataclass
class MapJob:
    """One ``attribute`` call's inputs, checked: the clean image, ROIs, block grid, estimator, the blocks to compute
    (a shard may compute only some) and the patch bank."""

    clean: torch.Tensor
    rois: list[ROI]
    single: bool
    grid: BlockGrid
    roi_masks: list[np.ndarray]
    estimator: Estimator
    selected: np.ndarray
    bank: PatchBank
    seed: int

    @classmethod
    def prepare(cls, clean: torch.Tensor | np.ndarray, roi: Any, block_size: int, estimator: str | Estimator,
                seed: int, patches: PatchBank | np.ndarray | None, blocks: Sequence[int] | None,
                block_multiple: int) -> MapJob:
        clean_t = as_clean_tensor(clean)
        single = isinstance(roi, ROI) or (isinstance(roi, tuple) and len(roi) == 3 and all(isinstance(v, int) for v in roi))
        rois = [r if isinstance(r, ROI) else ROI(*r) for r in ([roi] if single else list(roi))]
        if not rois:
            raise GeometryError("at least one ROI is needed")
        _, height, width = clean_t.shape
        grid = BlockGrid(height, width, block_size, scale=block_multiple)
        roi_masks = [grid.roi_mask(r) for r in rois]  # checks every ROI against the image before any forward
        bank = as_patch_bank(patches, block_size)
        bank.check_block(min(block_size, height), min(block_size, width))
        est = make_estimator(estimator) if isinstance(estimator, str) else estimator
        return cls(clean_t, rois, single, grid, roi_masks, est, selected_blocks(len(grid), blocks), bank, seed)

    def one_roi(self, r: int) -> MapJob:
        """This job for ROI ``r`` alone."""
        return dataclasses.replace(self, rois=[self.rois[r]], roi_masks=[self.roi_masks[r]], single=False)


def selected_blocks(n_blocks: int, blocks: Sequence[int] | None) -> np.ndarray:
    """Mask of the flat block indices to compute (all when ``blocks`` is None)."""
    selected = np.ones(n_blocks, dtype=bool)
    if blocks is None:
        return selected
    chosen = np.asarray(list(blocks), dtype=np.int64)
    bad = sorted({int(b) for b in chosen if not 0 <= b < n_blocks})
    if bad:
        raise GeometryError(f"blocks must be flat indices in [0, {n_blocks}); out of range: {bad[:5]}")
    selected[:] = False
    selected[chosen] = True
    return selected


class _StageRunner:
    """The stage scheduler and batch executor of one map: the estimator plans each stage's draws per block from
    the differences so far; the draws still missing are batched through the model; samples are checkpointed (and
    resumed) under a key of everything that changes them; ``result`` assembles one ROI's map at the end."""

    def __init__(self, engine: CausalEffectMap, job: MapJob, degraded: Degraded, fingerprint: str,
                 state_path: str | Path | None, checkpoint_every_s: float) -> None:
        self.started, self.forwards_before = time.perf_counter(), engine.forwards
        self.engine, self.job, self.degraded = engine, job, degraded
        self.clean = job.clean.to(engine.device)
        self.plan = engine._plan_locality(degraded, self.clean, job.rois, job.grid, job.bank, job.seed)
        n_rois, n_blocks = len(job.rois), len(job.grid)
        self.reachable = np.ones((n_rois, n_blocks), dtype=bool) if self.plan.reachable is None else self.plan.reachable
        self.scored_clean, self.scored_rois = self.plan.crop_output(self.clean, job.rois, engine.task.scale)
        origin_input = self.model_input(degraded.image.unsqueeze(0))
        if engine.automatic_batch:
            engine.batch_size = engine._auto_batch_size(origin_input)
        self.key = engine._state_key(job.clean, degraded, job.rois, job.grid, job.estimator, job.seed, job.bank,
                                     self.plan, fingerprint)
        self.state_path = Path(state_path) if state_path else None
        self.checkpoint_every_s = checkpoint_every_s
        self.stages, self.origin = self._resume(engine._score(origin_input, self.scored_clean, self.scored_rois)[0])
        self.orient = 1.0 if engine.metric.higher_is_better else -1.0
        self.pending = _Pending([], [])
        self.last_save = time.monotonic()

    def _resume(self, origin: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        resumed = results.load_partial(self.state_path, self.key) if self.state_path else None
        if not resumed:
            return [], origin
        log.info("resuming from %s (%d stage(s) saved)", self.state_path, len(resumed[1]))
        if not np.array_equal(resumed[0], origin):
            log.warning("saved origin %s differs from recomputed %s: starting over", resumed[0], origin)
            return [], origin
        return resumed[1], origin

    def model_input(self, batch: torch.Tensor) -> torch.Tensor:
        window = self.plan.window
        return batch if window is None else window.crop(batch).contiguous()

    def differences(self, r: int, upto: int) -> list[np.ndarray]:
        return [self.orient * (self.origin[r] - st[r]) for st in self.stages[:upto]]

    def cheaper_apart(self) -> bool:
        """Whether running each ROI on its own crop would cost less than APART_SHARE of this shared run: the model
        was screened as local, and its reach around ROIs far apart is much smaller than their union's (forward cost
        taken as proportional to the crop's area)."""
        report = self.plan.report
        if len(self.job.rois) < 2 or not report.get("screened"):
            return False
        height, width = self.degraded.image.shape[-2:]
        window = self.plan.window or Window(0, height, 0, width)
        sampled = self.reachable & self.job.selected
        shared = int(sampled.any(axis=0).sum()) * window.area
        apart = sum(int(sampled[r].sum()) * roi_reach(roi, report["radius"], self.engine.task.scale, height, width).area
                    for r, roi in enumerate(self.job.rois))
        return apart < APART_SHARE * shared

    def checkpoint(self, force: bool = False) -> None:
        if self.state_path and (force or time.monotonic() - self.last_save >= self.checkpoint_every_s):
            self.engine._drain(self.pending)
            results.save_partial(self.state_path, self.key, self.origin, self.stages)
            self.last_save = time.monotonic()

    def run(self) -> None:
        """Stage after stage until the estimator plans no more draws for any ROI."""
        n_blocks = len(self.job.grid)
        sampled = self.job.selected & self.reachable.any(axis=0)
        stage = 0
        while True:
            plans = [self.job.estimator.plan(stage, n_blocks, self.differences(r, stage)) for r in range(len(self.job.rois))]
            if all(p is None for p in plans):
                return
            wanted = np.max(np.stack([np.zeros(n_blocks, dtype=np.int64) if p is None else p for p in plans]), axis=0)
            counts = np.where(sampled, wanted, 0)
            self._run_stage(stage, counts, self._stage_store(stage, counts))
            stage += 1

    def _stage_store(self, stage: int, counts: np.ndarray) -> np.ndarray:
        """The (rois, blocks, draws) sample array of ``stage``: the resumed one if its shape fits, else a new one."""
        shape = (len(self.job.rois), len(self.job.grid), int(counts.max(initial=0)))
        if stage < len(self.stages) and self.stages[stage].shape == shape:
            return self.stages[stage]
        store = np.full(shape, np.nan)
        self.stages[stage:] = [store]
        return store

    def _run_stage(self, stage: int, counts: np.ndarray, store: np.ndarray) -> None:
        """Forward every missing draw of the stage in batches of ``batch_size`` (across blocks)."""
        engine, pending = self.engine, self.pending
        todo = [(k, np.flatnonzero(np.isnan(store[0, k, : counts[k]]))) for k in range(len(self.job.grid))
                if counts[k] and np.isnan(store[0, k, : counts[k]]).any()]
        bar = tqdm(total=int(sum(len(d) for _, d in todo)), desc=f"CEM stage {stage}", unit="fwd",
                   disable=not engine.progress, leave=False)
        for k, draws in todo:
            interventions = self.model_input(block_interventions(
                engine.task, self.degraded, self.clean, self.job.bank, self.job.grid.block(k), stage, int(counts[k]),
                self.job.seed, engine.device))
            start = 0
            while start < len(draws):
                take = draws[start : start + max(1, engine.batch_size - pending.size)]
                pending.inputs.append(interventions[torch.as_tensor(take, device=engine.device)])
                pending.targets.append((store, k, take))
                pending.size += len(take)
                start += len(take)
                if pending.size >= engine.batch_size:
                    bar.update(self._flush())
                    self.checkpoint()
        bar.update(self._flush())
        engine._drain(pending)
        bar.close()
        self.checkpoint(force=True)

    def _flush(self) -> int:
        flushed = self.pending.size
        self.engine._flush(self.pending, self.scored_clean, self.scored_rois)
        return flushed

    def result(self, r: int, common: dict[str, Any], keep_samples: bool, meta: dict[str, Any] | None) -> CEMResult:
        """ROI ``r``'s map: effects and standard errors of the selected blocks (0 where the model cannot see the
        block, NaN where this run did not compute it), significance, forwards and metadata."""
        job, shape = self.job, self.job.grid.shape
        estimate = job.estimator.estimate(self.differences(r, len(self.stages)))
        unseen, selected = ~self.reachable[r], job.selected
        effects = np.where(selected, np.where(unseen, 0.0, estimate.effects), np.nan).reshape(shape)
        se = np.where(selected, np.where(unseen, 0.0, estimate.se), np.nan).reshape(shape)
        status = np.where(unseen, STATUS_STRUCTURAL_ZERO, estimate.status)
        status = np.where(selected, status, results.STATUS_NOT_COMPUTED).astype(np.uint8).reshape(shape)
        forwards = sum((np.sum(~np.isnan(st[0]), axis=1) for st in self.stages), np.zeros(len(job.grid), dtype=np.int64))
        one = job.rois[r]
        return CEMResult(
            effects=effects,
            se=se,
            n=np.where(selected & ~unseen, estimate.n, 0).reshape(shape),
            forwards=forwards.reshape(shape),
            significant=job.estimator.significant(np.nan_to_num(effects), se),
            status=status,
            roi_mask=job.roi_masks[r],
            origin=float(self.origin[r]),
            samples={f"stage{i}": st[r].reshape(*shape, -1) for i, st in enumerate(self.stages)} if keep_samples else {},
            meta={**common, "roi": {"x": one.x, "y": one.y, "size": one.size}, "origin": float(self.origin[r]),
                  **(meta or {})},
        )
