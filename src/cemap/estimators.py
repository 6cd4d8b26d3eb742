"""How many interventions each block gets, and how its effect and uncertainty are estimated from them.

An estimator works in stages. Before each stage it plans a number of fresh draws per block from what earlier stages
measured; the engine runs them; afterwards the estimator turns all samples into effects. The draws of stage ``s`` for
block ``k`` come from a generator seeded by (seed, s, k) alone, so they are the same whichever model runs (common
random numbers) and however the work is batched or sharded.

Samples are "differences" ``d = O - Y`` oriented so that positive means the block's real content helps: ``O`` is the
ROI metric of the unmodified input, ``Y`` that of one intervention (signs flip for lower-is-better metrics).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from typing import Any

import numpy as np

from cemap.results import STATUS_ESTIMATED, STATUS_SCREENED
from cemap.validation import SettingError, check_number


@dataclass(frozen=True)
class Estimate:
    effects: np.ndarray
    se: np.ndarray
    n: np.ndarray
    status: np.ndarray


def _mean_se(d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row-wise mean, standard error (NaN below 2 samples) and count of the non-NaN entries of ``d``."""
    n = np.sum(~np.isnan(d), axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, np.nansum(d, axis=1) / np.maximum(n, 1), 0.0)
        var = np.nansum((d - mean[:, None]) ** 2, axis=1) / np.maximum(n - 1, 1)
        se = np.where(n > 1, np.sqrt(var / np.maximum(n, 1)), np.nan)
    return mean, se, n


@dataclass
class ReferenceSettings:
    """``cem.reference``: draws per block in the coarse screening stage."""

    n_coarse: int = 3


@dataclass
class AdaptiveSettings:
    """``cem.adaptive``: the standard error (dB) at which a block stops, and the draws every block gets first."""

    target_se: float = 0.005
    n_min: int = 8


@dataclass
class EstimatorSettings:
    """The ``cem.*`` values estimators are built from. Shared, flat: ``n_samples``, the most draws one block's effect
    averages (all of them for ``fixed``, the fine stage for ``reference``, the cap for ``adaptive``), and the
    significance rule ``tol`` / ``z``. Each estimator's own settings sit in its node (``cem.reference``,
    ``cem.adaptive``; ``fixed`` has none), so a new estimator adds a node instead of flat fields. The run config's
    ``cem`` node extends this class, so the two never drift apart."""

    n_samples: int = 50
    tol: float = 0.01
    z: float = 1.96
    reference: ReferenceSettings = field(default_factory=ReferenceSettings)
    adaptive: AdaptiveSettings = field(default_factory=AdaptiveSettings)

    @classmethod
    def from_mapping(cls, node: Mapping[str, Any]) -> EstimatorSettings:
        """The estimator part of a run's ``cem`` config node (its other keys are ignored)."""
        defaults = cls()
        values = {}
        for item in fields(cls):
            default, value = getattr(defaults, item.name), node[item.name]
            values[item.name] = type(default)(**value) if is_dataclass(default) else value
        return cls(**values)


@dataclass(frozen=True)
class Estimator(ABC):
    """Common settings: ``tol`` (dB) is the smallest effect worth calling non-zero; ``z`` the critical value of the
    significance test ``|effect| >= max(tol, z * SE)``."""

    tol: float = 0.01
    z: float = 1.96

    def _check_common(self) -> None:
        check_number("cem.tol", self.tol, 0.0)
        check_number("cem.z", self.z, 0.0)

    name = "estimator"

    @abstractmethod
    def plan(self, stage: int, n_blocks: int, differences: list[np.ndarray]) -> np.ndarray | None:
        """Draws per block for ``stage`` given the earlier stages' differences, or None when sampling is finished."""

    @abstractmethod
    def estimate(self, differences: list[np.ndarray]) -> Estimate:
        """Effects, standard errors, sample counts and status per block (flattened grid)."""

    def significant(self, effects: np.ndarray, se: np.ndarray) -> np.ndarray:
        threshold = np.maximum(self.tol, self.z * np.nan_to_num(se, nan=0.0))
        return (np.abs(effects) >= threshold) & (effects != 0)

    def describe(self) -> dict[str, object]:
        return {"name": self.name, **asdict(self)}

    @classmethod
    @abstractmethod
    def from_settings(cls, settings: EstimatorSettings) -> Estimator:
        """Build from the ``cem.*`` config values (the shared ones and this estimator's node)."""


@dataclass(frozen=True)
class Reference(Estimator):
    """The paper's coarse-to-fine rule, kept for parity with the authors' maps.

    Stage 0 draws ``n_coarse`` interventions per block. A block whose largest ``|O - Y_k|`` reaches ``tol`` gets
    ``n_fine`` fresh draws in stage 1 and its effect is their mean (coarse and fine are not pooled); every other block
    is screened: effect 0, no standard error. Screening saves forwards but can miss small effects that the coarse draws
    happen not to show; the ``fixed`` estimator has no such blind spot.
    """

    n_coarse: int = 3
    n_fine: int = 50

    name = "reference"

    @classmethod
    def from_settings(cls, settings: EstimatorSettings) -> Reference:
        return cls(tol=settings.tol, z=settings.z, n_coarse=settings.reference.n_coarse, n_fine=settings.n_samples)

    def __post_init__(self) -> None:
        self._check_common()
        if self.n_coarse < 1 or self.n_fine < 1:
            raise SettingError(f"reference estimator needs n_coarse >= 1 and n_fine >= 1, got {self.n_coarse}, {self.n_fine}")

    def plan(self, stage: int, n_blocks: int, differences: list[np.ndarray]) -> np.ndarray | None:
        if stage == 0:
            return np.full(n_blocks, self.n_coarse, dtype=np.int64)
        if stage == 1:
            return np.where(self._needs_fine(differences[0]), self.n_fine, 0).astype(np.int64)
        return None

    def _needs_fine(self, coarse: np.ndarray) -> np.ndarray:
        return np.nanmax(np.abs(coarse), axis=1, initial=0.0) >= self.tol

    def estimate(self, differences: list[np.ndarray]) -> Estimate:
        coarse, fine = differences[0], differences[1]
        mean, se, n = _mean_se(fine)
        refined = self._needs_fine(coarse)
        effects = np.where(refined, mean, 0.0)
        se = np.where(refined, se, np.nan)
        n = np.where(refined, n, 0)
        status = np.where(refined, STATUS_ESTIMATED, STATUS_SCREENED).astype(np.uint8)
        return Estimate(effects, se, n, status)


@dataclass(frozen=True)
class Fixed(Estimator):
    """``n_samples`` draws for every block, averaged, with the standard error of the mean."""

    n_samples: int = 50

    name = "fixed"

    @classmethod
    def from_settings(cls, settings: EstimatorSettings) -> Fixed:
        return cls(tol=settings.tol, z=settings.z, n_samples=settings.n_samples)

    def __post_init__(self) -> None:
        self._check_common()
        if self.n_samples < 1:
            raise SettingError(f"fixed estimator needs n_samples >= 1, got {self.n_samples}")

    def plan(self, stage: int, n_blocks: int, differences: list[np.ndarray]) -> np.ndarray | None:
        return np.full(n_blocks, self.n_samples, dtype=np.int64) if stage == 0 else None

    def estimate(self, differences: list[np.ndarray]) -> Estimate:
        mean, se, n = _mean_se(differences[0])
        return Estimate(mean, se, n, np.full(mean.shape, STATUS_ESTIMATED, dtype=np.uint8))


@dataclass(frozen=True)
class Adaptive(Estimator):
    """Sequential sampling per block until its standard error reaches ``target_se`` or it has ``n_max`` draws.

    Stopping rule, checked after every stage on all draws of the block so far (stages are pooled):

    1. stage 0 draws ``n_min`` interventions for every block;
    2. a block stops once ``SE = sd / sqrt(n) <= target_se`` (this includes ``sd = 0``: all draws gave the same
       score, as for blocks a local model cannot see) or ``n >= n_max``;
    3. otherwise its next total is the sample size its current ``sd`` asks for, ``ceil((sd / target_se)^2)``, but at
       least one more draw and at most double the current count (so one noisy ``sd`` estimate cannot overshoot), and
       never beyond ``n_max``.

    Effects are the mean over all draws with the usual SE. Stopping on the observed SE makes that SE slightly
    optimistic for blocks that stopped early (optional stopping); ``n_min`` bounds the effect. Blocks capped at
    ``n_max`` keep an SE above the target, and ``describe()`` of a result says how many did (``n == n_max``).
    """

    target_se: float = 0.005
    n_min: int = 8
    n_max: int = 200

    name = "adaptive"

    @classmethod
    def from_settings(cls, settings: EstimatorSettings) -> Adaptive:
        own = settings.adaptive
        return cls(tol=settings.tol, z=settings.z, target_se=own.target_se, n_min=own.n_min, n_max=settings.n_samples)

    def __post_init__(self) -> None:
        self._check_common()
        check_number("cem.adaptive.target_se", self.target_se, 0.0, strict=True)
        if not 2 <= self.n_min <= self.n_max:
            raise SettingError(f"adaptive estimator needs 2 <= n_min <= n_max, got n_min={self.n_min}, n_max={self.n_max}")

    def plan(self, stage: int, n_blocks: int, differences: list[np.ndarray]) -> np.ndarray | None:
        if stage == 0:
            return np.full(n_blocks, self.n_min, dtype=np.int64)
        _, se, n = _mean_se(np.concatenate(differences, axis=1))
        sd = np.nan_to_num(se, nan=0.0) * np.sqrt(n)
        active = (n > 0) & (n < self.n_max) & (np.nan_to_num(se, nan=0.0) > self.target_se)
        if not active.any():
            return None
        wanted = np.ceil((sd / self.target_se) ** 2)
        total = np.minimum(np.clip(wanted, n + 1, 2 * n), self.n_max)
        return np.where(active, total - n, 0).astype(np.int64)

    def estimate(self, differences: list[np.ndarray]) -> Estimate:
        mean, se, n = _mean_se(np.concatenate(differences, axis=1))
        return Estimate(mean, se, n, np.full(mean.shape, STATUS_ESTIMATED, dtype=np.uint8))


ESTIMATORS: dict[str, type[Estimator]] = {"reference": Reference, "fixed": Fixed, "adaptive": Adaptive}


def make_estimator(name: str, settings: EstimatorSettings | None = None, **values: float) -> Estimator:
    """Build an estimator from the ``cem.*`` config (see ``EstimatorSettings``); ``values`` override single shared
    settings, e.g. ``make_estimator("fixed", n_samples=8)``."""
    if name not in ESTIMATORS:
        raise SettingError(f"unknown estimator {name!r}; choose one of {sorted(ESTIMATORS)}")
    settings = replace(settings or EstimatorSettings(), **values)
    return ESTIMATORS[name].from_settings(settings)
