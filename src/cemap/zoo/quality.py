"""Measuring a bench model against its floor, shipping the ones that meet it, and checking a retraining.

Evaluation is on the CPU in float32, on the shipped (float16-rounded) weights: the embedded test photographs
(centre crops, never used for training) and, where ``../shared/reference`` exists, the paper's demo images. Floors
(stated in ``conf/zoo/bench.yaml`` before training): denoisers at most 1 dB below the authors' DnCNN on the same
images and 2.5 dB over the best Gaussian filter; x4 SR 1 dB over bicubic (depth-sweep members 0.5 dB); mix models and
derain models above each task's classical baseline.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import OmegaConf

from cemap import results
from cemap.config import CONF_DIR
from cemap.data import EmbeddedSet, FolderSet
from cemap.train import EMA_INIT_SHARE_MAX, training_key
from cemap.training import baseline_scores, evaluate
from cemap.zoo import PROVENANCE, TRAINING_RUNS, WEIGHTS_DIR, load_weights, records
from cemap.zoo.manifest import Job, Manifest

REFERENCE = Path(os.environ.get("CEMAP_REFERENCE", CONF_DIR.parent.parent / "shared" / "reference"))
RESULTS = CONF_DIR.parent / "results" / "zoo"
NOT_SHIPPED = "not_shipped.json"  # records of every evaluated model that missed its floor (or was held)
TOLERANCE_DB = 0.05
"""A retrained model (same seed, same device) must reproduce the shipped PSNR within this."""


@functools.cache
def eval_sets(crop: int = 256) -> dict[str, list[np.ndarray]]:
    """Name -> images: the embedded test split (always) and the paper's demo images (where ../shared exists)."""
    sets = {"embedded_test": [im for _, im in EmbeddedSet(split="test", crop=crop, multiple=4)]}
    if (REFERENCE / "images").is_dir():
        sets["paper_demo"] = [im for _, im in FolderSet(gt=str(REFERENCE / "images"), multiple=4)]
    return sets


def task_of(preset: str) -> Any:
    return hydra.utils.instantiate(OmegaConf.load(CONF_DIR / "task" / f"{preset}.yaml"))


def reference_denoiser() -> torch.nn.Module | None:
    """The authors' DnCNN (the denoising floor's reference), or None without ../shared."""
    path = REFERENCE / "dncnn_color_blind.pth"
    if not path.is_file():
        return None
    from cemap.checkpoint import load_checkpoint
    from cemap.models.dncnn import DnCNN

    model = DnCNN(features=64, depth=20)
    load_checkpoint(model, path)
    return model.eval()


@functools.cache
def _baselines(set_name: str, preset: str, seed: int, crop: int) -> dict[str, Any]:
    """Classical baseline (and, for denoising, the authors' DnCNN) on one set: the same for every model."""
    images, task = eval_sets(crop)[set_name], task_of(preset)
    name, psnr, _ = baseline_scores(task, images, seed)
    out: dict[str, Any] = {"baseline": name, "baseline_psnr": psnr}
    reference = reference_denoiser() if preset == "denoise" else None
    if reference is not None:
        out["reference_psnr"] = evaluate(reference, task, images, seed, torch.device("cpu"), with_baseline=False).psnr
    return out


def model_scores(model: torch.nn.Module, job: Job, manifest: Manifest,
                 sets: tuple[str, ...] | None = None) -> dict[str, dict]:
    """Per evaluation set (all, or ``sets``) and task: the model's PSNR/SSIM alone, the numbers a record carries."""
    crop, seed = manifest.eval_crop_and_seed
    out: dict[str, dict] = {}
    for set_name, images in eval_sets(crop).items():
        if sets is not None and set_name not in sets:
            continue
        for preset in job.tasks:
            row = evaluate(model, task_of(preset), images, seed, torch.device("cpu"), with_baseline=False)
            out.setdefault(set_name, {})[preset] = {"psnr": row.psnr, "ssim": row.ssim}
    return out


def measure(model: torch.nn.Module, job: Job, manifest: Manifest) -> dict[str, dict]:
    """Per evaluation set and task: PSNR/SSIM of the model and of the task's classical baseline (and, for denoising,
    of the authors' DnCNN)."""
    crop, seed = manifest.eval_crop_and_seed
    out = model_scores(model, job, manifest)
    for set_name, per_task in out.items():
        for preset, row in per_task.items():
            row.update(_baselines(set_name, preset, seed, crop))
    return out


def floor_check(kind: str, scores: dict[str, dict], floors: dict[str, float]) -> list[str]:
    """Why the model misses its floor (empty: met), over every evaluation set and task."""
    misses = []
    for set_name, per_task in scores.items():
        for preset, s in per_task.items():
            gain = s["psnr"] - s["baseline_psnr"]
            need = {"dn": floors["dn_over_gaussian_min"], "sr": floors["sr_over_bicubic_min"],
                    "sweep": floors["sweep_over_bicubic_min"]}.get(kind, floors["over_baseline_min"])
            if not gain > need:
                misses.append(f"{set_name}/{preset}: {gain:+.2f} dB over {s['baseline']} (needs > {need:+.2f})")
            if kind == "dn" and "reference_psnr" in s:
                gap = s["reference_psnr"] - s["psnr"]
                if gap > floors["dn_below_reference_max"]:
                    misses.append(f"{set_name}/{preset}: {gap:.2f} dB below the authors' DnCNN "
                                  f"(at most {floors['dn_below_reference_max']:.2f})")
    return misses


def load_exported(source: Path, job: Job) -> tuple[dict[str, Any], torch.nn.Module]:
    """One job of a training run's export folder: its resolved training config and its float16 weights as float32."""
    config = OmegaConf.to_container(OmegaConf.load(source / f"{job.key}.config.yaml"), resolve=True)
    assert isinstance(config, dict)
    return config, load_weights(config["model"], source / f"{job.key}.safetensors")


UNRECORDED = "not recorded (its process was stopped before writing its lease; minutes from metrics.csv)"


def unrecorded_leases(metrics: Path, recorded_from: int) -> list[dict[str, Any]]:
    """The time slices before step ``recorded_from`` whose process died without recording its lease (a session that
    ended mid-training), rebuilt from metrics.csv: its ``seconds`` restart with each process, and a resumed run
    truncates the rows past its checkpoint, so each restart closes one slice at the step where the next resumed."""
    if recorded_from <= 0 or not metrics.is_file():
        return []
    with metrics.open(newline="") as fh:
        rows = [(int(r["step"]), float(r["seconds"])) for r in csv.DictReader(fh)
                if r["seconds"] and int(r["step"]) <= recorded_from]
    slices: list[dict[str, Any]] = []
    begin, last_seconds = 0, 0.0
    for k, (step, seconds) in enumerate(rows):
        if k and seconds < last_seconds:  # a new process: the previous slice ended at the step this one resumed from
            resumed = rows[k - 1][0]
            slices.append({"machine": UNRECORDED, "from_step": begin, "to_step": resumed,
                           "minutes": round(last_seconds / 60, 2)})
            begin = resumed
        last_seconds = seconds
    if rows:
        slices.append({"machine": UNRECORDED, "from_step": begin, "to_step": recorded_from,
                       "minutes": round(last_seconds / 60, 2)})
    return slices


def provenance(job: Job, source: Path, manifest: Manifest, runs: dict[str, dict]) -> dict[str, Any]:
    """Evaluate one exported job and assemble its record (floor met or not)."""
    config, model = load_exported(source, job)
    weights = source / f"{job.key}.safetensors"
    trained = json.loads((source / f"{job.key}.eval.json").read_text())
    scores = measure(model, job, manifest)
    misses = floor_check(job.floor, scores, manifest.floors)
    share = float(trained.get("ema_init_share", config["train"]["ema_decay"] ** config["train"]["steps"]))
    if share > EMA_INIT_SHARE_MAX:
        misses.append(f"EMA weights still hold {share:.1%} of the random initialisation")
    info = getattr(model, "info", None)
    run = runs.get(job.key, {})
    leases = _read(source / f"{job.key}.leases.json")  # every time slice that trained it (GPU leases, CPU sessions)
    if leases:  # exports without a lease history keep their own minutes (nothing to complete)
        first = min(int(x["from_step"]) for x in leases)
        leases = unrecorded_leases(source / f"{job.key}.metrics.csv", first) + leases
    machine = "; ".join(dict.fromkeys(str(x["machine"]) for x in leases)) if leases else run.get("machine", "unknown")
    minutes = round(sum(float(x["minutes"]) for x in leases), 2) if leases else trained.get("minutes")
    return {
        "name": job.name, "key": job.key, "file": f"{job.key}.safetensors", "seed": job.seed,
        "model_preset": job.model, "task": job.task or "mix", "mix": job.mix, "schedule": job.schedule,
        "steps": int(config["train"]["steps"]), "data": job.data, "model_config": config["model"],
        "training_config": config, "config_hash": training_key(OmegaConf.create(config)),
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(), "dtype": "float16",
        "params": int(sum(p.numel() for p in model.parameters())),
        "receptive_radius": None if info is None else info.receptive_radius,
        "eval": scores, "floor": {"kind": job.floor, "met": not misses, "misses": misses},
        "machine": machine, "train_minutes": minutes, "leases": leases,
        "eval_machine": "CPU, float32",
    }


def ship(manifest: Manifest, source: Path, dest: Path = WEIGHTS_DIR, results_dir: Path = RESULTS) -> list[dict[str, Any]]:
    """Evaluate every exported job in ``source``; copy those that meet their floor (and whose compared partner of
    the same seed, evaluated with them, does too) into the package zoo, keep every record (shipped or not) for the
    table. Records of jobs not in ``source`` stay as they are."""
    runs = json.loads((source / TRAINING_RUNS).read_text()) if (source / TRAINING_RUNS).is_file() else {}
    old = {r["key"]: r for r in records(dest)}
    rejected = {r["key"]: r for r in _read(results_dir / NOT_SHIPPED)}
    evaluated = {}
    for job in manifest.jobs:
        if not (source / f"{job.key}.safetensors").is_file():
            continue
        evaluated[job.key] = rec = provenance(job, source, manifest, runs)
        print(f"{job.key}: floor {'met' if rec['floor']['met'] else 'MISSED: ' + '; '.join(rec['floor']['misses'])}",
              flush=True)
    held = manifest.held_partners({k: r["floor"]["met"] for k, r in evaluated.items()})
    for key, rec in evaluated.items():
        old.pop(key, None)
        rejected.pop(key, None)
        if key in held:
            rec["held"] = held[key]
            print(f"{key}: held, {held[key]}", flush=True)
        if rec["floor"]["met"] and key not in held:
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / rec["file"], dest / rec["file"])
            old[key] = rec
        else:
            rejected[key] = rec
    shipped = sorted(old.values(), key=lambda r: r["key"])
    write_provenance(dest, shipped)
    results.atomic_write_json(results_dir / NOT_SHIPPED, sorted(rejected.values(), key=lambda r: r["key"]))
    results.atomic_write_bytes(results_dir / "zoo_table.md",
                               render_table(shipped, list(rejected.values()), manifest).encode())
    return shipped


def write_provenance(dest: Path, models: list[dict[str, Any]]) -> None:
    """A zoo folder's ``provenance.json``: the records ``cemap.zoo`` verifies every load against."""
    results.atomic_write_json(dest / PROVENANCE, {"manifest": "conf/zoo/bench.yaml", "models": models})


def stage_unshipped(keys: list[str], source: Path, dest: Path, zoo_dir: Path = WEIGHTS_DIR,
                    results_dir: Path = RESULTS) -> list[dict[str, Any]]:
    """A scratch zoo folder for exploratory runs (``CEMAP_ZOO_DIR=dest``): the package zoo plus the named models that
    missed their floor, each with its not-shipped record (sha256 checked on load like any shipped file) marked
    ``"exploratory": true``. The package zoo and its records are never touched."""
    if dest.resolve() == zoo_dir.resolve():
        raise ValueError("stage into a scratch folder, not the package zoo")
    rejected = {r["key"]: r for r in _read(results_dir / NOT_SHIPPED)}
    missing = [k for k in keys if k not in rejected]
    if missing:
        raise ValueError(f"no not-shipped record for {', '.join(missing)} in {results_dir / NOT_SHIPPED} "
                         "(run train_zoo.py ship on its export first)")
    staged = records(zoo_dir)
    dest.mkdir(parents=True, exist_ok=True)
    for rec in staged:
        shutil.copyfile(zoo_dir / rec["file"], dest / rec["file"])
    for key in keys:
        shutil.copyfile(source / rejected[key]["file"], dest / rejected[key]["file"])
        staged.append({**rejected[key], "exploratory": True})
    write_provenance(dest, staged)
    return staged


def shipped_label(record: dict[str, Any]) -> str:
    """The table's "shipped" cell: yes, no (floor missed), or held with the reason."""
    if "held" in record:
        return f"no (held: {record['held']})"
    return "yes" if record["floor"]["met"] else "no"


def _read(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text()) if path.is_file() else []


def render_table(shipped: list[dict[str, Any]], rejected: list[dict[str, Any]], manifest: Manifest) -> str:
    """``results/zoo/zoo_table.md``: every bench job with its PSNR per set against floor and baseline."""
    lines = ["# Bench zoo", "", "Generated by `python experiments/train_zoo.py ship`; every number is measured on the "
             "CPU in float32 on the shipped float16 weights. Floors (dB, stated before training): "
             + ", ".join(f"{k} {v}" for k, v in manifest.floors.items()) + ".", "",
             "| model | seed | shipped | params | radius | steps | machine | train min | set / task | PSNR | baseline "
             "| gain | authors' DnCNN | floor |", "|" + "---|" * 14]
    for r in sorted(shipped + rejected, key=lambda r: r["key"]):
        radius = "global" if r["receptive_radius"] is None else f"{r['receptive_radius']} px"
        for set_name, per_task in r["eval"].items():
            for preset, s in per_task.items():
                ref = f"{s['reference_psnr']:.2f}" if "reference_psnr" in s else ""
                lines.append(f"| {r['name']} | {r['seed']} | {shipped_label(r)} | "
                             f"{r['params'] / 1e3:.0f}k | {radius} | {r['steps']} | {r['machine']} | "
                             f"{r['train_minutes']} | {set_name} / {preset} | {s['psnr']:.2f} | {s['baseline']} "
                             f"{s['baseline_psnr']:.2f} | {s['psnr'] - s['baseline_psnr']:+.2f} | {ref} | "
                             f"{r['floor']['kind']}: {'met' if r['floor']['met'] else 'missed'} |")
    missing = sorted({j.key for j in manifest.jobs} - {r["key"] for r in shipped + rejected})
    if missing:
        lines += ["", f"Not trained yet ({len(missing)}): " + ", ".join(missing) + "."]
    return "\n".join(lines) + "\n"


def compare(manifest: Manifest, retrained: Path, table: Path, directory: Path = WEIGHTS_DIR) -> bool:
    """Retrained weights (``train``'s export folder) against the shipped records: PSNR difference per set and task,
    and whether the file is byte-identical to the shipped one (same sha256); True when every retrained shipped model
    is within ``TOLERANCE_DB``."""
    rows = ["| model | set / task | shipped PSNR | retrained PSNR | difference | within 0.05 dB | same file | shipped "
            "file trained on | retrained on |", "|---|---|---|---|---|---|---|---|---|"]
    ok = True
    for rec in records(directory):
        path = retrained / rec["file"]
        if not path.is_file():
            rows.append(f"| {rec['key']} | | | not retrained | | | | | |")
            continue
        same = "yes" if hashlib.sha256(path.read_bytes()).hexdigest() == rec["sha256"] else "no"
        leases = _read(retrained / f"{rec['key']}.leases.json")
        machines = f"{rec['machine']} | {'; '.join(dict.fromkeys(str(x['machine']) for x in leases)) or 'unknown'}"
        job = manifest.job(rec["key"])
        scores = measure(load_weights(rec["model_config"], path), job, manifest)
        for set_name, per_task in scores.items():
            for preset, s in per_task.items():
                shipped = rec["eval"].get(set_name, {}).get(preset)
                if shipped is None:
                    continue
                diff = s["psnr"] - shipped["psnr"]
                ok &= abs(diff) <= TOLERANCE_DB
                rows.append(f"| {rec['key']} | {set_name} / {preset} | {shipped['psnr']:.3f} | {s['psnr']:.3f} | "
                            f"{diff:+.3f} | {'yes' if abs(diff) <= TOLERANCE_DB else 'NO'} | {same} | {machines} |")
    results.atomic_write_bytes(table, ("# Retrained bench models against the shipped records\n\n"
                                       + "\n".join(rows) + "\n").encode())
    print(table.read_text())
    return ok
