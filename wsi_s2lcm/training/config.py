"""The training configuration: one frozen dataclass, every value documented with its source.

Sources: "METHOD" values are those of Scribble2Label / ScribbleCont / S2L-CM as read from their
code and figure (see docs/TRAINING.md); "[inferred]" values are our choices where the record is
silent or where the CPU demands a reduction. YAML enters through :func:`load_train_config`, which
rejects unknown keys (:func:`wsi_s2lcm.config.from_mapping`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

from wsi_s2lcm.config import from_mapping
from wsi_s2lcm.errors import ConfigError

SCRIBBLE_MANIFEST = "scribbles.json"
"""Written by ``wsi-s2lcm scribbles`` beside the generated files (ratio, seed); not scribbles."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How a model is trained from scribbles (S2L-CM).

    Attributes
    ----------
    mpp : float
        µm/px the model is trained (and later run) at. [inferred] 0.5 (20x); with an
        ``init_model`` and no ``mpp`` given, that model's (:func:`load_train_config`).
    encoder : str
        ResNet encoder: resnet18 (CPU default), resnet34 (ScribbleCont), resnet50 (S2L).
    encoder_weights : str
        Local torchvision ResNet state dict to start from; "" = random init (nothing is
        downloaded). METHOD uses ImageNet weights.
    init_model : str
        A model directory (or shipped model name) whose weights start the network instead of
        random ones (fine-tuning); "" = none. [inferred]
    crop_size : int
        Training crop side at ``mpp``, a multiple of 32. METHOD 256.
    batch_size : int
        Crops per step. METHOD 30; [inferred] 8 for the CPU.
    crops_per_image : int
        Crops drawn from each training image per epoch. METHOD 1 (an epoch is one pass).
    epochs : int
        Total epochs. [inferred] 200.
    warmup_epochs : int
        Epochs of partial cross-entropy only. METHOD 100.
    lr_encoder, lr_decoder : float
        RAdam learning rates of the encoder and of the decoder and heads. METHOD 3e-4, 3e-3.
    lr_schedule : str
        "constant" (METHOD) or "cosine": the rates follow half a cosine from their value at
        epoch 0 down to ``lr_min_factor`` times it at the last epoch, set at each epoch's start.
        [inferred]
    lr_min_factor : float
        Final fraction of the learning rates under the cosine schedule. [inferred] 0.05.
    weight_decay : float
        METHOD 5e-5.
    stroke_width_um : float
        Width (µm) of a scribble line when rasterized; QuPath lines have none. [inferred] 0.5
        (1 px at 0.5 µm/px, the 1-px curves of METHOD).
    nucleus_classes, background_classes : tuple of str
        QuPath class names (case-insensitive) meaning nucleus / background. [inferred]
    validation_fraction : float
        Fraction of the images held back to select the checkpoint on their scribbles (when no
        split is given). [inferred] 0.2.
    validate_every : int
        Epochs between held-out evaluations and checkpoints. [inferred] 5.
    slide_region_size : int
        Side (px at ``mpp``) of the regions read around scribbles on a whole slide. [inferred]
    separation_heights_um : tuple of float
        Candidate h-maxima heights (µm) of the watershed that separates touching nuclei. After
        training, the height that splits or merges the fewest nucleus scribbles of the held-out
        images goes on the model card (:mod:`wsi_s2lcm.training.calibrate`). [inferred]; empty:
        no calibration, the package default is used.
    separation_thresholds : tuple of float
        Candidate probability thresholds of the foreground, calibrated together with the height:
        a higher threshold cuts more necks between touching nuclei but loses faint ones, and the
        pair with the fewest split, merged and missed held-out nucleus scribbles goes on the
        card. [inferred] (0.4, 0.5, 0.6, 0.7) (eleventh session, docs/TRAINING.md); empty: the
        threshold of ``init_model``'s card or the package default is kept.
    ema_every : int
        Epochs between EMA updates of the predictions. METHOD 5.
    ema_start : int
        EMA updates happen after epochs past this one (``(e + 1) % ema_every == 0`` and
        ``e + 1 > ema_start``), so predictions of an untrained network can be left out.
        METHOD 0 (updates run during warm-up from the start).
    ema_alpha : float
        EMA weight of the newest prediction. METHOD 0.2 (0.1 for MoNuSeg).
    ema_init : str
        "first" (ybar starts as the first prediction), "bias_correct" (Adam-style correction)
        or "zero" (METHOD's code; slow to pass tau). [inferred] "first".
    pseudo_threshold : float
        tau: pseudo label 1 where ybar > tau, 0 where ybar < 1 - tau. METHOD 0.8 (0.95 MoNuSeg).
    use_pseudo : bool
        Pseudo-label loss L_p after warm-up. METHOD on.
    pseudo_weight : float
        Weight of L_p. METHOD 0.5.
    restart_optimizer : bool
        Start RAdam afresh when warm-up ends: its second-moment estimates from warm-up are far
        smaller than the gradients of the added terms and would inflate the first steps.
        [inferred] true.
    ramp_epochs : int
        After warm-up, the weights of L_p, MCR and pMIL rise linearly from 0 to their values
        over this many epochs, so the new terms do not swamp the scribble loss at once.
        [inferred] 10 (METHOD switches them on at once: 0).
    use_mcr : bool
        Multiscale contrastive regularization after warm-up. METHOD on.
    mcr_labels : str
        "prediction" (S2L-CM: current prediction binarized at ``mcr_threshold``, scribbles
        override) or "pseudo" (ScribbleCont: scribbles over confident pseudo labels).
    mcr_threshold : float
        beta_1: fg where p >= beta_1, bg where p <= 1 - beta_1 (0.5 = plain binarization).
        [inferred] 0.5.
    mcr_max_samples : int
        Pixels sampled per class and scale. METHOD 6000; [inferred] 1024 is enough on a CPU.
    mcr_full_weight, mcr_quarter_weight : float
        Weights of the full and 1/4-scale terms. METHOD 0.5, 10.
    mcr_full_temperature, mcr_quarter_temperature : float
        METHOD 0.3, 0.1.
    mcr_min_samples : int
        Fewer samples per class than this give a zero term. [inferred] 2.
    use_mil : bool
        Pixel-level MIL after warm-up. METHOD on.
    mil_weight : float
        Weight of L_pMIL. [inferred] 1.0.
    mil_threshold : float
        beta_2: the prediction is binarized for bag labels, instances drawn only where confident:
        nucleus where p >= beta_2, background where p <= 1 - beta_2 (scribbles override).
        [inferred] 0.8.
    mil_bag_size : int
        Instances per bag. [inferred] 16.
    mil_bags : int
        Positive and negative bags each per step. [inferred] 16.
    use_gap : bool
        The gap term after warm-up (:mod:`wsi_s2lcm.training.gaps`): between two nearby
        nucleus scribbles at least one pixel is background. Not in METHOD; [inferred] off.
    gap_weight : float
        Weight of the gap term. [inferred] 1.0.
    gap_max_um : float
        Only pairs of nucleus scribbles whose nearest points lie within this distance (µm) make
        a bag. [inferred] 8.0, about a nucleus's diameter.
    flip, rotate90 : bool
        Random flips and 90-degree rotations. METHOD (flips, rotations).
    scale_min, scale_max : float
        Random zoom range. METHOD (shift-scale-rotate); [inferred] 0.8-1.25.
    brightness, contrast, saturation, hue : float
        Colour jitter amplitudes. METHOD (colour jitter for MoNuSeg); [inferred] values.
    stain_alpha, stain_beta : float
        H&E stain augmentation: each Ruifrok H, E, D concentration scaled by U(1 +- alpha) and
        shifted by U(+- beta) (Tellez et al. "HED-light"). [inferred]
    amp : bool
        Mixed precision (float16) on CUDA.
    cpu_bfloat16 : bool
        bfloat16 autocast on the CPU: faster on CPUs with bfloat16 instructions
        (:func:`wsi_s2lcm.predictor.cpu_computes_bfloat16`), emulated and slow on others. Off by
        default until a bfloat16-trained model is shown to segment as well (docs/TRAINING.md).
        A resumed run keeps the precision it started in.
    seed : int
        Seed of everything random.
    licence : str
        Licence of the trained weights, written to the model card (they inherit the data's).
    """

    mpp: float = 0.5
    encoder: str = "resnet18"
    encoder_weights: str = ""
    init_model: str = ""
    crop_size: int = 256
    batch_size: int = 8
    crops_per_image: int = 1
    epochs: int = 200
    warmup_epochs: int = 100
    lr_encoder: float = 3e-4
    lr_decoder: float = 3e-3
    lr_schedule: str = "constant"
    lr_min_factor: float = 0.05
    weight_decay: float = 5e-5
    stroke_width_um: float = 0.5
    nucleus_classes: tuple = ("Nucleus", "Nuclei")
    background_classes: tuple = ("Background",)
    validation_fraction: float = 0.2
    validate_every: int = 5
    slide_region_size: int = 1024
    separation_heights_um: tuple = (0.25, 0.35, 0.5, 0.75, 1.0, 1.5)
    separation_thresholds: tuple = (0.4, 0.5, 0.6, 0.7)
    ema_every: int = 5
    ema_start: int = 0
    ema_alpha: float = 0.2
    ema_init: str = "first"
    pseudo_threshold: float = 0.8
    use_pseudo: bool = True
    pseudo_weight: float = 0.5
    restart_optimizer: bool = True
    ramp_epochs: int = 10
    use_mcr: bool = True
    mcr_labels: str = "prediction"
    mcr_threshold: float = 0.5
    mcr_max_samples: int = 1024
    mcr_full_weight: float = 0.5
    mcr_quarter_weight: float = 10.0
    mcr_full_temperature: float = 0.3
    mcr_quarter_temperature: float = 0.1
    mcr_min_samples: int = 2
    use_mil: bool = True
    mil_weight: float = 1.0
    mil_threshold: float = 0.8
    mil_bag_size: int = 16
    mil_bags: int = 16
    use_gap: bool = False
    gap_weight: float = 1.0
    gap_max_um: float = 8.0
    flip: bool = True
    rotate90: bool = True
    scale_min: float = 0.8
    scale_max: float = 1.25
    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1
    hue: float = 0.02
    stain_alpha: float = 0.05
    stain_beta: float = 0.05
    amp: bool = True
    cpu_bfloat16: bool = False
    seed: int = 0
    licence: str = ""

    def __post_init__(self) -> None:
        checks = [
            (self.mpp > 0, "mpp must be > 0"),
            (self.crop_size >= 64 and self.crop_size % 32 == 0,
             "crop_size must be a multiple of 32, at least 64"),
            (self.batch_size >= 1 and self.crops_per_image >= 1, "batch sizes must be >= 1"),
            (0 <= self.warmup_epochs <= self.epochs and self.epochs >= 1,
             "need 1 <= epochs and 0 <= warmup_epochs <= epochs"),
            (self.ema_every >= 1 and self.validate_every >= 1 and self.ema_start >= 0
             and self.ramp_epochs >= 0, "intervals must be >= 1, ema_start and ramp_epochs >= 0"),
            (0 < self.ema_alpha <= 1, "ema_alpha must lie in (0, 1]"),
            (self.ema_init in ("first", "bias_correct", "zero"),
             "ema_init must be first, bias_correct or zero"),
            (self.lr_schedule in ("constant", "cosine"),
             "lr_schedule must be constant or cosine"),
            (0 < self.lr_min_factor <= 1, "lr_min_factor must lie in (0, 1]"),
            (0.5 <= self.pseudo_threshold < 1, "pseudo_threshold must lie in [0.5, 1)"),
            (self.mcr_labels in ("prediction", "pseudo"),
             "mcr_labels must be prediction or pseudo"),
            (0.5 <= self.mcr_threshold < 1 and 0.5 <= self.mil_threshold < 1,
             "thresholds must lie in [0.5, 1)"),
            (self.mcr_max_samples >= self.mcr_min_samples >= 2, "need mcr_max >= mcr_min >= 2"),
            (self.mil_bag_size >= 2 and self.mil_bags >= 1,
             "need mil_bag_size >= 2 and mil_bags >= 1"),
            (self.gap_weight >= 0 and self.gap_max_um > 0,
             "need gap_weight >= 0 and gap_max_um > 0"),
            (0 < self.scale_min <= self.scale_max, "need 0 < scale_min <= scale_max"),
            (0 <= self.validation_fraction < 1, "validation_fraction must lie in [0, 1)"),
            (self.stroke_width_um > 0, "stroke_width_um must be > 0"),
            (self.slide_region_size >= self.crop_size, "slide_region_size must be >= crop_size"),
            (all(float(h) > 0 for h in self.separation_heights_um),
             "separation_heights_um must all be > 0"),
            (all(0 < float(t) < 1 for t in self.separation_thresholds),
             "separation_thresholds must all lie strictly between 0 and 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"training config: {message}.")
        if {n.casefold() for n in self.nucleus_classes} & {
            n.casefold() for n in self.background_classes
        }:
            raise ConfigError("training config: a class cannot be both nucleus and background.")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able values (tuples as lists)."""
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(self).items()
        }

    def architecture(self) -> dict[str, Any]:
        """The network to build for training (the card records it with ``encoder_weights`` None)."""
        return {"type": "unet", "encoder": self.encoder,
                "encoder_weights": self.encoder_weights or None}


def with_defaults(recorded: Mapping[str, Any]) -> dict[str, Any]:
    """A recorded config (``TrainConfig.to_dict()``) with values added since then at their defaults.

    Every value added to :class:`TrainConfig` defaults to the earlier behaviour, so a run or
    checkpoint recorded before it existed compares equal to one made with the default.
    """
    return {**TrainConfig().to_dict(), **recorded}


def load_train_config(
    path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> TrainConfig:
    """Read a YAML training configuration and apply command-line overrides.

    Parameters
    ----------
    path
        A YAML file holding a mapping of :class:`TrainConfig` fields (optionally under a
        ``train:`` key), or ``None`` for the defaults.
    overrides
        Values that replace the file's (``None`` values are ignored). When neither gives ``mpp``
        but one gives ``init_model``, the model starts at that model's resolution.

    Raises
    ------
    ConfigError
        On unreadable YAML, an unknown key or a wrong type.
    ModelError
        When ``init_model`` is needed for the resolution and cannot be read.
    """
    values: dict[str, Any] = {}
    where = "training config"
    if path is not None:
        import yaml

        where = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as error:
            raise ConfigError(f"{path}: cannot read the config ({error.strerror}).") from None
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML ({error}).") from None
        if isinstance(loaded, dict) and set(loaded) == {"train"}:
            loaded = loaded["train"]
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: must hold a mapping of training settings.")
        values.update(loaded or {})
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    if values.get("init_model") and "mpp" not in values:
        values["mpp"] = _init_model_mpp(str(values["init_model"]))
    return from_mapping(TrainConfig, values, where=where)


def _init_model_mpp(ref: str) -> float:
    """The µm/px of the model fine-tuning starts from: a fine-tuned model keeps its resolution."""
    from wsi_s2lcm.models import read_card, resolve_model

    return read_card(resolve_model(ref)).mpp
