"""Rasterizing scribbles, and generating them from real MoNuSeg instance masks."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import shapely
from click.testing import CliRunner
from PIL import Image

from wsi_s2lcm.cli_training import scribbles_command
from wsi_s2lcm.qupath.imports import BACKGROUND, NUCLEUS, Scribble, read_scribbles
from wsi_s2lcm.training.generate import (
    background_segments,
    curve_lines,
    scribbles_from_labels,
    write_scribbles_from_labels,
)
from wsi_s2lcm.training.scribbles import IGNORE, rasterize_scribbles

STEM = "TCGA-A7-A13E-01Z-00-DX1"


@pytest.fixture(scope="module")
def labels(monuseg_dir):
    return np.array(Image.open(monuseg_dir / "instance_labels" / f"{STEM}.png"))


def _line(coords, label=NUCLEUS):
    return Scribble(label, shapely.LineString(coords), "x")


def test_one_pixel_stroke_paints_the_pixels_its_centre_line_crosses():
    target = rasterize_scribbles([_line([(2.5, 3.5), (6.5, 3.5), (8.5, 5.5)])], (10, 10))
    expected = {(3, c) for c in range(2, 7)} | {(4, 7), (5, 8)}
    assert set(zip(*np.nonzero(target == 1))) == expected
    assert (target[target != 1] == IGNORE).all()


def test_wider_stroke_paints_within_half_its_width():
    target = rasterize_scribbles([_line([(2.5, 5.5), (7.5, 5.5)], BACKGROUND)], (11, 11),
                                 stroke_width=3.0)
    assert set(np.unique(np.nonzero(target == 0)[0])) == {4, 5, 6}


def test_scale_and_offset_map_frame_to_raster():
    # frame = level-0 pixels; raster at 2 frame px per pixel, starting at frame (100, 200)
    target = rasterize_scribbles([_line([(101.0, 211.0), (109.0, 211.0)])], (10, 10), scale=2.0,
                                 offset_xy=(100.0, 200.0))
    assert set(zip(*np.nonzero(target == 1))) == {(5, c) for c in range(0, 5)}


def test_pixels_claimed_by_both_classes_are_ignored():
    area = Scribble(BACKGROUND, shapely.box(0, 0, 10, 10), "Background")
    target = rasterize_scribbles([area, _line([(0.5, 4.5), (9.5, 4.5)])], (10, 10))
    assert (target[4] == IGNORE).all()
    assert (np.delete(target, 4, axis=0) == 0).all()


def test_curve_lines_join_8_neighbours_through_pixel_centres():
    mask = np.zeros((6, 6), bool)
    mask[1, 1:4] = True
    mask[2, 4] = True
    mask[3, 4] = True
    lines = curve_lines(mask)
    assert len(lines) == 1
    painted = rasterize_scribbles([_line(lines[0])], mask.shape)
    assert np.array_equal(painted == 1, mask)


def test_single_pixel_curve_becomes_a_segment_inside_it():
    mask = np.zeros((4, 4), bool)
    mask[2, 1] = True
    (line,) = curve_lines(mask)
    assert all(1 < x < 2 and 2 < y < 3 for x, y in line)


def test_generated_scribbles_follow_the_recipe(labels):
    nucleus, background = scribbles_from_labels(labels, ratio=0.3, seed=0)
    count = int(round(0.3 * (len(np.unique(labels)) - 1)))
    assert nucleus.max() == count and background.max() == count
    assert (labels[nucleus > 0] > 0).all(), "nucleus scribbles lie inside nuclei"
    assert (labels[background > 0] == 0).all(), "background scribbles lie on background"
    owners = {int(np.unique(labels[nucleus == k]).size) for k in range(1, count + 1)}
    assert owners == {1}, "each nucleus scribble stays within one nucleus"
    assert len(np.unique(labels[nucleus > 0])) == count


def test_background_net_is_cut_at_corners(labels):
    segments = background_segments(labels > 0)
    sizes = np.bincount(segments.ravel())[1:]
    assert len(sizes) > 100 and np.median(sizes) < 200


def test_generation_is_seeded_and_reproducible(labels, tmp_path):
    write_scribbles_from_labels(labels, tmp_path / "a.geojson", 0.3, seed=7)
    write_scribbles_from_labels(labels, tmp_path / "b.geojson", 0.3, seed=7)
    write_scribbles_from_labels(labels, tmp_path / "c.geojson", 0.3, seed=8)
    a, b, c = (p.read_bytes() for p in sorted(tmp_path.glob("*.geojson")))
    assert a == b and a != c


def test_written_scribbles_read_back_to_the_generated_pixels(labels, tmp_path):
    path = tmp_path / f"{STEM}.geojson"
    write_scribbles_from_labels(labels, path, 0.3, seed=3)
    nucleus, background = scribbles_from_labels(labels, 0.3, seed=3)
    data = json.loads(path.read_text())
    assert data["type"] == "FeatureCollection"
    assert {f["properties"]["objectType"] for f in data["features"]} == {"annotation"}
    target = rasterize_scribbles(read_scribbles(path), labels.shape, stroke_width=1.0)
    assert np.array_equal(target == 1, nucleus > 0)
    assert np.array_equal(target == 0, background > 0)


def test_scribbles_command_writes_one_file_per_mask(monuseg_dir, tmp_path):
    masks, images = tmp_path / "masks", tmp_path / "images"
    masks.mkdir()
    images.mkdir()
    shutil.copy(monuseg_dir / "instance_labels" / f"{STEM}.png", masks)
    (images / f"{STEM}.tif").symlink_to(monuseg_dir / "images" / f"{STEM}.tif")
    out = tmp_path / "out"
    args = ["--masks", str(masks), "--images", str(images), "--out", str(out), "--ratio", "0.1"]
    result = CliRunner().invoke(scribbles_command, args)
    assert result.exit_code == 0, result.output
    assert (out / f"{STEM}.geojson").is_file()
    manifest = json.loads((out / "scribbles.json").read_text())
    assert manifest["ratio"] == 0.1 and manifest["files"][STEM]["nucleus_scribbles"] == 31
    again = CliRunner().invoke(scribbles_command, args)
    assert again.exit_code != 0 and "--overwrite" in str(again.exception)


def test_scribbles_command_checks_every_output_before_writing(monuseg_dir, tmp_path):
    masks, out = tmp_path / "masks", tmp_path / "out"
    masks.mkdir()
    out.mkdir()
    for name in ("a", "b"):
        shutil.copy(monuseg_dir / "instance_labels" / f"{STEM}.png", masks / f"{name}.png")
    (out / "b.geojson").write_text("{}")
    result = CliRunner().invoke(scribbles_command, ["--masks", str(masks), "--out", str(out)])
    assert result.exit_code != 0 and "b.geojson" in str(result.exception)
    assert sorted(p.name for p in out.iterdir()) == ["b.geojson"], "a.geojson was not written"


def test_scribbles_follow_each_axis_of_a_resized_image(tmp_path):
    """999 x 1001 px at 0.25 µm/px read at 0.5: 500 x 500 px, 1.998 and 2.002 image px per pixel."""
    from wsi_s2lcm.training.config import TrainConfig
    from wsi_s2lcm.training.dataset import load_pair

    Image.fromarray(np.full((1001, 999, 3), 200, np.uint8)).save(tmp_path / "odd.png")
    line = {"type": "Feature", "geometry": {"type": "LineString",
                                            "coordinates": [[996.5, 980.5], [996.5, 990.5]]},
            "properties": {"objectType": "annotation", "classification": {"name": "Nucleus"}}}
    (tmp_path / "odd.geojson").write_text(json.dumps({"type": "FeatureCollection",
                                                      "features": [line]}))
    (item,) = load_pair("odd", tmp_path / "odd.png", tmp_path / "odd.geojson", 0.25,
                        TrainConfig(mpp=0.5))
    assert item.image.shape[:2] == (500, 500)
    rows, cols = np.nonzero(item.target == 1)
    assert set(cols) == {int(996.5 // 1.998)}, "x follows the x scale (498), not y's (497)"
    assert rows.min() == int(980.5 // 2.002) and rows.max() == int(990.5 // 2.002)


def test_scribbles_command_takes_geojson_outlines_and_checks_sizes(tmp_path):
    """Outlines (QuPath detections) are rasterized at their image's size; manifests are skipped."""
    masks, images, out = tmp_path / "masks", tmp_path / "images", tmp_path / "out"
    masks.mkdir()
    images.mkdir()
    squares = [(8 + 20 * i, 8 + 20 * j) for i in range(3) for j in range(3)]
    features = [{"type": "Feature", "properties": {"objectType": "detection"},
                 "geometry": {"type": "Polygon", "coordinates": [[
                     [x, y], [x + 10, y], [x + 10, y + 10], [x, y + 10], [x, y]]]}}
                for x, y in squares]
    (masks / "tile.geojson").write_text(json.dumps({"type": "FeatureCollection",
                                                    "features": features}))
    (masks / "scribbles.json").write_text(json.dumps({"ratio": 0.5}))
    Image.fromarray(np.full((70, 72, 3), 200, np.uint8)).save(images / "tile.png")
    args = ["--masks", str(masks), "--images", str(images), "--out", str(out), "--ratio", "1.0"]
    result = CliRunner().invoke(scribbles_command, args)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "scribbles.json").read_text())
    assert list(manifest["files"]) == ["tile"] and manifest["files"]["tile"]["nuclei"] == 9
    target = rasterize_scribbles(read_scribbles(out / "tile.geojson"), (70, 72), stroke_width=1.0)
    inside = np.zeros((70, 72), bool)
    for x, y in squares:
        inside[y:y + 10, x:x + 10] = True
    assert (target == 1).any() and np.all(inside[target == 1])
    assert (target == 0).any() and not np.any(inside[target == 0])
    (masks / "tile.geojson").unlink()
    Image.fromarray(np.zeros((64, 64), np.uint16)).save(masks / "tile.png")
    wrong = CliRunner().invoke(scribbles_command, args + ["--overwrite"])
    assert wrong.exit_code != 0 and "but its image is" in str(wrong.exception)
