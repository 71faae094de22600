"""What a training run leaves beside its model: the epoch log, the curves and the model card."""

from __future__ import annotations

import json
import math
import os
import platform
from pathlib import Path
from typing import Any, Sequence

from wsi_s2lcm.atomic import write_text_atomic

LOG_FILE = "train_log.jsonl"
CURVES_FILE = "curves.png"
LOSS_KEYS = ("loss", "pce", "pseudo", "mcr_full", "mcr_quarter", "mil")
METRIC_KEYS = ("val_pce", "val_balanced_accuracy")


def read_log(directory: Path) -> list[dict[str, Any]]:
    """The epoch records written so far (empty when there is no log)."""
    path = Path(directory) / LOG_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def write_log(directory: Path, records: Sequence[dict[str, Any]]) -> None:
    """Rewrite the epoch log (one JSON object per line) atomically."""
    write_text_atomic(
        Path(directory) / LOG_FILE,
        "".join(json.dumps(_jsonable(r), sort_keys=True) + "\n" for r in records),
    )


def plot_curves(directory: Path, records: Sequence[dict[str, Any]]) -> Path:
    """Draw the loss terms and the held-out scribble metrics per epoch into ``curves.png``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(figure)
    losses, metrics = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    epochs = [r["epoch"] for r in records]
    for key in LOSS_KEYS:
        values = [_number(r.get(key)) for r in records]
        if any(v and not math.isnan(v) for v in values):
            losses.plot(epochs, values, label=key)
    losses.set_xlabel("epoch")
    losses.set_ylabel("training loss (epoch mean)")
    losses.set_yscale("symlog", linthresh=1e-2)
    if losses.get_legend_handles_labels()[0]:
        losses.legend(fontsize=8)
    for key in METRIC_KEYS:
        points = [(r["epoch"], _number(r.get(key))) for r in records]
        points = [p for p in points if not math.isnan(p[1])]
        if points:
            metrics.plot(*zip(*points), marker="o", label=key)
    metrics.set_xlabel("epoch")
    metrics.set_title("held-out scribbles", fontsize=9)
    if metrics.get_legend_handles_labels()[0]:
        metrics.legend(fontsize=8)
    figure.tight_layout()
    path = Path(directory) / CURVES_FILE
    figure.savefig(path)
    return path


def recorded_folders(data: dict[str, Any], key: str) -> list[str]:
    """The folders a training record's ``data`` names under ``key`` ("images" or "scribbles").

    Records written before ``train`` took several folders hold one folder as a string.
    """
    value = data[key]
    return [value] if isinstance(value, str) else list(value)


def hardware() -> dict[str, Any]:
    """The machine, for the training record."""
    import torch

    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def _number(value: Any) -> float:
    """A float, NaN for a missing value."""
    return math.nan if value is None else float(value)


def _jsonable(value: Any) -> Any:
    """Replace NaN by ``None`` so the log stays strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
