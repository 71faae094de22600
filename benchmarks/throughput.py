"""Wall time of ``wsi-s2lcm segment`` on a real slide for several dispatch settings.

Runs the command line under ``/usr/bin/time -v`` on the bundled CMU-1-Small-Region slide (or any
slide given) with in-thread, threaded and process workers, and prints a Markdown table of wall
time, model-resolution megapixels per second and peak RSS.

Usage::

    python benchmarks/throughput.py [--slide SLIDE] [--model MODEL] [--repeat 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from memory_scaling import measure  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {
    "in-thread (--workers 0)": ["--workers", "0"],
    "1 thread (--workers 1)": ["--workers", "1"],
    "2 threads (--workers 2, default)": ["--workers", "2"],
    "2 processes (--workers 2 --processes)": ["--workers", "2", "--processes"],
}


def main() -> None:
    """Segment the slide once per setting (best of ``--repeat``) and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slide", type=Path, default=ROOT / "examples" / "CMU-1-Small-Region.svs")
    parser.add_argument("--model", default=None)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("/tmp/wsi-s2lcm-throughput"))
    parser.add_argument("--no-amp", action="store_true",
                        help="float32 (default: mixed precision where the hardware has it)")
    args = parser.parse_args()
    precision = ["--no-amp"] if args.no_amp else []
    lines = ["| setting | wall s | tiles | nuclei | model Mpx/s | predict s (sum) | peak RSS MB |",
             "|---|---|---|---|---|---|---|"]
    for name, options in SETTINGS.items():
        runs = [measure(args.slide, args.out, args.model, [*options, *precision])
                for _ in range(args.repeat)]
        best = min(runs, key=lambda run: run["seconds"])
        width, height = best["model_px"]
        lines.append(
            f"| {name} | {best['seconds']:.1f} | {best['tiles']} | {best['nuclei']} | "
            f"{width * height / 1e6 / best['seconds']:.2f} | {best['stages']['predict_cpu']:.1f} | "
            f"{best['peak_rss_mb']:.0f} |"
        )
        sys.stdout.write(lines[-1] + "\n")
        sys.stdout.flush()
    sys.stdout.write("\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
