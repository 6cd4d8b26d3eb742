"""Embedded data: loads without any network, fixed disjoint split, default patch bank."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from cemap import data


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_embedded_images_load_offline(no_network: None) -> None:
    for name in data.EMBEDDED_TRAIN + data.EMBEDDED_TEST:
        img = data.embedded_image(name)
        assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8 and min(img.shape[:2]) >= 256


def test_gray_training_photographs_load_offline_as_rgb(no_network: None) -> None:
    for name in data.EMBEDDED_TRAIN_GRAY:
        img = data.embedded_image(name)
        assert img.shape[2] == 3 and img.dtype == np.uint8 and min(img.shape[:2]) >= 128
        assert np.array_equal(img[..., 0], img[..., 2])


def test_split_is_disjoint() -> None:
    assert not (set(data.EMBEDDED_TRAIN) | set(data.EMBEDDED_TRAIN_GRAY)) & (set(data.EMBEDDED_TEST) | set(data.EXTRA_TEST))
    assert len(data.EMBEDDED_TEST) >= 4


def test_default_bank_is_seeded_from_training_images(no_network: None) -> None:
    data.default_patch_bank.cache_clear()
    a = data.default_patch_bank(8, 500, 0)
    data.default_patch_bank.cache_clear()
    b = data.default_patch_bank(8, 500, 0)
    assert np.array_equal(a.patches, b.patches) and len(a) == 500 and "embedded-train" in a.source


def test_load_image_spec_and_crop() -> None:
    img, name = data.load_image("embedded:chelsea")
    assert name == "chelsea"
    crop = data.center_crop(img, 63, multiple=4)
    assert crop.shape == (60, 60, 3)


def test_facade_homography_maps_the_moved_corners_back() -> None:
    """The projective map takes the image's (moved) corners to the pattern's unit square: receding panels."""
    rng = np.random.default_rng(3)
    h = data._random_homography(rng, tilt=0.3)
    rng = np.random.default_rng(3)
    moved = np.array([[0, 0], [1, 0], [1, 1], [0, 1]]) + rng.uniform(-0.3, 0.3, (4, 2))
    mapped = (h @ np.c_[moved, np.ones(4)].T).T
    np.testing.assert_allclose(mapped[:, :2] / mapped[:, 2:], [[0, 0], [1, 0], [1, 1], [0, 1]], atol=1e-9)


def test_facades_are_seeded_high_contrast_and_periodic() -> None:
    """Seeded like dead leaves; two-colour panels with clear contrast; regular structure: a row's autocorrelation
    climbs back after its first dip (a period), which it does far less in dead-leaves images of the same size."""
    a = list(data.FacadeSet(n_images=3, size=96, seed=2))
    b = list(data.FacadeSet(n_images=3, size=96, seed=2))
    assert [n for n, _ in a] == ["facade_2_0", "facade_2_1", "facade_2_2"]
    assert all(np.array_equal(x, y) for (_, x), (_, y) in zip(a, b))
    assert a[0][1].shape == (96, 96, 3) and a[0][1].dtype == np.uint8
    assert not np.array_equal(a[0][1], a[1][1])

    def periodicity(image: np.ndarray) -> float:
        """Mean over rows of how far the autocorrelation climbs back above its running minimum (0: no period)."""
        rows = image.mean(axis=2) - image.mean(axis=2).mean(axis=1, keepdims=True)
        ac = np.array([np.fft.irfft(np.abs(np.fft.rfft(r, 2 * len(r))) ** 2)[: len(r) // 2] for r in rows])
        ac = ac[ac[:, 0] > 0] / ac[ac[:, 0] > 0, :1]
        return float(np.mean((ac - np.minimum.accumulate(ac, axis=1)).max(axis=1)))

    facades = [im for _, im in data.FacadeSet(n_images=6, size=96, seed=0)]
    leaves = [data.dead_leaves(96, np.random.default_rng(i)) for i in range(6)]
    assert np.mean([im.std() for im in facades]) > 30
    assert np.mean([periodicity(im) for im in facades]) > 1.3 * np.mean([periodicity(im) for im in leaves])  # 0.55, 0.34


def test_facade_data_presets_add_facades_to_the_data_they_extend() -> None:
    from omegaconf import OmegaConf

    from cemap.config import compose_config

    sets = {}
    for preset in ("train_default", "train_facades", "train_extended", "train_extended_facades"):
        cfg = compose_config("training", ["model=edsr_bench_d4", "task=sr_x4", "train=bench_sr", f"data={preset}"])
        sets[preset] = OmegaConf.to_container(cfg.data.sets)
    facades = {"_target_": "cemap.data.FacadeSet", "n_images": 4, "size": 384, "seed": 0, "panels": 6, "tilt": 0.3}
    assert sets["train_facades"] == sets["train_default"] + [facades]
    assert sets["train_extended_facades"] == sets["train_extended"] + [facades]
    assert all(s.get("split") != "test" for s in sets["train_extended_facades"])
