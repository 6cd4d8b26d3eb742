"""Control models come out of a causal effect map as designed: the local filter has no far and almost no harmful effects,
the planted global branch reaches far, and off-centre it makes far blocks harmful (numbers from three test photos:
far mass 0 / 0.44 / 0.55 and negative mass 0.018 / 0.45 / 0.49 for control_local / _reach / _harm)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cemap import ROI, CausalEffectMap, Fixed
from cemap.analysis import map_statistics
from cemap.config import compose_config
from cemap.data import center_crop, default_patch_bank, embedded_image
from cemap.imageio import to_tensor
from cemap.run import build_model
from cemap.tasks import Denoise

IMAGES = ("chelsea", "coffee", "rocket")


def pooled(preset: str) -> dict[str, float]:
    """Mean statistics over three 64 px crops (ROI 16 px at the centre, 8 px blocks, 4 draws, local radius 8 px)."""
    model = build_model(compose_config("run", [f"model={preset}"]).model)[0]
    bank, rows = default_patch_bank(8), []
    for name in IMAGES:
        clean = to_tensor(center_crop(embedded_image(name), 64, multiple=4))
        result = CausalEffectMap(model, Denoise(sigma=50.0), device="cpu").attribute(
            clean, ROI(24, 24, 16), block_size=8, estimator=Fixed(n_samples=4), patches=bank)
        rows.append(map_statistics(result, local_radius_px=8))
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def test_negative_control_is_local_and_harmless() -> None:
    stats = pooled("control_local")
    assert stats["far_mass_fraction"] == 0.0  # exactly: blocks beyond its radius are structural zeros
    assert stats["negative_mass_fraction"] < 0.05  # measured 0.018: a filter rarely gains from a random neighbour
    assert stats["n_significant"] > 0  # it does use its neighbours


def test_planted_global_branch_reaches_far() -> None:
    assert pooled("control_reach")["far_mass_fraction"] > 0.2


def test_planted_off_centre_branch_makes_far_blocks_harmful() -> None:
    stats = pooled("control_harm")
    assert stats["negative_mass_fraction"] > 0.2 and stats["n_negative"] >= 5


def test_control_declares_its_reach() -> None:
    local = build_model(compose_config("run", ["model=control_local"]).model)[0]
    reach = build_model(compose_config("run", ["model=control_reach"]).model)[0]
    assert local.info.receptive_radius == 3 and reach.info.receptive_radius is None
    with pytest.raises(ValueError, match="branch"):
        type(local)(branch="attention")
    x = torch.rand(1, 3, 20, 24)
    assert local(x).shape == x.shape
