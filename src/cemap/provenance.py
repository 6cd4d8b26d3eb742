"""Where a result came from: package versions, the cemap checkout's commit, fingerprints of models and tensors.

Computed once per process (the commit) or once per map (the model's fingerprint), never per batch."""

from __future__ import annotations

import functools
import hashlib
import platform
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import cemap

ImageModel = torch.nn.Module | Callable[[torch.Tensor], torch.Tensor]


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


def sha256_tensor(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


@functools.cache
def git_commit() -> str | None:
    """The commit of the cemap checkout in use, when it is one (one ``git`` call per process)."""
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
