"""Test helper (not shipped): the authors' checkpoint files synthesised from their exact state-dict layouts.

Every file of ``conf/paper_checkpoints.yaml`` is written under its released name as a BasicSR-style ``params``
checkpoint of our model for that layout (seeded initial weights of the layout's shapes, which
``tests/test_models.py::test_author_layout_loads_strictly`` checks against ``../shared/reference/checkpoint-layouts``),
except ``dn_DnCNN.pth``, which is the authors' real DnCNN from ``../shared/reference``."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from omegaconf import OmegaConf

from cemap.config import compose_config
from cemap.models import AUTHOR_LAYOUTS, build_model

REPO = Path(__file__).resolve().parents[1]


def checkpoint_subjects() -> dict[str, list[str]]:
    """Released file name -> the paper subjects that read it."""
    return {k: list(v) for k, v in OmegaConf.load(REPO / "conf" / "paper_checkpoints.yaml").checkpoints.items()}


def synthesise(dest: Path, reference: Path, subjects: set[str] | None = None) -> list[str]:
    """Write the checkpoints the given paper subjects read (all when None) into ``dest``; returns the file names."""
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for name, users in checkpoint_subjects().items():
        if subjects is not None and not set(users) & subjects:
            continue
        layout = Path(name).stem
        if layout == "dn_DnCNN":
            shutil.copyfile(reference / "dncnn_color_blind.pth", dest / name)
        else:
            preset, overrides = AUTHOR_LAYOUTS[layout]
            cfg = OmegaConf.merge(compose_config("run", [f"model={preset}"]).model, overrides)
            torch.manual_seed(0)
            model, _ = build_model(cfg)
            torch.save({"params": model.state_dict()}, dest / name)
        written.append(name)
    return written
