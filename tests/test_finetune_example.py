"""The fine-tuning example's inputs: its scribbles and config, read as `wsi-s2lcm train` reads them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from wsi_s2lcm.training.config import load_train_config
from wsi_s2lcm.training.dataset import load_pair

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "finetune"
SLIDE = ROOT / "examples" / "CMU-1-Small-Region.svs"
SLIDE_MPP = 0.499


def _benchmark():
    spec = importlib.util.spec_from_file_location(
        "finetune_example", ROOT / "benchmarks" / "finetune_example.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_config_fine_tunes_the_default_model_at_its_resolution():
    config = load_train_config(EXAMPLE / "finetune.yaml")
    assert config.init_model == "s2lcm-monuseg"
    assert config.mpp == 0.25
    assert config.warmup_epochs < config.epochs


def test_training_regions_stay_above_the_part_the_benchmark_counts_on():
    config = load_train_config(EXAMPLE / "finetune.yaml")
    scribbles = EXAMPLE / "scribbles" / f"{SLIDE.stem}.geojson"
    regions = load_pair(SLIDE.stem, SLIDE, scribbles, None, config)
    targets = np.concatenate([r.target.ravel() for r in regions])
    assert (targets == 1).sum() > 0 and (targets == 0).sum() > 0
    held_out_y = _benchmark().HELD_OUT_Y
    scale = config.mpp / SLIDE_MPP
    for region in regions:
        y = int(region.key.rsplit(",", 1)[1])
        bottom_level0 = (y + region.image.shape[0]) * scale
        assert bottom_level0 < held_out_y, region.key
