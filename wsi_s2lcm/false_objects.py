"""Which objects of a tile are not nuclei, by their colour or the network's confidence.

:func:`false_object_checks` runs three checks on the instances of
:func:`~wsi_s2lcm.postprocess.instances_from_probability`: objects greener than red
(tissue-marking ink), objects no darker in hematoxylin than the background around them (the
network's typical mistake on slides stained pinker than its training data: blobs of
eosin-stained stroma) and objects the network is not confident of (a low mean nucleus
probability). :func:`drop_false_objects` removes the objects that fail one;
:func:`separate_false_objects` also returns them, for the run summary's counts.

Each object is decided from its own pixels and the pixels within :data:`RING_UM` of it, so the
decision stays local (the seams between tiles stay exact, :mod:`wsi_s2lcm.postprocess`) as long
as the caller passes that much of the image around the tile (the network's context is far
wider).
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage as ndi

from wsi_s2lcm.config import PostprocessConfig
from wsi_s2lcm.postprocess import remove_small_and_relabel
from wsi_s2lcm.stain import hematoxylin_od

logger = logging.getLogger(__name__)

#: Width (µm) of the ring of background around an object that :func:`drop_false_objects` compares
#: the object's hematoxylin with.
RING_UM = 2.0

#: The checks of :func:`false_object_checks`, in the order that attributes each removed object
#: to the first one it fails.
FALSE_OBJECT_CHECKS = ("green", "unstained", "low_probability")


def drop_false_objects(
    labels: np.ndarray,
    rgb: np.ndarray,
    probability: np.ndarray,
    config: PostprocessConfig,
    mpp: float,
    border: int = 0,
) -> np.ndarray:
    """Remove the objects that fail one of the checks of :func:`false_object_checks`.

    Parameters are those of :func:`false_object_checks`.

    Returns
    -------
    np.ndarray
        ``labels`` when nothing is removed, else int32 labels renumbered ``1..N`` in raster order
        of each object's first pixel.
    """
    return separate_false_objects(labels, rgb, probability, config, mpp, border)[0]


def separate_false_objects(
    labels: np.ndarray,
    rgb: np.ndarray,
    probability: np.ndarray,
    config: PostprocessConfig,
    mpp: float,
    border: int = 0,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Split ``labels`` into the objects that pass :func:`false_object_checks` and those that fail.

    Parameters are those of :func:`false_object_checks`.

    Returns
    -------
    kept : np.ndarray
        ``labels`` when nothing is removed, else int32 labels of the objects that pass,
        renumbered ``1..N`` in raster order of each object's first pixel.
    removed : np.ndarray
        The objects that fail, with their values in ``labels``; 0 elsewhere.
    failed : dict
        :func:`false_object_checks`'s result, indexed by the values of ``removed``.
    """
    failed = false_object_checks(labels, rgb, probability, config, mpp, border)
    if not failed:
        return labels, np.zeros_like(labels), failed
    drop = np.logical_or.reduce(list(failed.values()))
    logger.debug("dropped %d object(s) by the ink, stain and confidence checks", int(drop.sum()))
    removed = np.where(drop[labels], labels, 0)
    kept = remove_small_and_relabel(np.where(drop[labels], 0, labels), 0)
    return kept, removed, failed


def false_object_checks(
    labels: np.ndarray,
    rgb: np.ndarray,
    probability: np.ndarray,
    config: PostprocessConfig,
    mpp: float,
    border: int = 0,
) -> dict[str, np.ndarray]:
    """Find the objects that are not nuclei by their colour or the network's confidence.

    Three checks, each off when its setting says so:

    * ``green`` (``config.drop_green``): the object's mean green exceeds its mean red. Neither
      hematoxylin nor eosin makes a pixel so, while green and teal tissue-marking ink does.
    * ``unstained`` (``config.min_hematoxylin_contrast`` > 0): the object's mean hematoxylin
      optical density (:mod:`wsi_s2lcm.stain`) is below ``min_hematoxylin_contrast`` times the
      mean over its ring, the pixels within :data:`RING_UM` of it whose probability is at most
      ``config.threshold``. An object with no such pixel around it passes.
    * ``low_probability`` (``config.min_mean_probability`` > 0): the mean nucleus probability of
      its pixels is below ``min_mean_probability``: a blob that only just clears the threshold
      everywhere is rarely a nucleus, whose core the network is sure of.

    Parameters
    ----------
    labels
        ``(H, W)`` instance labels
        (:func:`~wsi_s2lcm.postprocess.instances_from_probability`).
    rgb, probability
        ``(H + 2 * border, W + 2 * border, 3)`` RGB and ``(H + 2 * border, W + 2 * border)``
        nucleus probability of the same pixels with ``border`` more on each side, so that rings
        near the edge of ``labels`` are whole; a ``border`` of ``RING_UM / mpp`` pixels or more
        makes the decision independent of where the array was cut.
    config
        ``drop_green``; ``min_hematoxylin_contrast``, with ``threshold`` for the ring;
        ``min_mean_probability``. False or 0 turns a check off.
    mpp
        µm per pixel of all three arrays.
    border
        Pixels of ``rgb`` and ``probability`` beyond ``labels`` on each side.

    Returns
    -------
    dict
        For each check that is on and fails at least one object, in the order of
        :data:`FALSE_OBJECT_CHECKS`, a boolean array indexed by label value (``0..labels.max()``)
        that is true for the objects failing it; empty when every object passes.
    """
    labels = np.asarray(labels)
    expected = (labels.shape[0] + 2 * border, labels.shape[1] + 2 * border)
    if rgb.shape != expected + (3,) or probability.shape != expected:
        raise ValueError(
            f"rgb {rgb.shape} and probability {probability.shape} must be labels {labels.shape} "
            f"grown by border={border} on each side."
        )
    if not labels.any():
        return {}
    padded = np.pad(labels, border) if border else labels
    failed = {}
    if config.drop_green:
        failed["green"] = _greener_than_red(padded, rgb)
    if config.min_hematoxylin_contrast > 0:
        failed["unstained"] = _paler_than_ring(padded, rgb, probability, config, mpp)
    if config.min_mean_probability > 0:
        floor = config.min_mean_probability
        failed["low_probability"] = _less_confident(padded, probability, floor)
    return {name: flags for name, flags in failed.items() if flags.any()}


def _less_confident(labels: np.ndarray, probability: np.ndarray, floor: float) -> np.ndarray:
    """For each label value ``0..max``, whether its pixels' mean probability is below ``floor``."""
    index = np.arange(int(labels.max()) + 1)
    area = np.bincount(labels.ravel(), minlength=len(index))
    total = ndi.sum(probability, labels, index)
    below = total < floor * area
    below[0] = False
    return below


def _greener_than_red(labels: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    """For each label value ``0..max``, whether its pixels' mean green exceeds their mean red."""
    index = np.arange(int(labels.max()) + 1)
    red = ndi.sum(rgb[..., 0], labels, index)  # summed in float64, without a copy of the tile
    green = ndi.sum(rgb[..., 1], labels, index)
    greener = green > red
    greener[0] = False
    return greener


def _paler_than_ring(
    labels: np.ndarray, rgb: np.ndarray, probability: np.ndarray, config: PostprocessConfig,
    mpp: float,
) -> np.ndarray:
    """For each label value ``0..max``, whether its mean hematoxylin OD is below
    ``config.min_hematoxylin_contrast`` times that of its ring (see :func:`drop_false_objects`)."""
    contrast = config.min_hematoxylin_contrast
    radius = RING_UM / mpp
    reach = int(np.ceil(radius))
    hematoxylin = hematoxylin_od(rgb)
    background = probability <= config.threshold
    rows, cols = labels.shape
    drop = np.zeros(int(labels.max()) + 1, dtype=bool)
    for value, box in enumerate(ndi.find_objects(labels.astype(np.intp, copy=False)), start=1):
        if box is None:
            continue
        grown = (
            slice(max(box[0].start - reach, 0), min(box[0].stop + reach, rows)),
            slice(max(box[1].start - reach, 0), min(box[1].stop + reach, cols)),
        )
        inside = labels[grown] == value
        ring = (ndi.distance_transform_edt(~inside) <= radius) & ~inside & background[grown]
        if not ring.any():
            continue
        local = hematoxylin[grown]
        drop[value] = local[inside].mean() < contrast * local[ring].mean()
    return drop
