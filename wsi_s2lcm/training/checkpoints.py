"""What a training run writes to its model directory, and reads back to resume.

At each checkpoint (:func:`write_checkpoint`) the run writes the model of that epoch to
``MODEL_DIR/last``, replaces ``MODEL_DIR`` itself when the held-out partial cross-entropy
improved (:data:`SELECT_METRIC`), and saves ``MODEL_DIR/train_state/state.pt``: network,
optimizer, gradient scaler and EMA maps, tensors and plain values only, which
:func:`load_state` restores into a new run. Each model is a card (:func:`model_card`: the
architecture, mpp, training record and held-out metrics) beside its weights, loaded as any
shipped model is (:mod:`wsi_s2lcm.models`).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch

import wsi_s2lcm
from wsi_s2lcm.errors import ConfigError
from wsi_s2lcm.models import CARD_FILE, WEIGHTS_FILE, ModelCard, save_model
from wsi_s2lcm.network import DEFAULT_ARCHITECTURE
from wsi_s2lcm.predictor import precision_name
from wsi_s2lcm.training.config import TrainConfig, with_defaults
from wsi_s2lcm.training.inference import IMAGENET_MEAN, IMAGENET_STD
from wsi_s2lcm.training.pseudo import EmaMaps
from wsi_s2lcm.training.records import (
    CURVES_FILE, LOG_FILE, hardware, plot_curves, write_log,
)

logger = logging.getLogger(__name__)

STATE_DIR = "train_state"
STATE_FILE = "state.pt"
LAST_DIR = "last"
SELECT_METRIC = "val_pce"
RESUMABLE_CHANGES = frozenset({"epochs", "validate_every"})
"""Settings a resumed run may change; any other change is refused."""


@dataclasses.dataclass
class RunContext:
    """What every epoch and checkpoint of one run needs to know.

    Attributes
    ----------
    network
        The network being trained.
    config
        The training configuration.
    device, amp
        Where the run computes and whether in mixed precision.
    name
        Model name on the cards.
    record
        Extra training record for the cards (command line, data, scribble ratio...).
    val_keys
        Keys of the held-out images (empty: the latest epoch is always kept).
    progress
        Whether to draw progress bars.
    postprocess
        Post-processing values for the cards (those of the initial model, when fine-tuning).
    """

    network: torch.nn.Module
    config: TrainConfig
    device: str
    amp: bool
    name: str
    record: dict
    val_keys: list
    progress: bool
    postprocess: dict


def remove_previous_run(out_dir: Path) -> None:
    """Remove the files of an earlier run (``--overwrite``), so none is taken for the new one."""
    for name in (CARD_FILE, WEIGHTS_FILE, LOG_FILE, CURVES_FILE):
        (out_dir / name).unlink(missing_ok=True)
    for name in (LAST_DIR, STATE_DIR):
        shutil.rmtree(out_dir / name, ignore_errors=True)


def write_checkpoint(context: RunContext, out_dir: Path, entry: dict[str, Any], run: dict,
                     history: list[dict], optimizer: torch.optim.Optimizer,
                     scaler: torch.amp.GradScaler, ema: EmaMaps) -> None:
    """Write the epoch's model to ``last/``, to ``out_dir`` when it is the best so far, and the
    resumable state; update ``run``'s best epoch and metrics; rewrite the log and curves."""
    metrics = {k: v for k, v in entry.items() if k.startswith("val_")}
    score = metrics.get(SELECT_METRIC, float("nan"))
    improved = not context.val_keys or (score == score and score < run["best"])
    if improved:
        run.update(best=score if score == score else run["best"], best_epoch=entry["epoch"],
                   best_metrics=metrics)
    card = model_card(context, entry["epoch"], metrics, run)
    save_model(out_dir / LAST_DIR, card, context.network)
    if improved:
        save_model(out_dir, card, context.network)
    save_state(out_dir / STATE_DIR / STATE_FILE, context.config, context.network, optimizer,
               scaler, ema, run)
    write_log(out_dir, history)
    plot_curves(out_dir, history)
    if improved and context.val_keys:
        logger.info("epoch %d: model written to %s (%s=%.4f)", entry["epoch"], out_dir,
                    SELECT_METRIC, score)
    elif improved:
        logger.info("epoch %d: model written to %s (latest epoch: no held-out images)",
                    entry["epoch"], out_dir)


def model_card(context: RunContext, epoch: int, metrics: dict, run: dict) -> ModelCard:
    """The card of the model of ``epoch``, with the run's training record and ``metrics``."""
    config = context.config
    training = {
        **context.record,
        "config": config.to_dict(),
        "seed": config.seed,
        "epoch": epoch,
        "epochs_planned": config.epochs,
        "training_seconds": round(run["seconds"], 1),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "hardware": {**hardware(), "device": context.device, "amp": context.amp,
                     "precision": precision_name(context.device, context.amp)},
    }
    selection = (f"lowest {SELECT_METRIC} on held-out scribbles" if context.val_keys
                 else "latest epoch (no held-out images)")
    described = {"selection": selection,
                 "held_out_images": context.val_keys, **metrics}
    return ModelCard(
        name=context.name,
        # The saved weights hold the encoder: loading the model must not need the file it
        # started from (recorded in the card's training config).
        architecture={**DEFAULT_ARCHITECTURE, **config.architecture(), "encoder_weights": None},
        mpp=config.mpp,
        normalization={"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        postprocess=dict(context.postprocess),
        training=training,
        metrics=described,
        licence=config.licence,
        version=wsi_s2lcm.__version__,
    )


def save_state(path: Path, config: TrainConfig, network: torch.nn.Module,
               optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, ema: EmaMaps,
               run: dict) -> None:
    """Save what :func:`load_state` needs to continue the run, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "config": config.to_dict(),
        "network": network.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "ema_maps": {k: torch.from_numpy(v) for k, v in ema.maps.items()},
        "ema_counts": dict(ema.counts),
        "run": dict(run),
    }
    partial = path.with_name(path.name + ".partial")
    torch.save(state, partial)
    partial.replace(path)


def load_state(path: Path, config: TrainConfig, network: torch.nn.Module,
               optimizer: torch.optim.Optimizer, ema: EmaMaps, run: dict) -> dict:
    """Restore a saved run into ``network``, ``optimizer``, ``ema`` and ``run``.

    Returns
    -------
    dict
        The gradient scaler's state (empty when the run had none), for the scaler built
        afterwards.

    Raises
    ------
    ConfigError
        When ``config`` differs from the saved run's in anything but
        :data:`RESUMABLE_CHANGES`.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    saved = with_defaults(state["config"])
    changed = sorted(k for k, v in config.to_dict().items()
                     if k not in RESUMABLE_CHANGES and saved.get(k) != v)
    if changed:
        raise ConfigError(
            f"{path}: the run was started with other settings ({', '.join(changed)}); resume "
            "with the same config (only epochs and validate_every may change)."
        )
    network.load_state_dict(state["network"])
    optimizer.load_state_dict(state["optimizer"])
    ema.maps = {k: v.numpy() for k, v in state["ema_maps"].items()}
    ema.counts = {k: int(v) for k, v in state["ema_counts"].items()}
    run.update(state["run"])
    return dict(state["scaler"])
