"""The S2L-CM training loop: warm-up on scribbles, then pseudo labels, MCR and pixel MIL.

Epoch ``e`` (0-based) draws ``crops_per_image`` augmented crops of every training image. Before
``warmup_epochs`` the loss is the partial cross-entropy on scribbles (L_s); afterwards

    L = L_s + w_p L_p + w_full R_full + w_quarter R_quarter + w_mil L_pMIL [+ w_gap L_gap]

with each term switchable (the gap term, :mod:`.gaps`, is ours, not S2L-CM's, and off by
default). Every ``ema_every`` epochs (from ``ema_start``) the network predicts
each whole training image and the EMA maps are updated. Every ``validate_every`` epochs the
held-out scribbles are scored and the run writes a checkpoint (:mod:`.checkpoints`:
``MODEL_DIR/last``, ``MODEL_DIR`` itself when the held-out partial cross-entropy improved, and
the state that lets ``resume`` continue).
Randomness is re-seeded from ``(seed, epoch)`` every epoch, so a resumed run draws the same
crops as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm import tqdm

from wsi_s2lcm.errors import ConfigError, OutputExistsError
from wsi_s2lcm.network import HYPERCOLUMN_LEVELS, QUARTER_LEVEL, build_network
from wsi_s2lcm.predictor import autocast, precision_name
from wsi_s2lcm.training import losses
from wsi_s2lcm.training.augment import augment_sample
from wsi_s2lcm.training.calibrate import calibrate_model
from wsi_s2lcm.training.checkpoints import (
    LAST_DIR, STATE_DIR, STATE_FILE, RunContext, load_state, remove_previous_run,
    write_checkpoint,
)
from wsi_s2lcm.training.config import TrainConfig
from wsi_s2lcm.training.dataset import TrainImage
from wsi_s2lcm.training.evaluate import scribble_metrics
from wsi_s2lcm.training.gaps import gap_paths
from wsi_s2lcm.training.inference import normalize, predict_probability
from wsi_s2lcm.training.pseudo import EmaMaps, pseudo_labels
from wsi_s2lcm.training.records import read_log
from wsi_s2lcm.training.scribbles import IGNORE

logger = logging.getLogger(__name__)



@dataclasses.dataclass(frozen=True)
class TrainResult:
    """Where the model went and how it scored."""

    path: Path
    best_epoch: int
    metrics: dict


def train_model(
    train_images: Sequence[TrainImage],
    val_images: Sequence[TrainImage],
    config: TrainConfig,
    out_dir: str | Path,
    *,
    device: str = "cpu",
    resume: bool = False,
    overwrite: bool = False,
    name: str | None = None,
    record: dict[str, Any] | None = None,
    progress: bool | None = None,
) -> TrainResult:
    """Train a model from scribbles and write its model directory.

    Parameters
    ----------
    train_images, val_images
        Training images, and images whose scribbles select the checkpoint (may be empty: then
        the last epoch is kept).
    config
        The training configuration.
    out_dir
        Model directory to write (see the module docstring for its layout).
    device
        ``"cpu"`` or a CUDA device such as ``"cuda"``/``"cuda:0"``.
    resume
        Continue from ``out_dir/train_state/state.pt``.
    overwrite
        Replace an existing model directory instead of refusing.
    name
        Model name on the card (the directory name by default).
    record
        Extra training record for the card (command line, data, scribble ratio...).
    progress
        Draw a progress bar per epoch; ``None``: when stderr is a terminal.

    Returns
    -------
    TrainResult
    """
    if not train_images:
        raise ConfigError("no training images; check --images, --scribbles and the split.")
    out_dir = Path(out_dir)
    state_path = out_dir / STATE_DIR / STATE_FILE
    if resume and not state_path.is_file():
        raise ConfigError(f"{out_dir}: nothing to resume (no {STATE_DIR}/{STATE_FILE}).")
    if not resume and not overwrite and (out_dir / "card.json").exists():
        raise OutputExistsError(f"{out_dir}: a model exists; pass --resume or --overwrite.")
    out_dir.mkdir(parents=True, exist_ok=True)
    on_cuda = device.startswith("cuda")
    torch.manual_seed(config.seed)
    network = build_network(config.architecture())
    if config.init_model and not resume:
        _load_initial_weights(network, config.init_model, config.mpp)
    network = network.to(device).to(memory_format=torch.channels_last)
    optimizer = _optimizer(network, config)
    ema = EmaMaps(config.ema_alpha, config.pseudo_threshold, config.ema_init)
    run = {"epoch": 0, "best": float("inf"), "best_epoch": -1, "best_metrics": {},
           "seconds": 0.0}
    history: list[dict[str, Any]] = []
    scaler_state: dict = {}
    if resume:
        scaler_state = load_state(state_path, config, network, optimizer, ema, run)
        history = [r for r in read_log(out_dir) if r["epoch"] <= run["epoch"]]
        logger.info("resuming %s at epoch %d", out_dir, run["epoch"] + 1)
        # A run continues in the precision it started in; states saved before bfloat16 on the
        # CPU existed record none and ran in float32 there.
        run.setdefault("amp", config.amp and on_cuda)
    else:
        run["amp"] = config.amp if on_cuda else config.cpu_bfloat16
    amp = bool(run["amp"])
    # Built once the run's precision is known: a resumed run keeps the precision it started in.
    scaler = torch.amp.GradScaler("cuda", enabled=amp and on_cuda)
    if scaler_state and scaler.is_enabled():
        scaler.load_state_dict(scaler_state)
    logger.info("training on %s in %s", device, precision_name(device, amp))
    context = RunContext(network, config, device, amp, name or out_dir.resolve().name,
                       dict(record or {}), [t.key for t in val_images],
                       sys.stderr.isatty() if progress is None else progress,
                       _initial_postprocess(config.init_model))
    if not resume:
        remove_previous_run(out_dir)
    if config.init_model and not resume and val_images:
        entry = {"epoch": 0, "stage": "init", "seconds": 0.0, "seconds_per_step": 0.0,
                 **_validate(context, val_images)}
        history.append(entry)
        logger.info(_format_entry(entry, config.epochs))
        write_checkpoint(context, out_dir, entry, run, history, optimizer, scaler, ema)
    for epoch in range(run["epoch"], config.epochs):
        started = time.time()
        if epoch == config.warmup_epochs > 0 and config.restart_optimizer:
            optimizer = _optimizer(network, config)
            logger.info("warm-up done: optimizer restarted for the S2L-CM stage")
        _set_learning_rates(optimizer, config, epoch)
        entry = _train_epoch(context, train_images, ema, optimizer, scaler, epoch)
        if _needs_ema(config) and (epoch + 1) % config.ema_every == 0 and (
            epoch + 1 > config.ema_start
        ):
            _update_ema(context, train_images, ema)
        run["seconds"] += time.time() - started
        entry.update(epoch=epoch + 1, seconds=round(time.time() - started, 2),
                     lr_factor=round(learning_rate_factor(config, epoch), 4))
        checkpoint = (epoch + 1) % config.validate_every == 0 or epoch + 1 == config.epochs
        if checkpoint:
            entry.update(_validate(context, val_images))
        history.append(entry)
        logger.info(_format_entry(entry, config.epochs))
        if checkpoint:
            run["epoch"] = epoch + 1
            write_checkpoint(context, out_dir, entry, run, history, optimizer, scaler, ema)
    _calibrate_separation(context, out_dir, val_images)
    return TrainResult(out_dir, run["best_epoch"], run["best_metrics"])


def _optimizer(network: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    encoder = {id(p) for m in network.encoder_modules() for p in m.parameters()}
    groups = [
        {"params": [p for p in network.parameters() if id(p) in encoder], "lr": config.lr_encoder},
        {"params": [p for p in network.parameters() if id(p) not in encoder],
         "lr": config.lr_decoder},
    ]
    return torch.optim.RAdam(groups, weight_decay=config.weight_decay)


def learning_rate_factor(config: TrainConfig, epoch: int) -> float:
    """Factor on the configured learning rates during ``epoch`` (0-based).

    Parameters
    ----------
    config : TrainConfig
        Gives ``lr_schedule``, ``lr_min_factor`` and ``epochs``.
    epoch : int
        The epoch about to run, 0-based.

    Returns
    -------
    float
        1 for the constant schedule; under "cosine", 1 at epoch 0 falling along half a cosine
        to ``lr_min_factor`` at the last epoch.
    """
    if config.lr_schedule == "constant" or config.epochs == 1:
        return 1.0
    progress = epoch / (config.epochs - 1)
    low = config.lr_min_factor
    return low + (1.0 - low) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _set_learning_rates(optimizer: torch.optim.Optimizer, config: TrainConfig,
                        epoch: int) -> None:
    factor = learning_rate_factor(config, epoch)
    for group, base in zip(optimizer.param_groups, (config.lr_encoder, config.lr_decoder)):
        group["lr"] = base * factor


def _train_epoch(context, images, ema, optimizer, scaler, epoch) -> dict[str, Any]:
    config, network = context.config, context.network
    rng = np.random.default_rng([config.seed, epoch])
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
    torch.manual_seed(config.seed * 1_000_003 + epoch)
    warm = epoch < config.warmup_epochs
    if not warm and not ema.maps and _needs_ema(config):
        _update_ema(context, images, ema)
    order = rng.permutation(np.repeat(np.arange(len(images)), config.crops_per_image))
    batches = [order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)]
    sums: dict[str, float] = {}
    network.train()
    bar = tqdm(batches, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False,
               disable=not context.progress)
    step_started = time.time()
    for step, batch in enumerate(bar):
        x, scribbles, pseudo, gaps = _make_batch(images, batch, ema, config, rng,
                                                 use_prior=not warm)
        x = x.to(context.device).contiguous(memory_format=torch.channels_last)
        scribbles = scribbles.to(context.device)
        with autocast(context.device, context.amp):
            logits, features = network.forward_features(x)
            terms = _loss_terms(network, logits, features, scribbles, pseudo, gaps, config,
                                generator, warm)
        ramp = _ramp(config, epoch + step / len(batches))
        weights = {k: w if k == "pce" else w * ramp for k, w in _weights(config).items()}
        total = sum(weights[k] * v for k, v in terms.items())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        scaler.step(optimizer)
        scaler.update()
        terms["loss"] = total
        for key, value in terms.items():
            sums[key] = sums.get(key, 0.0) + float(value.detach())
        bar.set_postfix(loss=f"{float(total.detach()):.3f}")
    entry = {key: value / len(batches) for key, value in sums.items()}
    entry["stage"] = "warm-up" if warm else "s2lcm"
    entry["ramp"] = round(_ramp(config, epoch + 1.0), 3)
    entry["seconds_per_step"] = round((time.time() - step_started) / len(batches), 3)
    return entry


def _ramp(config: TrainConfig, epoch: float) -> float:
    """Factor (0 to 1) on the post-warm-up terms at a fractional epoch."""
    if epoch < config.warmup_epochs:
        return 0.0
    if config.ramp_epochs == 0:
        return 1.0
    return min((epoch - config.warmup_epochs) / config.ramp_epochs, 1.0)


def _load_initial_weights(network: torch.nn.Module, ref: str, mpp: float) -> None:
    """Start from a saved model's weights (training heads keep their random init).

    Warns when the model was trained at another resolution than ``mpp``, the run's.
    """
    from safetensors.torch import load_file

    from wsi_s2lcm.models import WEIGHTS_FILE, read_card, resolve_model

    directory = resolve_model(ref)
    card_mpp = read_card(directory).mpp
    if abs(card_mpp - mpp) > 1e-6 * mpp:
        logger.warning("init_model %s was trained at %g µm/px and is now trained at %g µm/px; "
                       "leave 'mpp' out of the config to keep %g.", ref, card_mpp, mpp, card_mpp)
    try:
        result = network.load_state_dict(load_file(str(directory / WEIGHTS_FILE)), strict=False)
    except (RuntimeError, OSError) as error:
        raise ConfigError(f"init_model {ref}: its weights do not fit this network ({error}).")
    missing = [k for k in result.missing_keys
               if not k.startswith(("projection_full", "projection_quarter", "mil"))]
    if missing or result.unexpected_keys:
        raise ConfigError(f"init_model {ref}: its weights do not fit this network "
                          f"(missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}).")
    logger.info("network initialized from %s", directory)


def _initial_postprocess(ref: str) -> dict:
    """The post-processing values of the model fine-tuning starts from ({} without one).

    They stay on the new model's card unless the separation is calibrated on held-out scribbles.
    """
    if not ref:
        return {}
    from wsi_s2lcm.models import read_card, resolve_model

    return dict(read_card(resolve_model(ref)).postprocess)


def _needs_ema(config: TrainConfig) -> bool:
    return config.use_pseudo or (config.use_mcr and config.mcr_labels == "pseudo")


def _weights(config: TrainConfig) -> dict[str, float]:
    return {"pce": 1.0, "pseudo": config.pseudo_weight, "mcr_full": config.mcr_full_weight,
            "mcr_quarter": config.mcr_quarter_weight, "mil": config.mil_weight,
            "gap": config.gap_weight}


def _make_batch(images, batch, ema, config, rng, use_prior):
    """Normalized crops, their scribble targets and, after warm-up, their EMA pseudo labels and
    (with ``use_gap``) the gap bags between their nucleus scribbles."""
    crops, targets, pseudo, pixels, pairs = [], [], [], [], []
    bags = 0
    with_gaps = use_prior and config.use_gap
    max_distance = config.gap_max_um / config.mpp
    for number, index in enumerate(batch):
        item = images[index]
        prior = ema.estimate(item.key) if use_prior else None
        ids = item.nucleus_ids if with_gaps else None
        rgb, target, prior, ids = augment_sample(item.image, item.target, prior, config, rng, ids)
        crops.append(rgb)
        targets.append(target)
        pseudo.append(np.full(target.shape, IGNORE, np.uint8) if prior is None
                      else pseudo_labels(prior, config.pseudo_threshold))
        if ids is not None:
            crop_pixels, crop_pair = gap_paths(ids, max_distance)
            pixels.append(np.column_stack([np.full(len(crop_pair), number), crop_pixels]))
            pairs.append(crop_pair + bags)
            bags += int(crop_pair.max()) + 1 if len(crop_pair) else 0
    x = normalize(np.stack(crops))
    scribbles = torch.from_numpy(np.stack(targets)).long()
    gaps = None
    if with_gaps:
        gaps = (torch.from_numpy(np.concatenate(pixels or [np.zeros((0, 3))]).astype(np.int64)),
                torch.from_numpy(np.concatenate(pairs or [np.zeros(0)]).astype(np.int64)))
    return (x, scribbles, torch.from_numpy(np.stack(pseudo)).long() if use_prior else None,
            gaps)


def _loss_terms(network, logits, features, scribbles, pseudo, gaps, config, generator, warm):
    terms = {"pce": losses.partial_cross_entropy(logits, scribbles)}
    if warm:
        return terms
    if gaps is not None:
        terms["gap"] = losses.gap_loss(logits, *gaps)
    probability = torch.softmax(logits.detach().float(), dim=1)[:, 1]
    labelled = scribbles != losses.IGNORE
    if pseudo is not None:
        pseudo = pseudo.to(logits.device)
    if config.use_pseudo and pseudo is not None:
        terms["pseudo"] = losses.partial_cross_entropy(
            logits, torch.where(labelled, torch.full_like(pseudo, losses.IGNORE), pseudo)
        )
    if config.use_mcr:
        if config.mcr_labels == "pseudo" and pseudo is not None:
            labels = torch.where(labelled, scribbles, pseudo)
        else:
            labels = torch.where(labelled, scribbles, losses.binarize(probability,
                                                                      config.mcr_threshold))
        full = network.projection_full(features[-1])
        terms["mcr_full"] = losses.contrastive_loss(
            full, labels, config.mcr_full_temperature, config.mcr_max_samples,
            config.mcr_min_samples, generator)
        quarter = network.projection_quarter(features[QUARTER_LEVEL])
        terms["mcr_quarter"] = losses.contrastive_loss(
            quarter, losses.block_labels(labels, 4), config.mcr_quarter_temperature,
            config.mcr_max_samples, config.mcr_min_samples, generator)
    if config.use_mil:
        labels = torch.where(labelled, scribbles, losses.binarize(probability,
                                                                  config.mil_threshold))
        index, bag_labels = losses.make_bags(labels, config.mil_bags, config.mil_bag_size,
                                             generator)
        bags, size = index.shape[:2], tuple(logits.shape[-2:])
        columns = losses.sample_features(
            [features[i] for i in HYPERCOLUMN_LEVELS], index.reshape(-1, 3).to(logits.device), size
        ).reshape(*bags, -1)
        bag_logits, _ = network.mil(columns)
        terms["mil"] = losses.mil_loss(bag_logits, bag_labels)
    return terms


def _update_ema(context, images, ema) -> None:
    for item in images:
        ema.update(item.key, predict_probability(context.network, item.image, context.device,
                                                 context.amp))


def _validate(context, images) -> dict[str, Any]:
    if not images:
        return {}
    probabilities = [predict_probability(context.network, t.image, context.device, context.amp)
                     for t in images]
    return scribble_metrics(probabilities, [t.target for t in images])


def _calibrate_separation(context, out_dir: Path, images) -> None:
    """Put the threshold and separation height chosen on held-out scribbles on the model's and
    last/ cards."""
    heights = context.config.separation_heights_um
    if not heights or not any(t.nucleus_ids is not None and t.nucleus_ids.any() for t in images):
        logger.info("separation not calibrated (no candidate heights or no held-out nucleus "
                    "scribbles): %s", "the post-processing values of init_model "
                    f"{context.config.init_model} are kept" if context.config.init_model
                    else "the package defaults are used")
        return
    thresholds = context.config.separation_thresholds
    for directory in (out_dir, out_dir / LAST_DIR):
        calibrate_model(directory, images, heights, thresholds, context.device, context.amp)


def _format_entry(entry: dict[str, Any], epochs: int) -> str:
    keys = ("loss", "pce", "pseudo", "mcr_full", "mcr_quarter", "mil", "gap", "val_pce",
            "val_balanced_accuracy")
    values = " ".join(f"{k}={entry[k]:.4f}" for k in keys if entry.get(k) is not None)
    return (f"epoch {entry['epoch']}/{epochs} [{entry['stage']}] {values} "
            f"({entry['seconds']:.0f} s, {entry['seconds_per_step']:.2f} s/step)")
