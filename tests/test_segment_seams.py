"""Seams: tiling a real image gives the instances of one untiled pass (fake predictor)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fakes import DarknessPredictor
from wsi_s2lcm.config import ExportConfig, PostprocessConfig, TilingConfig
from wsi_s2lcm.false_objects import drop_false_objects
from wsi_s2lcm.postprocess import instances_from_probability
from wsi_s2lcm.qupath.export import read_features
from wsi_s2lcm.rasterize import rasterize_polygons
from wsi_s2lcm.segment import segment_slide
from wsi_s2lcm.slide import open_slide
from wsi_s2lcm.store import LabelStore
from wsi_s2lcm.tile_task import outside_to_background
from shapely.geometry import shape

IMAGE = "TCGA-18-5592-01Z-00-DX1"
# A strict stain check, so that it drops objects (85 of 466 here) and its ring, read from the
# context beyond each tile, is exercised across tile borders.
POST = PostprocessConfig(min_hematoxylin_contrast=2.0)


def assert_same_partition(a: np.ndarray, b: np.ndarray) -> None:
    """Two label images are equal up to relabeling (a bijection between nonzero labels)."""
    assert a.shape == b.shape
    assert np.array_equal(a > 0, b > 0), f"{np.sum((a > 0) != (b > 0))} pixels differ in fg"
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    assert len(np.unique(pairs[0])) == pairs.shape[1], "an object of a is split in b"
    assert len(np.unique(pairs[1])) == pairs.shape[1], "objects of a are merged in b"


@pytest.fixture(scope="module")
def untiled(monuseg_dir):
    predictor = DarknessPredictor()
    post = POST
    slide = open_slide(monuseg_dir / "images" / f"{IMAGE}.tif", mpp=0.25)
    # One pass over the whole image, with the reader's convention outside the image (mirrored).
    pad = 32
    rgb = slide.read(-pad, -pad, 500 + 2 * pad, 500 + 2 * pad, 0.5)
    probability = outside_to_background(predictor(rgb[None])[0], -pad, -pad, 500, 500)
    labels = instances_from_probability(probability, post, 0.5)
    labels = drop_false_objects(labels, rgb, probability, post, 0.5)
    return labels[pad:-pad, pad:-pad]


@pytest.mark.parametrize("workers", [0, 2])
def test_tiled_equals_untiled_with_fake_predictor(tmp_path, monuseg_dir, untiled, workers):
    from wsi_s2lcm.dispatch import open_dispatcher

    path = monuseg_dir / "images" / f"{IMAGE}.tif"
    tiling = TilingConfig(tile_size=128, overlap=32, batch_size=3, tissue_mask=False)
    with open_dispatcher(workers=workers) as dispatcher:
        summary = segment_slide(
            path, tmp_path, mpp=0.25, tiling=tiling, postprocess=POST,
            predictor_spec=DarknessPredictor(), dispatcher=dispatcher,
            export=ExportConfig(overlay=False),
        )
    tiled = LabelStore.open(tmp_path / f"{IMAGE}.zarr").read(0, 0, 500, 500)
    assert_same_partition(tiled, untiled)
    assert summary["nuclei"] == len(np.unique(untiled)) - 1
    assert summary["large_nuclei_resegmented"] > 0, "the test should exercise large nuclei"

    features = read_features(tmp_path / f"{IMAGE}.geojson")
    assert len(features) == summary["nuclei"]
    polygons = [shape(f["geometry"]) for f in features]
    rasterized = rasterize_polygons(polygons, (500, 500), scale=2.0)
    assert_same_partition(rasterized, tiled)
    saved = json.loads((tmp_path / f"{IMAGE}.json").read_text())
    assert saved["nuclei"] == summary["nuclei"]


def test_a_slide_replaced_at_the_same_path_is_read_again(tmp_path, monuseg_dir):
    """Tile readers are cached per process; a new file at the same path must not be read stale."""
    import shutil

    images = sorted((monuseg_dir / "images").glob("*.tif"))[:2]
    path = tmp_path / "slide.tif"
    tiling = TilingConfig(tile_size=256, tissue_mask=False)
    counts = []
    for index, image in enumerate(images):
        shutil.copy(image, path)
        summary = segment_slide(path, tmp_path / f"out{index}", mpp=0.25, tiling=tiling,
                                predictor_spec=DarknessPredictor(),
                                export=ExportConfig(overlay=False, labels=False))
        fresh = segment_slide(image, tmp_path / f"fresh{index}", mpp=0.25, tiling=tiling,
                              predictor_spec=DarknessPredictor(),
                              export=ExportConfig(overlay=False, labels=False))
        counts.append((summary["nuclei"], fresh["nuclei"]))
    assert counts[0][0] != counts[1][0], "the two images should differ"
    assert all(replaced == fresh for replaced, fresh in counts)
