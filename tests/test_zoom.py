"""The reading zoom: choosing it from nucleus sizes, applying it, calibrating its reference."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from wsi_s2lcm.cli import main
from wsi_s2lcm.config import PostprocessConfig
from wsi_s2lcm.errors import ConfigError
from wsi_s2lcm.models import read_card, resolve_model
from wsi_s2lcm.segment import SegmentOptions, run_settings, summary_settings
from wsi_s2lcm.training.zoom_calibration import calibrate_reference_area
from wsi_s2lcm.zoom import (
    MAX_ZOOM, area_weights, check_zoom, enlarged_span, shrink_window, zoom_for_nuclei,
)


def test_the_zoom_brings_the_median_nucleus_up_to_the_reference_in_steps():
    # sqrt(36 / 16) = 1.5 exactly; sqrt(36 / 20) = 1.34 rounds down to 1.25
    assert zoom_for_nuclei(16.0, 36.0) == 1.5
    assert zoom_for_nuclei(20.0, 36.0) == 1.25
    # nuclei as large as the reference or larger are read as they are
    assert zoom_for_nuclei(36.0, 36.0) == 1.0
    assert zoom_for_nuclei(100.0, 36.0) == 1.0
    # tiny nuclei are enlarged at most MAX_ZOOM times
    assert zoom_for_nuclei(1.0, 36.0) == MAX_ZOOM
    # no reference, or nothing measured: no zoom
    assert zoom_for_nuclei(16.0, 0.0) == 1.0
    assert zoom_for_nuclei(0.0, 36.0) == 1.0


@pytest.mark.parametrize("bad", [0.5, 0.0, 5.0, float("nan")])
def test_a_zoom_outside_1_to_4_is_refused(bad):
    with pytest.raises(ConfigError, match="between 1"):
        check_zoom(bad)


def test_enlarged_windows_start_on_the_networks_grid_and_cover_the_window():
    for start, count, zoom in [(0, 896, 1.25), (672, 896, 1.25), (-64, 384, 1.125), (5, 7, 1.75)]:
        first, size = enlarged_span(start, count, zoom)
        assert first % 32 == 0 and size % 32 == 0
        assert first <= start * zoom and first + size >= (start + count) * zoom
        assert first > start * zoom - 32 and first + size < (start + count) * zoom + 32


def test_area_weights_average_each_model_pixels_span():
    weights = area_weights(3, 5, 1.25, 0, 32)
    assert weights.shape == (5, 32)
    assert np.allclose(weights.sum(axis=1), 1.0)
    # model pixel 3 spans [3.75, 5.0) of the enlarged frame: 0.25 of pixel 3, all of pixel 4
    assert np.allclose(weights[0, 3:5], [0.2, 0.8]) and weights[0].sum() == pytest.approx(1.0)
    # a constant map stays constant; a ramp of enlarged pixel centres comes back near the centre
    # of each model pixel's span (the mean of a staircase, within a fifth of a pixel)
    ramp = np.tile(np.arange(32, dtype=np.float32) + 0.5, (32, 1))
    back = shrink_window(ramp, 3, 3, 5, 5, 1.25, 0, 0)
    assert np.abs(back[0] - (np.arange(3, 8) + 0.5) * 1.25).max() < 0.2
    assert np.allclose(back[:, 0], back[0, 0])
    assert np.allclose(shrink_window(np.ones((32, 32), np.float32), 3, 3, 5, 5, 1.25, 0, 0), 1)


class _GridSensitive:
    """A fake network whose output depends on where a pixel lies in its input's 32-px grid, as
    a U-Net's does, and otherwise on the pixel's colour only."""

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        phase = (np.arange(batch.shape[2]) % 32) / 320.0
        return (batch[..., 0].astype(np.float32) / 255.0 * 0.9 + phase).astype(np.float32)


@pytest.mark.parametrize("zoom", [1.125, 1.25, 1.75])
def test_a_place_gets_the_same_probability_in_every_window_that_holds_it(monuseg_dir, zoom):
    """What makes the zoomed result independent of the tiling: windows read on the enlarged
    frame's 32-px grid see each place at the same grid phase, so overlapping windows agree."""
    from wsi_s2lcm.slide import open_slide
    from wsi_s2lcm.tile_task import TileJob, predict_windows

    job = TileJob(slide_path="", slide_mpp=0.25, model_mpp=0.25, level0_mpp=0.25, width=1000,
                  height=1000, predictor=None, postprocess=PostprocessConfig(), zoom=zoom)
    with open_slide(monuseg_dir / "images" / "TCGA-18-5592-01Z-00-DX1.tif", mpp=0.25) as slide:
        rgb_a, a, _ = predict_windows(slide, [(100, 60, 200, 200)], job, _GridSensitive())
        rgb_b, b, _ = predict_windows(slide, [(172, 100, 200, 200), (0, 0, 200, 200)], job,
                                      _GridSensitive())
    assert a.shape == (1, 200, 200) and b.shape == (2, 200, 200) and rgb_b.shape[0] == 2
    overlap_a = a[0, 40:, 72:]     # model pixels x 172..299, y 100..259
    overlap_b = b[0, :160, :128]
    # the same up to the reader's rounding of the enlarged colours (1 level of 255)
    assert np.abs(overlap_a - overlap_b).max() < 1.5 / 255
    # a window enlarged from where it starts, off the grid, sees the same places at another
    # phase and gets other probabilities
    with open_slide(monuseg_dir / "images" / "TCGA-18-5592-01Z-00-DX1.tif", mpp=0.25) as slide:
        first_x, first_y = round(172 * zoom), round(100 * zoom)
        size = -(-round(200 * zoom) // 32) * 32
        enlarged = slide.read(first_x, first_y, size, size, 0.25 / zoom)
    off_grid = shrink_window(_GridSensitive()(enlarged[None])[0], 172, 100, 200, 200, zoom,
                             first_x, first_y)
    assert np.abs(off_grid[:160, :128] - overlap_a).max() > 0.02


def _pair_image(gap: int) -> np.ndarray:
    """Probability of two 8 x 8 squares side by side, ``gap`` pixels apart (0: one object)."""
    probability = np.zeros((40, 40), dtype=np.float32)
    probability[16:24, 8:16] = 1.0
    probability[16:24, 16 + gap:24 + gap] = 1.0
    return probability


def test_calibration_keeps_the_smallest_area_whose_zoom_splits_the_merged_pair():
    """A fake network merges two nuclei unless the image is enlarged at least 1.5 times."""
    image = np.full((40, 40, 3), 128, dtype=np.uint8)
    ids = np.zeros((40, 40), dtype=np.int32)
    ids[20, 10:13] = 1
    ids[20, 21:24] = 2
    asked = []

    def predict(image: np.ndarray, zoom: float) -> np.ndarray:
        asked.append(zoom)
        return _pair_image(2 if zoom >= 1.5 else 0)

    config = PostprocessConfig(separate=False, fill_holes=False, min_area_um2=0.0,
                               min_hematoxylin_contrast=0.0, drop_green=False,
                               min_mean_probability=0.0)
    # at zoom 1 the one object is 128 px of 1 µm² each: 128 µm²
    area, table = calibrate_reference_area([image], [ids], predict, config, 1.0,
                                           (0.0, 200.0, 288.0, 400.0))
    rows = {row["nucleus_area_um2"]: row for row in table}
    assert rows[0.0]["zooms"] == [1.0] and rows[0.0]["merged"] == 1
    assert rows[200.0]["zooms"] == [1.25] and rows[200.0]["merged"] == 1
    assert rows[288.0]["zooms"] == [1.5] and rows[288.0]["merged"] == 0
    assert rows[400.0]["zooms"] == [1.75] and rows[400.0]["merged"] == 0
    assert area == 288.0
    # each zoom is predicted once
    assert sorted(asked) == [1.0, 1.25, 1.5, 1.75]


@pytest.mark.parametrize(("stem", "zoomed"), [("TCGA-HE-7129-01Z-00-DX1", True),
                                              ("TCGA-DK-A2I6-01A-01-TS1", False)])
def test_segment_enlarges_packed_small_nuclei_and_not_large_ones(tmp_path, monuseg_dir, stem,
                                                                 zoomed):
    """The default model's card has a reference area: a corner of the packed kidney image is
    enlarged, one of an image of large nuclei is not (measured: median 45 µm² against the
    reference 37.5), and the summary says why."""
    reference = read_card(resolve_model(None)).nucleus_area_um2
    assert reference > 0
    image = tmp_path / "corner.png"
    Image.open(monuseg_dir / "images" / f"{stem}.tif").convert("RGB").crop(
        (0, 0, 512, 512)).save(image)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["segment", str(image), "--out", str(out), "--mpp", "0.25",
                                       "--workers", "0", "--tile-size", "256", "-q",
                                       "--no-overlay", "--no-labels"])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "corner.json").read_text())["zoom"]
    assert record["chosen"] is True and record["asked"] is None
    assert record["nucleus_area_um2"] == reference and record["sample_nuclei"] > 10
    assert record["zoom"] == zoom_for_nuclei(record["median_nucleus_area_um2"], reference)
    assert (record["zoom"] > 1) is zoomed


def test_an_explicit_zoom_is_used_as_given(tmp_path, monuseg_dir, untrained_model):
    image = tmp_path / "corner.png"
    Image.open(monuseg_dir / "images" / "TCGA-18-5592-01Z-00-DX1.tif").convert("RGB").crop(
        (0, 0, 160, 160)).save(image)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["segment", str(image), "--out", str(out), "--mpp", "0.25",
                                       "--model", str(untrained_model), "--workers", "0",
                                       "--tile-size", "128", "-q", "--zoom", "1.25"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "corner.json").read_text())
    assert summary["zoom"] == {"zoom": 1.25, "chosen": False, "asked": 1.25}
    asked = SegmentOptions(model=str(untrained_model), zoom=1.25)
    assert summary_settings(summary)["zoom"] == run_settings(asked)["zoom"]
    assert summary_settings(summary)["zoom"] != run_settings(
        dataclasses.replace(asked, zoom=None))["zoom"]


def test_a_resume_compares_the_zoom_and_the_cards_reference_area():
    auto = run_settings(SegmentOptions())
    reference = read_card(resolve_model(None)).nucleus_area_um2
    assert auto["zoom"] == {"asked": None, "nucleus_area_um2": reference}
    assert run_settings(SegmentOptions(zoom=1.0))["zoom"] != auto["zoom"]
    # a summary written before the reading zoom, by the same model name: its nuclei differ
    before = {"model_card": {"name": "s2lcm-monuseg"}, "config": {}}
    assert summary_settings(before)["zoom"] == {"asked": None, "nucleus_area_um2": 0.0}


@pytest.mark.parametrize("value", ["0.5", "big", "9"])
def test_a_bad_zoom_exits_2_before_any_output(tmp_path, monuseg_dir, value):
    image = monuseg_dir / "images" / "TCGA-18-5592-01Z-00-DX1.tif"
    result = CliRunner().invoke(main, ["segment", str(image), "--out", str(tmp_path / "out"),
                                       "--mpp", "0.25", "--zoom", value])
    assert result.exit_code == 2
    assert "--zoom" in result.output
    assert not (tmp_path / "out").exists()


def test_calibrating_a_model_writes_the_area_and_its_table_on_the_card(tmp_path, monuseg_dir,
                                                                       untrained_model):
    import shutil

    from wsi_s2lcm.training.dataset import TrainImage
    from wsi_s2lcm.training.zoom_calibration import ZOOM_CALIBRATION_KEY, calibrate_zoom

    model_dir = shutil.copytree(untrained_model, tmp_path / "model")
    stem = "TCGA-18-5592-01Z-00-DX1"
    image = np.asarray(Image.open(monuseg_dir / "images" / f"{stem}.tif").convert("RGB"))[:96, :96]
    truth = np.asarray(Image.open(monuseg_dir / "instance_labels" / f"{stem}.png"))[:96, :96]
    held_out = TrainImage(stem, stem, image, np.full(truth.shape, 255, np.uint8),
                          truth.astype(np.int32))
    area = calibrate_zoom(model_dir, [held_out], candidates_um2=(0.0, 50.0))
    card = read_card(model_dir)
    assert card.nucleus_area_um2 == area and area in (0.0, 50.0)
    record = card.metrics[ZOOM_CALIBRATION_KEY]
    assert record["held_out_images"] == [stem]
    assert [row["nucleus_area_um2"] for row in record["table"]] == [0.0, 50.0]
    assert all(len(row["zooms"]) == 1 for row in record["table"])
    assert json.loads((model_dir / "card.json").read_text())["format"] == 2
