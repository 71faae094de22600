#!/usr/bin/env bash
# Train a shipped model from scribbles generated from the MoNuSeg masks: the default model
# (s2lcm-monuseg, 0.25 µm/px; also the recipe of the ablation table, pipelines/table_rows.yaml) or,
# with MPP=0.5, the 4x cheaper s2lcm-monuseg-fast (0.5 µm/px).
#
# Repeatable: scribbles are seeded, the split is fixed (pipelines/monuseg_split.json), the
# training configs are written below, and training is seeded. The two S2L-CM stages run as two
# commands: (1) warm-up on the scribble loss alone, (2) all S2L-CM terms (pseudo labels, MCR,
# pMIL, ramped in over 10 epochs) starting from the warm-up model with a fresh optimizer.
# Outputs (git-ignored; RUN is runs/default-model, or runs/fast-model with MPP=0.5):
#   runs/monuseg-scribbles-r0.5-s0/   one QuPath GeoJSON of generated scribbles per image
#   $RUN-{warmup,s2lcm}.yaml          the training configs
#   $RUN-warmup/                      stage 1 model directory (skipped when it exists)
#   $RUN/                             the model (best by held-out scribbles), last/,
#                                     train_state/, train_log.jsonl, curves.png
# Usage (from the project root):   bash pipelines/train_default_model.sh
#                                  MPP=0.5 bash pipelines/train_default_model.sh
# Resume an interrupted stage 2:   RESUME=1 bash pipelines/train_default_model.sh
# About 85 min on 2 CPU cores at either MPP: stage 1 about 21 s per epoch (12 steps of 8 crops of
# 256 px, 1.5-1.7 s/step; 4,217 s of training at 0.25, 4,133 s at 0.5), stage 2 25-34 s per
# epoch (765 s at 0.25, 1,017 s at 0.5). The shipped models came from this recipe on 2026-11-30:
# s2lcm-monuseg-fast from the run of 02:07-03:31 UTC (stage 2 never bettered the warm-up, so its
# weights are stage 1's), s2lcm-monuseg from 05:01-06:30 UTC (stage 1 launched by hand with the
# identical config, docs/MODEL.md; stage 2 selected at epoch 5).
set -euo pipefail
cd "$(dirname "$0")/.."

DATA="${MONUSEG_DIR:-../shared/data/monuseg-train}"
SCRIBBLES=runs/monuseg-scribbles-r0.5-s0
MPP="${MPP:-0.25}"
case "$MPP" in
  0.25) NAME=s2lcm-monuseg; RUN=runs/default-model ;;
  0.5) NAME=s2lcm-monuseg-fast; RUN=runs/fast-model ;;
  *) echo "MPP must be 0.25 (s2lcm-monuseg) or 0.5 (s2lcm-monuseg-fast), not $MPP" >&2; exit 2 ;;
esac
WARMUP=$RUN-warmup
MODEL=$RUN
LICENCE="CC BY-NC-SA 4.0: weights derived from the MoNuSeg 2018 training data (Kumar et al., IEEE TMI 2017; monuseg.grand-challenge.org); non-commercial use only, share alike."
COMMON=(--images "$DATA/images" --scribbles "$SCRIBBLES" --split pipelines/monuseg_split.json
        --subset train --mpp 0.25 --device cpu --threads 2 --licence "$LICENCE")

mkdir -p runs
if [ ! -f "$SCRIBBLES/scribbles.json" ]; then
  wsi-s2lcm scribbles -v --masks "$DATA/instance_labels" --images "$DATA/images" \
      --out "$SCRIBBLES" --ratio 0.5 --seed 0 --overwrite
fi

# Shared settings. MoNuSeg EMA values of METHOD (alpha 0.1, tau 0.95); the CPU-sized schedule
# (epochs, warm-up, EMA interval, crops per image) and the encoder learning rate for random
# init (1e-3; METHOD's 3e-4 protects ImageNet weights we do not have) are [inferred], see
# docs/TRAINING.md.
SHARED="mpp: $MPP
encoder: resnet18
crop_size: 256
batch_size: 8
crops_per_image: 4
lr_encoder: 0.001
lr_decoder: 0.003
ema_every: 4
ema_alpha: 0.1
ema_init: first
pseudo_threshold: 0.95
mcr_max_samples: 1024
validate_every: 5
seed: 0"

# Stage 1: 200 epochs of partial cross-entropy on the scribbles (L_s), learning rates on a
# cosine from their value down to 5 %.
printf '%s\nepochs: 200\nwarmup_epochs: 200\nlr_schedule: cosine\nuse_pseudo: false\nuse_mcr: false\nuse_mil: false\n' \
    "$SHARED" > "$RUN-warmup.yaml"
if [ ! -f "$WARMUP/card.json" ]; then
  wsi-s2lcm train -v "${COMMON[@]}" --config "$RUN-warmup.yaml" --out "$WARMUP" \
      --name "$NAME-warmup" --overwrite
fi

# Stage 2: 30 epochs (cosine learning rates) of L_s + 0.5 L_p + 0.5 R_full + 1 R_quarter + 1 L_pMIL from the stage-1
# model (EMA maps start from its predictions; the stage-1 model is scored as epoch 0, so the
# selected model is never worse on the held-out scribbles than the start). [inferred] changes,
# each after a run that oscillated (logs on the first machine only: runs/v1/default-model-attempt{1,2,3}): learning rates
# 10x lower than stage 1 (fine-tuning), R_quarter weight 1 instead of METHOD's 10 (it dominated
# the loss), and MCR labels only where the prediction is confident (beta_1 = 0.8, not 0.5).
printf '%s\nepochs: 30\nwarmup_epochs: 0\nlr_schedule: cosine\nramp_epochs: 10\nema_start: 0\nuse_pseudo: true\nuse_mcr: true\nmcr_quarter_weight: 1.0\nmcr_threshold: 0.8\nuse_mil: true\ninit_model: %s\n' \
    "$SHARED" "$WARMUP" | sed 's/^lr_encoder: .*/lr_encoder: 0.0001/; s/^lr_decoder: .*/lr_decoder: 0.0003/' \
    > "$RUN-s2lcm.yaml"
if [ "${RESUME:-0}" = 1 ]; then MODE=--resume; else MODE=--overwrite; fi
wsi-s2lcm train -v "${COMMON[@]}" --config "$RUN-s2lcm.yaml" --out "$MODEL" \
    --name "$NAME" $MODE
