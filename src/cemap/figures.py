"""Figures of causal effect maps: signed effects on a diverging scale symmetric around zero, over the input."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.patches import Rectangle

from cemap import results
from cemap.results import CEMResult

CMAP = "RdBu_r"
"""Red = the block helps the ROI (positive effect), blue = it hurts, white = no effect."""


OUTSIDE_PERCENTILE = 99.0
"""The colour limit is this percentile of the non-zero |effects| outside the ROI (robust to one odd block)."""
FAINT = 0.3
"""Non-significant blocks keep this share of their colour (pale), so a reader sees which colours are real."""


def color_bound(result: CEMResult, bound: float | None = None) -> float:
    """Symmetric colour limit: ``bound`` if given, else set by the effects *outside* the ROI, which are what a map is
    read for: the ROI's own blocks (often 100x larger) saturate instead of washing the rest out to white. Falls back
    to the largest effect when nothing outside the ROI has one (never 0)."""
    if bound is not None:
        return float(bound)
    effects = np.nan_to_num(result.effects)
    outside = np.abs(effects[~result.roi_mask])
    outside = outside[outside > 0]
    m = float(np.percentile(outside, OUTSIDE_PERCENTILE)) if outside.size else float(np.abs(effects).max())
    return m if m > 0 else 1e-3


def map_rgba(result: CEMResult, bound: float) -> np.ndarray:
    """(rows, cols, 4) colours of the blocks: the diverging scale clipped at +-``bound``, non-significant blocks
    outside the ROI paled to ``FAINT`` of their colour."""
    norm = Normalize(-bound, bound, clip=True)
    rgba = plt.get_cmap(CMAP)(norm(np.nan_to_num(result.effects)))
    faint = ~result.significant & ~result.roi_mask
    rgba[faint, :3] = 1.0 - (1.0 - rgba[faint, :3]) * FAINT
    return rgba


def draw_map(ax: plt.Axes, result: CEMResult, image: np.ndarray | None = None, bound: float | None = None,
             alpha: float = 0.75) -> ScalarMappable:
    """Draw the map on ``ax`` (blended over a gray version of ``image`` if given); returns the mappable of its colour
    bar (whose ends saturate: ``extend`` marks it when effects exceed the bound)."""
    height, width = result.meta.get("image_size", [result.shape[0], result.shape[1]])
    block = int(result.meta.get("block_size", 1))
    extent = (0, result.shape[1] * block, result.shape[0] * block, 0)
    if image is not None:
        gray = image.astype(np.float64).mean(axis=2) if image.ndim == 3 else image
        ax.imshow(gray, cmap="gray", extent=(0, width, height, 0), vmin=0, vmax=255)
    v = color_bound(result, bound)
    ax.imshow(map_rgba(result, v), extent=extent, interpolation="nearest", alpha=alpha if image is not None else 1.0)
    mappable = ScalarMappable(Normalize(-v, v), plt.get_cmap(CMAP))
    mappable.set_array(np.nan_to_num(result.effects))
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
    fig.colorbar(mappable, ax=ax, fraction=0.046, pad=0.04, extend=saturation(result, mappable),
                 label=f"causal effect ({unit}); pale: not significant")
    ax.set_title(title or f"{result.meta.get('model', '')} on {result.meta.get('task', {}).get('name', '')}", fontsize=9)
    fig.tight_layout()
    return _save(fig, Path(path))


def saturation(result: CEMResult, mappable: ScalarMappable) -> str:
    """Colour-bar ``extend`` value: arrows at the ends where effects (the ROI's, usually) exceed the bound."""
    lo, hi = mappable.norm.vmin, mappable.norm.vmax
    effects = np.nan_to_num(result.effects)
    below, above = bool((effects < lo).any()), bool((effects > hi).any())
    return {(False, False): "neither", (True, False): "min", (False, True): "max", (True, True): "both"}[below, above]


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
