"""From per-map statistics to the verdicts of pre-stated tests: pure functions, no files, no figures.

A test (an entry of an experiment's ``expected.tests``) names a statistic (``cemap.stats.Statistic``) and either
``subjects`` (the statistic itself, pooled over those models), ``pairs`` of subjects (the difference a - b on the
same crop and ROI, or a two-map statistic such as ``map_correlation``) or ``series`` of subjects with a statistic
``against`` (the least-squares slope of the statistic against the other over a sweep's models on the same crop and
ROI: a trend over three or more depths, where a pair sees two), plus a threshold stated before the run
(``supported_below`` or ``supported_above``; a contrast has none).

Sampling units. The three ROIs of one crop share the crop's content, so they are averaged into one value per
*cluster* before anything else; a cluster is the crop (``cluster: crop``, for non-overlapping crops) or the
photograph it was cut from (``cluster: photograph``, image names ``<photo>@y<y>x<x>``). The subjects of a pooled test
and the pairs of a paired test are *replicates* (architectures, or training seeds of one architecture): the
estimate is the mean over replicates of the mean over clusters, and its interval is a percentile bootstrap that
resamples clusters and replicates together, so training noise widens the interval instead of hiding in it. Percentile
intervals stay inside the range of the data, so fractions stay inside [0, 1]. Their coverage is nominal only for
enough clusters (>= ~10); the report states n.

Verdict from the interval and the threshold: SUPPORTED when the whole interval lies on the claimed side,
NOT SUPPORTED when it lies on the other side, INCONCLUSIVE when it straddles (or fewer than two clusters). Controls:
a test may name a positive control (models built to have the claimed property) and a negative one (built not to);
the same test runs on their maps, and unless they come out SUPPORTED and NOT SUPPORTED the test's verdict is
NO POWER, whatever its own interval says. A test none of whose models has maps in a run (a profile without such a
model: the authors released no denoising RCAN without channel attention; bench weights that do not ship yet) is NOT
TESTABLE, and every test lists the models it names that have no maps (``missing``).
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from cemap.results import CEMResult
from cemap.stats import PAIR_STATISTICS
from cemap.validation import SettingError

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE, NO_POWER, REPORTED, NOT_TESTABLE = (
    "SUPPORTED", "NOT SUPPORTED", "INCONCLUSIVE", "NO POWER", "REPORTED", "NOT TESTABLE")
CLUSTERS = ("crop", "photograph")

Key = tuple[str, str, int]
"""(subject, image, roi index) of one map."""
Table = Mapping[Key, Mapping[str, float]]


@dataclass(frozen=True)
class VerdictSettings:
    """Every constant that can change a verdict (from the experiment config)."""

    ci_level: float = 0.95
    n_boot: int = 2000
    seed: int = 0
    cluster: str = "crop"

    def __post_init__(self) -> None:
        if self.cluster not in CLUSTERS:
            raise SettingError(f"cluster={self.cluster!r}; choose one of {CLUSTERS}")
        if not 0 < self.ci_level < 1 or self.n_boot < 100:
            raise SettingError(f"need 0 < ci_level < 1 and n_boot >= 100 (got {self.ci_level}, {self.n_boot})")


@dataclass
class Estimate:
    """A test's number: the point estimate, its interval, and what it rests on."""

    mean: float
    low: float
    high: float
    n_clusters: int
    n_maps: int
    replicate_means: list[float] = field(default_factory=list)

    @property
    def half_width(self) -> float:
        """The larger distance from the estimate to an end of its interval: effects closer than this to the
        threshold cannot be decided at this sample size."""
        return max(self.mean - self.low, self.high - self.mean)

    @property
    def replicate_spread(self) -> float:
        """Standard deviation of the per-replicate means (e.g. between training seeds); NaN below two."""
        v = [x for x in self.replicate_means if math.isfinite(x)]
        return float(np.std(v, ddof=1)) if len(v) > 1 else float("nan")


@dataclass
class TestOutcome:
    __test__ = False  # not a pytest class

    name: str
    statistic: str
    what: str
    threshold: str
    estimate: Estimate
    raw_verdict: str
    verdict: str
    controls: dict[str, dict[str, Any]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    """The test's models (or pairs) without maps in this run."""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(mean=self.estimate.mean, low=self.estimate.low, high=self.estimate.high, n=self.estimate.n_clusters,
                 half_width=self.estimate.half_width, replicate_spread=self.estimate.replicate_spread)
        return d


def photograph(image: str) -> str:
    """The photograph a crop was cut from: ``coffee@y0x128`` -> ``coffee``."""
    return image.split("@")[0]


def statistic_of(spec: Mapping[str, Any]) -> str:
    """The statistic's name, whether the spec holds a string or a ``Statistic`` member."""
    return str(getattr(spec["statistic"], "value", spec["statistic"]))


def against_of(spec: Mapping[str, Any]) -> str:
    """The statistic a series' slope is taken against (its x, e.g. ``receptive_radius_px``)."""
    if not spec.get("against"):
        raise SettingError(f"test {spec.get('name')!r}: a series needs the statistic it is against (against: ...)")
    return str(getattr(spec["against"], "value", spec["against"]))


def label_of(spec: Mapping[str, Any]) -> str:
    """What a test's number is: the statistic, or for a series its slope (``effective_radius_px/receptive_radius_px``:
    px of effective radius per px of receptive radius)."""
    stat = statistic_of(spec)
    return f"{stat}/{against_of(spec)}" if kind(spec) == "series" else stat


def kind(spec: Mapping[str, Any]) -> str:
    """How a test forms its replicates: ``series`` (a slope over models), ``pairs`` (a - b) or ``subjects``."""
    return "series" if spec.get("series") else "pairs" if spec.get("pairs") else "subjects"


def replicates(spec: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """The subjects (1-tuples), pairs (2-tuples) or series (the members of each) a test is about."""
    if kind(spec) == "subjects":
        return [(s,) for s in spec.get("subjects", [])]
    return [tuple(p) for p in spec[kind(spec)]]


def slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of y on x over the finite points; NaN with fewer than two distinct x."""
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(np.unique(x)) < 2:
        return float("nan")
    xc = x - x.mean()
    return float(xc @ (y - y.mean()) / (xc @ xc))


def series_slopes(table: Table, statistic: str, against: str,
                  members: Sequence[str]) -> dict[tuple[str, int], float]:
    """Per (image, roi): the slope of ``statistic`` against ``against`` over the series' models with maps there
    (NaN where fewer than two models with distinct x have one)."""
    points: dict[tuple[str, int], list[tuple[float, float]]] = defaultdict(list)
    for (s, i, r), row in table.items():
        if s in members:
            points[(i, r)].append((float(row[against]), float(row[statistic])))
    return {key: slope(*np.array(p, dtype=float).T) for key, p in sorted(points.items())}


def map_values(table: Table, spec: Mapping[str, Any], rep: tuple[str, ...],
               maps: Mapping[Key, CEMResult] | None = None) -> dict[tuple[str, int], float]:
    """Per (image, roi), the test's value for one replicate: the statistic, the difference a - b (absolute with
    ``abs: true``), a two-map statistic of a and b, or a series' slope. Maps present for only one of a pair are left
    out."""
    stat = statistic_of(spec)
    if kind(spec) == "series":
        return series_slopes(table, stat, against_of(spec), rep)
    if len(rep) == 1:
        return {(i, r): float(row[stat]) for (s, i, r), row in table.items() if s == rep[0]}
    a, b = rep
    shared = {(i, r) for (s, i, r) in table if s == a} & {(i, r) for (s, i, r) in table if s == b}
    out = {}
    for i, r in sorted(shared):
        if stat in PAIR_STATISTICS:
            if maps is None:
                raise ValueError(f"{stat} needs the maps themselves")
            out[(i, r)] = PAIR_STATISTICS[stat](maps[(a, i, r)], maps[(b, i, r)])
        else:
            d = float(table[(a, i, r)][stat]) - float(table[(b, i, r)][stat])
            out[(i, r)] = abs(d) if spec.get("abs") else d
    return out


def cluster_matrix(per_replicate: Sequence[Mapping[tuple[str, int], float]], cluster: str) -> tuple[np.ndarray, int]:
    """Replicates x clusters matrix of cluster means (NaN where a replicate has no finite value in a cluster), and
    the number of finite map values behind it."""
    unit = (lambda image: image) if cluster == "crop" else photograph
    cells: list[dict[str, list[float]]] = []
    for values in per_replicate:
        groups: dict[str, list[float]] = defaultdict(list)
        for (image, _), v in values.items():
            if math.isfinite(v):
                groups[unit(image)].append(v)
        cells.append(groups)
    names = sorted({c for g in cells for c in g})
    m = np.full((len(cells), len(names)), np.nan)
    for r, groups in enumerate(cells):
        for c, name in enumerate(names):
            if groups.get(name):
                m[r, c] = float(np.mean(groups[name]))
    return m, sum(len(v) for g in cells for v in g.values())


def _grand_mean(m: np.ndarray) -> np.ndarray:
    """Mean over replicates (axis -2) of the mean over clusters (axis -1), ignoring missing cells."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)  # all-NaN slices give NaN, which is what we want
        return np.nanmean(np.nanmean(m, axis=-1), axis=-1)


def estimate(m: np.ndarray, n_maps: int, settings: VerdictSettings) -> Estimate:
    """Point estimate and two-way (clusters x replicates) percentile bootstrap interval of a cluster matrix."""
    if m.size:  # replicates without maps (e.g. seeds this profile lacks) and clusters without values drop out
        m = m[np.isfinite(m).any(axis=1)][:, np.isfinite(m).any(axis=0)]
    n_rep, n_clu = m.shape if m.ndim == 2 else (0, 0)
    if n_clu == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0, n_maps)
    point = float(_grand_mean(m))
    rep_means = [float(_grand_mean(row[None, :])) for row in m]
    if n_clu < 2:
        return Estimate(point, float("nan"), float("nan"), n_clu, n_maps, rep_means)
    rng = np.random.default_rng(settings.seed)
    ic = rng.integers(n_clu, size=(settings.n_boot, n_clu))
    ir = rng.integers(n_rep, size=(settings.n_boot, n_rep)) if n_rep > 1 else np.zeros((settings.n_boot, 1), int)
    boot = _grand_mean(m[ir[:, :, None], ic[:, None, :]])
    boot = boot[np.isfinite(boot)]
    alpha = 1 - settings.ci_level
    low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return Estimate(point, float(min(low, point)), float(max(high, point)), n_clu, n_maps, rep_means)


def decide(low: float, high: float, below: float | None, above: float | None) -> str:
    """SUPPORTED / NOT SUPPORTED / INCONCLUSIVE from an interval and the claimed side of a threshold."""
    if below is None and above is None:
        raise SettingError("a test needs supported_below or supported_above")
    if math.isnan(low) or math.isnan(high):
        return INCONCLUSIVE
    if below is not None:
        return SUPPORTED if high < below else NOT_SUPPORTED if low >= below else INCONCLUSIVE
    assert above is not None
    return SUPPORTED if low > above else NOT_SUPPORTED if high <= above else INCONCLUSIVE


def describe(spec: Mapping[str, Any], present: Sequence[tuple[str, ...]] | None = None) -> tuple[str, str]:
    """Human-readable 'what' (the subjects or pairs with maps, all when ``present`` is None) and threshold."""
    stat = statistic_of(spec)

    def one(rep: tuple[str, ...]) -> str:
        if kind(spec) == "series":
            return f"trend over {', '.join(rep)}"
        if len(rep) == 1:
            return rep[0]
        return f"{rep[0]} vs {rep[1]}" if stat in PAIR_STATISTICS else \
            f"abs({rep[0]} - {rep[1]})" if spec.get("abs") else f"{rep[0]} - {rep[1]}"

    what = "; ".join(one(r) for r in (replicates(spec) if present is None else present)) or "no maps"
    below, above = spec.get("supported_below"), spec.get("supported_above")
    threshold = f"< {below}" if below is not None else f"> {above}" if above is not None else "reported"
    return what, threshold


def evaluate(table: Table, spec: Mapping[str, Any], settings: VerdictSettings,
             maps: Mapping[Key, CEMResult] | None = None) -> tuple[Estimate, str, str, list[str]]:
    """One test on one set of replicates: its estimate, its verdict from the interval alone (NOT TESTABLE without
    any maps), what it is of (the replicates that have maps here) and the replicates that have none."""
    reps = replicates(spec)
    per_rep = [map_values(table, spec, rep, maps) for rep in reps]
    est = estimate(*cluster_matrix(per_rep, settings.cluster), settings)
    if kind(spec) == "series":  # a series stands on the members it has; each missing member is named
        present = {s for s, _, _ in table}
        reps = [tuple(m for m in rep if m in present) for rep in reps]
        missing = list(dict.fromkeys(m for rep in replicates(spec) for m in rep if m not in present))
    else:
        missing = [describe(spec, [rep])[0] for rep, values in zip(reps, per_rep) if not values]
    what = describe(spec, [rep for rep, values in zip(reps, per_rep) if values])[0]
    below, above = spec.get("supported_below"), spec.get("supported_above")
    if below is None and above is None:
        return est, REPORTED, what, missing
    if not any(per_rep):
        return est, NOT_TESTABLE, what, missing
    return est, decide(est.low, est.high, below, above), what, missing


def with_replicates(spec: Mapping[str, Any], items: Sequence[Any]) -> dict[str, Any]:
    """The same test on other models (a control): ``items`` replace its subjects or its pairs."""
    out = {k: v for k, v in spec.items() if k not in ("subjects", "pairs", "series", "controls")}
    out[kind(spec)] = [i if kind(spec) == "subjects" else list(i) for i in items]
    return out


DESIGNED = {"positive": SUPPORTED, "negative": NOT_SUPPORTED}
"""The verdict each control is built to give."""


def run_test(table: Table, spec: Mapping[str, Any], settings: VerdictSettings,
             maps: Mapping[Key, CEMResult] | None = None) -> TestOutcome:
    """A pre-stated test with its controls: NO POWER unless every named control gives its designed verdict;
    NOT TESTABLE when none of its own models has maps."""
    est, raw, what, missing = evaluate(table, spec, settings, maps)
    threshold = describe(spec)[1]
    controls: dict[str, dict[str, Any]] = {}
    for role, items in (spec.get("controls") or {}).items():
        if role not in DESIGNED:
            raise SettingError(f"control role {role!r}; choose one of {sorted(DESIGNED)}")
        c_est, c_verdict, c_what, _ = evaluate(table, with_replicates(spec, list(items)), settings, maps)
        controls[role] = {"what": c_what, "verdict": c_verdict,
                          "designed": DESIGNED[role], "passed": c_verdict == DESIGNED[role], **asdict(c_est)}
    passed = all(c["passed"] for c in controls.values())
    final = raw if raw in (REPORTED, NOT_TESTABLE) or passed else NO_POWER
    return TestOutcome(str(spec["name"]), label_of(spec), what, threshold, est, raw, final, controls, missing)


def run_tests(table: Table, specs: Iterable[Mapping[str, Any]], settings: VerdictSettings,
              maps: Mapping[Key, CEMResult] | None = None, tested: bool = True) -> list[TestOutcome]:
    """Every test of a list; ``tested=False`` reports the estimates without verdicts (an experiment's contrasts)."""
    out = []
    for spec in specs:
        if not tested:
            spec = {k: v for k, v in spec.items() if k not in ("supported_below", "supported_above", "controls")}
        out.append(run_test(table, spec, settings, maps))
    return out


def overall(outcomes: Sequence[TestOutcome]) -> str:
    """The claim's verdict over the tests this run could test: SUPPORTED only if every one is; NOT SUPPORTED if any
    test with power says so; NO POWER if none has power; INCONCLUSIVE otherwise; NOT TESTABLE if no test could run."""
    verdicts = [o.verdict for o in outcomes if o.verdict not in (REPORTED, NOT_TESTABLE)]
    if not verdicts:
        return NOT_TESTABLE if any(o.verdict == NOT_TESTABLE for o in outcomes) else INCONCLUSIVE
    if all(v == SUPPORTED for v in verdicts):
        return SUPPORTED
    if NOT_SUPPORTED in verdicts:
        return NOT_SUPPORTED
    if all(v == NO_POWER for v in verdicts):
        return NO_POWER
    return INCONCLUSIVE
