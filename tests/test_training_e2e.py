"""End to end: generated scribbles on two real MoNuSeg images -> train -> a loadable model."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import torchvision
from click.testing import CliRunner
from safetensors.torch import load_file

from wsi_s2lcm.cli import main
from wsi_s2lcm.cli_training import scribbles_command, train_command
from wsi_s2lcm.errors import AnnotationError, ConfigError, OutputExistsError
from wsi_s2lcm.models import load_model, read_card, resolve_model
from wsi_s2lcm.training.augment import augment_sample
from wsi_s2lcm.training.config import TrainConfig, load_train_config, with_defaults
from wsi_s2lcm.training.inference import normalize

NORMALIZATION = {"mean": [0.5] * 3, "std": [0.25] * 3}
STEMS = ("TCGA-A7-A13E-01Z-00-DX1", "TCGA-HE-7129-01Z-00-DX1")
TINY = """
crop_size: 64
batch_size: 2
crops_per_image: 2
epochs: 3
warmup_epochs: 1
ema_every: 1
validate_every: 1
mcr_max_samples: 64
mil_bags: 4
mil_bag_size: 4
licence: test licence
"""


@pytest.fixture(scope="module")
def data(monuseg_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    for name in ("images", "masks"):
        (root / name).mkdir()
    for stem in STEMS:
        (root / "images" / f"{stem}.tif").symlink_to(monuseg_dir / "images" / f"{stem}.tif")
        (root / "masks" / f"{stem}.png").symlink_to(
            monuseg_dir / "instance_labels" / f"{stem}.png")
    result = CliRunner().invoke(scribbles_command, [
        "--masks", str(root / "masks"), "--out", str(root / "scribbles"), "--ratio", "0.3"])
    assert result.exit_code == 0, result.output
    (root / "tiny.yaml").write_text(TINY, encoding="utf-8")
    return root


def _train(data, out, *extra):
    args = ["--images", str(data / "images"), "--scribbles", str(data / "scribbles"),
            "--out", str(out), "--config", str(data / "tiny.yaml"), "--mpp", "0.25",
            "--validation-fraction", "0.5", "--threads", "1", *extra]
    return CliRunner().invoke(train_command, args)


def test_train_writes_a_model_that_loads_and_segments(data, tmp_path):
    result = _train(data, tmp_path / "model", "--name", "tiny-model")
    assert result.exit_code == 0, result.output
    loaded = load_model(tmp_path / "model")
    card = loaded.card
    assert card.name == "tiny-model"
    assert card.mpp == 0.5 and card.licence == "test licence"
    assert card.training["hardware"]["precision"] == "float32"
    assert card.normalization["mean"] == [0.485, 0.456, 0.406]
    assert [g["ratio"] for g in card.training["scribbles"]] == [0.3]
    assert card.training["config"]["epochs"] == 3
    assert len(card.metrics["held_out_images"]) == 1
    assert 0.0 <= card.metrics["val_balanced_accuracy"] <= 1.0
    calibration = card.metrics["separation_calibration"]
    defaults = TrainConfig()
    pairs = [(t, h) for t in defaults.separation_thresholds for h in defaults.separation_heights_um]
    assert [(row["threshold"], row["h_um"]) for row in calibration["table"]] == pairs
    assert calibration["table"][0]["scribbles"] > 0
    assert (card.postprocess["threshold"], card.postprocess["h_um"]) in pairs
    assert card.postprocess["separate"] is True
    image = np.asarray(tifffile.imread(data / "images" / f"{STEMS[0]}.tif"))[:128, :96]
    with torch.inference_mode():
        logits = loaded.network(normalize(image))
    assert logits.shape == (1, 2, 128, 96) and torch.isfinite(logits).all()
    log = [json.loads(line) for line in (tmp_path / "model" / "train_log.jsonl").open()]
    assert [r["epoch"] for r in log] == [1, 2, 3]
    assert log[0]["stage"] == "warm-up" and log[-1]["stage"] == "s2lcm"
    assert all(key in log[-1] for key in ("pseudo", "mcr_full", "mcr_quarter", "mil", "val_pce"))
    assert all(np.isfinite(log[-1][k]) for k in ("loss", "mcr_full", "mcr_quarter", "mil"))
    segmented = CliRunner().invoke(main, [
        "segment", str(data / "images" / f"{STEMS[0]}.tif"), "--mpp", "0.25", "--model",
        str(tmp_path / "model"), "--out", str(tmp_path / "segmented"), "--workers", "0", "-q"])
    assert segmented.exit_code == 0, segmented.output
    summary = json.loads((tmp_path / "segmented" / f"{STEMS[0]}.json").read_text())
    assert summary["model_card"]["name"] == "tiny-model"
    assert (tmp_path / "segmented" / f"{STEMS[0]}.geojson").is_file()
    assert (tmp_path / "model" / "curves.png").stat().st_size > 1000
    assert load_model(tmp_path / "model" / "last").card.training["epoch"] == 3
    state = torch.load(tmp_path / "model" / "train_state" / "state.pt", weights_only=True)
    assert set(state["ema_maps"]) and state["run"]["epoch"] == 3

    tuned = _train(data, tmp_path / "tuned", "--init", str(tmp_path / "model"), "--epochs", "1")
    assert tuned.exit_code == 0, tuned.output
    first = json.loads((tmp_path / "tuned" / "train_log.jsonl").open().readline())
    assert first["epoch"] == 0 and first["val_pce"] == pytest.approx(card.metrics["val_pce"])


def test_resumed_run_equals_an_uninterrupted_one(data, tmp_path):
    assert _train(data, tmp_path / "full").exit_code == 0
    assert _train(data, tmp_path / "cut", "--epochs", "2").exit_code == 0
    resumed = _train(data, tmp_path / "cut", "--epochs", "3", "--resume")
    assert resumed.exit_code == 0, resumed.output
    full = load_file(str(tmp_path / "full" / "last" / "weights.safetensors"))
    cut = load_file(str(tmp_path / "cut" / "last" / "weights.safetensors"))
    assert all(torch.equal(full[k], cut[k]) for k in full)
    log = [json.loads(line) for line in (tmp_path / "cut" / "train_log.jsonl").open()]
    assert [r["epoch"] for r in log] == [1, 2, 3]


def test_without_held_out_images_the_latest_epoch_is_kept_with_a_warning(data, tmp_path, caplog):
    result = _train(data, tmp_path / "model", "--epochs", "1", "--validation-fraction", "0",
                    "--init", "s2lcm-monuseg")
    assert result.exit_code == 0, result.output
    assert "no image is held back" in caplog.text
    assert "(latest epoch 1)" in caplog.text
    card = load_model(tmp_path / "model").card
    assert card.metrics["selection"] == "latest epoch (no held-out images)"
    assert card.metrics["held_out_images"] == []
    assert card.postprocess == read_card(resolve_model("s2lcm-monuseg")).postprocess


def test_train_takes_several_folders_and_reads_each_file_at_its_own_mpp(data, tmp_path):
    examples = Path(__file__).resolve().parents[1] / "examples"
    result = _train(data, tmp_path / "model", "--epochs", "1", "--validation-fraction", "0",
                    "--images", str(examples),
                    "--scribbles", str(examples / "finetune" / "scribbles"))
    assert result.exit_code == 0, result.output
    recorded = read_card(tmp_path / "model").training["data"]
    assert recorded["images"] == [str(data / "images"), str(examples)]
    assert recorded["mpp_by_image"] == {
        STEMS[0]: 0.25, STEMS[1]: 0.25, "CMU-1-Small-Region": pytest.approx(0.499)}


def test_pair_files_refuses_a_stem_found_in_two_folders(data, tmp_path):
    from wsi_s2lcm.training.dataset import pair_files

    (tmp_path / f"{STEMS[0]}.png").write_bytes(b"")
    pairs = pair_files([data / "images"], [data / "scribbles"])
    assert [stem for stem, _, _ in pairs] == sorted(STEMS)
    with pytest.raises(ConfigError, match=f"two image files named {STEMS[0]}"):
        pair_files([data / "images", tmp_path], [data / "scribbles"])


def test_scribbles_named_after_the_image_with_its_suffix_pair(tmp_path):
    from wsi_s2lcm.training.dataset import file_stem, pair_files

    images, scribbles = tmp_path / "images", tmp_path / "scribbles"
    images.mkdir(), scribbles.mkdir()
    for name in ("A.svs", "B.ome.tif", "C.1.tif"):
        (images / name).write_bytes(b"")
    for name in ("A.svs.geojson", "B.ome.tif.json", "C.1.geojson"):
        (scribbles / name).write_text("{}")
    pairs = pair_files([images], [scribbles])
    assert [(stem, i.name, s.name) for stem, i, s in pairs] == [
        ("A", "A.svs", "A.svs.geojson"), ("B.ome", "B.ome.tif", "B.ome.tif.json"),
        ("C.1", "C.1.tif", "C.1.geojson")]
    assert file_stem(Path("A.svs")) == file_stem(Path("A.geojson")) == "A"
    (scribbles / "A.geojson").write_text("{}")
    with pytest.raises(ConfigError, match="two scribble files named A"):
        pair_files([images], [scribbles])


def test_plain_image_reads_its_recorded_resolution_before_mpp(data, tmp_path):
    from wsi_s2lcm.errors import MissingMppError
    from wsi_s2lcm.training.dataset import load_pair

    pixels = tifffile.imread(data / "images" / f"{STEMS[0]}.tif")
    tagged = tmp_path / f"{STEMS[0]}.tif"
    tifffile.imwrite(tagged, pixels, resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    scribbles = data / "scribbles" / f"{STEMS[0]}.geojson"
    config = load_train_config(data / "tiny.yaml", {"mpp": 0.5})
    (item,) = load_pair(STEMS[0], tagged, scribbles, 0.25, config)
    assert item.source_mpp == pytest.approx(0.5) and item.image.shape == pixels.shape
    (item,) = load_pair(STEMS[0], data / "images" / f"{STEMS[0]}.tif", scribbles, 0.25, config)
    assert item.source_mpp == 0.25 and item.image.shape == (500, 500, 3)
    with pytest.raises(MissingMppError, match="--mpp"):
        load_pair(STEMS[0], data / "images" / f"{STEMS[0]}.tif", scribbles, None, config)


def test_cpu_bfloat16_trains_in_bfloat16_and_records_it(data, tmp_path):
    config = tmp_path / "bf16.yaml"
    config.write_text(TINY + "cpu_bfloat16: true\n", encoding="utf-8")
    result = _train(data, tmp_path / "model", "--epochs", "1", "--config", str(config))
    assert result.exit_code == 0, result.output
    card = read_card(tmp_path / "model" / "last")
    assert card.training["hardware"]["precision"] == "bfloat16"
    assert card.training["config"]["cpu_bfloat16"] is True


def test_existing_model_is_not_overwritten_silently(data, tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "card.json").write_text("{}")
    result = _train(data, tmp_path / "model")
    assert isinstance(result.exception, OutputExistsError)


def test_a_config_recorded_before_a_value_existed_reads_it_at_its_default(data, tmp_path):
    assert _train(data, tmp_path / "model", "--epochs", "1").exit_code == 0
    state_path = tmp_path / "model" / "train_state" / "state.pt"
    state = torch.load(state_path, weights_only=True)
    del state["config"]["separation_heights_um"]
    del state["run"]["amp"]  # states saved before bfloat16 on the CPU: they ran in float32
    assert with_defaults(state["config"]) == load_train_config(data / "tiny.yaml", {
        "epochs": 1, "mpp": 0.5, "validation_fraction": 0.5}).to_dict()
    torch.save(state, state_path)
    resumed = _train(data, tmp_path / "model", "--resume", "--epochs", "2")
    assert resumed.exit_code == 0, resumed.output
    assert read_card(tmp_path / "model" / "last").training["hardware"]["precision"] == "float32"


def test_unknown_config_key_is_refused(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("epochs: 3\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="learning_rate"):
        load_train_config(path)


def test_augmentation_moves_image_target_prior_and_ids_together():
    rng = np.random.default_rng(0)
    image = np.zeros((100, 120, 3), np.uint8)
    image[..., 0] = 255 * (np.arange(120) < 60)
    target = np.where(np.arange(120) < 60, 1, 0).astype(np.uint8)[None].repeat(100, 0)
    prior = target.astype(np.float32)
    ids = np.where(np.arange(120) < 60, 7, 0).astype(np.int32)[None].repeat(100, 0)
    config = TrainConfig(crop_size=64, brightness=0, contrast=0, saturation=0, hue=0,
                         stain_alpha=0, stain_beta=0)
    for _ in range(20):
        state = rng.bit_generator.state
        rgb, crop_target, crop_prior, crop_ids = augment_sample(image, target, prior, config,
                                                                rng, ids)
        assert rgb.shape == (64, 64, 3) and crop_target.shape == (64, 64)
        red = rgb[..., 0] > 0.5
        assert (red == (crop_target == 1)).mean() > 0.97
        assert (np.abs(crop_prior - crop_target) < 0.5).mean() > 0.97
        assert crop_ids.dtype == np.int32 and set(np.unique(crop_ids)) <= {0, 7}
        assert ((crop_ids == 7) == (crop_target == 1)).all()
        # The ids draw no random number: the same crop comes out without them.
        after = rng.bit_generator.state
        rng.bit_generator.state = state
        again, again_target, _, none = augment_sample(image, target, prior, config, rng)
        assert none is None and np.array_equal(again_target, crop_target)
        assert np.array_equal(again, rgb) and rng.bit_generator.state == after


def test_every_config_value_is_documented_with_its_default():
    import dataclasses
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "TRAINING.md").read_text()
    for field in dataclasses.fields(TrainConfig):
        assert f"`{field.name}`" in text, f"{field.name} missing from docs/TRAINING.md"


def test_slide_scribbles_are_read_as_regions_around_them(slides_dir, tmp_path):
    from wsi_s2lcm.slide import open_slide
    from wsi_s2lcm.training.dataset import load_pair

    path = slides_dir / "CMU-1-Small-Region.svs"
    features = [
        {"type": "Feature", "geometry": {"type": "LineString",
                                         "coordinates": [[600.0, 1500.0], [700.0, 1500.0]]},
         "properties": {"objectType": "annotation", "classification": {"name": "Nucleus"}}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [
            [[100, 100], [140, 100], [140, 140], [100, 140], [100, 100]]]},
         "properties": {"objectType": "annotation", "classification": {"name": "Background"}}},
    ]
    scribbles = tmp_path / "CMU-1-Small-Region.geojson"
    scribbles.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    config = TrainConfig(crop_size=64, slide_region_size=512)
    regions = load_pair("CMU-1-Small-Region", path, scribbles, None, config)
    assert [r.key for r in regions] == ["CMU-1-Small-Region@0,0", "CMU-1-Small-Region@512,1024"]
    slide = open_slide(path)
    scale = 0.5 / slide.mpp
    second = regions[1]
    assert np.array_equal(second.image, slide.read(512, 1024, 512, 512, 0.5))
    row = int(1500 / scale) - 1024
    assert (second.target[row, int(610 / scale) - 512: int(690 / scale) - 512] == 1).all()
    assert (second.target == 1).sum() <= 2 * 101 and (second.target == 0).sum() == 0
    assert (regions[0].target == 0).sum() == pytest.approx((40 / scale) ** 2, rel=0.1)
    assert np.array_equal(second.nucleus_ids > 0, second.target == 1)
    assert not regions[0].nucleus_ids.any()

    far = [dict(features[0], geometry={"type": "LineString",
                                       "coordinates": [[9000, 9000], [9100, 9000]]})]
    scribbles.write_text(json.dumps(far))
    with pytest.raises(AnnotationError, match="no scribble lies inside"):
        load_pair("CMU-1-Small-Region", path, scribbles, None, config)


def test_bad_scribble_file_exits_2_with_a_one_line_message(data, tmp_path):
    from wsi_s2lcm.cli import main

    scribbles = tmp_path / "scribbles"
    scribbles.mkdir()
    for stem in STEMS:
        (scribbles / f"{stem}.geojson").write_text("not json", encoding="utf-8")
    result = CliRunner().invoke(main, [
        "train", "--images", str(data / "images"), "--scribbles", str(scribbles),
        "--out", str(tmp_path / "model"), "--mpp", "0.25"])
    assert result.exit_code == 2
    assert "not a GeoJSON file" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "model").exists()


def test_post_warmup_terms_ramp_in_linearly():
    from wsi_s2lcm.training.trainer import _ramp

    config = TrainConfig(epochs=30, warmup_epochs=10, ramp_epochs=4)
    assert [_ramp(config, e) for e in (0, 9.9, 10, 11, 13, 14, 20)] == [
        0.0, 0.0, 0.0, 0.25, 0.75, 1.0, 1.0]
    assert _ramp(TrainConfig(warmup_epochs=10, ramp_epochs=0), 10) == 1.0


def test_init_model_starts_from_saved_weights_and_refuses_another_architecture(tmp_path):
    from wsi_s2lcm.models import ModelCard, save_model
    from wsi_s2lcm.network import build_network
    from wsi_s2lcm.training.trainer import _load_initial_weights

    torch.manual_seed(3)
    source = build_network({})
    card = ModelCard(name="s", architecture={}, mpp=0.5, normalization=NORMALIZATION)
    save_model(tmp_path / "m", card, source)
    target = build_network({})
    _load_initial_weights(target, str(tmp_path / "m"), 0.5)
    assert torch.equal(target.layer3[0].conv1.weight, source.layer3[0].conv1.weight)
    assert torch.equal(target.head.weight, source.head.weight)
    with pytest.raises(ConfigError, match="do not fit"):
        _load_initial_weights(build_network({"encoder": "resnet50"}), str(tmp_path / "m"), 0.5)


def test_fine_tuning_keeps_the_init_models_resolution_unless_told(tmp_path, caplog):
    from wsi_s2lcm.models import ModelCard, save_model
    from wsi_s2lcm.network import build_network
    from wsi_s2lcm.training.trainer import _load_initial_weights

    card = ModelCard(name="s", architecture={}, mpp=0.25, normalization=NORMALIZATION)
    save_model(tmp_path / "m", card, build_network({}))
    assert load_train_config(None, {"init_model": str(tmp_path / "m")}).mpp == 0.25
    assert load_train_config(None, {"init_model": str(tmp_path / "m"), "mpp": 0.5}).mpp == 0.5
    assert load_train_config(None, {}).mpp == 0.5
    with caplog.at_level(logging.WARNING, logger="wsi_s2lcm.training.trainer"):
        _load_initial_weights(build_network({}), str(tmp_path / "m"), 0.25)
        assert not caplog.records
        _load_initial_weights(build_network({}), str(tmp_path / "m"), 0.5)
    assert "trained at 0.25 µm/px and is now trained at 0.5" in caplog.text


def test_cosine_schedule_falls_from_the_rates_to_their_floor():
    from wsi_s2lcm.network import build_network
    from wsi_s2lcm.training.trainer import (_optimizer, _set_learning_rates,
                                            learning_rate_factor)

    config = TrainConfig(epochs=5, warmup_epochs=5, lr_schedule="cosine", lr_min_factor=0.1,
                         lr_encoder=1e-3, lr_decoder=4e-3)
    factors = [learning_rate_factor(config, e) for e in range(5)]
    assert factors[0] == 1.0 and factors[-1] == pytest.approx(0.1)
    assert factors[2] == pytest.approx(0.55)
    assert all(a > b for a, b in zip(factors, factors[1:]))
    assert learning_rate_factor(TrainConfig(epochs=5, warmup_epochs=5), 4) == 1.0
    optimizer = _optimizer(build_network({}), config)
    _set_learning_rates(optimizer, config, 4)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-4, 4e-4])
    with pytest.raises(ConfigError, match="lr_schedule"):
        TrainConfig(lr_schedule="step")


def test_a_model_started_from_encoder_weights_loads_without_their_file(data, tmp_path):
    torch.manual_seed(2)
    path = tmp_path / "resnet18.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    config = tmp_path / "config.yaml"
    config.write_text((data / "tiny.yaml").read_text() + f"encoder_weights: {path}\n")
    result = _train(data, tmp_path / "model", "--epochs", "1", "--config", str(config))
    assert result.exit_code == 0, result.output
    path.unlink()
    card = load_model(tmp_path / "model").card
    assert card.architecture["encoder_weights"] is None
    assert card.training["config"]["encoder_weights"] == str(path)


@pytest.mark.parametrize("device, message", [("cuda:7", "CUDA is not available"),
                                             ("gpu", "must be auto, cpu, cuda or cuda:N")])
def test_an_unusable_device_exits_2_before_training(data, tmp_path, device, message):
    result = CliRunner().invoke(main, [
        "train", "--images", str(data / "images"), "--scribbles", str(data / "scribbles"),
        "--out", str(tmp_path / "model"), "--config", str(data / "tiny.yaml"), "--mpp", "0.25",
        "--device", device])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "model").exists()


def test_overwrite_removes_the_earlier_run_before_training(data, tmp_path, monkeypatch):
    assert _train(data, tmp_path / "model", "--epochs", "1").exit_code == 0
    assert (tmp_path / "model" / "train_state").is_dir()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("wsi_s2lcm.training.trainer._train_epoch", interrupted)
    result = _train(data, tmp_path / "model", "--epochs", "1", "--overwrite")
    assert result.exit_code != 0
    left = sorted(p.name for p in (tmp_path / "model").iterdir())
    assert left == [], "nothing of the earlier run may pass for the new one"
