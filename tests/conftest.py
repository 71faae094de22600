"""Shared fixtures: the real data in ../shared/data relative to the project root."""

from __future__ import annotations

from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Directory of the real slides and MoNuSeg images (see ../shared/data/README.md)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real data not found at {SHARED_DATA}; tests need ../shared/data")
    return SHARED_DATA


@pytest.fixture(scope="session")
def slides_dir(shared_data: Path) -> Path:
    """The real whole-slide images."""
    return shared_data / "slides"


@pytest.fixture(scope="session")
def monuseg_dir(shared_data: Path) -> Path:
    """The MoNuSeg 2018 training set (30 images with instance labels)."""
    return shared_data / "monuseg-train"


@pytest.fixture(scope="session")
def untrained_model(tmp_path_factory) -> Path:
    """A model directory with random weights: for plumbing tests only, never for quality."""
    import torch

    from wsi_s2lcm.models import ModelCard, save_model
    from wsi_s2lcm.network import build_network

    torch.manual_seed(0)
    architecture = {"encoder": "resnet18"}
    card = ModelCard(
        name="untrained-test-model",
        architecture=architecture,
        mpp=0.5,
        normalization={"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        postprocess={},
        training={"note": "random initialization, for plumbing tests"},
    )
    return save_model(tmp_path_factory.mktemp("model") / "untrained", card, build_network(architecture))
