"""Sheets of randomly drawn detections, for judging by eye what fraction of them are nuclei.

Reads a ``segment`` run's label zarr (``--labels``) and its slide, draws ``--count`` detections at
random (seeded), and writes sheets of 50 crops of 24 µm, each with the drawn detection outlined
in green and numbered, plus the drawn label values as JSON. A person then marks each crop as a
nucleus or not; docs/MODEL.md records such a count for the demo slide.

With ``--boxes N`` it also draws N boxes of 40 µm at random on tissue (at least 80 % of their
pixels darker than 200 in mean RGB) and shows each twice, as read and with every detection
outlined, for counting by eye the nuclei that are not outlined (``boxes<i>.png``, two boxes
each).

Usage (from the project root)::

    wsi-s2lcm segment examples/CMU-1-Small-Region.svs --out results/
    python benchmarks/detection_sample.py --slide examples/CMU-1-Small-Region.svs \\
        --labels results/CMU-1-Small-Region.zarr --out runs/detection-sample [--count 100 --seed 0]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import zarr
from PIL import Image, ImageDraw
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries

from wsi_s2lcm.slide import open_slide

CROP_UM = 24.0
BOX_UM = 40.0
BOX_ZOOM = 4
SHOWN_PX = 144
PER_SHEET = 50
COLUMNS = 10


def draw_labels(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` distinct label values present in ``labels``, drawn at random."""
    present = np.unique(labels)
    present = present[present > 0]
    if count > len(present):
        raise SystemExit(f"asked for {count} detections, the labels hold {len(present)}")
    return np.sort(np.random.default_rng(seed).choice(present, size=count, replace=False))


def crop_sheet(rgb: np.ndarray, labels: np.ndarray, values: np.ndarray, side: int) -> Image.Image:
    """One sheet: a crop of ``side`` px around each value's centre, outlined and numbered."""
    rows = -(-len(values) // COLUMNS)
    sheet = Image.new("RGB", (COLUMNS * (SHOWN_PX + 2), rows * (SHOWN_PX + 2)), "white")
    centres = ndi.center_of_mass(np.ones(labels.shape), labels, values)
    for index, (value, (cy, cx)) in enumerate(zip(values, centres)):
        y0 = int(np.clip(cy - side // 2, 0, labels.shape[0] - side))
        x0 = int(np.clip(cx - side // 2, 0, labels.shape[1] - side))
        window = (slice(y0, y0 + side), slice(x0, x0 + side))
        crop = rgb[window].copy()
        crop[find_boundaries(labels[window] == value, mode="outer")] = (0, 255, 0)
        tile = Image.fromarray(crop).resize((SHOWN_PX, SHOWN_PX), Image.NEAREST)
        ImageDraw.Draw(tile).text((2, 2), str(index), fill=(255, 255, 0))
        sheet.paste(tile, ((index % COLUMNS) * (SHOWN_PX + 2), (index // COLUMNS) * (SHOWN_PX + 2)))
    return sheet


def box_origins(rgb: np.ndarray, side: int, count: int, seed: int) -> list[tuple[int, int]]:
    """``count`` random ``(row, col)`` origins of ``side``-px boxes that lie mostly on tissue."""
    rng = np.random.default_rng(seed)
    origins: list[tuple[int, int]] = []
    for _ in range(1000 * count):
        if len(origins) == count:
            break
        y = int(rng.integers(0, rgb.shape[0] - side))
        x = int(rng.integers(0, rgb.shape[1] - side))
        if (rgb[y:y + side, x:x + side].mean(axis=2) < 200).mean() >= 0.8:
            origins.append((y, x))
    return origins


def box_sheet(rgb: np.ndarray, labels: np.ndarray, origins: list, side: int) -> Image.Image:
    """Each box as read (left) and with every detection outlined (right), one box per row."""
    rows = []
    for y, x in origins:
        window = (slice(y, y + side), slice(x, x + side))
        shown = np.kron(rgb[window], np.ones((BOX_ZOOM, BOX_ZOOM, 1), dtype=np.uint8))
        zoomed = np.kron(labels[window], np.ones((BOX_ZOOM, BOX_ZOOM), dtype=labels.dtype))
        outlined = shown.copy()
        outlined[find_boundaries(zoomed, mode="inner")] = (0, 255, 0)
        gap = np.full((shown.shape[0], 8, 3), 255, dtype=np.uint8)
        rows.append(np.concatenate([shown, gap, outlined], axis=1))
        rows.append(np.full((8, rows[-1].shape[1], 3), 255, dtype=np.uint8))
    return Image.fromarray(np.concatenate(rows[:-1], axis=0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slide", type=Path, required=True)
    parser.add_argument("--labels", type=Path, required=True, help="the run's <stem>.zarr")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--boxes", type=int, default=0,
                        help="also draw this many 40-µm boxes on tissue")
    parser.add_argument("--mpp", type=float, default=None,
                        help="the slide's µm/px, if it records none")
    args = parser.parse_args(argv)
    store = zarr.open(str(args.labels), mode="r")
    labels = np.asarray(store[:])
    mpp = float(store.attrs["mpp"])
    if any(store.attrs["level0_transform"]["offset_xy"]):
        raise SystemExit(f"{args.labels}: labels of a slide region; pass a whole slide's")
    slide = open_slide(args.slide, mpp=args.mpp)
    try:
        rgb = slide.read(0, 0, labels.shape[1], labels.shape[0], mpp)
    finally:
        slide.close()
    values = draw_labels(labels, args.count, args.seed)
    side = int(round(CROP_UM / mpp))
    args.out.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(values), PER_SHEET):
        sheet = crop_sheet(rgb, labels, values[start:start + PER_SHEET], side)
        sheet.save(args.out / f"sheet{start // PER_SHEET}.png")
    box_side = int(round(BOX_UM / mpp))
    origins = box_origins(rgb, box_side, args.boxes, args.seed) if args.boxes else []
    for start in range(0, len(origins), 2):
        box_sheet(rgb, labels, origins[start:start + 2], box_side).save(
            args.out / f"boxes{start // 2}.png")
    drawn = {"labels": str(args.labels), "seed": args.seed, "values": values.tolist(),
             "boxes_yx": origins}
    (args.out / "drawn.json").write_text(json.dumps(drawn) + "\n", encoding="utf-8")
    sys.stdout.write(f"wrote {-(-len(values) // PER_SHEET)} sheet(s) to {args.out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
