"""Tests of wsi_s2lcm.overlay: outlines drawn at the thumbnail's scale."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from PIL import Image

from wsi_s2lcm.overlay import OUTLINE_COLOR, Overlay


def test_outlines_are_drawn_scaled_and_saved_as_png(tmp_path):
    thumbnail = np.full((50, 60, 3), (230, 180, 210), np.uint8)
    overlay = Overlay(thumbnail, level0_per_px=16.0)
    square = shapely.box(160.0, 320.0, 480.0, 640.0)  # thumbnail (10, 20)-(30, 40)
    ring = shapely.box(640.0, 160.0, 800.0, 480.0).difference(shapely.box(680, 240, 760, 400))
    overlay.add([square, shapely.MultiPolygon([ring])])
    path = overlay.save(tmp_path / "overlay.png")
    assert not (tmp_path / "overlay.png.partial").exists()
    with Image.open(path) as image:
        assert image.format == "PNG"
        pixels = np.asarray(image.convert("RGB"))
    green = np.all(pixels == OUTLINE_COLOR, axis=-1)
    assert green[20, 10] and green[40, 30] and green[30, 10]  # corners and an edge of the square
    assert not green[30, 20]  # its inside is untouched
    assert green[15, 42] and green[15, 47]  # the hole of the ring is outlined too
    assert not green[5:9, 5:9].any()  # far from every outline
    assert np.array_equal(pixels[0, 0], (230, 180, 210))
    assert overlay.count == 2


def test_bad_thumbnail_is_refused():
    with pytest.raises(ValueError, match="RGB"):
        Overlay(np.zeros((10, 10)), 4.0)
    with pytest.raises(ValueError, match="level0_per_px"):
        Overlay(np.zeros((10, 10, 3), np.uint8), 0)
