"""Probe: can a distance map learned from isolated pseudo nuclei separate touching ones?

The default model separates touching nuclei with a watershed on the distance transform of its
own foreground, which merges packed nuclei (docs/MODEL.md, Known limits). This probe trains a
small head on the default model's frozen decoder features to predict each nucleus's normalized
distance to its edge (1 at the centre, 0 at the edge and on background), from scribbles only:

- targets: the default model's own instances on the 24 training images of
  pipelines/monuseg_split.json that hold exactly one nucleus scribble and touch no other
  instance, each filled with its distance transform divided by its maximum; pixels outside every
  instance whose probability is below 0.3 are 0; everything else is ignored. The loss is the
  mean squared error over the nucleus pixels plus that over the background pixels (balanced:
  without it the head learns 0 everywhere);
- use: the foreground stays the model's; its components are split by a watershed on the
  predicted map seeded by its h-maxima, for several heights ``h``; the stain check follows.

On the 6 validation images it reports, for each ``h``, the full-mask metrics (reported only) and
the nucleus scribbles that the instances split or merge, the count that would choose ``h`` from
scribbles (:mod:`wsi_s2lcm.training.calibrate`). The first row is the shipped post-processing.

Usage (from the project root; about 3 minutes on 2 CPU cores)::

    wsi-s2lcm scribbles --masks ../shared/data/monuseg-train/instance_labels \\
        --out runs/monuseg-scribbles-r0.5-s0 --ratio 0.5 --seed 0
    python benchmarks/distance_head_probe.py [--steps 1200] [--out runs/distance-head-probe.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from skimage.morphology import h_maxima
from skimage.segmentation import relabel_sequential, watershed
from torch import nn

from monuseg_images import (
    METRICS, MPP, ROOT, model_and_postprocess, read_image, read_truth, split_stems,
)
from wsi_s2lcm.config import PostprocessConfig
from wsi_s2lcm.metrics import evaluate_pair
from wsi_s2lcm.false_objects import drop_false_objects
from wsi_s2lcm.postprocess import instances_from_probability
from wsi_s2lcm.qupath.imports import read_scribbles
from wsi_s2lcm.training.calibrate import scribble_errors
from wsi_s2lcm.training.inference import normalize
from wsi_s2lcm.training.scribbles import rasterize_nucleus_ids

CROP = 128
HEIGHTS = (0.05, 0.1, 0.2, 0.3)


def decoder_features(network: nn.Module, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nucleus probability and the features the head reads: logits, the full-resolution decoder
    output and the half-resolution one upsampled (float16, ``(C, H, W)``)."""
    height, width = image.shape[:2]
    x = F.pad(normalize(image), (0, -width % 32, 0, -height % 32), mode="reflect")
    with torch.inference_mode():
        logits, features = network.forward_features(x)
    probability = torch.softmax(logits, 1)[0, 1, :height, :width].numpy()
    half = F.interpolate(features[-2], scale_factor=2, mode="bilinear")
    stacked = torch.cat([logits, features[-1], half], 1)[0, :, :height, :width]
    return probability, stacked.half().numpy()


def normalized_distance(labels: np.ndarray, keep: set[int]) -> np.ndarray:
    """Each kept instance's distance transform divided by its maximum; 0 elsewhere."""
    out = np.zeros(labels.shape, np.float32)
    for value, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None or value not in keep:
            continue
        box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
        inside = labels[box] == value
        distance = ndi.distance_transform_edt(inside)
        out[box][inside] = (distance / distance.max())[inside]
    return out


def pseudo_target(
    labels: np.ndarray, probability: np.ndarray, nucleus_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int]:
    """Target, mask of the pixels it holds, and the number of isolated one-scribble instances."""
    grown = ndi.grey_dilation(labels, size=3)
    edge = (grown != labels) & (labels > 0)
    touching = set(np.unique(labels[edge]).tolist()) | set(np.unique(grown[edge]).tolist())
    both = (nucleus_ids > 0) & (labels > 0)
    pairs = np.unique(np.stack([labels[both], nucleus_ids[both]]), axis=1)
    instances, scribbles = np.unique(pairs[0], return_counts=True)
    isolated = set(instances[scribbles == 1].tolist()) - touching
    valid = np.isin(labels, list(isolated)) | ((labels == 0) & (probability < 0.3))
    return normalized_distance(labels, isolated), valid, len(isolated)


def distance_head(channels: int) -> nn.Sequential:
    """Four dilated 3x3 convolutions (reach 15 px each side) and a 1x1 to one map."""
    layers: list[nn.Module] = []
    width = channels
    for dilation in (1, 2, 4, 8):
        layers += [nn.Conv2d(width, 32, 3, padding=dilation, dilation=dilation), nn.ReLU()]
        width = 32
    layers.append(nn.Conv2d(32, 1, 1))
    return nn.Sequential(*layers)


def train_head(samples: list[dict], steps: int, seed: int = 0) -> nn.Sequential:
    """Fit the head on random crops of the training images' cached features."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    head = distance_head(samples[0]["features"].shape[0])
    optimizer = torch.optim.Adam(head.parameters(), 1e-3)
    for _ in range(steps):
        features, targets, valids = [], [], []
        for _ in range(4):
            sample = samples[rng.integers(len(samples))]
            rows, cols = sample["target"].shape
            y, x = rng.integers(rows - CROP), rng.integers(cols - CROP)
            window = (slice(y, y + CROP), slice(x, x + CROP))
            features.append(sample["features"][(slice(None),) + window].astype(np.float32))
            targets.append(sample["target"][window])
            valids.append(sample["valid"][window])
        out = torch.sigmoid(head(torch.from_numpy(np.stack(features))))[:, 0]
        target = torch.from_numpy(np.stack(targets))
        valid = torch.from_numpy(np.stack(valids))
        error = (out - target) ** 2
        nucleus, background = valid & (target > 0), valid & (target == 0)
        if nucleus.any():
            loss = error[nucleus].mean() + error[background].mean()
        else:
            loss = error[valid].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return head.eval()


def split_by_distance(
    probability: np.ndarray, distance: np.ndarray, config: PostprocessConfig, height: float
) -> np.ndarray:
    """The model's foreground, its components split by a watershed on ``distance``."""
    components = instances_from_probability(
        probability, dataclasses.replace(config, separate=False), MPP
    )
    mask = components > 0
    seeds = h_maxima(np.where(mask, distance, 0).astype(np.float32), height).astype(bool) & mask
    labels = watershed(-distance, ndi.label(seeds)[0], mask=mask)
    labels = np.where((labels == 0) & mask, components + labels.max(), labels)
    return relabel_sequential(labels)[0]


def summarize(rows: list[dict], errors: list[dict]) -> dict:
    """Mean metrics over the images and scribble errors summed."""
    summary = {key: round(float(np.mean([row[key] for row in rows])), 4) for key in METRICS}
    for key in ("split", "merged", "missed"):
        summary[f"scribbles_{key}"] = int(sum(error[key] for error in errors))
    return summary


def probe_parser(description: str, steps: int, out: str) -> argparse.ArgumentParser:
    """The options both distance probes take."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--scribbles", type=Path,
                        default=ROOT / "runs" / "monuseg-scribbles-r0.5-s0")
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / out)
    return parser


def score_separations(
    validation: dict[str, dict], config: PostprocessConfig, baseline: str, learned: str
) -> dict[str, dict]:
    """Score the distance-transform separation and the learned one at each of :data:`HEIGHTS`.

    ``validation`` holds, per image, ``image``, ``probability``, ``distance`` (learned),
    ``truth`` (instance labels) and ``ids`` (nucleus-scribble ids). Rows are named ``baseline``
    and ``f"{learned}, h {height}"``; the stain check follows each separation.
    """

    def score(separate) -> dict:
        rows, errors = [], []
        for sample in validation.values():
            probability = sample["probability"]
            labels = separate(probability, sample["distance"])
            labels = drop_false_objects(labels, sample["image"], probability, config, MPP)
            rows.append(evaluate_pair(labels, sample["truth"]))
            errors.append(scribble_errors(labels, sample["ids"]))
        return summarize(rows, errors)

    results = {baseline: score(lambda p, d: instances_from_probability(p, config, MPP))}
    for height in HEIGHTS:
        results[f"{learned}, h {height}"] = score(
            lambda p, d, h=height: split_by_distance(p, d, config, h))
    return results


def main(argv: list[str] | None = None) -> int:
    args = probe_parser(__doc__.splitlines()[0], 1200, "distance-head-probe.json").parse_args(argv)
    torch.set_num_threads(args.threads)
    split = {part: split_stems(part) for part in ("train", "validation")}
    model, config = model_and_postprocess()
    started = time.perf_counter()
    samples: dict[str, dict] = {}
    for stem in split["train"] + split["validation"]:
        image = read_image(stem)
        probability, features = decoder_features(model.network, image)
        labels = instances_from_probability(probability, config, MPP)
        scribbles = read_scribbles(args.scribbles / f"{stem}.geojson")
        ids = rasterize_nucleus_ids(scribbles, labels.shape)
        target, valid, isolated = pseudo_target(labels, probability, ids)
        samples[stem] = {"image": image, "probability": probability, "features": features,
                         "target": target, "valid": valid, "ids": ids, "isolated": isolated}
    head = train_head([samples[stem] for stem in split["train"]], args.steps)
    validation = {}
    for stem in split["validation"]:
        sample = samples[stem]
        with torch.inference_mode():
            features = torch.from_numpy(sample["features"][None].astype(np.float32))
            distance = torch.sigmoid(head(features))[0, 0].numpy()
        validation[stem] = {**sample, "distance": distance, "truth": read_truth(stem)}
    results = score_separations(
        validation, config, "shipped (distance transform, h_um %.2f)" % config.h_um,
        "learned distance",
    )
    record = {
        "seconds": round(time.perf_counter() - started, 1),
        "steps": args.steps,
        "isolated_training_instances": sum(samples[s]["isolated"] for s in split["train"]),
        "rows": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    header = ["row"] + list(METRICS) + ["split", "merged", "missed"]
    sys.stdout.write(" | ".join(header) + "\n")
    for name, summary in results.items():
        values = [f"{summary[key]:.4f}" for key in METRICS]
        values += [str(summary[f"scribbles_{key}"]) for key in ("split", "merged", "missed")]
        sys.stdout.write(" | ".join([name] + values) + "\n")
    sys.stdout.write(f"wrote {args.out} ({record['seconds']} s)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
