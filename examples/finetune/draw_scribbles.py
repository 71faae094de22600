"""Write the fine-tuning example's scribbles for the demo slide (examples/finetune/README.md).

The scribbles stand in for what a user draws in QuPath on the top part of
``examples/CMU-1-Small-Region.svs`` (level-0 y < 1400); the bottom part (y >= 1550) is kept for
judging the result.

- Background: polylines placed by hand, from zoomed views, on what the default model outlines as
  nuclei there although it holds none (keratin, folded fibrous debris, tissue-marking ink), and
  on the bare glass beside the tissue: without these a model fine-tuned on dark background
  alone learned to call the glass nucleus.
- Nucleus: one short stroke along the long axis of each nucleus the default model found inside
  three boxes where every detection was checked by eye to be a nucleus (compact ones only:
  20-120 µm², solidity >= 0.9), as a user scribbles through nuclei.

Usage::

    wsi-s2lcm segment examples/CMU-1-Small-Region.svs --out results/
    python examples/finetune/draw_scribbles.py results/CMU-1-Small-Region.geojson \
        examples/finetune/scribbles/CMU-1-Small-Region.geojson
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry import LineString, shape

from wsi_s2lcm.training.generate import annotation_feature

BACKGROUND_LINES = {
    "keratin": [
        [(1410, 1010), (1480, 1060), (1540, 1120), (1600, 1050), (1560, 980)],
        [(1450, 965), (1520, 955), (1580, 950)],
        [(1380, 1200), (1420, 1250), (1480, 1290)],
        [(1275, 1240), (1262, 1300), (1255, 1380)],
        [(1530, 1260), (1580, 1240), (1565, 1290)],
    ],
    "fibrous debris": [
        [(1300, 1320), (1330, 1395)],
    ],
    "glass": [
        [(1230, 470), (1290, 500), (1330, 520)],
        [(1700, 700), (1780, 800), (1850, 900)],
        [(600, 300), (750, 350), (900, 400)],
        [(1650, 1250), (1645, 1300), (1640, 1350)],
    ],
    "ink and pale debris": [
        [(910, 225), (920, 245), (915, 265)],
        [(1025, 290), (1040, 280), (1052, 270)],
        [(1080, 295), (1083, 320)],
        [(985, 355), (992, 375)],
        [(1040, 170), (1045, 190)],
        [(1050, 240), (1090, 250), (1120, 260)],
    ],
}
NUCLEUS_BOXES = [(1050, 700, 1240, 1150), (1000, 850, 1100, 1250), (1400, 450, 1560, 700)]
LEVEL0_MPP = 0.499
STROKE_FRACTION = 0.6


def _feature(line: LineString, name: str) -> dict:
    coordinates = [list(map(float, p)) for p in line.coords]
    return annotation_feature({"type": "LineString", "coordinates": coordinates}, name)


def nucleus_strokes(detections: dict) -> list[LineString]:
    """Short strokes along the long axis of the compact detections inside NUCLEUS_BOXES."""
    boxes = [shapely.box(*b) for b in NUCLEUS_BOXES]
    px_um2 = LEVEL0_MPP**2
    strokes = []
    for feature in detections["features"]:
        polygon = shape(feature["geometry"])
        if not any(box.contains(polygon) for box in boxes):
            continue
        if not 20 <= polygon.area * px_um2 <= 120 or polygon.area / polygon.convex_hull.area < 0.9:
            continue
        corners = np.asarray(polygon.minimum_rotated_rectangle.exterior.coords)[:4]
        sides = corners[1:] - corners[:-1]
        axis = sides[int(np.argmax(np.hypot(sides[:, 0], sides[:, 1])))]
        centre = np.asarray(polygon.centroid.coords[0])
        half = axis * STROKE_FRACTION / 2
        strokes.append(LineString([centre - half, centre + half]))
    return strokes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("detections", type=Path, help="the default model's GeoJSON of the demo")
    parser.add_argument("out", type=Path, help="scribble GeoJSON to write")
    args = parser.parse_args()
    detections = json.loads(args.detections.read_text())
    features = [_feature(s, "Nucleus") for s in nucleus_strokes(detections)]
    for lines in BACKGROUND_LINES.values():
        features += [_feature(LineString(line), "Background") for line in lines]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"type": "FeatureCollection", "features": features}, indent=1))


if __name__ == "__main__":
    main()
