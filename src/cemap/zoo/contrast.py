"""Architecture contrasts from the trained weights alone: full-image PSNR of two zoo entries (e.g. RCAN-DN with and
without channel attention), paired over training seeds and test images, with the between-seed spread.

Why apart from the insight tests: those compare ROI PSNR on maps of *shipped* models, and a floor keeps some seeds
out of the zoo. Leaving out the seeds where one architecture trained badly would bias the comparison in its favour,
so this contrast takes every seed of a training run's export folder, whether it met its floor or not. Intervals:
the verdict module's two-way bootstrap (test images x seeds), so training noise widens the interval.

``metric="offset_corrected_psnr"`` scores the error left after removing each image's per-channel mean error: what
is left of a difference there is not a whole-image colour offset. Sources: a training run's export folder, or a zoo
folder (the shipped package zoo, ``provenance.json``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cemap import zoo
from cemap.metrics import offset_corrected_psnr, psnr
from cemap.tasks.base import Task
from cemap.training import evaluation_outputs
from cemap.verdicts import Estimate, VerdictSettings, cluster_matrix, estimate
from cemap.zoo.manifest import Job, Manifest
from cemap.zoo.quality import eval_sets, load_exported, task_of

Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
METRICS: dict[str, Metric] = {"psnr": psnr, "offset_corrected_psnr": offset_corrected_psnr}


@dataclass(frozen=True)
class SetContrast:
    """A - B on one evaluation set: the paired estimate and each seed's mean PSNR of both entries."""

    set_name: str
    difference: Estimate
    psnr_a: dict[int, float]
    psnr_b: dict[int, float]


def image_psnrs(model: torch.nn.Module, task: Task, images: Sequence[np.ndarray], seed: int,
                metric: Metric = psnr) -> list[float]:
    """Full-image PSNR per image, degraded exactly as the zoo's floors evaluate them (CPU, float32)."""
    outputs, targets = evaluation_outputs(model, task, images, seed, torch.device("cpu"))
    return [metric(o, t).item() for o, t in zip(outputs, targets)]


def load_trained(source: Path, job: Job) -> torch.nn.Module | None:
    """One job's weights from an export folder or a zoo folder; None when ``source`` does not hold it."""
    if (source / f"{job.key}.safetensors").is_file() and (source / f"{job.key}.config.yaml").is_file():
        return load_exported(source, job)[1]
    if any(r["name"] == job.name and r["seed"] == job.seed for r in zoo.records(source)):
        return zoo.load(job.name, job.seed, directory=source)
    return None


def paired_difference(psnr_a: Mapping[int, Sequence[float]], psnr_b: Mapping[int, Sequence[float]],
                      settings: VerdictSettings) -> Estimate:
    """Mean over seeds of the mean over images of A - B (seeds present in both), with its bootstrap interval."""
    seeds = sorted(psnr_a.keys() & psnr_b.keys())
    diffs = [{(f"image{i}", 0): a - b for i, (a, b) in enumerate(zip(psnr_a[s], psnr_b[s], strict=True))}
             for s in seeds]
    matrix, n_values = cluster_matrix(diffs, "crop")
    return estimate(matrix, n_values, settings)


def seed_psnrs(manifest: Manifest, source: Path, entry: str,
               metric: Metric = psnr) -> dict[str, dict[int, list[float]]]:
    """Per evaluation set, per trained seed of ``entry``: full-image PSNR of every image."""
    crop, seed = manifest.eval_crop_and_seed
    out: dict[str, dict[int, list[float]]] = {}
    for job in manifest.select([entry]):
        if job.task is None:
            raise ValueError(f"{entry} is a multi-task entry; contrast single-task entries")
        model = load_trained(source, job)
        if model is None:
            continue  # not trained in this run
        for set_name, images in eval_sets(crop).items():
            out.setdefault(set_name, {})[job.seed] = image_psnrs(model, task_of(job.task), images, seed, metric)
    return out


def contrast(manifest: Manifest, source: Path, a: str, b: str, settings: VerdictSettings | None = None,
             metric: str = "psnr") -> list[SetContrast]:
    """A - B per evaluation set, paired over the seeds trained for both and over the set's images."""
    settings = settings or VerdictSettings()
    score = METRICS[metric]
    per_a, per_b = seed_psnrs(manifest, source, a, score), seed_psnrs(manifest, source, b, score)
    return [SetContrast(name, paired_difference(per_a[name], per_b.get(name, {}), settings),
                        {s: float(np.mean(v)) for s, v in per_a[name].items()},
                        {s: float(np.mean(v)) for s, v in per_b.get(name, {}).items()})
            for name in per_a]


def render(rows: Sequence[SetContrast], a: str, b: str, settings: VerdictSettings, metric: str = "psnr") -> str:
    """Markdown: per set, each seed's PSNR of A and B and their difference, then the paired estimate."""
    level = f"{settings.ci_level:.0%}"
    lines = [f"Full-image {metric} (dB), A = {a}, B = {b}.", "",
             f"| set | seed | {a} | {b} | difference |", "|---|---|---|---|---|"]
    for row in rows:
        for s in sorted(row.psnr_a.keys() & row.psnr_b.keys()):
            lines.append(f"| {row.set_name} | {s} | {row.psnr_a[s]:.2f} | {row.psnr_b[s]:.2f} | "
                         f"{row.psnr_a[s] - row.psnr_b[s]:+.2f} |")
        d = row.difference
        lines.append(f"| {row.set_name} | paired over {len(d.replicate_means)} seeds x {d.n_clusters} images | | | "
                     f"**{d.mean:+.2f} [{d.low:+.2f}, {d.high:+.2f}]** ({level}; {seed_spread(d.replicate_spread)}) |")
    return "\n".join(lines) + "\n"


def seed_spread(sd: float) -> str:
    """The between-seed SD, or why there is none (one seed: the interval is over images only)."""
    return "one seed: interval over images only" if np.isnan(sd) else f"between-seed SD {sd:.2f}"
