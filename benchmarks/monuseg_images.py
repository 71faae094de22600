"""The MoNuSeg images the measurement scripts share: where they are, the fixed split, reading them.

Imported by the scripts of this folder that score the default model on the images of
pipelines/monuseg_split.json at their 0.25 µm/px (run them from the project root as
``python benchmarks/<script>.py``; Python then finds this module beside them).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from wsi_s2lcm.config import PostprocessConfig
from wsi_s2lcm.models import load_model

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "monuseg-train"
SPLIT = ROOT / "pipelines" / "monuseg_split.json"
MPP = 0.25
#: The full-mask figures the scripts print (reported only, never used to select).
METRICS = ("dice", "aji", "pq", "object_dice")


def split_stems(part: str) -> list[str]:
    """The image stems of one part (``"train"`` or ``"validation"``) of the fixed split."""
    return json.loads(SPLIT.read_text())[part]


def read_image(stem: str) -> np.ndarray:
    """One MoNuSeg image as ``(H, W, 3)`` uint8 RGB."""
    return np.asarray(Image.open(DATA / "images" / f"{stem}.tif").convert("RGB"))


def read_truth(stem: str) -> np.ndarray:
    """The full instance labels of one MoNuSeg image (reported only, never used to select)."""
    return np.asarray(Image.open(DATA / "instance_labels" / f"{stem}.png")).astype(np.int32)


def model_and_postprocess(
    ref: str | None = None, **changes: Any
) -> tuple[Any, PostprocessConfig]:
    """A model (the default when ``ref`` is None) and its card's post-processing with
    ``changes`` applied."""
    model = load_model(ref)
    config = dataclasses.replace(PostprocessConfig(**model.card.postprocess), **changes)
    return model, config
