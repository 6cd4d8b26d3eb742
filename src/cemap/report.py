"""Rendering of an analysis (``cemap.analysis.Analysis``): summary.csv, summary.md, verdict.json, figures and a
self-contained report.html. Nothing here computes a statistic that a verdict depends on."""

from __future__ import annotations

import base64
import csv
import io
import json
import logging
import math
import re
from collections import defaultdict
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any

import hydra
import jinja2
import matplotlib.pyplot as plt
import numpy as np
from hydra.errors import InstantiationException

from cemap import results
from cemap.analysis import Analysis, MapRecord
from cemap.data import load_image
from cemap.imageio import ImageError
from cemap.figures import CMAP, color_bound, draw_map
from cemap.results import STATUS_NOT_COMPUTED, CEMResult
from cemap.stats import effect_profile, statistic_meaning, statistic_unit
from cemap.validation import SettingError
from cemap.verdicts import Estimate, TestOutcome

log = logging.getLogger(__name__)


# --- figures -------------------------------------------------------------------------------------------------------

MARKERS = "osD^vP*X<>"
"""One marker per model (cycled) in the figures that draw several models together."""


def _png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def input_underlay(result: CEMResult, cache: dict[str, np.ndarray | None]) -> np.ndarray | None:
    """The degraded input a map was computed on, rebuilt from the run config it carries (image, crop, task, seed;
    ``cache`` shares it between the models of one crop), or None where the map lacks them (engine API maps) or the
    image is not on this machine."""
    config = result.meta.get("config") or {}
    key = json.dumps([config.get(k) for k in ("image", "crop", "task", "seed")], sort_keys=True, default=str)
    if key not in cache:
        try:
            task = hydra.utils.instantiate(config["task"])
            image, _ = load_image(config["image"], config.get("crop"), multiple=task.block_multiple)
            cache[key] = task.input_view(image, int(config.get("seed", 0)))
        except (KeyError, OSError, ImageError, InstantiationException, SettingError) as exc:
            log.info("no input under the map of %s: %s", config.get("image", "?"), exc)
            cache[key] = None
    return cache[key]


def map_grid(records: Sequence[MapRecord], subjects: Sequence[str]) -> bytes:
    """Rows = subjects, columns = images (ROI 0 of each), blended over the degraded input, one colour scale per row.

    A row's scale is set by the effects *outside* the ROIs (``figures.color_bound``, the largest over the row's
    panels; the ROI's own blocks saturate), so that a global denoiser's 0.01 dB far effects are not washed out by a
    control's 0.3 dB ones in another row; pale blocks are not significant.
    """
    records, subjects = with_maps(records, subjects)
    images = sorted({r.image for r in records})
    pick = {(r.subject, r.image): r for r in records if r.roi == 0}
    inputs: dict[str, np.ndarray | None] = {}
    height = 2.0 * max(len(subjects), 1)
    fig, axes = plt.subplots(max(len(subjects), 1), len(images), figsize=(2.1 * len(images) + 1.6, height),
                             squeeze=False)
    fig.subplots_adjust(top=1.0 - 0.8 / height)  # title and column names just above the first row, at any row count
    for i, s in enumerate(subjects):
        row = [pick[(s, img)].result for img in images if (s, img) in pick]
        bound = max((color_bound(r) for r in row), default=1e-3)
        mappable = None
        for j, img in enumerate(images):
            ax = axes[i][j]
            if i == 0:
                ax.set_title(img, fontsize=8)
            rec = pick.get((s, img))
            if rec is None:
                ax.axis("off")
                continue
            mappable = draw_map(ax, rec.result, input_underlay(rec.result, inputs), bound)
            if j == 0:
                ax.set_ylabel(s, fontsize=8)
        if mappable is not None:
            extend = "both" if any(np.nanmax(np.abs(r.effects)) > bound for r in row) else "neither"
            bar = fig.colorbar(mappable, ax=list(axes[i]), fraction=0.02, pad=0.01, extend=extend)
            bar.ax.tick_params(labelsize=6)
            bar.set_label(f"dB (+-{fmt_value(bound, 'dB')})", fontsize=7)
    fig.suptitle("Causal effect of each block on ROI 0 (green box), over the degraded input; one colour scale per "
                 "row, set by the effects outside the ROI (ROI blocks saturate); pale = not significant", fontsize=9,
                 y=1.0 - 0.2 / height)
    return _png(fig)


def with_maps(records: Sequence[MapRecord], subjects: Sequence[str]) -> tuple[list[MapRecord], list[str]]:
    """The records that carry a map and the subjects that have one (PSNR-only runs have none to draw)."""
    kept = [r for r in records if not r.result.psnr_only]
    return kept, [s for s in subjects if any(r.subject == s for r in kept)]


def distance_curves(records: Sequence[MapRecord], subjects: Sequence[str]) -> bytes:
    """Mean |effect| per block against the Chebyshev distance (blocks) to the ROI, one line per subject."""
    records, subjects = with_maps(records, subjects)
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
            i = list(subjects).index(s)  # coinciding lines (local models are all 0 far out) stay told apart
            ax.plot(ds, [np.mean(per_d[d]) for d in ds], marker=MARKERS[i % len(MARKERS)],
                    linestyle=("-", "--", ":", "-.")[i % 4], markersize=4, alpha=0.85, label=s)
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_xlabel("Chebyshev distance to the ROI (blocks)")
    ax.set_ylabel("mean |significant effect| per block (dB)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    ax.grid(alpha=0.3)
    return _png(fig)


def sign_shares(records: Sequence[MapRecord], subjects: Sequence[str]) -> bytes:
    """Share of blocks outside the ROI that are significantly positive, negative, or not significant."""
    records, subjects = with_maps(records, subjects)
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
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)  # outside: never over a bar
    return _png(fig)


def radius_scatter(per_subject: dict[str, dict[str, Estimate]]) -> bytes:
    """Effective radius against ROI PSNR (left) and against the theoretical receptive radius (right), per model: one
    colour and marker per model in both panels, named in one legend outside the axes (labels next to points
    overlapped where models sit together)."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    colours, markers = plt.get_cmap("tab20").colors, MARKERS
    for i, (s, st) in enumerate(per_subject.items()):
        r, p, t = (st[k].mean for k in ("effective_radius_px", "origin_psnr", "receptive_radius_px"))
        style = {"color": colours[i % len(colours)], "marker": markers[i % len(markers)], "s": 36, "alpha": 0.85}
        a.scatter(p, r, label=s, **style)
        if not math.isnan(t):
            b.scatter(t, r, **style)
    a.set_xlabel("ROI PSNR (dB)")
    a.set_ylabel("effective radius (px)")
    b.set_xlabel("theoretical receptive radius (output px; local models only)")
    b.set_ylabel("effective radius (px)")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, frameon=False)
    fig.tight_layout()
    return _png(fig)


# --- tables --------------------------------------------------------------------------------------------------------


def fmt_value(x: float | None, unit: str = "") -> str:
    """A number with the precision its unit deserves: shares as percentages, dB to 0.01 (two significant digits below
    0.1), powers in dB^2 with two significant digits; a missing value (no maps) as an en dash."""
    if x is None or not math.isfinite(x):
        return "\u2013"
    if unit == "share":
        v = 100 * x
        return "0%" if v == 0 else f"{v:.1f}%" if abs(v) >= 1 else f"{v:.2g}%"
    if unit == "dB^2":
        return "0" if x == 0 else f"{x:.2g}" if 1e-3 <= abs(x) < 1e3 else f"{x:.1e}"
    if unit == "r":
        return f"{x:.3f}"
    if unit in ("px", "blocks"):
        return f"{x:.1f}"
    return "0" if x == 0 else f"{x:.2f}" if abs(x) >= 0.1 else f"{x:.2g}"


def fmt_interval(e: Estimate | dict[str, Any], statistic: str = "") -> str:
    """``estimate [low, high]`` in the statistic's unit."""
    m, lo, hi = (e.mean, e.low, e.high) if isinstance(e, Estimate) else (e["mean"], e["low"], e["high"])
    unit = statistic_unit(statistic)
    if not math.isfinite(m):
        return "\u2013"
    return f"{fmt_value(m, unit)} [{fmt_value(lo, unit)}, {fmt_value(hi, unit)}]"


def missing_reason(replicate: str, unavailable: dict[str, str]) -> str:
    """Why a test's model (or either model of a pair, ``a - b`` / ``a vs b``) has no maps in this run."""
    names = [n.strip("() ") for n in re.split(r" - | vs |abs\(", replicate) if n.strip("() ")]
    reasons = list(dict.fromkeys(f"{n}: {unavailable[n]}" for n in names if n in unavailable))
    return "; ".join(reasons) or "not in this profile's subjects"


def _controls(o: TestOutcome) -> str:
    if not o.controls:
        return "none"
    return "; ".join(f"{role[:3]} {c['what']}: {fmt_interval(c, o.statistic)} -> {c['verdict']}"
                     for role, c in o.controls.items())


def outcome_rows(outcomes: Sequence[TestOutcome]) -> list[str]:
    """Markdown rows: estimate and interval, clusters, the threshold, the controls, the verdict, and the power
    statement (the interval's half-width: how close to the threshold an effect can be and still be decided)."""
    rows = ["| test | statistic | of | estimate [CI] | crops | between-replicate SD | threshold | controls | "
            "resolves | verdict |", "|---|---|---|---|---|---|---|---|---|---|"]
    for o in outcomes:
        e = o.estimate
        verdict = o.verdict if o.verdict == o.raw_verdict else f"{o.verdict} (interval alone: {o.raw_verdict})"
        unit = statistic_unit(o.statistic)
        what = o.what + (f" (no maps: {'; '.join(o.missing)})" if o.missing else "")
        rows.append(f"| {o.name} | {o.statistic} | {what} | {fmt_interval(e, o.statistic)} | {e.n_clusters} | "
                    f"{fmt_value(e.replicate_spread, unit)} | {o.threshold} | {_controls(o)} | "
                    f"+/-{fmt_value(e.half_width, unit)} | "
                    f"{verdict} |")
    return rows


def model_label(a: Analysis, subject: str) -> str:
    """A model's name in the tables: its role, and the model that plays it where a profile maps the role to another
    (the bench FSRCNN m4 plays sr_fsrcnn_m2, the shallow member of the depth pair), so no reader takes one for the
    other."""
    played_by = (a.experiment.get("played_by") or {}).get(subject)
    return f"{subject} (played by {played_by})" if played_by else subject


def exploratory_note(a: Analysis) -> str:
    """Why a run's verdict is not a bench result: some of its models missed their zoo floor (empty when none did)."""
    if not a.exploratory:
        return ""
    return (f"{len(a.exploratory)} of the {len(a.subjects)} mapped models did not meet their zoo floor and were "
            "staged for this run (train_zoo.py stage), so this verdict is not a bench result: "
            + "; ".join(f"{s} ({reason})" for s, reason in a.exploratory.items()) + ".")


def summary_markdown(a: Analysis, extra: Sequence[str] = ()) -> list[str]:
    expected, s = a.experiment["expected"], a.settings
    n_images = len({r.image for r in a.records})
    n_rois = len({r.roi for r in a.records})
    stat_names = list(next(iter(a.per_subject.values())).keys()) if a.per_subject else []
    md = [f"# {a.experiment['name']} (insight {a.experiment.get('insight', '?')})", "",
          f"**Claim.** {expected['claim']}", "",
          f"**Verdict: {a.verdict}{' (exploratory)' if a.exploratory else ''}** ({len(a.records)} maps: "
          f"{len(a.subjects)} subjects x {n_images} crops x {n_rois} ROIs). Intervals: {s.ci_level:.0%} percentile "
          f"bootstrap ({s.n_boot} draws, seed {s.seed}) over "
          f"{s.cluster}s (the ROIs of one {s.cluster} averaged first) and over the test's models or seeds; far = "
          f"more than {expected.get('local_radius_px', 8)} px from the ROI. A test whose controls do not come out as "
          "designed (positive SUPPORTED, negative NOT SUPPORTED) is NO POWER.",
          *(["", f"**EXPLORATORY:** {exploratory_note(a)}"] if a.exploratory else []), "",
          *outcome_rows([*a.tests, *a.contrasts]),
          "", "| model | group | " + " | ".join(stat_names) + " |", "|---|---|" + "---|" * len(stat_names)]
    for subject in a.subjects:
        cells = [fmt_interval(e, k) for k, e in a.per_subject[subject].items()]
        md.append(f"| {model_label(a, subject)} | {a.groups.get(subject, '?')} | " + " | ".join(cells) + " |")
    md += ["", *extra, "", "Figures: map_grid.png (ROI 0 of each image, one colour scale per row), "
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
    results.atomic_write_bytes(out_dir / "report.html", _html(analysis, figures).encode())
    document = analysis.document()
    results.atomic_write_json(out_dir / "verdict.json", document)
    return document


VERDICT_CLASS = {"SUPPORTED": "v-supported", "NOT SUPPORTED": "v-not-supported", "INCONCLUSIVE": "v-inconclusive",
                 "NO POWER": "v-no-power", "REPORTED": "v-reported", "NOT TESTABLE": "v-not-testable"}
CAPTIONS = {
    "map_grid.png": "ROI 0 of each crop per model (rows); each row has its own colour scale, set by the effects "
                    "outside the ROI (the ROI's blocks saturate); pale blocks are not significant.",
    "effect_vs_distance.png": "Mean |significant effect| per block against the distance to the ROI.",
    "sign_shares.png": "Share of the blocks outside the ROI that help, hurt, or do nothing significant.",
    "radius_vs_psnr.png": "Effective radius against ROI PSNR and against the theoretical receptive radius.",
}


def _spec(a: Analysis, name: str) -> dict[str, Any]:
    expected = a.experiment["expected"]
    return next((t for t in [*expected.get("tests", []), *expected.get("contrasts", [])] if t["name"] == name), {})


def _threshold(spec: dict[str, Any], unit: str) -> str:
    below, above = spec.get("supported_below"), spec.get("supported_above")
    if below is not None:
        return f"supported below {fmt_value(float(below), unit)}"
    return f"supported above {fmt_value(float(above), unit)}" if above is not None else ""


def outcome_view(a: Analysis, o: TestOutcome) -> dict[str, Any]:
    """One test as a sentence ("<what it measures>: 0.8% [0.3%, 1.3%] over 12 crops (of ...); supported below 10%")
    with its controls, for the template."""
    spec, unit = _spec(a, o.name), statistic_unit(o.statistic)
    what = spec.get("description") or statistic_meaning(o.statistic) or o.statistic
    e = o.estimate
    threshold = _threshold(spec, unit)
    value = f"{fmt_interval(e, o.statistic)} over {e.n_clusters} crops ({o.what})" if e.n_clusters else "no maps"
    sentence = (f"{_sentence_case(what.rstrip('.'))}: {value}" + (f"; {threshold}." if threshold else "."))
    notes = []
    if math.isfinite(e.replicate_spread):
        notes.append(f"between-seed (or between-model) SD {fmt_value(e.replicate_spread, unit)}")
    if math.isfinite(e.half_width):
        notes.append(f"the interval's half-width is {fmt_value(e.half_width, unit)}: effects closer than that to the "
                     "threshold cannot be decided with these maps")
    if o.verdict != o.raw_verdict:
        notes.append(f"the interval alone says {o.raw_verdict}")
    unavailable = a.experiment.get("unavailable") or {}
    notes += [f"no maps here for {m} ({missing_reason(m, unavailable)})" for m in o.missing]
    controls = [{"role": role, "what": c["what"], "value": fmt_interval(c, o.statistic), "verdict": c["verdict"],
                 "verdict_class": VERDICT_CLASS.get(c["verdict"], ""), "designed": c["designed"]}
                for role, c in o.controls.items()]
    return {"name": o.name, "sentence": sentence, "verdict": o.verdict, "verdict_class": VERDICT_CLASS.get(o.verdict, ""),
            "note": _sentence_case("; ".join(notes)), "controls": controls}


def _sentence_case(text: str) -> str:
    return text[:1].upper() + text[1:]


def _html(a: Analysis, figures: dict[str, bytes]) -> str:
    """The self-contained report page (``templates/report.html.j2``): claim, coloured verdict, one sentence per test
    with its controls, per-model table, figures inlined as base64 PNGs, and the glossary."""
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    template = env.from_string((files("cemap") / "templates" / "report.html.j2").read_text(encoding="utf-8"))
    expected, s = a.experiment["expected"], a.settings
    columns = list(next(iter(a.per_subject.values())).keys()) if a.per_subject else []
    used = list(dict.fromkeys([*columns, *(o.statistic for o in [*a.tests, *a.contrasts])]))
    method = (f"Intervals: {s.ci_level:.0%} percentile bootstrap ({s.n_boot} draws, seed {s.seed}) over {s.cluster}s "
              f"(the ROIs of one {s.cluster} averaged first) and over the test's models or seeds. Far = more than "
              f"{expected.get('local_radius_px', 8)} px from the ROI. A test whose controls do not give their designed "
              "verdicts is NO POWER, whatever its own interval says.")
    return template.render(
        name=a.experiment["name"], insight=a.experiment.get("insight"), claim=expected["claim"], verdict=a.verdict,
        exploratory=exploratory_note(a),
        verdict_class=VERDICT_CLASS.get(a.verdict, ""), n_maps=len(a.records), n_subjects=len(a.subjects),
        n_images=len({r.image for r in a.records}), n_rois=len({r.roi for r in a.records}), method=method,
        tests=[outcome_view(a, o) for o in a.tests], contrasts=[outcome_view(a, o) for o in a.contrasts],
        ci=f"{s.ci_level:.0%}", columns=columns, units={k: statistic_unit(k) for k in used},
        glossary={k: statistic_meaning(k) for k in used}, glossary_used=used,
        models=[{"name": model_label(a, sub), "group": a.groups.get(sub, "?"),
                 "cells": [fmt_interval(e, k) for k, e in a.per_subject[sub].items()]} for sub in a.subjects],
        figures=[{"name": n, "data": base64.b64encode(d).decode(), "caption": CAPTIONS.get(n, "")}
                 for n, d in figures.items()])
