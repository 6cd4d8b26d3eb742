"""Rendering of an analysis (``cemap.analysis.Analysis``): summary.csv, summary.md, verdict.json, figures and a
self-contained report.html. Nothing here computes a statistic that a verdict depends on."""

from __future__ import annotations

import base64
import csv
import html
import io
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from cemap import results
from cemap.analysis import Analysis, MapRecord
from cemap.figures import CMAP, draw_map
from cemap.results import STATUS_NOT_COMPUTED
from cemap.stats import effect_profile
from cemap.verdicts import Estimate, TestOutcome


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


def radius_scatter(per_subject: dict[str, dict[str, Estimate]]) -> bytes:
    """Effective radius against ROI PSNR (left) and against the theoretical receptive radius (right), per model."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
    for s, st in per_subject.items():
        r, p, t = (st[k].mean for k in ("effective_radius_px", "origin_psnr", "receptive_radius_px"))
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


# --- tables --------------------------------------------------------------------------------------------------------


def _fmt(x: float | None) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"


def _interval(e: Estimate | dict[str, Any]) -> str:
    m, lo, hi = (e.mean, e.low, e.high) if isinstance(e, Estimate) else (e["mean"], e["low"], e["high"])
    return f"{_fmt(m)} [{_fmt(lo)}, {_fmt(hi)}]"


def _controls(o: TestOutcome) -> str:
    if not o.controls:
        return "none"
    return "; ".join(f"{role[:3]} {c['what']}: {_interval(c)} -> {c['verdict']}" for role, c in o.controls.items())


def outcome_rows(outcomes: Sequence[TestOutcome]) -> list[str]:
    """Markdown rows: estimate and interval, clusters, the threshold, the controls, the verdict, and the power
    statement (the interval's half-width: how close to the threshold an effect can be and still be decided)."""
    rows = ["| test | statistic | of | estimate [CI] | crops | between-replicate SD | threshold | controls | "
            "resolves | verdict |", "|---|---|---|---|---|---|---|---|---|---|"]
    for o in outcomes:
        e = o.estimate
        verdict = o.verdict if o.verdict == o.raw_verdict else f"{o.verdict} (interval alone: {o.raw_verdict})"
        rows.append(f"| {o.name} | {o.statistic} | {o.what} | {_interval(e)} | {e.n_clusters} | "
                    f"{_fmt(e.replicate_spread)} | {o.threshold} | {_controls(o)} | +/-{_fmt(e.half_width)} | "
                    f"{verdict} |")
    return rows


def summary_markdown(a: Analysis, extra: Sequence[str] = ()) -> list[str]:
    expected, s = a.experiment["expected"], a.settings
    n_images = len({r.image for r in a.records})
    n_rois = len({r.roi for r in a.records})
    stat_names = list(next(iter(a.per_subject.values())).keys()) if a.per_subject else []
    md = [f"# {a.experiment['name']} (insight {a.experiment.get('insight', '?')})", "",
          f"**Claim.** {expected['claim']}", "",
          f"**Verdict: {a.verdict}** ({len(a.records)} maps: {len(a.subjects)} subjects x {n_images} crops x "
          f"{n_rois} ROIs). Intervals: {s.ci_level:.0%} percentile bootstrap ({s.n_boot} draws, seed {s.seed}) over "
          f"{s.cluster}s (the ROIs of one {s.cluster} averaged first) and over the test's models or seeds; far = "
          f"more than {expected.get('local_radius_px', 8)} px from the ROI. A test whose controls do not come out as "
          "designed (positive SUPPORTED, negative NOT SUPPORTED) is NO POWER.", "", *outcome_rows([*a.tests, *a.contrasts]),
          "", "| model | group | " + " | ".join(stat_names) + " |", "|---|---|" + "---|" * len(stat_names)]
    for subject in a.subjects:
        cells = [_interval(e) for e in a.per_subject[subject].values()]
        md.append(f"| {subject} | {a.groups.get(subject, '?')} | " + " | ".join(cells) + " |")
    md += ["", *extra, "", "Figures: map_grid.png (ROI 0 of each image, one shared colour scale), "
           "effect_vs_distance.png, sign_shares.png, radius_vs_psnr.png. Statistics per map in summary.csv."]
    return md


def summary_csv(a: Analysis) -> bytes:
    name = a.experiment["name"]
    rows = [{"experiment": name, "subject": s, "group": a.groups.get(s, "?"), "image": img, "roi": roi,
             "statistic": k, "value": v}
            for (s, img, roi), stats in sorted(a.table.items()) for k, v in stats.items()]
    rows += [{"experiment": name, "subject": o.what, "group": "test", "image": "", "roi": "",
              "statistic": f"{o.name} [{o.statistic}] {o.threshold} -> {o.verdict}", "value": o.estimate.mean}
             for o in [*a.tests, *a.contrasts]]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["experiment"])
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode()


# --- the report ----------------------------------------------------------------------------------------------------


def write_report(out_dir: Path, analysis: Analysis, extra: Sequence[str] = ()) -> dict[str, Any]:
    """Write summary.csv, summary.md, verdict.json, the figures and report.html into ``out_dir``; returns the
    verdict document."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results.atomic_write_bytes(out_dir / "summary.csv", summary_csv(analysis))
    md = summary_markdown(analysis, extra)
    results.atomic_write_bytes(out_dir / "summary.md", ("\n".join(md) + "\n").encode())
    records, subjects = analysis.records, analysis.subjects
    figures = {"map_grid.png": map_grid(records, subjects), "effect_vs_distance.png": distance_curves(records, subjects),
               "sign_shares.png": sign_shares(records, subjects),
               "radius_vs_psnr.png": radius_scatter(analysis.per_subject)}
    for name, data in figures.items():
        results.atomic_write_bytes(out_dir / name, data)
    results.atomic_write_bytes(out_dir / "report.html", _html(md, figures).encode())
    document = analysis.document()
    results.atomic_write_json(out_dir / "verdict.json", document)
    return document


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


