"""Statistics of a causal effect map: sign counts, extremes, effect versus distance, effective radius.

Counts and masses use the *significant* blocks (``|effect| >= max(tol, z * SE)``) outside the ROI, so estimator noise
is not counted as an effect. The paper's own counting (raw signs over every block, the ROI's blocks included) is
reported separately under ``paper_*`` names.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

import numpy as np

from cemap.results import STATUS_NOT_COMPUTED, STATUS_SCREENED, CEMResult

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


def extremes(effects: np.ndarray, where: np.ndarray, prefix: str) -> dict[str, Any]:
    """Smallest and largest effect among the blocks ``where`` and their (row, col); None when there are none."""
    if not where.any():
        return {f"{prefix}_min": None, f"{prefix}_max": None, f"{prefix}_min_at": None, f"{prefix}_max_at": None}
    masked_min, masked_max = np.where(where, effects, np.inf), np.where(where, effects, -np.inf)
    lo, hi = int(np.argmin(masked_min)), int(np.argmax(masked_max))
    return {f"{prefix}_min": float(effects.flat[lo]), f"{prefix}_max": float(effects.flat[hi]),
            f"{prefix}_min_at": [int(v) for v in np.unravel_index(lo, effects.shape)],
            f"{prefix}_max_at": [int(v) for v in np.unravel_index(hi, effects.shape)]}


def summarize(result: CEMResult) -> dict[str, Any]:
    """The map's headline numbers (JSON-ready); blocks outside a computed shard are left out."""
    computed = result.status != STATUS_NOT_COMPUTED
    eff, sig, roi = np.where(computed, result.effects, 0.0), result.significant, result.roi_mask
    out = ~roi & computed
    pos, neg = out & sig & (eff > 0), out & sig & (eff < 0)
    abs_pos, abs_neg = float(eff[pos].sum()), float(np.abs(eff[neg]).sum())  # no -0.0 without negatives
    radius = effective_radius(result)
    block = int(result.meta.get("block_size", 1))
    return {
        "origin_psnr" if result.meta.get("metric", "psnr") == "psnr" else "origin_metric": result.origin,
        "n_blocks": int(eff.size),
        "n_roi_blocks": int(roi.sum()),
        "n_positive": int(pos.sum()),
        "n_negative": int(neg.sum()),
        "n_zero": int((out & ~(pos | neg)).sum()),
        **extremes(eff, out, "effect"),  # outside the ROI: what a map is read for
        **extremes(eff, roi & computed, "roi_effect"),
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



# --- per-map statistics that experiments test (names validated when a config is composed) --------------------------


class Statistic(str, Enum):
    """Names a test may use: per-map statistics (``MAP_STATISTICS``) and two-map ones (``PAIR_STATISTICS``)."""

    origin_psnr = "origin_psnr"
    image_psnr = "image_psnr"
    receptive_radius_px = "receptive_radius_px"
    far_mass_fraction = "far_mass_fraction"
    far_excess_power = "far_excess_power"
    far_rms_effect = "far_rms_effect"
    effective_radius_px = "effective_radius_px"
    significant_fraction = "significant_fraction"
    n_significant = "n_significant"
    n_negative = "n_negative"
    negative_mass_fraction = "negative_mass_fraction"
    max_abs_effect = "max_abs_effect"
    map_correlation = "map_correlation"
    missed_fraction = "missed_fraction"


STATISTIC_UNITS: dict[str, str] = {
    "origin_psnr": "dB", "image_psnr": "dB", "receptive_radius_px": "px", "far_mass_fraction": "share",
    "far_excess_power": "dB^2", "far_rms_effect": "dB", "effective_radius_px": "px", "significant_fraction": "share",
    "n_significant": "blocks", "n_negative": "blocks", "negative_mass_fraction": "share", "max_abs_effect": "dB",
    "map_correlation": "r", "missed_fraction": "share",
}
"""The unit of each statistic (how a report prints it: shares as percentages, powers in scientific notation)."""


def statistic_unit(label: str) -> str:
    """The unit of a statistic, or of a slope ``a/b`` (``dB/px``: printed as a plain number)."""
    if "/" in label:
        a, b = label.split("/", 1)
        return f"{STATISTIC_UNITS.get(a, '')}/{STATISTIC_UNITS.get(b, '')}"
    return STATISTIC_UNITS.get(label, "")


STATISTIC_GLOSSARY: dict[str, str] = {
    "origin_psnr": "PSNR of the ROI without any intervention (the model's own quality where the map looks).",
    "image_psnr": "PSNR of the whole crop without any intervention.",
    "receptive_radius_px": "Theoretical receptive radius of a local model in output pixels (none for global models).",
    "far_mass_fraction": "Share of the significant |effect| mass (blocks outside the ROI whose effect passes "
                         "max(tol, z x SE)) that lies beyond the local reference CNN's receptive radius: the paper's "
                         "way of asking how far a model looks.",
    "far_excess_power": "Mean over the far blocks of effect^2 - SE^2: an unbiased estimate of the far blocks' mean "
                        "squared true effect, which adds up effects too small to be significant one block at a time "
                        "(0 in expectation for a model that does not reach that far).",
    "far_rms_effect": "Square root of the far excess power: the typical size of a far block's effect.",
    "effective_radius_px": "Smallest distance from the ROI whose disc holds the stated share of the significant "
                           "|effect| mass.",
    "significant_fraction": "Share of the blocks outside the ROI with a significant effect.",
    "n_significant": "Number of blocks outside the ROI with a significant effect.",
    "n_negative": "Number of blocks outside the ROI whose effect is significantly negative (real content there "
                  "lowers the ROI's PSNR).",
    "negative_mass_fraction": "Share of the significant |effect| mass outside the ROI that is negative.",
    "max_abs_effect": "Largest |effect| of a block outside the ROI.",
    "map_correlation": "Pearson correlation of two maps of the same crop and ROI.",
    "missed_fraction": "Of the blocks a coarse-to-fine screen skipped, the share an exhaustive map finds significant.",
}
"""One sentence per statistic: the glossary of every report."""


def statistic_meaning(label: str) -> str:
    """The glossary's sentence for a statistic, or for a slope ``a/b`` over a sweep's models."""
    if "/" in label:
        a, b = label.split("/", 1)
        return (f"Least-squares slope of {a} against {b} over a sweep's models, per crop and ROI: how much {a} "
                f"changes per unit of {b}.")
    return STATISTIC_GLOSSARY.get(label, "")


def pixel_gap(result: CEMResult) -> np.ndarray:
    """Per block, the Chebyshev distance in pixels from its nearest pixel to the nearest ROI pixel (0 inside)."""
    roi = result.meta["roi"]
    b = int(result.meta["block_size"])
    h, w = result.meta["image_size"]
    rows, cols = result.shape
    y0 = np.arange(rows)[:, None] * b
    y1 = np.minimum(y0 + b, h) - 1
    x0 = np.arange(cols)[None, :] * b
    x1 = np.minimum(x0 + b, w) - 1
    gy = np.maximum(np.maximum(roi["y"] - y1, y0 - (roi["y"] + roi["size"] - 1)), 0)
    gx = np.maximum(np.maximum(roi["x"] - x1, x0 - (roi["x"] + roi["size"] - 1)), 0)
    return np.maximum(gy, gx)


def far_mask(result: CEMResult, radius_px: int) -> np.ndarray:
    """Computed blocks whose every pixel lies more than ``radius_px`` from the ROI (in the input's pixels)."""
    return (pixel_gap(result) > radius_px) & (result.status != STATUS_NOT_COMPUTED)


def far_mass_fraction(result: CEMResult, radius_px: int) -> float:
    """Share of the significant |effect| mass in blocks more than ``radius_px`` pixels from the ROI."""
    computed = result.status != STATUS_NOT_COMPUTED
    mass = np.where(result.significant & computed, np.abs(np.nan_to_num(result.effects)), 0.0)
    total = mass.sum()
    return float(mass[far_mask(result, radius_px)].sum() / total) if total > 0 else 0.0


def far_excess_power(result: CEMResult, radius_px: int) -> float:
    """Mean over far blocks of ``effect**2 - SE**2`` (dB^2): an unbiased estimate of the far blocks' mean squared
    true effect, because an estimated effect's square exceeds the true one's by its variance on average. Unlike
    counts of significant blocks it adds up effects too small to pass a threshold one block at a time; it is 0 in
    expectation for a model that does not reach beyond ``radius_px``. NaN when no far block has a standard error."""
    far = far_mask(result, radius_px) & np.isfinite(result.se) & np.isfinite(result.effects)
    if not far.any():
        return float("nan")
    return float(np.mean(result.effects[far] ** 2 - result.se[far] ** 2))


def map_statistics(result: CEMResult, local_radius_px: int, radius_mass: float = RADIUS_MASS) -> dict[str, float]:
    """Every per-map statistic of ``Statistic`` for one map (``local_radius_px``: where "far" starts;
    ``radius_mass``: the share of the |effect| mass the effective radius holds)."""
    info = result.meta.get("model_info") or {}
    theoretical = info.get("receptive_radius")
    psnrs = {"origin_psnr": result.origin, "image_psnr": float(result.meta.get("image_psnr", float("nan"))),
             "receptive_radius_px": float("nan") if theoretical is None else float(theoretical * info.get("scale", 1))}
    if result.psnr_only:  # no map statistics
        return {**psnrs, **{s.value: float("nan") for s in Statistic if s.value not in psnrs
                            and s.value not in PAIR_STATISTICS}}
    outside = ~result.roi_mask & (result.status != STATUS_NOT_COMPUTED)
    eff = np.nan_to_num(result.effects)
    sig = result.significant & outside
    neg, pos = sig & (eff < 0), sig & (eff > 0)
    neg_mass, pos_mass = float(np.abs(eff[neg]).sum()), float(eff[pos].sum())  # no -0.0 without negatives
    radius = effective_radius(result, radius_mass)
    excess = far_excess_power(result, local_radius_px)
    return {
        **psnrs,
        "far_mass_fraction": far_mass_fraction(result, local_radius_px),
        "far_excess_power": excess,
        "far_rms_effect": float(np.sqrt(max(excess, 0.0))) if np.isfinite(excess) else float("nan"),
        "effective_radius_px": float("nan") if radius is None else float(radius * int(result.meta["block_size"])),
        "significant_fraction": float(sig.sum() / max(outside.sum(), 1)),
        "n_significant": float(sig.sum()),
        "n_negative": float(neg.sum()),
        "negative_mass_fraction": neg_mass / (neg_mass + pos_mass) if neg_mass + pos_mass > 0 else 0.0,
        "max_abs_effect": float(np.abs(eff[outside]).max()) if outside.any() else 0.0,
    }


def map_correlation(a: CEMResult, b: CEMResult) -> float:
    """Pearson correlation of two maps of the same grid (how much a setting changes the map)."""
    x, y = np.nan_to_num(a.effects).ravel(), np.nan_to_num(b.effects).ravel()
    if x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def missed_fraction(screened: CEMResult, exhaustive: CEMResult) -> float:
    """Of the blocks the coarse-to-fine rule screened out (effect set to 0), the share that the exhaustive map finds
    significant: how often the paper's rule misses a real effect."""
    skipped = screened.status == STATUS_SCREENED
    if not skipped.any():
        return 0.0
    return float((exhaustive.significant & skipped).sum() / skipped.sum())


PAIR_STATISTICS = {"map_correlation": map_correlation, "missed_fraction": missed_fraction}
"""Statistics of two maps of the same image and ROI (a test's paired subjects), rather than differences."""
