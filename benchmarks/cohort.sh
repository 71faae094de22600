#!/usr/bin/env bash
# Whole-cohort timings of `wsi-s2lcm cohort` on real slides, under /usr/bin/time -v:
#
#   1. MANIFEST (default examples/cohort.csv: the CMU demo slide, TCGA-CR-7395 and a MoNuSeg
#      image) with the shipped default model, one slide at a time (--workers 1);
#   2. the same with two slides at once (--workers 2, sharing this machine's cores);
#   3. the second run again into the same folder: every slide complete, so it is skipped
#      (the cost of resuming);
#   4. the manifest with a truncated copy of the demo slide and a text file named like a slide
#      added: those two are reported in cohort.csv, the others skipped, exit code 3.
# Each run's cohort.csv (as NAME.csv), log and time output land in OUT; summary.md collects wall time, peak RSS,
# exit code and the statuses of the slides.
#
# Usage (from the project root, after pip install -e .):
#   bash benchmarks/cohort.sh [OUT]
# Environment: MANIFEST (default examples/cohort.csv).
set -uo pipefail
cd "$(dirname "$0")/.."

OUT="$(realpath -m "${1:-/tmp/wsi-s2lcm-cohort-bench}")"
MANIFEST="$(realpath "${MANIFEST:-examples/cohort.csv}")"
rm -rf "$OUT"
mkdir -p "$OUT/bad"

run() {  # run NAME SOURCE FOLDER ARGS...: one timed cohort run into $OUT/FOLDER
    local name="$1" source="$2" folder="$3"; shift 3
    /usr/bin/time -v -o "$OUT/$name.time" \
        wsi-s2lcm cohort "$source" --out "$OUT/$folder" "$@" -q >"$OUT/$name.log" 2>&1
    echo "$?" >"$OUT/$name.rc"
    cp "$OUT/$folder/cohort.csv" "$OUT/$name.csv"
}

run workers1 "$MANIFEST" workers1-out --workers 1
run workers2 "$MANIFEST" workers2-out --workers 2
run resume "$MANIFEST" workers2-out --workers 2

# a manifest with two bad slides beside the good ones (absolute paths, so it may live anywhere)
head -c 300000 examples/CMU-1-Small-Region.svs >"$OUT/bad/truncated.svs"
echo "not a slide" >"$OUT/bad/notes.svs"
python - "$MANIFEST" "$OUT/bad" <<'EOF'
import csv, sys
from pathlib import Path

from wsi_s2lcm.cohort import find_slides

manifest, bad = Path(sys.argv[1]), Path(sys.argv[2])
with open(bad / "with-bad.csv", "w", newline="") as handle:
    writer = csv.writer(handle)
    writer.writerow(["slide", "mpp"])
    for slide in find_slides(manifest):
        writer.writerow([slide.path.resolve(), slide.mpp or ""])
    writer.writerow([bad / "truncated.svs", ""])
    writer.writerow([bad / "notes.svs", ""])
EOF
run bad-slides "$OUT/bad/with-bad.csv" workers2-out --workers 2

python - "$OUT" <<'EOF'
import csv, re, sys
from collections import Counter
from pathlib import Path

out = Path(sys.argv[1])
lines = ["| run | exit | wall s | peak RSS MB | slides (status: count) | nuclei |", "|---|---|---|---|---|---|"]
for name in ("workers1", "workers2", "resume", "bad-slides"):
    text = (out / f"{name}.time").read_text()
    wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", text)
    hours, minutes, seconds = (float(g or 0) for g in wall.groups())
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1)) / 1024
    with open(out / f"{name}.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    statuses = ", ".join(f"{k}: {v}" for k, v in sorted(Counter(r["status"] for r in rows).items()))
    nuclei = sum(int(r["nuclei"]) for r in rows if r["nuclei"])
    rc = (out / f"{name}.rc").read_text().strip()
    lines.append(f"| {name} | {rc} | {hours * 3600 + minutes * 60 + seconds:.1f} | {rss:,.0f} | {statuses} | {nuclei:,} |")
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
