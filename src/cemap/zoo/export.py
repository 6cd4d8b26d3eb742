"""Turning a finished training run (``final.pth``) into a shipped file: the EMA weights as float16 safetensors.

float16 halves the zoo (the 40 MB budget of the issue); every shipped number (PSNR, maps) is measured on the
float16-rounded weights loaded back as float32, so what is recorded is what a user gets.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from cemap import results
from cemap.training import load_training_state

SHIP_DTYPE = torch.float16


def shipped_state(final_pth: str | Path) -> dict[str, torch.Tensor]:
    """The EMA weights of a training run, rounded to the shipping dtype (buffers that are not float stay as they are)."""
    state = load_training_state(Path(final_pth))
    params = state.get("params_ema") or state["params"]
    out = {}
    for k, v in params.items():
        v = v.detach().cpu().contiguous()
        if v.is_floating_point():
            if not torch.isfinite(v).all() or v.abs().max() > torch.finfo(SHIP_DTYPE).max:
                raise ValueError(f"{final_pth}: {k} is not finite or overflows {SHIP_DTYPE}")
            v = v.to(SHIP_DTYPE)
        out[k] = v
    return out


def export_weights(final_pth: str | Path, dest: str | Path, metadata: dict[str, str] | None = None) -> str:
    """Write the shipped safetensors file atomically; returns its sha256."""
    from safetensors.torch import save

    data = save(shipped_state(final_pth), metadata=metadata or {})
    results.atomic_write_bytes(Path(dest), data)
    return hashlib.sha256(data).hexdigest()
