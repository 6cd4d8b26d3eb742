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
