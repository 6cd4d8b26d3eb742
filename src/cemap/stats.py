"""Statistics of a causal effect map: sign counts, extremes, effect versus distance, effective radius.

Counts and masses use the *significant* blocks (``|effect| >= max(tol, z * SE)``) outside the ROI, so estimator noise
is not counted as an effect. The paper's own counting (raw signs over every block, the ROI's blocks included) is
reported separately under ``paper_*`` names.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cemap.results import STATUS_NOT_COMPUTED, CEMResult

RADIUS_MASS = 0.9
"""Share of the total absolute effect that the effective radius must hold."""


def distance_map(result: CEMResult) -> np.ndarray:
    """Chebyshev distance in blocks from each block to the nearest ROI block."""
    rr, cc = np.nonzero(result.roi_mask)
    rows = np.arange(result.shape[0])[:, None]
    cols = np.arange(result.shape[1])[None, :]
    dr = np.maximum(np.maximum(rr.min() - rows, rows - rr.max()), 0)
    dc = np.maximum(np.maximum(cc.min() - cols, cols - cc.max()), 0)
    return np.maximum(dr, dc)


def effect_profile(result: CEMResult) -> dict[str, list[float]]:
    """Per Chebyshev distance d (0 = ROI): block count, mean effect, sum of |effect|, and significant +/- counts."""
    dist = distance_map(result)
    eff, sig = np.nan_to_num(result.effects), result.significant
    rows: dict[str, list[float]] = {k: [] for k in ("distance", "blocks", "mean_effect", "abs_mass", "n_positive", "n_negative")}
    for d in range(int(dist.max()) + 1):
        m = dist == d
        rows["distance"].append(d)
        rows["blocks"].append(int(m.sum()))
        rows["mean_effect"].append(float(eff[m].mean()))
        rows["abs_mass"].append(float(np.abs(eff[m & sig]).sum()))
        rows["n_positive"].append(int((m & sig & (eff > 0)).sum()))
        rows["n_negative"].append(int((m & sig & (eff < 0)).sum()))
    return rows


def effective_radius(result: CEMResult, mass: float = RADIUS_MASS) -> int | None:
    """Smallest Chebyshev distance (blocks) whose disc holds ``mass`` of the significant absolute effect (ROI blocks
    included); None when no block is significant."""
    profile = np.asarray(effect_profile(result)["abs_mass"])
    total = profile.sum()
    if total == 0:
        return None
    return int(np.searchsorted(np.cumsum(profile) / total, mass - 1e-12))


def summarize(result: CEMResult) -> dict[str, Any]:
    """The map's headline numbers (JSON-ready); blocks outside a computed shard are left out."""
    computed = result.status != STATUS_NOT_COMPUTED
    eff, sig, roi = np.where(computed, result.effects, 0.0), result.significant, result.roi_mask
    out = ~roi & computed
    pos, neg = out & sig & (eff > 0), out & sig & (eff < 0)
    flat_max, flat_min = int(np.argmax(eff)), int(np.argmin(eff))
    abs_pos, abs_neg = float(eff[pos].sum()), float(-eff[neg].sum())
    radius = effective_radius(result)
    block = int(result.meta.get("block_size", 1))
    return {
        "origin_psnr" if result.meta.get("metric", "psnr") == "psnr" else "origin_metric": result.origin,
        "n_blocks": int(eff.size),
        "n_roi_blocks": int(roi.sum()),
        "n_positive": int(pos.sum()),
        "n_negative": int(neg.sum()),
        "n_zero": int((out & ~(pos | neg)).sum()),
        "effect_min": float(eff.min()),
        "effect_max": float(eff.max()),
        "effect_min_at": [int(v) for v in np.unravel_index(flat_min, eff.shape)],
        "effect_max_at": [int(v) for v in np.unravel_index(flat_max, eff.shape)],
        "negative_mass_fraction": abs_neg / (abs_pos + abs_neg) if abs_pos + abs_neg > 0 else 0.0,
        "effective_radius_blocks": radius,
        "effective_radius_px": None if radius is None else radius * block,
        "max_se": float(np.nanmax(result.se)) if np.isfinite(result.se).any() else None,
        "paper_n_positive_incl_roi": int((eff > 0).sum()),
        "paper_n_negative": int((eff < 0).sum()),
        "paper_n_zero": int((computed & (eff == 0)).sum()),
        "n_not_computed": int((~computed).sum()),
        "forwards": result.total_forwards,
    }

