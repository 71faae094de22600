"""Scribble import from files shaped as QuPath 0.3-0.6 writes them, and bad files."""

from __future__ import annotations

import json
import logging

import pytest

from wsi_s2lcm.errors import AnnotationError
from wsi_s2lcm.qupath.imports import BACKGROUND, NUCLEUS, read_scribbles
from wsi_s2lcm.training.scribbles import IGNORE, scribble_target


def _feature(geometry, classification, key="objectType", object_type="annotation", **extra):
    properties = {key: object_type, "isLocked": False, **extra}
    if classification is not None:
        properties["classification"] = classification
    return {"type": "Feature", "id": "0b1f6d3e-1c2a-4b7e-9d7a-3f2c1e0a9b8c",
            "geometry": geometry, "properties": properties}


LINE = {"type": "LineString", "coordinates": [[10.5, 10.5], [20.5, 10.5]]}
MULTILINE = {"type": "MultiLineString",
             "coordinates": [[[1.5, 30.5], [5.5, 30.5]], [[1.5, 32.5], [1.5, 36.5]]]}
BRUSH = {"type": "MultiPolygon", "coordinates": [
    [[[40, 40], [50, 40], [50, 50], [40, 50], [40, 40]]],
    [[[60, 60], [62, 60], [62, 62], [60, 62], [60, 60]]],
]}
SQUARE = {"type": "Polygon", "coordinates": [[[70, 5], [80, 5], [80, 15], [70, 15], [70, 5]]]}
NUCLEUS_CLASS = {"name": "Nucleus", "color": [200, 0, 0]}
BACKGROUND_CLASS = {"name": "Background", "color": [0, 160, 0]}


def _write(tmp_path, data, name="scribbles.geojson"):
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data, encoding="utf-8")
    return path


def test_feature_collection_of_qupath_06(tmp_path):
    path = _write(tmp_path, {"type": "FeatureCollection", "features": [
        _feature(LINE, NUCLEUS_CLASS), _feature(BRUSH, BACKGROUND_CLASS)]})
    scribbles = read_scribbles(path)
    assert [s.label for s in scribbles] == [NUCLEUS, BACKGROUND]
    assert scribbles[0].is_line and not scribbles[1].is_line
    assert scribbles[1].geometry.geom_type == "MultiPolygon"


def test_bare_array_with_object_type_and_string_classification(tmp_path):
    path = _write(tmp_path, [
        _feature(MULTILINE, "nucleus", key="object_type"),
        _feature(SQUARE, "BACKGROUND", key="object_type"),
    ])
    scribbles = read_scribbles(path)
    assert [s.label for s in scribbles] == [NUCLEUS, BACKGROUND]
    assert scribbles[0].geometry.geom_type == "MultiLineString"


def test_qupath_03_colour_rgb_classification(tmp_path):
    old_style = {"name": "Background", "colorRGB": -16744448}
    path = _write(tmp_path, [_feature(LINE, old_style, key="object_type")])
    assert read_scribbles(path)[0].label == BACKGROUND


def test_custom_class_names(tmp_path):
    path = _write(tmp_path, [_feature(LINE, "Tumor"), _feature(SQUARE, "Stroma")])
    scribbles = read_scribbles(path, nucleus_classes=["tumor"], background_classes=["stroma"])
    assert [s.label for s in scribbles] == [NUCLEUS, BACKGROUND]


def test_other_classes_are_skipped_with_a_warning(tmp_path, caplog):
    path = _write(tmp_path, [_feature(LINE, NUCLEUS_CLASS), _feature(SQUARE, "Tumor"),
                             _feature(SQUARE, None)])
    with caplog.at_level(logging.WARNING):
        scribbles = read_scribbles(path)
    assert len(scribbles) == 1
    assert "Tumor" in caplog.text and "unclassified" in caplog.text


def test_detections_are_not_scribbles(tmp_path, caplog):
    path = _write(tmp_path, [_feature(LINE, NUCLEUS_CLASS),
                             _feature(SQUARE, NUCLEUS_CLASS, object_type="detection")])
    with caplog.at_level(logging.WARNING):
        scribbles = read_scribbles(path)
    assert [s.geometry.geom_type for s in scribbles] == ["LineString"]
    assert "detection" in caplog.text


def test_lines_and_brush_areas_rasterize_into_the_target(tmp_path):
    path = _write(tmp_path, {"type": "FeatureCollection", "features": [
        _feature(LINE, NUCLEUS_CLASS), _feature(BRUSH, BACKGROUND_CLASS)]})
    target = scribble_target(read_scribbles(path), (100, 100), 1.0, 1.0, str(path))
    assert (target[10, 10:21] == 1).all() and (target[9, 10:21] == IGNORE).all()
    assert (target[40:50, 40:50] == 0).all() and (target[60:62, 60:62] == 0).all()
    assert (target == 0).sum() == 104 and (target == 1).sum() == 11


def test_not_json_is_an_annotation_error(tmp_path):
    path = _write(tmp_path, "<Annotations><Region/></Annotations>")
    with pytest.raises(AnnotationError, match="not a GeoJSON file"):
        read_scribbles(path)


@pytest.mark.parametrize("data", [{"type": "FeatureCollection", "features": []}, []])
def test_no_features_is_an_annotation_error(tmp_path, data):
    with pytest.raises(AnnotationError, match="no features"):
        read_scribbles(_write(tmp_path, data))


def test_unsupported_geometry_only_is_an_annotation_error(tmp_path):
    point = {"type": "Point", "coordinates": [5, 5]}
    path = _write(tmp_path, [_feature(point, NUCLEUS_CLASS)])
    with pytest.raises(AnnotationError, match="unsupported geometry 'Point'"):
        read_scribbles(path)


def test_only_unknown_classes_is_an_annotation_error(tmp_path):
    path = _write(tmp_path, [_feature(LINE, "Tumor"), _feature(SQUARE, "Immune cells")])
    with pytest.raises(AnnotationError, match="none of the 2 feature"):
        read_scribbles(path)


def test_other_json_is_an_annotation_error(tmp_path):
    with pytest.raises(AnnotationError, match="FeatureCollection"):
        read_scribbles(_write(tmp_path, {"type": "Polygon", "coordinates": []}))


def test_coordinates_outside_the_image_are_an_annotation_error(tmp_path):
    far = {"type": "LineString", "coordinates": [[5000.5, 5000.5], [5010.5, 5000.5]]}
    path = _write(tmp_path, [_feature(far, NUCLEUS_CLASS)])
    with pytest.raises(AnnotationError, match="no scribble falls inside the image"):
        scribble_target(read_scribbles(path), (100, 100), 1.0, 1.0, str(path))


def test_some_scribbles_outside_the_image_warn_and_the_rest_is_used(tmp_path, caplog):
    far = {"type": "LineString", "coordinates": [[5000.5, 5000.5], [5010.5, 5000.5]]}
    path = _write(tmp_path, [_feature(far, NUCLEUS_CLASS), _feature(LINE, NUCLEUS_CLASS)])
    with caplog.at_level(logging.WARNING):
        target = scribble_target(read_scribbles(path), (100, 100), 1.0, 1.0, str(path))
    assert "outside the image" in caplog.text
    assert (target == 1).sum() == 11


def test_class_named_both_ways_is_refused(tmp_path):
    path = _write(tmp_path, [_feature(LINE, NUCLEUS_CLASS)])
    with pytest.raises(AnnotationError, match="both nucleus and background"):
        read_scribbles(path, nucleus_classes=["Nucleus"], background_classes=["nucleus"])
