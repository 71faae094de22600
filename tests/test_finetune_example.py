"""The fine-tuning example's inputs: its scribbles and config, read as `wsi-s2lcm train` reads them."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

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


CONFIGS = ("finetune.yaml", "finetune-with-monuseg.yaml")


@pytest.mark.parametrize("name", CONFIGS)
def test_example_config_fine_tunes_the_default_model_at_its_resolution(name):
    config = load_train_config(EXAMPLE / name)
    assert config.init_model == "s2lcm-monuseg"
    assert config.mpp == 0.25
    assert config.warmup_epochs < config.epochs


def test_training_regions_stay_above_the_part_the_benchmark_counts_on():
    config, other = (load_train_config(EXAMPLE / name) for name in CONFIGS)
    assert (other.mpp, other.slide_region_size) == (config.mpp, config.slide_region_size)
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


def test_split_with_monuseg_holds_back_the_images_the_benchmark_scores():
    split = json.loads((EXAMPLE / "split-with-monuseg.json").read_text())
    monuseg = json.loads(_benchmark().SPLIT.read_text())
    assert split["validation"] == monuseg["validation"]
    assert sorted(split["train"]) == sorted(monuseg["train"] + [SLIDE.stem])
