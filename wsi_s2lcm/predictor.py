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
from pathlib import Path
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
    amp: bool | None = None
    tta: bool = False

    def build(self) -> "TorchPredictor":
        """Load the model and return a predictor on the resolved device."""
        from wsi_s2lcm.models import load_model

        return TorchPredictor(
            load_model(self.model_dir), device=self.device, cpu_threads=self.cpu_threads,
            amp=self.amp, tta=self.tta,
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


def cpu_computes_bfloat16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether this CPU has bfloat16 instructions (AMX-BF16 or AVX512-BF16).

    Read from the flags of ``cpuinfo`` (Linux); False where the file cannot be read, so other
    systems run in float32 unless bfloat16 is asked for.
    """
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return bool({"amx_bf16", "avx512_bf16"} & set(line.partition(":")[2].split()))
    return False


def resolve_amp(device: str, amp: bool | None) -> bool:
    """Whether to run in mixed precision: ``amp`` when given, else on CUDA or a bfloat16 CPU.

    ``device`` is a resolved torch device name (:func:`resolve_device`).
    """
    if amp is not None:
        return bool(amp)
    return device.startswith("cuda") or cpu_computes_bfloat16()


def precision_name(device: str, amp: bool) -> str:
    """The floating-point type a network computes in on ``device``: float16, bfloat16 or float32."""
    if not amp:
        return "float32"
    return "float16" if device.startswith("cuda") else "bfloat16"


def autocast(device: str, enabled: bool) -> Any:
    """``torch.autocast`` for ``device``: float16 on CUDA, bfloat16 on the CPU; off unless enabled."""
    import torch

    on_cuda = device.startswith("cuda")
    return torch.autocast("cuda" if on_cuda else "cpu",
                          dtype=torch.float16 if on_cuda else torch.bfloat16, enabled=enabled)


class TorchPredictor:
    """Runs a loaded model on batches, channels-last, in mixed precision where it is fast.

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
    amp
        Mixed precision: float16 autocast on CUDA, bfloat16 on the CPU. ``None`` turns it on
        where it is fast: always on CUDA, and on CPUs with bfloat16 instructions
        (:func:`cpu_computes_bfloat16`). On the 6 MoNuSeg validation images bfloat16 moved the
        default model's probabilities by at most 0.016 and its metrics by at most 0.0003
        (docs/SEGMENT.md).
    tta
        Test-time augmentation: the mean probability over the 8 rotations and mirror images
        of each tile (8 times the network's work; measured in docs/SEGMENT.md).
    """

    def __init__(
        self,
        model: Any,
        device: str = "auto",
        cpu_threads: int | None = None,
        amp: bool | None = None,
        tta: bool = False,
    ) -> None:
        import torch

        self.card = model.card
        self.mpp = float(model.card.mpp)
        self.device = torch.device(resolve_device(device))
        self.amp = resolve_amp(self.device.type, amp)
        self.cpu_threads = cpu_threads if self.device.type == "cpu" else None
        self.network = model.network.to(self.device).eval().to(memory_format=torch.channels_last)
        norm = model.card.normalization
        self._mean = torch.tensor(norm["mean"], dtype=torch.float32, device=self.device)
        self._std = torch.tensor(norm["std"], dtype=torch.float32, device=self.device)
        self.precision = precision_name(self.device.type, self.amp)
        self.tta = tta
        logger.info("model %s on %s (%s%s)", model.card.name, self.device, self.precision,
                    ", 8 orientations" if tta else "")

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
            probability = self._mean_over_orientations(x) if self.tta else self._probability(x)
        return probability[:, :height, :width].cpu().numpy().astype(np.float32)

    def _probability(self, x: Any) -> Any:
        """``(N, H, W)`` nucleus probability of a normalized ``(N, 3, H, W)`` batch."""
        import torch

        with autocast(self.device.type, self.amp):
            logits = self.network(x.contiguous(memory_format=torch.channels_last))
        return torch.softmax(logits.float(), dim=1)[:, 1]

    def _mean_over_orientations(self, x: Any) -> Any:
        """The probability averaged over the 8 rotations and mirror images of the batch.

        Each orientation's probability is turned back before it is added, so the mean is that
        of the batch as given.
        """
        import torch

        total = torch.zeros(x.shape[0], *x.shape[2:], device=x.device)
        for quarter_turns in range(4):
            turned = torch.rot90(x, quarter_turns, dims=(2, 3))
            for mirrored in (False, True):
                view = turned.flip(3) if mirrored else turned
                probability = self._probability(view)
                if mirrored:
                    probability = probability.flip(2)
                total += torch.rot90(probability, -quarter_turns, dims=(1, 2))
        return total / 8


def _pad_to_multiple(batch: np.ndarray, multiple: int) -> np.ndarray:
    """Pad height and width up to a multiple by mirroring the batch at its bottom and right edges."""
    height, width = batch.shape[1:3]
    pad_h = -height % multiple
    pad_w = -width % multiple
    if not pad_h and not pad_w:
        return np.ascontiguousarray(batch)
    return np.pad(batch, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="symmetric")
