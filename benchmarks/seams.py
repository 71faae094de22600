"""Seam figures of the shipped model on real data, for docs/SEGMENT.md.

1. CMU-1-Small-Region segmented with ``--tile-size 256`` and ``--tile-size 1024``: nuclei matched
   one to one at IoU >= 0.5, and pairs of polygons overlapping with IoU > 0.2 within each run.
2. A MoNuSeg image tiled (256 px) against one untiled pass of the network, at the reading zoom
   the tiled run chose (docs/SEGMENT.md, *The reading zoom*).

Usage::

    python benchmarks/seams.py [--out /tmp/wsi-s2lcm-seams]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from shapely import STRtree
from shapely.geometry import shape

from wsi_s2lcm.config import ExportConfig, PostprocessConfig, TilingConfig
from wsi_s2lcm.metrics import compute_overlaps
from wsi_s2lcm.models import load_model
from wsi_s2lcm.false_objects import drop_false_objects
from wsi_s2lcm.postprocess import instances_from_probability
from wsi_s2lcm.predictor import TorchPredictor
from wsi_s2lcm.qupath.export import read_features
from wsi_s2lcm.segment import segment_slide
from wsi_s2lcm.slide import open_slide
from wsi_s2lcm.store import LabelStore
from wsi_s2lcm.tile_task import TileJob, outside_to_background, predict_windows

ROOT = Path(__file__).resolve().parents[1]
MONUSEG = ROOT.parent / "shared" / "data" / "monuseg-train" / "images"


def matched(a: np.ndarray, b: np.ndarray) -> tuple[int, int, int]:
    """Objects in a, in b, and pairs matched at IoU >= 0.5."""
    table = compute_overlaps(a, b)
    return len(table.pred_ids), len(table.gt_ids), int(np.sum(table.pair_ious >= 0.5))


def overlapping(path: Path, limit: float = 0.2) -> int:
    """Pairs of polygons in a GeoJSON file whose IoU exceeds ``limit``."""
    polygons = [shape(f["geometry"]) for f in read_features(path)]
    tree = STRtree(polygons)
    pairs = 0
    for i, j in zip(*tree.query(polygons, predicate="intersects")):
        if i < j:
            union = polygons[i].union(polygons[j]).area
            pairs += polygons[i].intersection(polygons[j]).area / union > limit
    return pairs


def labels_of(path: Path) -> np.ndarray:
    store = LabelStore.open(path)
    return store.read(0, 0, *store.shape)


def main() -> None:
    """Measure and print the figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/wsi-s2lcm-seams"))
    parser.add_argument("--no-amp", action="store_true",
                        help="float32 (default: mixed precision where the hardware has it)")
    args = parser.parse_args()
    amp = False if args.no_amp else None
    slide = ROOT / "examples" / "CMU-1-Small-Region.svs"
    figures: dict = {}
    runs = {}
    for size in (256, 1024):
        out = args.out / f"tile{size}"
        summary = segment_slide(slide, out, tiling=TilingConfig(tile_size=size),
                                export=ExportConfig(overlay=False, overwrite=True), amp=amp)
        runs[size] = labels_of(out / "CMU-1-Small-Region.zarr")
        figures[f"cmu_tile{size}"] = {
            "nuclei": summary["nuclei"],
            "duplicates_dropped": summary["duplicates_dropped"],
            "large_nuclei_resegmented": summary["large_nuclei_resegmented"],
            "pairs_iou_over_0.2": overlapping(out / "CMU-1-Small-Region.geojson"),
            "seconds": summary["seconds"]["total"],
        }
    n256, n1024, pairs = matched(runs[256], runs[1024])
    figures["cmu_256_vs_1024"] = {"n256": n256, "n1024": n1024, "matched": pairs,
                                  "fraction": round(pairs / max(n256, n1024), 4)}
    sys.stderr.write(json.dumps(figures) + "\n")  # the slow half's figures, kept if what follows fails

    model = load_model()
    mpp = model.card.mpp
    size = round(1000 * 0.25 / mpp)  # the 1000 x 1000 MoNuSeg images at the model's mpp
    predictor = TorchPredictor(model, device="cpu", amp=amp)
    post = PostprocessConfig(**model.card.postprocess)
    tiling = TilingConfig(tile_size=256, overlap=96, tissue_mask=False)
    rows = []
    for image in sorted(MONUSEG.glob("*.tif"))[:6]:
        out = args.out / "monuseg"
        summary = segment_slide(image, out, mpp=0.25, tiling=tiling,
                                export=ExportConfig(overlay=False, overwrite=True), amp=amp)
        tiled = labels_of(out / f"{image.stem}.zarr")
        zoom = summary["zoom"]["zoom"]
        job = TileJob(slide_path=str(image), slide_mpp=0.25, model_mpp=mpp, level0_mpp=0.25,
                      width=size, height=size, predictor=None, postprocess=post, zoom=zoom)
        margin = tiling.margin
        with open_slide(image, mpp=0.25) as source:
            window = (-margin, -margin, size + 2 * margin, size + 2 * margin)
            rgbs, probabilities, _ = predict_windows(source, [window], job, predictor)
        rgb = rgbs[0]
        probability = outside_to_background(probabilities[0], -margin, -margin, size, size)
        untiled = drop_false_objects(instances_from_probability(probability, post, mpp), rgb,
                                 probability, post, mpp)[margin:-margin, margin:-margin]
        a, b, pairs = matched(tiled, untiled)
        rows.append({"image": image.stem, "zoom": zoom, "tiled": a, "untiled": b, "matched": pairs,
                     "fraction": round(pairs / max(a, b), 4)})
    figures["monuseg_tiled256_vs_untiled"] = rows
    sys.stdout.write(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
