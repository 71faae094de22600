"""Tests of wsi_s2lcm.tissue on the real slides and synthetic images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wsi_s2lcm.slide import ArraySlide, open_slide
from wsi_s2lcm.tissue import TissueMask, tissue_from_rgb, tissue_mask


def test_cmu_mask_is_the_tissue_strip(slides_dir: Path) -> None:
    with open_slide(slides_dir / "CMU-1-Small-Region.svs") as slide:
        mask = tissue_mask(slide)
    assert 0.25 < mask.fraction < 0.6
    assert mask.any_in((900, 1400, 1100, 1600))  # the middle of the strip
    assert not mask.any_in((0, 2000, 300, 2300))  # white glass on the left
    assert mask.mask.shape == (np.ceil(2967 / mask.downsample), np.ceil(2220 / mask.downsample))


def test_tcga_mask_is_mostly_tissue(slides_dir: Path) -> None:
    with open_slide(slides_dir / "TCGA-CR-7395-01A-01-TS1.svs", mpp=0.25) as slide:
        mask = tissue_mask(slide)
        assert 0.45 < mask.fraction < 0.85
        assert not mask.any_in((0, 3400, 400, 3567))  # background, bottom-left
        assert 0.3 < mask.area_mm2(slide.mpp) < 0.99 * 4443 * 3567 * 0.25**2 / 1e6


def test_monuseg_tile_is_all_tissue(monuseg_dir: Path) -> None:
    for path in sorted((monuseg_dir / "images").glob("*.tif"))[:3]:
        with open_slide(path, mpp=0.25) as slide:
            mask = tissue_mask(slide)
        assert mask.fraction > 0.95
        assert max(mask.mask.shape) >= 256


def test_white_and_grey_images_give_empty_masks() -> None:
    for value in (255, 235):
        mask = tissue_mask(ArraySlide(np.full((2000, 3000, 3), value, np.uint8), mpp=0.5))
        assert mask.fraction == 0.0 and not mask.any_in((0, 0, 3000, 2000))
        assert mask.area_mm2(0.5) == 0.0


def test_pink_square_on_white() -> None:
    image = np.full((1000, 1000, 3), 245, np.uint8)
    image[200:600, 300:700] = (220, 120, 180)
    tissue = tissue_from_rgb(image, pixel_um=2.0)
    assert tissue[200:600, 300:700].all() and tissue.sum() == 400 * 400


def test_mask_geometry_and_area() -> None:
    grid = np.zeros((10, 20), bool)
    grid[2:4, 5:8] = True
    mask = TissueMask(grid, downsample=16.0)
    assert mask.area_mm2(0.5) == pytest.approx(6 * (16 * 0.5 / 1000) ** 2)
    assert mask.any_in((5 * 16, 2 * 16, 5 * 16 + 1, 2 * 16 + 1))
    assert not mask.any_in((0, 0, 5 * 16, 2 * 16))  # ends exactly where tissue starts
    assert not mask.any_in((8 * 16, 0, 400, 400)) and not mask.any_in((-50, -50, -1, -1))
    assert mask.fraction == pytest.approx(6 / 200)


def test_mask_mpp_is_respected_on_large_slides() -> None:
    slide = ArraySlide(np.full((4000, 6000, 3), 255, np.uint8), mpp=1.0)
    assert tissue_mask(slide, mask_mpp=8.0).downsample == pytest.approx(8.0)
    assert tissue_mask(slide, mask_mpp=8.0).mask.shape == (500, 750)


def test_contains_is_a_point_test_in_level0_pixels():
    import numpy as np

    from wsi_s2lcm.tissue import TissueMask

    mask = np.zeros((4, 4), dtype=bool)
    mask[1, 2] = True
    tissue = TissueMask(mask, 8.0)
    assert tissue.contains(2 * 8 + 0.5, 1 * 8 + 7.9)
    assert not tissue.contains(2 * 8 - 0.1, 1 * 8 + 1)
    assert not tissue.contains(-1, 0) and not tissue.contains(1000, 1000)
