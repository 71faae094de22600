"""Does averaging over flipped and rotated copies (test-time augmentation) help the default model?

Each validation image of pipelines/monuseg_split.json is segmented in one pass at 0.25 µm/px
with the default model's probabilities averaged over 1, 2 (horizontal flip), 4 (flips) and 8
(rotations and flips) copies, post-processed with the card's values (stain check included), and
scored against the full instance labels (docs/MODEL.md, Known limits).

Usage (from the project root; about 5 minutes on 2 CPU cores)::

    python benchmarks/flip_averaging.py [--model s2lcm-monuseg]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from monuseg_images import (
    METRICS, MPP, model_and_postprocess, read_image, read_truth, split_stems,
)
from wsi_s2lcm.metrics import evaluate_pair
from wsi_s2lcm.false_objects import drop_false_objects
from wsi_s2lcm.postprocess import instances_from_probability
from wsi_s2lcm.training.inference import predict_probability

#: (quarter turns, mirrored) of each copy.
COPIES = {
    "1 pass": [(0, False)],
    "2 (flip)": [(0, False), (0, True)],
    "4 (flips)": [(0, False), (0, True), (2, False), (2, True)],
    "8 (rotations, flips)": [(turns, mirror) for turns in range(4) for mirror in (False, True)],
}


def transformed(image: np.ndarray, turns: int, mirror: bool) -> np.ndarray:
    """``image`` turned ``turns`` quarter turns, then mirrored left-right if ``mirror``."""
    out = np.rot90(image, turns)
    return np.ascontiguousarray(out[:, ::-1] if mirror else out)


def restored(probability: np.ndarray, turns: int, mirror: bool) -> np.ndarray:
    """Undo :func:`transformed` on a probability map."""
    out = probability[:, ::-1] if mirror else probability
    return np.rot90(out, -turns)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model name or folder (the default model)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, config = model_and_postprocess(args.model)
    rows: dict[str, list[dict]] = {name: [] for name in COPIES}
    for stem in split_stems("validation"):
        image, truth = read_image(stem), read_truth(stem)
        maps = {
            copy: restored(predict_probability(model.network, transformed(image, *copy)), *copy)
            for copy in COPIES["8 (rotations, flips)"]
        }
        for name, copies in COPIES.items():
            probability = np.mean([maps[copy] for copy in copies], axis=0)
            labels = instances_from_probability(probability, config, MPP)
            labels = drop_false_objects(labels, image, probability, config, MPP)
            rows[name].append(evaluate_pair(labels, truth))
    sys.stdout.write("copies | " + " | ".join(METRICS) + "\n")
    for name, results in rows.items():
        means = [f"{np.mean([row[key] for row in results]):.4f}" for key in METRICS]
        sys.stdout.write(" | ".join([name] + means) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
