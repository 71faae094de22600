"""Tests of wsi_s2lcm.qupath.export: QuPath detection features and the streamed GeoJSON file."""

from __future__ import annotations

import gzip
import json
import math
import sqlite3
import uuid
from pathlib import Path

import geojson
import numpy as np
import pytest
import shapely
from PIL import Image
from shapely.geometry import MultiPolygon, shape
from skimage.measure import label as label_regions
from tiatoolbox.annotation.storage import DictionaryStore

from wsi_s2lcm.polygons import MEASUREMENTS, Nucleus, nuclei_from_labels
from wsi_s2lcm.qupath.export import (
    GeoJSONWriter,
    iter_written_features,
    nucleus_feature,
    polygon_geometry,
    read_features,
)


@pytest.fixture(scope="module")
def real_nuclei(monuseg_dir: Path) -> list[Nucleus]:
    """Outlines and measurements of real MoNuSeg nuclei, at a fractional level-0 transform."""
    name = sorted((monuseg_dir / "instance_labels").glob("*.png"))[1].stem
    truth = np.asarray(Image.open(monuseg_dir / "instance_labels" / f"{name}.png"))[:300, :300]
    rgb = np.asarray(Image.open(monuseg_dir / "images" / f"{name}.tif").convert("RGB"))[:300, :300]
    labels = label_regions(truth, background=0, connectivity=1).astype(np.int32)
    ids = list(range(1, int(labels.max()) + 1))
    probability = np.where(labels > 0, 0.9, 0.1)
    return nuclei_from_labels(labels, ids, rgb, probability, 1.9937, (1234.5, 678.25), 0.2502)


def _ring_nucleus() -> Nucleus:
    labels = np.zeros((9, 9), np.int32)
    labels[1:8, 1:8] = 1
    labels[3:5, 3:6] = 0
    rgb = np.zeros((9, 9, 3), np.uint8)
    return nuclei_from_labels(labels, [1], rgb, np.ones((9, 9)), 1.5, (0.5, 0.25), 0.25)[0]


def _write(path: Path, nuclei: list[Nucleus], compress: bool = False) -> list[dict]:
    features = [nucleus_feature(n) for n in nuclei]
    with GeoJSONWriter(path, compress=compress) as writer:
        writer.write_all(features)
    assert writer.count == len(features)
    return features


def _rounded(values) -> bool:
    array = np.asarray(values, dtype=float)
    return bool(np.allclose(array * 100, np.round(array * 100), rtol=0, atol=1e-6))


def _check_like_qupath(path: Path) -> int:
    """Read a file the way QuPath's GeoJSON import does and check every rule it relies on."""
    raw = path.read_bytes()
    text = (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode("utf-8")
    content = json.loads(text)
    assert content["type"] == "FeatureCollection"
    ids = set()
    for feature in content["features"]:
        assert feature["type"] == "Feature"
        assert uuid.UUID(feature["id"]).version == 4
        ids.add(feature["id"])
        properties = feature["properties"]
        assert properties["objectType"] == "detection"
        classification = properties["classification"]
        assert classification["name"] == "Nucleus"
        assert len(classification["color"]) == 3
        assert all(isinstance(c, int) and 0 <= c <= 255 for c in classification["color"])
        measurements = properties["measurements"]
        assert isinstance(measurements, dict) and measurements
        assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in measurements.values())
        geometry = feature["geometry"]
        polygons = (
            [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
        )
        if geometry["type"] == "MultiPolygon":
            assert len(polygons) > 1  # a single part must be written as a Polygon
        for rings in polygons:
            for ring in rings:
                assert len(ring) >= 4 and ring[0] == ring[-1]
                assert _rounded(ring)
        assert shape(geometry).is_valid
    assert len(ids) == len(content["features"])
    return len(ids)


def test_feature_has_the_qupath_fields(real_nuclei):
    feature = nucleus_feature(real_nuclei[0], color=(1, 2, 3))
    assert feature["type"] == "Feature"
    assert str(uuid.UUID(feature["id"])) == feature["id"]
    assert feature["properties"]["objectType"] == "detection"
    assert feature["properties"]["classification"] == {"name": "Nucleus", "color": [1, 2, 3]}
    assert list(feature["properties"]["measurements"]) == list(MEASUREMENTS)
    assert feature["geometry"]["type"] == "Polygon"
    assert shape(feature["geometry"]).equals(real_nuclei[0].polygon)
    assert nucleus_feature(real_nuclei[0], feature_id="abc")["id"] == "abc"
    assert nucleus_feature(real_nuclei[0])["id"] != nucleus_feature(real_nuclei[0])["id"]


def test_single_part_multipolygon_is_written_as_polygon_and_rings_are_closed():
    square = shapely.box(0.123, 0.456, 10.789, 10.0)
    geometry = polygon_geometry(MultiPolygon([square]))
    assert geometry["type"] == "Polygon"
    ring = geometry["coordinates"][0]
    assert ring[0] == ring[-1] and _rounded(ring)
    two = polygon_geometry(MultiPolygon([square, shapely.box(20, 20, 21, 21)]))
    assert two["type"] == "MultiPolygon" and len(two["coordinates"]) == 2
    with pytest.raises(ValueError, match="LineString"):
        polygon_geometry(shapely.LineString([(0, 0), (1, 1)]))


def test_non_finite_measurements_are_left_out(real_nuclei):
    nucleus = real_nuclei[0]
    broken = Nucleus(nucleus.polygon, {**nucleus.measurements, "Solidity": math.nan}, (0.0, 0.0))
    assert "Solidity" not in nucleus_feature(broken)["properties"]["measurements"]


def test_file_loads_with_json_geojson_tiatoolbox_and_shapely(tmp_path, real_nuclei):
    path = tmp_path / "nuclei.geojson"
    features = _write(path, real_nuclei)
    assert len(features) > 30
    content = json.loads(path.read_text(encoding="utf-8"))
    assert content["features"] == features
    collection = geojson.loads(path.read_text(encoding="utf-8"))
    assert collection.is_valid, collection.errors()
    store = DictionaryStore.from_geojson(path)
    assert len(store) == len(features)
    assert all(shape(f["geometry"]).is_valid for f in content["features"])
    assert not (tmp_path / "nuclei.geojson.partial").exists()


@pytest.mark.skipif(
    not hasattr(sqlite3.Connection, "enable_load_extension"),
    reason="this Python's sqlite3 cannot load extensions, which tiatoolbox's SQLiteStore needs; "
    "DictionaryStore reads the same file in the test above",
)
def test_file_loads_in_tiatoolbox_sqlitestore(tmp_path, real_nuclei):
    from tiatoolbox.annotation.storage import SQLiteStore

    path = tmp_path / "nuclei.geojson"
    features = _write(path, real_nuclei)
    assert len(SQLiteStore.from_geojson(path)) == len(features)


def test_file_follows_qupath_rules(tmp_path, real_nuclei):
    path = tmp_path / "nuclei.geojson"
    ring = _ring_nucleus()
    assert len(ring.polygon.interiors) == 1
    features = _write(path, real_nuclei + [ring])
    assert _check_like_qupath(path) == len(real_nuclei) + 1
    assert len(features[-1]["geometry"]["coordinates"]) == 2  # shell and hole


def test_gzip_round_trip(tmp_path, real_nuclei):
    path = tmp_path / "nuclei.geojson.gz"
    features = _write(path, real_nuclei, compress=True)
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    assert read_features(path) == features
    assert _check_like_qupath(path) == len(features)
    with gzip.open(path) as stream:
        assert len(DictionaryStore.from_geojson(stream)) == len(features)


def test_an_exception_leaves_no_partial_and_keeps_the_old_file(tmp_path, real_nuclei):
    path = tmp_path / "nuclei.geojson"
    path.write_text("previous run")
    for compress in (False, True):
        with pytest.raises(RuntimeError, match="boom"):
            with GeoJSONWriter(path, compress=compress) as writer:
                writer.write(nucleus_feature(real_nuclei[0]))
                assert writer.partial_path.exists()
                raise RuntimeError("boom")
        assert not writer.partial_path.exists()
        assert path.read_text() == "previous run"
    with pytest.raises(ValueError):
        with GeoJSONWriter(path) as writer:
            writer.write({"bad": math.nan})
    assert not writer.partial_path.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nuclei.geojson"]


def test_empty_collection_and_other_layouts_are_read(tmp_path):
    path = tmp_path / "empty.geojson"
    with GeoJSONWriter(path):
        pass
    assert json.loads(path.read_text()) == {"type": "FeatureCollection", "features": []}
    assert read_features(path) == []
    feature = {"type": "Feature", "geometry": None, "properties": {}}
    (tmp_path / "array.geojson").write_text(json.dumps([feature]))
    assert read_features(tmp_path / "array.geojson") == [feature]
    (tmp_path / "one.geojson").write_text(json.dumps(feature))
    assert read_features(tmp_path / "one.geojson") == [feature]
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(ValueError, match="not GeoJSON"):
        read_features(tmp_path / "other.json")


def test_write_outside_the_context_is_refused(tmp_path):
    with pytest.raises(RuntimeError, match="outside"):
        GeoJSONWriter(tmp_path / "x.geojson").write({})


def test_open_close_and_abort_without_a_with_block(tmp_path, real_nuclei):
    path = tmp_path / "nuclei.geojson"
    writer = GeoJSONWriter(path).open()
    writer.write(nucleus_feature(real_nuclei[0]))
    writer.abort()
    writer.abort()  # nothing left to do
    assert not path.exists() and not writer.partial_path.exists()
    writer = GeoJSONWriter(path).open()
    writer.write(nucleus_feature(real_nuclei[0]))
    writer.close()
    assert len(read_features(path)) == 1
    with pytest.raises(RuntimeError, match="not open"):
        writer.close()


def test_close_can_leave_features_out(tmp_path, real_nuclei):
    features = [nucleus_feature(nucleus) for nucleus in real_nuclei[:6]]
    for compress in (False, True):
        path = tmp_path / ("kept.geojson.gz" if compress else "kept.geojson")
        writer = GeoJSONWriter(path, compress=compress).open()
        writer.write_all(features)
        writer.close(skip={0, 3, 5})
        assert writer.count == 3
        assert read_features(path) == [features[1], features[2], features[4]]
        assert [json.loads(text) for text in iter_written_features(path)] == read_features(path)
        assert sorted(p.name for p in tmp_path.iterdir() if "partial" in p.name) == []
    everything = tmp_path / "none.geojson"
    writer = GeoJSONWriter(everything).open()
    writer.write_all(features[:2])
    writer.close(skip={0, 1})
    assert read_features(everything) == [] and list(iter_written_features(everything)) == []
