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


def enlarge_batch(batch: np.ndarray, zoom: float) -> np.ndarray:
    """``(N, H, W, 3)`` uint8 RGB enlarged by ``zoom`` (bicubic), to ``round(H * zoom)`` rows."""
    import cv2

    height, width = batch.shape[1:3]
    size = (round(width * zoom), round(height * zoom))
    return np.stack([cv2.resize(image, size, interpolation=cv2.INTER_CUBIC) for image in batch])


def shrink_probabilities(probabilities: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(N, h, w)`` float32 probabilities brought back to ``(N, height, width)`` by area
    averaging (each output pixel the mean of the enlarged pixels it covers)."""
    import cv2

    return np.stack([
        cv2.resize(p, (width, height), interpolation=cv2.INTER_AREA) for p in probabilities
    ]).astype(np.float32)
