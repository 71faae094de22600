"""What does the confidence floor (``min_mean_probability``) cost and gain on MoNuSeg?

Each image of one part of pipelines/monuseg_split.json (``--part validation`` or ``train``) is
segmented in one pass at 0.25 µm/px with the model's post-processing but no floor; then, for each
floor, the objects whose mean nucleus probability is below it are removed. For each floor it
prints the objects removed, the full-mask metrics (reported only), the nucleus scribbles that
touch no object (``missed``: nuclei lost, as scribbles see them) and the removed objects that
touch a background scribble (false objects removed, as scribbles see them); docs/MODEL.md,
Known limits. The scribbles are those of the default model's training.

Usage (from the project root; under a minute for the validation part on 2 CPU cores)::

    wsi-s2lcm scribbles --masks ../shared/data/monuseg-train/instance_labels \\
        --out runs/monuseg-scribbles-r0.5-s0 --ratio 0.5 --seed 0
    python benchmarks/probability_floor.py [--part validation] [--model s2lcm-monuseg]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi

from monuseg_images import (
    METRICS, MPP, ROOT, model_and_postprocess, read_image, read_truth, split_stems,
)
from wsi_s2lcm.metrics import evaluate_pair
from wsi_s2lcm.false_objects import drop_false_objects
from wsi_s2lcm.postprocess import instances_from_probability
from wsi_s2lcm.qupath.imports import BACKGROUND, read_scribbles
from wsi_s2lcm.training.calibrate import scribble_errors
from wsi_s2lcm.training.inference import predict_probability
from wsi_s2lcm.training.scribbles import rasterize_nucleus_ids, rasterize_scribbles

FLOORS = (0.0, 0.6, 0.65, 0.7, 0.75, 0.8)


def removal_rows(
    labels: np.ndarray, truth: np.ndarray, scribbles: list, removals: list[np.ndarray]
) -> list[dict]:
    """Score ``labels`` with each boolean array of ``removals`` (one per label value ``1..N``)
    removing the objects it marks; one row per array."""
    values = np.arange(1, int(labels.max()) + 1)
    on_background = np.zeros(len(values) + 1, dtype=bool)
    background = rasterize_scribbles(scribbles, labels.shape) == BACKGROUND
    on_background[np.unique(labels[background])] = True
    nucleus_ids = rasterize_nucleus_ids(scribbles, labels.shape)
    rows = []
    for removed in removals:
        kept = np.concatenate([[0], np.where(removed, 0, values)])[labels]
        row = evaluate_pair(kept, truth)
        row["removed"] = int(removed.sum())
        row["removed_on_background"] = int((removed & on_background[1:]).sum())
        row["scribbles_missed"] = scribble_errors(kept, nucleus_ids)["missed"]
        rows.append(row)
    return rows


def print_sweep(name: str, settings: tuple, per_image: list[list[dict]]) -> None:
    """Print one line per setting: mean metrics and summed counts over the images."""
    header = [name, *METRICS, "removed", "removed on background", "scribbles missed"]
    sys.stdout.write(" | ".join(header) + "\n")
    for index, setting in enumerate(settings):
        rows = [image_rows[index] for image_rows in per_image]
        means = [f"{np.mean([row[key] for row in rows]):.4f}" for key in METRICS]
        sums = [str(sum(row[key] for row in rows))
                for key in ("removed", "removed_on_background", "scribbles_missed")]
        sys.stdout.write(" | ".join([f"{setting:.2f}", *means, *sums]) + "\n")


def segment_monuseg(args: argparse.Namespace, config_change: dict):
    """Yield ``(image, probability, labels, truth, scribbles)`` for each image of the part,
    segmented in one pass with the card's post-processing changed by ``config_change``."""
    torch.set_num_threads(args.threads)
    model, config = model_and_postprocess(args.model, **config_change)
    if model.card.mpp != MPP:
        raise SystemExit(f"{model.card.name} reads {model.card.mpp} µm/px; this needs {MPP}")
    for stem in split_stems(args.part):
        image, truth = read_image(stem), read_truth(stem)
        probability = predict_probability(model.network, image)
        labels = instances_from_probability(probability, config, MPP)
        labels = drop_false_objects(labels, image, probability, config, MPP)
        scribbles = read_scribbles(args.scribbles / f"{stem}.geojson")
        yield image, probability, labels, truth, scribbles


def monuseg_parser(description: str) -> argparse.ArgumentParser:
    """The options of the MoNuSeg sweeps."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--part", choices=("validation", "train"), default="validation")
    parser.add_argument("--model", default=None, help="model name or folder (the default model)")
    parser.add_argument("--scribbles", type=Path,
                        default=ROOT / "runs" / "monuseg-scribbles-r0.5-s0")
    parser.add_argument("--threads", type=int, default=2)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = monuseg_parser(__doc__.splitlines()[0]).parse_args(argv)
    per_image = []
    for _, probability, labels, truth, scribbles in segment_monuseg(
        args, {"min_mean_probability": 0.0}
    ):
        values = np.arange(1, int(labels.max()) + 1)
        mean = np.asarray(ndi.mean(probability, labels, values)) if values.size else values
        per_image.append(removal_rows(labels, truth, scribbles, [mean < f for f in FLOORS]))
    print_sweep("floor", FLOORS, per_image)
    return 0


if __name__ == "__main__":
    sys.exit(main())
