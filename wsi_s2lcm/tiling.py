"""The tile grid and the ownership rule (pure numpy, no I/O).

All coordinates here are pixels at the model's resolution ("model frame"), x to the right and
y down, with (0, 0) at the slide's origin. With stride ``s = tile_size - overlap`` and margin
``m = overlap / 2``, tile ``(row, col)`` reads the box ``[col*s - m, col*s + s + m)`` horizontally
(likewise vertically) and owns its *core* ``[col*s, col*s + s)``. Cores partition the plane, so a
point has exactly one owner tile: ``(floor(y / s), floor(x / s))``. A nucleus is kept only by the
tile whose core holds its centroid. A nucleus smaller than ``m`` whose centroid lies in a core is
seen whole by that tile, so tiles are independent, and tiling the slide reproduces one untiled
pass. Cores are aligned to a regular grid of side ``s``, which is also the chunk grid of the
label store; a tile writes its kept nuclei whole, so they may reach into a neighbour's chunks
(the writer, in the calling process, writes one tile at a time).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterator

from wsi_s2lcm.config import TilingConfig


@dataclasses.dataclass(frozen=True)
class Tile:
    """One tile of the grid.

    Attributes
    ----------
    row, col : int
        Grid position; also the chunk index of its core in the label store.
    x, y : int
        Model-frame origin of the box the network reads (may be negative at the slide's edge,
        where the reader mirrors the slide).
    size : int
        Side of the box read.
    core : tuple of int
        ``(x0, y0, x1, y1)``: the model-frame box this tile owns, clipped to the slide.
    """

    row: int
    col: int
    x: int
    y: int
    size: int
    core: tuple[int, int, int, int]

    @property
    def box(self) -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)`` of the box read, in the model frame."""
        return (self.x, self.y, self.x + self.size, self.y + self.size)

    def core_contains(self, x: float, y: float) -> bool:
        """Whether the model-frame point ``(x, y)`` lies in this tile's core."""
        x0, y0, x1, y1 = self.core
        return x0 <= x < x1 and y0 <= y < y1


def model_size(level0_size: tuple[int, int], level0_mpp: float, model_mpp: float) -> tuple[int, int]:
    """Width and height of the slide in model-frame pixels.

    Parameters
    ----------
    level0_size
        ``(width, height)`` of the slide at level 0.
    level0_mpp
        µm per level-0 pixel.
    model_mpp
        µm per model pixel.

    Returns
    -------
    tuple of int
        ``(width, height)``, rounded up so that the whole slide is covered.
    """
    scale = level0_mpp / model_mpp
    return (
        max(1, math.ceil(level0_size[0] * scale - 1e-6)),
        max(1, math.ceil(level0_size[1] * scale - 1e-6)),
    )


def grid_shape(width: int, height: int, config: TilingConfig) -> tuple[int, int]:
    """Rows and columns of the tile grid over a ``width`` x ``height`` model-frame image."""
    stride = config.stride
    return (math.ceil(height / stride), math.ceil(width / stride))


def tile_at(row: int, col: int, width: int, height: int, config: TilingConfig) -> Tile:
    """The tile at grid position ``(row, col)``."""
    stride, margin = config.stride, config.margin
    core = (
        col * stride,
        row * stride,
        min((col + 1) * stride, width),
        min((row + 1) * stride, height),
    )
    return Tile(
        row=row,
        col=col,
        x=col * stride - margin,
        y=row * stride - margin,
        size=config.tile_size,
        core=core,
    )


def tile_grid(width: int, height: int, config: TilingConfig) -> Iterator[Tile]:
    """Yield the tiles covering a ``width`` x ``height`` model-frame image, row by row."""
    rows, cols = grid_shape(width, height, config)
    for row in range(rows):
        for col in range(cols):
            yield tile_at(row, col, width, height, config)


def owner_of(x: float, y: float, config: TilingConfig) -> tuple[int, int]:
    """Grid position ``(row, col)`` of the tile whose core holds the model-frame point."""
    return (int(math.floor(y / config.stride)), int(math.floor(x / config.stride)))


def open_edges(tile: Tile, width: int, height: int) -> tuple[bool, bool, bool, bool]:
    """Which sides of a tile's box lie inside the image: (left, top, right, bottom).

    An object touching an open edge may continue in a neighbouring tile; one touching a closed
    edge (beyond the image, where the reader mirrors the slide) cannot.
    """
    x0, y0, x1, y1 = tile.box
    return (x0 > 0, y0 > 0, x1 < width, y1 < height)


def touches_open_edge(
    bbox_yx: tuple[int, int, int, int], tile: Tile, width: int, height: int
) -> bool:
    """Whether an object's tile-local bounding box touches an open edge of the tile.

    Parameters
    ----------
    bbox_yx
        ``(min_row, min_col, max_row, max_col)`` in tile-local pixels, max exclusive.
    tile, width, height
        The tile and the model-frame image size.
    """
    left, top, right, bottom = open_edges(tile, width, height)
    min_row, min_col, max_row, max_col = bbox_yx
    return (
        (left and min_col == 0)
        or (top and min_row == 0)
        or (right and max_col == tile.size)
        or (bottom and max_row == tile.size)
    )
