"""Choose how hard post-processing separates touching nuclei, from held-out scribbles only.

The watershed that splits touching nuclei (:mod:`wsi_s2lcm.postprocess`) is seeded by h-maxima
of the distance transform; a low height ``h`` splits more, a high one merges more. Scribbles say
nothing about where a nucleus ends, but each nucleus scribble marks one nucleus: an instance that
holds two nucleus scribbles merges two nuclei, and a nucleus scribble that crosses two instances
is split. :func:`calibrate_separation` segments the held-out images at each candidate height and
keeps the one with the fewest such errors. Full masks are never used.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from wsi_s2lcm.config import PostprocessConfig
from wsi_s2lcm.models import load_model, read_card, write_card
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
    probabilities: Sequence[np.ndarray],
    nucleus_ids: Sequence[np.ndarray],
    mpp: float,
    heights_um: Sequence[float],
    postprocess: PostprocessConfig | None = None,
) -> tuple[PostprocessConfig, list[dict]]:
    """Pick the h-maxima height that splits and merges the fewest nucleus scribbles.

    Parameters
    ----------
    probabilities
        Nucleus probability maps of the held-out images, at ``mpp``.
    nucleus_ids
        The matching nucleus-scribble id rasters
        (:func:`~wsi_s2lcm.training.scribbles.rasterize_nucleus_ids`).
    mpp
        µm per pixel of the maps.
    heights_um
        Candidate heights ``h_um``.
    postprocess
        The other post-processing values (package defaults when ``None``); ``separate`` is
        switched on.

    Returns
    -------
    config : PostprocessConfig
        ``postprocess`` with the chosen ``h_um``: fewest ``split + merged``, ties to the
        height nearest the package default.
    table : list of dict
        For each height: ``h_um``, ``split``, ``merged``, ``missed``, ``scribbles``, summed over
        the images.

    Raises
    ------
    ValueError
        Without candidates, or without any nucleus scribble to count on.
    """
    base = dataclasses.replace(postprocess or PostprocessConfig(), separate=True)
    if not heights_um:
        raise ValueError("no candidate heights to calibrate the separation with.")
    if len(probabilities) != len(nucleus_ids):
        raise ValueError(
            f"{len(probabilities)} probability maps but {len(nucleus_ids)} id rasters."
        )
    if not any((ids > 0).any() for ids in nucleus_ids):
        raise ValueError(
            "no nucleus scribble on the held-out images to calibrate the separation on."
        )
    table = []
    for height in heights_um:
        config = dataclasses.replace(base, h_um=float(height))
        totals = {"h_um": float(height), "split": 0, "merged": 0, "missed": 0, "scribbles": 0}
        for probability, ids in zip(probabilities, nucleus_ids):
            counts = scribble_errors(instances_from_probability(probability, config, mpp), ids)
            for key, value in counts.items():
                totals[key] += value
        table.append(totals)
    default = PostprocessConfig().h_um
    best = min(table, key=lambda row: (row["split"] + row["merged"], abs(row["h_um"] - default)))
    return dataclasses.replace(base, h_um=best["h_um"]), table


def calibrate_model(
    directory: str | Path,
    images: Sequence[TrainImage],
    heights_um: Sequence[float],
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
    heights_um
        Candidate heights.
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
        probabilities, [t.nucleus_ids for t in usable], model.card.mpp, heights_um, base
    )
    record = {
        "method": "h_um with the fewest split plus merged nucleus scribbles on the held-out "
                  "images (wsi_s2lcm.training.calibrate)",
        "held_out_images": [t.key for t in usable],
        "table": table,
    }
    card = dataclasses.replace(
        model.card, postprocess=dataclasses.asdict(config),
        metrics={**model.card.metrics, CALIBRATION_KEY: record},
    )
    write_card(directory, card)
    chosen = next(row for row in table if row["h_um"] == config.h_um)
    logger.info("%s: separation h_um=%.2f (%d split, %d merged of %d held-out nucleus scribbles)",
                directory, config.h_um, chosen["split"], chosen["merged"], chosen["scribbles"])
    return config


def ensure_calibrated(
    directory: str | Path,
    images: Callable[[], Sequence[TrainImage]],
    heights_um: Sequence[float],
    device: str = "cpu",
) -> bool:
    """Calibrate a model directory whose card has no calibration record yet.

    For models trained before the trainer calibrated them. ``images`` is called (to load the
    held-out images) only when needed. Returns whether the card was rewritten.
    """
    if CALIBRATION_KEY in read_card(directory).metrics:
        return False
    calibrate_model(directory, images(), heights_um, device)
    return True
