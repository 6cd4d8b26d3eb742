"""The bench zoo: mid-size models trained by cemap and shipped inside the package (``cemap/zoo/weights``).

    from cemap import zoo
    model = zoo.load("edsr_bench_d4", seed=0)          # float32, eval mode, weights verified by sha256
    zoo.records()                                      # provenance of every shipped file

Every shipped file has one provenance record in ``weights/provenance.json``: preset, training config and its hash,
steps, data, seed, sha256, PSNR/SSIM per evaluation set against its floor, machine and minutes. Only models that met
their floor ship. Run configs name a shipped model with ``weights=zoo`` (``zoo_seed`` picks the training seed).
How the zoo is trained and checked: ``conf/zoo/bench.yaml`` and ``experiments/train_zoo.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

WEIGHTS_DIR = Path(os.environ.get("CEMAP_ZOO_DIR") or Path(__file__).resolve().parent / "weights")
"""The shipped weights and their provenance (``CEMAP_ZOO_DIR`` points elsewhere, e.g. a retrained zoo)."""
PROVENANCE = "provenance.json"
TRAINING_RUNS = "zoo_runs.json"  # written by experiments/train_zoo.py next to exported weights, read by ship


class ZooError(LookupError):
    """The requested model is not in the shipped zoo, or its file does not match its record."""


def records(directory: Path = WEIGHTS_DIR) -> list[dict[str, Any]]:
    """Provenance records of every shipped file (empty when nothing ships yet)."""
    path = directory / PROVENANCE
    return json.loads(path.read_text())["models"] if path.is_file() else []


def find(name: str, seed: int = 0, task: str | None = None, directory: Path = WEIGHTS_DIR) -> dict[str, Any]:
    """The record of a shipped model: by entry name (``rcan_dn_bench``) or by model preset plus task preset
    (``srresnet_same_bench`` + ``derain``; ``task="mix"`` for the multi-task model)."""
    hits = [r for r in records(directory) if r["seed"] == seed and name in (r["name"], r["model_preset"])
            and (task is None or r["task"] == task)]
    if len(hits) != 1:
        known = sorted({r["name"] for r in records(directory)})
        raise ZooError(f"{len(hits)} shipped models match name={name!r} seed={seed} task={task!r}; shipped: "
                       f"{', '.join(known) or 'none'}")
    return hits[0]


def verified_path(record: dict[str, Any], directory: Path = WEIGHTS_DIR) -> Path:
    """The shipped file of ``record`` after checking its sha256 (a damaged or replaced file is refused)."""
    path = directory / record["file"]
    if not path.is_file():
        raise ZooError(f"shipped file {path} is missing")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != record["sha256"]:
        raise ZooError(f"{path.name}: sha256 {digest[:12]}... does not match its provenance record "
                       f"{record['sha256'][:12]}...; reinstall cemap or retrain with make train-zoo")
    return path


def load_weights(model_config: dict[str, Any], path: Path) -> torch.nn.Module:
    """A model built from a resolved preset (``_target_`` + arguments) with the float16 safetensors at ``path``
    loaded strictly as float32, in eval mode."""
    import hydra
    from safetensors.torch import load_file

    model = hydra.utils.instantiate({k: v for k, v in model_config.items() if k != "name"})
    state = load_file(str(path))
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)
    return model.eval()


def load(name: str, seed: int = 0, task: str | None = None, device: str | torch.device = "cpu",
         directory: Path = WEIGHTS_DIR) -> torch.nn.Module:
    """A shipped bench model, float32, in eval mode, its weights verified against the recorded sha256."""
    record = find(name, seed, task, directory)
    path = verified_path(record, directory)  # before anything is built from the record
    return load_weights(record["model_config"], path).to(device)


__all__ = ["WEIGHTS_DIR", "ZooError", "find", "load", "load_weights", "records", "verified_path"]
