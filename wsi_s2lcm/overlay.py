"""A downsampled picture of the slide with nucleus outlines drawn on it, saved as PNG."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from shapely.geometry import MultiPolygon, Polygon

logger = logging.getLogger(__name__)

#: Outline colour: bright green stands out on pink and purple H&E.
OUTLINE_COLOR = (0, 255, 0)


class Overlay:
    """Draw level-0 nucleus outlines onto a thumbnail of the slide.

    Parameters
    ----------
    thumbnail_rgb
        ``(h, w, 3)`` uint8 RGB picture of the whole slide.
    level0_per_px
        Level-0 pixels per thumbnail pixel (the thumbnail's downsample).
    color
        Outline colour (RGB).
    """

    def __init__(
        self,
        thumbnail_rgb: np.ndarray,
        level0_per_px: float,
        color: tuple[int, int, int] = OUTLINE_COLOR,
    ) -> None:
        thumbnail_rgb = np.asarray(thumbnail_rgb)
        if thumbnail_rgb.ndim != 3 or thumbnail_rgb.shape[2] != 3:
            raise ValueError(f"thumbnail must be (h, w, 3) RGB, not shape {thumbnail_rgb.shape}.")
        if not level0_per_px > 0:
            raise ValueError(f"level0_per_px must be > 0, not {level0_per_px}.")
        self.image = Image.fromarray(thumbnail_rgb.astype(np.uint8, copy=False), mode="RGB")
        self.level0_per_px = float(level0_per_px)
        self.color = tuple(int(c) for c in color)
        self.count = 0
        self._draw = ImageDraw.Draw(self.image)

    def add(self, polygons: Iterable[Polygon | MultiPolygon]) -> None:
        """Draw the outlines (shells and holes) of level-0 polygons."""
        for polygon in polygons:
            for part in getattr(polygon, "geoms", [polygon]):
                for ring in [part.exterior, *part.interiors]:
                    xy = np.asarray(ring.coords)[:, :2] / self.level0_per_px
                    points = [tuple(p) for p in xy.tolist()]
                    if len(points) > 1:
                        self._draw.line(points, fill=self.color, width=1)
                    elif points:
                        self._draw.point(points, fill=self.color)
            self.count += 1

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the picture as PNG (through a ``.partial`` file renamed into place)."""
        path = Path(path)
        partial = path.with_name(path.name + ".partial")
        try:
            self.image.save(partial, format="PNG")
            os.replace(partial, path)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        logger.info("wrote overlay of %d nuclei to %s", self.count, path)
        return path
