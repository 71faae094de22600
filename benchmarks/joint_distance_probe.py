"""Probe: the distance head of benchmarks/distance_head_probe.py trained together with the network.

The default model is fine-tuned on the 24 training images of pipelines/monuseg_split.json with
partial cross-entropy on their scribbles plus the balanced distance loss on the isolated pseudo
nuclei of the distance-head probe (targets from the initial model, fixed), at the second stage's
learning rates (RAdam, 1e-4 encoder, 3e-4 decoder and head), batches of 8 crops of 256 px with
flips and quarter turns. The head is a 3x3 and a 1x1 convolution on the full-resolution decoder
output. On the 6 validation images it reports the fine-tuned network with the shipped
separation, then with the learned distance at several heights (docs/MODEL.md, Known limits).

Usage (from the project root, after the scribbles of distance_head_probe.py; about 15 minutes
on 2 CPU cores)::

    python benchmarks/joint_distance_probe.py [--steps 600] [--out runs/joint-distance-probe.json]
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from distance_head_probe import probe_parser, pseudo_target, score_separations
from monuseg_images import MPP, model_and_postprocess, read_image, read_truth, split_stems
from wsi_s2lcm.postprocess import instances_from_probability
from wsi_s2lcm.qupath.imports import read_scribbles
from wsi_s2lcm.training.inference import normalize, predict_probability
from wsi_s2lcm.training.scribbles import IGNORE, rasterize_nucleus_ids, scribble_target

CROP = 256
BATCH = 8
STROKE_PX = 2.0  # 0.5 µm strokes at 0.25 µm/px, as training rasterizes them


def training_batch(samples: list[dict], rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Crops of image, scribble target, distance target and its mask, flipped and turned."""
    arrays: list[list[np.ndarray]] = [[], [], [], []]
    for _ in range(BATCH):
        sample = samples[rng.integers(len(samples))]
        rows, cols = sample["target"].shape
        y, x = rng.integers(rows - CROP), rng.integers(cols - CROP)
        window = (slice(y, y + CROP), slice(x, x + CROP))
        crops = [sample[key][window] for key in ("image", "target", "distance", "valid")]
        if rng.random() < 0.5:
            crops = [crop[:, ::-1] for crop in crops]
        turns = int(rng.integers(4))
        for store, crop in zip(arrays, crops):
            store.append(np.ascontiguousarray(np.rot90(crop, turns)))
    return tuple(np.stack(store) for store in arrays)


def finetune(network: nn.Module, head: nn.Module, samples: list[dict], steps: int) -> None:
    """Partial cross-entropy plus the balanced distance loss, ``steps`` batches."""
    rng = np.random.default_rng(0)
    encoder = [p for module in network.encoder_modules() for p in module.parameters()]
    encoder_ids = {id(p) for p in encoder}
    rest = [p for p in network.parameters() if id(p) not in encoder_ids] + list(head.parameters())
    optimizer = torch.optim.RAdam([{"params": encoder, "lr": 1e-4}, {"params": rest, "lr": 3e-4}])
    network.train()
    head.train()
    for _ in range(steps):
        images, targets, distances, valids = training_batch(samples, rng)
        logits, features = network.forward_features(normalize(images))
        target = torch.from_numpy(targets).long()
        pce = F.cross_entropy(logits, torch.where(target == IGNORE, -100, target), ignore_index=-100)
        out = torch.sigmoid(head(features[-1]))[:, 0]
        distance, valid = torch.from_numpy(distances), torch.from_numpy(valids)
        error = (out - distance) ** 2
        nucleus, background = valid & (distance > 0), valid & (distance == 0)
        if nucleus.any():
            loss = pce + error[nucleus].mean() + error[background].mean()
        else:
            loss = pce + error[valid].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    network.eval()
    head.eval()


def predict(network: nn.Module, head: nn.Module, image: np.ndarray) -> tuple[np.ndarray, ...]:
    """Nucleus probability and learned distance of a whole image."""
    height, width = image.shape[:2]
    x = F.pad(normalize(image), (0, -width % 32, 0, -height % 32), mode="reflect")
    with torch.inference_mode():
        logits, features = network.forward_features(x)
        probability = torch.softmax(logits, 1)[0, 1, :height, :width].numpy()
        distance = torch.sigmoid(head(features[-1]))[0, 0, :height, :width].numpy()
    return probability, distance


def main(argv: list[str] | None = None) -> int:
    parser = probe_parser(__doc__.splitlines()[0], 600, "joint-distance-probe.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    split = {part: split_stems(part) for part in ("train", "validation")}
    model, config = model_and_postprocess()
    started = time.perf_counter()
    samples: dict[str, dict] = {}
    for stem in split["train"] + split["validation"]:
        image = read_image(stem)
        scribbles = read_scribbles(args.scribbles / f"{stem}.geojson")
        probability = predict_probability(model.network, image)
        labels = instances_from_probability(probability, config, MPP)
        ids = rasterize_nucleus_ids(scribbles, labels.shape)
        distance, valid, _ = pseudo_target(labels, probability, ids)
        target = scribble_target(scribbles, labels.shape, 1.0, STROKE_PX, stem)
        samples[stem] = {"image": image, "target": target, "ids": ids,
                         "distance": distance, "valid": valid}
    head = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 1, 1))
    finetune(model.network, head, [samples[stem] for stem in split["train"]], args.steps)
    validation = {}
    for stem in split["validation"]:
        sample = samples[stem]
        probability, distance = predict(model.network, head, sample["image"])
        validation[stem] = {"image": sample["image"], "ids": sample["ids"],
                            "truth": read_truth(stem), "probability": probability,
                            "distance": distance}
    results = score_separations(
        validation, config, f"fine-tuned, distance transform (h_um {config.h_um})",
        "fine-tuned, learned distance",
    )
    record = {"seconds": round(time.perf_counter() - started, 1), "steps": args.steps,
              "rows": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    for name, summary in results.items():
        sys.stdout.write(f"{name}: {json.dumps(summary)}\n")
    sys.stdout.write(f"wrote {args.out} ({record['seconds']} s)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
