"""``python -m cemap.run``: one causal effect map from the command line (Hydra).

Example (the paper's denoising demo)::

    python -m cemap.run model=dncnn ckpt=PATH task=denoise image=PATH roi.x=96 roi.y=152 roi.size=32 \
        cem.block_size=8 cem.estimator=reference cem.n_samples=50 seed=0 device=cpu

Writes ``cem.npz``, ``cem.json``, ``cem.png`` and ``summary.json`` into the Hydra run directory and prints the summary
as its last line. Finished maps are cached under ``<output_root>/cache/<job key>`` (the key hashes every setting that
changes the result), so a rerun is free and an interrupted run resumes where it stopped. A bad input ends the run
with one line on stderr and exit code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from cemap import results
from cemap.checkpoint import CheckpointError, load_checkpoint
from cemap.config import register_configs
from cemap.data import center_crop, load_image, patch_bank_from_config
from cemap.engine import CausalEffectMap, ModelOutputError, resolve_device
from cemap.estimators import make_estimator
from cemap.figures import save_map_figure
from cemap.grid import ROI, BlockGrid, GeometryError
from cemap.imageio import ImageError, to_tensor, to_uint8
from cemap.patches import PatchBankError
from cemap.results import CEMResult, ResultLockedError, ResultWriteError
from cemap.stats import summarize

log = logging.getLogger("cemap.run")

USER_ERRORS = (
    GeometryError,
    ImageError,
    PatchBankError,
    CheckpointError,
    ModelOutputError,
    ResultWriteError,
    ResultLockedError,
    ValueError,
    TypeError,
    FileNotFoundError,
)
"""Errors caused by inputs or settings: reported in one line, not as a traceback."""

RESULT_NEUTRAL_KEYS = ("progress", "output_root", "cem.batch_size", "cem.checkpoint_every_s", "figure_bound")
"""Settings that change speed or presentation but never the map, left out of the job key."""


def build_model(model_cfg: DictConfig) -> tuple[torch.nn.Module, str]:
    node = OmegaConf.to_container(model_cfg, resolve=True)
    assert isinstance(node, dict)
    name = str(node.pop("name", node.get("_target_", "model")))
    return hydra.utils.instantiate(node), name


def job_key(cfg: DictConfig, image: np.ndarray, ckpt_sha: str | None, device: torch.device) -> str:
    """Hash of every setting that changes the map, plus the image pixels and checkpoint bytes."""
    node = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(node, dict)
    for dotted in RESULT_NEUTRAL_KEYS:
        *parents, leaf = dotted.split(".")
        d = node
        for p in parents:
            d = d[p]
        d.pop(leaf, None)
    node.pop("device", None)
    node.update(image_sha256=hashlib.sha256(image.tobytes()).hexdigest(), ckpt_sha256=ckpt_sha, device_type=device.type)
    return hashlib.sha256(json.dumps(node, sort_keys=True, default=str).encode()).hexdigest()[:20]


def compute(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Validate everything cheap first, then compute (or reuse) the map and write the run's files."""
    started = time.perf_counter()
    device = resolve_device(cfg.device)
    task = hydra.utils.instantiate(cfg.task)
    image, image_name = load_image(cfg.image)
    image = center_crop(image, cfg.crop, multiple=task.block_multiple)
    height, width = image.shape[:2]
    roi = ROI(cfg.roi.x, cfg.roi.y, cfg.roi.size)
    BlockGrid(height, width, cfg.cem.block_size, scale=task.block_multiple).roi_mask(roi)
    estimator = make_estimator(cfg.cem.estimator, cfg.cem.n_samples, cfg.cem.n_coarse, cfg.cem.tol, cfg.cem.z)
    bank = patch_bank_from_config(
        cfg.patches.source, cfg.cem.block_size, cfg.patches.path, cfg.patches.n_patches, cfg.patches.seed,
        cfg.patches.min_sharpness,
    )
    model, model_name = build_model(cfg.model)
    declared = getattr(model, "info", None)
    if declared is not None and declared.scale != task.scale:
        raise ValueError(
            f"model {model_name} has scale {declared.scale} but task {task.name} needs scale {task.scale}; pick a "
            f"model of the task's scale (e.g. an x{task.scale} SR model for task=sr_x{task.scale})"
        )
    ckpt_sha = getattr(model, "checkpoint_sha256", None)  # model=auto reads its checkpoint itself
    if ckpt_sha is None and cfg.ckpt:
        ckpt_sha = load_checkpoint(model, cfg.ckpt, strict=cfg.strict)

    key = job_key(cfg, image, ckpt_sha, device)
    cache = Path(cfg.output_root) / "cache" / key
    cached = CEMResult.exists(cache)
    if cached:
        log.info("reusing the finished map in %s", cache)
        result = CEMResult.load(cache)
    else:
        with results.exclusive(cache):
            cem = CausalEffectMap(
                model, task, metric=cfg.cem.metric, device=device, batch_size=cfg.cem.batch_size, tf32=cfg.cem.tf32,
                progress=cfg.progress, model_name=model_name,
            )
            result = cem.attribute(
                to_tensor(image), roi, cfg.cem.block_size, estimator, seed=cfg.seed, patches=bank,
                state_path=results.partial_path(cache), checkpoint_every_s=cfg.cem.checkpoint_every_s,
                keep_samples=cfg.cem.keep_samples,
                meta={
                    "image": {"name": image_name, "source": str(cfg.image), "crop": cfg.crop,
                              "sha256": hashlib.sha256(image.tobytes()).hexdigest()},
                    "checkpoint": {"path": cfg.ckpt, "sha256": ckpt_sha} if cfg.ckpt else None,
                    "job_key": key,
                    "config": OmegaConf.to_container(cfg, resolve=True),
                },
            )
            result.save(cache)
            results.partial_path(cache).unlink(missing_ok=True)

    result.save(run_dir)
    degraded = task.degrade(to_tensor(image), np.random.RandomState(cfg.seed)).image
    shown = np.repeat(np.repeat(to_uint8(degraded), task.scale, axis=0), task.scale, axis=1)
    bound = cfg.figure_bound if cfg.figure_bound is not None else task.display_bound
    save_map_figure(result, run_dir / results.FIGURE, shown, bound,
                    title=f"{model_name} / {task.name} / {image_name}  ROI ({roi.x},{roi.y},{roi.size})")
    summary = {
        **summarize(result),
        "seconds": round(time.perf_counter() - started, 3),
        "cached": cached,
        "result_dir": str(run_dir.resolve()),
    }
    results.atomic_write_json(run_dir / results.SUMMARY, summary)
    return summary


def _task(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        summary = compute(cfg, run_dir)
    except USER_ERRORS as exc:
        if _DEBUG:
            raise
        print(f"cemap.run: error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(summary, default=float), flush=True)


_DEBUG = False


def main() -> None:
    """Entry point: strips ``--debug`` (tracebacks instead of one-line errors) and hands the rest to Hydra."""
    global _DEBUG
    if "--debug" in sys.argv:
        sys.argv.remove("--debug")
        _DEBUG = True
    register_configs()
    config_dir = str(Path(__file__).resolve().parents[2] / "conf")
    hydra.main(config_path=config_dir, config_name="run", version_base="1.3")(_task)()


if __name__ == "__main__":
    main()
