"""Tissue detection on a low-resolution view of a slide (H&E on a white background).

A pixel is tissue when it is coloured (HSV saturation) or dark (optical density) beyond an Otsu
threshold that is clamped to a sane range, so an all-white image gives an empty mask and an image
that is all tissue (a MoNuSeg tile) stays all tissue instead of being split into nuclei and stroma.
Small specks are removed and small holes filled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage import morphology
from skimage.filters import threshold_otsu

from wsi_s2lcm.slide import Slide

#: Clamp ranges of the Otsu thresholds on saturation (0-1) and max-channel optical density.
SATURATION_RANGE = (0.05, 0.15)
DENSITY_RANGE = (0.25, 0.6)
#: Specks below this area are dropped; holes below this area are filled (µm²).
MIN_TISSUE_UM2 = 2_000.0
MAX_HOLE_UM2 = 10_000.0
#: A mask's long side is at least this many pixels (small images are masked finer than mask_mpp).
MIN_MASK_SIDE = 256


@dataclass(frozen=True, eq=False)
class TissueMask:
    """A boolean tissue mask over the whole slide.

    Attributes
    ----------
    mask
        (rows, cols) bool array; True is tissue. Pixel (r, c) covers level-0
        [c * downsample, (c + 1) * downsample) x [r * downsample, (r + 1) * downsample).
    downsample
        Level-0 pixels per mask pixel.
    """

    mask: np.ndarray
    downsample: float

    @property
    def fraction(self) -> float:
        """Fraction of mask pixels that are tissue (0 for an empty mask)."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    def area_mm2(self, level0_mpp: float) -> float:
        """Tissue area in mm² given the slide's level-0 microns per pixel."""
        pixel_mm = self.downsample * level0_mpp / 1000.0
        return float(self.mask.sum()) * pixel_mm * pixel_mm

    def any_in(self, box_level0: tuple[float, float, float, float]) -> bool:
        """Return True if any tissue lies in the level-0 box (x0, y0, x1, y1), x1/y1 exclusive."""
        x0, y0, x1, y1 = box_level0
        rows, cols = self.mask.shape
        c0 = max(0, math.floor(x0 / self.downsample))
        r0 = max(0, math.floor(y0 / self.downsample))
        c1 = min(cols, math.ceil(x1 / self.downsample))
        r1 = min(rows, math.ceil(y1 / self.downsample))
        if c1 <= c0 or r1 <= r0:
            return False
        return bool(self.mask[r0:r1, c0:c1].any())

    def contains(self, x_level0: float, y_level0: float) -> bool:
        """Return True if the level-0 point lies on a tissue pixel of the mask."""
        col = math.floor(x_level0 / self.downsample)
        row = math.floor(y_level0 / self.downsample)
        rows, cols = self.mask.shape
        return 0 <= row < rows and 0 <= col < cols and bool(self.mask[row, col])


def _clamped_otsu(values: np.ndarray, bounds: tuple[float, float]) -> float:
    """Otsu threshold of ``values`` clamped to ``bounds`` (the lower bound if values are constant)."""
    if values.size == 0 or values.min() == values.max():
        return bounds[0]
    return float(np.clip(threshold_otsu(values), *bounds))


def tissue_from_rgb(rgb: np.ndarray, pixel_um: float) -> np.ndarray:
    """Return the bool tissue mask of an RGB uint8 image whose pixels are ``pixel_um`` µm wide."""
    pixels = rgb.astype(np.float32)
    high, low = pixels.max(axis=-1), pixels.min(axis=-1)
    saturation = np.where(high > 0, (high - low) / np.maximum(high, 1.0), 0.0)
    density = -np.log10((low + 1.0) / 256.0)
    tissue = (saturation > _clamped_otsu(saturation, SATURATION_RANGE)) | (
        density > _clamped_otsu(density, DENSITY_RANGE)
    )
    pixel_area = pixel_um * pixel_um
    radius = max(1, round(16.0 / pixel_um))
    if min(tissue.shape) > 2 * radius:
        tissue = ndimage.binary_closing(tissue, morphology.disk(radius), border_value=0) | tissue
    tissue = _drop_small(tissue, MIN_TISSUE_UM2 / pixel_area)
    return ~_drop_small(~tissue, MAX_HOLE_UM2 / pixel_area)


def _drop_small(mask: np.ndarray, max_pixels: float) -> np.ndarray:
    """Remove the 8-connected components of ``mask`` with at most ``max_pixels`` pixels."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if count == 0:
        return mask
    keep = np.bincount(labels.ravel()) > max_pixels
    keep[0] = False
    return keep[labels]


def tissue_mask(slide: Slide, mask_mpp: float = 8.0) -> TissueMask:
    """Detect tissue on ``slide`` read at ``mask_mpp`` (finer for small slides).

    Parameters
    ----------
    slide
        Any :class:`~wsi_s2lcm.slide.Slide`.
    mask_mpp
        Microns per mask pixel. Slides smaller than ``MIN_MASK_SIDE`` mask pixels on their long
        side are masked finer, but never finer than the slide's own mpp.
    """
    width, height = slide.dimensions
    long_side_um = max(width, height) * slide.mpp
    pixel_um = max(slide.mpp, min(mask_mpp, long_side_um / MIN_MASK_SIDE))
    downsample = pixel_um / slide.mpp
    cols = max(1, math.ceil(width / downsample))
    rows = max(1, math.ceil(height / downsample))
    rgb = slide.read(0, 0, cols, rows, pixel_um)
    return TissueMask(tissue_from_rgb(rgb, pixel_um), downsample)
