"""Block grid and region of interest, in output (clean-image) pixel coordinates.

The grid lives on the clean image, whose size equals the model's output size. A task with scale ``s`` (e.g. SR x4)
maps a block of ``b`` output pixels to ``b / s`` input pixels, so ``block_size`` must be a multiple of ``s``.
Edge blocks may be partial when the image size is not a multiple of the block size.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np


class GeometryError(ValueError):
    """An ROI, block size or image size that cannot define a causal effect map."""


@dataclass(frozen=True)
class ROI:
    """Square output region: top-left column ``x``, row ``y`` and side ``size``, in output pixels."""

    x: int
    y: int
    size: int

    @property
    def rows(self) -> slice:
        return slice(self.y, self.y + self.size)

    @property
    def cols(self) -> slice:
        return slice(self.x, self.x + self.size)

    def validate(self, height: int, width: int) -> None:
        """Raise a GeometryError naming the offending value unless the ROI lies inside a ``height`` x ``width`` output."""
        if self.size <= 0:
            raise GeometryError(f"roi.size={self.size} must be a positive number of output pixels")
        if self.x < 0 or self.y < 0:
            raise GeometryError(f"roi (x={self.x}, y={self.y}) must have non-negative coordinates")
        if self.x + self.size > width or self.y + self.size > height:
            raise GeometryError(
                f"roi (x={self.x}, y={self.y}, size={self.size}) reaches column {self.x + self.size} / row "
                f"{self.y + self.size}, outside the {height}x{width} (HxW) output; need x + size <= {width} "
                f"and y + size <= {height}"
            )


@dataclass(frozen=True)
class Block:
    """One block of the grid: its grid index (``row``, ``col``) and its pixel span ``[y0, y1) x [x0, x1)``."""

    index: int
    row: int
    col: int
    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    def scaled(self, scale: int) -> tuple[slice, slice]:
        """Row and column slices of this block in an input that is ``scale`` times smaller."""
        return slice(self.y0 // scale, self.y1 // scale), slice(self.x0 // scale, self.x1 // scale)


@dataclass(frozen=True)
class BlockGrid:
    """ceil(H/b) x ceil(W/b) blocks covering an ``height`` x ``width`` image exactly once."""

    height: int
    width: int
    block_size: int
    scale: int = 1

    def __post_init__(self) -> None:
        if self.block_size <= 0:
            raise GeometryError(f"block_size={self.block_size} must be a positive number of pixels")
        if self.block_size > min(self.height, self.width):
            raise GeometryError(
                f"block_size={self.block_size} is larger than the {self.height}x{self.width} image; "
                f"use at most {min(self.height, self.width)}"
            )
        if self.scale < 1:
            raise GeometryError(f"scale={self.scale} must be >= 1")
        if self.block_size % self.scale:
            raise GeometryError(
                f"block_size={self.block_size} output pixels is not a multiple of the task scale {self.scale}; "
                f"blocks must map to whole input pixels (try {self.block_size + (-self.block_size) % self.scale})"
            )
        if self.height % self.scale or self.width % self.scale:
            raise GeometryError(
                f"output size {self.height}x{self.width} is not divisible by the task scale {self.scale}"
            )

    @property
    def rows(self) -> int:
        return -(-self.height // self.block_size)

    @property
    def cols(self) -> int:
        return -(-self.width // self.block_size)

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows, self.cols

    def __len__(self) -> int:
        return self.rows * self.cols

    def block(self, index: int) -> Block:
        row, col = divmod(index, self.cols)
        b = self.block_size
        return Block(
            index=index,
            row=row,
            col=col,
            y0=row * b,
            y1=min((row + 1) * b, self.height),
            x0=col * b,
            x1=min((col + 1) * b, self.width),
        )

    @cached_property
    def blocks(self) -> tuple[Block, ...]:
        return tuple(self.block(i) for i in range(len(self)))

    def roi_mask(self, roi: ROI) -> np.ndarray:
        """Boolean (rows, cols) map of the blocks the ROI touches."""
        roi.validate(self.height, self.width)
        b = self.block_size
        mask = np.zeros(self.shape, dtype=bool)
        mask[roi.y // b : (roi.y + roi.size - 1) // b + 1, roi.x // b : (roi.x + roi.size - 1) // b + 1] = True
        return mask

