"""The reading zoom: showing the network small nuclei larger than the model's resolution.

A model learns nuclei of the sizes its training images hold. Slides whose nuclei are much
smaller (packed kidney or lymphocyte nuclei) are segmented better when each tile is enlarged
before the network and its probabilities brought back to the model's resolution (docs/MODEL.md,
*The reading zoom*). The zoom is chosen once per slide from the median area of the nuclei found
without it, so that the median nucleus the network sees has a reference area recorded on the
model's card (``nucleus_area_um2``, calibrated on held-out scribbles). It is never below 1:
large nuclei are read as they are.
"""

from __future__ import annotations

import math

import numpy as np

from wsi_s2lcm.errors import ConfigError

#: The largest zoom chosen automatically (3 times the network's work per tile).
MAX_ZOOM = 1.75
#: Automatic zooms are multiples of this step, rounded down, so that small differences in the
#: measured median do not change the zoom.
ZOOM_STEP = 0.125


def zoom_for_nuclei(median_area_um2: float, reference_area_um2: float) -> float:
    """The zoom that brings a slide's median nucleus area up to the reference area.

    Parameters
    ----------
    median_area_um2
        Median area of the nuclei found at zoom 1 (µm² at the model's resolution).
    reference_area_um2
        The model's reference area (its card's ``nucleus_area_um2``); 0 turns the zoom off.

    Returns
    -------
    float
        ``sqrt(reference / median)``, rounded down to a multiple of :data:`ZOOM_STEP` and kept
        within ``[1, MAX_ZOOM]``; 1 when either area is 0 or no nucleus was measured.
    """
    if reference_area_um2 <= 0 or not median_area_um2 > 0:
        return 1.0
    wanted = math.sqrt(reference_area_um2 / median_area_um2)
    stepped = math.floor(wanted / ZOOM_STEP + 1e-9) * ZOOM_STEP
    return float(min(MAX_ZOOM, max(1.0, stepped)))


def check_zoom(zoom: float) -> float:
    """``zoom`` as a float; ConfigError unless it lies in ``[1, 4]``."""
    zoom = float(zoom)
    if not 1.0 <= zoom <= 4.0:
        raise ConfigError(f"zoom {zoom:g} must lie between 1 (tiles as read) and 4.")
    return zoom


def enlarged_span(start: int, count: int, zoom: float, multiple: int = 32) -> tuple[int, int]:
    """The enlarged-frame pixels ``(first, count)`` that cover model pixels
    ``start .. start + count``, with ``first`` on a multiple of ``multiple``.

    Model pixel ``i`` covers ``[i * zoom, (i + 1) * zoom)`` of the enlarged frame. Starting every
    window on the same grid of the network's largest stride (32 px) makes what the network
    computes for a place of the slide the same in every window that holds it, as it is without
    the zoom, so the result does not depend on the tiling.
    """
    first = math.floor(start * zoom / multiple) * multiple
    last = math.ceil((start + count) * zoom / multiple) * multiple
    return first, last - first


def area_weights(start: int, count: int, zoom: float, first: int, size: int) -> np.ndarray:
    """``(count, size)`` weights that average enlarged pixels ``first .. first + size`` back to
    model pixels ``start .. start + count``: each row holds the share of the model pixel's span
    ``[i * zoom, (i + 1) * zoom)`` that each enlarged pixel covers, and sums to 1."""
    low = (start + np.arange(count, dtype=np.float64))[:, None] * zoom
    edges = first + np.arange(size, dtype=np.float64)[None, :]
    overlap = np.minimum(low + zoom, edges + 1) - np.maximum(low, edges)
    return (np.clip(overlap, 0.0, None) / zoom).astype(np.float32)


def shrink_window(
    probability: np.ndarray, x: int, y: int, width: int, height: int, zoom: float,
    first_x: int, first_y: int,
) -> np.ndarray:
    """Area-average an enlarged window's ``(h, w)`` probability, whose first pixel is
    ``(first_x, first_y)`` of the enlarged frame, back to the ``height x width`` model-frame
    window at ``(x, y)``."""
    rows = area_weights(y, height, zoom, first_y, probability.shape[0])
    columns = area_weights(x, width, zoom, first_x, probability.shape[1])
    return rows @ probability.astype(np.float32) @ columns.T
