"""What one worker does with a batch of tiles: read, predict, find instances, keep its own.

:func:`process_tiles` is the task the dispatcher runs. It is a pure function of its inputs (the
slide file, the model and the configs), so tiles can run in any order on any worker. The
ownership decision for one tile's instances is :func:`own_instances`, kept separate so that it can
be tested on hand-made label images.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from wsi_s2lcm.config import PostprocessConfig
from wsi_s2lcm.false_objects import FALSE_OBJECT_CHECKS, separate_false_objects
from wsi_s2lcm.postprocess import instances_from_probability, label_table
from wsi_s2lcm.polygons import Nucleus, nuclei_from_labels
from wsi_s2lcm.predictor import PredictorSpec, build_predictor
from wsi_s2lcm.tiling import Tile, touches_open_edge


@dataclasses.dataclass(frozen=True)
class TileJob:
    """Everything a worker needs besides the tiles; small and picklable.

    Attributes
    ----------
    slide_path : str
        The slide file.
    slide_mpp : float or None
        The ``--mpp`` override, if any.
    model_mpp : float
        Resolution the tiles are read at.
    level0_mpp : float
        The slide's level-0 µm/px (after any override).
    width, height : int
        Slide size in model-frame pixels.
    predictor : PredictorSpec
        Recipe for the predictor, built once per worker.
    postprocess : PostprocessConfig
        Probability to instances.
    context : int
        Extra pixels read around each tile for the network (and the stain check's rings).
    zoom : float
        The reading zoom (:mod:`wsi_s2lcm.zoom`): the network sees each window read this many
        times larger, and its probability is averaged back to the model's resolution.
    """

    slide_path: str
    slide_mpp: float | None
    model_mpp: float
    level0_mpp: float
    width: int
    height: int
    predictor: PredictorSpec
    postprocess: PostprocessConfig
    context: int = 0
    zoom: float = 1.0

    @property
    def scale(self) -> float:
        """Level-0 pixels per model pixel."""
        return self.model_mpp / self.level0_mpp


@dataclasses.dataclass
class Fragment:
    """An instance cut by a tile's open edge that reaches into the tile's core.

    It is larger than the tile margin, so the tile cannot see it whole; the segment use case
    re-segments it on a larger window after the main pass.

    Attributes
    ----------
    tile : tuple of int
        ``(row, col)`` of the tile that found it.
    origin_xy : tuple of int
        Model-frame position of ``mask[0, 0]``.
    mask : np.ndarray
        Boolean mask of the visible part, cropped to its bounding box.
    """

    tile: tuple[int, int]
    origin_xy: tuple[int, int]
    mask: np.ndarray

    @property
    def box(self) -> tuple[int, int, int, int]:
        """Model-frame ``(x0, y0, x1, y1)`` of the visible part."""
        x0, y0 = self.origin_xy
        return (x0, y0, x0 + self.mask.shape[1], y0 + self.mask.shape[0])


@dataclasses.dataclass
class TileResult:
    """The nuclei one tile owns, and what it could not decide alone.

    Attributes
    ----------
    tile : Tile
        The tile.
    nuclei : list of Nucleus
        Owned nuclei, polygons in level-0 pixels.
    labels : np.ndarray
        Tile-sized uint32 image where nucleus ``nuclei[i]`` has value ``i + 1``, 0 elsewhere.
    fragments : list of Fragment
        Instances too large for the tile margin.
    seconds : dict
        Time spent reading, predicting and post-processing (the batch's share).
    dropped : list of DroppedObject
        Objects the tile would own but the false-object checks removed (:func:`dropped_objects`).
    """

    tile: Tile
    nuclei: list[Nucleus]
    labels: np.ndarray
    fragments: list[Fragment]
    seconds: dict[str, float]
    dropped: list[DroppedObject]


@dataclasses.dataclass(frozen=True)
class DroppedObject:
    """An object a false-object check removed: the first check it failed, and where it was.

    Attributes
    ----------
    check : str
        A name of :data:`~wsi_s2lcm.false_objects.FALSE_OBJECT_CHECKS`.
    centroid_xy_level0 : tuple[float, float]
        Centroid of its pixel centres in level-0 pixels, as for a nucleus.
    """

    check: str
    centroid_xy_level0: tuple[float, float]


@dataclasses.dataclass
class WindowInstances:
    """The instances of one window and the objects removed from them.

    Attributes
    ----------
    labels : np.ndarray
        ``(H, W)`` instance labels of the objects kept.
    rgb, probability : np.ndarray
        The window's RGB and nucleus probability, cropped to ``labels``.
    removed : np.ndarray
        ``(H, W)`` labels of the objects the false-object checks removed, 0 elsewhere.
    failed : dict
        For each check that removed some, which values of ``removed`` failed it
        (:func:`wsi_s2lcm.false_objects.false_object_checks`).
    """

    labels: np.ndarray
    rgb: np.ndarray
    probability: np.ndarray
    removed: np.ndarray
    failed: dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Ownership:
    """The decision for one tile's instances.

    Attributes
    ----------
    kept : list of int
        Labels of the nuclei the tile owns, seen whole.
    fragments : list of int
        Labels cut by an open edge that reach into the core.
    """

    kept: list[int]
    fragments: list[int]


def own_instances(labels: np.ndarray, tile: Tile, width: int, height: int) -> Ownership:
    """Decide which instances of a tile's label image the tile owns.

    An instance touching no open edge is kept when its pixel centroid lies in the tile's core.
    One touching an open edge is kept by nobody here: if any of its pixels lie in the core it is
    returned as a fragment (it is larger than the margin), otherwise a neighbour sees it whole.

    Parameters
    ----------
    labels
        ``(size, size)`` instance labels of the tile's box.
    tile
        The tile.
    width, height
        Model-frame size of the slide.

    Returns
    -------
    Ownership
    """
    kept: list[int] = []
    fragments: list[int] = []
    table = label_table(labels)
    if not table:
        return Ownership(kept, fragments)
    cx0, cy0, cx1, cy1 = (
        tile.core[0] - tile.x,
        tile.core[1] - tile.y,
        tile.core[2] - tile.x,
        tile.core[3] - tile.y,
    )
    in_core = set(np.unique(labels[cy0:cy1, cx0:cx1]).tolist())
    for info in table:
        if touches_open_edge(info.bbox, tile, width, height):
            if info.label in in_core:
                fragments.append(info.label)
            continue
        # The centroid of pixel centres, (sum + area/2) / area, lies in [c0, c1) exactly when
        # 2*sum + area lies in [2*c0*area, 2*c1*area): integer arithmetic, no rounding.
        sum_y, sum_x = info.sum_yx
        twice_y, twice_x = 2 * sum_y + info.area, 2 * sum_x + info.area
        if (2 * cx0 * info.area <= twice_x < 2 * cx1 * info.area
                and 2 * cy0 * info.area <= twice_y < 2 * cy1 * info.area):
            kept.append(info.label)
    return Ownership(kept, fragments)


def outside_to_background(
    probability: np.ndarray, x: int, y: int, width: int, height: int
) -> np.ndarray:
    """Zero the probability of pixels outside the slide (where the reader mirrors the slide).

    Parameters
    ----------
    probability
        ``(h, w)`` probabilities of the box whose model-frame origin is ``(x, y)``.
    x, y
        Model-frame origin of the box.
    width, height
        Model-frame size of the slide.

    Returns
    -------
    np.ndarray
        ``probability`` itself when the box lies inside the slide, else a masked copy.
    """
    rows, cols = probability.shape
    left, top = max(0, -x), max(0, -y)
    right, bottom = min(cols, width - x), min(rows, height - y)
    if left == 0 and top == 0 and right == cols and bottom == rows:
        return probability
    inside = np.zeros_like(probability)
    if left < right and top < bottom:
        inside[top:bottom, left:right] = probability[top:bottom, left:right]
    return inside


def tile_result(
    tile: Tile,
    rgb: np.ndarray,
    probability: np.ndarray,
    job: TileJob,
    seconds: dict[str, float] | None = None,
) -> TileResult:
    """Instances, ownership and polygons for one tile whose probabilities are known.

    ``rgb`` and ``probability`` cover the tile grown by ``job.context`` on each side.
    """
    started = time.perf_counter()
    c = job.context
    probability = outside_to_background(
        probability, tile.x - c, tile.y - c, job.width, job.height
    )
    window = segment_window(rgb, probability, job.postprocess, job.model_mpp, c)
    labels, rgb, probability = window.labels, window.rgb, window.probability
    ownership = own_instances(labels, tile, job.width, job.height)
    scale = job.scale
    nuclei = nuclei_from_labels(
        labels,
        ownership.kept,
        rgb,
        probability,
        scale=scale,
        offset_xy=(tile.x * scale, tile.y * scale),
        level0_mpp=job.level0_mpp,
    )
    lookup = np.zeros(int(labels.max()) + 1, dtype=np.uint32)
    lookup[ownership.kept] = np.arange(1, len(ownership.kept) + 1, dtype=np.uint32)
    kept_labels = lookup[labels]
    fragments = []
    for label in ownership.fragments:
        found = ndimage.find_objects((labels == label).astype(np.int32))[0]
        fragments.append(
            Fragment(
                tile=(tile.row, tile.col),
                origin_xy=(tile.x + found[1].start, tile.y + found[0].start),
                mask=labels[found] == label,
            )
        )
    spent = dict(seconds or {})
    spent["postprocess"] = spent.get("postprocess", 0.0) + time.perf_counter() - started
    dropped = dropped_objects(window, tile, job)
    return TileResult(tile, nuclei, kept_labels, fragments, spent, dropped)


def dropped_objects(window: WindowInstances, tile: Tile, job: TileJob) -> list[DroppedObject]:
    """The removed objects the tile would own, each with the first check it failed.

    Ownership is decided as for nuclei (:func:`own_instances`), so over a whole run every removed
    object is reported once, except those larger than the tile margin, which are not reported.
    """
    if not window.failed:
        return []
    owned = set(own_instances(window.removed, tile, job.width, job.height).kept)
    dropped = []
    for info in label_table(window.removed):
        if info.label not in owned:
            continue
        check = next(
            name for name in FALSE_OBJECT_CHECKS
            if name in window.failed and window.failed[name][info.label]
        )
        centroid_y, centroid_x = info.centroid_yx
        dropped.append(DroppedObject(check, (
            (tile.x + centroid_x + 0.5) * job.scale,
            (tile.y + centroid_y + 0.5) * job.scale,
        )))
    return dropped


def segment_window(
    rgb: np.ndarray,
    probability: np.ndarray,
    config: PostprocessConfig,
    mpp: float,
    border: int,
) -> WindowInstances:
    """Instances of a window read with ``border`` extra pixels of context on each side.

    Parameters
    ----------
    rgb, probability
        ``(H + 2 * border, W + 2 * border, 3)`` RGB and matching nucleus probability.
    config
        Post-processing values.
    mpp
        µm per pixel.
    border
        Context pixels on each side; only the stain check
        (:func:`~wsi_s2lcm.false_objects.false_object_checks`) looks at them.

    Returns
    -------
    WindowInstances
        Instance labels, RGB and probability cropped to the window, and what was removed.
    """
    inner = (slice(border, rgb.shape[0] - border), slice(border, rgb.shape[1] - border))
    instances = instances_from_probability(probability[inner], config, mpp)
    labels, removed, failed = separate_false_objects(
        instances, rgb, probability, config, mpp, border
    )
    return WindowInstances(labels, rgb[inner], probability[inner], removed, failed)


def process_tiles(tiles: Sequence[Tile], job: TileJob) -> list[TileResult]:
    """Read, predict and post-process a batch of tiles (the task a worker runs).

    Parameters
    ----------
    tiles
        Tiles of one batch, all of the same size.
    job
        The slide, model and configs.

    Returns
    -------
    list of TileResult
        One per tile, in the same order.
    """
    status = os.stat(job.slide_path)
    slide = _open_slide_cached(job.slide_path, job.slide_mpp, status.st_mtime_ns, status.st_size)
    c = job.context
    boxes = [(t.x - c, t.y - c, t.size + 2 * c, t.size + 2 * c) for t in tiles]
    batch, probabilities, spent = predict_windows(slide, boxes, job, build_predictor(job.predictor))
    share = 1.0 / len(tiles)
    seconds = {key: value * share for key, value in spent.items()}
    return [
        tile_result(tile, rgb, probability, job, seconds)
        for tile, rgb, probability in zip(tiles, batch, probabilities)
    ]


def predict_windows(
    slide: Any, boxes: Sequence[tuple[int, int, int, int]], job: TileJob, predictor: Any
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Read equal-sized model-frame windows and predict their nucleus probability.

    Parameters
    ----------
    slide
        The open slide.
    boxes
        ``(x, y, width, height)`` of each window in model-frame pixels, all of one size.
    job
        The run's tile job (resolution and reading zoom).
    predictor
        The predictor.

    Returns
    -------
    rgb : np.ndarray
        ``(N, height, width, 3)`` uint8, the windows at the model's resolution.
    probability : np.ndarray
        ``(N, height, width)`` float32. With a reading zoom each window is read again, larger,
        on the enlarged frame's 32-px grid (:func:`wsi_s2lcm.zoom.enlarged_span`), run through
        the network in groups holding no more pixels than the windows as read, and averaged
        back (:func:`wsi_s2lcm.zoom.shrink_window`).
    seconds : dict
        Time spent reading the windows (``read``) and predicting (``predict``; with a reading
        zoom this includes reading the enlarged windows).
    """
    started = time.perf_counter()
    rgb = np.stack([slide.read(x, y, w, h, job.model_mpp) for x, y, w, h in boxes])
    read_done = time.perf_counter()
    if job.zoom == 1:
        probability = predictor(rgb)
    else:
        group = max(1, int(len(boxes) / job.zoom ** 2))
        probability = np.concatenate([
            _predict_enlarged(slide, boxes[first:first + group], job, predictor)
            for first in range(0, len(boxes), group)
        ])
    return rgb, probability, {"read": read_done - started,
                              "predict": time.perf_counter() - read_done}


def _predict_enlarged(
    slide: Any, boxes: Sequence[tuple[int, int, int, int]], job: TileJob, predictor: Any
) -> np.ndarray:
    """The probabilities of model-frame windows, each read ``job.zoom`` times larger on the
    enlarged frame's 32-px grid, predicted in one batch and averaged back."""
    from wsi_s2lcm.zoom import enlarged_span, shrink_window

    spans, enlarged = [], []
    for x, y, width, height in boxes:
        (first_x, size_x), (first_y, size_y) = (enlarged_span(x, width, job.zoom),
                                                enlarged_span(y, height, job.zoom))
        spans.append((first_x, first_y))
        enlarged.append(slide.read(first_x, first_y, size_x, size_y, job.model_mpp / job.zoom))
    rows, columns = np.max([image.shape[:2] for image in enlarged], axis=0)
    batch = np.stack([
        np.pad(image, ((0, rows - image.shape[0]), (0, columns - image.shape[1]), (0, 0)),
               mode="symmetric")
        for image in enlarged
    ])
    found = predictor(batch)
    return np.stack([
        shrink_window(found[index, :image.shape[0], :image.shape[1]], x, y, width, height,
                      job.zoom, first_x, first_y)
        for index, ((x, y, width, height), (first_x, first_y), image)
        in enumerate(zip(boxes, spans, enlarged))
    ]).astype(np.float32)


@functools.lru_cache(maxsize=2)
def _open_slide_cached(path: str, mpp: float | None, mtime_ns: int, size: int) -> Any:
    """Open a slide once per worker process (readers are thread-safe for reading).

    The file's modification time and size are part of the key, so a file replaced at the same
    path is opened again; a run ends with :func:`forget_open_slides`.
    """
    from wsi_s2lcm.slide import open_slide

    return open_slide(path, mpp=mpp)


def forget_open_slides() -> None:
    """Drop the slides this process holds open for tile tasks (an image file's pixels too)."""
    _open_slide_cached.cache_clear()
