"""Nuclei larger than a tile's margin: re-segmented whole on a larger window.

A tile reports an instance as a :class:`~wsi_s2lcm.tile_task.Fragment` when the instance is cut
by one of its open edges yet reaches into its core: it is larger than the margin, so no tile saw
it whole. After the main pass, fragments of the same object (from neighbouring tiles) are grouped,
each group is segmented again on a window grown until the object no longer touches the window's
open edges, and the whole object is kept only if the tile owning its centroid is one of those that
reported it. An object kept whole by its owner tile is therefore never written twice.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from wsi_s2lcm.config import TilingConfig
from wsi_s2lcm.polygons import Nucleus, nuclei_from_labels
from wsi_s2lcm.tile_task import (
    Fragment, TileJob, outside_to_background, predict_windows, segment_window,
)
from wsi_s2lcm.tiling import owner_of

logger = logging.getLogger(__name__)

_MULTIPLE = 32


@dataclasses.dataclass
class WholeObject:
    """A large nucleus segmented whole.

    Attributes
    ----------
    nucleus : Nucleus
        Its polygon and measurements.
    origin_xy : tuple of int
        Model-frame position of ``mask[0, 0]``.
    mask : np.ndarray
        Its pixels, cropped to its bounding box.
    truncated : bool
        Still cut by the largest window allowed (reported in the run summary).
    """

    nucleus: Nucleus
    origin_xy: tuple[int, int]
    mask: np.ndarray
    truncated: bool


def group_fragments(fragments: Sequence[Fragment]) -> list[list[Fragment]]:
    """Group fragments whose pixels overlap (views of one object from several tiles)."""
    parent = list(range(len(fragments)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    boxes = np.array([f.box for f in fragments], dtype=np.int64).reshape(-1, 4)
    for i, a in enumerate(fragments):
        x0, y0, x1, y1 = boxes[i]
        rest = boxes[i + 1 :]
        near = (rest[:, 0] < x1) & (rest[:, 2] > x0) & (rest[:, 1] < y1) & (rest[:, 3] > y0)
        for j in np.flatnonzero(near) + i + 1:
            if _overlap(a, fragments[j]):
                parent[find(i)] = find(int(j))
    groups: dict[int, list[Fragment]] = {}
    for i, fragment in enumerate(fragments):
        groups.setdefault(find(i), []).append(fragment)
    return list(groups.values())


def _overlap(a: Fragment, b: Fragment) -> bool:
    ax0, ay0, ax1, ay1 = a.box
    bx0, by0, bx1, by1 = b.box
    x0, y0, x1, y1 = max(ax0, bx0), max(ay0, by0), min(ax1, bx1), min(ay1, by1)
    if x0 >= x1 or y0 >= y1:
        return False
    part_a = a.mask[y0 - ay0 : y1 - ay0, x0 - ax0 : x1 - ax0]
    part_b = b.mask[y0 - by0 : y1 - by0, x0 - bx0 : x1 - bx0]
    return bool((part_a & part_b).any())


def resolve_group(
    group: Sequence[Fragment],
    slide: Any,
    predictor: Any,
    job: TileJob,
    tiling: TilingConfig,
    max_window: int = 4096,
) -> WholeObject | None:
    """Segment one group's object whole and return it if one of the group's tiles owns it.

    Parameters
    ----------
    group
        Fragments of one object.
    slide
        The open slide.
    predictor
        The predictor (run here, in the calling process).
    job
        The run's tile job (sizes, resolutions, post-processing).
    tiling
        The tiling config (margin and ownership grid).
    max_window
        Largest window side tried, in model pixels.

    Returns
    -------
    WholeObject or None
        ``None`` when the object belongs to a tile that kept it itself, or vanished.
    """
    x0 = min(f.box[0] for f in group)
    y0 = min(f.box[1] for f in group)
    x1 = max(f.box[2] for f in group)
    y1 = max(f.box[3] for f in group)
    seed = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    for fragment in group:
        fx0, fy0, fx1, fy1 = fragment.box
        seed[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0] |= fragment.mask
    box = box_of_seed = (x0, y0, x1, y1)
    while True:
        window = _window_around(box, tiling.margin, max_window)
        wx0, wy0, wx1, wy1 = window
        c = job.context
        read_box = (wx0 - c, wy0 - c, wx1 - wx0 + 2 * c, wy1 - wy0 + 2 * c)
        rgbs, probabilities, _ = predict_windows(slide, [read_box], job, predictor)
        rgb = rgbs[0]
        probability = outside_to_background(
            probabilities[0], wx0 - c, wy0 - c, job.width, job.height
        )
        segmented = segment_window(rgb, probability, job.postprocess, job.model_mpp, c)
        labels, rgb, probability = (
            segmented.labels, segmented.rgb, segmented.probability
        )
        under_seed = _labels_under_seed(labels, window, seed, box_of_seed)
        if under_seed.size == 0:
            logger.debug("a large object at %s vanished when re-segmented", box)
            return None
        label = int(np.bincount(under_seed).argmax())
        found = ndimage.find_objects((labels == label).astype(np.int32))[0]
        obj_box = (
            wx0 + found[1].start,
            wy0 + found[0].start,
            wx0 + found[1].stop,
            wy0 + found[0].stop,
        )
        cut = _touches_open_window_edge(obj_box, window, job.width, job.height)
        at_limit = (wx1 - wx0) >= max_window and (wy1 - wy0) >= max_window
        if not cut or at_limit or _window_around(obj_box, tiling.margin, max_window) == window:
            break
        box = obj_box
    mask = labels[found] == label
    rows, cols = np.nonzero(mask)
    centroid_x = obj_box[0] + cols.mean() + 0.5
    centroid_y = obj_box[1] + rows.mean() + 0.5
    owner = owner_of(centroid_x, centroid_y, tiling)
    if owner not in {fragment.tile for fragment in group}:
        return None
    scale = job.scale
    nucleus = nuclei_from_labels(
        labels,
        [label],
        rgb,
        probability,
        scale=scale,
        offset_xy=(wx0 * scale, wy0 * scale),
        level0_mpp=job.level0_mpp,
    )
    if not nucleus:
        return None
    if cut:
        logger.warning(
            "a nucleus-like object at model px %s is larger than %d px and was cut",
            obj_box,
            max_window,
        )
    return WholeObject(nucleus[0], (obj_box[0], obj_box[1]), mask, truncated=bool(cut))


def _labels_under_seed(
    labels: np.ndarray,
    window: tuple[int, int, int, int],
    seed: np.ndarray,
    seed_box: tuple[int, int, int, int],
) -> np.ndarray:
    """The nonzero labels of the window under the seed's pixels that lie inside the window.

    A window is capped at ``max_window`` and centred on the object, so it may hold only part of
    the seed (an object larger than the window).
    """
    wx0, wy0, wx1, wy1 = window
    sx0, sy0, sx1, sy1 = seed_box
    x0, y0, x1, y1 = max(wx0, sx0), max(wy0, sy0), min(wx1, sx1), min(wy1, sy1)
    if x0 >= x1 or y0 >= y1:
        return np.zeros(0, dtype=labels.dtype)
    under = labels[y0 - wy0 : y1 - wy0, x0 - wx0 : x1 - wx0][
        seed[y0 - sy0 : y1 - sy0, x0 - sx0 : x1 - sx0]
    ]
    return under[under > 0]


def _window_around(
    box: tuple[int, int, int, int], margin: int, max_window: int
) -> tuple[int, int, int, int]:
    """A window holding ``box`` plus ``margin`` on each side, sides a multiple of 32."""
    x0, y0, x1, y1 = box
    width = min(max_window, -(-(x1 - x0 + 2 * margin) // _MULTIPLE) * _MULTIPLE)
    height = min(max_window, -(-(y1 - y0 + 2 * margin) // _MULTIPLE) * _MULTIPLE)
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    return (cx - width // 2, cy - height // 2, cx - width // 2 + width, cy - height // 2 + height)


def _touches_open_window_edge(
    obj_box: tuple[int, int, int, int],
    window: tuple[int, int, int, int],
    width: int,
    height: int,
) -> bool:
    ox0, oy0, ox1, oy1 = obj_box
    wx0, wy0, wx1, wy1 = window
    return (
        (ox0 <= wx0 and wx0 > 0)
        or (oy0 <= wy0 and wy0 > 0)
        or (ox1 >= wx1 and wx1 < width)
        or (oy1 >= wy1 and wy1 < height)
    )
