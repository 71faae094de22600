"""Re-segmenting nuclei larger than a tile's margin (wsi_s2lcm.fragments) on a drawn slide."""

from __future__ import annotations

import numpy as np

from wsi_s2lcm.config import PostprocessConfig, TilingConfig
from wsi_s2lcm.fragments import group_fragments, resolve_group
from wsi_s2lcm.tile_task import Fragment, TileJob
from wsi_s2lcm.tiling import owner_of

SIZE = 2000
PURPLE = (60, 30, 110)


class BarSlide:
    """A white slide, read in the model frame, with one hematoxylin-purple bar."""

    def __init__(self, bar: tuple[int, int, int, int]) -> None:
        self.bar = bar

    def read(self, x: int, y: int, w: int, h: int, mpp: float) -> np.ndarray:
        rgb = np.full((h, w, 3), 240, dtype=np.uint8)
        bx0, by0, bx1, by1 = self.bar
        rows = slice(min(max(by0 - y, 0), h), min(max(by1 - y, 0), h))
        cols = slice(min(max(bx0 - x, 0), w), min(max(bx1 - x, 0), w))
        rgb[rows, cols] = PURPLE
        return rgb


def dark_is_nucleus(batch: np.ndarray) -> np.ndarray:
    return (batch[..., 0] < 128).astype(np.float32)


def _job() -> TileJob:
    return TileJob(slide_path="drawn", slide_mpp=0.25, model_mpp=0.25, level0_mpp=0.25,
                   width=SIZE, height=SIZE, predictor=None,
                   postprocess=PostprocessConfig(separate=False), context=16)


def _group(bar, tiling):
    x0, y0, x1, y1 = bar
    owner = owner_of((x0 + x1) / 2, (y0 + y1) / 2, tiling)
    return [Fragment(owner, (x0, y0), np.ones((y1 - y0, x1 - x0), dtype=bool))]


def test_an_object_within_the_largest_window_comes_out_whole():
    tiling = TilingConfig(tile_size=256, overlap=32, context=16)
    bar = (300, 500, 500, 540)
    whole = resolve_group(_group(bar, tiling), BarSlide(bar), dark_is_nucleus, _job(), tiling,
                          max_window=512)
    assert whole is not None and not whole.truncated
    assert whole.origin_xy == (300, 500) and whole.mask.shape == (40, 200) and whole.mask.all()


def test_an_object_larger_than_the_largest_window_is_kept_cut_not_a_crash():
    tiling = TilingConfig(tile_size=256, overlap=32, context=16)
    bar = (100, 500, 700, 540)
    whole = resolve_group(_group(bar, tiling), BarSlide(bar), dark_is_nucleus, _job(), tiling,
                          max_window=256)
    assert whole is not None and whole.truncated
    assert whole.mask.shape[1] <= 256 and whole.mask.shape[0] == 40


def test_fragments_are_grouped_exactly_when_their_pixels_overlap():
    rng = np.random.default_rng(3)
    fragments = []
    for _ in range(300):
        x, y = (int(v) for v in rng.integers(0, 400, 2))
        w, h = (int(v) for v in rng.integers(3, 30, 2))
        fragments.append(Fragment((0, 0), (x, y), rng.random((h, w)) < 0.3))

    def touching(a, b):
        canvas = np.zeros((500, 500), np.uint8)
        for fragment in (a, b):
            x0, y0, x1, y1 = fragment.box
            canvas[y0:y1, x0:x1] += fragment.mask
        return bool((canvas > 1).any())

    groups = group_fragments(fragments)
    group_of = {id(f): g for g, members in enumerate(groups) for f in members}
    assert sorted(len(g) for g in groups) != [1] * len(fragments), "some should overlap"
    for i, a in enumerate(fragments):
        for b in fragments[i + 1:]:
            if touching(a, b):
                assert group_of[id(a)] == group_of[id(b)]
    for members in groups:  # every group is connected through overlapping pairs
        reached, frontier = {id(members[0])}, [members[0]]
        while frontier:
            current = frontier.pop()
            for other in members:
                if id(other) not in reached and touching(current, other):
                    reached.add(id(other))
                    frontier.append(other)
        assert reached == {id(m) for m in members}
