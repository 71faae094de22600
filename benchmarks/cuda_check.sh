#!/usr/bin/env bash
# The checks that need a CUDA GPU, as one script: the CUDA + mixed-precision (AMP) paths of
# `wsi-s2lcm train` and `wsi-s2lcm segment`, and segmentation throughput on the GPU.
#
#   1. scribbles generated from two real MoNuSeg masks, then `train --device cuda` for a few
#      epochs (AMP on), then `segment --model` with the result on the GPU;
#   2. the bundled CMU slide with the shipped default model, `--device cuda` (best of 2 runs)
#      and `--device cpu`, under /usr/bin/time -v;
#   3. a SIZE x SIZE pyramidal TIFF built at run time from the CMU slide's content
#      (benchmarks/make_large_slide.py), segmented on the GPU under /usr/bin/time -v.
# Each run's summary JSON (seconds per stage, nuclei, tiles) and the time output land in OUT;
# summary.md collects wall time, peak RSS and model-resolution megapixels per second.
#
# Usage (from the project root, after pip install -e .):
#   bash benchmarks/cuda_check.sh [OUT]
# Environment: MONUSEG (default ../shared/data/monuseg-train: images/ and instance_labels/),
# DEVICE (default cuda; DEVICE=cpu runs the same steps on the CPU as a dry run of the script),
# SIZE (default 20000), BATCH (default 16).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT="${1:-/tmp/wsi-s2lcm-cuda-check}"
MONUSEG="${MONUSEG:-../shared/data/monuseg-train}"
DEVICE="${DEVICE:-cuda}"
SIZE="${SIZE:-20000}"
BATCH="${BATCH:-16}"
SLIDE=examples/CMU-1-Small-Region.svs
STEMS=(TCGA-A7-A13E-01Z-00-DX1 TCGA-HE-7129-01Z-00-DX1)

mkdir -p "$OUT"/data/images "$OUT"/data/masks
python -c "import torch, wsi_s2lcm; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" | tee "$OUT/versions.txt"

# 1. Training on the GPU (AMP) from generated scribbles, then segmenting with the result.
for stem in "${STEMS[@]}"; do
  cp "$MONUSEG/images/$stem.tif" "$OUT/data/images/"
  cp "$MONUSEG/instance_labels/$stem.png" "$OUT/data/masks/"
done
printf 'crop_size: 256\nbatch_size: 8\ncrops_per_image: 8\nepochs: 6\nwarmup_epochs: 2\nramp_epochs: 1\nema_every: 1\nvalidate_every: 2\namp: true\n' \
    > "$OUT/train.yaml"
wsi-s2lcm scribbles --masks "$OUT/data/masks" --images "$OUT/data/images" \
    --out "$OUT/data/scribbles" --ratio 0.5 --seed 0 --overwrite
/usr/bin/time -v -o "$OUT/train.time" wsi-s2lcm train -v --images "$OUT/data/images" \
    --scribbles "$OUT/data/scribbles" --out "$OUT/model" --config "$OUT/train.yaml" \
    --mpp 0.25 --validation-fraction 0.5 --device "$DEVICE" --overwrite 2>&1 | tee "$OUT/train.log"
wsi-s2lcm segment "$OUT/data/images/${STEMS[0]}.tif" --mpp 0.25 --model "$OUT/model" \
    --device "$DEVICE" --out "$OUT/seg-trained" --overwrite

# 2. and 3. Segmentation speed with the shipped default model.
run_segment() {  # name slide extra-options...
  local name="$1" slide="$2"
  shift 2
  /usr/bin/time -v -o "$OUT/$name.time" wsi-s2lcm segment "$slide" --out "$OUT/$name" \
      --overwrite -q "$@"
}
run_segment cmu-"$DEVICE"-1 "$SLIDE" --device "$DEVICE" --batch-size "$BATCH"
run_segment cmu-"$DEVICE"-2 "$SLIDE" --device "$DEVICE" --batch-size "$BATCH"
run_segment cmu-cpu "$SLIDE" --device cpu
python benchmarks/make_large_slide.py "$OUT/big.tif" --size "$SIZE" --source "$SLIDE"
run_segment big-"$DEVICE" "$OUT/big.tif" --device "$DEVICE" --batch-size "$BATCH"

python - "$OUT" <<'EOF'
import json, re, sys
from pathlib import Path

out = Path(sys.argv[1])
lines = ["| run | wall s (summary) | peak RSS MB | tiles | nuclei | model Mpx/s |", "|---|---|---|---|---|---|"]
for time_file in sorted(out.glob("*.time")):
    name = time_file.stem
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", time_file.read_text())
    if found is None:
        lines.append(f"| {name} | did not finish | | | | |")
        continue
    rss = int(found.group(1)) / 1024
    summaries = list((out / name).glob("*.json")) if (out / name).is_dir() else []
    if not summaries:
        lines.append(f"| {name} | | {rss:.0f} | | | |")
        continue
    summary = json.loads(summaries[0].read_text())
    width, height = summary["model_size_px"]
    seconds = summary["seconds"]["total"]
    lines.append(f"| {name} | {seconds:.1f} | {rss:.0f} | {summary['tiles']} | "
                 f"{summary['nuclei']} | {width * height / 1e6 / seconds:.2f} |")
(out / "summary.md").write_text("\n".join(lines) + "\n")
sys.stdout.write("\n".join(lines) + "\n")
EOF
