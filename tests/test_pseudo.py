"""EMA ensembles of predictions and the pseudo-label thresholds, on small arrays."""

from __future__ import annotations

import numpy as np
import pytest

from wsi_s2lcm.training.pseudo import (
    IGNORE,
    EmaMaps,
    combine_labels,
    ema_estimate,
    ema_update,
    pseudo_labels,
)


def test_ema_update_weights_the_new_prediction_by_alpha():
    ybar = np.array([0.0, 1.0, 0.5], np.float32)
    p = np.array([1.0, 0.0, 0.5], np.float32)
    assert np.allclose(ema_update(ybar, p, 0.2, count=3), [0.2, 0.8, 0.5])


def test_first_init_starts_from_the_first_prediction():
    p = np.array([0.9, 0.1], np.float32)
    assert np.allclose(ema_update(None, p, 0.1, count=0, init="first"), p)


def test_zero_init_needs_many_updates_to_pass_a_high_threshold():
    p = np.ones(1, np.float32)
    ybar, count = None, 0
    while pseudo_labels(ybar if ybar is not None else np.zeros(1), 0.95)[0] != 1:
        ybar = ema_update(ybar, p, 0.1, count, init="zero")
        count += 1
    assert count == 29  # as METHOD.md says: about 29 updates with a = 0.1, tau = 0.95


@pytest.mark.parametrize("count", [1, 2, 7])
def test_bias_correction_recovers_a_constant_prediction(count):
    p = np.full(3, 0.97, np.float32)
    ybar = None
    for n in range(count):
        ybar = ema_update(ybar, p, 0.1, n, init="bias_correct")
    assert np.allclose(ema_estimate(ybar, 0.1, count, "bias_correct"), p, atol=1e-6)
    assert not np.allclose(ema_estimate(ybar, 0.1, count, "zero"), p, atol=1e-3)


def test_pseudo_labels_are_strict_thresholds_on_both_sides():
    ybar = np.array([0.0, 0.24, 0.25, 0.5, 0.75, 0.76, 1.0])
    assert pseudo_labels(ybar, 0.75).tolist() == [0, 0, IGNORE, IGNORE, IGNORE, 1, 1]


def test_scribbles_override_pseudo_labels():
    scribbles = np.array([1, IGNORE, 0, IGNORE], np.uint8)
    pseudo = np.array([0, 1, 1, IGNORE], np.uint8)
    assert combine_labels(scribbles, pseudo).tolist() == [1, 1, 0, IGNORE]


def test_ema_maps_track_each_image_separately():
    maps = EmaMaps(alpha=0.5, tau=0.8, init="first")
    assert maps.labels("a") is None
    maps.update("a", np.array([1.0, 0.0]))
    maps.update("a", np.array([0.0, 0.0]))
    maps.update("b", np.array([0.9, 0.1]))
    assert maps.counts == {"a": 2, "b": 1}
    assert np.allclose(maps.estimate("a"), [0.5, 0.0])
    assert maps.labels("a").tolist() == [IGNORE, 0]
    assert maps.labels("b").tolist() == [1, 0]
