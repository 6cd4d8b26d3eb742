"""Figures of causal effect maps: signed effects on a diverging scale symmetric around zero, over the input."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from cemap import results
from cemap.results import CEMResult

CMAP = "RdBu_r"
"""Red = the block helps the ROI (positive effect), blue = it hurts, white = no effect."""


def color_bound(result: CEMResult, bound: float | None = None) -> float:
    """Symmetric colour limit: ``bound`` if given, else the largest absolute effect (never 0)."""
    if bound is not None:
        return float(bound)
    m = float(np.abs(result.effects).max())
    return m if m > 0 else 1e-3


def draw_map(ax: plt.Axes, result: CEMResult, image: np.ndarray | None = None, bound: float | None = None, alpha: float = 0.75):
    """Draw the map on ``ax`` (blended over a gray version of ``image`` if given); returns the mappable."""
    height, width = result.meta.get("image_size", [result.shape[0], result.shape[1]])
    block = int(result.meta.get("block_size", 1))
    extent = (0, result.shape[1] * block, result.shape[0] * block, 0)
    if image is not None:
        gray = image.astype(np.float64).mean(axis=2) if image.ndim == 3 else image
        ax.imshow(gray, cmap="gray", extent=(0, width, height, 0), vmin=0, vmax=255)
    v = color_bound(result, bound)
    mappable = ax.imshow(result.effects, cmap=CMAP, vmin=-v, vmax=v, extent=extent, interpolation="nearest",
                         alpha=alpha if image is not None else 1.0)
    roi = result.meta.get("roi")
    if roi:
        ax.add_patch(Rectangle((roi["x"], roi["y"]), roi["size"], roi["size"], fill=False, edgecolor="lime", linewidth=1.5))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    return mappable


def save_map_figure(result: CEMResult, path: str | Path, image: np.ndarray | None = None, bound: float | None = None,
                    title: str | None = None) -> Path:
    """PNG of the map with a colour bar in the metric's units; ``image`` is the (degraded or clean) input, H x W x 3."""
    fig, ax = plt.subplots(figsize=(5.2, 4.4), dpi=120)
    mappable = draw_map(ax, result, image, bound)
    unit = "dB" if result.meta.get("metric", "psnr") == "psnr" else result.meta.get("metric", "")
    fig.colorbar(mappable, ax=ax, fraction=0.046, pad=0.04, label=f"causal effect ({unit})")
    ax.set_title(title or f"{result.meta.get('model', '')} on {result.meta.get('task', {}).get('name', '')}", fontsize=9)
    fig.tight_layout()
    return _save(fig, Path(path))


def _save(fig: plt.Figure, path: Path) -> Path:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return results.atomic_write_bytes(path, buf.getvalue())


def save_cem_lam_figure(cem: CEMResult, lam_map: np.ndarray, diffusion_index: float, path: str | Path,
                        image: np.ndarray | None = None, title: str | None = None) -> Path:
    """The paper's comparison: the signed CEM (help vs harm, in dB) beside LAM's unsigned attribution (in input
    pixels, upsampled to the output size for display) with its Diffusion Index."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.6, 4.4), dpi=120)
    mappable = draw_map(left, cem, image)
    fig.colorbar(mappable, ax=left, fraction=0.046, pad=0.04, label="causal effect (dB)")
    left.set_title("CEM", fontsize=9)
    height, width = cem.meta.get("image_size", lam_map.shape)
    if image is not None:
        right.imshow(image.astype(np.float64).mean(axis=2), cmap="gray", extent=(0, width, height, 0), vmin=0, vmax=255)
    shown = right.imshow(lam_map, cmap="magma", extent=(0, width, height, 0), alpha=0.75 if image is not None else 1.0,
                         vmin=0, vmax=max(float(lam_map.max()), 1e-12), interpolation="nearest")
    fig.colorbar(shown, ax=right, fraction=0.046, pad=0.04, label="|LAM attribution| (normalised)")
    roi = cem.meta.get("roi")
    if roi:
        right.add_patch(Rectangle((roi["x"], roi["y"]), roi["size"], roi["size"], fill=False, edgecolor="lime", linewidth=1.5))
    right.set_title(f"LAM (DI {diffusion_index:.2f})", fontsize=9)
    right.set_xticks([])
    right.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, Path(path))
