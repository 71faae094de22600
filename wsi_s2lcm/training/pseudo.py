"""EMA ensembles of predictions and the pseudo labels thresholded from them (numpy only).

Scribble2Label keeps, per training image, ``ybar <- a * p + (1 - a) * ybar`` of the nucleus
probability ``p`` predicted every few epochs, and labels the unscribbled pixels where ``ybar`` is
confident (``> tau`` nucleus, ``< 1 - tau`` background). Started at zero, ``ybar`` needs many
updates to pass a high ``tau``; ``init="first"`` starts from the first prediction instead, and
``init="bias_correct"`` divides by ``1 - (1 - a)^n`` as Adam does.
"""

from __future__ import annotations

import numpy as np

from wsi_s2lcm.training.scribbles import IGNORE


def ema_update(
    ybar: np.ndarray | None, prediction: np.ndarray, alpha: float, count: int, init: str = "first"
) -> np.ndarray:
    """One EMA step.

    Parameters
    ----------
    ybar
        The running average (raw, not bias-corrected), or ``None`` before the first update.
    prediction
        Nucleus probability in [0, 1], same shape.
    alpha
        Weight of the new prediction.
    count
        Updates made before this one.
    init
        ``"first"``: the first update returns ``prediction``; ``"zero"`` and
        ``"bias_correct"``: the average starts at zero.

    Returns
    -------
    np.ndarray
        The new raw average (float32).
    """
    prediction = np.asarray(prediction, np.float32)
    if ybar is None or count == 0:
        if init == "first":
            return prediction.copy()
        ybar = np.zeros_like(prediction)
    return (alpha * prediction + (1.0 - alpha) * ybar).astype(np.float32)


def ema_estimate(ybar: np.ndarray, alpha: float, count: int, init: str = "first") -> np.ndarray:
    """The average to threshold: ``ybar``, bias-corrected after ``count`` updates if asked."""
    if init == "bias_correct" and count > 0:
        return ybar / (1.0 - (1.0 - alpha) ** count)
    return ybar


def pseudo_labels(ybar: np.ndarray, tau: float) -> np.ndarray:
    """Confident pseudo labels: 1 where ``ybar > tau``, 0 where ``ybar < 1 - tau``, else 255."""
    labels = np.full(ybar.shape, IGNORE, np.uint8)
    labels[ybar < 1.0 - tau] = 0
    labels[ybar > tau] = 1
    return labels


def combine_labels(scribbles: np.ndarray, pseudo: np.ndarray) -> np.ndarray:
    """Scribble labels where drawn, pseudo labels elsewhere."""
    return np.where(scribbles != IGNORE, scribbles, pseudo).astype(np.uint8)


class EmaMaps:
    """The EMA maps of all training images, with their update counts.

    Parameters
    ----------
    alpha, tau, init
        See :func:`ema_update` and :func:`pseudo_labels`.
    """

    def __init__(self, alpha: float, tau: float, init: str = "first") -> None:
        self.alpha, self.tau, self.init = alpha, tau, init
        self.maps: dict[str, np.ndarray] = {}
        self.counts: dict[str, int] = {}

    def update(self, key: str, prediction: np.ndarray) -> None:
        """Fold a new prediction of image ``key`` into its average."""
        count = self.counts.get(key, 0)
        self.maps[key] = ema_update(self.maps.get(key), prediction, self.alpha, count, self.init)
        self.counts[key] = count + 1

    def estimate(self, key: str) -> np.ndarray | None:
        """The (corrected) average of image ``key``, or ``None`` before its first update."""
        if key not in self.maps:
            return None
        return ema_estimate(self.maps[key], self.alpha, self.counts[key], self.init)

    def labels(self, key: str) -> np.ndarray | None:
        """Pseudo labels of image ``key``, or ``None`` before its first update."""
        estimate = self.estimate(key)
        return None if estimate is None else pseudo_labels(estimate, self.tau)
