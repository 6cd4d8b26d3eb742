"""Safe checkpoint loading: tensors only, the usual wrappers unwrapped, and a readable key diff on mismatch.

Checkpoints from the internet are untrusted. ``torch.load`` always runs with ``weights_only=True``, which refuses any
pickled object other than tensors and plain containers, so a file carrying code is rejected, never executed.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch

WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model", "net")
"""Tried in this order: BasicSR prefers the EMA weights when a file holds both."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into the model; the message says why."""


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict inside ``path`` (.pth/.pt in zip or legacy format, or .safetensors), unwrapped, ``module.``
    prefixes stripped."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {str(p)!r} does not exist")
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj: object = load_file(str(p), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {str(p)!r} is not a readable safetensors file: {exc}") from exc
    else:
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise CheckpointError(
                f"checkpoint {str(p)!r} was refused: it contains pickled Python objects other than tensors, which could "
                f"run code when loaded. Re-save its state dict (torch.save(model.state_dict(), ...)) or use safetensors. "
                f"Detail: {str(exc).splitlines()[0]}"
            ) from exc
        except (RuntimeError, EOFError, OSError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {str(p)!r} cannot be read (truncated or not a torch file): {exc}") from exc
    return unwrap_state_dict(obj, str(p))


def unwrap_state_dict(obj: object, what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Take the tensors out of the wrappers authors use: ``params_ema`` > ``params`` > ``state_dict`` > raw."""
    while isinstance(obj, Mapping) and not _is_state_dict(obj):
        inner = next((obj[k] for k in WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
        if inner is None:
            raise CheckpointError(f"{what}: no state dict found; top-level keys {sorted(map(str, obj))[:8]}")
        obj = inner
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{what}: holds a {type(obj).__name__}, not a state dict")
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _is_state_dict(obj: Mapping) -> bool:
    return bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _listing(keys: list[str], limit: int = 5) -> str:
    head = ", ".join(keys[:limit])
    return f"{len(keys)} ({head}{', ...' if len(keys) > limit else ''})"


def key_diff(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> dict[str, list[str]]:
    """Missing, unexpected, shape-mismatched and kind-mismatched keys between a model and a state dict. A weight
    stored as integers or booleans (int8, bool) is not a float weight in another precision: loading would cast it
    silently, so it counts as a mismatch (float16/bfloat16/float64 for float32 are fine)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    kinds = [f"{k}: checkpoint {state[k].dtype} vs model {own[k].dtype}" for k in own
             if k in state and state[k].is_floating_point() != own[k].is_floating_point()]
    return {"missing": missing, "unexpected": unexpected, "shape_mismatch": mismatched, "dtype_mismatch": kinds}


def load_checkpoint(model: torch.nn.Module, path: str | Path, strict: bool = True) -> str:
    """Load ``path`` into ``model``; returns the file's sha256 (for result metadata).

    Strict by default: any missing, unexpected or shape-mismatched key raises a CheckpointError listing the first few of
    each with counts. With ``strict=False`` only shape mismatches raise.
    """
    state = read_checkpoint(path)
    diff = key_diff(model, state)
    if diff["shape_mismatch"] or diff["dtype_mismatch"] or (strict and (diff["missing"] or diff["unexpected"])):
        parts = [f"{name} {_listing(keys)}" for name, keys in diff.items() if keys]
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not fit {type(model).__name__} (wrong architecture or settings?): "
            + "; ".join(parts)
        )
    model.load_state_dict(state, strict=strict)
    return file_sha256(path)
