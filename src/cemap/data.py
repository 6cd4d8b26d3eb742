"""Images that need no download: the colour photographs shipped inside scikit-image, with a fixed split.

Test images are never used for training or for patch banks, so a map measured on them is not contaminated by
interventions cut from the very image being explained.

| split | images |
|---|---|
| train | astronaut, hubble_deep_field, immunohistochemistry, retina |
| test  | chelsea, coffee, rocket, motorcycle (left view of ``stereo_motorcycle``) |
| extra test | grace_hopper (matplotlib's sample photograph; bench sweeps only, not in the zoo's evaluation set) |

An image spec ``embedded:<name>@y<Y>x<X>`` names the crop whose top-left corner is (Y, X), of the run's ``crop``
size; without ``@`` the crop is central.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from cemap.imageio import read_image, to_rgb8
from cemap.patches import IMAGE_SUFFIXES, PatchBank
from cemap.validation import SettingError

log = logging.getLogger(__name__)

EMBEDDED_TRAIN: tuple[str, ...] = ("astronaut", "hubble_deep_field", "immunohistochemistry", "retina")
EMBEDDED_TEST: tuple[str, ...] = ("chelsea", "coffee", "rocket", "motorcycle")
EMBEDDED_TRAIN_GRAY: tuple[str, ...] = ("brick", "camera", "clock", "coins", "grass", "gravel", "page")
"""scikit-image's bundled gray photographs (straight edges, man-made textures the colour split lacks), as RGB:
the ``train_gray`` split, for training only."""
EXTRA_TEST: tuple[str, ...] = ("grace_hopper",)
"""Photographs shipped by other installed packages, never used for training (matplotlib's sample data)."""
EMBEDDED_PREFIX = "embedded:"
CROP_AT = re.compile(r"^(?P<source>.+)@y(?P<y>\d+)x(?P<x>\d+)$")


def embedded_image(name: str) -> np.ndarray:
    """One embedded image as H x W x 3 uint8, loaded from scikit-image's wheel (never through pooch)."""
    from skimage import data as skdata

    known = EMBEDDED_TRAIN + EMBEDDED_TRAIN_GRAY + EMBEDDED_TEST + EXTRA_TEST
    if name not in known:
        raise SettingError(f"unknown embedded image {name!r}; choose one of {sorted(known)}")
    if name == "grace_hopper":
        import matplotlib.cbook

        return read_image(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    image = skdata.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skdata, name)()
    return to_rgb8(image, what=name)


SPLITS: dict[str, tuple[str, ...]] = {"train": EMBEDDED_TRAIN, "train_gray": EMBEDDED_TRAIN_GRAY, "test": EMBEDDED_TEST}


def split_names(split: str) -> tuple[str, ...]:
    if split not in SPLITS:
        raise SettingError(f"split={split!r}; choose one of {sorted(SPLITS)}")
    return SPLITS[split]


def embedded_split(split: str) -> dict[str, np.ndarray]:
    return {n: embedded_image(n) for n in split_names(split)}


def load_image(spec: str | Path, crop: int | None = None, multiple: int = 1) -> tuple[np.ndarray, str]:
    """An image and a short name for it, from ``embedded:<name>`` or a file path, cropped to ``crop`` (centrally,
    or at the corner an ``@y<Y>x<X>`` suffix gives; the name keeps the suffix) and trimmed to a ``multiple``."""
    s = str(spec)
    at = CROP_AT.match(s)
    source = at["source"] if at else s
    if source.startswith(EMBEDDED_PREFIX):
        name = source[len(EMBEDDED_PREFIX) :]
        image = embedded_image(name)
    else:
        image, name = read_image(source), Path(source).stem
    if at is None:
        return center_crop(image, crop, multiple), name
    return crop_at(image, crop, int(at["y"]), int(at["x"]), multiple), f"{name}@y{at['y']}x{at['x']}"


def crop_at(image: np.ndarray, size: int | None, y: int, x: int, multiple: int = 1) -> np.ndarray:
    """The ``size`` x ``size`` crop with top-left corner (y, x), trimmed to a ``multiple``; it must fit."""
    h, w = image.shape[:2]
    if size is None:
        raise SettingError("an image spec with @y<Y>x<X> needs crop=<size>")
    if y + size > h or x + size > w:
        raise SettingError(f"crop {size} at (y={y}, x={x}) exceeds the {h}x{w} image")
    return center_crop(image[y : y + size, x : x + size], None, multiple)


def center_crop(image: np.ndarray, size: int | None, multiple: int = 1) -> np.ndarray:
    """The central ``size`` x ``size`` crop (the whole image when ``size`` is None), trimmed to a ``multiple``."""
    h, w = image.shape[:2]
    if size is not None:
        if size > min(h, w):
            raise SettingError(f"crop size {size} exceeds the {h}x{w} image")
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
        "dead_leaves": lambda: PatchBank.from_images(
            (im for _, im in DeadLeavesSet(n_images=16, size=128, seed=seed)), n_patches, block_size, seed,
            min_sharpness, source=f"dead-leaves:p{block_size}:s{seed}"),
        "npz": lambda: PatchBank.load(_required(path, "npz")),
        "folder": lambda: PatchBank.from_folder(_required(path, "folder"), n_patches, block_size, seed, min_sharpness),
    }
    if source not in builders:
        raise SettingError(f"patches.source={source!r}; choose one of {sorted(builders)}")
    return builders[source]()


def _required(path: str | None, source: str) -> str:
    if not path:
        raise SettingError(f"patches.source={source} needs patches.path")
    return path


# --- procedural images ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def natural_palette(n: int = 4096, seed: int = 0) -> np.ndarray:
    """Colours sampled from the embedded training photographs, the same number from each, so dead-leaves discs get
    natural colour statistics without the dark backgrounds of the microscopy and astronomy images dominating."""
    rng = np.random.default_rng(seed)
    images = list(embedded_split("train").values())
    per_image = n // len(images)
    return np.concatenate([im.reshape(-1, 3)[rng.choice(im.shape[0] * im.shape[1], per_image, replace=False)] for im in images])


def dead_leaves(size: int, rng: np.random.Generator, r_min: float = 2.0, r_max: float | None = None,
                alpha: float = 3.0, textured: bool = True, max_discs: int = 20_000) -> np.ndarray:
    """A dead-leaves image (size x size x 3 uint8): occluding discs, radii with density ~ r^-alpha on [r_min, r_max],
    colours drawn from natural photographs, optionally with a per-disc gradient and grain texture.

    Dead leaves reproduce the scale invariance and the edge statistics of natural images, so they are an unlimited
    source of training patches that shares no content with any test image.
    """
    r_max = r_max if r_max is not None else size / 2
    palette = natural_palette()
    img = np.zeros((size, size, 3), dtype=np.float64)
    free = np.ones((size, size), dtype=bool)
    yy, xx = np.mgrid[0:size, 0:size]
    e = 1.0 - alpha
    for _ in range(max_discs):
        u = rng.random()
        r = ((r_max**e - r_min**e) * u + r_min**e) ** (1.0 / e)
        cy, cx = rng.uniform(-r, size + r, 2)
        y0, y1 = max(int(cy - r), 0), min(int(cy + r) + 1, size)
        x0, x1 = max(int(cx - r), 0), min(int(cx + r) + 1, size)
        if y0 >= y1 or x0 >= x1:
            continue
        disc = ((yy[y0:y1, x0:x1] - cy) ** 2 + (xx[y0:y1, x0:x1] - cx) ** 2 <= r * r) & free[y0:y1, x0:x1]
        if not disc.any():
            continue
        colour = palette[rng.integers(len(palette))].astype(np.float64)
        patch = np.broadcast_to(colour, (y1 - y0, x1 - x0, 3)).copy()
        if textured:
            gy, gx = rng.normal(0, 40.0 / max(r, 1.0), 2)
            patch += (gy * (yy[y0:y1, x0:x1] - cy) + gx * (xx[y0:y1, x0:x1] - cx))[..., None]
            patch += rng.normal(0, rng.uniform(0, 6), patch.shape[:2])[..., None]
        img[y0:y1, x0:x1][disc] = patch[disc]
        free[y0:y1, x0:x1] &= ~disc
        if not free.any():
            break
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _random_homography(rng: np.random.Generator, tilt: float) -> np.ndarray:
    """A projective map of the unit square whose corners move by up to ``tilt``: receding facades, whose periods
    change across the image as in a photograph of a building."""
    src = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=np.float64)
    dst = src + rng.uniform(-tilt, tilt, src.shape)
    rows = []
    for (x, y), (u, v) in zip(dst, src):
        rows += [[x, y, 1, 0, 0, 0, -u * x, -u * y, -u], [0, 0, 0, x, y, 1, -v * x, -v * y, -v]]
    return np.linalg.svd(np.array(rows))[2][-1].reshape(3, 3)  # image (x, y) -> pattern (u, v)


def _periodic_panel(u: np.ndarray, v: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Where a panel's pattern takes its first colour: stripes, a grid or a checkerboard, with a period of 3-40
    output pixels (around the Nyquist period of a x4 low-resolution image, 8 px, where bicubic aliases)."""
    angle = rng.choice([0.0, np.pi / 2]) if rng.random() < 0.7 else rng.uniform(0, np.pi)
    a = (np.cos(angle) * u + np.sin(angle) * v) * size / np.exp(rng.uniform(np.log(3), np.log(40)))
    b = (-np.sin(angle) * u + np.cos(angle) * v) * size / np.exp(rng.uniform(np.log(3), np.log(40)))
    duty = rng.uniform(0.2, 0.8)
    kind = rng.choice(["stripes", "grid", "checker"], p=[0.5, 0.3, 0.2])
    if kind == "stripes":
        return (a % 1) < duty
    if kind == "grid":
        return ((a % 1) < duty) | ((b % 1) < duty)
    return (np.floor(a) + np.floor(b)) % 2 == 0


def _contrasting_pair(palette: np.ndarray, rng: np.random.Generator, tries: int = 32) -> np.ndarray:
    """Two palette colours whose luminances differ by a random target of 30-200 levels (the first pair that does, or
    the most different of ``tries``): the photographs' colours alone pair dark with dark too often."""
    target, best, pair = rng.uniform(30, 200), -1.0, None
    for _ in range(tries):
        c = palette[rng.integers(len(palette), size=2)].astype(np.float64)
        gap = abs(float((c[0] - c[1]) @ np.array([0.299, 0.587, 0.114])))
        if gap > best:
            best, pair = gap, c
        if gap >= target:
            break
    return pair


def facade(size: int, rng: np.random.Generator, panels: int = 6, tilt: float = 0.3, supersample: int = 3) -> np.ndarray:
    """A man-made periodic scene (size x size x 3 uint8): occluding panels of stripes, grids and checkerboards in two
    colours each, under a random perspective, rendered with ``supersample``^2 samples per pixel (no aliasing in the
    ground truth itself).

    The photographs and dead leaves of the training sets hold almost no regular structure near the Nyquist period of
    a x4 low-resolution image, which test images of buildings (Urban100-like, the paper's demo images) are full of:
    generated, not copied from any test image.
    """
    n = size * supersample
    yy, xx = (np.mgrid[0:n, 0:n] + 0.5) / n
    h = _random_homography(rng, tilt)
    w = h[2, 0] * xx + h[2, 1] * yy + h[2, 2]
    u, v = (h[0, 0] * xx + h[0, 1] * yy + h[0, 2]) / w, (h[1, 0] * xx + h[1, 1] * yy + h[1, 2]) / w
    palette = natural_palette()
    img = np.empty((n, n, 3), dtype=np.float64)
    for i in range(panels + 1):  # the first panel covers everything: no flat background
        if i == 0:
            lo, hi = np.full(2, -1.0), np.full(2, 2.0)
        else:
            lo = rng.uniform(-0.2, 0.9, 2)
            hi = lo + rng.uniform(0.15, 0.7, 2)
        inside = (u >= lo[0]) & (u < hi[0]) & (v >= lo[1]) & (v < hi[1])
        colours = _contrasting_pair(palette, rng)
        first = _periodic_panel(u, v, size, rng)
        img[inside] = np.where(first[inside][:, None], colours[0], colours[1])
    img = img.reshape(size, supersample, size, supersample, 3).mean(axis=(1, 3))
    img += rng.normal(0, rng.uniform(0, 3), img.shape[:2])[..., None]
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


# --- image sets (the ``data`` config group) ------------------------------------------------------------------------


@dataclass
class EmbeddedSet:
    """The embedded photographs of one split, each centre-cropped to ``crop`` (None = whole image)."""

    split: str = "test"
    crop: int | None = None
    multiple: int = 1

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        for name in split_names(self.split):
            yield name, center_crop(embedded_image(name), self.crop, self.multiple)


@dataclass
class DeadLeavesSet:
    """``n_images`` seeded dead-leaves images of ``size`` px."""

    n_images: int = 8
    size: int = 128
    seed: int = 0
    textured: bool = True

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        for i in range(self.n_images):
            rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(i,)))
            yield f"deadleaves_{self.seed}_{i}", dead_leaves(self.size, rng, textured=self.textured)


@dataclass
class FacadeSet:
    """``n_images`` seeded man-made periodic scenes of ``size`` px (:func:`facade`: ``panels`` occluding panels,
    corners moved by up to ``tilt``)."""

    n_images: int = 4
    size: int = 384
    seed: int = 0
    panels: int = 6
    tilt: float = 0.3

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        for i in range(self.n_images):
            rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(i,)))
            yield f"facade_{self.seed}_{i}", facade(self.size, rng, self.panels, self.tilt)


@dataclass
class FolderSet:
    """Users' images: ground truth in ``gt`` (DIV2K, Set5, BSD100, Urban100, CBSD68, ...) and optionally paired
    degraded inputs in ``lq`` matched by file stem (e.g. ``0801x4.png`` for ``0801.png`` with ``lq_suffix='x4'``).
    Ground truth is cropped to a multiple of ``multiple`` (the SR scale); gray, RGBA and 16-bit files become RGB."""

    gt: str = "???"
    lq: str | None = None
    lq_suffix: str = ""
    multiple: int = 1
    crop: int | None = None

    def files(self) -> list[Path]:
        folder = Path(self.gt)
        if not folder.is_dir():
            raise FileNotFoundError(f"data folder {str(folder)!r} does not exist")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {str(folder)!r}")
        return files

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        for f in self.files():
            yield f.stem, center_crop(read_image(f), self.crop, self.multiple)

    def pairs(self) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        """(name, ground truth, degraded input) for paired folders."""
        if self.lq is None:
            raise SettingError("this folder set has no lq folder; set lq=PATH for paired data")
        lq_files = {p.stem: p for p in Path(self.lq).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
        for f in self.files():
            match = lq_files.get(f.stem + self.lq_suffix)
            if match is None:
                raise FileNotFoundError(f"no degraded image for {f.name} in {self.lq!r} (looked for stem {f.stem + self.lq_suffix!r})")
            gt = read_image(f)
            yield f.stem, gt[: gt.shape[0] - gt.shape[0] % self.multiple, : gt.shape[1] - gt.shape[1] % self.multiple], read_image(match)


@dataclass
class CombinedSet:
    """Several image sets in sequence (e.g. the embedded training split plus dead leaves)."""

    sets: list

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        for s in self.sets:
            yield from s
