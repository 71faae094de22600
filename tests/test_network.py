"""The U-Net and its training-only heads, and their round trip through the model directory."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision

from wsi_s2lcm.models import ModelCard, load_model, save_model
from wsi_s2lcm.network import DEFAULT_ARCHITECTURE, build_network


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_forward_gives_two_class_logits_at_input_resolution():
    network = build_network({}).eval()
    with torch.inference_mode():
        logits = network(torch.zeros(2, 3, 64, 96))
    assert logits.shape == (2, 2, 64, 96)


def test_forward_features_returns_decoder_features_at_their_scales():
    network = build_network({}).eval()
    with torch.inference_mode():
        logits, features = network.forward_features(torch.zeros(1, 3, 64, 64))
    assert [f.shape[1] for f in features] == [256, 128, 64, 32, 16]
    assert [f.shape[-1] for f in features] == [4, 8, 16, 32, 64]
    assert network.hypercolumn_channels == 240
    assert torch.equal(logits, network(torch.zeros(1, 3, 64, 64)))


def test_training_heads_have_the_names_models_drops():
    network = build_network({})
    heads = {name for name, _ in network.named_children()}
    assert {"projection_full", "projection_quarter", "mil"} <= heads
    full = network.projection_full(torch.zeros(2, 16, 8, 8))
    quarter = network.projection_quarter(torch.zeros(2, 64, 8, 8))
    assert full.shape == quarter.shape == (2, 32, 8, 8)
    logits, weights = network.mil(torch.randn(5, 7, 240))
    assert logits.shape == (5,)
    assert torch.allclose(weights.sum(dim=1), torch.ones(5))


def test_input_not_multiple_of_32_is_refused():
    with pytest.raises(ValueError, match="multiples of 32"):
        build_network({})(torch.zeros(1, 3, 48, 64))


@pytest.mark.parametrize(
    "architecture", [{"encoder": "vgg16"}, {"type": "fpn"}, {"dropout": 0.5},
                     {"decoder_channels": [1, 2, 3]}]
)
def test_invalid_architecture_raises_value_error(architecture):
    with pytest.raises(ValueError):
        build_network(architecture)


def test_default_architecture_is_json_able():
    assert json.loads(json.dumps(DEFAULT_ARCHITECTURE)) == DEFAULT_ARCHITECTURE


def test_resnet50_encoder_builds_with_its_channels():
    network = build_network({"encoder": "resnet50"}).eval()
    with torch.inference_mode():
        assert network(torch.zeros(1, 3, 32, 32)).shape == (1, 2, 32, 32)


def test_local_encoder_weights_are_loaded(tmp_path):
    torch.manual_seed(1)
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pt"
    torch.save(reference.state_dict(), path)
    network = build_network({"encoder_weights": str(path)})
    assert torch.equal(network.stem[0].weight, reference.conv1.weight)
    assert torch.equal(network.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)


def test_encoder_weights_of_another_network_are_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
    with pytest.raises(ValueError, match="does not fit"):
        build_network({"encoder_weights": str(path)})


def test_saved_model_loads_without_training_heads_and_predicts_the_same(tmp_path):
    network = build_network({}).eval()
    card = ModelCard(name="t", architecture=dict(DEFAULT_ARCHITECTURE), mpp=0.5,
                     normalization={"mean": [0.5] * 3, "std": [0.25] * 3})
    save_model(tmp_path / "m", card, network)
    loaded = load_model(tmp_path / "m")
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(loaded.network(x), network(x), atol=1e-6)
    from safetensors.torch import load_file

    keys = load_file(str(tmp_path / "m" / "weights.safetensors"))
    assert not any(k.startswith(("projection_full", "projection_quarter", "mil")) for k in keys)
