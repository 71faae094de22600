"""Predictors: RGB tile batches in, nucleus probability maps out.

A predictor is any callable ``predictor(batch) -> probabilities`` with an ``mpp`` attribute,
taking ``(N, H, W, 3)`` uint8 RGB and returning ``(N, H, W)`` float32 nucleus probabilities.
:class:`TorchPredictor` runs a model directory's network; tests pass simple fakes. Workers build
predictors from a picklable *spec* once per process (:func:`build_predictor` caches them).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, Protocol

import numpy as np

from wsi_s2lcm.errors import ConfigError

logger = logging.getLogger(__name__)

_MULTIPLE = 32


class Predictor(Protocol):
    """What the segmentation pipeline needs from a model."""

    mpp: float

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Map ``(N, H, W, 3)`` uint8 RGB to ``(N, H, W)`` float32 nucleus probability."""


class PredictorSpec(Protocol):
    """A picklable recipe for a predictor, built once per worker process."""

    def build(self) -> Predictor:
        """Return the predictor (cached per process by :func:`build_predictor`)."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A model directory and the device to run it on."""

    model_dir: str
    device: str = "auto"
    cpu_threads: int | None = None

    def build(self) -> "TorchPredictor":
        """Load the model and return a predictor on the resolved device."""
        from wsi_s2lcm.models import load_model

        return TorchPredictor(
            load_model(self.model_dir), device=self.device, cpu_threads=self.cpu_threads
        )


@functools.lru_cache(maxsize=4)
def build_predictor(spec: PredictorSpec) -> Predictor:
    """Build a predictor from its spec once per process and reuse it."""
    return spec.build()


def resolve_device(device: str) -> str:
    """Turn ``auto``, ``cpu``, ``cuda`` or ``cuda:i`` into a usable torch device name.

    Raises
    ------
    ConfigError
        When CUDA is asked for but not available, or the name is not understood.
    """
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"--device {device}: CUDA is not available on this machine; use --device cpu "
                "or --device auto."
            )
        index = device.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise ConfigError(
                f"--device {device}: there are {torch.cuda.device_count()} CUDA device(s)."
            )
        return device
    raise ConfigError(f"--device {device!r} must be auto, cpu, cuda or cuda:N.")


class TorchPredictor:
    """Runs a loaded model on batches, with AMP and channels-last on CUDA.

    Parameters
    ----------
    model
        A :class:`wsi_s2lcm.models.LoadedModel`.
    device
        ``auto``, ``cpu``, ``cuda`` or ``cuda:i``.
    cpu_threads
        Torch threads for CPU inference (``None``: torch's setting as it stands). Workers
        running side by side each get their share of the cores instead of all of them. Torch
        keeps one thread count per process, so it is set before each call: predictors built
        with different counts in one process each run with their own.
    """

    def __init__(self, model: Any, device: str = "auto", cpu_threads: int | None = None) -> None:
        import torch

        self.card = model.card
        self.mpp = float(model.card.mpp)
        self.device = torch.device(resolve_device(device))
        self.amp = self.device.type == "cuda"
        self.cpu_threads = cpu_threads if self.device.type == "cpu" else None
        network = model.network.to(self.device).eval()
        if self.amp:
            network = network.to(memory_format=torch.channels_last)
        self.network = network
        norm = model.card.normalization
        self._mean = torch.tensor(norm["mean"], dtype=torch.float32, device=self.device)
        self._std = torch.tensor(norm["std"], dtype=torch.float32, device=self.device)
        logger.info("model %s on %s (AMP %s)", model.card.name, self.device, self.amp)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Nucleus probabilities for a batch of RGB images (any size; padded internally)."""
        import torch

        if batch.ndim != 4 or batch.shape[-1] != 3:
            raise ValueError(f"expected (N, H, W, 3) RGB, got shape {batch.shape}")
        if self.cpu_threads and torch.get_num_threads() != self.cpu_threads:
            torch.set_num_threads(self.cpu_threads)
        height, width = batch.shape[1:3]
        padded = _pad_to_multiple(batch, _MULTIPLE)
        with torch.inference_mode():
            x = torch.from_numpy(padded).to(self.device, non_blocking=True)
            x = (x.permute(0, 3, 1, 2).float() / 255.0 - self._mean[:, None, None]) / self._std[
                :, None, None
            ]
            if self.amp:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type=self.device.type, enabled=self.amp):
                logits = self.network(x)
            probability = torch.softmax(logits.float(), dim=1)[:, 1]
        return probability[:, :height, :width].cpu().numpy().astype(np.float32)


def _pad_to_multiple(batch: np.ndarray, multiple: int) -> np.ndarray:
    """Pad height and width up to a multiple by mirroring the batch at its bottom and right edges."""
    height, width = batch.shape[1:3]
    pad_h = -height % multiple
    pad_w = -width % multiple
    if not pad_h and not pad_w:
        return np.ascontiguousarray(batch)
    return np.pad(batch, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="symmetric")
