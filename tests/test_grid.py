import numpy as np
import pytest

from cemap.grid import ROI, BlockGrid, GeometryError


@pytest.mark.parametrize("h,w,b", [(256, 256, 8), (40, 56, 8), (37, 45, 8), (20, 30, 16), (9, 9, 4)])
def test_grid_covers_image_exactly_once(h: int, w: int, b: int) -> None:
    grid = BlockGrid(h, w, b)
    assert grid.shape == (-(-h // b), -(-w // b))
    cover = np.zeros((h, w), dtype=int)
    for block in grid.blocks:
        cover[block.y0 : block.y1, block.x0 : block.x1] += 1
        assert 0 < block.height <= b and 0 < block.width <= b
    assert (cover == 1).all()


def test_paper_roi_blocks() -> None:
    mask = BlockGrid(256, 256, 8).roi_mask(ROI(96, 152, 32))
    rows, cols = np.nonzero(mask)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (19, 22, 12, 15)
    assert mask.sum() == 16


def test_roi_touching_partial_blocks() -> None:
    mask = BlockGrid(37, 45, 8).roi_mask(ROI(x=7, y=30, size=7))
    assert np.argwhere(mask).tolist() == [[3, 0], [3, 1], [4, 0], [4, 1]]


def test_scaled_block_maps_to_input_pixels() -> None:
    grid = BlockGrid(64, 48, 8, scale=4)
    rows, cols = grid.block(7).scaled(4)
    assert (rows, cols) == (slice(2, 4), slice(2, 4))


@pytest.mark.parametrize(
    "roi,message",
    [
        (ROI(0, 0, 0), "roi.size=0"),
        (ROI(-1, 0, 8), "non-negative"),
        (ROI(30, 0, 8), "outside the 32x32"),
        (ROI(0, 28, 8), "outside the 32x32"),
    ],
)
def test_invalid_roi_raises(roi: ROI, message: str) -> None:
    with pytest.raises(GeometryError, match=message):
        BlockGrid(32, 32, 8).roi_mask(roi)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"block_size": 0}, "block_size=0"),
        ({"block_size": -8}, "block_size=-8"),
        ({"block_size": 64}, "larger than the 32x32"),
        ({"block_size": 6, "scale": 4}, "not a multiple of the task scale 4"),
    ],
)
def test_invalid_block_size_raises(kwargs: dict, message: str) -> None:
    with pytest.raises(GeometryError, match=message):
        BlockGrid(32, 32, **kwargs)
