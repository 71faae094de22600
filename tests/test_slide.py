"""Tests of wsi_s2lcm.slide on the real slides and on small synthetic files."""

from __future__ import annotations

import importlib.util
import logging
import pickle
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile
from PIL import Image

from wsi_s2lcm.errors import SlideError
from wsi_s2lcm.slide import (
    ArraySlide,
    ImageSlide,
    OpenSlideSlide,
    Slide,
    TiaSlide,
    check_readable,
    mirror_indices,
    open_slide,
    read_image_file,
)

CMU = "CMU-1-Small-Region.svs"
TCGA = "TCGA-CR-7395-01A-01-TS1.svs"
KIDNEY = "kidney-48-5-ihc.tif"
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def osr_rgb(path: Path, x: int, y: int, w: int, h: int, level: int = 0) -> np.ndarray:
    with openslide.OpenSlide(str(path)) as osr:
        return np.asarray(osr.read_region((x, y), level, (w, h)).convert("RGB"))


@pytest.fixture(scope="module")
def cmu(slides_dir: Path):
    with open_slide(slides_dir / CMU) as slide:
        yield slide


@pytest.mark.parametrize("box", [(0, 0, 240, 240), (101, 207, 333, 251), (1900, 2700, 320, 267)])
def test_read_at_own_mpp_equals_openslide(cmu, slides_dir: Path, box) -> None:
    x, y, w, h = box
    np.testing.assert_array_equal(cmu.read(x, y, w, h, cmu.mpp), osr_rgb(slides_dir / CMU, x, y, w, h))


def test_read_at_double_mpp_matches_box_downsample(cmu, slides_dir: Path) -> None:
    full = osr_rgb(slides_dir / CMU, 100, 120, 400, 300).astype(np.float64)
    expected = full.reshape(150, 2, 200, 2, 3).mean(axis=(1, 3))
    got = cmu.read(50, 60, 200, 150, 2 * cmu.mpp).astype(np.float64)
    assert got.shape == (150, 200, 3)
    assert np.abs(got - expected).max() <= 1.0


def test_mirror_indices_follow_numpy_symmetric_padding() -> None:
    axis = np.arange(5)
    expected = np.pad(axis, (12, 13), mode="symmetric")
    np.testing.assert_array_equal(mirror_indices(-12, 5 + 13, 5), expected)
    np.testing.assert_array_equal(mirror_indices(0, 5, 5), axis)


def test_read_beyond_edges_mirrors_the_slide(cmu, slides_dir: Path) -> None:
    width, height = cmu.dimensions
    inside = osr_rgb(slides_dir / CMU, width - 50, height - 40, 50, 40)
    region = cmu.read(width - 50, height - 40, 100, 80, cmu.mpp)
    np.testing.assert_array_equal(region[:40, :50], inside)
    np.testing.assert_array_equal(region[40:, :50], inside[::-1])
    np.testing.assert_array_equal(region[:40, 50:], inside[:, ::-1])
    corner = cmu.read(-30, -20, 60, 40, cmu.mpp)
    np.testing.assert_array_equal(corner[:20, :30], corner[20:, 30:][::-1, ::-1])
    # Each outside pixel has one value, whichever region it is read with (tiles agree).
    big = cmu.read(-64, -64, 256, 256, 2 * cmu.mpp)
    small = cmu.read(-40, -30, 50, 60, 2 * cmu.mpp)
    np.testing.assert_array_equal(big[34:94, 24:74], small)
    assert cmu.read(10_000, 10_000, 16, 16, cmu.mpp).shape == (16, 16, 3)


def test_cmu_info_and_thumbnail(cmu) -> None:
    assert isinstance(cmu, OpenSlideSlide) and isinstance(cmu, Slide)
    assert cmu.dimensions == (2220, 2967) and cmu.mpp == pytest.approx(0.499)
    info = cmu.info()
    assert info["vendor"] == "aperio" and info["objective_power"] == 20
    assert info["mpp_source"] == "file" and info["bounds_offset"] == [0, 0]
    assert set(info["associated_images"]) == {"label", "macro", "thumbnail"}
    assert info["levels"] == [{"dimensions": [2220, 2967], "downsample": 1.0}]
    thumb, factor = cmu.thumbnail(300)
    assert thumb.shape == (300, round(2220 / factor), 3) and factor == pytest.approx(2967 / 300)


def test_tcga_needs_mpp_and_reads_level_1(slides_dir: Path) -> None:
    with pytest.raises(SlideError, match="--mpp") as err:
        open_slide(slides_dir / TCGA)
    assert TCGA in str(err.value)
    with open_slide(slides_dir / TCGA, mpp=0.25) as slide:
        assert slide.dimensions == (4443, 3567) and slide.mpp == 0.25
        assert slide.info()["mpp_source"] == "--mpp" and len(slide.info()["levels"]) == 2
        assert slide.best_level(2.0) == 1 and slide.best_level(1.99) == 0 and slide.best_level(8) == 1
        got = slide.read(500, 400, 300, 200, 0.5).astype(int)
        expected = osr_rgb(slides_dir / TCGA, 1000, 800, 300, 200, level=1).astype(int)
        assert np.abs(got - expected).mean() < 2.0
        check_readable(slide)


def test_mpp_override_warns_when_it_differs(slides_dir: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="wsi_s2lcm.slide"):
        with open_slide(slides_dir / CMU, mpp=0.25) as slide:
            assert slide.mpp == 0.25 and slide.info()["mpp_source"] == "--mpp"
    assert "overrides" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="wsi_s2lcm.slide"):
        open_slide(slides_dir / CMU, mpp=0.5).close()
    assert caplog.text == ""


def test_default_mpp_serves_only_files_that_record_none(
    slides_dir: Path, monuseg_dir: Path, caplog
) -> None:
    with caplog.at_level(logging.INFO, logger="wsi_s2lcm.slide"):
        with open_slide(slides_dir / CMU, default_mpp=0.25) as slide:
            assert slide.mpp == pytest.approx(0.499) and slide.info()["mpp_source"] == "file"
    assert "--mpp 0.25 is for images that record none" in caplog.text
    with open_slide(slides_dir / TCGA, default_mpp=0.25) as slide:
        assert slide.mpp == 0.25 and slide.info()["mpp_source"] == "--mpp"
    tile = sorted((monuseg_dir / "images").glob("*.tif"))[0]
    with open_slide(tile, default_mpp=0.25) as slide:
        assert isinstance(slide, ImageSlide) and slide.mpp == 0.25
    with pytest.raises(SlideError, match="--mpp"):
        open_slide(slides_dir / CMU, default_mpp=0.0)


def test_plain_tiff_through_image_path(slides_dir: Path) -> None:
    with pytest.raises(openslide.OpenSlideUnsupportedFormatError):
        openslide.OpenSlide(str(slides_dir / KIDNEY))
    with pytest.raises(SlideError, match="--mpp"):
        open_slide(slides_dir / KIDNEY)
    with open_slide(slides_dir / KIDNEY, mpp=0.5) as slide:
        assert isinstance(slide, ImageSlide) and slide.dimensions == (1493, 901)
        expected = np.asarray(Image.open(slides_dir / KIDNEY).convert("RGB"))[100:150, 200:280]
        np.testing.assert_array_equal(slide.read(200, 100, 80, 50, 0.5), expected)
        assert slide.info()["format"] == "image/TIFF"


def test_monuseg_tile_records_no_mpp(monuseg_dir: Path) -> None:
    path = sorted((monuseg_dir / "images").glob("*.tif"))[0]
    with pytest.raises(SlideError, match="--mpp"):
        open_slide(path)
    with open_slide(path, mpp=0.25) as slide:
        assert isinstance(slide, ImageSlide) and slide.dimensions == (1000, 1000)
        assert slide.read(0, 0, 500, 500, 0.5).shape == (500, 500, 3)


def test_bad_inputs_raise_slide_error_naming_the_file(tmp_path: Path, slides_dir: Path) -> None:
    text = tmp_path / "notes.svs"
    text.write_text("not a slide\n")
    fake_tif = tmp_path / "fake.tif"
    fake_tif.write_bytes(b"II*\x00garbage")
    truncated = tmp_path / "truncated.svs"
    truncated.write_bytes((slides_dir / CMU).read_bytes()[:1_000_000])
    short = tmp_path / "short.svs"
    short.write_bytes((slides_dir / CMU).read_bytes()[:100_000])
    for path in [tmp_path / "missing.svs", tmp_path, text, fake_tif, truncated, short]:
        with pytest.raises(SlideError) as err:
            open_slide(path)
        assert path.name in str(err.value) and "\n" not in str(err.value)
    for mpp in (0.0, -1.0, float("nan")):
        with pytest.raises(SlideError, match="--mpp"):
            open_slide(slides_dir / CMU, mpp=mpp)


def test_corrupt_tile_fails_at_read_with_slide_error(tmp_path: Path, slides_dir: Path) -> None:
    """A slide whose header is intact but whose central tile is zeroed opens, then fails to read."""
    data = bytearray((slides_dir / CMU).read_bytes())
    with tifffile.TiffFile(slides_dir / CMU) as tif:
        page = tif.pages[0]
        tiles_across = -(-page.imagewidth // page.tilewidth)
        index = (page.imagelength // 2 // page.tilelength) * tiles_across + page.imagewidth // 2 // page.tilewidth
        offset, count = page.dataoffsets[index], page.databytecounts[index]
    data[offset:offset + count] = bytes(count)
    path = tmp_path / "corrupt.svs"
    path.write_bytes(bytes(data))
    with open_slide(path) as slide:
        with pytest.raises(SlideError) as err:
            check_readable(slide)
        assert "corrupt.svs" in str(err.value) and "region" in str(err.value)


def test_array_slide_round_trip() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (120, 90, 3), dtype=np.uint8)
    slide = ArraySlide(image, mpp=0.5)
    assert slide.dimensions == (90, 120)
    np.testing.assert_array_equal(slide.read(0, 0, 90, 120, 0.5), image)
    np.testing.assert_array_equal(slide.read(10, 20, 30, 40, 0.5), image[20:60, 10:40])
    half = slide.read(0, 0, 45, 60, 1.0).astype(float)
    assert np.abs(half - image.reshape(60, 2, 45, 2, 3).mean(axis=(1, 3))).max() <= 1.0
    assert slide.read(0, 0, 180, 240, 0.25).shape == (240, 180, 3)
    check_readable(slide)


def test_array_slide_composites_transparency_on_white() -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:2, :, 3] = 255
    out = ArraySlide(rgba, mpp=1.0).read(0, 0, 4, 4, 1.0)
    assert (out[:2] == [200, 0, 0]).all() and (out[2:] == 255).all()
    assert (ArraySlide(rgba, mpp=1.0).read(0, 2, 4, 4, 1.0)[2:] == 255).all()  # mirrored white
    gray = ArraySlide(np.full((3, 3), 7, np.uint8), mpp=1.0).read(0, 0, 3, 3, 1.0)
    assert (gray == 7).all()


def test_ome_tiff_through_tiatoolbox(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (300, 260, 3), dtype=np.uint8)
    path = tmp_path / "small.ome.tif"
    tifffile.imwrite(path, image, photometric="rgb", tile=(128, 128),
                     metadata={"axes": "YXS", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25})
    with open_slide(path) as slide:
        assert isinstance(slide, TiaSlide)
        assert slide.dimensions == (260, 300) and slide.mpp == pytest.approx(0.25)
        np.testing.assert_array_equal(slide.read(20, 30, 100, 80, 0.25), image[30:110, 20:120])
        np.testing.assert_array_equal(slide.read(250, 290, 20, 20, 0.25)[10:, :10], image[299:289:-1, 250:260])


def test_generated_pyramid_opens_with_mpp(tmp_path: Path, slides_dir: Path) -> None:
    spec = importlib.util.spec_from_file_location("make_large_slide",
                                                  PROJECT_ROOT / "benchmarks" / "make_large_slide.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "large.tif"
    module.build(out, 2048, slides_dir / CMU, mpp=0.5, source_mpp=None, quality=85)
    with open_slide(out) as slide:
        assert isinstance(slide, OpenSlideSlide) and slide.info()["vendor"] == "generic-tiff"
        assert slide.dimensions == (2048, 2048) and slide.mpp == pytest.approx(0.5)
        assert [lv["downsample"] for lv in slide.info()["levels"]] == [1.0, 2.0, 4.0]
        assert slide.best_level(4.0) == 2
        with open_slide(slides_dir / CMU) as source:
            got = slide.read(0, 0, 256, 256, 2.0).astype(int)
            assert np.abs(got - source.read(0, 0, 256, 256, 2.0).astype(int)).mean() < 4.0


def test_file_slides_pickle_by_path(slides_dir: Path) -> None:
    with open_slide(slides_dir / TCGA, mpp=0.3) as slide:
        clone = pickle.loads(pickle.dumps(slide))
        assert clone.mpp == 0.3 and clone.dimensions == slide.dimensions
        np.testing.assert_array_equal(clone.read(10, 10, 40, 40, 0.6), slide.read(10, 10, 40, 40, 0.6))
        clone.close()


def test_plain_image_file_decodes_to_rgb_and_refuses_16_bit(tmp_path: Path) -> None:
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(gray).save(tmp_path / "gray.png")
    rgb = read_image_file(tmp_path / "gray.png")
    assert rgb.shape == (3, 4, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb[..., 0], gray) and np.array_equal(rgb[..., 2], gray)
    tifffile.imwrite(tmp_path / "deep.tif", gray.astype(np.uint16) * 250)
    with pytest.raises(SlideError, match=r"^deep.tif: I;16 pixels .*convert the image to 8-bit"):
        read_image_file(tmp_path / "deep.tif")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(SlideError, match="text.png: not a readable image"):
        read_image_file(tmp_path / "text.png")
