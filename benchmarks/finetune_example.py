"""The fine-tuning example of examples/finetune/README.md, measured.

Segments the demo slide with the shipped default model and with a model fine-tuned from it on the
scribbles of ``examples/finetune/scribbles/`` (drawn on the top part of the slide, level-0
y < 1400), and counts on the bottom part (y >= 1550, which no training region reached):

- detections whose centroid lies in the debris polygons of :data:`DEBRIS` (keratin lamellae and
  a keratin pearl, drawn by hand; none of their detections is a nucleus, except perhaps a few
  flattened ones at the rim of the pearl);
- detections in the boxes of :data:`NUCLEI` (epidermis, drawn where the default model's
  detections were seen to be nuclei, the slide's edge left out) and how many of the default
  model's detections there the fine-tuned model still finds (IoU >= 0.5).

It also scores both models on the held-out MoNuSeg images of pipelines/monuseg_split.json (full
instance labels), to show what fine-tuning on one slide costs on other tissue.

Usage (from the project root, after the training command of examples/finetune/README.md)::

    python benchmarks/finetune_example.py --model models/cmu-finetuned [--model ...] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import shapely
from scipy import ndimage
from shapely.geometry import shape

from wsi_s2lcm.config import ExportConfig, TilingConfig
from wsi_s2lcm.evaluation import evaluate_dirs
from wsi_s2lcm.metrics import compute_overlaps
from wsi_s2lcm.segment import segment_slide
from wsi_s2lcm.store import LabelStore

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "CMU-1-Small-Region.svs"
DATA = ROOT.parent / "shared" / "data" / "monuseg-train"
SPLIT = ROOT / "pipelines" / "monuseg_split.json"
HELD_OUT_Y = 1550
DEBRIS = {
    "keratin lamellae": [(1256, 1550), (1550, 1550), (1500, 1700), (1450, 1800), (1380, 1840),
                         (1330, 1820), (1280, 1700)],
    "keratin pearl": [(1200, 2040), (1270, 1990), (1315, 2030), (1310, 2110), (1270, 2150),
                      (1210, 2160), (1195, 2110)],
}
NUCLEI = {
    "epidermis, centre": (1060, 1880, 1180, 2260),
    "epidermis, bottom right": (1640, 2350, 1745, 2900),
    "epidermis, bottom left": (560, 2620, 780, 2960),
}


def read_polygons(path: Path) -> list:
    """The detection polygons of a segment GeoJSON."""
    return [shape(f["geometry"]) for f in json.loads(path.read_text())["features"]]


def count_inside(polygons: list, region) -> list:
    """The polygons whose centroid lies in ``region``."""
    return [p for p in polygons if region.contains(p.centroid)]


def read_labels(path: Path) -> tuple[np.ndarray, float]:
    """The label image of a segment run and its level-0 pixels per label pixel."""
    store = LabelStore.open(path)
    return store.read(0, 0, *store.shape), float(store.attrs["level0_transform"]["scale"])


def found_again(reference: np.ndarray, scale: float, other: np.ndarray) -> float:
    """Fraction of ``reference``'s objects centred in :data:`NUCLEI` that ``other`` finds too.

    Matched at IoU >= 0.5 by :func:`wsi_s2lcm.metrics.compute_overlaps`; ``scale`` is level-0
    pixels per label pixel.
    """
    ids = np.unique(reference)
    ids = ids[ids > 0]
    rows, cols = np.transpose(ndimage.center_of_mass(np.ones_like(reference), reference, ids))
    boxes = [shapely.box(*box) for box in NUCLEI.values()]
    inside = np.array([any(b.contains(shapely.Point(x, y)) for b in boxes)
                       for x, y in zip((cols + 0.5) * scale, (rows + 0.5) * scale)])
    overlaps = compute_overlaps(other, reference)
    matched = overlaps.gt_ids[overlaps.gt_index[overlaps.pair_ious >= 0.5]]
    return float(np.isin(ids[inside], matched).mean())


def held_out_monuseg(model: str, out: Path) -> dict:
    """Mean metrics of ``model`` on the held-out MoNuSeg images."""
    for stem in json.loads(SPLIT.read_text())["validation"]:
        segment_slide(DATA / "images" / f"{stem}.tif", out, model=model, mpp=0.25,
                      tiling=TilingConfig(tissue_mask=False),
                      export=ExportConfig(labels=False, overlay=False, overwrite=True),
                      device="cpu")
    result = evaluate_dirs(out, DATA / "instance_labels")
    return {k: round(float(v), 3) for k, v in result.mean.items()
            if k in ("dice", "aji", "pq", "object_dice")}


def main() -> None:
    """Segment, count and score with both models; print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, action="append",
                        help="a fine-tuned model directory (repeat to compare several)")
    parser.add_argument("--default", default="s2lcm-monuseg", help="the model it started from")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch)
        figures = {}
        runs = [("default", args.default)] + [(m, m) for m in args.model]
        for index, (key, model) in enumerate(runs):
            started = time.perf_counter()
            run_dir = out / f"run{index}"
            segment_slide(DEMO, run_dir, model=model, export=ExportConfig(overwrite=True))
            seconds = round(time.perf_counter() - started, 1)
            polygons = read_polygons(run_dir / f"{DEMO.stem}.geojson")
            held_out = [p for p in polygons if p.centroid.y >= HELD_OUT_Y]
            figures[key] = {
                "model": model, "demo_nuclei": len(polygons), "demo_seconds": seconds,
                "bottom_part_nuclei": len(held_out),
                "debris": {name: len(count_inside(held_out, shapely.Polygon(points)))
                           for name, points in DEBRIS.items()},
                "epidermis": {name: len(count_inside(held_out, shapely.box(*box)))
                              for name, box in NUCLEI.items()},
                "monuseg_held_out": held_out_monuseg(model, run_dir / "monuseg"),
            }
        reference, scale = read_labels(out / "run0" / f"{DEMO.stem}.zarr")
        for index, key in enumerate(args.model, start=1):
            other, _ = read_labels(out / f"run{index}" / f"{DEMO.stem}.zarr")
            figures[key]["epidermis_default_detections_kept"] = round(
                found_again(reference, scale, other), 3)
        sys.stdout.write(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
