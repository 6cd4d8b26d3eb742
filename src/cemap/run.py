"""``python -m cemap.run``: causal effect maps from the command line (Hydra), one job or a multirun sweep.

Example (the paper's denoising demo)::

    python -m cemap.run model=dncnn ckpt=PATH task=denoise image=PATH roi.x=96 roi.y=152 roi.size=32 \
        cem.block_size=8 cem.estimator=reference cem.n_samples=50 seed=0 device=cpu

Writes ``cem.npz``, ``cem.json``, ``cem.png`` and ``summary.json`` into the Hydra run directory (one ``roi<i>/``
folder per ROI when ``rois`` lists several) and prints the summary as its last line. Finished maps are cached under
``<output_root>/cache/<job key>`` (the key hashes every setting that changes the result), so a rerun is free and an
interrupted run resumes where it stopped. ``trained.schedule=<conf/train preset>`` uses the model that
``python -m cemap.train`` trained with that schedule instead of an explicit ``ckpt``. A bad input ends the run with
one line on stderr and exit code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from cemap import results
from cemap.checkpoint import load_checkpoint
from cemap.config import compose_config, drop_keys, training_overrides
from cemap.data import load_image, patch_bank_from_config
from cemap.decomposition import FirstOrderMap, PixelDecomposition
from cemap.engine import CausalEffectMap, resolve_device
from cemap.estimators import Estimator, EstimatorSettings, make_estimator
from cemap.figures import save_cem_lam_figure, save_map_figure
from cemap.grid import ROI, BlockGrid
from cemap.imageio import to_tensor
from cemap.lam import LAM
from cemap.locality import LocalitySettings
from cemap.metrics import psnr
from cemap.models import build_model
from cemap.patches import PatchBank
from cemap.results import CEMResult, ResultWriteError
from cemap.stats import distance_map, summarize
from cemap.tasks.base import Degraded, Task
from cemap.validation import SettingError

log = logging.getLogger("cemap.run")


class MissingTrainedModel(FileNotFoundError):
    """``trained.schedule`` names a model that has not been trained yet."""


RESULT_NEUTRAL_KEYS = ("progress", "output_root", "cem.batch_size", "cem.checkpoint_every_s", "figure_bound", "logger",
                       "wandb", "device", "subject", "experiment", "trained", "gradients")
"""Settings that change speed, presentation or bookkeeping but never the map, left out of the job key (the
checkpoint actually used enters the key through its sha256)."""


def job_key(cfg: DictConfig, image: np.ndarray, ckpt_sha: str | None, device: torch.device) -> str:
    """Hash of every setting that changes the map, plus the image pixels and checkpoint bytes."""
    node = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(node, dict)
    drop_keys(node, (*RESULT_NEUTRAL_KEYS, "_choices"))
    node.update(image_sha256=hashlib.sha256(image.tobytes()).hexdigest(), ckpt_sha256=ckpt_sha, device_type=device.type)
    return hashlib.sha256(json.dumps(node, sort_keys=True, default=str).encode()).hexdigest()[:20]


def choices(cfg: DictConfig) -> dict[str, str]:
    """Which preset each config group resolved to (model, task, ...)."""
    if "_choices" in cfg:
        return dict(cfg._choices)
    return {k: v for k, v in HydraConfig.get().runtime.choices.items() if v is not None}


def zoo_checkpoint(cfg: DictConfig) -> str | None:
    """The shipped bench weights ``weights=zoo`` refers to (model preset + task preset, or the mix), sha256-checked."""
    if cfg.weights is None:
        return None
    if cfg.weights != "zoo":
        raise SettingError(f"weights={cfg.weights!r}; the only named weights are 'zoo' (or give ckpt=PATH)")
    if cfg.ckpt:
        raise SettingError("give either ckpt=PATH or weights=zoo, not both")
    from cemap import zoo

    picked = choices(cfg)
    task = "mix" if cfg.trained.mix else picked["task"]
    return str(zoo.verified_path(zoo.find(picked["model"], cfg.zoo_seed, task)))


def trained_checkpoint(cfg: DictConfig) -> Path:
    """``final.pth`` of the model ``cfg.trained`` refers to, found in the training cache by its config hash."""
    from cemap.train import FINAL, run_dir

    picked = choices(cfg)
    overrides = training_overrides(picked["model"], picked["task"], cfg.trained, cfg.output_root)
    tcfg = compose_config("training", overrides)
    final = run_dir(tcfg) / FINAL
    if not final.is_file():
        raise MissingTrainedModel(
            f"no trained model for model={picked['model']} task={picked['task']} schedule={cfg.trained.schedule}; "
            f"train it first: python -m cemap.train {' '.join(overrides)}"
        )
    return final


def roi_list(cfg: DictConfig) -> list[ROI]:
    if cfg.rois:
        return [ROI(*map(int, r)) for r in cfg.rois]
    return [ROI(cfg.roi.x, cfg.roi.y, cfg.roi.size)]


@dataclass
class RunInputs:
    """What one map job needs, loaded and checked before any forward pass."""

    device: torch.device
    task: Task
    image: np.ndarray
    image_name: str
    rois: list[ROI]
    estimator: Estimator
    shard_blocks: list[int] | None
    bank: PatchBank
    model: torch.nn.Module
    model_name: str
    declared: Any  # the model's ModelInfo (scale, receptive radius), when it declares one
    ckpt_path: str | None
    ckpt_sha: str | None


def load_inputs(cfg: DictConfig) -> RunInputs:
    """Task, image, ROIs (checked against the block grid), estimator, shard, patch bank, model and checkpoint."""
    device = resolve_device(cfg.device)
    task = hydra.utils.instantiate(cfg.task)
    image, image_name = load_image(cfg.image, cfg.crop, multiple=task.block_multiple)
    height, width = image.shape[:2]
    rois = roi_list(cfg)
    grid = BlockGrid(height, width, cfg.cem.block_size, scale=task.block_multiple)
    for roi in rois:
        grid.roi_mask(roi)
    estimator = make_estimator(cfg.cem.estimator, EstimatorSettings.from_mapping(cfg.cem))
    shard_blocks = [] if cfg.cem.psnr_only else results.parse_shard(cfg.cem.shard, len(grid)) if cfg.cem.shard else None
    bank = patch_bank_from_config(
        cfg.patches.source, cfg.cem.block_size, cfg.patches.path, cfg.patches.n_patches, cfg.patches.seed,
        cfg.patches.min_sharpness,
    )
    torch.manual_seed(cfg.seed)  # an untrained model (smoke runs, tests) is then the same in every job
    model, model_name = build_model(cfg.model)
    declared = getattr(model, "info", None)
    if declared is not None and declared.scale != task.scale:
        raise SettingError(
            f"model {model_name} has scale {declared.scale} but task {task.name} needs scale {task.scale}; pick a "
            f"model of the task's scale (e.g. an x{task.scale} SR model for task=sr_x{task.scale})"
        )
    ckpt_path = cfg.ckpt or zoo_checkpoint(cfg) or (str(trained_checkpoint(cfg)) if cfg.trained.schedule else None)
    ckpt_sha = getattr(model, "checkpoint_sha256", None)  # model=auto reads its checkpoint itself
    if ckpt_sha is None and ckpt_path:
        ckpt_sha = load_checkpoint(model, ckpt_path, strict=cfg.strict)
    return RunInputs(device, task, image, image_name, rois, estimator, shard_blocks, bank, model, model_name, declared,
                     ckpt_path, ckpt_sha)


def compute(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Validate everything cheap first, then compute (or reuse) the maps and write the run's files."""
    started = time.perf_counter()
    results.ensure_inside(cfg.output_root, run_dir)
    job = load_inputs(cfg)
    key = job_key(cfg, job.image, job.ckpt_sha, job.device)
    cache = results.ensure_inside(cfg.output_root, Path(cfg.output_root) / "cache" / key)
    folders = [""] if len(job.rois) == 1 else [f"roi{i}" for i in range(len(job.rois))]
    maps = load_cached(cache, folders)
    cached = maps is not None
    if maps is None:
        with results.exclusive(cache):
            maps = compute_maps(cfg, job, key, cache, folders)
    try:  # the run folder is all or nothing: a failed write (a full disk) leaves no half-written job behind
        per_roi = write_job_outputs(cfg, job, maps, folders, run_dir)
        summary = _combine(per_roi)
        summary.update(seconds=round(time.perf_counter() - started, 3), cached=cached,
                       result_dir=str(run_dir.resolve()), forwards=job_forwards(maps))
        results.atomic_write_json(run_dir / results.SUMMARY, summary)
    except ResultWriteError:
        remove_job_outputs(run_dir, folders)
        raise
    if cfg.logger == "wandb":
        log_to_wandb(cfg, run_dir, maps, folders, per_roi, job.model_name, job.task.name)
    return summary


def remove_job_outputs(run_dir: Path, folders: list[str]) -> None:
    """Delete what this job wrote into its run folder (maps, figures, summary), keeping Hydra's own files
    (``.hydra/``, the log); the maps stay in the cache, so a rerun only writes the folder again."""
    for folder in folders:
        d = run_dir / folder
        if folder:
            shutil.rmtree(d, ignore_errors=True)
            continue
        for f in d.iterdir() if d.is_dir() else []:
            if f.is_file() and f.suffix != ".log":
                f.unlink(missing_ok=True)
    (run_dir / results.SUMMARY).unlink(missing_ok=True)


def subject_meta(cfg: DictConfig) -> dict[str, Any] | None:
    """The subject's node as plain JSON values (its group as a string)."""
    node = OmegaConf.to_container(cfg.subject, resolve=True, enum_to_str=True) if cfg.subject else None
    return node if isinstance(node, dict) else None


def job_forwards(maps: list[CEMResult]) -> int:
    """Forwards of the whole job: ROIs that shared a run carry its count once, ROIs run apart each their own."""
    return sum({m.meta.get("state_key"): int(m.meta.get("forwards", 0)) for m in maps}.values())


def compute_maps(cfg: DictConfig, job: RunInputs, key: str, cache: Path, folders: list[str]) -> list[CEMResult]:
    """Run the engine (resumable from the cache's partial state) and store every ROI's map in the cache."""
    cem = CausalEffectMap(
        job.model, job.task, metric=cfg.cem.metric, device=job.device, batch_size=cfg.cem.batch_size,
        tf32=cfg.cem.tf32, progress=cfg.progress, model_name=job.model_name,
        locality=LocalitySettings(**OmegaConf.to_container(cfg.cem.locality)),  # type: ignore[arg-type]
        precision=cfg.cem.precision, compile=cfg.cem.compile, channels_last=cfg.cem.channels_last,
    )
    declared, image = job.declared, job.image
    out = cem.attribute(
        to_tensor(image), job.rois, cfg.cem.block_size, job.estimator, seed=cfg.seed, patches=job.bank,
        state_path=results.partial_path(cache), checkpoint_every_s=cfg.cem.checkpoint_every_s,
        keep_samples=cfg.cem.keep_samples, blocks=job.shard_blocks,
        meta={
            "image": {"name": job.image_name, "source": str(cfg.image), "crop": cfg.crop,
                      "sha256": hashlib.sha256(image.tobytes()).hexdigest()},
            "checkpoint": {"path": job.ckpt_path, "sha256": job.ckpt_sha} if job.ckpt_path else None,
            "job_key": key,
            "shard": cfg.cem.shard,
            "model_info": {"scale": declared.scale, "receptive_radius": declared.receptive_radius}
            if declared is not None else None,
            "subject": subject_meta(cfg),
            "experiment": cfg.experiment.name if cfg.experiment else None,
            "config": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
        },
    )
    maps = out if isinstance(out, list) else [out]
    for folder, result in zip(folders, maps):
        result.save(cache / folder)
    results.remove_partials(cache)
    return maps


def write_job_outputs(cfg: DictConfig, job: RunInputs, maps: list[CEMResult], folders: list[str],
                      run_dir: Path) -> list[dict[str, Any]]:
    """Each ROI's map, figure and gradient views into the run folder (labelled as this job's); per-ROI summaries."""
    task, image = job.task, job.image
    degraded = task.degrade(to_tensor(image), np.random.RandomState(cfg.seed))
    whole = image_psnr(job.model, degraded, image, job.device)
    shown = task.input_view(image, cfg.seed)
    bound = cfg.figure_bound if cfg.figure_bound is not None else task.display_bound
    per_roi = []
    for folder, result, roi in zip(folders, maps, job.rois):
        # a cached map may have been computed for another subject with identical settings: label it as this job's
        result.meta["subject"] = subject_meta(cfg)
        result.meta["experiment"] = cfg.experiment.name if cfg.experiment else None
        result.meta["image_psnr"] = whole
        result.save(run_dir / folder)
        save_map_figure(result, run_dir / folder / results.FIGURE, shown, bound,
                        title=f"{job.model_name} / {task.name} / {job.image_name}  ROI ({roi.x},{roi.y},{roi.size})")
        per_roi.append(summarize(result))
        per_roi[-1].update(gradient_views(cfg, job.model, task, image, degraded, roi, result, job.bank,
                                          run_dir / folder, shown))
    return per_roi


@torch.no_grad()
def image_psnr(model: torch.nn.Module, degraded: Degraded, image: np.ndarray, device: torch.device) -> float:
    """PSNR of the model's output over the whole image (next to the ROI PSNR of the maps; one forward pass)."""
    was_training = model.training
    model.eval().to(device)
    out = model(degraded.image.unsqueeze(0).to(device))[0].float().clamp(0, 1).cpu()
    model.train(was_training)
    return float(psnr(out, to_tensor(image)).item())


def gradient_views(cfg: DictConfig, model: torch.nn.Module, task: Task, image: np.ndarray, degraded: Degraded, roi: ROI,
                   result: CEMResult, bank: PatchBank, folder: Path, shown: np.ndarray) -> dict[str, Any]:
    """The ``gradients.*`` extras for one map, saved beside it; returns their headline numbers for the summary."""
    opts, device, out = cfg.gradients, resolve_device(cfg.device), {}
    if opts.first_order:
        preview = FirstOrderMap(model, task, device=device).attribute(
            to_tensor(image), roi, cfg.cem.block_size, opts.first_order_draws, cfg.seed, bank, compare_to=result,
            degraded=degraded)
        preview.save(folder / results.FIRST_ORDER_DIR)
        out["first_order_rank_correlation"] = preview.meta["rank_correlation"]
    if opts.lam:
        lam = LAM(model, task, device, opts.lam_sigma, opts.lam_steps, opts.lam_kernel).attribute(
            to_tensor(image), roi, degraded=degraded)
        lam.save(folder)
        save_cem_lam_figure(result, np.kron(lam.map, np.ones((task.scale, task.scale))), lam.diffusion_index,
                            folder / results.CEM_LAM_FIGURE, shown)
        out["lam_diffusion_index"] = lam.diffusion_index
    if opts.decompose_top_k:
        shares = PixelDecomposition(model, task, device, steps=opts.decompose_steps).attribute(
            to_tensor(image), roi, block_size=cfg.cem.block_size, n_interventions=opts.decompose_draws, seed=cfg.seed,
            patches=bank, cem=result, top_k=opts.decompose_top_k, degraded=degraded)
        shares.save(folder)
        out["decomposition_max_completeness_gap"] = float(shares.completeness.max(initial=0.0))
    return out


def _combine(per_roi: list[dict[str, Any]]) -> dict[str, Any]:
    """One ROI: its summary. Several: counts summed, extremes over all maps, origin PSNR averaged, per-ROI list kept."""
    if len(per_roi) == 1:
        return dict(per_roi[0])
    first = per_roi[0]
    origin_key = "origin_psnr" if "origin_psnr" in first else "origin_metric"
    return {
        origin_key: float(np.mean([s[origin_key] for s in per_roi])),
        **{k: int(sum(s[k] for s in per_roi)) for k in ("n_positive", "n_negative", "n_zero")},
        "effect_min": min((s["effect_min"] for s in per_roi if s["effect_min"] is not None), default=None),
        "effect_max": max((s["effect_max"] for s in per_roi if s["effect_max"] is not None), default=None),
        "rois": per_roi,
    }


def log_to_wandb(cfg: DictConfig, run_dir: Path, maps: list[CEMResult], folders: list[str], per_roi: list[dict[str, Any]],
                 model_name: str, task_name: str) -> None:
    """One W&B run per job (offline unless WANDB_MODE=online): resolved config, metrics, figures, per-block table."""
    import wandb

    os.environ.setdefault("WANDB_MODE", "offline")
    group = cfg.wandb.group or (cfg.experiment.name if cfg.experiment else "cem")
    run = wandb.init(project=cfg.wandb.project, group=group, dir=str(run_dir), reinit=True,
                     name=f"{model_name}-{task_name}-{Path(str(cfg.image)).stem}",
                     tags=[model_name, task_name, *cfg.wandb.tags], config=OmegaConf.to_container(cfg, resolve=True))
    rows = []
    for i, (folder, result, summary) in enumerate(zip(folders, maps, per_roi)):
        run.log({f"roi{i}/{k}": v for k, v in summary.items() if isinstance(v, (int, float)) and v is not None})
        run.log({f"roi{i}/map": wandb.Image(str(run_dir / folder / results.FIGURE))})
        dist = distance_map(result)
        for (r, c), effect in np.ndenumerate(result.effects):
            rows.append([i, r, c, float(effect), float(result.se[r, c]), int(result.n[r, c]),
                         bool(result.significant[r, c]), int(dist[r, c])])
    run.log({"blocks": wandb.Table(columns=["roi", "row", "col", "effect", "se", "n", "significant", "distance"],
                                   data=rows)})
    run.finish()



def load_cached(cache: Path, folders: list[str]) -> list[CEMResult] | None:
    """The finished maps of this job, or None to compute them; a damaged entry is removed (with a warning naming
    it) and rebuilt instead of failing every rerun."""
    if not all(CEMResult.exists(cache / f) for f in folders):
        return None
    try:
        maps = [CEMResult.load(cache / f) for f in folders]
    except results.DamagedResultError as exc:
        log.warning("%s: computing it again", exc)
        for f in folders:
            for name in (results.RESULT_ARRAYS, results.RESULT_META):
                (cache / f / name).unlink(missing_ok=True)
        return None
    log.info("reusing the finished map(s) in %s", cache)
    return maps


def _task(cfg: DictConfig) -> None:
    summary = compute(cfg, Path(HydraConfig.get().runtime.output_dir))
    print(json.dumps(summary, default=float), flush=True)


def main() -> None:
    """Entry point (``--debug``: tracebacks instead of one-line errors; see cemap.cli)."""
    from cemap.cli import hydra_entry

    hydra_entry(_task, "run", "cemap.run")


if __name__ == "__main__":
    main()
