"""Control models come out of a causal effect map as designed, and every insight test's controls give their designed
verdicts through the verdict module (the controls' sweep in small: 64 px crops of three test photographs, ROI 16 px,
8 px blocks, 4 draws). Measured pooled statistics, denoising: far mass 0 / 0.44 / 0.55 and negative mass
0.018 / 0.45 / 0.49 for control_local / _reach / _harm."""

from __future__ import annotations

from functools import lru_cache

import hydra
import numpy as np
import pytest
import torch

from cemap import ROI, CausalEffectMap, Fixed
from cemap.config import compose_config
from cemap.data import center_crop, default_patch_bank, embedded_image
from cemap.imageio import to_tensor
from cemap.models import build_model
from cemap.stats import map_statistics
from cemap.verdicts import VerdictSettings, run_test
from tests.conftest import REPO

IMAGES = ("chelsea", "coffee", "rocket")
INSIGHTS = ("dn_channel_attention", "dr_channel_attention", "sr_receptive_field", "mt_multitask_locality")


@lru_cache(maxsize=None)
def control_rows(subject: str) -> dict[tuple[str, str, int], dict[str, float]]:
    """Statistics of one control subject's maps on the three crops (local radius 8 px, as the tiny profile)."""
    cfg = compose_config("run", [f"subject={subject}"])
    model, task = build_model(cfg.model)[0], hydra.utils.instantiate(cfg.task)
    bank, rows = default_patch_bank(8), {}
    for name in IMAGES:
        clean = to_tensor(center_crop(embedded_image(name), 64, multiple=4))
        result = CausalEffectMap(model, task, device="cpu").attribute(
            clean, ROI(24, 24, 16), block_size=8, estimator=Fixed(n_samples=4), patches=bank)
        rows[(subject, name, 0)] = map_statistics(result, local_radius_px=8)
    return rows


def pooled(subject: str) -> dict[str, float]:
    rows = list(control_rows(subject).values())
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def test_negative_control_is_local_and_harmless() -> None:
    stats = pooled("ctl_dn_local")
    assert stats["far_mass_fraction"] == 0.0 and stats["far_excess_power"] == 0.0  # structural zeros beyond radius 3
    assert stats["negative_mass_fraction"] < 0.05  # measured 0.018: a filter rarely gains from a random neighbour
    assert stats["n_significant"] > 0  # it does use its neighbours


def test_planted_global_branch_reaches_far() -> None:
    assert pooled("ctl_dn_reach")["far_mass_fraction"] > 0.2
    assert pooled("ctl_sr_reach")["far_excess_power"] > 1e-3


def test_planted_off_centre_branch_makes_far_blocks_harmful() -> None:
    for subject in ("ctl_sr_harm",):
        stats = pooled(subject)
        assert stats["negative_mass_fraction"] > 0.2 and stats["n_negative"] >= 5, subject


@pytest.mark.parametrize("experiment", INSIGHTS)
def test_every_insight_test_has_controls_that_give_their_designed_verdicts(experiment: str) -> None:
    expected = compose_config("run", [f"experiment={experiment}"]).experiment.expected
    assert expected.tests
    for spec in expected.tests:
        assert set(spec.controls) == {"positive", "negative"}, spec.name
        needed = {s for items in spec.controls.values() for item in items
                  for s in ([item] if isinstance(item, str) else item)}
        table = {k: v for s in sorted(needed) for k, v in control_rows(s).items()}
        outcome = run_test(table, {**spec, "controls": dict(spec.controls)}, VerdictSettings(n_boot=500))
        for role, control in outcome.controls.items():
            assert control["passed"], f"{experiment} / {spec.name}: {role} control gave {control['verdict']}"


def test_control_declares_its_reach() -> None:
    local = build_model(compose_config("run", ["model=control_local"]).model)[0]
    reach = build_model(compose_config("run", ["model=control_reach"]).model)[0]
    sr = build_model(compose_config("run", ["model=control_sr_local"]).model)[0]
    assert local.info.receptive_radius == 3 and reach.info.receptive_radius is None
    assert sr.info.receptive_radius == 5 and sr.info.scale == 4
    with pytest.raises(ValueError, match="branch"):
        type(local)(branch="attention")
    x = torch.rand(1, 3, 20, 24)
    assert local(x).shape == x.shape and sr(x).shape == (1, 3, 80, 96)
    assert (REPO / "conf" / "model" / "control_sr_harm.yaml").is_file()
