"""Instance labels to nucleus polygons in level-0 pixels, with per-nucleus measurements.

An outline is traced along pixel edges: it is the boundary of the union of the object's pixel
squares, with a vertex at every pixel corner where the boundary turns. Rasterizing it with
:func:`wsi_s2lcm.rasterize.rasterize_polygons` (pixel-centre rule) gives back exactly the object's
pixels. Where two object pixels meet only at a corner, the outline turns so that each ring bounds
one 4-connected background region; for a 4-connected object (as
:func:`wsi_s2lcm.postprocess.instances_from_probability` makes) that gives one shell, holes that
touch it or each other at single points at most, and a valid polygon.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence

import numpy as np
import shapely
from scipy import ndimage as ndi
from shapely.geometry import MultiPolygon, Polygon

from wsi_s2lcm.stain import hematoxylin_od

logger = logging.getLogger(__name__)

#: Measurement names, exactly as they appear in QuPath.
AREA = "Area µm^2"
PERIMETER = "Perimeter µm"
CIRCULARITY = "Circularity"
SOLIDITY = "Solidity"
HEMATOXYLIN_OD_MEAN = "Hematoxylin OD mean"
PROBABILITY_MEAN = "Nucleus probability mean"
MEASUREMENTS = (AREA, PERIMETER, CIRCULARITY, SOLIDITY, HEMATOXYLIN_OD_MEAN, PROBABILITY_MEAN)

#: Decimals kept in level-0 coordinates.
COORDINATE_DECIMALS = 2

# Directions of boundary edges, y down: 0 = +x, 1 = +y, 2 = -x, 3 = -y. The object lies on the
# right of every edge; turning left at a pinch corner follows the same background pixel.
_LEFT = np.array([3, 0, 1, 2])


@dataclasses.dataclass(frozen=True)
class Nucleus:
    """One nucleus, in level-0 pixels.

    Attributes
    ----------
    polygon : shapely.geometry.Polygon
        Valid outline in level-0 pixel coordinates ``(x, y)``, rounded to 0.01 px. A
        ``MultiPolygon`` only for an object that is not 4-connected.
    measurements : dict[str, float]
        :data:`MEASUREMENTS`, keyed by their QuPath names.
    centroid_xy_level0 : tuple[float, float]
        Centroid of the object's pixel centres in level-0 pixels.
    """

    polygon: Polygon | MultiPolygon
    measurements: dict[str, float]
    centroid_xy_level0: tuple[float, float]


def nuclei_from_labels(
    labels: np.ndarray,
    ids: Sequence[int],
    rgb: np.ndarray,
    probability: np.ndarray,
    scale: float,
    offset_xy: tuple[float, float],
    level0_mpp: float,
) -> list[Nucleus]:
    """Trace and measure the labelled objects ``ids``.

    Parameters
    ----------
    labels
        ``(H, W)`` non-negative integer labels of one tile (small values, 0 background).
    ids
        Labels to convert, each present in ``labels``; the result keeps this order.
    rgb
        ``(H, W, 3)`` RGB image (0-255, uint8) the labels were computed from.
    probability
        ``(H, W)`` nucleus probability the labels were computed from.
    scale
        Level-0 pixels per label pixel: pixel ``(x, y)`` covers level-0
        ``[offset + scale * x, offset + scale * (x + 1))`` on each axis.
    offset_xy
        Level-0 ``(x, y)`` of the label array's top-left corner.
    level0_mpp
        Microns per level-0 pixel, for areas and perimeters in µm.

    Returns
    -------
    list[Nucleus]
        One per id, in the order of ``ids``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be a 2-D array, not shape {labels.shape}.")
    rgb = np.asarray(rgb)
    probability = np.asarray(probability)
    if rgb.shape != labels.shape + (3,) or probability.shape != labels.shape:
        raise ValueError(
            f"rgb {rgb.shape} and probability {probability.shape} must match labels "
            f"{labels.shape} (as (H, W, 3) and (H, W))."
        )
    ids = [int(value) for value in ids]
    if not ids:
        return []
    labels = labels.astype(np.intp, copy=False)
    boxes = ndi.find_objects(labels, max_label=max(ids))
    missing = [value for value in ids if value < 1 or boxes[value - 1] is None]
    if missing:
        raise ValueError(f"label {missing[0]} is not present in the label image.")
    polygons = [
        _outline(labels[box] == value, (box[1].start, box[0].start), scale, offset_xy)
        for value, box in ((value, boxes[value - 1]) for value in ids)
    ]
    stats = _pixel_statistics(labels, ids, rgb, probability)
    geometries = np.array(polygons, dtype=object)
    invalid = ~shapely.is_valid(geometries)
    if invalid.any():
        logger.warning("repaired %d invalid outline(s)", int(invalid.sum()))
        geometries[invalid] = [_repair(g) for g in geometries[invalid]]
    measurements = _measure(geometries, level0_mpp, scale)
    count, sum_y, sum_x, hematoxylin, probability_sum = stats
    nuclei = []
    for i, geometry in enumerate(geometries):
        values = {name: float(column[i]) for name, column in measurements.items()}
        values[HEMATOXYLIN_OD_MEAN] = float(hematoxylin[i] / count[i])
        values[PROBABILITY_MEAN] = float(probability_sum[i] / count[i])
        centroid = (
            float(offset_xy[0] + scale * (sum_x[i] / count[i] + 0.5)),
            float(offset_xy[1] + scale * (sum_y[i] / count[i] + 0.5)),
        )
        nuclei.append(Nucleus(geometry, values, centroid))
    return nuclei


def trace_outline(mask: np.ndarray) -> list[np.ndarray]:
    """Trace the pixel-edge boundary rings of a binary mask.

    Parameters
    ----------
    mask
        ``(h, w)`` boolean mask whose outermost rows and columns are False.

    Returns
    -------
    list[np.ndarray]
        One ``(n, 2)`` int array of corner vertices ``(x, y)`` per ring (open, without the
        repeated first vertex, collinear vertices removed). Shells run with a positive shoelace
        area in these y-down coordinates, holes with a negative one.
    """
    height, width = mask.shape
    stride = width + 1
    # Horizontal edges at y = r + 1 between rows r and r + 1, x from c to c + 1.
    rows, cols = np.nonzero(mask[1:] != mask[:-1])
    below = mask[rows + 1, cols]
    h_start = (rows + 1) * stride + cols + np.where(below, 0, 1)
    h_dir = np.where(below, 0, 2)
    # Vertical edges at x = c + 1 between columns c and c + 1, y from r to r + 1.
    rows, cols = np.nonzero(mask[:, 1:] != mask[:, :-1])
    right = mask[rows, cols + 1]
    v_start = (rows + np.where(right, 1, 0)) * stride + cols + 1
    v_dir = np.where(right, 3, 1)
    start = np.concatenate([h_start, v_start])
    direction = np.concatenate([h_dir, v_dir])
    step = np.array([1, stride, -1, -stride])
    end = start + step[direction]

    order = np.argsort(start, kind="stable")
    sorted_start = start[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = sorted_start[1:] != sorted_start[:-1]
    out1 = np.full((height + 1) * stride, -1, dtype=np.intp)
    out2 = np.full((height + 1) * stride, -1, dtype=np.intp)
    out1[sorted_start[first]] = order[first]
    out2[sorted_start[~first]] = order[~first]
    successor = out1[end]
    pinch = out2[end] >= 0
    if pinch.any():
        left = _LEFT[direction[pinch]]
        alternative = out2[end[pinch]]
        successor[pinch] = np.where(direction[alternative] == left, alternative, successor[pinch])

    turns = direction[successor] != direction
    successor_list = successor.tolist()
    turns_list = turns.tolist()
    end_list = end.tolist()
    visited = [False] * len(successor_list)
    rings = []
    for edge in range(len(successor_list)):
        if visited[edge] or not turns_list[edge]:
            continue
        ring = []
        current = edge
        while not visited[current]:
            visited[current] = True
            if turns_list[current]:
                ring.append(end_list[current])
            current = successor_list[current]
        y, x = np.divmod(np.array(ring, dtype=np.intp), stride)
        rings.append(np.stack([x, y], axis=1))
    return rings


def _outline(
    mask: np.ndarray,
    origin_xy: tuple[int, int],
    scale: float,
    offset_xy: tuple[float, float],
) -> Polygon | MultiPolygon:
    """Trace one object's mask (its bounding box in the label image) into level-0 coordinates."""
    padded = np.zeros((mask.shape[0] + 2, mask.shape[1] + 2), dtype=bool)
    padded[1:-1, 1:-1] = mask
    shift = np.array(
        [offset_xy[0] + scale * (origin_xy[0] - 1), offset_xy[1] + scale * (origin_xy[1] - 1)]
    )
    shells, holes = [], []
    for ring in trace_outline(padded):
        xy = np.round(shift + scale * ring, COORDINATE_DECIMALS)
        (shells if _signed_area(ring) > 0 else holes).append(xy)
    if len(shells) == 1:
        return Polygon(shells[0], holes)
    # Not 4-connected: the pixels inside an odd number of rings are the object's.
    logger.debug("object with %d 4-connected parts traced as a MultiPolygon", len(shells))
    return shapely.symmetric_difference_all([Polygon(ring) for ring in shells + holes])


def _signed_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y)) / 2.0


def _repair(geometry: Polygon | MultiPolygon) -> Polygon | MultiPolygon:
    """Make an outline valid, keeping its polygonal part."""
    fixed = shapely.make_valid(geometry)
    polygons = [g for g in getattr(fixed, "geoms", [fixed]) if isinstance(g, Polygon)]
    polygons += [
        p for g in getattr(fixed, "geoms", []) if isinstance(g, MultiPolygon) for p in g.geoms
    ]
    return polygons[0] if len(polygons) == 1 else MultiPolygon(polygons)


def _pixel_statistics(
    labels: np.ndarray, ids: list[int], rgb: np.ndarray, probability: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Per id: pixel count, row and column sums, hematoxylin OD sum, probability sum."""
    lookup = np.full(int(labels.max()) + 1, -1, dtype=np.intp)
    lookup[ids] = np.arange(len(ids))
    slot = lookup[labels]
    selected = slot >= 0
    slot = slot[selected]
    rows, cols = np.nonzero(selected)
    hematoxylin = hematoxylin_od(rgb[selected])
    n = len(ids)

    def total(weights: np.ndarray | None) -> np.ndarray:
        return np.bincount(slot, weights=weights, minlength=n)

    return (
        total(None),
        total(rows.astype(np.float64)),
        total(cols.astype(np.float64)),
        total(hematoxylin),
        total(probability[selected].astype(np.float64)),
    )


def _measure(geometries: np.ndarray, level0_mpp: float, scale: float) -> dict[str, np.ndarray]:
    """Area, perimeter, circularity and solidity of every outline, vectorized.

    The area is that of the pixel outline (the object's pixel count). Perimeter, circularity and
    solidity are measured on the outline with every corner cut half a pixel along both of its
    edges, which runs through the midpoints of the boundary pixel edges (the 0.5 iso-line of the
    mask that marching squares traces): along pixel edges a digitized disc would measure a
    perimeter about 4/pi too long and a circularity near 0.63 instead of 1 (docs/SEGMENT.md).
    """
    area_px = shapely.area(geometries)
    perimeter_px, cut_area_px, cut_hull_px = _corner_cut_measures(geometries, 0.5 * scale)
    with np.errstate(divide="ignore", invalid="ignore"):
        circularity = np.where(
            perimeter_px > 0, 4 * math.pi * cut_area_px / perimeter_px**2, 0.0
        )
        solidity = np.where(cut_hull_px > 0, cut_area_px / cut_hull_px, 0.0)
    return {
        AREA: area_px * level0_mpp**2,
        PERIMETER: perimeter_px * level0_mpp,
        CIRCULARITY: np.clip(circularity, 0.0, 1.0),
        SOLIDITY: np.clip(solidity, 0.0, 1.0),
    }


def _corner_cut_measures(
    geometries: np.ndarray, cut: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Perimeter, area and convex hull area of each outline with its corners cut.

    Every vertex is replaced by the two points ``cut`` before and after it along its edges (the
    edges of a pixel outline are at least one pixel, ``2 * cut``, long, so the cuts never cross;
    the rare outline repaired by :func:`_repair` may have shorter ones and is then measured only
    approximately).
    """
    parts, part_geometry = shapely.get_parts(geometries, return_index=True)
    rings, ring_part = shapely.get_rings(parts, return_index=True)
    coords, ring = shapely.get_coordinates(rings, return_index=True)
    closing = np.r_[ring[1:] != ring[:-1], True]
    coords, ring = coords[~closing], ring[~closing]
    start = np.flatnonzero(np.r_[True, ring[1:] != ring[:-1]])
    length = np.diff(np.r_[start, len(ring)])
    first = np.repeat(start, length)
    position = np.arange(len(ring)) - first
    following = first + (position + 1) % np.repeat(length, length)
    preceding = first + (position - 1) % np.repeat(length, length)

    def towards(index: np.ndarray) -> np.ndarray:
        step = coords[index] - coords
        return cut * step / np.hypot(step[:, 0], step[:, 1])[:, None]

    before = coords + towards(preceding)
    after = coords + towards(following)
    # the cut ring: before[i], after[i], before[i + 1], ...
    corner = np.hypot(*(after - before).T)
    side = np.hypot(*(before[following] - after).T)
    ring_perimeter = np.bincount(ring, corner + side, minlength=len(rings))
    cross = (
        before[:, 0] * after[:, 1]
        - after[:, 0] * before[:, 1]
        + after[:, 0] * before[following, 1]
        - before[following, 0] * after[:, 1]
    )
    ring_area = np.abs(np.bincount(ring, cross, minlength=len(rings))) / 2
    # the first ring of each part is its shell, the others its holes
    ring_start = np.r_[True, ring_part[1:] != ring_part[:-1]]
    ring_geometry = part_geometry[ring_part]
    count = len(geometries)
    perimeter = np.bincount(ring_geometry, ring_perimeter, minlength=count)
    area = np.bincount(ring_geometry, np.where(ring_start, ring_area, -ring_area), minlength=count)
    # one line through all the cut points of an outline has their convex hull (and is built far
    # faster than as many point geometries)
    points = shapely.linestrings(
        np.stack([before, after], axis=1).reshape(-1, 2), indices=np.repeat(ring_geometry[ring], 2)
    )
    hull = np.zeros(count)
    hull[np.unique(ring_geometry)] = shapely.area(shapely.convex_hull(points))
    return perimeter, area, hull
