"""``python -m cemap.train``: train a zoo model on a task (or a mixture of tasks) from configs.

    python -m cemap.train model=dncnn_tiny task=denoise train=tiny_dncnn
    python -m cemap.train model=srresnet_same_tiny train=tiny_mix mix='{sr_x4_upsampled: 1, denoise: 1, derain: 1}'
    torchrun --nproc_per_node=2 -m cemap.train model=... task=...        # DistributedDataParallel

Runs land in ``<output_root>/models/<key>/`` where the key hashes the resolved training config: rerunning the same
command resumes an interrupted run from ``last.pth`` or, when ``final.pth`` exists, does nothing. Outputs:
``final.pth`` (BasicSR convention: ``params``, ``params_ema``, ``iter``, ``config``), ``metrics.csv``,
``eval.json`` (model and classical baseline on the held-out test images).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm.auto import tqdm

from cemap import results
from cemap.config import CONF_DIR, drop_keys
from cemap.engine import resolve_device
from cemap.models import build_model
from cemap.validation import SettingError, check_number
from cemap.training import (
    EMA,
    LOSSES,
    PatchSampler,
    evaluate,
    load_training_state,
    lr_factor,
    make_optimizer,
    save_training_checkpoint,
)

log = logging.getLogger("cemap.train")

RESULT_NEUTRAL = ("device", "logger", "output_root", "progress", "wandb", "train.val_every", "train.checkpoint_every",
                  "train.log_every",
                  "max_steps_this_run", "max_minutes_this_run")
"""Settings that never change the trained weights, left out of the cache key."""
OFF_BY_DEFAULT = ("train.amp_on_cpu", "train.channels_last")
"""Settings added after models were trained: left out of the cache key while off, so earlier keys stay valid."""

FINAL, LAST, METRICS, EVAL = "final.pth", "last.pth", "metrics.csv", "eval.json"


def training_key(cfg: DictConfig) -> str:
    node = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(node, dict)
    drop_keys(node, RESULT_NEUTRAL)
    drop_keys(node, tuple(k for k in OFF_BY_DEFAULT if not OmegaConf.select(cfg, k, default=False)))
    if node.get("mix"):
        node.pop("task", None)  # a mix model is the same model whichever task a run then explains with it
    return hashlib.sha256(json.dumps(node, sort_keys=True, default=str).encode()).hexdigest()[:16]


def task_label(task: Any) -> str:
    """A short readable name: the task name plus its scale where it has one (``sr_x4``)."""
    d = task.describe()
    return f"{d['name']}_x{d['scale']}" if d.get("scale", 1) > 1 else str(d["name"])


def run_dir(cfg: DictConfig) -> Path:
    """Where the model trained with ``cfg`` lives: the checkpoint cache entry of its config."""
    label = "mix" if cfg.mix else task_label(hydra.utils.instantiate(cfg.task))
    return Path(cfg.output_root) / "models" / f"{cfg.model.name}-{label}-{training_key(cfg)}"


def tasks_of(cfg: DictConfig) -> dict[str, tuple[Any, float]]:
    """The task (or weighted tasks of a mix, by ``conf/task`` preset name) the model trains on."""
    if not cfg.mix:
        task = hydra.utils.instantiate(cfg.task)
        return {task_label(task): (task, 1.0)}
    out = {}
    for name, weight in cfg.mix.items():
        node = OmegaConf.load(CONF_DIR / "task" / f"{name}.yaml")
        out[name] = (hydra.utils.instantiate(node), float(weight))
    return out


def _images(node: DictConfig) -> list[np.ndarray]:
    return [im for _, im in hydra.utils.instantiate(node)]


class Logger:
    """CSV always (``metrics.csv``); W&B too when ``logger=wandb`` (offline unless WANDB_MODE=online)."""

    def __init__(self, cfg: DictConfig, directory: Path, enabled: bool, tasks: list[str]) -> None:
        self.path = directory / METRICS
        self.enabled = enabled
        self.wandb = None
        if enabled and cfg.logger == "wandb":
            import wandb

            os.environ.setdefault("WANDB_MODE", "offline")
            self.wandb = wandb.init(project=cfg.wandb.project, group=cfg.wandb.group or "train", dir=str(directory),
                                    name=directory.name, config=OmegaConf.to_container(cfg, resolve=True),
                                    tags=[cfg.model.name, *tasks],
                                    reinit=True)

    def forget_after(self, step: int) -> None:
        """Drop rows logged after ``step``: a run killed between checkpoints redoes those steps when it resumes, and
        would otherwise log them twice."""
        if not self.path.is_file():
            return
        lines = self.path.read_text().splitlines(keepends=True)
        kept = lines[:1] + [line for line in lines[1:] if int(line.split(",", 1)[0]) <= step]
        if len(kept) < len(lines):
            results.atomic_write_bytes(self.path, "".join(kept).encode())

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        new = not self.path.exists()
        with open(self.path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["step", "kind", "task", "loss", "lr", "psnr", "ssim", "seconds"],
                                    extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)
        if self.wandb is not None:
            self.wandb.log({f"{row['kind']}/{k}": v for k, v in row.items() if k not in ("kind", "step", "task")
                            and v is not None}, step=int(row["step"]))

    def finish(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()


EMA_INIT_SHARE_MAX = 1e-3
"""Largest share of the random initialisation that saved EMA weights may hold (``ema_decay ** steps``) before the
run is flagged (and the bench zoo refuses to ship it)."""


def ema_init_share(s: DictConfig) -> float:
    """How much of the random initialisation the final EMA weights (the ones saved and evaluated) still hold.
    BasicSR's 0.999 suits 500k steps; over 1,300 steps it keeps 27% of the init, which ruins the model."""
    return float(s.ema_decay) ** int(s.steps) if 0 < s.ema_decay < 1 else 0.0


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host batch to the device without making the host wait for the GPU (pinned memory, asynchronous copy): the
    next batch is sampled while the GPU still works on this one."""
    return x.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else x


class TrainingDiverged(SettingError):
    """The loss became NaN or infinite: no final.pth is written (its weights would be NaN)."""


def finite_loss(loss: torch.Tensor, step: int, last: Path) -> float:
    value = float(loss.item())
    if not np.isfinite(value):
        raise TrainingDiverged(f"training loss is {value} at step {step}: the run diverged (lower train.lr, keep "
                               f"train.grad_clip > 0); the last good checkpoint, if any, is {last}")
    return value


def slice_deadline(cfg: DictConfig, started: float, world: int) -> float | None:
    """When a time-sliced run (``max_minutes_this_run``) stops: a GPU lease trains as far as it lasts and the next
    one resumes from ``last.pth``. Ranks of a distributed run would disagree on the moment, so it is single-process."""
    if cfg.max_minutes_this_run is None:
        return None
    if not cfg.max_minutes_this_run > 0 or world > 1:
        raise SettingError(f"max_minutes_this_run={cfg.max_minutes_this_run}: must be > 0, and only without torchrun")
    return started + 60.0 * float(cfg.max_minutes_this_run)


def train(cfg: DictConfig) -> Path:
    """Train (or resume, or reuse) the model described by ``cfg``; returns the path of ``final.pth``."""
    check_schedule(cfg.train)
    directory = run_dir(cfg)
    final = directory / FINAL
    if final.is_file():
        log.info("cache hit: %s", final)
        return final
    world, rank, device = start_processes(cfg.device)
    main_process = rank == 0
    if main_process:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    warn_if_ema_keeps_init(cfg.train)
    warn_if_bf16_emulated(cfg.train, device)
    s, tasks, last = cfg.train, tasks_of(cfg), directory / LAST
    model, model_name, ema, optimizer, start = training_state(cfg, device, last)
    sampler = PatchSampler(_images(cfg.data), tasks, s.patch_size, s.batch_size, cfg.seed)
    net: torch.nn.Module = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    logger = Logger(cfg, directory, main_process, list(tasks))
    if main_process:
        logger.forget_after(start)
    config = OmegaConf.to_container(cfg, resolve=True)
    val_images = _images(cfg.val_data)
    stop = s.steps if cfg.max_steps_this_run is None else min(s.steps, start + cfg.max_steps_this_run)
    bar = tqdm(range(start, stop), initial=start, total=s.steps, desc=f"train {model_name}", unit="step",
               disable=not (cfg.progress and main_process))
    started = time.perf_counter()
    deadline = slice_deadline(cfg, started, world)
    for step in bar:
        loss, task_name, lr = training_step(net, model, ema, optimizer, sampler, s, step, device, rank, world)
        done = step + 1
        if deadline is not None and done < stop and time.perf_counter() > deadline:
            stop = done  # the time slice is over: log, checkpoint and return last.pth as a partial run does
        if done % s.log_every == 0 or done == stop:  # loss.item() waits for the GPU: not on every step
            value = finite_loss(loss, done, last)
            bar.set_postfix(loss=f"{value:.4f}", task=task_name)
            logger.log({"step": done, "kind": "train", "task": task_name, "loss": value, "lr": lr,
                        "seconds": round(time.perf_counter() - started, 2)})
        if main_process and (done % s.checkpoint_every == 0 or done == stop):
            save_training_checkpoint(last, model, ema, done, config, optimizer)
        if main_process and s.val_every and done % s.val_every == 0 and done < s.steps:
            for name, (task, _) in tasks.items():
                row = evaluate(ema.model, task, val_images, cfg.seed, device, with_baseline=False)
                logger.log({"step": done, "kind": "val", "task": name, "psnr": row.psnr, "ssim": row.ssim})
        if done == stop:
            break
    bar.close()
    if stop < s.steps:  # a deliberately partial run (tests, time-sliced jobs)
        logger.finish()
        return last
    if main_process:
        summary = {"model": model_name, "key": directory.name, "steps": s.steps,
                   "minutes": round((time.perf_counter() - started) / 60, 2), "resumed_from": start,
                   "device": str(device), "world_size": world, "ema_init_share": ema_init_share(s)}
        finish_training(directory, model, ema, tasks, val_images, cfg.seed, device, logger, summary, config)
    logger.finish()
    stop_processes(world)
    return final


def training_state(cfg: DictConfig, device: torch.device,
                   last: Path) -> tuple[nn.Module, str, EMA, torch.optim.Optimizer, int]:
    """The seeded model, its EMA and optimizer, resumed from ``last.pth`` when there is one; returns them with the
    model's name and the step to start from."""
    s = cfg.train
    torch.manual_seed(cfg.seed)
    model, model_name = build_model(cfg.model)
    model.to(device, memory_format=torch.channels_last if s.channels_last else torch.preserve_format)
    optimizer = make_optimizer(model.parameters(), s.optimizer, s.lr, s.betas, s.weight_decay)
    ema = EMA(model, s.ema_decay)
    start = resume_training(last, model, ema, optimizer)
    ema.model.to(device)
    return model, model_name, ema, optimizer, start


def start_processes(device_name: str) -> tuple[int, int, torch.device]:
    """(world size, rank, device) of this process; under ``torchrun`` the process group is started here."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = resolve_device(device_name)
    if world > 1:
        import torch.distributed as dist

        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return world, rank, device


def stop_processes(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()


def warn_if_ema_keeps_init(s: DictConfig) -> None:
    if ema_init_share(s) > EMA_INIT_SHARE_MAX:
        log.warning("train.ema_decay=%s over %s steps keeps %.1f%% of the random initialisation in the saved EMA "
                    "weights; lower ema_decay or train longer", s.ema_decay, s.steps, 100 * ema_init_share(s))


def resume_training(last: Path, model: nn.Module, ema: EMA, optimizer: torch.optim.Optimizer) -> int:
    """Load ``last.pth`` (weights, EMA, optimizer, RNG) when there is one; returns the step to start from."""
    if not last.is_file():
        return 0
    state = load_training_state(last)
    model.load_state_dict(state["params"])
    ema.model.load_state_dict(state["params_ema"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    log.info("resuming %s from step %d", last.parent, int(state["iter"]))
    return int(state["iter"])


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool | None:
    """Whether the CPU computes bf16 in hardware (AVX512-BF16 or AMX); None where ``cpuinfo`` is absent. Without it
    torch emulates bf16 autocast: x4 ``rcan_bench`` took 33 s/step there against 4.0 in fp32 on an AVX2 EPYC and 0.9
    with native bf16 (results/zoo/cpu_runs.md), so a CPU bf16 recipe is only worth running where this is True."""
    if not cpuinfo.is_file():
        return None
    flags = {f for line in cpuinfo.read_text().splitlines() if line.startswith("flags") for f in line.split()}
    return any(f in flags for f in BF16_CPU_FLAGS)


def warn_if_bf16_emulated(s: DictConfig, device: torch.device) -> None:
    if device.type == "cpu" and autocast_enabled(s, device) and cpu_has_native_bf16() is False:
        log.warning("train.amp_on_cpu: this CPU has no native bf16 (%s), so torch emulates it, several times slower "
                    "than fp32; set train.amp_on_cpu=false here", " or ".join(BF16_CPU_FLAGS))


def autocast_enabled(s: DictConfig, device: torch.device) -> bool:
    """bf16 autocast: on CUDA when ``amp``; on the CPU only with ``amp_on_cpu`` too (CPU recipes stayed fp32)."""
    return bool(s.amp) and (device.type == "cuda" or (device.type == "cpu" and bool(s.amp_on_cpu)))


def training_step(net: nn.Module, model: nn.Module, ema: EMA, optimizer: torch.optim.Optimizer,
                  sampler: PatchSampler, s: DictConfig, step: int, device: torch.device, rank: int,
                  world: int) -> tuple[torch.Tensor, str, float]:
    """One optimisation step at the scheduled learning rate; returns (loss on the device, task, learning rate)."""
    lr = s.lr * lr_factor(step, s.steps, s.scheduler, s.warmup_steps, s.eta_min_ratio, s.milestones, s.gamma)
    for group in optimizer.param_groups:
        group["lr"] = lr
    lq, gt, task_name = sampler.batch(step, rank, world)
    if s.channels_last:
        lq = lq.contiguous(memory_format=torch.channels_last)
    net.train()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast_enabled(s, device)):
        loss = LOSSES[s.loss](net(to_device(lq, device)), to_device(gt, device))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if s.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
    optimizer.step()
    ema.update(model)
    return loss, task_name, lr


def finish_training(directory: Path, model: nn.Module, ema: EMA, tasks: dict, val_images: list, seed: int,
                    device: torch.device, logger: Logger, summary: dict[str, Any], config: Any) -> None:
    """Evaluate the EMA weights on every task, write ``eval.json`` and ``final.pth``, drop ``last.pth``."""
    rows = []
    for name, (task, _) in tasks.items():
        row = evaluate(ema.model, task, val_images, seed, device)
        rows.append({**row.__dict__, "task": name})
        logger.log({"step": summary["steps"], "kind": "final", "task": name, "psnr": row.psnr, "ssim": row.ssim})
    results.atomic_write_json(directory / EVAL, {**summary, "eval": rows})
    save_training_checkpoint(directory / FINAL, model, ema, summary["steps"], config)
    (directory / LAST).unlink(missing_ok=True)


def check_schedule(s: DictConfig) -> None:
    """Refuse settings that would train nothing or NaN (``steps=0`` wrote an untrained final.pth; ``lr=nan``)."""
    check_number("train.steps", s.steps, 1)
    check_number("train.batch_size", s.batch_size, 1)
    check_number("train.patch_size", s.patch_size, 1)
    check_number("train.lr", s.lr, 0.0, strict=True)
    check_number("train.grad_clip", s.grad_clip, 0.0)
    check_number("train.ema_decay", s.ema_decay, 0.0)
    if s.ema_decay >= 1:
        raise SettingError(f"train.ema_decay={s.ema_decay}: must be < 1 (1 would keep the random initialisation)")


def _task(cfg: DictConfig) -> None:
    final = train(cfg)
    evaluation = final.parent / EVAL
    if evaluation.is_file() and int(os.environ.get("RANK", "0")) == 0:
        print(evaluation.read_text().strip().replace("\n", " "), flush=True)


def main() -> None:
    """Entry point (``--debug``: tracebacks instead of one-line errors; see cemap.cli)."""
    from cemap.cli import hydra_entry

    hydra_entry(_task, "training", "cemap.train")


if __name__ == "__main__":
    sys.exit(main())
