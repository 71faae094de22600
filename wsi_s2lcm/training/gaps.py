"""The pixels between two nucleus scribbles, where a gap between their nuclei must lie.

Each nucleus scribble marks one nucleus, so two different nucleus scribbles lie in two different
nuclei, and the straight segment joining their nearest points leaves the first nucleus before it
enters the second: at least one of its pixels is background, or the border where the two nuclei
touch. Which pixel is not known, which makes the segment a multiple-instance bag with at least
one negative instance (:func:`wsi_s2lcm.training.losses.gap_loss`). Unlike labelling a line
between the scribbles as background, this never says where the gap is, so it does not shrink
the nuclei; it asks the network for a low-probability neck somewhere between them, which is
what separates touching nuclei after thresholding and the watershed.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree


def gap_paths(ids: np.ndarray, max_distance: float) -> tuple[np.ndarray, np.ndarray]:
    """The pixels between each pair of nearby nucleus scribbles of one crop.

    Parameters
    ----------
    ids
        ``(H, W)`` int nucleus-scribble ids (one id per nucleus), 0 elsewhere.
    max_distance
        Pairs whose nearest pixels lie farther apart than this (pixels) are left out: their
        nuclei rarely touch.

    Returns
    -------
    pixels, pair
        ``(P, 2)`` int64 (row, column) of the pixels on the segments, the scribbles' own pixels
        left out, and ``(P,)`` int64 the number ``0..K-1`` of the pair each pixel belongs to.
        Pairs whose segment holds no pixel off the two scribbles are left out.
    """
    rows, cols = np.nonzero(ids)
    empty = np.zeros((0, 2), np.int64), np.zeros(0, np.int64)
    if len(rows) < 2:
        return empty
    points = np.stack([rows, cols], axis=1).astype(np.float64)
    owner = ids[rows, cols].astype(np.int64)
    close = cKDTree(points).query_pairs(max_distance, output_type="ndarray")
    if not len(close):
        return empty
    close = close[owner[close[:, 0]] != owner[close[:, 1]]]
    if not len(close):
        return empty
    swap = owner[close[:, 0]] > owner[close[:, 1]]
    close[swap] = close[swap][:, ::-1]
    first, second = close[:, 0], close[:, 1]
    distance = np.linalg.norm(points[first] - points[second], axis=1)
    key = owner[first] * (int(owner.max()) + 1) + owner[second]
    order = np.lexsort((distance, key))
    _, nearest = np.unique(key[order], return_index=True)
    first, second = first[order[nearest]], second[order[nearest]]
    steps = int(np.ceil(max_distance)) + 1
    fraction = np.linspace(0.0, 1.0, steps)
    along = points[first, None, :] + fraction[None, :, None] * (
        points[second] - points[first]
    )[:, None, :]
    pixels = np.rint(along).astype(np.int64)
    pair = np.repeat(np.arange(len(first)), steps)
    pixels = pixels.reshape(-1, 2)
    on_path = ids[pixels[:, 0], pixels[:, 1]]
    keep = (on_path != owner[first][pair]) & (on_path != owner[second][pair])
    pixels, pair = pixels[keep], pair[keep]
    unique = np.unique(np.column_stack([pair, pixels]), axis=0)
    _, pair = np.unique(unique[:, 0], return_inverse=True)
    return unique[:, 1:], pair.astype(np.int64)
