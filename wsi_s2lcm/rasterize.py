"""Polygons to label images, by the pixel-centre rule.

A pixel (x, y) covers ``[x, x + 1) x [y, y + 1)`` and belongs to a polygon when its centre
``(x + 0.5, y + 0.5)`` lies inside. Polygons traced along pixel edges therefore rasterize back to
exactly the pixels they were traced from.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
from skimage.draw import polygon as fill_polygon


def axis_scales(scale: float | tuple[float, float]) -> tuple[float, float]:
    """``(x, y)`` frame units per raster pixel from one scale or a pair."""
    if isinstance(scale, (int, float)):
        return float(scale), float(scale)
    scale_x, scale_y = scale
    return float(scale_x), float(scale_y)


def rasterize_polygons(
    polygons: Iterable[object],
    shape: tuple[int, int],
    scale: float | tuple[float, float] = 1.0,
    offset_xy: tuple[float, float] = (0.0, 0.0),
    labels: Iterable[int] | None = None,
    dtype: type = np.uint32,
) -> np.ndarray:
    """Paint shapely (Multi)Polygons into a label image.

    Parameters
    ----------
    polygons
        Shapely ``Polygon`` or ``MultiPolygon`` objects, in a frame where the raster pixel ``(x, y)``
        covers ``offset + scale * [x, x + 1)``; for example level-0 coordinates and a label image
        at ``scale`` level-0 pixels per raster pixel.
    shape
        ``(height, width)`` of the raster.
    scale
        Frame units per raster pixel, or ``(x, y)`` units when the axes differ (an image resized
        to a whole number of pixels on each axis).
    offset_xy
        Frame coordinates of the raster's top-left corner.
    labels
        Value painted for each polygon; ``1, 2, ...`` by default. Later polygons overwrite
        earlier ones where they overlap; holes are left unpainted.
    dtype
        Output dtype.

    Returns
    -------
    np.ndarray
        Label image of ``shape``.
    """
    raster = np.zeros(shape, dtype=dtype)
    values = iter(labels) if labels is not None else iter(range(1, 2**31))
    for geometry in polygons:
        value = next(values)
        parts = getattr(geometry, "geoms", [geometry])
        for part in parts:
            _paint_ring(raster, part.exterior.coords, value, scale, offset_xy)
            for interior in part.interiors:
                _paint_ring(raster, interior.coords, 0, scale, offset_xy)
    return raster


def _paint_ring(
    raster: np.ndarray,
    coords: Iterable[tuple[float, float]],
    value: int,
    scale: float | tuple[float, float],
    offset_xy: tuple[float, float],
) -> None:
    xy = np.asarray(coords, dtype=np.float64)
    if len(xy) < 3:
        return
    scale_x, scale_y = axis_scales(scale)
    cols = (xy[:, 0] - offset_xy[0]) / scale_x - 0.5
    rows = (xy[:, 1] - offset_xy[1]) / scale_y - 0.5
    rr, cc = fill_polygon(rows, cols, shape=raster.shape)
    raster[rr, cc] = value
