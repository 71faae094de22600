"""Scribbles to sparse training targets: 1 nucleus, 0 background, 255 unlabeled (ignored).

A stroke (LineString) paints every pixel whose centre lies within half the stroke width of the
line (at least half a pixel, so a 1-px curve through pixel centres paints exactly its pixels);
an area (Polygon) paints the pixels whose centres lie inside it (the rule of
:mod:`wsi_s2lcm.rasterize`). A pixel claimed by both classes is left unlabeled.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import shapely

from wsi_s2lcm.errors import AnnotationError
from wsi_s2lcm.qupath.imports import BACKGROUND, NUCLEUS, Scribble
from wsi_s2lcm.rasterize import axis_scales, rasterize_polygons

logger = logging.getLogger(__name__)

IGNORE = 255
"""Target value of unlabeled pixels."""


def rasterize_scribbles(
    scribbles: Sequence[Scribble],
    shape: tuple[int, int],
    scale: float | tuple[float, float] = 1.0,
    offset_xy: tuple[float, float] = (0.0, 0.0),
    stroke_width: float = 1.0,
) -> np.ndarray:
    """Paint scribbles into a sparse target.

    Parameters
    ----------
    scribbles
        Scribbles in a frame where raster pixel ``(x, y)`` covers ``offset + scale * [x, x + 1)``
        (for example full-resolution image pixels and a raster at ``scale`` of them per pixel).
    shape
        ``(height, width)`` of the target.
    scale
        Frame units per raster pixel, or ``(x, y)`` units when the axes differ.
    offset_xy
        Frame coordinates of the raster's top-left corner.
    stroke_width
        Width of a stroke, in raster pixels.

    Returns
    -------
    np.ndarray
        ``uint8`` target of ``shape``: 1 nucleus, 0 background, 255 unlabeled.
    """
    painted = {NUCLEUS: np.zeros(shape, bool), BACKGROUND: np.zeros(shape, bool)}
    radius = _stroke_radius(stroke_width)
    areas: dict[int, list] = {NUCLEUS: [], BACKGROUND: []}
    for scribble in scribbles:
        if scribble.is_line:
            _paint_line(painted[scribble.label], scribble.geometry, radius, scale, offset_xy)
        else:
            areas[scribble.label].append(scribble.geometry)
    for label, polygons in areas.items():
        if polygons:
            inside = rasterize_polygons(polygons, shape, scale, offset_xy, dtype=np.uint8)
            painted[label] |= inside > 0
    target = np.full(shape, IGNORE, np.uint8)
    target[painted[BACKGROUND]] = 0
    target[painted[NUCLEUS]] = 1
    target[painted[NUCLEUS] & painted[BACKGROUND]] = IGNORE
    return target


def rasterize_nucleus_ids(
    scribbles: Sequence[Scribble],
    shape: tuple[int, int],
    scale: float | tuple[float, float] = 1.0,
    offset_xy: tuple[float, float] = (0.0, 0.0),
    stroke_width: float = 1.0,
) -> np.ndarray:
    """Paint each nucleus scribble with its own id, for checking how instances split nuclei.

    Parameters are those of :func:`rasterize_scribbles`; background scribbles are left out.

    Returns
    -------
    np.ndarray
        ``int32`` raster of ``shape``: 0 where no nucleus scribble lies, else ``1..N`` in the
        order of the nucleus scribbles (a later scribble wins where two cross).
    """
    ids = np.zeros(shape, np.int32)
    radius = _stroke_radius(stroke_width)
    nuclei = [s for s in scribbles if s.label == NUCLEUS]
    for value, scribble in enumerate(nuclei, start=1):
        if scribble.is_line:
            _paint_line(ids, scribble.geometry, radius, scale, offset_xy, value)
        else:
            area = rasterize_polygons([scribble.geometry], shape, scale, offset_xy, dtype=np.uint8)
            ids[area > 0] = value
    return ids


def _stroke_radius(stroke_width: float) -> float:
    """Distance from a line within which a pixel centre is painted (at least half a pixel)."""
    return max(stroke_width / 2.0, 0.5) + 1e-6


def _paint_line(
    raster: np.ndarray,
    line: object,
    radius: float,
    scale: float | tuple[float, float] = 1.0,
    offset_xy: tuple[float, float] = (0.0, 0.0),
    value: object = True,
) -> None:
    """Set to ``value`` the pixels of ``raster`` whose centres lie within ``radius`` of ``line``.

    ``line`` is in the frame of :func:`rasterize_scribbles` (``scale`` units per raster pixel,
    ``offset_xy`` at the raster's top-left corner); ``radius`` is in raster pixels.
    """
    units = np.asarray(axis_scales(scale))
    line = shapely.transform(line, lambda xy: (xy - np.asarray(offset_xy)) / units)
    x0, y0, x1, y1 = line.bounds
    height, width = raster.shape
    cols = np.arange(max(int(np.floor(x0 - radius)), 0), min(int(np.ceil(x1 + radius)) + 1, width))
    rows = np.arange(max(int(np.floor(y0 - radius)), 0), min(int(np.ceil(y1 + radius)) + 1, height))
    if not len(cols) or not len(rows):
        return
    cc, rr = np.meshgrid(cols, rows)
    near = shapely.dwithin(line, shapely.points(cc.ravel() + 0.5, rr.ravel() + 0.5), radius)
    raster[rr.ravel()[near], cc.ravel()[near]] = value


def scribble_target(
    scribbles: Sequence[Scribble],
    shape: tuple[int, int],
    scale: float | tuple[float, float],
    stroke_width: float,
    where: str,
    offset_xy: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """Rasterize the scribbles of one image, refusing a result without labels.

    Scribbles lying wholly outside the raster are skipped with a warning.

    Parameters
    ----------
    scribbles, shape, scale, stroke_width, offset_xy
        As for :func:`rasterize_scribbles`.
    where
        The scribble file, named in messages.

    Returns
    -------
    np.ndarray
        The target, with at least one labelled pixel.

    Raises
    ------
    AnnotationError
        If no scribble pixel falls inside the image.
    """
    height, width = shape
    scale_x, scale_y = axis_scales(scale)
    frame = shapely.box(
        offset_xy[0], offset_xy[1], offset_xy[0] + width * scale_x, offset_xy[1] + height * scale_y
    )
    inside = [s for s in scribbles if s.geometry.intersects(frame)]
    outside = len(scribbles) - len(inside)
    if outside:
        logger.warning(
            "%s: %d of %d scribble(s) lie outside the image (%.0f x %.0f px); skipped",
            where, outside, len(scribbles), width * scale_x, height * scale_y,
        )
    target = rasterize_scribbles(inside, shape, scale, offset_xy, stroke_width)
    if not (target != IGNORE).any():
        bounds = shapely.union_all([s.geometry for s in scribbles]).bounds
        raise AnnotationError(
            f"{where}: no scribble falls inside the image (scribbles span x {bounds[0]:.0f}-"
            f"{bounds[2]:.0f}, y {bounds[1]:.0f}-{bounds[3]:.0f}; the image is "
            f"{width * scale_x:.0f} x {height * scale_y:.0f} px); were they exported from another "
            "image, or is --mpp wrong?"
        )
    return target
