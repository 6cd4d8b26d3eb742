"""From a sweep's maps to an insight's verdict: per-map statistics, confidence intervals, pre-stated tests, reports.

A test in an experiment's ``expected.tests`` names a per-map statistic and either a set of ``subjects`` (the
statistic's mean over all their maps) or a ``paired`` couple (the mean difference a - b over matched image and ROI),
plus a threshold (``supported_below`` or ``supported_above``). Its verdict, from the 95% confidence interval:

- SUPPORTED: the whole interval lies on the claimed side of the threshold;
- NOT SUPPORTED: the whole interval lies on the other side;
- INCONCLUSIVE: the interval straddles the threshold (or there are fewer than two maps).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from scipy import stats as scipy_stats

from cemap import results
from cemap.figures import CMAP, draw_map
from cemap.results import STATUS_NOT_COMPUTED, CEMResult
from cemap.stats import effect_profile, effective_radius

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "SUPPORTED", "NOT SUPPORTED", "INCONCLUSIVE"


@dataclass
class MapRecord:
    """One causal effect map of a sweep and who it belongs to."""

    subject: str
    group: str
    image: str
    roi: int
    result: CEMResult


def load_sweep(folder: Path) -> list[MapRecord]:
    """Every finished map under ``folder`` (``<job>/cem.npz`` or ``<job>/roi<i>/cem.npz``)."""
    records = []
    for meta_path in sorted(Path(folder).rglob(results.RESULT_META)):
        d = meta_path.parent
        if not CEMResult.exists(d):
            continue
        result = CEMResult.load(d)
        subject = result.meta.get("subject") or {}
        roi_index = int(d.name[3:]) if d.name.startswith("roi") and d.name[3:].isdigit() else 0
        records.append(MapRecord(subject.get("name", result.meta.get("model", "?")), subject.get("group", "?"),
                                 result.meta.get("image", {}).get("name", "?"), roi_index, result))
    return records


# --- per-map statistics --------------------------------------------------------------------------------------------


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


def _significant_abs(result: CEMResult) -> np.ndarray:
    computed = result.status != STATUS_NOT_COMPUTED
    return np.where(result.significant & computed, np.abs(np.nan_to_num(result.effects)), 0.0)


def far_mass_fraction(result: CEMResult, radius_px: int) -> float:
    """Share of the significant |effect| mass in blocks more than ``radius_px`` pixels from the ROI."""
    mass = _significant_abs(result)
    total = mass.sum()
    return float(mass[pixel_gap(result) > radius_px].sum() / total) if total > 0 else 0.0


def map_statistics(result: CEMResult, local_radius_px: int) -> dict[str, float]:
    """The numbers every experiment reports for one map."""
    outside = ~result.roi_mask & (result.status != STATUS_NOT_COMPUTED)
    eff = np.nan_to_num(result.effects)
    sig = result.significant & outside
    neg, pos = sig & (eff < 0), sig & (eff > 0)
    neg_mass, pos_mass = float(-eff[neg].sum()), float(eff[pos].sum())
    radius = effective_radius(result)
    info = result.meta.get("model_info") or {}
    theoretical = info.get("receptive_radius")
    return {
        "origin_psnr": result.origin,
        "receptive_radius_px": float("nan") if theoretical is None else float(theoretical * info.get("scale", 1)),
        "far_mass_fraction": far_mass_fraction(result, local_radius_px),
        "effective_radius_px": float("nan") if radius is None else float(radius * int(result.meta["block_size"])),
        "significant_fraction": float(sig.sum() / max(outside.sum(), 1)),
        "n_significant": float(sig.sum()),
        "n_negative": float(neg.sum()),
        "negative_mass_fraction": neg_mass / (neg_mass + pos_mass) if neg_mass + pos_mass > 0 else 0.0,
        "max_abs_effect": float(np.abs(eff[outside]).max()) if outside.any() else 0.0,
    }


# --- intervals and tests -------------------------------------------------------------------------------------------


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float, int]:
    """Mean and two-sided t confidence interval (NaNs dropped); the interval is NaN below two values."""
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=np.float64)
    n = len(v)
    if n == 0:
        return float("nan"), float("nan"), float("nan"), 0
    m = float(v.mean())
    if n < 2:
        return m, float("nan"), float("nan"), n
    half = float(scipy_stats.t.ppf(0.5 + level / 2, n - 1) * v.std(ddof=1) / math.sqrt(n))
    return m, m - half, m + half, n


def verdict(low: float, high: float, below: float | None, above: float | None) -> str:
    if math.isnan(low) or math.isnan(high):
        return INCONCLUSIVE
    if below is not None:
        return SUPPORTED if high < below else NOT_SUPPORTED if low > below else INCONCLUSIVE
    if above is not None:
        return SUPPORTED if low > above else NOT_SUPPORTED if high < above else INCONCLUSIVE
    raise ValueError("a test needs supported_below or supported_above")


def map_correlation(a: CEMResult, b: CEMResult) -> float:
    """Pearson correlation of two maps of the same grid (how much a setting changes the map)."""
    x, y = np.nan_to_num(a.effects).ravel(), np.nan_to_num(b.effects).ravel()
    if x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def missed_fraction(screened: CEMResult, exhaustive: CEMResult) -> float:
    """Of the blocks the coarse-to-fine rule screened out (effect set to 0), the share that the exhaustive map finds
    significant: how often the paper's rule misses a real effect."""
    from cemap.results import STATUS_SCREENED

    skipped = screened.status == STATUS_SCREENED
    if not skipped.any():
        return 0.0
    return float((exhaustive.significant & skipped).sum() / skipped.sum())


PAIR_STATISTICS = {"map_correlation": map_correlation, "missed_fraction": missed_fraction}
"""Statistics of two maps of the same image and ROI (a test's ``paired`` subjects), rather than differences."""


def _matched(keys: Iterable[tuple[str, str, int]], a: str, b: str) -> list[tuple[str, int]]:
    keys = list(keys)
    return sorted({(i, r) for (s, i, r) in keys if s == a} & {(i, r) for (s, i, r) in keys if s == b})


def test_values(table: dict[tuple[str, str, int], dict[str, float]], spec: dict[str, Any],
                maps: dict[tuple[str, str, int], CEMResult] | None = None) -> list[float]:
    """The per-map values a test is about: the statistic over ``subjects``, paired differences a - b (absolute
    with ``abs: true``), or a two-map statistic (``PAIR_STATISTICS``) of the paired subjects."""
    stat = spec["statistic"]
    pairs = [spec["paired"]] if "paired" in spec else spec.get("pairs")
    if pairs:
        out = []
        for a, b in pairs:
            for img, roi in _matched(table, a, b):
                if stat in PAIR_STATISTICS:
                    assert maps is not None
                    out.append(PAIR_STATISTICS[stat](maps[(a, img, roi)], maps[(b, img, roi)]))
                else:
                    d = table[(a, img, roi)][stat] - table[(b, img, roi)][stat]
                    out.append(abs(d) if spec.get("abs") else d)
        return out
    return [row[stat] for (s, _, _), row in sorted(table.items()) if s in set(spec["subjects"])]


@dataclass
class TestOutcome:
    name: str
    statistic: str
    what: str
    mean: float
    low: float
    high: float
    n: int
    threshold: str
    verdict: str


def run_tests(table: dict[tuple[str, str, int], dict[str, float]], specs: Iterable[dict[str, Any]], tested: bool = True,
              maps: dict[tuple[str, str, int], CEMResult] | None = None) -> list[TestOutcome]:
    outcomes = []
    for spec in specs:
        m, lo, hi, n = mean_ci(test_values(table, spec, maps))
        below, above = spec.get("supported_below"), spec.get("supported_above")
        sep = " vs " if spec["statistic"] in PAIR_STATISTICS else (" |-| " if spec.get("abs") else " - ")
        what = (f"{spec['paired'][0]}{sep}{spec['paired'][1]}" if "paired" in spec else
                "; ".join(f"{a}{sep}{b}" for a, b in spec["pairs"]) if spec.get("pairs") else ", ".join(spec["subjects"]))
        threshold = f"< {below}" if below is not None else f"> {above}" if above is not None else "reported"
        v = verdict(lo, hi, below, above) if tested and (below is not None or above is not None) else "REPORTED"
        outcomes.append(TestOutcome(spec["name"], spec["statistic"], what, m, lo, hi, n, threshold, v))
    return outcomes


def overall(outcomes: Sequence[TestOutcome]) -> str:
    verdicts = [o.verdict for o in outcomes if o.verdict != "REPORTED"]
    if not verdicts:
        return INCONCLUSIVE
    if all(v == SUPPORTED for v in verdicts):
        return SUPPORTED
    if any(v == NOT_SUPPORTED for v in verdicts):
        return NOT_SUPPORTED
    return INCONCLUSIVE


# --- figures -------------------------------------------------------------------------------------------------------


def _png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def map_grid(records: Sequence[MapRecord], subjects: Sequence[str]) -> bytes:
    """Rows = subjects, columns = images (ROI 0 of each), one colour scale shared by every panel.

    The scale is set by the largest effect *outside* the ROIs (the ROI's own blocks, which dwarf the rest, saturate),
    so that far, small effects stay visible.
    """
    images = sorted({r.image for r in records})
    pick = {(r.subject, r.image): r for r in records if r.roi == 0}
    vals = [np.nanmax(np.abs(np.where(r.result.roi_mask, 0.0, r.result.effects))) for r in pick.values()] or [1e-3]
    bound = float(max(vals)) or 1e-3
    fig, axes = plt.subplots(len(subjects), len(images), figsize=(2.1 * len(images) + 1, 2.0 * len(subjects)),
                             squeeze=False)
    mappable = None
    for i, s in enumerate(subjects):
        for j, img in enumerate(images):
            ax = axes[i][j]
            rec = pick.get((s, img))
            if rec is None:
                ax.axis("off")
                continue
            mappable = draw_map(ax, rec.result, None, bound)
            if i == 0:
                ax.set_title(img, fontsize=8)
            if j == 0:
                ax.set_ylabel(s, fontsize=8)
    if mappable is not None:
        fig.colorbar(mappable, ax=axes, fraction=0.02, pad=0.02, label="causal effect (dB; ROI blocks saturate)")
    return _png(fig)


def distance_curves(records: Sequence[MapRecord], subjects: Sequence[str]) -> bytes:
    """Mean |effect| per block against the Chebyshev distance (blocks) to the ROI, one line per subject."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for s in subjects:
        per_d: dict[int, list[float]] = defaultdict(list)
        for r in records:
            if r.subject != s:
                continue
            prof = effect_profile(r.result)
            for d, blocks, mass in zip(prof["distance"], prof["blocks"], prof["abs_mass"]):
                per_d[int(d)].append(mass / max(blocks, 1))
        if per_d:
            ds = sorted(per_d)
            ax.plot(ds, [np.mean(per_d[d]) for d in ds], marker="o", label=s)
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_xlabel("Chebyshev distance to the ROI (blocks)")
    ax.set_ylabel("mean |significant effect| per block (dB)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    return _png(fig)


def sign_shares(records: Sequence[MapRecord], subjects: Sequence[str]) -> bytes:
    """Share of blocks outside the ROI that are significantly positive, negative, or not significant."""
    pos, neg, zero = [], [], []
    for s in subjects:
        counts = np.zeros(3)
        for r in records:
            if r.subject != s:
                continue
            outside = ~r.result.roi_mask & (r.result.status != STATUS_NOT_COMPUTED)
            sig = r.result.significant & outside
            eff = np.nan_to_num(r.result.effects)
            counts += [(sig & (eff > 0)).sum(), (sig & (eff < 0)).sum(), (outside & ~sig).sum()]
        counts = counts / max(counts.sum(), 1)
        pos.append(counts[0])
        neg.append(counts[1])
        zero.append(counts[2])
    fig, ax = plt.subplots(figsize=(6, 3.2))
    x = np.arange(len(subjects))
    ax.bar(x, pos, color=plt.get_cmap(CMAP)(0.85), label="positive")
    ax.bar(x, neg, bottom=pos, color=plt.get_cmap(CMAP)(0.15), label="negative")
    ax.bar(x, zero, bottom=np.add(pos, neg), color="0.85", label="not significant")
    ax.set_xticks(x, subjects, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("share of blocks outside the ROI")
    ax.legend(fontsize=7)
    return _png(fig)


def radius_scatter(per_subject: dict[str, dict[str, tuple[float, float, float, int]]]) -> bytes:
    """Effective radius against ROI PSNR (left) and against the theoretical receptive radius (right), per model."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
    for s, st in per_subject.items():
        r, p, t = st["effective_radius_px"][0], st["origin_psnr"][0], st["receptive_radius_px"][0]
        a.scatter(p, r)
        a.annotate(s, (p, r), fontsize=6)
        if not math.isnan(t):
            b.scatter(t, r)
            b.annotate(s, (t, r), fontsize=6)
    a.set_xlabel("ROI PSNR (dB)")
    a.set_ylabel("effective radius (px)")
    b.set_xlabel("theoretical receptive radius (output px; local models)")
    b.set_ylabel("effective radius (px)")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    return _png(fig)


# --- the report ----------------------------------------------------------------------------------------------------


def _fmt(x: float) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"


def write_report(out_dir: Path, experiment: dict[str, Any], records: Sequence[MapRecord],
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Compute the statistics and tests of ``experiment`` over ``records`` and write summary.csv, summary.md,
    the figures and a self-contained report.html into ``out_dir``. Returns the verdict and the tables."""
    expected = experiment["expected"]
    radius = int(expected.get("local_radius_px", 8))
    subjects = [s for s in experiment["subjects"] if any(r.subject == s for r in records)]
    groups = {r.subject: r.group for r in records}
    table = {(r.subject, r.image, r.roi): map_statistics(r.result, radius) for r in records}
    maps = {(r.subject, r.image, r.roi): r.result for r in records}
    tests = run_tests(table, expected.get("tests", []), maps=maps)
    contrasts = run_tests(table, expected.get("contrasts", []), tested=False, maps=maps)
    final = overall(tests)

    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [{"experiment": experiment["name"], "subject": s, "group": groups.get(s, "?"), "image": img, "roi": roi,
             "statistic": k, "value": v}
            for (s, img, roi), stats in sorted(table.items()) for k, v in stats.items()]
    rows += [{"experiment": experiment["name"], "subject": o.what, "group": "test", "image": "", "roi": "",
              "statistic": f"{o.name} [{o.statistic}] {o.threshold} -> {o.verdict}", "value": o.mean}
             for o in [*tests, *contrasts]]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["experiment"])
    writer.writeheader()
    writer.writerows(rows)
    results.atomic_write_bytes(out_dir / "summary.csv", buf.getvalue().encode())

    stat_names = list(next(iter(table.values())).keys()) if table else []
    per_subject = {s: {k: mean_ci([v[k] for (ss, _, _), v in table.items() if ss == s]) for k in stat_names}
                   for s in subjects}
    n_images = len({r.image for r in records})
    n_rois = len({r.roi for r in records})
    md = [f"# {experiment['name']} (insight {experiment.get('insight', '?')})", "",
          f"**Claim.** {expected['claim']}", "",
          f"**Verdict: {final}** ({len(records)} maps: {len(subjects)} subjects x {n_images} images x {n_rois} ROIs; "
          "95% t-intervals over maps).", "",
          "| test | statistic | of | mean | 95% CI | n | threshold | verdict |", "|---|---|---|---|---|---|---|---|"]
    md += [f"| {o.name} | {o.statistic} | {o.what} | {_fmt(o.mean)} | [{_fmt(o.low)}, {_fmt(o.high)}] | {o.n} | "
           f"{o.threshold} | {o.verdict} |" for o in [*tests, *contrasts]]
    md += ["", "| model | group | " + " | ".join(stat_names) + " |", "|---|---|" + "---|" * len(stat_names)]
    for s in subjects:
        cells = [f"{_fmt(m)} [{_fmt(lo)}, {_fmt(hi)}]" for m, lo, hi, _ in per_subject[s].values()]
        md.append(f"| {s} | {groups.get(s, '?')} | " + " | ".join(cells) + " |")
    if extra:
        md += ["", *extra.get("markdown", [])]
    md += ["", "Figures: map_grid.png (ROI 0 of each image, one shared colour scale), effect_vs_distance.png, "
           "sign_shares.png, radius_vs_psnr.png. Statistics per map in summary.csv."]
    results.atomic_write_bytes(out_dir / "summary.md", ("\n".join(md) + "\n").encode())

    figures = {"map_grid.png": map_grid(records, subjects), "effect_vs_distance.png": distance_curves(records, subjects),
               "sign_shares.png": sign_shares(records, subjects), "radius_vs_psnr.png": radius_scatter(per_subject)}
    for name, data in figures.items():
        results.atomic_write_bytes(out_dir / name, data)
    results.atomic_write_bytes(out_dir / "report.html", _html(md, figures).encode())
    verdict_doc = {"experiment": experiment["name"], "verdict": final,
                   "tests": [o.__dict__ for o in tests], "contrasts": [o.__dict__ for o in contrasts],
                   "maps": len(records)}
    results.atomic_write_json(out_dir / "verdict.json", verdict_doc)
    return verdict_doc


def _html(markdown_lines: Sequence[str], figures: dict[str, bytes]) -> str:
    """A self-contained page: the summary tables as HTML and the figures inlined as base64 PNGs."""
    body = []
    in_table = False
    for line in markdown_lines:
        if line.startswith("|"):
            cells = [html.escape(c.strip()) for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-"):
                continue
            if not in_table:
                body.append("<table>")
                in_table = True
                body.append("<tr>" + "".join(f"<th>{c}</th>" for c in cells) + "</tr>")
            else:
                body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.strip():
            text = html.escape(line).replace("**", "")
            body.append(f"<p>{text}</p>")
    if in_table:
        body.append("</table>")
    for name, data in figures.items():
        body.append(f'<h2>{html.escape(name)}</h2><img alt="{html.escape(name)}" '
                    f'src="data:image/png;base64,{base64.b64encode(data).decode()}">')
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;"
             "margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}img{max-width:100%}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>cemap report</title><style>{style}</style></head>" \
           f"<body>{''.join(body)}</body></html>"


