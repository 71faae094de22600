"""Score a segmentation run against detections judged by eye, without judging again.

``benchmarks/detection_sample.py`` draws detections at random for a person to mark as nucleus or
not. This script keeps such judgments as points, one inside each judged detection (its most
interior pixel, in level-0 pixels), so that a later run of ``segment`` on the same slide, with
other settings or another model, can be scored against them: how many of the judged nuclei and
of the judged false detections it still outlines (a point lies inside one of its polygons).

Two commands (from the project root)::

    # record: the run the sample was drawn from, the sample, and the judged nuclei (sheet order)
    python benchmarks/judged_detections.py record --labels results/CMU-1-Small-Region.zarr \\
        --drawn runs/detection-sample/drawn.json --nuclei 0,5,9 --out judgments.json
    # score: any later run's GeoJSON against the recorded judgments
    python benchmarks/judged_detections.py score --judgments benchmarks/judgments/cmu-demo.json \\
        --geojson results/CMU-1-Small-Region.geojson
    # choose a confidence floor: a run without one, scored at several floors
    wsi-s2lcm segment examples/CMU-1-Small-Region.svs --out runs/no-floor \\
        --postprocess min_mean_probability=0
    python benchmarks/judged_detections.py score --judgments benchmarks/judgments/cmu-demo.json \\
        --geojson runs/no-floor/CMU-1-Small-Region.geojson --floors 0.7 0.75 0.8

``benchmarks/judgments/cmu-demo.json`` holds the 200 detections of the demo slide judged in the
tenth session (docs/MODEL.md, Known limits).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import zarr
from scipy import ndimage as ndi
from shapely import STRtree
from shapely.geometry import Point, shape

from wsi_s2lcm.polygons import PROBABILITY_MEAN
from wsi_s2lcm.qupath.export import read_features


def interior_points(labels: np.ndarray, values: list[int]) -> list[tuple[int, int]]:
    """``(row, col)`` of the pixel of each value farthest from the object's edge."""
    boxes = ndi.find_objects(labels.astype(np.intp, copy=False))
    points = []
    for value in values:
        box = boxes[value - 1]
        if box is None:
            raise SystemExit(f"label {value} is not in the labels")
        inside = np.pad(labels[box] == value, 1)
        row, col = np.unravel_index(np.argmax(ndi.distance_transform_edt(inside)), inside.shape)
        points.append((box[0].start + row - 1, box[1].start + col - 1))
    return points


def judged_measurements(
    judgments: Path, features: list[dict], measurement: str
) -> list[dict[bool, list[float | None]]]:
    """For each judged sample, the ``measurement`` of the detection holding each judged point
    (None where no detection holds it), the judged nuclei under True and the others under False.

    ``features`` are a run's GeoJSON features (:func:`wsi_s2lcm.qupath.export.read_features`).
    """
    tree = STRtree([shape(feature["geometry"]) for feature in features])
    values = [feature["properties"]["measurements"][measurement] for feature in features]
    per_sample = []
    for sample in json.loads(Path(judgments).read_text())["samples"]:
        held: dict[bool, list[float | None]] = {True: [], False: []}
        for point in sample["points"]:
            hit = tree.query(Point(point["x"], point["y"]), predicate="within")
            held[point["nucleus"]].append(values[hit[0]] if len(hit) else None)
        per_sample.append(held)
    return per_sample


def record(args: argparse.Namespace) -> int:
    """Write the judged detections of a sample as level-0 points."""
    store = zarr.open(str(args.labels), mode="r")
    labels = np.asarray(store[:])
    transform = store.attrs["level0_transform"]
    scale, (offset_x, offset_y) = transform["scale"], transform["offset_xy"]
    drawn = json.loads(args.drawn.read_text())["values"]
    nuclei = {int(index) for index in args.nuclei.split(",") if index}
    if not nuclei <= set(range(len(drawn))):
        raise SystemExit(f"--nuclei must be sheet positions 0..{len(drawn) - 1}")
    points = [
        {"x": offset_x + (col + 0.5) * scale, "y": offset_y + (row + 0.5) * scale,
         "nucleus": index in nuclei}
        for index, (row, col) in enumerate(interior_points(labels, drawn))
    ]
    stored = json.loads(args.out.read_text()) if args.out.exists() else {"samples": []}
    stored["samples"].append({"slide": args.slide, "note": args.note, "points": points})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(stored, indent=1) + "\n", encoding="utf-8")
    total = sum(len(sample["points"]) for sample in stored["samples"])
    sys.stdout.write(f"{args.out}: {len(stored['samples'])} sample(s), {total} judged points\n")
    return 0


def score(args: argparse.Namespace) -> int:
    """For each judged sample, count the judged nuclei and false detections a run still outlines.

    When the run's detections are a subset of those the sample was drawn from (a stricter
    post-processing of the same model), the sample's outlined detections are a random sample of
    the run's, and their share of nuclei estimates the run's; otherwise it is only a count.
    With ``--floors``, also count those a confidence floor would keep: the outlined detections
    whose mean nucleus probability reaches each floor (for a run segmented with
    ``--postprocess min_mean_probability=0``; this is how the shipped floor was chosen).
    """
    features = read_features(args.geojson)
    sys.stdout.write(f"{args.geojson}: {len(features)} detections\n")
    for number, held in enumerate(judged_measurements(args.judgments, features, PROBABILITY_MEAN)):
        for floor in (0.0, *args.floors):
            nuclei_kept, others_kept = (
                sum(value is not None and value >= floor for value in held[kind])
                for kind in (True, False)
            )
            share = nuclei_kept / max(nuclei_kept + others_kept, 1)
            at_floor = f" at floor {floor:.2f}" if floor else ""
            sys.stdout.write(
                f"sample {number}{at_floor}: {nuclei_kept} of {len(held[True])} judged nuclei "
                f"and {others_kept} of {len(held[False])} judged false detections outlined; "
                f"nuclei {share:.0%} of those outlined\n"
            )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    recorder = commands.add_parser("record", help="store a judged sample as points")
    recorder.add_argument("--labels", type=Path, required=True, help="the run's <stem>.zarr")
    recorder.add_argument("--drawn", type=Path, required=True, help="detection_sample's JSON")
    recorder.add_argument("--nuclei", required=True,
                          help="comma-separated sheet positions judged to be nuclei")
    recorder.add_argument("--out", type=Path, required=True,
                          help="the judgments file; a new sample is added if it exists")
    recorder.add_argument("--slide", default="examples/CMU-1-Small-Region.svs")
    recorder.add_argument("--note", default="", help="who judged, when, on which run")
    scorer = commands.add_parser("score", help="score a run against stored judgments")
    scorer.add_argument("--judgments", type=Path, required=True)
    scorer.add_argument("--geojson", type=Path, required=True, help="the run's <stem>.geojson")
    scorer.add_argument("--floors", type=float, nargs="*", default=[],
                        help="also count what each confidence floor would keep")
    args = parser.parse_args(argv)
    return record(args) if args.command == "record" else score(args)


if __name__ == "__main__":
    sys.exit(main())
