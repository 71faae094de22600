"""Segmentation metrics for nucleus label images: pixel Dice, foreground IoU, AJI, PQ, object Dice.

Every metric is computed from one table of overlaps: the pixel count of each (ground-truth id,
predicted id) pair that co-occurs, built with a single ``np.bincount`` (or ``np.unique``) pass over
the image. A 1000 x 1000 image with about 1,800 nuclei takes a few tens of milliseconds.

Label images hold 0 for background and a positive integer per object; ids need not be consecutive.
Conventions for degenerate inputs: when both images are empty every metric is 1.0 (nothing to find,
nothing found); when exactly one side is empty every metric is 0.0.

References
----------
N. Kumar et al., "A Dataset and a Technique for Generalized Nuclear Segmentation for
Computational Pathology", IEEE TMI 2017 (AJI). A. Kirillov et al., "Panoptic Segmentation",
CVPR 2019 (PQ). H. Lee and W.-K. Jeong, "Scribble2Label", MICCAI 2020 (object Dice).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

METRIC_NAMES = ("dice", "iou", "aji", "pq", "dq", "sq", "object_dice")
"""Keys of the metrics :func:`evaluate_pair` returns, in table order."""

COUNT_NAMES = ("n_gt", "n_pred", "n_matched")
"""Keys of the object counts :func:`evaluate_pair` returns (matched = PQ true positives)."""

_MAX_BINCOUNT_FACTOR = 4


@dataclass(frozen=True)
class Overlaps:
    """The overlap table of a ground-truth and a predicted label image.

    Attributes
    ----------
    gt_ids, pred_ids
        Sorted positive object ids present in each image.
    gt_areas, pred_areas
        Pixel count of each object, aligned with the ids.
    gt_index, pred_index
        For each overlapping pair of objects, the positions of its ids in ``gt_ids`` and
        ``pred_ids``; pairs are sorted by ground-truth then predicted id.
    intersections
        Pixel count of each pair's intersection.
    """

    gt_ids: np.ndarray
    gt_areas: np.ndarray
    pred_ids: np.ndarray
    pred_areas: np.ndarray
    gt_index: np.ndarray
    pred_index: np.ndarray
    intersections: np.ndarray

    @property
    def pair_ious(self) -> np.ndarray:
        """Intersection over union of each overlapping pair."""
        unions = (
            self.gt_areas[self.gt_index] + self.pred_areas[self.pred_index] - self.intersections
        )
        return self.intersections / unions


def _check_labels(labels: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(labels)
    if array.dtype == bool:
        return array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} labels must be an integer or boolean array, not {array.dtype}")
    if array.size and np.issubdtype(array.dtype, np.signedinteger) and array.min() < 0:
        raise ValueError(f"{name} labels must be non-negative (0 = background)")
    return array


def _dense_ids(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Codes ``0..n-1`` for the labels in ``flat`` (code 0 = background) and the label of each code.

    Small labels are their own codes (the second value is then None); large or sparse ones are
    compressed through ``np.unique``.
    """
    top = int(flat.max()) if flat.size else 0
    if top <= 2 * flat.size + 1:
        return flat.astype(np.int64, copy=False), None
    values, codes = np.unique(flat, return_inverse=True)
    if values[0] != 0:
        values = np.concatenate([np.zeros(1, dtype=values.dtype), values])
        codes = codes + 1
    return codes.astype(np.int64).ravel(), values


def _n_codes(codes: np.ndarray, values: np.ndarray | None) -> int:
    if values is not None:
        return len(values)
    return int(codes.max()) + 1 if codes.size else 1


def compute_overlaps(pred: np.ndarray, gt: np.ndarray) -> Overlaps:
    """Build the overlap table of a predicted and a ground-truth label image.

    Parameters
    ----------
    pred, gt
        Label images of the same shape: 0 background, positive integers for objects.

    Returns
    -------
    Overlaps
        Object ids, areas and pairwise intersections.

    Raises
    ------
    ValueError
        If the shapes differ or the arrays are not non-negative integer (or boolean) labels.
    """
    pred = _check_labels(pred, "predicted")
    gt = _check_labels(gt, "ground-truth")
    if pred.shape != gt.shape:
        raise ValueError(_shape_message(pred.shape, gt.shape))
    gt_codes, gt_values = _dense_ids(gt.ravel())
    pred_codes, pred_values = _dense_ids(pred.ravel())
    n_pred_codes = _n_codes(pred_codes, pred_values)
    n_bins = _n_codes(gt_codes, gt_values) * n_pred_codes
    combined = gt_codes * n_pred_codes + pred_codes
    if n_bins <= _MAX_BINCOUNT_FACTOR * combined.size + 2**20:
        counts = np.bincount(combined, minlength=n_bins)
        keys = np.flatnonzero(counts)
        counts = counts[keys]
    else:
        keys, counts = np.unique(combined, return_counts=True)
    gt_keys, pred_keys = np.divmod(keys, n_pred_codes)
    gt_ids, gt_areas, gt_index = _objects(gt_keys, counts, gt_values)
    pred_ids, pred_areas, pred_index = _objects(pred_keys, counts, pred_values)
    pairs = (gt_keys > 0) & (pred_keys > 0)
    return Overlaps(
        gt_ids=gt_ids,
        gt_areas=gt_areas,
        pred_ids=pred_ids,
        pred_areas=pred_areas,
        gt_index=gt_index[pairs],
        pred_index=pred_index[pairs],
        intersections=counts[pairs].astype(np.int64),
    )


def _objects(
    keys: np.ndarray, counts: np.ndarray, values: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Foreground ids, their areas, and each key's position among them (-1 for background)."""
    codes, position = np.unique(keys, return_inverse=True)
    areas = np.bincount(position, weights=counts, minlength=codes.size).astype(np.int64)
    foreground = codes > 0
    n_background = codes.size - int(foreground.sum())
    ids = codes[foreground] if values is None else values[codes[foreground]]
    return ids, areas[foreground], position.ravel() - n_background


def _as_overlaps(pred: np.ndarray | Overlaps, gt: np.ndarray | None) -> Overlaps:
    if isinstance(pred, Overlaps):
        return pred
    return compute_overlaps(pred, gt)


def _empty_case(n_gt: float, n_pred: float) -> float | None:
    if n_gt == 0 and n_pred == 0:
        return 1.0
    if n_gt == 0 or n_pred == 0:
        return 0.0
    return None


def pixel_dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice coefficient of the foregrounds (``label > 0``): ``2 |P & G| / (|P| + |G|)``.

    Parameters
    ----------
    pred, gt
        Label images (or binary masks) of the same shape.

    Returns
    -------
    float
        Dice in [0, 1]; 1.0 when both foregrounds are empty.
    """
    return _dice_from_counts(*_foreground_counts(pred, gt))


def foreground_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Intersection over union of the foregrounds (``label > 0``); the papers' "mIoU" per image.

    Parameters
    ----------
    pred, gt
        Label images (or binary masks) of the same shape.

    Returns
    -------
    float
        IoU in [0, 1]; 1.0 when both foregrounds are empty.
    """
    return _iou_from_counts(*_foreground_counts(pred, gt))


def _shape_message(pred_shape: tuple[int, ...], gt_shape: tuple[int, ...]) -> str:
    return f"label images differ in shape: predicted {pred_shape}, ground truth {gt_shape}"


def _foreground_counts(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int, int]:
    """Foreground intersection, predicted area and ground-truth area."""
    pred_fg, gt_fg = np.asarray(pred) > 0, np.asarray(gt) > 0
    if pred_fg.shape != gt_fg.shape:
        raise ValueError(_shape_message(pred_fg.shape, gt_fg.shape))
    return int(np.count_nonzero(pred_fg & gt_fg)), int(pred_fg.sum()), int(gt_fg.sum())


def _dice_from_counts(intersection: int, pred_area: int, gt_area: int) -> float:
    empty = _empty_case(gt_area, pred_area)
    return empty if empty is not None else 2.0 * intersection / (pred_area + gt_area)


def _iou_from_counts(intersection: int, pred_area: int, gt_area: int) -> float:
    empty = _empty_case(gt_area, pred_area)
    return empty if empty is not None else intersection / (pred_area + gt_area - intersection)


def aji(pred: np.ndarray | Overlaps, gt: np.ndarray | None = None) -> float:
    """Aggregated Jaccard Index (Kumar et al. 2017).

    Each ground-truth object is paired with the predicted object of highest IoU (ties go to the
    smaller predicted id; a predicted object may serve several ground-truth objects). The
    intersections of the pairs are summed into C and their unions into U; a ground-truth object
    that overlaps nothing adds its area to U, and so does every predicted object used by no pair.
    AJI = C / U.

    Parameters
    ----------
    pred
        Predicted label image, or an :class:`Overlaps` table (then ``gt`` is ignored).
    gt
        Ground-truth label image of the same shape.

    Returns
    -------
    float
        AJI in [0, 1].
    """
    table = _as_overlaps(pred, gt)
    empty = _empty_case(table.gt_ids.size, table.pred_ids.size)
    if empty is not None:
        return empty
    best = _best_pairs(table, table.pair_ious)
    gt_index, pred_index = table.gt_index[best], table.pred_index[best]
    intersections = table.intersections[best]
    intersection_sum = int(intersections.sum())
    union_sum = int((table.gt_areas[gt_index] + table.pred_areas[pred_index] - intersections).sum())
    unmatched_gt = np.ones(table.gt_ids.size, dtype=bool)
    unmatched_gt[gt_index] = False
    unused_pred = np.ones(table.pred_ids.size, dtype=bool)
    unused_pred[pred_index] = False
    union_sum += int(table.gt_areas[unmatched_gt].sum()) + int(table.pred_areas[unused_pred].sum())
    return intersection_sum / union_sum


def _best_pairs(table: Overlaps, scores: np.ndarray) -> np.ndarray:
    """Index of the best-scoring pair of each ground-truth object; ties go to the smaller pred id."""
    if scores.size == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((table.pred_index, -scores, table.gt_index))
    _, first = np.unique(table.gt_index[order], return_index=True)
    return order[first]


def panoptic_quality(
    pred: np.ndarray | Overlaps, gt: np.ndarray | None = None
) -> tuple[float, float, float]:
    """Panoptic quality and its factors, matching objects at IoU > 0.5 (Kirillov et al. 2019).

    At IoU > 0.5 a match is unique, so no assignment step is needed. With TP matches, FP unmatched
    predicted and FN unmatched ground-truth objects: DQ = TP / (TP + FP/2 + FN/2), SQ = mean IoU
    of the matches (0 without matches), PQ = DQ * SQ.

    Parameters
    ----------
    pred
        Predicted label image, or an :class:`Overlaps` table (then ``gt`` is ignored).
    gt
        Ground-truth label image of the same shape.

    Returns
    -------
    tuple of float
        ``(pq, dq, sq)``.
    """
    table = _as_overlaps(pred, gt)
    empty = _empty_case(table.gt_ids.size, table.pred_ids.size)
    if empty is not None:
        return empty, empty, empty
    ious = table.pair_ious
    matched = ious > 0.5
    n_tp = int(matched.sum())
    if n_tp == 0:
        return 0.0, 0.0, 0.0
    n_fp = table.pred_ids.size - n_tp
    n_fn = table.gt_ids.size - n_tp
    dq = n_tp / (n_tp + 0.5 * n_fp + 0.5 * n_fn)
    sq = float(ious[matched].sum()) / n_tp
    return dq * sq, dq, sq


def object_dice_s2l(pred: np.ndarray | Overlaps, gt: np.ndarray | None = None) -> float:
    """Scribble2Label's object Dice: a Dice per ground-truth nucleus, averaged over them.

    Each ground-truth object is compared with the whole predicted object whose label is most
    frequent inside it (background excluded; ties go to the smaller id); a ground-truth object
    covered by no prediction scores 0. False positives are never penalized. Unlike the reference
    code, ground-truth objects under 20 px are kept and ids absent from the image are not counted.

    Parameters
    ----------
    pred
        Predicted label image, or an :class:`Overlaps` table (then ``gt`` is ignored).
    gt
        Ground-truth label image of the same shape.

    Returns
    -------
    float
        Mean object Dice in [0, 1].
    """
    table = _as_overlaps(pred, gt)
    empty = _empty_case(table.gt_ids.size, table.pred_ids.size)
    if empty is not None:
        return empty
    best = _best_pairs(table, table.intersections.astype(np.float64))
    intersections = table.intersections[best]
    sums = table.gt_areas[table.gt_index[best]] + table.pred_areas[table.pred_index[best]]
    return float((2.0 * intersections / sums).sum()) / table.gt_ids.size


def count_matches(table: Overlaps) -> int:
    """Number of (ground-truth, predicted) pairs with IoU > 0.5: the PQ true positives."""
    return int((table.pair_ious > 0.5).sum())


def evaluate_pair(pred_labels: np.ndarray, gt_labels: np.ndarray) -> dict[str, float]:
    """All metrics of one predicted label image against its ground truth.

    Parameters
    ----------
    pred_labels, gt_labels
        Label images of the same shape (0 background, positive object ids).

    Returns
    -------
    dict
        ``dice``, ``iou`` (foreground IoU), ``aji``, ``pq``, ``dq``, ``sq``, ``object_dice``
        (floats, see :data:`METRIC_NAMES`) and ``n_gt``, ``n_pred``, ``n_matched`` (counts).
    """
    table = compute_overlaps(pred_labels, gt_labels)
    intersection = int(table.intersections.sum())
    pred_area, gt_area = int(table.pred_areas.sum()), int(table.gt_areas.sum())
    pq, dq, sq = panoptic_quality(table)
    return {
        "dice": _dice_from_counts(intersection, pred_area, gt_area),
        "iou": _iou_from_counts(intersection, pred_area, gt_area),
        "aji": aji(table),
        "pq": pq,
        "dq": dq,
        "sq": sq,
        "object_dice": object_dice_s2l(table),
        "n_gt": int(table.gt_ids.size),
        "n_pred": int(table.pred_ids.size),
        "n_matched": count_matches(table),
    }
