"""Choose how post-processing forms and separates nuclei, from held-out scribbles only.

The watershed that splits touching nuclei (:mod:`wsi_s2lcm.postprocess`) is seeded by h-maxima
of the distance transform; a low height ``h`` splits more, a high one merges more. The
probability threshold decides where the foreground ends: a higher one cuts more of the necks
between touching nuclei but loses faint nuclei. Scribbles say nothing about where a nucleus ends,
but each nucleus scribble marks one nucleus: an instance that holds two nucleus scribbles merges
two nuclei, a nucleus scribble that crosses two instances is split, and one that touches no
instance is missed. :func:`calibrate_separation` segments the held-out images, with every check
of post-processing, at each candidate threshold and height and keeps the pair with the fewest
such errors. Full masks are never used.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from wsi_s2lcm.config import PostprocessConfig
from wsi_s2lcm.models import ModelCard, load_model, read_card, write_card
from wsi_s2lcm.false_objects import drop_false_objects
from wsi_s2lcm.postprocess import instances_from_probability
from wsi_s2lcm.training.dataset import TrainImage
from wsi_s2lcm.training.inference import predict_probability

logger = logging.getLogger(__name__)

#: Key of the calibration record in a model card's ``metrics``.
CALIBRATION_KEY = "separation_calibration"


def scribble_errors(labels: np.ndarray, nucleus_ids: np.ndarray) -> dict[str, int]:
    """Count nucleus scribbles split across instances and instances merging several scribbles.

    Parameters
    ----------
    labels
        ``(H, W)`` instance labels, 0 background.
    nucleus_ids
        ``(H, W)`` ids of nucleus scribbles (one id per nucleus), 0 elsewhere.

    Returns
    -------
    dict
        ``split`` (scribbles touching two or more instances), ``merged`` (for each instance,
        the scribbles it touches beyond the first, summed), ``missed`` (scribbles touching no
        instance) and ``scribbles`` (scribbles present).
    """
    labels = np.asarray(labels)
    nucleus_ids = np.asarray(nucleus_ids)
    if labels.shape != nucleus_ids.shape:
        raise ValueError(
            f"labels {labels.shape} and scribble ids {nucleus_ids.shape} differ in shape."
        )
    present = np.unique(nucleus_ids[nucleus_ids > 0])
    both = (nucleus_ids > 0) & (labels > 0)
    pairs = np.unique(np.stack([nucleus_ids[both], labels[both]]), axis=1)
    scribbles, per_scribble = np.unique(pairs[0], return_counts=True)
    _, per_instance = np.unique(pairs[1], return_counts=True)
    return {
        "split": int((per_scribble > 1).sum()),
        "merged": int((per_instance - 1).sum()),
        "missed": int(len(present) - len(scribbles)),
        "scribbles": int(len(present)),
    }


def calibrate_separation(
    images: Sequence[np.ndarray],
    probabilities: Sequence[np.ndarray],
    nucleus_ids: Sequence[np.ndarray],
    mpp: float,
    heights_um: Sequence[float],
    thresholds: Sequence[float] = (),
    postprocess: PostprocessConfig | None = None,
) -> tuple[PostprocessConfig, list[dict]]:
    """Pick the threshold and h-maxima height that split, merge and miss the fewest nucleus
    scribbles.

    Parameters
    ----------
    images
        The held-out images, ``(H, W, 3)`` uint8 RGB at ``mpp`` (for the checks of
        :func:`~wsi_s2lcm.false_objects.drop_false_objects`, which run as in ``segment``).
    probabilities
        Their nucleus probability maps.
    nucleus_ids
        The matching nucleus-scribble id rasters
        (:func:`~wsi_s2lcm.training.scribbles.rasterize_nucleus_ids`).
    mpp
        µm per pixel of the maps.
    heights_um
        Candidate heights ``h_um``.
    thresholds
        Candidate probability thresholds; empty: ``postprocess.threshold`` only.
    postprocess
        The other post-processing values (package defaults when ``None``); ``separate`` is
        switched on.

    Returns
    -------
    config : PostprocessConfig
        ``postprocess`` with the chosen ``threshold`` and ``h_um``: fewest ``split + merged +
        missed``, ties to the threshold nearest ``postprocess.threshold``, then to the height
        nearest the package default.
    table : list of dict
        For each pair: ``threshold``, ``h_um``, ``split``, ``merged``, ``missed``,
        ``scribbles``, summed over the images.

    Raises
    ------
    ValueError
        Without candidates, or without any nucleus scribble to count on.
    """
    base = dataclasses.replace(postprocess or PostprocessConfig(), separate=True)
    if not heights_um:
        raise ValueError("no candidate heights to calibrate the separation with.")
    if not len(images) == len(probabilities) == len(nucleus_ids):
        raise ValueError(
            f"{len(images)} images, {len(probabilities)} probability maps and "
            f"{len(nucleus_ids)} id rasters: one of each per held-out image is needed."
        )
    if not any((ids > 0).any() for ids in nucleus_ids):
        raise ValueError(
            "no nucleus scribble on the held-out images to calibrate the separation on."
        )
    table = []
    for threshold in thresholds or (base.threshold,):
        for height in heights_um:
            config = dataclasses.replace(base, threshold=float(threshold), h_um=float(height))
            totals = {"threshold": float(threshold), "h_um": float(height),
                      "split": 0, "merged": 0, "missed": 0, "scribbles": 0}
            for image, probability, ids in zip(images, probabilities, nucleus_ids):
                labels = instances_from_probability(probability, config, mpp)
                labels = drop_false_objects(labels, image, probability, config, mpp)
                for key, value in scribble_errors(labels, ids).items():
                    totals[key] += value
            table.append(totals)
    default = PostprocessConfig().h_um
    best = min(table, key=lambda row: (
        row["split"] + row["merged"] + row["missed"],
        abs(row["threshold"] - base.threshold),
        abs(row["h_um"] - default),
    ))
    config = dataclasses.replace(base, threshold=best["threshold"], h_um=best["h_um"])
    return config, table


def calibrate_model(
    directory: str | Path,
    images: Sequence[TrainImage],
    heights_um: Sequence[float],
    thresholds: Sequence[float] = (),
    device: str = "cpu",
    amp: bool = False,
) -> PostprocessConfig:
    """Calibrate the separation of a model directory on held-out images and rewrite its card.

    The card's ``postprocess`` gets the chosen values and its ``metrics`` the table of
    :func:`calibrate_separation` under :data:`CALIBRATION_KEY`; the weights are not touched.

    Parameters
    ----------
    directory
        A model directory (``card.json`` + weights).
    images
        Held-out images with their ``nucleus_ids``, at the model's mpp.
    heights_um, thresholds
        Candidate heights and thresholds (:func:`calibrate_separation`).
    device, amp
        Where to run the network.

    Returns
    -------
    PostprocessConfig
        The values written on the card.
    """
    model = load_model(directory)
    network = model.network.to(device)
    usable = [t for t in images if t.nucleus_ids is not None]
    probabilities = [predict_probability(network, t.image, device, amp) for t in usable]
    base = PostprocessConfig(**model.card.postprocess) if model.card.postprocess else None
    config, table = calibrate_separation(
        [t.image for t in usable], probabilities, [t.nucleus_ids for t in usable],
        model.card.mpp, heights_um, thresholds, base,
    )
    write_calibration(
        directory, model.card, CALIBRATION_KEY,
        "threshold and h_um with the fewest split, merged and missed nucleus scribbles on the "
        "held-out images, every check of post-processing on (wsi_s2lcm.training.calibrate)",
        usable, table, postprocess=dataclasses.asdict(config),
    )
    chosen = next(row for row in table
                  if row["h_um"] == config.h_um and row["threshold"] == config.threshold)
    logger.info("%s: threshold %.2f, separation h_um=%.2f (%d split, %d merged, %d missed of %d "
                "held-out nucleus scribbles)", directory, config.threshold, config.h_um,
                chosen["split"], chosen["merged"], chosen["missed"], chosen["scribbles"])
    return config


def write_calibration(
    directory: str | Path,
    card: ModelCard,
    key: str,
    method: str,
    images: Sequence[TrainImage],
    table: list[dict],
    **changes: Any,
) -> None:
    """Rewrite a model directory's card with ``changes`` and, in its ``metrics`` under ``key``,
    the record of a calibration: its ``method``, the held-out images and the ``table``."""
    record = {"method": method, "held_out_images": [t.key for t in images], "table": table}
    write_card(directory, dataclasses.replace(
        card, metrics={**card.metrics, key: record}, **changes
    ))


def ensure_calibrated(
    directory: str | Path,
    images: Callable[[], Sequence[TrainImage]],
    heights_um: Sequence[float],
    thresholds: Sequence[float] = (),
    device: str = "cpu",
) -> bool:
    """Calibrate a model directory whose card has no calibration record yet.

    For models trained before the trainer calibrated them. ``images`` is called (to load the
    held-out images) only when needed. Returns whether the card was rewritten.
    """
    if CALIBRATION_KEY in read_card(directory).metrics:
        return False
    calibrate_model(directory, images(), heights_um, thresholds, device)
    return True
