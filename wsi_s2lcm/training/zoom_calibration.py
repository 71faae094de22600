"""Choose a model's reference nucleus area for the reading zoom, from held-out scribbles only.

``wsi-s2lcm segment`` enlarges the tiles of slides whose nuclei are small (:mod:`wsi_s2lcm.zoom`)
so that their median nucleus appears with the model card's ``nucleus_area_um2``.
:func:`calibrate_reference_area` segments the held-out images, each read at the zoom that a
candidate area gives it, with the card's post-processing, and keeps the area whose nuclei split,
merge and miss the fewest nucleus scribbles (the errors of
:func:`wsi_s2lcm.training.calibrate.scribble_errors`). Full masks are never used.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from wsi_s2lcm.config import PostprocessConfig
from wsi_s2lcm.false_objects import drop_false_objects
from wsi_s2lcm.models import load_model
from wsi_s2lcm.postprocess import instances_from_probability
from wsi_s2lcm.predictor import TorchPredictor
from wsi_s2lcm.slide import ArraySlide
from wsi_s2lcm.tile_task import TileJob, predict_windows
from wsi_s2lcm.training.calibrate import scribble_errors, write_calibration
from wsi_s2lcm.training.dataset import TrainImage
from wsi_s2lcm.zoom import zoom_for_nuclei

logger = logging.getLogger(__name__)

#: Key of the record in a model card's ``metrics``.
ZOOM_CALIBRATION_KEY = "zoom_calibration"
#: Candidate reference areas (µm²); 0 keeps every image at zoom 1.
REFERENCE_AREAS_UM2 = (0.0, 18.75, 25.0, 31.25, 37.5, 50.0, 62.5)


def calibrate_reference_area(
    images: Sequence[np.ndarray],
    nucleus_ids: Sequence[np.ndarray],
    predict: Callable[[np.ndarray, float], np.ndarray],
    postprocess: PostprocessConfig,
    mpp: float,
    candidates_um2: Sequence[float] = REFERENCE_AREAS_UM2,
) -> tuple[float, list[dict]]:
    """Pick the reference area whose zooms split, merge and miss the fewest nucleus scribbles.

    Parameters
    ----------
    images
        Held-out ``(H, W, 3)`` uint8 RGB images at ``mpp``.
    nucleus_ids
        Their nucleus-scribble id rasters
        (:func:`~wsi_s2lcm.training.scribbles.rasterize_nucleus_ids`).
    predict
        ``predict(image, zoom)``: the image's nucleus probability with the image enlarged by
        ``zoom`` before the network, at the image's own size.
    postprocess
        The post-processing the nuclei are formed with (the card's, already calibrated).
    mpp
        µm per pixel of the images.
    candidates_um2
        Candidate reference areas.

    Returns
    -------
    area : float
        The chosen area: fewest errors, ties to the smaller area (less enlarging).
    table : list of dict
        For each candidate: ``nucleus_area_um2``, ``zooms`` (one per image), ``split``,
        ``merged``, ``missed``, summed over the images.

    Raises
    ------
    ValueError
        Without candidates or images.
    """
    if not candidates_um2 or not images or len(images) != len(nucleus_ids):
        raise ValueError(
            f"{len(candidates_um2)} candidate areas, {len(images)} images and "
            f"{len(nucleus_ids)} id rasters: need candidates and one id raster per image."
        )
    labels_at: dict[tuple[int, float], np.ndarray] = {}

    def labels(index: int, zoom: float) -> np.ndarray:
        if (index, zoom) not in labels_at:
            probability = predict(images[index], zoom)
            found = instances_from_probability(probability, postprocess, mpp)
            labels_at[index, zoom] = drop_false_objects(
                found, images[index], probability, postprocess, mpp
            )
        return labels_at[index, zoom]

    medians = []
    for index in range(len(images)):
        areas = np.bincount(labels(index, 1.0).ravel())[1:]
        areas = areas[areas > 0]
        medians.append(float(np.median(areas)) * mpp ** 2 if areas.size else 0.0)
    table = []
    for candidate in candidates_um2:
        zooms = [zoom_for_nuclei(median, candidate) for median in medians]
        row = {"nucleus_area_um2": float(candidate), "zooms": zooms,
               "split": 0, "merged": 0, "missed": 0}
        for index, zoom in enumerate(zooms):
            errors = scribble_errors(labels(index, zoom), nucleus_ids[index])
            for key in ("split", "merged", "missed"):
                row[key] += errors[key]
        table.append(row)
    best = min(table, key=lambda row: (
        row["split"] + row["merged"] + row["missed"], row["nucleus_area_um2"]
    ))
    return best["nucleus_area_um2"], table


def calibrate_zoom(
    directory: str | Path,
    images: Sequence[TrainImage],
    candidates_um2: Sequence[float] = REFERENCE_AREAS_UM2,
    device: str = "cpu",
) -> float:
    """Calibrate a model directory's reference nucleus area and rewrite its card.

    The card gets ``nucleus_area_um2`` and, in ``metrics``, the table of
    :func:`calibrate_reference_area` under :data:`ZOOM_CALIBRATION_KEY`; the weights and the
    post-processing are not touched. Each image is predicted whole, in float32, read enlarged
    the way ``wsi-s2lcm segment`` reads a tile (:func:`wsi_s2lcm.tile_task.predict_windows`).

    Returns
    -------
    float
        The area written on the card.
    """
    model = load_model(directory)
    predictor = TorchPredictor(model, device=device, amp=False)
    usable = [t for t in images if t.nucleus_ids is not None]
    postprocess = PostprocessConfig(**model.card.postprocess)
    mpp = model.card.mpp

    def predict(image: np.ndarray, zoom: float) -> np.ndarray:
        height, width = image.shape[:2]
        job = TileJob(slide_path="<array>", slide_mpp=mpp, model_mpp=mpp, level0_mpp=mpp,
                      width=width, height=height, predictor=None, postprocess=postprocess,
                      zoom=zoom)
        _, probability, _ = predict_windows(ArraySlide(image, mpp), [(0, 0, width, height)],
                                            job, predictor)
        return probability[0]

    area, table = calibrate_reference_area(
        [t.image for t in usable], [t.nucleus_ids for t in usable], predict, postprocess,
        mpp, candidates_um2,
    )
    write_calibration(
        directory, model.card, ZOOM_CALIBRATION_KEY,
        "reference nucleus area whose reading zooms give the fewest split, merged and missed "
        "nucleus scribbles on the held-out images, with the card's post-processing "
        "(wsi_s2lcm.training.zoom_calibration)",
        usable, table, nucleus_area_um2=area,
    )
    chosen = next(row for row in table if row["nucleus_area_um2"] == area)
    logger.info("%s: reference nucleus area %.2f µm², zooms %s (%d split, %d merged, %d missed)",
                directory, area, chosen["zooms"], chosen["split"], chosen["merged"],
                chosen["missed"])
    return area
