"""Metrics on hand-made label arrays with hand-computed values, and on real MoNuSeg labels."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from wsi_s2lcm.metrics import (
    METRIC_NAMES,
    aji,
    compute_overlaps,
    evaluate_pair,
    foreground_iou,
    object_dice_s2l,
    panoptic_quality,
    pixel_dice,
)

DENSEST_MONUSEG = "TCGA-HE-7130-01Z-00-DX1"  # 1,862 nuclei, the most of the 30 tiles


def _canvas() -> np.ndarray:
    return np.zeros((8, 8), dtype=np.int32)


def _two_objects() -> np.ndarray:
    gt = _canvas()
    gt[0:2, 0:2] = 1  # 4 px
    gt[4:6, 4:7] = 2  # 6 px
    return gt


def _expect(result: dict, **expected: float) -> None:
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, abs=1e-12), key


def test_perfect_prediction_scores_one_everywhere_whatever_the_ids() -> None:
    gt = _two_objects()
    pred = np.where(gt == 1, 70, np.where(gt == 2, 3, 0))
    result = evaluate_pair(pred, gt)
    _expect(result, **{name: 1.0 for name in METRIC_NAMES})
    assert (result["n_gt"], result["n_pred"], result["n_matched"]) == (2, 2, 2)


def test_empty_prediction_scores_zero_and_both_empty_scores_one() -> None:
    gt = _two_objects()
    _expect(evaluate_pair(np.zeros_like(gt), gt), **{name: 0.0 for name in METRIC_NAMES})
    _expect(evaluate_pair(gt, np.zeros_like(gt)), **{name: 0.0 for name in METRIC_NAMES})
    _expect(evaluate_pair(np.zeros_like(gt), np.zeros_like(gt)), **{n: 1.0 for n in METRIC_NAMES})


def test_split_object() -> None:
    gt = _canvas()
    gt[0:4, 0:4] = 1  # 16 px
    pred = _canvas()
    pred[0:4, 0:3] = 1  # 12 px, IoU 12/16
    pred[0:4, 3:4] = 2  # 4 px, IoU 4/16
    # AJI: C = 12, U = 16 + the unused 4 px; PQ: one match (IoU 0.75) and one false positive.
    _expect(
        evaluate_pair(pred, gt),
        dice=1.0, iou=1.0, aji=12 / 20, dq=2 / 3, sq=0.75, pq=0.5, object_dice=24 / 28,
        n_gt=1, n_pred=2, n_matched=1,
    )


def test_even_split_is_no_match_at_iou_one_half() -> None:
    gt = _canvas()
    gt[0:4, 0:4] = 1
    pred = _canvas()
    pred[0:4, 0:2] = 4  # IoU exactly 0.5: not a PQ match (IoU > 0.5 is required)
    pred[0:4, 2:4] = 3  # the same IoU: AJI and object Dice take the smaller id, 3
    _expect(
        evaluate_pair(pred, gt),
        aji=8 / 24, pq=0.0, dq=0.0, sq=0.0, object_dice=16 / 24, n_matched=0,
    )


def test_two_merged_objects() -> None:
    gt = _canvas()
    gt[0:3, 0:4] = 1  # 12 px
    gt[3:4, 0:4] = 2  # 4 px
    pred = _canvas()
    pred[0:4, 0:4] = 5  # 16 px serves both
    # AJI: both pick the merged object: C = 12 + 4, U = 16 + 16.
    # Object Dice: 2*12/(12+16) and 2*4/(4+16), averaged.
    _expect(
        evaluate_pair(pred, gt),
        dice=1.0, iou=1.0, aji=0.5, dq=2 / 3, sq=0.75, pq=0.5,
        object_dice=(24 / 28 + 8 / 20) / 2, n_matched=1,
    )


def test_false_positive_lowers_aji_and_pq_but_not_object_dice() -> None:
    gt = _canvas()
    gt[0:2, 0:2] = 1
    pred = gt.copy()
    pred[5:7, 5:7] = 2  # a 4 px false positive
    result = evaluate_pair(pred, gt)
    _expect(
        result, dice=8 / 12, iou=0.5, aji=4 / 8, dq=2 / 3, sq=1.0, pq=2 / 3, object_dice=1.0
    )
    assert object_dice_s2l(pred, gt) == 1.0
    assert aji(pred, gt) < aji(gt, gt)


def test_missed_object_and_shifted_object() -> None:
    gt = _two_objects()
    pred = np.where(gt == 1, 1, 0)
    _expect(
        evaluate_pair(pred, gt),
        dice=8 / 14, iou=4 / 10, aji=4 / 10, dq=2 / 3, sq=1.0, pq=2 / 3, object_dice=0.5,
    )
    gt = _canvas()
    gt[0:4, 0:4] = 1
    shifted = _canvas()
    shifted[0:4, 2:6] = 1  # 8 px shared, union 24
    _expect(
        evaluate_pair(shifted, gt),
        dice=0.5, iou=8 / 24, aji=8 / 24, pq=0.0, dq=0.0, sq=0.0, object_dice=0.5,
    )


def test_object_dice_picks_the_most_frequent_label_not_the_best_iou() -> None:
    gt = _canvas()
    gt[0:2, 0:4] = 1  # 8 px
    pred = _canvas()
    pred[0:2, 0:3] = 1  # 6 px inside the ground truth ...
    pred[2:8, 0:8] = 1  # ... of a 54 px object
    pred[0:2, 3:4] = 2  # 2 px inside, 2 px object: IoU 0.25 beats 6/56
    assert object_dice_s2l(pred, gt) == pytest.approx(2 * 6 / (8 + 54))
    # AJI takes the best IoU instead: C = 2, U = 8 + the unused 54 px object.
    assert aji(pred, gt) == pytest.approx(2 / 62)


def test_single_functions_agree_with_evaluate_pair() -> None:
    gt = _two_objects()
    pred = np.roll(gt, 1, axis=1)
    pred[pred == 2] = 9
    result = evaluate_pair(pred, gt)
    assert pixel_dice(pred, gt) == pytest.approx(result["dice"])
    assert foreground_iou(pred, gt) == pytest.approx(result["iou"])
    assert aji(pred, gt) == pytest.approx(result["aji"])
    assert panoptic_quality(pred, gt) == pytest.approx((result["pq"], result["dq"], result["sq"]))
    assert object_dice_s2l(pred, gt) == pytest.approx(result["object_dice"])


def test_large_sparse_ids_and_boolean_masks() -> None:
    gt = _two_objects()
    pred = gt.copy()
    pred[0, 0] = 0
    small = evaluate_pair(pred, gt)
    huge_gt = gt.astype(np.uint64) * np.uint64(2**40)
    huge_pred = np.where(pred > 0, pred.astype(np.int64) * 1_000_003 + 17, 0)
    assert evaluate_pair(huge_pred, huge_gt) == pytest.approx(small)
    table = compute_overlaps(huge_pred, huge_gt)
    assert table.gt_ids.tolist() == [2**40, 2**41]
    assert table.pred_ids.tolist() == [1_000_020, 2_000_023]
    assert table.gt_areas.tolist() == [4, 6] and table.pred_areas.tolist() == [3, 6]
    assert pixel_dice(pred > 0, gt > 0) == pytest.approx(small["dice"])


def test_invalid_inputs_are_refused() -> None:
    gt = _two_objects()
    with pytest.raises(ValueError, match="shape"):
        evaluate_pair(gt[:4], gt)
    with pytest.raises(ValueError, match="shape"):
        pixel_dice(gt[:4], gt)
    with pytest.raises(ValueError, match="non-negative"):
        evaluate_pair(-gt, gt)
    with pytest.raises(ValueError, match="integer"):
        evaluate_pair(gt.astype(np.float32), gt)


# A straightforward dense-loop reference, independent of the overlap table.


def _dense_reference(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    gt_ids = [i for i in np.unique(gt) if i]
    pred_ids = [j for j in np.unique(pred) if j]
    pred_masks = {j: pred == j for j in pred_ids}
    used: set[int] = set()
    inter_sum = union_sum = 0
    matches, match_ious, object_dices = 0, 0.0, []
    for i in gt_ids:
        g = gt == i
        best_j, best_iou = None, 0.0
        best_count_j, best_count = None, 0
        for j in pred_ids:
            p = pred_masks[j]
            inter = int(np.logical_and(g, p).sum())
            iou = inter / int(np.logical_or(g, p).sum())
            if iou > best_iou:
                best_j, best_iou = j, iou
            if inter > best_count:
                best_count_j, best_count = j, inter
            if iou > 0.5:
                matches += 1
                match_ious += iou
        if best_j is None:
            union_sum += int(g.sum())
        else:
            p = pred_masks[best_j]
            inter_sum += int(np.logical_and(g, p).sum())
            union_sum += int(np.logical_or(g, p).sum())
            used.add(best_j)
        if best_count_j is None:
            object_dices.append(0.0)
        else:
            p = pred_masks[best_count_j]
            object_dices.append(2 * best_count / (int(g.sum()) + int(p.sum())))
    union_sum += sum(int(pred_masks[j].sum()) for j in pred_ids if j not in used)
    dq = matches / (matches + 0.5 * (len(pred_ids) - matches) + 0.5 * (len(gt_ids) - matches))
    sq = match_ious / matches
    return {
        "aji": inter_sum / union_sum,
        "pq": dq * sq,
        "dq": dq,
        "sq": sq,
        "object_dice": float(np.mean(object_dices)),
    }


@pytest.fixture(scope="module")
def monuseg_labels(monuseg_dir) -> np.ndarray:
    return np.asarray(Image.open(monuseg_dir / "instance_labels" / f"{DENSEST_MONUSEG}.png"))


def _perturbed(gt: np.ndarray) -> np.ndarray:
    """Shift by 2 px, merge touching nuclei, and add a false positive: a hard prediction."""
    merged, _ = ndimage.label(np.roll(gt, (2, 1), axis=(0, 1)) > 0, structure=np.ones((3, 3)))
    merged[:6, :6] = merged.max() + 1
    return merged


def test_matches_a_dense_loop_reference_on_a_real_crop(monuseg_labels) -> None:
    gt = monuseg_labels[300:420, 300:420]
    pred = _perturbed(gt)
    expected = _dense_reference(pred, gt)
    result = evaluate_pair(pred, gt)
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, rel=1e-12), key
    assert 0.2 < result["aji"] < 0.95


def test_real_tile_is_fast_and_self_consistent(monuseg_labels) -> None:
    gt = monuseg_labels
    assert gt.max() > 1800
    pred = _perturbed(gt)
    evaluate_pair(pred, gt)
    start = time.perf_counter()
    result = evaluate_pair(pred, gt)
    elapsed = time.perf_counter() - start
    assert elapsed < 0.5, f"evaluate_pair took {elapsed:.2f} s on {gt.max()} nuclei"
    assert evaluate_pair(gt, gt)["aji"] == 1.0
    assert result["aji"] < result["dice"] < 1.0
