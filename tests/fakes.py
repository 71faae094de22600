"""A translation-invariant stand-in for the network, for exact seam tests."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class DarknessPredictor:
    """Nucleus probability as a pointwise function of RGB: dark, bluish pixels are nuclei.

    Being pointwise it is exactly translation invariant, so tiled and untiled runs must agree
    pixel for pixel. It is its own picklable spec (``build`` returns itself).
    """

    mpp: float = 0.5
    midpoint: float = 120.0
    softness: float = 12.0

    def build(self) -> "DarknessPredictor":
        return self

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        rgb = batch.astype(np.float32)
        darkness = self.midpoint - (0.5 * rgb[..., 0] + 0.3 * rgb[..., 1] + 0.2 * rgb[..., 2])
        return (1.0 / (1.0 + np.exp(-darkness / self.softness))).astype(np.float32)
