"""Aperio ImageScope XML (MoNuSeg's own annotation format) read as polygons and evaluated."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from wsi_s2lcm.cli_evaluate import evaluate_command
from wsi_s2lcm.errors import AnnotationError
from wsi_s2lcm.evaluation import evaluate_dirs
from wsi_s2lcm.imagescope import read_imagescope_polygons
from wsi_s2lcm.label_files import file_stem, load_label_pair
from wsi_s2lcm.rasterize import rasterize_polygons

XML_STEMS = ("TCGA-21-5784-01Z-00-DX1", "TCGA-50-5931-01Z-00-DX1")


def _region(region_id: int, vertices: list[tuple[float, float]], kind: int = 0,
            negative: bool = False) -> str:
    points = "".join(f'<Vertex X="{x}" Y="{y}"/>' for x, y in vertices)
    return (f'<Region Id="{region_id}" Type="{kind}" NegativeROA="{int(negative)}">'
            f"<Vertices>{points}</Vertices></Region>")


def _write_xml(path: Path, regions: list[str]) -> Path:
    path.write_text(
        '<Annotations MicronsPerPixel="0.25"><Annotation Id="1"><Regions>'
        + "".join(regions) + "</Regions></Annotation></Annotations>",
        encoding="utf-8",
    )
    return path


def test_regions_become_polygons_in_the_pixel_edge_frame(tmp_path: Path) -> None:
    square = [(10, 10), (20, 10), (20, 20), (10, 20)]
    path = _write_xml(tmp_path / "case.xml", [
        _region(1, square),
        _region(2, [(40, 40), (50, 40), (50, 60)], kind=1),
        _region(3, [(0, 0), (30, 30)], kind=4),
        _region(4, [(12, 12), (14, 12), (14, 14)], negative=True),
    ])
    polygons, message = read_imagescope_polygons(path)
    assert len(polygons) == 2
    assert "1 negative region" in message and "1 region(s) of fewer than 3" in message
    raster = rasterize_polygons(polygons, (64, 64))
    expected = np.zeros((64, 64), np.uint32)
    expected[10:20, 10:20] = 1
    np.testing.assert_array_equal(raster == 1, expected == 1)
    triangle = raster == 2
    assert triangle[42, 48] and not triangle[58, 42]
    assert file_stem(path) == "case"


def test_bad_xml_names_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.xml"
    broken.write_text("<Annotations><Region>", encoding="utf-8")
    with pytest.raises(AnnotationError, match="broken.xml"):
        read_imagescope_polygons(broken)
    other = tmp_path / "other.xml"
    other.write_text("<svg></svg>", encoding="utf-8")
    with pytest.raises(AnnotationError, match="not an Aperio ImageScope"):
        read_imagescope_polygons(other)
    word = _write_xml(tmp_path / "word.xml", [_region(7, [(1, 1), (2, 1), ("x", 3)])])
    with pytest.raises(AnnotationError, match="region 7"):
        read_imagescope_polygons(word)


@pytest.fixture()
def xml_dir(tmp_path: Path, monuseg_dir: Path) -> Path:
    folder = tmp_path / "xml"
    folder.mkdir()
    for stem in XML_STEMS:
        shutil.copy(monuseg_dir / "annotations" / f"{stem}.xml", folder)
    return folder


def test_monuseg_xml_agrees_with_its_instance_labels(xml_dir: Path, monuseg_dir: Path) -> None:
    """The real XML outlines and the data's instance labels describe the same nuclei.

    The labels sit about 0.5 px up-left of the drawn outlines (../shared/data/README.md), so the
    two agree closely but not exactly; with the outlines moved half a pixel up-left they agree
    almost exactly.
    """
    result = evaluate_dirs(monuseg_dir / "instance_labels", xml_dir)
    assert [row["image"] for row in result.rows] == list(XML_STEMS)
    for row in result.rows:
        stem = row["image"]
        polygons, _ = read_imagescope_polygons(xml_dir / f"{stem}.xml")
        assert row["n_gt"] == len(polygons) == row["n_pred"]
        assert row["dq"] > 0.99 and 0.85 < row["aji"] < 0.97 and 0.95 < row["dice"] < 0.99
        labels, truth = load_label_pair(
            monuseg_dir / "instance_labels" / f"{stem}.png", xml_dir / f"{stem}.xml"
        )
        shifted = rasterize_polygons(polygons, labels.shape, offset_xy=(0.5, 0.5))
        agree = np.mean((labels > 0) == (shifted > 0))
        assert agree > np.mean((labels > 0) == (truth > 0)) and agree > 0.995
    assert any("fewer than 3 distinct vertices" in message for message in result.warnings)


def test_cli_evaluates_against_xml(xml_dir: Path, monuseg_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "metrics.csv"
    result = CliRunner().invoke(evaluate_command, [
        "--pred", str(monuseg_dir / "instance_labels"), "--gt", str(xml_dir), "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    assert all(stem in result.output for stem in XML_STEMS) and out.is_file()


def test_scribbles_from_xml_outlines_need_the_images(
    xml_dir: Path, monuseg_dir: Path, tmp_path: Path
) -> None:
    """``wsi-s2lcm scribbles`` takes MoNuSeg's XML as masks, rasterized at each image's size."""
    from wsi_s2lcm.cli_training import scribbles_command
    from wsi_s2lcm.qupath.imports import read_scribbles
    from wsi_s2lcm.training.scribbles import rasterize_scribbles

    stem = XML_STEMS[0]
    (xml_dir / f"{XML_STEMS[1]}.xml").unlink()
    images = tmp_path / "images"
    images.mkdir()
    (images / f"{stem}.tif").symlink_to(monuseg_dir / "images" / f"{stem}.tif")
    out = tmp_path / "scribbles"
    alone = CliRunner().invoke(scribbles_command, ["--masks", str(xml_dir), "--out", str(out)])
    assert alone.exit_code != 0 and "--images" in str(alone.exception)
    assert not out.exists()
    args = ["--masks", str(xml_dir), "--images", str(images), "--out", str(out), "--ratio", "0.5"]
    result = CliRunner().invoke(scribbles_command, args)
    assert result.exit_code == 0, result.output
    polygons, _ = read_imagescope_polygons(xml_dir / f"{stem}.xml")
    outlines = rasterize_polygons(polygons, (1000, 1000))
    target = rasterize_scribbles(read_scribbles(out / f"{stem}.geojson"), (1000, 1000),
                                 stroke_width=1.0)
    nucleus, background = target == 1, target == 0
    assert nucleus.any() and background.any()
    assert np.all(outlines[nucleus] > 0) and not np.any(outlines[background] > 0)
    touched = np.unique(outlines[nucleus])
    assert abs(len(touched) - 0.5 * len(polygons)) <= 2
