"""Patch banks: the natural-image patches that replace a block's content during an intervention."""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cemap import results
from cemap.imageio import read_image, to_rgb8
from cemap.resize import Resizer

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class PatchBankError(ValueError):
    """A patch bank that cannot serve the requested blocks."""


def _unique(patches: np.ndarray) -> np.ndarray:
    """Drop exact duplicates, keeping first occurrences in order."""
    if len(patches) == 0:
        return patches
    _, first = np.unique(patches.reshape(len(patches), -1), axis=0, return_index=True)
    return patches[np.sort(first)]


def sharpness(patches: np.ndarray) -> np.ndarray:
    """Mean absolute Laplacian of each patch's gray level: a cheap measure of texture, 0 for flat patches."""
    gray = patches.astype(np.float64).mean(axis=-1)
    lap = (
        4 * gray[:, 1:-1, 1:-1]
        - gray[:, :-2, 1:-1]
        - gray[:, 2:, 1:-1]
        - gray[:, 1:-1, :-2]
        - gray[:, 1:-1, 2:]
    )
    return np.abs(lap).mean(axis=(1, 2))


def check_declared_size(path: Path) -> None:
    """Refuse an npz whose ``patches`` header declares more bytes than the file holds (a damaged or hostile header
    asked np.load for 715 GiB), before anything is allocated."""
    try:
        with zipfile.ZipFile(path) as z:
            info = z.getinfo("patches.npy")
            with z.open(info) as fh:
                version = np.lib.format.read_magic(fh)
                readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
                if version not in readers:
                    return
                shape, _, dtype = readers[version](fh)
    except (KeyError, zipfile.BadZipFile, ValueError, OSError, EOFError):
        return  # np.load below reports what is wrong with the file
    declared = int(np.prod(shape, dtype=np.float64)) * np.dtype(dtype).itemsize
    if declared > info.file_size:
        raise PatchBankError(f"patch bank {str(path)!r} declares a {shape} {dtype} array ({declared / 2**30:.3g} GiB) "
                             f"but holds {info.file_size} bytes: the file is damaged")


@dataclass
class PatchBank:
    """An (N, P, P, 3) uint8 RGB array of patches and where it came from.

    Blocks up to P x P pixels draw from it (a smaller or partial block takes the top-left corner of each patch).
    """

    patches: np.ndarray
    source: str = "array"
    _device_cache: dict[tuple, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        p = np.asarray(self.patches)
        if p.ndim != 4 or p.shape[3] != 3 or p.shape[1] != p.shape[2]:
            raise PatchBankError(f"patches must be an (N, P, P, 3) RGB array, got shape {p.shape}")
        if p.shape[0] == 0:
            raise PatchBankError("the patch bank is empty; build it from at least one image larger than the patch size")
        if p.dtype != np.uint8:
            raise PatchBankError(f"patches must be uint8, got {p.dtype}")
        self.patches = np.ascontiguousarray(p)

    def __len__(self) -> int:
        return int(self.patches.shape[0])

    @property
    def patch_size(self) -> int:
        return int(self.patches.shape[1])

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.patches.tobytes()).hexdigest()

    def check_block(self, height: int, width: int) -> None:
        if height > self.patch_size or width > self.patch_size:
            raise PatchBankError(
                f"blocks of {height}x{width} px need patches at least that large; this bank ({self.source}) has "
                f"{self.patch_size}x{self.patch_size} patches. Build a bank with patch size >= {max(height, width)}"
            )

    def tensor(self, device: torch.device | str, height: int, width: int) -> torch.Tensor:
        """The whole bank as an (N, 3, height, width) float32 tensor in [0, 1], kept on ``device`` for reuse."""
        self.check_block(height, width)
        key = (str(device), height, width)
        if key not in self._device_cache:
            t = torch.from_numpy(self.patches[:, :height, :width]).to(device)
            self._device_cache[key] = t.permute(0, 3, 1, 2).to(torch.float32).div_(255.0).contiguous()
        return self._device_cache[key]

    def resized(self, device: torch.device | str, height: int, width: int, size: tuple[int, int],
                resizer: Resizer) -> torch.Tensor:
        """The bank's ``height`` x ``width`` patches resized to ``size`` (h, w) by ``resizer``, computed once and kept
        on ``device``: each patch is resized alone, so a row equals resizing that patch whenever it is drawn."""
        key = (str(device), height, width, *size, resizer.name)
        if key not in self._device_cache:
            self._device_cache[key] = resizer(self.tensor(device, height, width), *size).contiguous()
        return self._device_cache[key]

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Indices of n patches, without replacement while the bank is large enough."""
        return rng.choice(len(self), size=n, replace=n > len(self))

    def stats(self) -> dict[str, float | int | str]:
        """Pool statistics: size, mean colour, contrast and sharpness."""
        p = self.patches.astype(np.float64) / 255.0
        s = sharpness(self.patches)
        return {
            "source": self.source,
            "n_patches": len(self),
            "patch_size": self.patch_size,
            "mean_rgb": [round(float(v), 4) for v in p.mean(axis=(0, 1, 2))],
            "mean_std": float(p.std(axis=(1, 2, 3)).mean()),
            "sharpness_median": float(np.median(s)),
            "flat_fraction": float((s < 1.0).mean()),
            "sha256": self.sha256,
        }

    # --- construction --------------------------------------------------------------------------------------------

    @classmethod
    def from_images(
        cls,
        images: Iterable[np.ndarray],
        n_patches: int,
        patch_size: int,
        seed: int = 0,
        min_sharpness: float = 0.0,
        source: str = "images",
    ) -> PatchBank:
        """Seeded random crops spread evenly over ``images``; near-flat patches (below ``min_sharpness``) and exact
        duplicates are dropped."""
        imgs = [to_rgb8(im) for im in images]
        imgs = [im for im in imgs if im.shape[0] >= patch_size and im.shape[1] >= patch_size]
        if not imgs:
            raise PatchBankError(f"no image is at least {patch_size}x{patch_size} px; cannot crop patches")
        rng = np.random.default_rng(seed)
        per_image = -(-n_patches // len(imgs))
        crops: list[np.ndarray] = []
        for im in imgs:
            # oversample so that filtering and de-duplication still leave enough
            k = per_image * 4 + 16
            ys = rng.integers(0, im.shape[0] - patch_size + 1, size=k)
            xs = rng.integers(0, im.shape[1] - patch_size + 1, size=k)
            batch = np.stack([im[y : y + patch_size, x : x + patch_size] for y, x in zip(ys, xs)])
            if min_sharpness > 0:
                batch = batch[sharpness(batch) >= min_sharpness]
            crops.append(_unique(batch)[:per_image])
        allp = _unique(np.concatenate(crops))
        if len(allp) > n_patches:
            allp = allp[np.sort(rng.choice(len(allp), size=n_patches, replace=False))]
        return cls(allp, source=source)

    @classmethod
    def from_folder(cls, folder: str | Path, n_patches: int, patch_size: int, seed: int = 0, min_sharpness: float = 0.0) -> PatchBank:
        """Random crops from every image in ``folder`` (sorted, so the bank does not depend on listing order)."""
        files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise PatchBankError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {str(folder)!r}")
        return cls.from_images(
            (read_image(f) for f in files), n_patches, patch_size, seed, min_sharpness, source=f"folder:{folder}"
        )

    @classmethod
    def from_patch_folder(cls, folder: str | Path) -> PatchBank:
        """Import a folder of patch image files (the authors' pool format), one patch per file, sorted by name."""
        files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise PatchBankError(f"no patch images in {str(folder)!r}")
        patches = [read_image(f) for f in files]
        shapes = {p.shape for p in patches}
        if len(shapes) != 1:
            raise PatchBankError(f"patch files in {str(folder)!r} differ in size: {sorted(shapes)[:4]}")
        return cls(np.stack(patches), source=f"patch-folder:{folder}")

    @classmethod
    def load(cls, path: str | Path) -> PatchBank:
        """Load an npz bank holding ``patches`` (N, P, P, 3) uint8 RGB, e.g. the authors' DIV2K pool."""
        p = Path(path)
        if not p.is_file():
            raise PatchBankError(f"patch bank {str(p)!r} does not exist")
        check_declared_size(p)
        try:
            with np.load(p, allow_pickle=False) as data:
                if "patches" not in data:
                    raise PatchBankError(f"{str(p)!r} has no 'patches' array (keys: {sorted(data.keys())})")
                patches = data["patches"]
                source = str(data["source"]) if "source" in data else f"npz:{p.name}"
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, MemoryError) as exc:
            if isinstance(exc, PatchBankError):
                raise
            raise PatchBankError(f"patch bank {str(p)!r} cannot be read: {exc!r}") from exc
        return cls(patches, source=source)

    def save(self, path: str | Path) -> Path:
        return results.atomic_save_npz(Path(path), patches=self.patches, source=np.array(self.source))

