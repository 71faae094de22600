"""Threshold and separation calibrated on nucleus scribbles: error counts, the choice of
threshold and height, the id raster."""

from __future__ import annotations

import numpy as np
import pytest
import shapely

from wsi_s2lcm.config import PostprocessConfig
from wsi_s2lcm.qupath.imports import BACKGROUND, NUCLEUS, Scribble
from wsi_s2lcm.training.calibrate import calibrate_separation, scribble_errors
from wsi_s2lcm.training.scribbles import rasterize_nucleus_ids


def test_scribble_errors_count_splits_merges_and_misses() -> None:
    labels = np.array([
        [1, 1, 0, 2, 2, 0, 0],
        [1, 1, 0, 2, 3, 0, 0],
    ])
    ids = np.array([
        [1, 2, 0, 3, 0, 0, 4],  # scribbles 1 and 2 both in instance 1: one merge; 4 missed
        [0, 0, 0, 3, 3, 0, 0],  # scribble 3 crosses instances 2 and 3: one split
    ])
    assert scribble_errors(labels, ids) == {"split": 1, "merged": 1, "missed": 1, "scribbles": 4}
    assert scribble_errors(labels, np.zeros_like(ids))["scribbles"] == 0
    with pytest.raises(ValueError, match="shape"):
        scribble_errors(labels, ids[:, :3])


def _stained(probability: np.ndarray) -> np.ndarray:
    """An RGB image with purple (hematoxylin) where ``probability`` is high, pale pink elsewhere,
    so that the checks of post-processing keep the objects."""
    rgb = np.empty(probability.shape + (3,), np.uint8)
    rgb[...] = (235, 215, 230)
    rgb[probability > 0.3] = (90, 60, 140)
    return rgb


def _two_touching_discs() -> tuple[np.ndarray, np.ndarray]:
    """Two discs of radius 8 px whose centres are 13 px apart, one scribble across each."""
    yy, xx = np.mgrid[0:32, 0:48]
    probability = np.zeros((32, 48))
    ids = np.zeros((32, 48), np.int32)
    for value, cx in enumerate((17, 30), start=1):
        probability[(yy - 16) ** 2 + (xx - cx) ** 2 <= 64] = 0.9
        ids[16, cx - 3:cx + 4] = value
    return probability, ids


def test_calibration_picks_a_height_that_splits_the_touching_pair() -> None:
    probability, ids = _two_touching_discs()
    config, table = calibrate_separation([_stained(probability)], [probability], [ids], mpp=0.5,
                                         heights_um=(0.5, 4.0))
    by_height = {row["h_um"]: row for row in table}
    assert by_height[4.0]["merged"] == 1 and by_height[0.5]["merged"] == 0
    assert config.h_um == 0.5 and config.separate
    assert config.threshold == PostprocessConfig().threshold


def test_calibration_picks_the_threshold_that_cuts_a_neck_but_keeps_a_faint_nucleus() -> None:
    yy, xx = np.mgrid[0:40, 0:80]
    probability = np.zeros((40, 80))
    ids = np.zeros((40, 80), np.int32)
    probability[12:28, 10:50] = 0.55  # a wide neck of middling probability ...
    for value, cx in enumerate((16, 44), start=1):  # ... between two sure nuclei
        probability[(yy - 20) ** 2 + (xx - cx) ** 2 <= 64] = 0.9
        ids[20, cx - 3:cx + 4] = value
    probability[(yy - 20) ** 2 + (xx - 68) ** 2 <= 36] = 0.65  # a faint nucleus
    ids[20, 66:71] = 3
    # ties would go to 0.7: only counting the faint nucleus as missed there prefers 0.6
    base = PostprocessConfig(min_mean_probability=0.0, threshold=0.7)
    config, table = calibrate_separation(
        [_stained(probability)], [probability], [ids], 0.5, (4.0,), (0.5, 0.6, 0.7), base
    )
    by_threshold = {row["threshold"]: row for row in table}
    assert by_threshold[0.5]["merged"] == 1 and by_threshold[0.5]["missed"] == 0
    assert by_threshold[0.6]["merged"] == 0 and by_threshold[0.6]["missed"] == 0
    assert by_threshold[0.7]["merged"] == 0 and by_threshold[0.7]["missed"] == 1
    assert (config.threshold, config.h_um) == (0.6, 4.0)
    assert config.min_mean_probability == 0.0  # the other values are kept


def test_calibration_ties_go_to_the_default_height_and_bad_input_is_refused() -> None:
    probability, ids = _two_touching_discs()
    rgb = _stained(probability)
    far = np.where(ids == 1, 1, 0)  # one scribble only: no height can err
    config, _ = calibrate_separation([rgb], [probability], [far], 0.5, (0.25, 0.75, 1.5))
    assert config.h_um == PostprocessConfig().h_um
    with pytest.raises(ValueError, match="no nucleus scribble"):
        calibrate_separation([rgb], [probability], [np.zeros_like(ids)], 0.5, (0.5,))
    with pytest.raises(ValueError, match="no candidate"):
        calibrate_separation([rgb], [probability], [ids], 0.5, ())
    with pytest.raises(ValueError, match="one of each"):
        calibrate_separation([], [probability], [ids], 0.5, (0.5,))


def test_nucleus_ids_paint_each_nucleus_scribble_apart() -> None:
    scribbles = [
        Scribble(NUCLEUS, shapely.LineString([(2.5, 2.5), (8.5, 2.5)]), "Nucleus"),
        Scribble(BACKGROUND, shapely.LineString([(2.5, 6.5), (8.5, 6.5)]), "Background"),
        Scribble(NUCLEUS, shapely.box(10, 4, 14, 8), "Nucleus"),
    ]
    ids = rasterize_nucleus_ids(scribbles, (10, 16))
    assert set(np.unique(ids)) == {0, 1, 2}
    assert (ids[2, 2:9] == 1).all() and (ids == 1).sum() == 7
    assert (ids[4:8, 10:14] == 2).all() and (ids == 2).sum() == 16
    assert not ids[6, :10].any()  # the background scribble
