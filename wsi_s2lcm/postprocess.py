"""One tile's nucleus probabilities to instance labels.

:func:`instances_from_probability` thresholds the probability map, fills small holes, splits
touching nuclei with a watershed on the Euclidean distance transform seeded by h-maxima, keeps
each object's largest 4-connected part and removes small objects. The objects that are not
nuclei are then found by :mod:`wsi_s2lcm.false_objects`. :func:`label_table` lists the bounding
box, size and centroid of every label, which the tiling's ownership rule needs.

Locality
--------
The seams between tiles are exact because the result is *local*: for an 8-connected component
``C`` of the hole-filled foreground that does not touch the array border, the partition of ``C``
into instances depends only on the probabilities inside ``C``'s bounding box grown by one pixel.
Cropping the map to any window that holds that box, or translating it, gives the same instances
for ``C`` up to relabeling. Every step is chosen for this:

* hole filling fills background regions that are enclosed (not connected to the array border)
  and small; such a region is enclosed by one 8-connected component;
* the exact Euclidean distance transform: the nearest background pixel of a pixel of ``C`` is
  always 8-adjacent to ``C``;
* h-maxima are the regional maxima of the reconstruction by dilation of ``max(d - h, 0)`` under
  ``d`` (4-connectivity), a value defined pixel by pixel that cannot flow through background;
* the watershed is run on each 4-connected component separately, on its own bounding box, so its
  tie-breaking (queue order) never sees another component; components whose distance transform
  has a single regional maximum (hence at most one h-maximum) are not flooded at all.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import label as label_regions
from skimage.morphology import local_maxima, reconstruction
from skimage.segmentation import watershed

from wsi_s2lcm.config import PostprocessConfig

logger = logging.getLogger(__name__)

#: Holes (enclosed background) up to this area in µm² are filled; larger enclosed regions, such as
#: a gland lumen ringed by touching nuclei, stay background.
MAX_HOLE_UM2 = 50.0

_CROSS = ndi.generate_binary_structure(2, 1)
_SQUARE = ndi.generate_binary_structure(2, 2)


@dataclasses.dataclass(frozen=True)
class LabelInfo:
    """Where one label lies in its label image.

    Attributes
    ----------
    label : int
        The label value.
    bbox : tuple[int, int, int, int]
        ``(y0, x0, y1, x1)``, half-open, in array indices.
    area : int
        Number of pixels.
    sum_yx : tuple[int, int]
        Exact integer sums of the row and column indices of its pixels; with ``area`` they give
        the centroid without rounding, for exact ownership tests (``a * area <= sum < b * area``).
    centroid_yx : tuple[float, float]
        Mean row and column index of its pixels (``sum_yx / area``). The centre of pixel
        ``(y, x)`` is ``(y + 0.5, x + 0.5)`` in the continuous frame where the pixel covers
        ``[x, x + 1) x [y, y + 1)``.
    """

    label: int
    bbox: tuple[int, int, int, int]
    area: int
    sum_yx: tuple[int, int]
    centroid_yx: tuple[float, float]


def instances_from_probability(
    probability: np.ndarray,
    config: PostprocessConfig,
    mpp: float,
    max_hole_um2: float = MAX_HOLE_UM2,
) -> np.ndarray:
    """Turn a nucleus probability map into instance labels.

    Parameters
    ----------
    probability
        ``(H, W)`` nucleus probability in [0, 1].
    config
        Threshold, hole filling, minimum area, watershed switch and h-maxima height.
    mpp
        Microns per pixel of ``probability``; converts the areas and ``h_um`` to pixels.
    max_hole_um2
        Largest enclosed background region (µm²) filled when ``config.fill_holes``.

    Returns
    -------
    np.ndarray
        ``(H, W)`` int32 labels, 0 background and ``1..N`` in raster order of each object's first
        pixel. Every object is one 4-connected piece of at least ``config.min_area_um2``.
    """
    probability = np.asarray(probability)
    if probability.ndim != 2:
        raise ValueError(f"probability must be a 2-D (H, W) array, not shape {probability.shape}.")
    if not mpp > 0:
        raise ValueError(f"mpp must be > 0, not {mpp}.")
    px_per_um2 = 1.0 / (mpp * mpp)
    mask = probability > config.threshold
    if config.fill_holes:
        mask = _fill_small_holes(mask, max_hole_um2 * px_per_um2)
    components, n_components = ndi.label(mask, structure=_CROSS)
    if n_components == 0:
        return np.zeros(probability.shape, dtype=np.int32)
    if config.separate:
        labels = _split_touching(mask, components, n_components, config.h_um / mpp)
        labels = _keep_largest_4_connected(labels)
    else:
        labels = components
    return remove_small_and_relabel(labels, config.min_area_um2 * px_per_um2)


def label_table(labels: np.ndarray) -> list[LabelInfo]:
    """List the bounding box, area and centroid of every label present.

    Parameters
    ----------
    labels
        ``(H, W)`` non-negative integer labels, 0 background; values should be small (per tile).

    Returns
    -------
    list[LabelInfo]
        One entry per label present, in increasing label order.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be a 2-D array, not shape {labels.shape}.")
    flat = labels.ravel().astype(np.intp, copy=False)
    if flat.size == 0 or flat.max() == 0:
        return []
    n = int(flat.max()) + 1
    rows, cols = np.divmod(np.arange(flat.size, dtype=np.int64), labels.shape[1])
    area = np.bincount(flat, minlength=n)
    # float64 sums of integer indices are exact below 2**53, far beyond any tile.
    sum_y = np.bincount(flat, weights=rows, minlength=n).astype(np.int64)
    sum_x = np.bincount(flat, weights=cols, minlength=n).astype(np.int64)
    table = []
    for value, box in enumerate(ndi.find_objects(labels.astype(np.intp, copy=False)), start=1):
        if box is None:
            continue
        count = int(area[value])
        sy, sx = int(sum_y[value]), int(sum_x[value])
        table.append(
            LabelInfo(
                label=value,
                bbox=(box[0].start, box[1].start, box[0].stop, box[1].stop),
                area=count,
                sum_yx=(sy, sx),
                centroid_yx=(sy / count, sx / count),
            )
        )
    return table


def _fill_small_holes(mask: np.ndarray, max_hole_px: float) -> np.ndarray:
    """Fill 4-connected background regions that miss the border and are at most ``max_hole_px``."""
    background, n = ndi.label(~mask, structure=_CROSS)
    if n == 0:
        return mask
    sizes = np.bincount(background.ravel(), minlength=n + 1)
    touching = np.zeros(n + 1, dtype=bool)
    for edge in (background[0], background[-1], background[:, 0], background[:, -1]):
        touching[edge] = True
    fill = (sizes <= max_hole_px) & ~touching
    fill[0] = False
    return mask | fill[background]


def _split_touching(
    mask: np.ndarray, components: np.ndarray, n_components: int, h_px: float
) -> np.ndarray:
    """Watershed each 4-connected component from its h-maxima of the distance transform.

    A component whose distance transform has a single regional maximum has at most one h-maximum
    and stays whole; only the others are reconstructed and flooded, each on its own box.
    """
    distance = ndi.distance_transform_edt(mask)
    peaks = local_maxima(distance, connectivity=1, allow_borders=True) & mask
    peak_labels, _ = ndi.label(peaks, structure=_CROSS)
    _, first = np.unique(peak_labels[peaks], return_index=True)
    peaks_per_component = np.bincount(components[peaks][first], minlength=n_components + 1)

    labels = components.astype(np.int64)
    next_label = n_components + 1
    boxes = ndi.find_objects(components)
    for value in np.flatnonzero(peaks_per_component > 1):
        box = boxes[value - 1]
        inside = components[box] == value
        flooded = _split_component(np.where(inside, distance[box], 0.0), inside, h_px)
        if flooded is None:
            continue
        labels[box][inside] = flooded[inside] + (next_label - 1)
        next_label += int(flooded.max())
    return labels


def _split_component(distance: np.ndarray, inside: np.ndarray, h_px: float) -> np.ndarray | None:
    """Flood one component (``inside``, on its own box) from its h-maxima; None if only one."""
    raised = reconstruction(np.maximum(distance - h_px, 0.0), distance, footprint=_CROSS)
    seeds = local_maxima(raised, connectivity=1, allow_borders=True) & (raised > 0)
    markers, n_seeds = ndi.label(seeds, structure=_CROSS)
    if n_seeds < 2:
        return None
    return watershed(-distance, markers, mask=inside, connectivity=1)


def _keep_largest_4_connected(labels: np.ndarray) -> np.ndarray:
    """Keep each label's largest 4-connected piece (ties: the first in raster order)."""
    pieces = label_regions(labels, background=0, connectivity=1)
    n_pieces = int(pieces.max())
    if n_pieces == 0:
        return labels
    flat_pieces = pieces.ravel()
    sizes = np.bincount(flat_pieces, minlength=n_pieces + 1)[1:]
    nonzero = np.flatnonzero(flat_pieces)
    _, first = np.unique(flat_pieces[nonzero], return_index=True)
    first_pixel = nonzero[first]
    parent = labels.ravel()[first_pixel]
    if len(np.unique(parent)) == n_pieces:
        return labels
    # Sort by parent, then size descending, then first pixel (raster order) ascending.
    order = np.lexsort((first_pixel, -sizes, parent))
    keep_sorted = np.ones(n_pieces, dtype=bool)
    keep_sorted[1:] = parent[order][1:] != parent[order][:-1]
    keep = np.zeros(n_pieces + 1, dtype=bool)
    keep[order[keep_sorted] + 1] = True
    logger.debug("dropped %d detached fragment(s)", int(n_pieces - keep.sum()))
    return np.where(keep[pieces], labels, 0)


def remove_small_and_relabel(labels: np.ndarray, min_area_px: float) -> np.ndarray:
    """Drop objects under ``min_area_px`` pixels and renumber the rest.

    Parameters
    ----------
    labels
        ``(H, W)`` non-negative integer labels, 0 background.
    min_area_px
        Smallest area kept, in pixels (0 keeps every object).

    Returns
    -------
    np.ndarray
        int32 labels ``1..N`` in raster order of each object's first pixel.
    """
    flat = labels.ravel()
    n = int(flat.max()) + 1
    sizes = np.bincount(flat, minlength=n)
    nonzero = np.flatnonzero(flat)
    present, first = np.unique(flat[nonzero], return_index=True)
    keep = sizes[present] >= min_area_px
    present, first = present[keep], nonzero[first[keep]]
    new = np.zeros(n, dtype=np.int32)
    new[present[np.argsort(first, kind="stable")]] = np.arange(1, len(present) + 1, dtype=np.int32)
    return new[labels]
