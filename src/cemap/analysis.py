"""From a sweep's maps to an insight's verdict: load the maps, compute their statistics, run the pre-stated tests.

Pure computation; ``cemap.report`` renders the result (tables, figures, HTML) and ``cemap.verdicts`` owns the
statistics of the tests (clusters, bootstrap, controls).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cemap import results
from cemap.results import CEMResult
from cemap.stats import RADIUS_MASS, Statistic, map_statistics
from cemap.verdicts import Estimate, Key, TestOutcome, VerdictSettings, evaluate, overall, run_tests


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


@dataclass
class Analysis:
    """Everything a report shows: per-map statistics, per-model estimates, tests with their controls, the verdict."""

    experiment: dict[str, Any]
    records: list[MapRecord]
    subjects: list[str]
    table: dict[Key, dict[str, float]]
    per_subject: dict[str, dict[str, Estimate]]
    tests: list[TestOutcome]
    contrasts: list[TestOutcome]
    verdict: str
    settings: VerdictSettings

    @property
    def exploratory(self) -> dict[str, str]:
        """Mapped models whose weights missed their zoo floor (staged for an exploratory run), with the reason."""
        flagged = self.experiment.get("exploratory") or {}
        return {s: flagged[s] for s in self.subjects if s in flagged}

    @property
    def groups(self) -> dict[str, str]:
        return {r.subject: r.group for r in self.records}

    def document(self) -> dict[str, Any]:
        """The JSON verdict (``verdict.json``)."""
        return {"experiment": self.experiment["name"], "verdict": self.verdict, "maps": len(self.records),
                "exploratory": self.exploratory,
                "settings": self.settings.__dict__, "tests": [o.to_dict() for o in self.tests],
                "contrasts": [o.to_dict() for o in self.contrasts]}


def verdict_settings(expected: dict[str, Any]) -> VerdictSettings:
    return VerdictSettings(ci_level=float(expected.get("ci_level", 0.95)), n_boot=int(expected.get("n_boot", 2000)),
                           seed=int(expected.get("boot_seed", 0)), cluster=str(expected.get("cluster", "crop")))


def analyse(experiment: dict[str, Any], records: Sequence[MapRecord]) -> Analysis:
    """Statistics of every map, each model's estimates, and the experiment's tests and contrasts."""
    expected = experiment["expected"]
    settings = verdict_settings(expected)
    radius, mass = int(expected.get("local_radius_px", 8)), float(expected.get("radius_mass", RADIUS_MASS))
    subjects = [s for s in experiment["subjects"] if any(r.subject == s for r in records)]
    table = {(r.subject, r.image, r.roi): map_statistics(r.result, radius, mass) for r in records}
    maps = {(r.subject, r.image, r.roi): r.result for r in records}
    names = [s.value for s in Statistic if any(s.value in row for row in table.values())]
    per_subject = {s: {k: evaluate(table, {"statistic": k, "subjects": [s]}, settings)[0] for k in names}
                   for s in subjects}
    tests = run_tests(table, expected.get("tests", []), settings, maps)
    contrasts = run_tests(table, expected.get("contrasts", []), settings, maps, tested=False)
    return Analysis(experiment, list(records), subjects, table, per_subject, tests, contrasts, overall(tests), settings)
