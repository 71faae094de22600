"""Peak memory of ``wsi-s2lcm segment`` as the slide grows.

Builds pyramidal TIFFs of increasing size from real slide content (benchmarks/make_large_slide.py,
at run time, nothing committed), segments each with the command line under ``/usr/bin/time -v``,
and prints a Markdown table of slide size, tiles, nuclei, wall time and peak RSS.

Usage::

    python benchmarks/memory_scaling.py --sizes 5000 10000 20000 --workdir /tmp/wsi-bench \
        [--model MODEL] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_large_slide import build  # noqa: E402

SOURCE = Path(__file__).resolve().parents[1].parent / "shared/data/slides/CMU-1-Small-Region.svs"


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def measure(slide: Path, out: Path, model: str | None, options: list[str]) -> dict:
    """Run the segment command under /usr/bin/time -v and return its figures."""
    command = ["/usr/bin/time", "-v", "wsi-s2lcm", "segment", str(slide), "--out", str(out),
               "--overwrite", "-q", *options]
    if model:
        command += ["--model", model]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"segment failed on {slide}:\n{done.stderr[-2000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time.*: (.+)", done.stderr).group(1).strip()
    summary = json.loads((out / f"{slide.stem}.json").read_text())
    return {
        "peak_rss_mb": rss_kb / 1024,
        "wall": wall,
        "tiles": summary["tiles"],
        "nuclei": summary["nuclei"],
        "tissue_mm2": summary["tissue_mm2"],
        "seconds": summary["seconds"]["total"],
        "stages": summary["seconds"],
        "model_px": summary["model_size_px"],
    }


def main() -> None:
    """Build the slides, segment them and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 10000, 20000])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/wsi-s2lcm-bench"))
    parser.add_argument("--model", default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-amp", action="store_true",
                        help="float32 (default: mixed precision where the hardware has it)")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in args.sizes:
        slide = args.workdir / f"mirrored-{size}.tif"
        if not slide.exists():
            build(slide, size, SOURCE, mpp=0.5, source_mpp=None, quality=90)
        started = time.perf_counter()
        options = ["--workers", str(args.workers), *(["--no-amp"] if args.no_amp else [])]
        figures = measure(slide, args.workdir / "out", args.model, options)
        figures["size"] = size
        rows.append(figures)
        _say(f"{size}: {figures} ({time.perf_counter() - started:.0f} s)")
    _say("\n| level 0 (px, 0.5 µm/px) | tissue mm² | tiles | nuclei | wall time | peak RSS (MB) |")
    _say("|---|---|---|---|---|---|")
    for row in rows:
        _say(f"| {row['size']} x {row['size']} | {row['tissue_mm2']:.1f} | {row['tiles']} | "
              f"{row['nuclei']} | {row['wall']} | {row['peak_rss_mb']:.0f} |")


if __name__ == "__main__":
    main()
