"""Model directories: cards, safe weights, errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from wsi_s2lcm.errors import ModelError
from wsi_s2lcm.models import CARD_FILE, WEIGHTS_FILE, load_model, read_card, resolve_model
from wsi_s2lcm.predictor import TorchPredictor


def test_a_saved_model_loads_and_predicts(untrained_model):
    model = load_model(untrained_model)
    assert model.card.mpp == 0.5
    predictor = TorchPredictor(model, device="cpu")
    batch = np.full((2, 100, 70, 3), 200, dtype=np.uint8)
    probability = predictor(batch)
    assert probability.shape == (2, 100, 70) and probability.dtype == np.float32
    assert ((probability >= 0) & (probability <= 1)).all()


def test_training_heads_are_not_saved(untrained_model):
    from safetensors import safe_open

    with safe_open(str(untrained_model / WEIGHTS_FILE), "pt") as weights:
        keys = list(weights.keys())
    assert keys and not any(k.startswith(("projection_", "mil.")) for k in keys)


@pytest.fixture()
def model_copy(tmp_path, untrained_model):
    return shutil.copytree(untrained_model, tmp_path / "copy")


def test_missing_weights(model_copy):
    (model_copy / WEIGHTS_FILE).unlink()
    with pytest.raises(ModelError, match="weights.safetensors"):
        load_model(model_copy)


def test_a_pickle_is_not_accepted_as_weights(model_copy):
    import torch

    torch.save({"anything": torch.zeros(1)}, model_copy / WEIGHTS_FILE)
    with pytest.raises(ModelError, match="cannot read the weights"):
        load_model(model_copy)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda card: card.pop("mpp"), "missing"),
        (lambda card: card.update(extra=1), "unknown"),
        (lambda card: card.update(mpp=-1), "mpp"),
        (lambda card: card.update(format=99), "newer"),
        (lambda card: card.update(format="1"), "integer"),
        (lambda card: card.update(normalization={"mean": [0, 0, 0]}), "normalization"),
        (lambda card: card.update(postprocess={"h_um": 0.5, "from_a_newer_version": 1}),
         "postprocess"),
    ],
)
def test_bad_cards_are_refused(model_copy, edit, message):
    card = json.loads((model_copy / CARD_FILE).read_text())
    edit(card)
    (model_copy / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(ModelError, match=message):
        read_card(model_copy)


def test_weights_of_another_shape_are_refused_as_a_model_error(model_copy):
    from safetensors.torch import load_file, save_file

    weights = load_file(str(model_copy / WEIGHTS_FILE))
    name = next(k for k in weights if weights[k].ndim == 4)
    weights[name] = weights[name][:, :1].contiguous()
    save_file(weights, str(model_copy / WEIGHTS_FILE))
    with pytest.raises(ModelError, match="do not match"):
        load_model(model_copy)
    del weights[name]
    weights["no_such_layer.weight"] = weights[next(iter(weights))].clone()
    save_file(weights, str(model_copy / WEIGHTS_FILE))
    with pytest.raises(ModelError, match="no_such_layer"):
        load_model(model_copy)


def test_not_json_card(model_copy):
    (model_copy / CARD_FILE).write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        read_card(model_copy)


def test_unknown_model_names_the_shipped_ones(tmp_path):
    with pytest.raises(ModelError, match="wsi-s2lcm models"):
        resolve_model("no-such-model")
    with pytest.raises(ModelError, match=CARD_FILE):
        resolve_model(tmp_path)


def test_half_precision_weights_predict_like_full_precision(tmp_path, untrained_model):
    from wsi_s2lcm.models import save_model

    full = load_model(untrained_model)
    half_dir = save_model(tmp_path / "half", full.card, full.network, half=True)
    assert (half_dir / WEIGHTS_FILE).stat().st_size < 0.6 * (untrained_model / WEIGHTS_FILE).stat().st_size
    half = load_model(half_dir)
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, size=(1, 96, 96, 3), dtype=np.uint8)
    a = TorchPredictor(full, device="cpu")(batch)
    b = TorchPredictor(half, device="cpu")(batch)
    assert np.abs(a - b).max() < 0.02


def test_each_predictor_runs_with_its_own_thread_count(untrained_model):
    import torch

    before = torch.get_num_threads()
    try:
        one = TorchPredictor(load_model(untrained_model), device="cpu", cpu_threads=1)
        two = TorchPredictor(load_model(untrained_model), device="cpu", cpu_threads=2)
        batch = np.zeros((1, 32, 32, 3), dtype=np.uint8)
        one(batch)
        assert torch.get_num_threads() == 1
        two(batch)
        assert torch.get_num_threads() == 2
        one(batch)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_bfloat16_support_is_read_from_the_cpu_flags(tmp_path):
    from wsi_s2lcm.predictor import cpu_computes_bfloat16, resolve_amp

    def cpuinfo(flags: str):
        path = tmp_path / f"cpuinfo-{len(flags)}"
        path.write_text(f"processor\t: 0\nflags\t\t: fpu sse2 {flags}\nbugs\t\t: spectre\n")
        return path

    assert cpu_computes_bfloat16(cpuinfo("avx2 avx512f amx_bf16 amx_tile"))
    assert cpu_computes_bfloat16(cpuinfo("avx512f avx512_bf16"))
    assert not cpu_computes_bfloat16(cpuinfo("avx2 avx512f avx512_vnni"))
    assert not cpu_computes_bfloat16(tmp_path / "missing")
    assert resolve_amp("cuda:0", None) and resolve_amp("cpu", True)
    assert not resolve_amp("cuda", False)


def test_bfloat16_predicts_like_float32_on_a_real_image(monuseg_dir):
    import tifffile

    image = tifffile.imread(monuseg_dir / "images" / "TCGA-21-5786-01Z-00-DX1.tif")[:512, :512]
    model = load_model()
    full = TorchPredictor(model, device="cpu", amp=False)
    mixed = TorchPredictor(model, device="cpu", amp=True)
    assert (full.precision, mixed.precision) == ("float32", "bfloat16")
    p32, p16 = full(image[None])[0], mixed(image[None])[0]
    assert not np.array_equal(p32, p16), "bfloat16 should round somewhere"
    # Measured on the 6 validation images: at most 0.016 apart, 0.07 % of pixels flipped.
    assert np.abs(p32 - p16).max() < 0.05
    assert np.mean((p32 > 0.5) != (p16 > 0.5)) < 0.002


def test_tta_is_the_mean_over_the_eight_orientations_and_turns_with_the_tile(monuseg_dir):
    import tifffile

    image = tifffile.imread(monuseg_dir / "images" / "TCGA-21-5786-01Z-00-DX1.tif")[:64, :96]
    model = load_model()
    plain = TorchPredictor(model, device="cpu", amp=False)
    tta = TorchPredictor(model, device="cpu", amp=False, tta=True)
    views = [np.rot90(image, k) for k in range(4)]
    views += [np.fliplr(view) for view in views]
    undo = [lambda p, k=k: np.rot90(p, -k) for k in range(4)]
    undo += [lambda p, k=k: np.rot90(np.fliplr(p), -k) for k in range(4)]
    by_hand = np.mean([u(plain(np.ascontiguousarray(v)[None])[0]) for u, v in zip(undo, views)],
                      axis=0)
    averaged = tta(image[None])[0]
    assert averaged.shape == (64, 96)
    assert np.abs(averaged - by_hand).max() < 1e-5
    assert np.abs(averaged - plain(image[None])[0]).max() > 0.01, "the network is not symmetric"
    turned = tta(np.ascontiguousarray(np.rot90(image))[None])[0]
    assert np.abs(turned - np.rot90(averaged)).max() < 1e-5
    mirrored = tta(np.ascontiguousarray(image[::-1])[None])[0]
    assert np.abs(mirrored - averaged[::-1]).max() < 1e-5
