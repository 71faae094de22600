"""Folder evaluation on real MoNuSeg labels: label images, binary masks, GeoJSON, CSV and CLI."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from PIL import Image
from scipy import ndimage
from shapely.geometry import box, mapping
from shapely.ops import unary_union
from skimage.measure import find_contours

from wsi_s2lcm.cli_evaluate import evaluate_command
from wsi_s2lcm.errors import AnnotationError, UserInputError
from wsi_s2lcm.evaluation import COLUMNS, evaluate_dirs, format_table
from wsi_s2lcm.label_files import file_stem, load_label_pair, read_label_image
from wsi_s2lcm.metrics import METRIC_NAMES

STEMS = ("TCGA-18-5592-01Z-00-DX1", "TCGA-HE-7130-01Z-00-DX1")


@pytest.fixture(scope="module")
def gt_labels(monuseg_dir) -> dict[str, np.ndarray]:
    return {
        stem: np.asarray(Image.open(monuseg_dir / "instance_labels" / f"{stem}.png"))
        for stem in STEMS
    }


@pytest.fixture()
def gt_dir(tmp_path: Path, gt_labels) -> Path:
    folder = tmp_path / "gt"
    folder.mkdir()
    for stem, labels in gt_labels.items():
        Image.fromarray(labels).save(folder / f"{stem}.png")
    return folder


def _save_all(folder: Path, arrays: dict[str, np.ndarray], suffix: str = ".png") -> Path:
    folder.mkdir()
    for stem, array in arrays.items():
        Image.fromarray(array).save(folder / f"{stem}{suffix}")
    return folder


def _eroded(labels: np.ndarray) -> np.ndarray:
    """Each nucleus loses its 1 px rim (also where it touches another nucleus)."""
    interior = ndimage.minimum_filter(labels, 3) == ndimage.maximum_filter(labels, 3)
    return np.where(interior, labels, 0).astype(labels.dtype)


def _feature(geometry) -> dict:
    return {
        "type": "Feature",
        "geometry": mapping(geometry),
        "properties": {"objectType": "detection", "classification": {"name": "Nucleus"}},
    }


def _contour_polygons(labels: np.ndarray) -> list:
    """Trace each nucleus with marching squares (tolerance-level accuracy) in pixel-edge frame."""
    from shapely.geometry import Polygon

    polygons = []
    for index, window in enumerate(ndimage.find_objects(labels), start=1):
        if window is None:
            continue
        mask = np.pad(labels[window] == index, 1)
        contour = max(find_contours(mask.astype(float), 0.5), key=len)
        rows = contour[:, 0] - 1 + window[0].start + 0.5
        cols = contour[:, 1] - 1 + window[1].start + 0.5
        polygons.append(Polygon(np.column_stack([cols, rows])))
    return polygons


def _pixel_edge_polygons(labels: np.ndarray) -> list:
    """Trace each nucleus exactly along pixel edges: the union of its pixel squares."""
    polygons = []
    for value in np.unique(labels[labels > 0]):
        rows, cols = np.nonzero(labels == value)
        polygons.append(unary_union([box(c, r, c + 1, r + 1) for r, c in zip(rows, cols)]))
    return polygons


def _write_geojson(path: Path, polygons: list) -> None:
    document = {"type": "FeatureCollection", "features": [_feature(p) for p in polygons]}
    text = json.dumps(document)
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as stream:
            stream.write(text)
    else:
        path.write_text(text, encoding="utf-8")


def test_ground_truth_against_itself_scores_one(gt_dir: Path, tmp_path: Path) -> None:
    result = evaluate_dirs(gt_dir, gt_dir, out_csv=tmp_path / "self.csv")
    assert [row["image"] for row in result.rows] == sorted(STEMS)
    for row in result.rows + [result.mean]:
        for name in METRIC_NAMES:
            assert row[name] == 1.0, (row["image"], name)
    assert result.warnings == []


def test_eroded_nuclei_score_plausibly_below_one(gt_dir: Path, tmp_path: Path, gt_labels) -> None:
    pred_dir = _save_all(tmp_path / "pred", {s: _eroded(a) for s, a in gt_labels.items()})
    result = evaluate_dirs(pred_dir, gt_dir)
    for row in result.rows:
        assert 0.6 < row["dice"] < 0.95
        assert 0.45 < row["iou"] < row["dice"]
        assert 0.45 < row["aji"] < 0.95
        assert 0.3 < row["pq"] < 0.95 and 0.5 < row["sq"] < 0.95
        assert 0.6 < row["object_dice"] < 0.95
        assert row["n_pred"] <= row["n_gt"]
    assert result.csv_path is None


def test_merged_binary_mask_costs_aji_and_pq_more_than_dice(
    gt_dir: Path, tmp_path: Path, gt_labels
) -> None:
    masks = {s: ((a > 0) * 255).astype(np.uint8) for s, a in gt_labels.items()}
    pred_dir = _save_all(tmp_path / "pred", masks)
    result = evaluate_dirs(pred_dir, gt_dir)
    assert any("binary mask" in message for message in result.warnings)
    for row in result.rows:
        assert row["dice"] == 1.0
        assert row["n_pred"] < row["n_gt"]
        assert row["aji"] < 0.9 and row["pq"] < 0.9
        assert 1.0 - row["aji"] > 0.1 and 1.0 - row["pq"] > 0.1


def test_geojson_traced_nuclei_round_trip(gt_dir: Path, tmp_path: Path, gt_labels) -> None:
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    stem, other = STEMS
    _write_geojson(pred_dir / f"{stem}.geojson", _contour_polygons(gt_labels[stem]))
    _write_geojson(pred_dir / f"{other}.geojson.gz", _contour_polygons(gt_labels[other]))
    result = evaluate_dirs(pred_dir, gt_dir)
    assert len(result.rows) == 2
    for row in result.rows:
        assert row["dice"] > 0.98
        assert row["aji"] > 0.9
        assert row["n_pred"] == row["n_gt"]


def test_pixel_edge_geojson_is_exact_and_geojson_pairs_need_a_frame(
    tmp_path: Path, gt_labels
) -> None:
    crop = gt_labels[STEMS[0]][:160, :160]
    polygons = _pixel_edge_polygons(crop)
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    pred_dir.mkdir()
    gt_dir.mkdir()
    _write_geojson(pred_dir / "crop.geojson", polygons)
    Image.fromarray(crop).save(gt_dir / "crop.png")
    exact = evaluate_dirs(pred_dir, gt_dir).rows[0]
    assert all(exact[name] == 1.0 for name in METRIC_NAMES)
    # GeoJSON on both sides: union bounds, an explicit shape, or an image of the same stem.
    (gt_dir / "crop.png").unlink()
    _write_geojson(gt_dir / "crop.geojson.gz", polygons[:-1])
    by_bounds = evaluate_dirs(pred_dir, gt_dir).rows[0]
    by_shape = evaluate_dirs(pred_dir, gt_dir, shape=(160, 160)).rows[0]
    image_dir = tmp_path / "images"
    _save_all(image_dir, {"crop": np.zeros((160, 160), np.uint8)}, suffix=".tif")
    by_image = evaluate_dirs(pred_dir, gt_dir, image_dir=image_dir).rows[0]
    assert by_bounds == by_shape == by_image
    assert by_shape["n_gt"] == len(polygons) - 1 and by_shape["object_dice"] == 1.0
    assert by_shape["aji"] < 1.0


def test_csv_and_table_hold_every_image_and_the_mean(gt_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "nested" / "metrics.csv"
    result = evaluate_dirs(gt_dir, gt_dir, out_csv=out)
    assert result.csv_path == out
    with open(out, newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    assert tuple(rows[0]) == COLUMNS
    assert [row["image"] for row in rows] == sorted(STEMS) + ["mean"]
    assert float(rows[-1]["aji"]) == 1.0
    assert int(rows[0]["n_gt"]) == result.rows[0]["n_gt"]
    table = result.format_table()
    lines = table.splitlines()
    assert lines[0].split() == list(COLUMNS)
    assert lines[-1].startswith("mean") and len(lines) == 2 + len(STEMS) + 1
    assert format_table(result.rows, digits=2).splitlines()[2].split()[1] == "1.00"


def test_stems_pair_without_the_label_suffix_and_unpaired_files_are_reported(
    tmp_path: Path, gt_dir: Path
) -> None:
    assert file_stem(Path("a/slide.geojson.gz")) == file_stem(Path("slide.png")) == "slide"
    assert file_stem(Path("case.1.TIF")) == "case.1"
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    (pred_dir / f"{STEMS[0]}.png").write_bytes((gt_dir / f"{STEMS[0]}.png").read_bytes())
    (pred_dir / "lonely.png").write_bytes((gt_dir / f"{STEMS[0]}.png").read_bytes())
    (pred_dir / "notes.txt").write_text("ignored", encoding="utf-8")
    result = evaluate_dirs(pred_dir, gt_dir)
    assert [row["image"] for row in result.rows] == [STEMS[0]]
    assert any("lonely" in message for message in result.warnings)
    assert any(STEMS[1] in message for message in result.warnings)
    Image.fromarray(np.full((4, 4, 3), [9, 0, 0], np.uint8)).save(
        pred_dir / f"{STEMS[0]}.overlay.png"
    )
    beside = evaluate_dirs(pred_dir, gt_dir)
    assert beside.rows == result.rows
    assert not any("overlay" in message for message in beside.warnings)
    (pred_dir / f"{STEMS[0]}.tif").write_bytes(b"twin")
    twin = evaluate_dirs(pred_dir, gt_dir)
    assert twin.rows == result.rows
    assert any(".tif" in message and "ignored" in message for message in twin.warnings)


def test_dotted_names_pair_whole(tmp_path: Path, gt_labels) -> None:
    """``case.1`` and ``case.2`` are two images, each paired with its own ground truth."""
    first, second = (gt_labels[stem] for stem in STEMS)
    truths = {"case.1": first, "case.2": second}
    gt_dir = _save_all(tmp_path / "gt", truths)
    pred_dir = _save_all(tmp_path / "pred", truths, suffix=".tif")
    result = evaluate_dirs(pred_dir, gt_dir)
    assert [row["image"] for row in result.rows] == ["case.1", "case.2"]
    assert all(float(row["aji"]) == 1.0 for row in result.rows)
    assert result.rows[1]["n_gt"] == len(np.unique(second)) - 1


def test_segment_outputs_pair_by_their_geojson(tmp_path: Path, gt_dir: Path) -> None:
    """A segment run writes name.geojson beside name.json (summary): the GeoJSON is used."""
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    labels = np.asarray(Image.open(gt_dir / f"{STEMS[0]}.png"))
    (pred_dir / f"{STEMS[0]}.geojson").write_text(
        json.dumps({"type": "FeatureCollection", "features": [_square_feature(10, 10, 20)]})
    )
    (pred_dir / f"{STEMS[0]}.json").write_text(json.dumps({"nuclei": 1, "status": "done"}))
    result = evaluate_dirs(pred_dir, gt_dir)
    assert [row["image"] for row in result.rows] == [STEMS[0]]
    assert result.rows[0]["n_pred"] == 1 and result.rows[0]["n_gt"] == len(np.unique(labels)) - 1
    assert any(f"{STEMS[0]}.json ignored" in message for message in result.warnings)


def _square_feature(x: int, y: int, side: int) -> dict:
    ring = [[x, y], [x + side, y], [x + side, y + side], [x, y + side], [x, y]]
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"objectType": "detection"}}


def test_clear_errors_name_the_input(tmp_path: Path, gt_dir: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserInputError, match="no prediction"):
        evaluate_dirs(empty, gt_dir)
    with pytest.raises(UserInputError, match="does not exist"):
        evaluate_dirs(tmp_path / "missing", gt_dir)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / f"{STEMS[0]}.png").write_bytes(b"not a png")
    with pytest.raises(AnnotationError, match=f"{STEMS[0]}.png"):
        evaluate_dirs(bad, gt_dir)
    (bad / f"{STEMS[0]}.png").unlink()
    (bad / f"{STEMS[0]}.geojson").write_text("{not json", encoding="utf-8")
    with pytest.raises(AnnotationError, match=f"{STEMS[0]}.geojson"):
        evaluate_dirs(bad, gt_dir)
    (bad / f"{STEMS[0]}.geojson").unlink()
    Image.fromarray(np.zeros((10, 12), np.uint16)).save(bad / f"{STEMS[0]}.png")
    with pytest.raises(AnnotationError, match="same pixels") as raised:
        evaluate_dirs(bad, gt_dir)
    assert f"{STEMS[0]}.png" in str(raised.value)


def test_label_image_reading_rules(tmp_path: Path) -> None:
    labels = np.zeros((6, 6), np.uint16)
    labels[0:2, 0:2] = 1
    labels[4:6, 4:6] = 1
    Image.fromarray((labels > 0).astype(np.uint8) * 255).save(tmp_path / "mask.png")
    read, warning = read_label_image(tmp_path / "mask.png")
    assert read.max() == 2 and "binary mask" in warning
    rgb = np.repeat(labels[..., None].astype(np.uint8) * 7, 3, axis=2)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    read, _ = read_label_image(tmp_path / "rgb.png")
    assert read.shape == (6, 6)
    rgb[0, 0, 1] = 3
    Image.fromarray(rgb).save(tmp_path / "colour.png")
    with pytest.raises(AnnotationError, match="colour"):
        read_label_image(tmp_path / "colour.png")
    single = np.zeros((6, 6), np.uint8)
    single[1:3, 1:3] = 4
    Image.fromarray(single).save(tmp_path / "single.png")
    read, warning = read_label_image(tmp_path / "single.png")
    assert warning is None and read.max() == 4
    pred, gt = load_label_pair(tmp_path / "single.png", tmp_path / "mask.png")
    assert pred.shape == gt.shape == (6, 6)
    big_ids = np.zeros((6, 6), np.uint32)
    big_ids[0:2, 0:2] = 3_000_000_000
    big_ids[4:6, 4:6] = 7
    tifffile.imwrite(tmp_path / "labels.tif", big_ids)
    np.testing.assert_array_equal(read_label_image(tmp_path / "labels.tif")[0], big_ids)
    tifffile.imwrite(tmp_path / "float.tif", single.astype(np.float32) + 0.5)
    with pytest.raises(AnnotationError, match="non-integer"):
        read_label_image(tmp_path / "float.tif")


def test_cli_prints_the_table_and_writes_the_csv(gt_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(evaluate_command, ["--pred", str(gt_dir), "--gt", str(gt_dir)])
    assert result.exit_code == 0, result.output
    assert STEMS[0] in result.output and "mean" in result.output
    assert (gt_dir / "evaluation.csv").is_file()
    again = runner.invoke(evaluate_command, ["--pred", str(gt_dir), "--gt", str(gt_dir), "-q"])
    assert again.exit_code == 0 and again.output == ""
    out = tmp_path / "out.csv"
    explicit = runner.invoke(
        evaluate_command, ["--pred", str(gt_dir), "--gt", str(gt_dir), "--out", str(out)]
    )
    assert explicit.exit_code == 0 and out.is_file()


def test_cli_without_pairs_raises_a_user_input_error(gt_dir: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(evaluate_command, ["--pred", str(empty), "--gt", str(gt_dir)])
    assert result.exit_code != 0
    assert isinstance(result.exception, UserInputError)
