"""The command line: exit codes, one-line errors, no partial output, info and models."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess

import pytest
from click.testing import CliRunner
from PIL import Image

from wsi_s2lcm.cli import main
from wsi_s2lcm.cli_options import parse_assignments
from wsi_s2lcm.config import PostprocessConfig


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_info_on_a_real_slide(slides_dir):
    result = run("info", slides_dir / "CMU-1-Small-Region.svs", "--json")
    assert result.exit_code == 0
    info = json.loads(result.output)
    assert info["dimensions"] == [2220, 2967]
    assert abs(info["mpp"] - 0.499) < 0.001
    assert info["vendor"] == "aperio"
    assert "macro" in info["associated_images"]


def test_info_on_a_slide_without_mpp(slides_dir):
    result = run("info", slides_dir / "TCGA-CR-7395-01A-01-TS1.svs")
    assert result.exit_code == 0
    assert "mpp: not recorded (pass --mpp to segment this slide)" in result.output
    assert "dimensions: 4443 x 3567 px (level 0)" in result.output
    assert "levels: 2\n  0: 4443 x 3567 px, downsample 1\n  1: 2221 x 1783 px" in result.output


def test_info_reads_as_text(slides_dir):
    result = run("info", slides_dir / "CMU-1-Small-Region.svs", "--mpp", "0.5")
    assert result.exit_code == 0
    assert "mpp: 0.5 µm/px (given with --mpp)" in result.output
    assert "associated images: label, macro, thumbnail" in result.output
    assert "[" not in result.output and "{" not in result.output


def _bad_inputs(tmp_path, slides_dir):
    text = tmp_path / "notes.svs"
    text.write_text("this is not a slide\n")
    truncated = tmp_path / "truncated.svs"
    data = (slides_dir / "CMU-1-Small-Region.svs").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    return {
        "missing": tmp_path / "missing.svs",
        "directory": tmp_path,
        "not a slide": text,
        "truncated": truncated,
    }


@pytest.mark.parametrize("kind", ["missing", "directory", "not a slide", "truncated"])
def test_bad_input_exits_2_with_one_line_and_no_output(tmp_path, slides_dir, untrained_model, kind):
    (tmp_path / "in").mkdir()
    bad = _bad_inputs(tmp_path / "in", slides_dir)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["segment", str(bad[kind]), "--out", str(out), "--model", str(untrained_model)]
    )
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert bad[kind].name in lines[0]
    assert "Traceback" not in result.output
    assert not out.exists() or not any(out.iterdir())


def test_slide_without_mpp_is_refused_with_a_hint(tmp_path, slides_dir, untrained_model):
    result = CliRunner().invoke(
        main,
        ["segment", str(slides_dir / "TCGA-CR-7395-01A-01-TS1.svs"), "--out", str(tmp_path),
         "--model", str(untrained_model)],
    )
    assert result.exit_code == 2
    assert "--mpp" in result.output
    assert not any(tmp_path.iterdir())


def test_unknown_model_and_bad_options_exit_2(tmp_path, slides_dir):
    slide = slides_dir / "CMU-1-Small-Region.svs"
    result = CliRunner().invoke(main, ["segment", str(slide), "--out", str(tmp_path), "--model", "nope"])
    assert result.exit_code == 2 and "nope" in result.output
    result = CliRunner().invoke(main, ["segment", str(slide), "--out", str(tmp_path), "--tile-size", "100"])
    assert result.exit_code == 2 and "tile_size" in result.output


def test_existing_output_needs_overwrite(tmp_path, monuseg_dir, untrained_model):
    image = monuseg_dir / "images" / "TCGA-18-5592-01Z-00-DX1.tif"
    args = ["segment", str(image), "--out", str(tmp_path), "--mpp", "0.25", "--model",
            str(untrained_model), "--workers", "0", "--tile-size", "256", "-q"]
    assert CliRunner().invoke(main, args).exit_code == 0
    outputs = sorted(p.name for p in tmp_path.iterdir())
    assert outputs == sorted(
        ["TCGA-18-5592-01Z-00-DX1.geojson", "TCGA-18-5592-01Z-00-DX1.json",
         "TCGA-18-5592-01Z-00-DX1.overlay.png", "TCGA-18-5592-01Z-00-DX1.zarr"]
    )
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert CliRunner().invoke(main, args + ["--overwrite"]).exit_code == 0


def test_console_script_runs(slides_dir):
    exe = shutil.which("wsi-s2lcm")
    assert exe, "the console script is not installed (pip install -e .)"
    result = subprocess.run([exe, "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for command in ("segment", "train", "scribbles", "evaluate", "models", "info"):
        assert command in result.stdout
    bad = subprocess.run([exe, "segment", "nothing.svs", "--out", "x"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "nothing.svs" in bad.stderr


def test_cuda_request_without_cuda_is_refused(tmp_path, monuseg_dir, untrained_model):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    image = monuseg_dir / "images" / "TCGA-18-5592-01Z-00-DX1.tif"
    result = CliRunner().invoke(main, ["segment", str(image), "--out", str(tmp_path), "--mpp",
                                       "0.25", "--model", str(untrained_model), "--device", "cuda"])
    assert result.exit_code == 2 and "CUDA" in result.output


def test_postprocess_values_override_the_card(tmp_path, monuseg_dir, untrained_model):
    image = monuseg_dir / "images" / "TCGA-18-5592-01Z-00-DX1.tif"
    args = ["segment", str(image), "--out", str(tmp_path), "--mpp", "0.25", "--model",
            str(untrained_model), "--workers", "0", "--tile-size", "256", "-q",
            "--postprocess", "min_hematoxylin_contrast=0", "--postprocess", "h_um=1.5",
            "--no-amp"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "TCGA-18-5592-01Z-00-DX1.json").read_text())
    assert "amp=False" in summary["config"]["predictor"]
    used = summary["config"]["postprocess"]
    assert used["min_hematoxylin_contrast"] == 0.0
    assert used["h_um"] == 1.5
    assert used["threshold"] == PostprocessConfig().threshold


def test_tta_is_recorded_and_is_a_setting_that_a_resume_compares(
    tmp_path, monuseg_dir, untrained_model
):
    from wsi_s2lcm.segment import SegmentOptions, run_settings, summary_settings

    # A corner of a real image is enough to record the setting (the whole image took 75 s).
    image = tmp_path / "corner.png"
    whole = Image.open(monuseg_dir / "images" / "TCGA-18-5592-01Z-00-DX1.tif")
    whole.convert("RGB").crop((0, 0, 320, 320)).save(image)
    out = tmp_path / "out"
    args = ["segment", str(image), "--out", str(out), "--mpp", "0.25", "--model",
            str(untrained_model), "--workers", "0", "--tile-size", "256", "-q", "--tta"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "corner.json").read_text())
    assert summary["config"]["tta"] is True and "tta=True" in summary["config"]["predictor"]
    recorded = summary_settings(summary)
    assert recorded["tta"] is True
    plain = SegmentOptions(model=str(untrained_model))
    assert run_settings(plain)["tta"] is False
    assert run_settings(dataclasses.replace(plain, tta=True))["tta"] == recorded["tta"]


@pytest.mark.parametrize(
    ("value", "message"),
    [("bogus=1", "unknown key"), ("h_um", "KEY=VALUE"), ("h_um=wide", "must be a number"),
     ("=3", "KEY=VALUE"), ("threshold=[1]", "number, true/false or text"),
     ("h_um=.nan", "must be a number > 0"), ("min_area_um2=.inf", "must be a number >= 0")],
)
def test_bad_postprocess_values_exit_2(tmp_path, monuseg_dir, untrained_model, value, message):
    image = monuseg_dir / "images" / "TCGA-18-5592-01Z-00-DX1.tif"
    result = CliRunner().invoke(main, [
        "segment", str(image), "--out", str(tmp_path), "--mpp", "0.25", "--model",
        str(untrained_model), "--postprocess", value,
    ])
    assert result.exit_code == 2
    assert message in result.output and "--postprocess" in result.output
    assert not any(tmp_path.iterdir())


def test_parse_assignments_types_values():
    assert parse_assignments(("a=0.5", "b=true", "c=text", "a=2"), "--x") == {
        "a": 2, "b": True, "c": "text"}
    # a batch job's walltime stays text (YAML would read 4:00:00 as 14400 seconds)
    assert parse_assignments(("walltime=4:00:00", "cores=8", "memory=32GB"), "--x") == {
        "walltime": "4:00:00", "cores": 8, "memory": "32GB"}


@pytest.mark.parametrize("failing", ["wsi_s2lcm.overlay.Overlay.save",
                                     "wsi_s2lcm.store.LabelStore.create",
                                     "wsi_s2lcm.segment._write_json"])
def test_a_failure_while_writing_outputs_leaves_none(tmp_path, monuseg_dir, untrained_model,
                                                     monkeypatch, failing):
    """Outputs are all or none: a step failing after others were renamed into place removes them."""
    from wsi_s2lcm.config import ExportConfig, TilingConfig
    from wsi_s2lcm.segment import segment_slide

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(failing, disk_full)
    image = monuseg_dir / "images" / "TCGA-18-5592-01Z-00-DX1.tif"
    with pytest.raises(OSError, match="No space left"):
        segment_slide(image, tmp_path / "out", model=str(untrained_model), mpp=0.25,
                      tiling=TilingConfig(tile_size=256), export=ExportConfig())
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []


def test_a_batch_is_checked_before_any_slide_runs(tmp_path, monuseg_dir, untrained_model):
    image = monuseg_dir / "images" / "TCGA-18-5592-01Z-00-DX1.tif"
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        shutil.copy(image, tmp_path / folder / "slide.tif")
    shutil.copy(image, tmp_path / "a" / "other.tif")
    out = tmp_path / "out"
    base = ["--out", str(out), "--mpp", "0.25", "--model", str(untrained_model), "-q"]
    a, b = tmp_path / "a", tmp_path / "b"
    same_stem = CliRunner().invoke(
        main, ["segment", str(a / "slide.tif"), str(b / "slide.tif"), *base]
    )
    assert same_stem.exit_code == 2 and "would both write" in same_stem.output
    assert not out.exists()
    out.mkdir()
    (out / "slide.json").write_text("{}")
    later_exists = CliRunner().invoke(
        main, ["segment", str(a / "other.tif"), str(a / "slide.tif"), *base]
    )
    assert later_exists.exit_code == 2 and "slide.json" in later_exists.output
    assert sorted(p.name for p in out.iterdir()) == ["slide.json"], "the first slide never ran"
