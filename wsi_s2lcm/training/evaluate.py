"""Held-out scribble metrics used to select the checkpoint.

The checkpoint is chosen with scribbles only: on images held back from training, the partial
cross-entropy and the balanced accuracy (mean of the nucleus and background recalls) over their
scribbled pixels. Full masks are never used.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def scribble_metrics(probabilities: Sequence[np.ndarray], targets: Sequence[np.ndarray]) -> dict:
    """Held-out scribble metrics over several images.

    Returns
    -------
    dict
        ``val_pce`` (mean cross-entropy over all scribbled pixels), ``val_balanced_accuracy``,
        ``val_nucleus_recall``, ``val_background_recall`` and ``val_pixels``.
    """
    eps = 1e-6
    loss_sum, pixels = 0.0, 0
    hits = {0: 0, 1: 0}
    counts = {0: 0, 1: 0}
    for probability, target in zip(probabilities, targets):
        for label in (0, 1):
            mask = target == label
            p = probability[mask] if label else 1.0 - probability[mask]
            loss_sum += float(-np.log(np.clip(p, eps, 1.0)).sum())
            hits[label] += int((p > 0.5).sum())
            counts[label] += int(mask.sum())
            pixels += int(mask.sum())
    recalls = {k: hits[k] / counts[k] if counts[k] else float("nan") for k in (0, 1)}
    present = [v for v in recalls.values() if not np.isnan(v)]
    return {
        "val_pce": loss_sum / pixels if pixels else float("nan"),
        "val_balanced_accuracy": float(np.mean(present)) if present else float("nan"),
        "val_nucleus_recall": recalls[1],
        "val_background_recall": recalls[0],
        "val_pixels": pixels,
    }
