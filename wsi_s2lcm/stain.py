"""Hematoxylin optical density of RGB pixels.

Colour deconvolution with the Ruifrok & Johnston stain vectors (as in
:func:`skimage.color.rgb2hed`), on the base-10 optical density ``-log10(I / 255)``. It feeds the
"Hematoxylin OD mean" measurement of every nucleus and the stain check of post-processing.
"""

from __future__ import annotations

import numpy as np
from skimage.color import hed_from_rgb

_HEMATOXYLIN_FROM_OD = np.ascontiguousarray(hed_from_rgb[:, 0])


def hematoxylin_od(rgb: np.ndarray) -> np.ndarray:
    """Hematoxylin optical density of each pixel.

    Parameters
    ----------
    rgb
        ``(..., 3)`` uint8 (or 0-255 float) RGB values.

    Returns
    -------
    np.ndarray
        ``(...)`` float64 hematoxylin OD; 0 for white, about 0.5-1 inside a well-stained nucleus.
    """
    rgb = np.asarray(rgb)
    if rgb.shape[-1:] != (3,):
        raise ValueError(f"rgb must have 3 channels in its last axis, not shape {rgb.shape}.")
    optical_density = -np.log10(np.maximum(rgb.astype(np.float64), 1.0) / 255.0)
    return optical_density @ _HEMATOXYLIN_FROM_OD
