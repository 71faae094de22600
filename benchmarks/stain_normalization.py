"""Does normalizing the demo slide's stain to MoNuSeg's make its detections more often nuclei?

The demo slide (examples/CMU-1-Small-Region.svs, one level) is read whole, brought to the stain
vectors and concentration range of the 24 MoNuSeg training images with tiatoolbox's Macenko
normalizer (fitted once on the training images, applied once to the whole slide, so every tile
sees the same transform), written as a TIFF and segmented with ``--mpp`` set to the slide's.
The result is scored against the judged detections of benchmarks/judgments/cmu-demo.json
(docs/MODEL.md, Known limits), as the unnormalized demo run is.

Usage (from the project root; about a minute on 2 CPU cores)::

    python benchmarks/stain_normalization.py [--out /tmp/wsi-s2lcm-stain-normalization]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import openslide
import tifffile
from tiatoolbox.tools.stainnorm import MacenkoNormalizer

from monuseg_images import ROOT, read_image, split_stems

SLIDE = ROOT / "examples" / "CMU-1-Small-Region.svs"
JUDGMENTS = ROOT / "benchmarks" / "judgments" / "cmu-demo.json"


def normalized_slide(path: Path) -> tuple[np.ndarray, float]:
    """The slide's level 0, Macenko-normalized to the MoNuSeg training images, and its mpp."""
    # every fourth pixel of each training image: the fit sees all 24 stains at a small cost
    target = np.concatenate([read_image(stem)[::4, ::4] for stem in split_stems("train")])
    normalizer = MacenkoNormalizer()
    normalizer.fit(target)
    slide = openslide.OpenSlide(str(path))
    mpp = float(slide.properties[openslide.PROPERTY_NAME_MPP_X])
    rgb = np.array(slide.read_region((0, 0), 0, slide.dimensions).convert("RGB"))
    return normalizer.transform(rgb), mpp


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/wsi-s2lcm-stain-normalization"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    image, mpp = normalized_slide(SLIDE)
    tiff = args.out / f"{SLIDE.stem}-macenko.tif"
    tifffile.imwrite(tiff, image)
    subprocess.run(
        ["wsi-s2lcm", "segment", str(tiff), "--mpp", str(mpp), "--out", str(args.out),
         "--overwrite", "-q"],
        check=True,
    )
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "judged_detections.py"), "score",
         "--judgments", str(JUDGMENTS), "--geojson", str(args.out / f"{tiff.stem}.geojson")],
        check=False,
    ).returncode


if __name__ == "__main__":
    sys.exit(main())
