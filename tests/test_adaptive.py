"""The adaptive estimator: its stopping rule, and agreement with the fixed estimator."""

from __future__ import annotations

import numpy as np
import pytest

from cemap import ROI, CausalEffectMap, Fixed
from cemap.estimators import Adaptive, AdaptiveSettings, EstimatorSettings, make_estimator
from cemap.locality import LocalitySettings
from cemap.tasks import Denoise
from tests.conftest import conv_stack


def test_stopping_rule_on_synthetic_differences() -> None:
    est = Adaptive(target_se=0.1, n_min=4, n_max=64)
    rng = np.random.default_rng(0)
    sds = np.array([0.0, 0.05, 0.5, 5.0])
    stages = [rng.normal(1.0, sds[:, None], (4, 4))]
    for stage in range(1, 20):
        plan = est.plan(stage, 4, stages)
        if plan is None:
            break
        depth = int(plan.max())
        draws = np.full((4, depth), np.nan)
        for k in range(4):
            draws[k, : plan[k]] = rng.normal(1.0, sds[k], plan[k])
        stages.append(draws)
    result = est.estimate(stages)
    assert result.n[0] == 4 and result.n[1] == 4  # sd 0 and sd/sqrt(4) < target stop at n_min
    assert result.se[2] <= 0.1 and 4 < result.n[2] < 64  # sampled on until the target was reached
    assert result.n[3] == 64  # capped
    for i in range(1, len(stages)):  # growth is at most doubling
        n_before = np.sum(~np.isnan(np.concatenate(stages[:i], axis=1)), axis=1)
        assert np.all(np.sum(~np.isnan(stages[i]), axis=1) <= n_before)


def test_adaptive_agrees_with_fixed_within_standard_errors(small_image, small_bank) -> None:
    cem = CausalEffectMap(conv_stack(3, claims_radius=3), Denoise(sigma=25.0), device="cpu", batch_size=16)
    roi = ROI(24, 16, 8)
    adaptive = cem.attribute(small_image, roi, 8, Adaptive(target_se=0.05, n_min=4, n_max=40), patches=small_bank)
    fixed = cem.attribute(small_image, roi, 8, Fixed(n_samples=40), patches=small_bank)
    both = np.isfinite(adaptive.se) & np.isfinite(fixed.se) & (fixed.n > 0)
    gap = np.abs(adaptive.effects - fixed.effects)[both]
    bound = 4 * np.sqrt(adaptive.se**2 + fixed.se**2)[both] + 1e-12
    assert np.all(gap <= bound), (gap, bound)
    assert adaptive.n[both].sum() < fixed.n[both].sum()  # stops early where the SE allows
    capped = adaptive.n == 40
    assert np.all(adaptive.se[both & ~capped] <= 0.05)


def test_adaptive_is_reproducible_and_batch_invariant(small_image, small_bank) -> None:
    est = Adaptive(target_se=0.05, n_min=3, n_max=12)
    a = CausalEffectMap(conv_stack(2), Denoise(sigma=25.0), device="cpu", batch_size=1,
                        locality=LocalitySettings(mode="off")).attribute(small_image, ROI(0, 0, 8), 8, est, patches=small_bank)
    b = CausalEffectMap(conv_stack(2), Denoise(sigma=25.0), device="cpu", batch_size=13).attribute(
        small_image, ROI(0, 0, 8), 8, est, patches=small_bank)
    assert np.array_equal(a.effects, b.effects) and np.array_equal(a.n, b.n)


def test_settings_and_validation() -> None:
    est = make_estimator("adaptive", EstimatorSettings(n_samples=100, adaptive=AdaptiveSettings(target_se=0.01, n_min=5)))
    assert est == Adaptive(target_se=0.01, n_min=5, n_max=100)
    assert make_estimator("fixed", n_samples=7) == Fixed(n_samples=7)
    with pytest.raises(ValueError, match="target_se"):
        Adaptive(target_se=0.0)
    with pytest.raises(ValueError, match="n_min"):
        Adaptive(n_min=10, n_max=5)
