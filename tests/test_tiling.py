"""The tile grid and the ownership rule, on small synthetic label images."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from wsi_s2lcm.config import TilingConfig
from wsi_s2lcm.errors import ConfigError
from wsi_s2lcm.tile_task import own_instances
from wsi_s2lcm.tiling import model_size, owner_of, tile_at, tile_grid


def test_cores_partition_the_image():
    config = TilingConfig(tile_size=128, overlap=32)
    width, height = 300, 200
    cover = np.zeros((height, width), dtype=int)
    for tile in tile_grid(width, height, config):
        x0, y0, x1, y1 = tile.core
        cover[y0:y1, x0:x1] += 1
        assert tile.x == x0 - config.margin and tile.y == y0 - config.margin
        assert tile.size == 128
    assert (cover == 1).all()


def test_owner_of_matches_core_contains():
    config = TilingConfig(tile_size=128, overlap=32)
    rng = np.random.default_rng(0)
    for x, y in rng.uniform(0, 299.99, size=(200, 2)):
        row, col = owner_of(x, y, config)
        assert tile_at(row, col, 300, 300, config).core_contains(x, y)


def test_model_size_rounds_up():
    assert model_size((1000, 1000), 0.25, 0.5) == (500, 500)
    assert model_size((1001, 999), 0.25, 0.5) == (501, 500)
    assert model_size((2220, 2967), 0.499, 0.5) == (2216, 2962)


@pytest.mark.parametrize(
    "values", [{"tile_size": 100}, {"overlap": 3}, {"overlap": 112, "tile_size": 128}]
)
def test_bad_tiling_is_refused(values):
    with pytest.raises(ConfigError):
        TilingConfig(**values)


def _disc(labels, cy, cx, radius, value):
    rows, cols = np.ogrid[: labels.shape[0], : labels.shape[1]]
    labels[(rows - cy) ** 2 + (cols - cx) ** 2 <= radius**2] = value


def test_ownership_keeps_core_objects_and_reports_large_cut_ones():
    config = TilingConfig(tile_size=128, overlap=32)
    tile = tile_at(1, 1, 1000, 1000, config)  # box [80, 208), core [96, 192)
    labels = np.zeros((128, 128), dtype=np.int32)
    _disc(labels, 60, 60, 5, 1)  # centroid in the core, whole: kept
    _disc(labels, 8, 60, 5, 2)  # centroid in the margin: a neighbour owns it
    _disc(labels, 60, 2, 4, 3)  # cut by the left edge, entirely in the margin: dropped
    _disc(labels, 60, 126, 30, 4)  # cut by the right edge, reaches the core: fragment
    ownership = own_instances(labels, tile, 1000, 1000)
    assert ownership.kept == [1]
    assert ownership.fragments == [4]


def test_closed_edges_do_not_cut():
    config = TilingConfig(tile_size=128, overlap=32)
    tile = tile_at(0, 0, 1000, 1000, config)  # box starts at -16: left and top are closed
    labels = np.zeros((128, 128), dtype=np.int32)
    _disc(labels, 60, 25, 30, 1)  # touches the closed left edge, centroid in the core
    ownership = own_instances(labels, tile, 1000, 1000)
    assert ownership.kept == [1] and ownership.fragments == []
    inner = tile_at(0, 1, 1000, 1000, config)  # the same object at an open left edge
    assert own_instances(labels, inner, 1000, 1000).fragments == [1]


def test_tiling_module_imports_no_heavy_dependency():
    code = (
        "import sys, wsi_s2lcm.tiling, wsi_s2lcm.config, wsi_s2lcm.rasterize; "
        "print(sorted(m for m in ('torch', 'dask', 'click', 'zarr') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_outside_the_slide_is_background():
    from wsi_s2lcm.tile_task import outside_to_background

    probability = np.ones((8, 8), dtype=np.float32)
    inside = outside_to_background(probability, -2, -3, 5, 100)
    assert inside[3:, 2:7].all() and inside[:3].sum() == 0 and inside[:, :2].sum() == 0
    assert inside[:, 7:].sum() == 0
    assert outside_to_background(probability, 0, 0, 8, 8) is probability
