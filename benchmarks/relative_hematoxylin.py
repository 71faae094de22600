"""The sweep that chose the slide stain check (``min_slide_hematoxylin_fraction``).

A fixed floor on a nucleus's mean hematoxylin optical density fails on lightly stained slides
(docs/MODEL.md, Known limits). The slide stain check is relative to each slide's own detections
instead: an object is removed when its mean hematoxylin OD is below ``k`` times the median over
all detections of the slide. This script measures it for several ``k``, without the check itself.

Two measurements (from the project root):

- MoNuSeg, each image whole, after every check but this one (as
  ``benchmarks/probability_floor.py``; 20 s for the validation part on 2 CPU cores)::

      python benchmarks/relative_hematoxylin.py monuseg [--part validation|train]

- a ``segment`` run made without the check, against detections judged by eye
  (``benchmarks/judged_detections.py``), from the run's GeoJSON measurements::

      wsi-s2lcm segment examples/CMU-1-Small-Region.svs --out runs/no-slide-check \\
          --postprocess min_slide_hematoxylin_fraction=0
      python benchmarks/relative_hematoxylin.py judged \\
          --judgments benchmarks/judgments/cmu-demo.json \\
          --geojson runs/no-slide-check/CMU-1-Small-Region.geojson
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from scipy import ndimage as ndi

from judged_detections import judged_measurements
from probability_floor import monuseg_parser, print_sweep, removal_rows, segment_monuseg
from wsi_s2lcm.polygons import HEMATOXYLIN_OD_MEAN
from wsi_s2lcm.qupath.export import read_features
from wsi_s2lcm.stain import hematoxylin_od

FRACTIONS = (0.0, 0.3, 0.4, 0.5, 0.6)


def monuseg(argv: list[str]) -> int:
    """The sweep on MoNuSeg images."""
    args = monuseg_parser(__doc__.splitlines()[0]).parse_args(argv)
    per_image = []
    for image, _, labels, truth, scribbles in segment_monuseg(args, {}):
        values = np.arange(1, int(labels.max()) + 1)
        mean = np.asarray(ndi.mean(hematoxylin_od(image), labels, values))
        median = float(np.median(mean))
        removals = [mean < fraction * median for fraction in FRACTIONS]
        per_image.append(removal_rows(labels, truth, scribbles, removals))
    print_sweep("fraction of median", FRACTIONS, per_image)
    return 0


def judged(argv: list[str]) -> int:
    """The sweep on a run's detections that hold judged points."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--judgments", required=True)
    parser.add_argument("--geojson", required=True)
    args = parser.parse_args(argv)
    features = read_features(args.geojson)
    stain = np.array([f["properties"]["measurements"][HEMATOXYLIN_OD_MEAN] for f in features])
    median = float(np.median(stain))
    samples = judged_measurements(args.judgments, features, HEMATOXYLIN_OD_MEAN)
    nuclei, others = (
        np.array([value for held in samples for value in held[kind] if value is not None])
        for kind in (True, False)
    )
    sys.stdout.write(f"{args.geojson}: {len(features)} detections, median OD {median:.3f}; "
                     f"{len(nuclei)} judged nuclei and {len(others)} judged false detections\n")
    for fraction in FRACTIONS:
        floor = fraction * median
        sys.stdout.write(
            f"{fraction:.2f}: removes {int((stain < floor).sum())} detections, "
            f"{int((nuclei < floor).sum())} judged nuclei, "
            f"{int((others < floor).sum())} judged false detections\n"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("monuseg", "judged"):
        raise SystemExit("usage: relative_hematoxylin.py monuseg|judged [options]")
    return monuseg(argv[1:]) if argv[0] == "monuseg" else judged(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
