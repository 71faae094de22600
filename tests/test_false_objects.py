"""Tests of dropping false objects: the confidence floor, the stain check (hematoxylin OD, no
darker than the ring) and the ink check."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from wsi_s2lcm.config import PostprocessConfig
from wsi_s2lcm.errors import ConfigError
from wsi_s2lcm.false_objects import (
    RING_UM,
    drop_false_objects,
    false_object_checks,
    separate_false_objects,
)
from wsi_s2lcm.stain import hematoxylin_od

PURPLE = (110, 70, 160)  # a hematoxylin-stained nucleus
STROMA = (225, 150, 195)  # the background: eosin-stained stroma
PINK = (230, 120, 170)  # an eosin-stained blob
DARK_PINK = (200, 60, 120)  # denser eosin: dark, but not hematoxylin
MPP = 0.5
CONFIG = PostprocessConfig()


def test_hematoxylin_od_orders_stains():
    values = hematoxylin_od(np.array([(255, 255, 255), PURPLE, PINK, DARK_PINK]))
    white, purple, pink, dark_pink = values
    assert white == pytest.approx(0.0)
    assert purple > 0.4
    assert pink < 0.1 and dark_pink < 0.1


def test_hematoxylin_od_refuses_non_rgb():
    with pytest.raises(ValueError, match="3 channels"):
        hematoxylin_od(np.zeros((4, 4)))


def _scene(colours, background=STROMA, shape=(60, 120)):
    """Discs of radius 6 px along a row, each painted its colour, on a plain background."""
    rgb = np.empty(shape + (3,), dtype=np.uint8)
    rgb[:] = background
    labels = np.zeros(shape, dtype=np.int32)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for value, colour in enumerate(colours, start=1):
        disc = np.hypot(yy - 30, xx - (20 + 40 * (value - 1))) <= 6
        labels[disc] = value
        rgb[disc] = colour
    probability = np.where(labels > 0, 0.9, 0.1)
    return labels, rgb, probability


def test_keeps_nuclei_and_drops_stroma_blobs():
    labels, rgb, probability = _scene([PURPLE, PINK, DARK_PINK])
    kept = drop_false_objects(labels, rgb, probability, CONFIG, MPP)
    assert kept.max() == 1
    assert np.array_equal(kept > 0, labels == 1)
    assert kept.dtype == np.int32


def test_renumbers_in_raster_order():
    labels, rgb, probability = _scene([PINK, PURPLE, PURPLE])
    kept = drop_false_objects(labels, rgb, probability, CONFIG, MPP)
    assert np.array_equal(np.unique(kept), [0, 1, 2])
    assert np.array_equal(kept == 1, labels == 2)
    assert np.array_equal(kept == 2, labels == 3)


def test_zero_contrast_keeps_everything():
    labels, rgb, probability = _scene([PURPLE, PINK, DARK_PINK])
    config = dataclasses.replace(CONFIG, min_hematoxylin_contrast=0.0)
    assert drop_false_objects(labels, rgb, probability, config, MPP) is labels


def test_contrast_is_a_ratio_to_the_ring():
    # A pale nucleus on a paler background passes at 1.0 and fails when it must be 3 times as dark.
    labels, rgb, probability = _scene([(150, 120, 190)], background=(200, 185, 215))
    inside = hematoxylin_od(np.array((150, 120, 190)))
    ring = hematoxylin_od(np.array((200, 185, 215)))
    assert 1.0 < inside / ring < 3.0
    assert drop_false_objects(labels, rgb, probability, CONFIG, MPP).max() == 1
    strict = dataclasses.replace(CONFIG, min_hematoxylin_contrast=3.0)
    assert drop_false_objects(labels, rgb, probability, strict, MPP).max() == 0


def test_ring_ignores_other_objects():
    # A pink blob squeezed between two nuclei: its ring is the stroma, not the nuclei.
    labels, rgb, probability = _scene([PURPLE, PINK, PURPLE])
    labels[28:33, 26:55] = 2
    rgb[28:33, 26:55] = PINK
    probability = np.where(labels > 0, 0.9, 0.1)
    kept = drop_false_objects(labels, rgb, probability, CONFIG, MPP)
    assert not np.any(kept[labels == 2])


def test_object_without_ring_is_kept():
    labels = np.ones((10, 10), dtype=np.int32)
    rgb = np.full((10, 10, 3), STROMA, dtype=np.uint8)
    kept = drop_false_objects(labels, rgb, np.full((10, 10), 0.9), CONFIG, MPP)
    assert np.array_equal(kept, labels)


def test_border_makes_the_decision_independent_of_the_cut():
    # A faintly purple blob (1) with a purple background band on its left, outside the window:
    # on the whole image its ring holds the band and it is dropped; in a window cut at its left
    # edge it is dropped only when the border brings the band back.
    labels, rgb, probability = _scene([(190, 90, 140)])
    rgb[:, :14] = PURPLE  # background band (probability 0.1) just left of the blob at x 14..26
    whole = drop_false_objects(labels, rgb, probability, CONFIG, MPP)
    assert whole.max() == 0
    border = int(np.ceil(RING_UM / MPP))
    x0 = 14
    inner = (slice(border, 60 - border), slice(x0, 120 - border))
    grown = (slice(0, 60), slice(x0 - border, 120))
    with_border = drop_false_objects(
        labels[inner], rgb[grown], probability[grown], CONFIG, MPP, border
    )
    assert with_border.max() == 0
    cut = drop_false_objects(labels[inner], rgb[inner], probability[inner], CONFIG, MPP)
    assert cut.max() == 1
    with pytest.raises(ValueError, match="border"):
        drop_false_objects(labels[inner], rgb[grown], probability[grown], CONFIG, MPP, border + 1)


def test_config_refuses_negative_contrast():
    with pytest.raises(ConfigError, match="min_hematoxylin_contrast"):
        PostprocessConfig(min_hematoxylin_contrast=-1.0)


TEAL_INK = (60, 130, 140)  # green-blue tissue-marking ink: dark, hematoxylin-like OD


def test_drops_objects_greener_than_red():
    labels, rgb, probability = _scene([PURPLE, TEAL_INK, PURPLE])
    assert hematoxylin_od(np.array([TEAL_INK]))[0] > hematoxylin_od(np.array([STROMA]))[0]
    kept = drop_false_objects(labels, rgb, probability, CONFIG, MPP)
    assert kept.max() == 2
    assert np.array_equal(kept > 0, (labels == 1) | (labels == 3))
    without = dataclasses.replace(CONFIG, drop_green=False)
    kept = drop_false_objects(labels, rgb, probability, without, MPP)
    assert np.array_equal(kept > 0, labels > 0)
    only_green = dataclasses.replace(CONFIG, min_hematoxylin_contrast=0.0)
    labels, rgb, probability = _scene([PINK, TEAL_INK])
    kept = drop_false_objects(labels, rgb, probability, only_green, MPP)
    assert np.array_equal(kept > 0, labels == 1)


def test_drops_objects_of_low_mean_probability():
    labels, rgb, probability = _scene([PURPLE, PURPLE, PURPLE])
    probability = probability.copy()
    probability[labels == 2] = 0.65  # a faint blob, just over the threshold everywhere
    third = labels == 3
    probability[third] = 0.55  # a sure core and an unsure rim: mean 0.7 or more is kept
    yy, xx = np.mgrid[: labels.shape[0], : labels.shape[1]]
    probability[np.hypot(yy - 30, xx - 100) <= 4] = 0.99
    assert probability[third].mean() >= CONFIG.min_mean_probability
    kept = drop_false_objects(labels, rgb, probability, CONFIG, MPP)
    assert np.array_equal(kept > 0, (labels == 1) | third)
    assert kept.max() == 2
    off = dataclasses.replace(CONFIG, min_mean_probability=0.0)
    assert drop_false_objects(labels, rgb, probability, off, MPP) is labels


def test_config_refuses_probability_floor_outside_unit_interval():
    for floor in (-0.1, 1.0):
        with pytest.raises(ConfigError, match="min_mean_probability"):
            PostprocessConfig(min_mean_probability=floor)


def test_checks_name_what_each_object_failed():
    labels, rgb, probability = _scene([PURPLE, TEAL_INK, PINK])
    probability = probability.copy()
    probability[labels == 3] = 0.6  # the pink blob is faint too
    failed = false_object_checks(labels, rgb, probability, CONFIG, MPP)
    assert list(failed) == ["green", "unstained", "low_probability"]
    assert failed["green"].tolist() == [False, False, True, False]
    assert failed["unstained"].tolist() == [False, False, False, True]
    assert failed["low_probability"].tolist() == [False, False, False, True]
    kept, removed, same = separate_false_objects(labels, rgb, probability, CONFIG, MPP)
    assert np.array_equal(kept > 0, labels == 1)
    assert np.array_equal(removed, np.where(labels > 1, labels, 0))
    assert same.keys() == failed.keys()
    assert false_object_checks(*_scene([PURPLE]), CONFIG, MPP) == {}
