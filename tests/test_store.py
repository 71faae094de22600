"""Tests of wsi_s2lcm.store: the label zarr, its attributes and its partial/finalize life cycle."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import zarr

from wsi_s2lcm.config import PostprocessConfig
from wsi_s2lcm.errors import OutputExistsError
from wsi_s2lcm.store import LabelStore

ATTRS = {
    "mpp": np.float64(0.5),
    "scale": 2.0,
    "offset_xy": (0.0, 0.0),
    "model": {"name": "test", "mpp": 0.5},
    "config": PostprocessConfig(),
    "slide": Path("/data/slide.svs"),
}


def _store(tmp_path: Path, **kwargs) -> LabelStore:
    return LabelStore.create(tmp_path / "slide.labels.zarr", (100, 130), 32, ATTRS, **kwargs)


def test_round_trip_and_attributes(tmp_path):
    store = _store(tmp_path)
    assert store.partial_path.is_dir() and not store.path.exists()
    block = np.arange(1, 33 * 40 + 1, dtype=np.int64).reshape(33, 40)
    store.write(32, 64, block)
    assert np.array_equal(store.read(32, 64, 33, 40), block)
    assert store.finalize() == tmp_path / "slide.labels.zarr"
    assert not store.partial_path.exists()

    opened = LabelStore.open(tmp_path / "slide.labels.zarr")
    assert opened.shape == (100, 130) and opened.chunk == 32
    assert opened.array.dtype == np.uint32
    assert np.array_equal(opened.read(32, 64, 33, 40), block)
    assert opened.read(0, 0, 32, 130).max() == 0
    attrs = opened.attrs
    assert attrs["mpp"] == 0.5 and attrs["offset_xy"] == [0.0, 0.0]
    assert attrs["config"] == dataclasses.asdict(PostprocessConfig())
    assert attrs["slide"] == "/data/slide.svs"
    assert attrs["wsi_s2lcm"]["kind"] == "nucleus-labels"
    # readers other than ours: zarr format 2 metadata, zarr and dask
    meta = json.loads((store.path / ".zarray").read_text())
    assert meta["zarr_format"] == 2 and meta["chunks"] == [32, 32] and meta["dtype"] == "<u4"
    assert int(zarr.open_array(str(store.path), mode="r")[40, 70]) == block[8, 6]
    assert int(da.from_zarr(str(store.path)).max().compute()) == block.max()


def test_blocks_are_clipped_at_the_slide_edge(tmp_path):
    store = _store(tmp_path)
    store.write(96, 128, np.full((32, 32), 5))
    assert store.read(96, 128, 32, 32).shape == (4, 2)
    assert (store.read(96, 128, 4, 2) == 5).all()
    store.write(200, 0, np.ones((4, 4)))  # wholly outside: nothing
    with pytest.raises(ValueError, match="negative"):
        store.write(-1, 0, np.ones((2, 2)))
    with pytest.raises(ValueError, match="uint32"):
        store.write(0, 0, -np.ones((2, 2), dtype=np.int64))
    store.abort()


def test_write_where_empty_never_overwrites(tmp_path):
    store = _store(tmp_path)
    store.write(0, 0, np.pad(np.full((4, 4), 7), ((0, 4), (0, 4))))
    late = np.zeros((8, 8), np.uint32)
    late[2:7, 2:7] = 9
    assert store.write_where_empty(0, 0, late) == 25 - 4
    result = store.read(0, 0, 8, 8)
    assert (result[:4, :4] == 7).all()
    assert result[5, 5] == 9 and result[0, 6] == 0
    store.abort()


def test_abort_and_context_manager(tmp_path):
    store = _store(tmp_path)
    store.abort()
    assert not store.partial_path.exists() and not store.path.exists()
    with pytest.raises(RuntimeError):
        with _store(tmp_path) as store:
            store.write(0, 0, np.ones((2, 2)))
            raise RuntimeError("worker died")
    assert not store.partial_path.exists() and not store.path.exists()
    with _store(tmp_path) as store:
        store.write(0, 0, np.ones((2, 2)))
    assert LabelStore.open(store.path).read(0, 0, 1, 1)[0, 0] == 1


def test_existing_store_needs_overwrite(tmp_path):
    with _store(tmp_path) as store:
        store.write(0, 0, np.full((2, 2), 3))
    with pytest.raises(OutputExistsError, match="overwrite"):
        _store(tmp_path)
    with _store(tmp_path, overwrite=True) as again:
        # the old store stays readable until the new one is finalized
        assert LabelStore.open(store.path).read(0, 0, 1, 1)[0, 0] == 3
        again.write(0, 0, np.full((2, 2), 4))
    assert LabelStore.open(store.path).read(0, 0, 1, 1)[0, 0] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slide.labels.zarr"]


def test_a_stale_partial_is_replaced_and_bad_attrs_are_refused(tmp_path):
    stale = tmp_path / "slide.labels.zarr.partial"
    stale.mkdir()
    (stale / "junk").write_text("x")
    store = _store(tmp_path)
    assert not (stale / "junk").exists()
    store.abort()
    with pytest.raises(TypeError, match="JSON"):
        LabelStore.create(tmp_path / "x.zarr", (10, 10), 8, {"bad": object()})


def test_open_refuses_what_is_not_a_label_store(tmp_path):
    with pytest.raises(FileNotFoundError):
        LabelStore.open(tmp_path / "missing.zarr")
    zarr.create_array(store=str(tmp_path / "other.zarr"), shape=(4,), dtype="uint8", zarr_format=2)
    with pytest.raises(ValueError, match="not a wsi-s2lcm label store"):
        LabelStore.open(tmp_path / "other.zarr")
