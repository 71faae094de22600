"""The ``scribbles`` and ``train`` commands (registered on the main group by :mod:`wsi_s2lcm.cli`).

Both raise :class:`~wsi_s2lcm.errors.UserInputError` subclasses for bad input; the main group
turns them into a one-line message and exit code 2. ``train`` reports one line per epoch unless
``--quiet``.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
import time
from pathlib import Path

import click

from wsi_s2lcm.cli_options import show_progress, verbosity_options
from wsi_s2lcm.errors import ConfigError, OutputExistsError
from wsi_s2lcm.training.config import SCRIBBLE_MANIFEST as MANIFEST_FILE

logger = logging.getLogger(__name__)


@click.command("scribbles")
@click.option("--masks", "masks_dir", required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of instance masks: label images (0 = background, 1..N = nuclei), or "
                   "nucleus outlines as GeoJSON or ImageScope XML (these need --images).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for one QuPath GeoJSON file per mask.")
@click.option("--images", "images_dir", default=None,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Images the masks belong to, named alike: label images must match their size; "
                   "outlines are rasterized at it.")
@click.option("--ratio", default=0.3, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="Fraction of nuclei that get a scribble.")
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed.")
@click.option("--overwrite", is_flag=True, help="Replace existing scribble files.")
@verbosity_options
def scribbles_command(masks_dir: Path, out_dir: Path, images_dir: Path | None, ratio: float,
                      seed: int, overwrite: bool) -> None:
    """Generate scribbles from instance masks (the Scribble2Label recipe), as QuPath GeoJSON."""
    from wsi_s2lcm.atomic import write_text_atomic
    from wsi_s2lcm.label_files import file_stem, label_kind, read_labels
    from wsi_s2lcm.training.generate import image_seed, write_scribbles_from_labels

    masks = sorted(p for p in masks_dir.iterdir() if p.is_file() and _is_mask(p))
    if not masks:
        raise ConfigError(f"{masks_dir}: no masks (*.png, *.tif, *.geojson, *.xml) found.")
    stems = [file_stem(p) for p in masks]
    outlines = [p for p in masks if label_kind(p) != "image"]
    if outlines and images_dir is None:
        raise ConfigError(f"{outlines[0]}: nucleus outlines need the images they belong to; "
                          "pass --images DIR.")
    outputs = [out_dir / f"{stem}.geojson" for stem in stems] + [out_dir / MANIFEST_FILE]
    existing = [p for p in outputs if p.exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"{existing[0]}: exists; pass --overwrite to replace it.")
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = {"ratio": ratio, "seed": seed, "masks": str(masks_dir), "files": {}}
    for mask_path, stem, out_path in zip(masks, stems, outputs):
        shape = _image_size(images_dir, stem) if images_dir is not None else None
        labels, warning = read_labels(mask_path, shape)
        if warning:
            logger.warning("%s", warning)
        counts = write_scribbles_from_labels(labels, out_path, ratio, image_seed(seed, stem))
        manifest["files"][stem] = counts
        logger.info("%s: %d nucleus and %d background scribbles (%d nuclei)", out_path,
                    counts["nucleus_scribbles"], counts["background_scribbles"], counts["nuclei"])
    write_text_atomic(out_dir / MANIFEST_FILE, json.dumps(manifest, indent=1) + "\n")


def _is_mask(path: Path) -> bool:
    """Label images, ImageScope XML and ``.geojson(.gz)``; not plain ``.json`` (manifests, run
    summaries)."""
    from wsi_s2lcm.label_files import label_kind

    kind = label_kind(path)
    if kind == "geojson":
        return path.name.lower().endswith((".geojson", ".geojson.gz"))
    return kind is not None


def _image_size(images_dir: Path, stem: str) -> tuple[int, int]:
    from wsi_s2lcm.label_files import image_shape
    from wsi_s2lcm.training.dataset import IMAGE_SUFFIXES

    found = [p for p in images_dir.glob(f"{stem}.*") if p.suffix.lower() in IMAGE_SUFFIXES]
    if not found:
        raise ConfigError(f"{images_dir}: no image named {stem}.* for its mask.")
    return image_shape(found[0])


@click.command("train")
@click.option("--images", "images_dirs", required=True, multiple=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of images or slides; repeat to train on several folders.")
@click.option("--scribbles", "scribbles_dirs", required=True, multiple=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of QuPath GeoJSON scribbles, one per image, named like the image; "
                   "repeatable.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Model directory to write.")
@click.option("--config", "config_path", default=None,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="YAML file of training settings (see docs/TRAINING.md).")
@click.option("--epochs", type=click.IntRange(1), default=None, help="Override epochs.")
@click.option("--mpp", "image_mpp", type=click.FloatRange(0, min_open=True), default=None,
              help="µm/px of images that record none (plain MoNuSeg TIFFs: 0.25); "
                   "files that record theirs keep it.")
@click.option("--model-mpp", type=click.FloatRange(0, min_open=True), default=None,
              help="µm/px the model works at (config 'mpp'; default 0.5, or that of the "
                   "--init model).")
@click.option("--device", default="auto", show_default=True,
              help="auto (CUDA when present), cpu, cuda or cuda:N.")
@click.option("--seed", type=int, default=None, help="Override the config's seed.")
@click.option("--validation-fraction", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="Images held back to select the model on their scribbles (without --split).")
@click.option("--split", "split_path", default=None,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="JSON file of stem lists, e.g. {\"train\": [...], \"validation\": [...]}.")
@click.option("--subset", default="train", show_default=True,
              help="Key of the split's training list; its 'validation' list is held back.")
@click.option("--init", "init_model", default=None,
              help="Start from this model's weights (shipped name or directory): fine-tuning.")
@click.option("--licence", default=None, help="Licence of the weights, for the model card.")
@click.option("--name", default=None, help="Model name (default: the --out folder's name).")
@click.option("--threads", type=click.IntRange(1), default=None, help="Torch CPU threads.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out.")
@click.option("--overwrite", is_flag=True, help="Replace an existing model in --out.")
@verbosity_options
def train_command(images_dirs: tuple[Path, ...], scribbles_dirs: tuple[Path, ...], out_dir: Path,
                  config_path: Path | None,
                  epochs: int | None, image_mpp: float | None, model_mpp: float | None,
                  device: str, seed: int | None, validation_fraction: float | None,
                  split_path: Path | None, subset: str, init_model: str | None,
                  licence: str | None, name: str | None,
                  threads: int | None, resume: bool, overwrite: bool) -> None:
    """Train a nucleus model from QuPath scribbles (S2L-CM) and write its model directory."""
    import torch

    from wsi_s2lcm.predictor import resolve_device
    from wsi_s2lcm.training.config import load_train_config
    from wsi_s2lcm.training.dataset import load_pair, pair_files, split_stems
    from wsi_s2lcm.training.trainer import train_model

    progress = show_progress()
    if not click.get_current_context().meta.get("wsi_s2lcm.quiet"):
        for logger_name in (__name__, "wsi_s2lcm.training.trainer"):
            if logging.getLogger(logger_name).getEffectiveLevel() > logging.INFO:
                logging.getLogger(logger_name).setLevel(logging.INFO)
    if threads:
        torch.set_num_threads(threads)
    device = resolve_device(device)
    config = load_train_config(config_path, {
        "epochs": epochs, "mpp": model_mpp, "seed": seed,
        "validation_fraction": validation_fraction, "licence": licence,
        "init_model": init_model,
    })
    if split_path is not None:
        train_stems, val_stems = _read_split(split_path, subset)
    else:
        stems = [stem for stem, _, _ in pair_files(images_dirs, scribbles_dirs)]
        train_stems, val_stems = split_stems(stems, config.validation_fraction, config.seed)
    pairs = {stem: (image, scribble)
             for stem, image, scribble in pair_files(images_dirs, scribbles_dirs,
                                                     train_stems + val_stems)}
    started = time.time()
    loaded = {stem: load_pair(stem, *pairs[stem], image_mpp, config) for stem in pairs}
    train_images = [t for stem in train_stems for t in loaded[stem]]
    val_images = [t for stem in val_stems for t in loaded[stem]]
    logger.info("loaded %d training and %d held-out image(s) at %.3f µm/px in %.0f s",
                len(train_images), len(val_images), config.mpp, time.time() - started)
    if not val_images:
        logger.warning(
            "no image is held back (%d image(s) given): the latest epoch is kept and the "
            "separation of touching nuclei is not calibrated; give two or more images, or "
            "--split, to select the model on held-out scribbles", len(pairs))
    record = {
        "command": shlex.join(["wsi-s2lcm"] + sys.argv[1:]),
        "data": {"images": [str(d) for d in images_dirs],
                 "scribbles": [str(d) for d in scribbles_dirs],
                 "image_mpp": image_mpp,
                 "mpp_by_image": {stem: items[0].source_mpp for stem, items in loaded.items()},
                 "train": train_stems, "validation": val_stems,
                 "split": str(split_path) if split_path else None},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    generated = {str(d): json.loads((d / MANIFEST_FILE).read_text(encoding="utf-8"))
                 for d in scribbles_dirs if (d / MANIFEST_FILE).is_file()}
    if generated:
        record["scribbles"] = [
            {"folder": folder, **{k: g.get(k) for k in ("ratio", "seed", "masks")}}
            for folder, g in generated.items()
        ]
    result = train_model(train_images, val_images, config, out_dir, device=device, resume=resume,
                         overwrite=overwrite, name=name, record=record, progress=progress)
    scores = ", ".join(f"{k}={v:.4f}" for k, v in result.metrics.items() if isinstance(v, float))
    logger.info("model written to %s (%s epoch %d%s)", result.path,
                "best" if val_images else "latest", result.best_epoch,
                f": {scores}" if scores else "")


def _read_split(path: Path, subset: str) -> tuple[list[str], list[str]]:
    try:
        split = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path}: cannot read the split file ({error}).") from None
    if not isinstance(split, dict) or not isinstance(split.get(subset), list) or not split[subset]:
        raise ConfigError(f"{path}: needs a non-empty list of stems under {subset!r}.")
    held = split.get("validation", []) if subset != "validation" else []
    overlap = set(split[subset]) & set(held)
    if overlap:
        raise ConfigError(f"{path}: stems in both {subset!r} and 'validation': {sorted(overlap)}.")
    return list(split[subset]), list(held)
