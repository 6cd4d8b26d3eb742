"""The verdict module against hand-computed values: a tiny table of maps with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cemap.results import STATUS_ESTIMATED, STATUS_STRUCTURAL_ZERO, CEMResult
from cemap.stats import far_excess_power, map_statistics
from cemap.validation import SettingError
from cemap.verdicts import (INCONCLUSIVE, NO_POWER, NOT_SUPPORTED, NOT_TESTABLE, REPORTED, SUPPORTED, Estimate,
                            TestOutcome, VerdictSettings, cluster_matrix, decide, estimate, overall, photograph,
                            run_test, run_tests)

SETTINGS = VerdictSettings(n_boot=500)


def table_of(subject: str, crop_values: dict[str, list[float]], stat: str = "s") -> dict:
    """One row per (crop, ROI): ``crop_values`` maps a crop name to its ROIs' values."""
    return {(subject, crop, roi): {stat: v} for crop, values in crop_values.items() for roi, v in enumerate(values)}


def pooled(below: float | None = None, above: float | None = None, subjects: tuple[str, ...] = ("m",), **extra) -> dict:
    return {"name": "t", "statistic": "s", "subjects": list(subjects), "supported_below": below,
            "supported_above": above, **extra}


def test_point_estimate_averages_rois_within_a_crop_first() -> None:
    # crop A: ROIs 0, 0.3, 0.6 (mean 0.3); crop B: one ROI 0.1 -> 0.2 over crops (0.25 over maps would be wrong)
    out = run_test(table_of("m", {"A": [0.0, 0.3, 0.6], "B": [0.1]}), pooled(below=1.0), SETTINGS)
    assert out.estimate.mean == pytest.approx(0.2)
    assert (out.estimate.n_clusters, out.estimate.n_maps) == (2, 4)
    assert 0.1 <= out.estimate.low <= 0.2 <= out.estimate.high <= 0.3  # inside the range of the cluster means


def test_interval_wholly_below_or_above_the_threshold() -> None:
    table = table_of("m", {c: [v] * 3 for c, v in zip("ABCD", (0.01, 0.02, 0.03, 0.04))})
    assert run_test(table, pooled(below=0.10), SETTINGS).verdict == SUPPORTED
    assert run_test(table, pooled(below=0.005), SETTINGS).verdict == NOT_SUPPORTED
    assert run_test(table, pooled(above=0.005), SETTINGS).verdict == SUPPORTED
    assert run_test(table, pooled(above=0.10), SETTINGS).verdict == NOT_SUPPORTED


def test_straddling_interval_is_inconclusive() -> None:
    # bootstrap means of {0, 0.2} over 4 crops take 0, .05, ..., .2 with binomial weights: 2.5% <= .05, 97.5% >= .15
    table = table_of("m", {"A": [0.0], "B": [0.2], "C": [0.0], "D": [0.2]})
    out = run_test(table, pooled(below=0.1), SETTINGS)
    assert out.estimate.mean == pytest.approx(0.1)
    assert out.estimate.low <= 0.05 and out.estimate.high >= 0.15
    assert out.verdict == INCONCLUSIVE


def test_one_image_and_nans() -> None:
    one = run_test(table_of("m", {"A": [0.01, 0.02]}), pooled(below=0.1), SETTINGS)
    assert one.estimate.mean == pytest.approx(0.015) and math.isnan(one.estimate.low) and one.verdict == INCONCLUSIVE
    with_nan = run_test(table_of("m", {"A": [0.01], "B": [float("nan")], "C": [0.03]}), pooled(below=0.1), SETTINGS)
    assert with_nan.estimate.n_clusters == 2 and with_nan.estimate.mean == pytest.approx(0.02)
    empty = run_test(table_of("m", {"A": [float("nan")]}), pooled(below=0.1), SETTINGS)
    assert empty.estimate.n_clusters == 0 and empty.verdict == INCONCLUSIVE


def test_constant_values_give_a_zero_width_interval() -> None:
    out = run_test(table_of("m", {c: [0.0, 0.0, 0.0] for c in "ABC"}), pooled(below=0.1), SETTINGS)
    assert (out.estimate.low, out.estimate.mean, out.estimate.high) == (0.0, 0.0, 0.0)
    assert out.verdict == SUPPORTED and out.estimate.half_width == 0.0


def test_fractions_keep_their_interval_inside_zero_one() -> None:
    rng = np.random.default_rng(1)
    table = table_of("m", {f"c{i}": list(rng.choice([0.0, 1.0], 3)) for i in range(6)})
    out = run_test(table, pooled(below=0.5), SETTINGS)
    assert 0.0 <= out.estimate.low <= out.estimate.mean <= out.estimate.high <= 1.0


def test_paired_differences_and_between_seed_spread() -> None:
    # seed 0: a - b = 0.3 on both crops; seed 1: a - b = 0.1 -> mean 0.2, spread sd(0.3, 0.1) = 0.1414
    table = {**table_of("a0", {"A": [1.3], "B": [2.3]}), **table_of("b0", {"A": [1.0], "B": [2.0]}),
             **table_of("a1", {"A": [1.1], "B": [2.1]}), **table_of("b1", {"A": [1.0], "B": [2.0]}),
             **table_of("b1", {"C": [5.0]})}  # a crop only one side of a pair has is left out
    spec = {"name": "ca", "statistic": "s", "pairs": [["a0", "b0"], ["a1", "b1"]], "supported_below": 0.5}
    out = run_test(table, spec, SETTINGS)
    assert out.estimate.mean == pytest.approx(0.2)
    assert out.estimate.replicate_means == pytest.approx([0.3, 0.1])
    assert out.estimate.replicate_spread == pytest.approx(math.sqrt(0.02))
    assert 0.1 - 1e-12 <= out.estimate.low and out.estimate.high <= 0.3 + 1e-12  # seeds resampled: the spread shows
    assert out.verdict == SUPPORTED and out.what == "a0 - b0; a1 - b1"
    absolute = run_test(table, {**spec, "pairs": [["b0", "a0"]], "abs": True}, SETTINGS)
    assert absolute.estimate.mean == pytest.approx(0.3)


def test_photograph_clusters_merge_crops_of_one_photo() -> None:
    assert photograph("coffee@y0x128") == "coffee" and photograph("chelsea") == "chelsea"
    values = [{("coffee@y0x0", 0): 1.0, ("coffee@y0x128", 0): 3.0, ("rocket@y0x0", 0): 5.0}]
    by_crop, n = cluster_matrix(values, "crop")
    by_photo, _ = cluster_matrix(values, "photograph")
    assert n == 3 and by_crop.shape == (1, 3) and by_photo.tolist() == [[2.0, 5.0]]
    with pytest.raises(ValueError, match="cluster"):
        VerdictSettings(cluster="roi")


def test_controls_decide_whether_the_test_has_power() -> None:
    table = {**table_of("model", {c: [0.01] for c in "ABC"}), **table_of("local", {c: [0.0] for c in "ABC"}),
             **table_of("reach", {c: [0.5, 0.4] for c in "ABC"})}
    spec = pooled(below=0.1, subjects=("model",), controls={"positive": ["local"], "negative": ["reach"]})
    good = run_test(table, spec, SETTINGS)
    assert good.verdict == SUPPORTED and good.controls["negative"]["verdict"] == NOT_SUPPORTED
    assert good.controls["positive"]["passed"] and good.controls["negative"]["mean"] == pytest.approx(0.45)
    swapped = run_test(table, {**spec, "controls": {"positive": ["reach"], "negative": ["local"]}}, SETTINGS)
    assert swapped.raw_verdict == SUPPORTED and swapped.verdict == NO_POWER
    missing = run_test(table, {**spec, "controls": {"positive": ["local"], "negative": ["not_run"]}}, SETTINGS)
    assert missing.verdict == NO_POWER and missing.controls["negative"]["verdict"] == NOT_TESTABLE
    paired = {"name": "p", "statistic": "s", "pairs": [["model", "local"]], "supported_below": 0.1,
              "controls": {"positive": [["local", "local"]], "negative": [["reach", "local"]]}}
    assert run_test(table, paired, SETTINGS).verdict == SUPPORTED
    with pytest.raises(ValueError, match="control role"):
        run_test(table, {**spec, "controls": {"positve": ["local"]}}, SETTINGS)


def test_contrasts_are_reported_and_overall_rules() -> None:
    table = table_of("m", {c: [0.01] for c in "AB"})
    [contrast] = run_tests(table, [pooled(below=0.1)], SETTINGS, tested=False)
    assert contrast.verdict == REPORTED and contrast.threshold == "reported"

    def outcome(v: str) -> TestOutcome:
        return TestOutcome("t", "s", "m", "< 1", Estimate(0, 0, 0, 2, 2), v, v)

    assert overall([outcome(SUPPORTED), outcome(REPORTED)]) == SUPPORTED
    assert overall([outcome(SUPPORTED), outcome(NOT_SUPPORTED)]) == NOT_SUPPORTED
    assert overall([outcome(SUPPORTED), outcome(NO_POWER)]) == INCONCLUSIVE
    assert overall([outcome(NO_POWER), outcome(NO_POWER)]) == NO_POWER
    assert overall([outcome(REPORTED)]) == INCONCLUSIVE
    assert decide(0.2, 0.3, None, 0.2) == INCONCLUSIVE and decide(0.21, 0.3, None, 0.2) == SUPPORTED
    with pytest.raises(ValueError):
        decide(0.0, 1.0, None, None)


def test_bootstrap_is_seeded() -> None:
    m = np.array([[0.1, 0.5, 0.2, 0.9, 0.3]])
    a, b = estimate(m, 5, SETTINGS), estimate(m, 5, SETTINGS)
    c = estimate(m, 5, VerdictSettings(n_boot=500, seed=1))
    assert (a.low, a.high) == (b.low, b.high) and (a.low, a.high) != (c.low, c.high)


def synthetic_map(effects: np.ndarray, se: np.ndarray, status: np.ndarray | None = None) -> CEMResult:
    """A 4 x 4 grid of 8 px blocks with the ROI on block (0, 0)."""
    roi = np.zeros((4, 4), bool)
    roi[0, 0] = True
    return CEMResult(effects=effects, se=se, n=np.full((4, 4), 8), forwards=np.full((4, 4), 8),
                     significant=np.abs(effects) > 2 * np.nan_to_num(se), roi_mask=roi, origin=30.0,
                     status=np.full((4, 4), STATUS_ESTIMATED, np.uint8) if status is None else status,
                     meta={"roi": {"x": 0, "y": 0, "size": 8}, "block_size": 8, "image_size": [32, 32]})


def test_far_excess_power_removes_the_estimator_noise() -> None:
    # far = blocks more than 8 px from the ROI block (0, 0): the 12 with row >= 2 or col >= 2
    effects = np.full((4, 4), 0.02)
    se = np.full((4, 4), 0.02)
    assert far_excess_power(synthetic_map(effects, se), 8) == pytest.approx(0.0)  # pure noise: 0.02^2 - 0.02^2
    effects[2:, :] = 0.05  # 8 far blocks with 0.05^2 - 0.02^2 = 0.0021, 4 far blocks with 0
    assert far_excess_power(synthetic_map(effects, se), 8) == pytest.approx(8 * 0.0021 / 12)
    status = np.full((4, 4), STATUS_STRUCTURAL_ZERO, np.uint8)
    zero = synthetic_map(np.zeros((4, 4)), np.zeros((4, 4)), status)
    stats = map_statistics(zero, 8)
    assert stats["far_excess_power"] == 0.0 and stats["far_rms_effect"] == 0.0 and stats["far_mass_fraction"] == 0.0
    assert math.isnan(far_excess_power(synthetic_map(effects, np.full((4, 4), np.nan)), 8))


def test_psnr_only_maps_have_psnrs_and_no_map_statistics() -> None:
    from cemap.results import STATUS_NOT_COMPUTED

    status = np.full((4, 4), STATUS_NOT_COMPUTED, np.uint8)
    result = synthetic_map(np.full((4, 4), np.nan), np.full((4, 4), np.nan), status)
    result.meta["image_psnr"] = 29.5
    stats = map_statistics(result, 8)
    assert stats["origin_psnr"] == 30.0 and stats["image_psnr"] == 29.5
    assert math.isnan(stats["far_mass_fraction"]) and math.isnan(stats["n_negative"])


def test_every_statistic_has_a_unit_and_a_glossary_entry() -> None:
    from cemap.stats import STATISTIC_GLOSSARY, STATISTIC_UNITS, Statistic

    assert {s.value for s in Statistic} == set(STATISTIC_UNITS) == set(STATISTIC_GLOSSARY)


def test_report_numbers_have_the_precision_of_their_unit() -> None:
    from cemap.report import fmt_interval, fmt_value

    assert fmt_value(0.008, "share") == "0.8%" and fmt_value(0.0, "share") == "0%" and fmt_value(0.43, "share") == "43.0%"
    assert fmt_value(25.98765, "dB") == "25.99" and fmt_value(0.0035, "dB") == "0.0035"
    assert fmt_value(9.4e-4, "dB^2") == "9.4e-04" and fmt_value(0.0052, "dB^2") == "0.0052"
    assert fmt_value(float("nan"), "dB") == "\u2013"
    est = Estimate(0.008, 0.003, 0.013, 12, 36)
    assert fmt_interval(est, "far_mass_fraction") == "0.8% [0.3%, 1.3%]"


def test_a_test_without_any_maps_is_not_testable_and_names_what_is_missing() -> None:
    table = {**table_of("model", {c: [0.01] for c in "ABC"}), **table_of("local", {c: [0.0] for c in "ABC"}),
             **table_of("reach", {c: [0.5, 0.4] for c in "ABC"})}
    controls = {"positive": ["local"], "negative": ["reach"]}
    absent = run_test(table, pooled(below=0.1, subjects=("no_such_model",), controls=controls), SETTINGS)
    assert absent.verdict == NOT_TESTABLE and absent.missing == ["no_such_model"] and absent.what == "no maps"
    partial = run_test(table, pooled(below=0.1, subjects=("model", "no_such_model"), controls=controls), SETTINGS)
    assert partial.verdict == SUPPORTED and partial.what == "model" and partial.missing == ["no_such_model"]
    assert overall([absent]) == NOT_TESTABLE and overall([absent, partial]) == SUPPORTED


def test_a_role_played_by_another_model_names_that_model_in_the_tables() -> None:
    from types import SimpleNamespace

    from cemap.report import model_label

    a = SimpleNamespace(experiment={"played_by": {"sr_fsrcnn_m2": "b_sr_fsrcnn_m4"}})
    assert model_label(a, "sr_fsrcnn_m2") == "sr_fsrcnn_m2 (played by b_sr_fsrcnn_m4)"  # type: ignore[arg-type]
    assert model_label(a, "sr_fsrcnn_m8") == "sr_fsrcnn_m8"  # type: ignore[arg-type]


def test_a_series_reports_the_slope_over_a_sweeps_models() -> None:
    # x (the models' receptive radius) 8, 11, 12. Crop A: y = x - 6 -> slope 1; crop B: y constant -> 0; crop C's ROIs
    # give slopes 1 and 0 -> 0.5; crop D has one model only -> no slope. Mean over crops (1 + 0 + 0.5) / 3 = 0.5
    ys = {"m8": {"A": [2.0], "B": [1.0], "C": [0.0, 0.0], "D": [3.0]},
          "m11": {"A": [5.0], "B": [1.0], "C": [3.0, 0.0]},
          "m12": {"A": [6.0], "B": [1.0], "C": [4.0, 0.0]}}
    x = {"m8": 8.0, "m11": 11.0, "m12": 12.0}
    table = {(m, crop, roi): {"s": y, "x": x[m]} for m, crops in ys.items() for crop, values in crops.items()
             for roi, y in enumerate(values)}
    spec = {"name": "trend", "statistic": "s", "against": "x", "series": [["m8", "m11", "m12", "absent"]]}
    out = run_test(table, spec, SETTINGS)
    assert out.verdict == REPORTED and out.statistic == "s/x"
    assert out.estimate.mean == pytest.approx(0.5) and out.estimate.n_clusters == 3
    assert 0.0 <= out.estimate.low <= 0.5 <= out.estimate.high <= 1.0
    assert out.what == "trend over m8, m11, m12" and out.missing == ["absent"]
    two = run_test(table, {**spec, "series": [["m8", "m11"]]}, SETTINGS)  # two points: the slope (y11 - y8) / 3
    assert two.estimate.mean == pytest.approx((1.0 + 0.0 + 0.5) / 3) and two.missing == []
    none = run_test(table, {**spec, "series": [["absent", "gone"]]}, SETTINGS)
    assert none.verdict == REPORTED and none.estimate.n_clusters == 0 and none.missing == ["absent", "gone"]
    with pytest.raises(SettingError, match="against"):
        run_test(table, {**spec, "against": None}, SETTINGS)


def test_slope_needs_two_distinct_x() -> None:
    from cemap.verdicts import slope

    assert slope(np.array([1.0, 3.0]), np.array([0.0, 1.0])) == pytest.approx(0.5)
    assert math.isnan(slope(np.array([2.0, 2.0]), np.array([0.0, 1.0])))
    assert math.isnan(slope(np.array([2.0, np.nan]), np.array([0.0, 1.0])))
