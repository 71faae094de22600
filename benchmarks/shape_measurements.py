"""Shape measurements of pixel outlines against the hand-drawn MoNuSeg outlines.

Each annotated nucleus of the MoNuSeg images that carry their outlines (the polygons of
``annotations/<stem>.xml``, drawn by hand; 13 of the 30 images) is rasterized alone (pixel-centre rule) at the image's 0.25 µm/px and measured by
:func:`wsi_s2lcm.polygons.nuclei_from_labels`, as ``segment`` measures a nucleus. Printed per
image and over all: the median ratio of the measured perimeter to the annotation's, and the
median circularity, for the shipped measurements (outline with its corners cut half a pixel)
and for the pixel-edge outline itself (what they were before, and what a tool measuring the
written polygon gets).

Usage (from the project root)::

    python benchmarks/shape_measurements.py
"""

from __future__ import annotations

import argparse
import math
import sys
import xml.etree.ElementTree as ElementTree

import numpy as np
import shapely
from skimage.draw import polygon as polygon_pixels

from monuseg_images import DATA
from wsi_s2lcm.polygons import CIRCULARITY, PERIMETER, nuclei_from_labels

#: Annotated outlines smaller than this (pixels) are skipped.
MIN_PIXELS = 30


def annotated_outlines(stem: str) -> list[np.ndarray]:
    """The ``(n, 2)`` ``(x, y)`` vertices of each nucleus drawn in ``annotations/<stem>.xml``."""
    root = ElementTree.parse(DATA / "annotations" / f"{stem}.xml").getroot()
    return [
        np.array([(float(v.get("X")), float(v.get("Y"))) for v in region.iter("Vertex")])
        for region in root.iter("Region")
    ]


def largest_polygon(drawn: shapely.Polygon) -> shapely.Polygon:
    """A hand-drawn outline made valid (many cross themselves in small loops): its largest
    polygon, without holes."""
    parts = shapely.get_parts(shapely.get_parts(shapely.make_valid(drawn)))
    areas = [part.area if isinstance(part, shapely.Polygon) else 0.0 for part in parts]
    return shapely.Polygon(parts[int(np.argmax(areas))].exterior)


def measure_image(stem: str) -> np.ndarray:
    """Rows ``(annotation perimeter, annotation circularity, measured perimeter, measured
    circularity, pixel-edge perimeter, pixel-edge circularity)``, in pixels, one per nucleus."""
    rows = []
    for xy in annotated_outlines(stem):
        if len(xy) < 4:
            continue
        drawn = largest_polygon(shapely.Polygon(xy))
        xy = shapely.get_coordinates(drawn.exterior)
        corner = np.floor(xy.min(axis=0)).astype(int) - 2
        width, height = np.ceil(xy.max(axis=0)).astype(int) - corner + 3
        labels = np.zeros((height, width), np.int32)
        rows_px, cols_px = polygon_pixels(
            xy[:, 1] - corner[1] - 0.5, xy[:, 0] - corner[0] - 0.5, labels.shape
        )
        labels[rows_px, cols_px] = 1
        if labels.sum() < MIN_PIXELS:
            continue
        (nucleus,) = nuclei_from_labels(
            labels, [1], np.zeros(labels.shape + (3,), np.uint8), np.zeros(labels.shape),
            1.0, (0.0, 0.0), 1.0,
        )
        outline = nucleus.polygon
        rows.append((
            drawn.length,
            4 * math.pi * drawn.area / drawn.length**2,
            nucleus.measurements[PERIMETER],
            nucleus.measurements[CIRCULARITY],
            outline.length,
            4 * math.pi * outline.area / outline.length**2,
        ))
    return np.array(rows)


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    stems = [path.stem for path in (DATA / "annotations").glob("*.xml")]
    print("| image | nuclei | annotation circularity | shipped: perimeter / annotation, "
          "circularity | pixel edges: perimeter / annotation, circularity |")
    print("|---|---|---|---|---|")
    every = []
    for stem in sorted(stems) + ["all"]:
        rows = np.concatenate(every) if stem == "all" else measure_image(stem)
        if stem != "all":
            every.append(rows)
        median = np.median(rows, axis=0)
        print(
            f"| {stem} | {len(rows)} | {median[1]:.3f} | {np.median(rows[:, 2] / rows[:, 0]):.3f},"
            f" {median[3]:.3f} | {np.median(rows[:, 4] / rows[:, 0]):.3f}, {median[5]:.3f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
