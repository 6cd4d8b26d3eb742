"""Images that need no download: the colour photographs shipped inside scikit-image, with a fixed split.

Test images are never used for training or for patch banks, so a map measured on them is not contaminated by
interventions cut from the very image being explained.

| split | images |
|---|---|
| train | astronaut, hubble_deep_field, immunohistochemistry, retina |
| test  | chelsea, coffee, rocket, motorcycle (left view of ``stereo_motorcycle``) |
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from cemap.imageio import read_image, to_rgb8
from cemap.patches import PatchBank

EMBEDDED_TRAIN: tuple[str, ...] = ("astronaut", "hubble_deep_field", "immunohistochemistry", "retina")
EMBEDDED_TEST: tuple[str, ...] = ("chelsea", "coffee", "rocket", "motorcycle")
EMBEDDED_PREFIX = "embedded:"


def embedded_image(name: str) -> np.ndarray:
    """One embedded image as H x W x 3 uint8, loaded from scikit-image's wheel (never through pooch)."""
    from skimage import data as skdata

    if name not in EMBEDDED_TRAIN + EMBEDDED_TEST:
        raise ValueError(f"unknown embedded image {name!r}; choose one of {sorted(EMBEDDED_TRAIN + EMBEDDED_TEST)}")
    image = skdata.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skdata, name)()
    return to_rgb8(image, what=name)


def embedded_split(split: str) -> dict[str, np.ndarray]:
    names = {"train": EMBEDDED_TRAIN, "test": EMBEDDED_TEST}.get(split)
    if names is None:
        raise ValueError(f"split={split!r}; choose train or test")
    return {n: embedded_image(n) for n in names}


def load_image(spec: str | Path) -> tuple[np.ndarray, str]:
    """An image and a short name for it, from ``embedded:<name>`` or a file path."""
    s = str(spec)
    if s.startswith(EMBEDDED_PREFIX):
        name = s[len(EMBEDDED_PREFIX) :]
        return embedded_image(name), name
    return read_image(s), Path(s).stem


def center_crop(image: np.ndarray, size: int | None, multiple: int = 1) -> np.ndarray:
    """The central ``size`` x ``size`` crop (the whole image when ``size`` is None), trimmed to a ``multiple``."""
    h, w = image.shape[:2]
    if size is not None:
        if size > min(h, w):
            raise ValueError(f"crop size {size} exceeds the {h}x{w} image")
        y, x = (h - size) // 2, (w - size) // 2
        image = image[y : y + size, x : x + size]
        h = w = size
    return image[: h - h % multiple, : w - w % multiple]


@lru_cache(maxsize=8)
def default_patch_bank(patch_size: int = 8, n_patches: int = 10_000, seed: int = 0) -> PatchBank:
    """Seeded random crops of the embedded training split: the default intervention pool, built in under a second."""
    return PatchBank.from_images(
        embedded_split("train").values(), n_patches, patch_size, seed, source=f"embedded-train:p{patch_size}:n{n_patches}:s{seed}"
    )


def patch_bank_from_config(source: str, block_size: int, path: str | None = None, n_patches: int = 10_000,
                           seed: int = 0, min_sharpness: float = 0.0) -> PatchBank:
    """The intervention pool named by the ``patches`` config group (see ``cemap.config.PatchesConfig``)."""
    builders = {
        "embedded": lambda: default_patch_bank(block_size, n_patches, seed) if min_sharpness == 0 else PatchBank.from_images(
            embedded_split("train").values(), n_patches, block_size, seed, min_sharpness, source="embedded-train"),
        "npz": lambda: PatchBank.load(_required(path, "npz")),
        "folder": lambda: PatchBank.from_folder(_required(path, "folder"), n_patches, block_size, seed, min_sharpness),
    }
    if source not in builders:
        raise ValueError(f"patches.source={source!r}; choose one of {sorted(builders)}")
    return builders[source]()


def _required(path: str | None, source: str) -> str:
    if not path:
        raise ValueError(f"patches.source={source} needs patches.path")
    return path
