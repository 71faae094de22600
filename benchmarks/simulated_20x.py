"""The shipped models on the held-out MoNuSeg images brought to 0.5 µm/px (a 20x scan, simulated).

Each validation image of pipelines/monuseg_split.json is shrunk 2x by area averaging and saved as
a TIFF, its instance labels are taken every other pixel, and the images are segmented with
``--mpp 0.5`` by each model and scored with ``wsi-s2lcm evaluate``'s metrics (docs/MODEL.md).

Usage (from the project root)::

    python benchmarks/simulated_20x.py [--models s2lcm-monuseg,s2lcm-monuseg-fast] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import tifffile
from PIL import Image

from wsi_s2lcm.config import ExportConfig, TilingConfig
from wsi_s2lcm.evaluation import evaluate_dirs
from wsi_s2lcm.label_files import read_label_image
from wsi_s2lcm.segment import segment_slide
from wsi_s2lcm.slide import read_image_file

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "monuseg-train"
SPLIT = ROOT / "pipelines" / "monuseg_split.json"


def write_half_resolution(out: Path) -> tuple[Path, Path]:
    """Write the validation images at 0.5 µm/px and their labels every other pixel."""
    images, labels = out / "images", out / "labels"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for stem in json.loads(SPLIT.read_text())["validation"]:
        image = read_image_file(DATA / "images" / f"{stem}.tif")
        half = (image.shape[1] // 2, image.shape[0] // 2)
        shrunk = cv2.resize(image, half, interpolation=cv2.INTER_AREA)
        tifffile.imwrite(images / f"{stem}.tif", shrunk)
        truth, _ = read_label_image(DATA / "instance_labels" / f"{stem}.png")
        Image.fromarray(truth[::2, ::2].astype(np.uint16)).save(labels / f"{stem}.png")
    return images, labels


def main() -> None:
    """Segment and score the simulated 20x images with each model; print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="s2lcm-monuseg,s2lcm-monuseg-fast")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch)
        images, labels = write_half_resolution(out / "data")
        figures = {}
        for model in args.models.split(","):
            predictions = out / model
            for image in sorted(images.glob("*.tif")):
                segment_slide(image, predictions, model=model, mpp=0.5,
                              tiling=TilingConfig(tissue_mask=False),
                              export=ExportConfig(labels=False, overlay=False, overwrite=True))
            result = evaluate_dirs(predictions, labels)
            figures[model] = {k: round(float(result.mean[k]), 4)
                              for k in ("dice", "aji", "pq", "object_dice")}
    sys.stdout.write(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
