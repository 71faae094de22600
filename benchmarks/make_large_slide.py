"""Build a large pyramidal slide from real slide content, for benchmarks.

Usage::

    python benchmarks/make_large_slide.py OUT.tif --size 20000 \
        --source ../shared/data/slides/CMU-1-Small-Region.svs

The source slide is read at the output's mpp (0.5 µm/px by default) and mirrored (reflected)
repeatedly to fill a ``size`` x ``size`` level 0. The output is a tiled (512 px), JPEG-compressed
TIFF with one page per pyramid level (downsamples 2, 4, ... until the level fits in one tile), each
reduced level marked ``NewSubfileType = 1``. Level 0 records ``ResolutionUnit = CENTIMETER`` and
``XResolution = YResolution = 10000 / mpp`` pixels per cm; OpenSlide opens the file as
``generic-tiff`` and reports ``tiff.XResolution``, ``tiff.ResolutionUnit`` and
``openslide.mpp-x/mpp-y = mpp`` from them. Tiles are generated one at a time from a box-downsampled
copy of the (small) source, so the builder never holds a level in memory. Output pixels are as
licensed as the source slide (CMU-1-Small-Region.svs: CC0).
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from wsi_s2lcm.slide import open_slide

logger = logging.getLogger("make_large_slide")

TILE = 512
MAX_SOURCE_SIDE = 8192


def reflect(coords: np.ndarray, period: int) -> np.ndarray:
    """Map coordinates onto [0, period) by mirroring: 0..p-1, p-1..0, 0..p-1, ..."""
    folded = np.mod(coords, 2 * period)
    return np.where(folded < period, folded, 2 * period - 1 - folded)


def level_tiles(source: np.ndarray, downsample: int, shape: tuple[int, int]) -> Iterator[np.ndarray]:
    """Yield the (TILE, TILE, 3) tiles of one level in row-major order, white beyond its edge.

    Pixel (x, y) of the level takes its value from the source box-downsampled by ``downsample`` at
    the mirrored level-0 position of its centre, so every level shows the same picture.
    """
    src_h, src_w = source.shape[:2]
    if downsample > 1:
        small = Image.fromarray(source).resize(
            (max(1, math.ceil(src_w / downsample)), max(1, math.ceil(src_h / downsample))),
            Image.Resampling.BOX,
        )
        reduced = np.asarray(small)
    else:
        reduced = source
    height, width = shape
    for y0 in range(0, height, TILE):
        ys = np.arange(y0, y0 + TILE)
        rows = np.minimum(reflect(((ys + 0.5) * downsample).astype(np.int64), src_h) // downsample,
                          reduced.shape[0] - 1)
        for x0 in range(0, width, TILE):
            xs = np.arange(x0, x0 + TILE)
            cols = np.minimum(reflect(((xs + 0.5) * downsample).astype(np.int64), src_w) // downsample,
                              reduced.shape[1] - 1)
            tile = reduced[rows[:, None], cols[None, :]]
            tile[ys >= height] = 255
            tile[:, xs >= width] = 255
            yield tile


def build(out: Path, size: int, source_path: Path, mpp: float, source_mpp: float | None,
          quality: int) -> None:
    """Write the pyramidal TIFF ``out`` of ``size`` x ``size`` pixels at ``mpp``."""
    with open_slide(source_path, mpp=source_mpp) as source_slide:
        factor = mpp / source_slide.mpp
        width = min(MAX_SOURCE_SIDE, math.floor(source_slide.dimensions[0] / factor))
        height = min(MAX_SOURCE_SIDE, math.floor(source_slide.dimensions[1] / factor))
        source = source_slide.read(0, 0, width, height, mpp)
    logger.info("source %s read at %g mpp: %dx%d px", source_path.name, mpp, width, height)
    pixels_per_cm = 10_000.0 / mpp
    bigtiff = size * size * 3 > 2**31
    with tifffile.TiffWriter(out, bigtiff=bigtiff) as writer:
        downsample = 1
        while True:
            shape = (math.ceil(size / downsample), math.ceil(size / downsample))
            extra = {"resolution": (pixels_per_cm, pixels_per_cm), "resolutionunit": "CENTIMETER"}
            writer.write(
                level_tiles(source, downsample, shape),
                shape=(*shape, 3),
                dtype=np.uint8,
                tile=(TILE, TILE),
                photometric="rgb",
                compression="jpeg",
                compressionargs={"level": quality},
                subfiletype=0 if downsample == 1 else 1,
                metadata=None,
                **(extra if downsample == 1 else {}),
            )
            logger.info("level downsample %d: %dx%d written", downsample, shape[1], shape[0])
            if max(shape) <= TILE:
                break
            downsample *= 2


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and build the slide."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="output .tif path")
    parser.add_argument("--size", type=int, default=20_000, help="level-0 width and height in px")
    parser.add_argument("--source", type=Path, required=True, help="slide whose content is mirrored")
    parser.add_argument("--mpp", type=float, default=0.5, help="output microns per pixel (0.5)")
    parser.add_argument("--source-mpp", type=float, default=None,
                        help="source microns per pixel, if the source records none")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality (90)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.size < 1 or args.mpp <= 0:
        parser.error("--size must be >= 1 and --mpp > 0")
    start = time.perf_counter()
    build(args.out, args.size, args.source, args.mpp, args.source_mpp, args.quality)
    logger.info("wrote %s (%.1f MB) in %.1f s", args.out, args.out.stat().st_size / 1e6,
                time.perf_counter() - start)


if __name__ == "__main__":
    main()
