"""Ship a trained model inside the package, with its held-out figures on the card.

Segments the validation images of the fixed MoNuSeg split (pipelines/monuseg_split.json) with the
trained model (in float32 on the CPU, like the ablation table, whatever the CPU), evaluates them
against the full instance labels (reported only: the model was selected on scribbles), and
writes the model with float16 weights to ``wsi_s2lcm/weights/<name>/`` with the figures in its
card.

Usage (from the project root, after pipelines/train_default_model.sh)::

    python pipelines/ship_default_model.py --model runs/default-model --name s2lcm-monuseg
    python pipelines/ship_default_model.py --model runs/fast-model --name s2lcm-monuseg-fast

Models trained before the trainer calibrated the watershed height on held-out scribbles are
calibrated here first, with the held-out images and scribble files their card records.
``--recalibrate`` calibrates again a model that was (the eleventh session added the probability
threshold to what is calibrated: docs/TRAINING.md). ``--postprocess KEY=VALUE`` sets a
post-processing value on the card first, so that the calibration and the figures use it (the
eleventh session set the confidence floor ``min_mean_probability=0.75`` this way: docs/MODEL.md).
``--calibrate-zoom`` then chooses the card's reference nucleus area for the reading zoom on the
same held-out scribbles (``wsi_s2lcm.training.zoom_calibration``; docs/MODEL.md, *The reading
zoom*), so that the figures are those of ``wsi-s2lcm segment`` with its default ``--zoom auto``.

After a change to segmentation, a shipped model is re-evaluated the same way from its own folder
(its float16 weights are read and written back unchanged; only the card's figures and
post-processing values change)::

    python pipelines/ship_default_model.py --model wsi_s2lcm/weights/s2lcm-monuseg --name s2lcm-monuseg
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

from wsi_s2lcm.cli_options import postprocess_with
from wsi_s2lcm.config import ExportConfig, PostprocessConfig, TilingConfig
from wsi_s2lcm.evaluation import evaluate_dirs
from wsi_s2lcm.models import load_model, read_card, save_model, write_card
from wsi_s2lcm.segment import segment_slide
from wsi_s2lcm.training.calibrate import calibrate_model, ensure_calibrated
from wsi_s2lcm.training.config import load_train_config
from wsi_s2lcm.training.dataset import load_pair, pair_files
from wsi_s2lcm.training.records import recorded_folders
from wsi_s2lcm.training.zoom_calibration import calibrate_zoom

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "monuseg-train"
SPLIT = ROOT / "pipelines" / "monuseg_split.json"

logger = logging.getLogger("ship_default_model")


def validation_figures(model_dir: Path, out_dir: Path) -> dict:
    """Segment the held-out MoNuSeg images with the model and evaluate them."""
    stems = json.loads(SPLIT.read_text())["validation"]
    pred_dir = out_dir / "predictions"
    started = time.perf_counter()
    for stem in stems:
        segment_slide(
            DATA / "images" / f"{stem}.tif", pred_dir, model=model_dir, mpp=0.25,
            tiling=TilingConfig(tissue_mask=False), export=ExportConfig(labels=False, overlay=False),
            device="cpu", amp=False,
        )
    seconds = time.perf_counter() - started
    result = evaluate_dirs(pred_dir, DATA / "instance_labels", out_csv=out_dir / "validation.csv")
    sys.stdout.write(result.format_table() + "\n")
    return {
        "data": f"{len(stems)} held-out MoNuSeg 2018 training images ({', '.join(stems)}), "
                "full instance labels, evaluated at their 0.25 µm/px",
        "mean": {k: round(float(v), 4) for k, v in result.mean.items() if isinstance(v, float)},
        "per_image": [
            {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}
            for row in result.rows
        ],
        "segment_seconds_cpu": round(seconds, 1),
    }


def calibrate_held_out(model_dir: Path, again: bool = False) -> None:
    """Calibrate the threshold and the separation on the held-out scribbles recorded on the card,
    if not done yet (or ``again``).

    Models trained before the trainer calibrated them have no record; this runs the same
    calibration on the held-out images and scribble files that training used.
    """
    config = load_train_config(None, read_card(model_dir).training["config"])
    heights, thresholds = config.separation_heights_um, config.separation_thresholds
    if again:
        calibrate_model(model_dir, held_out_images(model_dir), heights, thresholds)
    else:
        ensure_calibrated(model_dir, lambda: held_out_images(model_dir), heights, thresholds)


def held_out_images(model_dir: Path) -> list:
    """The held-out images and scribbles that the model's card records, loaded for calibration."""
    card = read_card(model_dir)
    data = card.training["data"]
    config = load_train_config(None, card.training["config"])
    pairs = pair_files([ROOT / f for f in recorded_folders(data, "images")],
                       [ROOT / f for f in recorded_folders(data, "scribbles")],
                       data["validation"])
    return [item for stem, image, scribbles in pairs
            for item in load_pair(stem, image, scribbles, data["image_mpp"], config)]


def main() -> None:
    """Evaluate the trained model and write it into the package."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "runs" / "default-model")
    parser.add_argument("--name", default="s2lcm-monuseg")
    parser.add_argument("--recalibrate", action="store_true",
                        help="calibrate the threshold and separation again on held-out scribbles")
    parser.add_argument("--postprocess", action="append", default=[], metavar="KEY=VALUE",
                        help="set a post-processing value on the card before calibrating")
    parser.add_argument("--calibrate-zoom", action="store_true",
                        help="choose the reference nucleus area of the reading zoom on the "
                             "held-out scribbles, after the separation")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.postprocess:
        card = read_card(args.model)
        postprocess = postprocess_with(card.postprocess, tuple(args.postprocess))
        card = dataclasses.replace(card, postprocess=dataclasses.asdict(postprocess))
        write_card(args.model, card)
    calibrate_held_out(args.model, args.recalibrate)
    if args.calibrate_zoom:
        calibrate_zoom(args.model, held_out_images(args.model))
    model = load_model(args.model)
    with tempfile.TemporaryDirectory() as scratch:
        figures = validation_figures(args.model, Path(scratch))
    metrics = dict(model.card.metrics)
    metrics["validation_full_masks"] = figures
    # Every post-processing value is written out, including those added after training.
    postprocess = dataclasses.asdict(PostprocessConfig(**(model.card.postprocess or {})))
    card = dataclasses.replace(model.card, name=args.name, metrics=metrics, postprocess=postprocess)
    target = ROOT / "wsi_s2lcm" / "weights" / args.name
    save_model(target, card, model.network, half=True)
    logger.info("wrote %s (%.1f MB of weights)", target,
                (target / "weights.safetensors").stat().st_size / 1e6)


if __name__ == "__main__":
    main()
