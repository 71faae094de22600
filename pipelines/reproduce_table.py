"""Reproduce the S2L-CM ablation table on the fixed MoNuSeg split (docs/RESULTS.md).

The rows (pipelines/table_rows.yaml): pCE only; + EMA pseudo labels (Scribble2Label); + MCR;
+ pMIL = S2L-CM (the recipe of pipelines/train_default_model.sh, which trains the default model
s2lcm-monuseg at 0.25 µm/px); the same network fully
supervised; S2L-CM at scribble ratios 0.1 and 1.0; and the S2L-CM model post-processed with and
without separation of touching nuclei. Each training row runs the recipe's two stages: a warm-up
on the partial cross-entropy (shared by the rows of one scribble ratio and supervision kind),
then the row's second stage from the warm-up model. The split is pipelines/monuseg_split.json
(24 training, 6 validation images); scribbles are generated once per ratio with seed 0 by the
function ``wsi-s2lcm scribbles`` uses. The validation images are segmented whole and evaluated
against their full instance labels (pixel Dice, IoU, AJI, PQ/DQ/SQ, S2L object Dice); the models
themselves are selected on held-out scribbles (dense labels for the fully supervised row), and
each model's separation of touching nuclei is calibrated on the held-out nucleus scribbles
(wsi_s2lcm.training.calibrate; models trained before the trainer did this are calibrated when
first evaluated).

Outputs under ``--out`` (runs/table; runs/table-quick with ``--quick``): ``scribbles-r*-s0/``,
``warmup-*/`` and ``<row>/`` model directories (``stage.json`` marks a finished stage),
``<row>/predictions/``, ``<row>/validation.csv``, ``<row>/result.json`` (a row is done when it
exists: reruns skip it), ``results.csv`` and ``results.md``, also written to stdout.

Usage (from the project root)::

    python pipelines/reproduce_table.py --threads 2           # everything (CPU hours)
    python pipelines/reproduce_table.py --rows pce-only,s2lcm --device cuda
    python pipelines/reproduce_table.py --quick              # smoke run, a few steps per row
    python pipelines/reproduce_table.py --adopt-default runs # reuse the default model's stages
    python pipelines/reproduce_table.py --seed 1 --rows s2lcm,mcr  # a repeat, runs/table-seed1
    python pipelines/reproduce_table.py --second-stage-seed 1 --rows s2lcm,mcr  # runs/table's
        # warm-up, second stages from seed 1: runs/table-stage2-seed1
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np
import torch
import yaml

from wsi_s2lcm.config import ExportConfig, PostprocessConfig, TilingConfig
from wsi_s2lcm.errors import ConfigError, S2LCMError
from wsi_s2lcm.evaluation import evaluate_dirs
from wsi_s2lcm.label_files import find_image, read_label_image
from wsi_s2lcm.models import read_card
from wsi_s2lcm.segment import segment_slide
from wsi_s2lcm.training.calibrate import ensure_calibrated
from wsi_s2lcm.training.checkpoints import LAST_DIR, STATE_DIR, STATE_FILE
from wsi_s2lcm.training.config import (
    SCRIBBLE_MANIFEST, TrainConfig, load_train_config, with_defaults,
)
from wsi_s2lcm.training.dataset import load_pair
from wsi_s2lcm.training.generate import image_seed, write_scribbles_from_labels
from wsi_s2lcm.training.records import hardware, recorded_folders
from wsi_s2lcm.training.trainer import train_model

ROOT = Path(__file__).resolve().parents[1]
ROWS_FILE = ROOT / "pipelines" / "table_rows.yaml"
SPLIT_FILE = ROOT / "pipelines" / "monuseg_split.json"
DATA_DIR = ROOT.parent / "shared" / "data" / "monuseg-train"
STAGE_FILE = "stage.json"
RESULT_FILE = "result.json"
SUPERVISIONS = ("scribbles", "full", "evaluation")
METRICS = ("dice", "iou", "aji", "pq", "dq", "sq", "object_dice")
LAST_METRICS = ("dice", "aji", "pq", "object_dice")
"""Metrics also reported for the model of the second stage's last epoch (``last_*`` columns)."""
COLUMNS = ("row", "label", "supervision", "ratio", "model_row", "separate") + METRICS + (
    "n_images", "best_epoch", "warmup_train_s", "stage2_train_s", "train_s", "segment_s", "device",
    "quick") + tuple(f"last_{k}" for k in LAST_METRICS) + ("last_epoch",)
ANCHORS = (("Scribble2Label: pCE only", 0.6319, 0.5766),
           ("Scribble2Label (scribbles)", 0.6408, 0.5811),
           ("Scribble2Label: fully supervised", 0.7014, 0.6677))
"""Scribble2Label (Lee & Jeong, MICCAI 2020) Table 1, MoNuSeg: (row, object Dice, mIoU)."""
TARGETS = {"dice": 0.80, "aji": 0.60, "pq": 0.55}
"""Targets of the default recipe (row :data:`DEFAULT_ROW`) on the validation images."""
DEFAULT_ROW = "s2lcm"

logger = logging.getLogger("reproduce_table")


@dataclasses.dataclass(frozen=True)
class Row:
    """One row of the table (the keys of pipelines/table_rows.yaml)."""

    name: str
    label: str
    supervision: str
    ratio: float | None = None
    overrides: dict = dataclasses.field(default_factory=dict)
    parent: str = ""
    model: str = ""
    postprocess: dict = dataclasses.field(default_factory=dict)

    @property
    def model_row(self) -> str:
        """The row whose model this row evaluates (itself for training rows)."""
        return self.model or self.name


@dataclasses.dataclass(frozen=True)
class Table:
    """The recipe, the smoke-run settings and the rows."""

    recipe: dict
    quick: dict
    rows: tuple

    def row(self, name: str) -> Row:
        """The row called ``name``."""
        for row in self.rows:
            if row.name == name:
                return row
        raise ConfigError(f"no table row {name!r}; rows: {', '.join(r.name for r in self.rows)}.")


def load_table(path: str | Path = ROWS_FILE) -> Table:
    """Read and check the row definitions.

    Raises
    ------
    ConfigError
        On an unknown key, supervision, TrainConfig or PostprocessConfig field, or a
        ``parent``/``model`` that names no training row.
    """
    document = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    fields = {cls: {f.name for f in dataclasses.fields(cls)}
              for cls in (Row, TrainConfig, PostprocessConfig)}
    rows = []
    for entry in document["rows"]:
        if set(entry) - fields[Row]:
            raise ConfigError(f"{path}: row {entry.get('name')}: unknown key(s) "
                              f"{sorted(set(entry) - fields[Row])}.")
        rows.append(Row(**entry))
    names = [row.name for row in rows]
    training = {r.name for r in rows if r.supervision != "evaluation"}
    for row in rows:
        bad = (set(row.overrides) - fields[TrainConfig]) | (
            set(row.postprocess) - fields[PostprocessConfig])
        for failed, message in (
            (row.supervision not in SUPERVISIONS, f"supervision must be one of {SUPERVISIONS}"),
            (names.count(row.name) > 1, "the name is used twice"),
            (bool(bad), f"unknown setting(s) {sorted(bad)}"),
            (row.supervision == "evaluation" and row.model not in training,
             "an evaluation row needs 'model': a training row"),
            (row.supervision == "scribbles" and not row.ratio, "a scribble row needs a ratio"),
            (bool(row.parent) and row.parent not in training, "'parent' must be a training row"),
        ):
            if failed:
                raise ConfigError(f"{path}: row {row.name}: {message}.")
    return Table(document["recipe"], document.get("quick", {}), tuple(rows))


def stage_values(table: Table, row: Row, stage: str, quick: bool = False,
                 epochs: int | None = None) -> dict[str, Any]:
    """The TrainConfig values of a row's ``warmup`` or ``s2lcm`` (second) stage.

    The warm-up does not depend on the row (rows of one ratio share it); the second stage takes
    the row's overrides. ``quick`` applies the smoke-run settings, ``epochs`` sets each stage's
    epochs. ``init_model`` is left to the caller.
    """
    values = {**table.recipe["shared"], **table.recipe[stage]}
    if stage == "s2lcm":
        values.update(row.overrides)
    if quick:
        values.update(table.quick)
    if epochs:
        values["epochs"] = epochs
    if stage == "warmup":
        values["warmup_epochs"] = values["epochs"]
    return values


def with_training_seed(table: Table, seed: int, second_stage_only: bool = False) -> Table:
    """The table with every stage, or only the second stages, trained from ``seed``.

    The scribbles keep their seed. With ``second_stage_only`` the warm-ups are the recipe's, so
    rows repeated this way differ from the recipe's only by the randomness of their own terms
    (crops, augmentation, the MCR and MIL samples), on the same warm-up model.
    """
    if second_stage_only:
        recipe = {**table.recipe, "s2lcm": {**table.recipe["s2lcm"], "seed": seed}}
    else:
        recipe = {**table.recipe, "shared": {**table.recipe["shared"], "seed": seed}}
    return dataclasses.replace(table, recipe=recipe)


def warmup_name(row: Row) -> str:
    """Folder of the warm-up stage a training row starts from."""
    return "warmup-full" if row.supervision == "full" else f"warmup-r{row.ratio}"


def dense_target(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Full supervision: 1 nucleus, 0 background at every pixel, resampled to ``shape``.

    A model pixel is nucleus when more than half of the label pixels it covers are (area
    averaging); exactly half (common at a 2x reduction) is nucleus on alternate pixels of a
    checkerboard, so the nuclei neither grow nor shrink on average (ties all nucleus grow
    MoNuSeg's nuclei by about 4 % in area, all background shrink them as much).
    """
    fraction = cv2.resize((labels > 0).astype(np.float32), (shape[1], shape[0]),
                          interpolation=cv2.INTER_AREA)
    rows, cols = np.indices(fraction.shape)
    ties = (fraction == 0.5) & ((rows + cols) % 2 == 0)
    return ((fraction > 0.5) | ties).astype(np.uint8)


class TableData:
    """The split's images, their generated scribbles and dense targets, each loaded once."""

    def __init__(self, data_dir: Path, split: dict, out_dir: Path, recipe: dict) -> None:
        self.images_dir, self.labels_dir = data_dir / "images", data_dir / "instance_labels"
        self.train_stems, self.val_stems = list(split["train"]), list(split["validation"])
        self.out_dir, self.recipe = out_dir, recipe
        self._cache: dict = {}

    def image_path(self, stem: str) -> Path:
        """The image file of a stem."""
        path = find_image(self.images_dir, stem)
        if path is None:
            raise ConfigError(f"{self.images_dir}: no image named {stem}.*; check --data.")
        return path

    def read_labels(self, stem: str) -> np.ndarray:
        """The instance label image of a stem."""
        return read_label_image(self.labels_dir / f"{stem}.png")[0]

    def scribbles(self, ratio: float) -> Path:
        """The folder of generated scribbles at ``ratio`` (made for missing stems only)."""
        seed = self.recipe["scribble_seed"]
        folder = self.out_dir / f"scribbles-r{ratio}-s{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        manifest_path = folder / SCRIBBLE_MANIFEST
        manifest = {"ratio": ratio, "seed": seed, "masks": str(self.labels_dir), "files": {}}
        if manifest_path.is_file():
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            if (manifest.get("ratio"), manifest.get("seed")) != (ratio, seed):
                raise ConfigError(f"{manifest_path}: made with other settings; delete {folder}.")
        missing = [s for s in self.train_stems + self.val_stems
                   if not (folder / f"{s}.geojson").is_file()]
        for stem in missing:
            manifest["files"][stem] = write_scribbles_from_labels(
                self.read_labels(stem), folder / f"{stem}.geojson", ratio, image_seed(seed, stem))
        if missing or not manifest_path.is_file():
            _write_json(manifest_path, manifest)
            logger.info("%s: scribbles for %d image(s), ratio %s, seed %d", folder, len(missing),
                        ratio, seed)
        return folder

    def scribble_ratio(self, row: Row) -> float:
        """The ratio of the scribbles a training row loads (the recipe's for full supervision,
        which selects on dense labels but reads the images with their scribbles)."""
        return self.recipe["scribble_ratio"] if row.supervision == "full" else row.ratio

    def train_images(self, row: Row, config: TrainConfig) -> tuple[list, list]:
        """Training and validation ``TrainImage`` lists of a training row."""
        ratio = self.scribble_ratio(row)
        key = (row.supervision, ratio, config.mpp, config.stroke_width_um)
        if key not in self._cache:
            folder, loaded = self.scribbles(ratio), {}
            for stem in self.train_stems + self.val_stems:
                (item,) = load_pair(stem, self.image_path(stem), folder / f"{stem}.geojson",
                                    self.recipe["image_mpp"], config)
                if row.supervision == "full":
                    item = dataclasses.replace(item, target=dense_target(
                        self.read_labels(stem), item.target.shape))
                loaded[stem] = item
            self._cache[key] = ([loaded[s] for s in self.train_stems],
                                [loaded[s] for s in self.val_stems])
        return self._cache[key]


ADOPT_IGNORED = ("init_model", "licence")
"""TrainConfig values an adopted stage may differ in: where it started from, the licence text."""


def adopt_stage(source: Path, out_dir: Path, config: TrainConfig, data: TableData,
                ratio: float, option: str = "--adopt-default") -> dict[str, Any]:
    """Copy a finished model directory in instead of training the stage.

    The two stages of ``pipelines/train_default_model.sh`` (``default-model-warmup``,
    ``default-model``) are the warm-up and the ``s2lcm`` row of the recipe's scribble ratio
    (``--adopt-default``); the warm-ups of another table folder are this table's when only the
    second stages change (``--warmups-from``). Adopting them saves retraining them. The source
    must have run all of its epochs with the same TrainConfig (up to :data:`ADOPT_IGNORED`), the
    same split, and scribble files identical to the table's at ``ratio``. ``option`` names the
    command-line option in the error messages.

    Returns
    -------
    dict
        The stage record, as :func:`train_stage` writes it, with ``adopted_from``.

    Raises
    ------
    ConfigError
        When the source is unfinished or differs in any of these.
    """
    if not (source / LAST_DIR / "card.json").is_file():
        raise ConfigError(f"{option}: cannot adopt {source} as {out_dir.name}: it holds no "
                          f"finished stage ({source / LAST_DIR / 'card.json'} is missing); "
                          "train it there first.")
    last = read_card(source / LAST_DIR)
    training = last.training
    theirs = {k: v for k, v in with_defaults(training["config"]).items() if k not in ADOPT_IGNORED}
    ours = {k: v for k, v in config.to_dict().items() if k not in ADOPT_IGNORED}
    table_scribbles = data.scribbles(ratio)
    if "scribbles" in training["data"]:
        folders = [ROOT / f for f in recorded_folders(training["data"], "scribbles")]
    else:  # a stage of another table folder, whose scribbles lie beside it
        folders = [source.parent / table_scribbles.name]
    scribbles = folders[0]
    problems = [
        (theirs != ours, "its training config differs: "
         + ", ".join(sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k)))),
        (training["epoch"] != config.epochs,
         f"it ran {training['epoch']} of {config.epochs} epochs"),
        ((training["data"]["train"], training["data"]["validation"])
         != (data.train_stems, data.val_stems), "its split differs"),
        (len(folders) > 1 or not all(_same_bytes(scribbles / f"{s}.geojson",
                                                 table_scribbles / f"{s}.geojson")
                                     for s in data.train_stems + data.val_stems),
         f"its scribbles ({scribbles}) differ from {table_scribbles}"),
    ]
    for failed, message in problems:
        if failed:
            raise ConfigError(f"{option}: cannot adopt {source} as {out_dir.name}: "
                              f"{message}.")
    # A finished stage needs no resume state (the optimizer, 3x the weights).
    shutil.copytree(source, out_dir, ignore=shutil.ignore_patterns(STATE_DIR))
    best = read_card(source)
    done = {"config": config.to_dict(), "train_seconds": training["training_seconds"],
            "wall_seconds_last_call": 0.0, "resumed": False, "best_epoch": best.training["epoch"],
            "selection": {k: v for k, v in best.metrics.items() if k.startswith("val_")},
            "hardware": training.get("hardware"), "adopted_from": str(source)}
    _write_json(out_dir / STAGE_FILE, done)
    logger.info("%s: adopted %s (%d epochs, %.0f s of training)", out_dir, source,
                training["epoch"], training["training_seconds"])
    return done


def train_stage(out_dir: Path, config: TrainConfig, images: Callable[[], tuple[list, list]],
                device: str, record: dict, adopt: Callable[[], dict] | None = None
                ) -> dict[str, Any]:
    """Train one stage into ``out_dir`` unless done; resume an interrupted one.

    ``adopt``, when given and ``out_dir`` does not exist yet, makes the stage instead (see
    :func:`adopt_stage`). Returns the stage record (``out_dir/stage.json``): config,
    ``train_seconds`` (the card's ``training_seconds``: epochs and EMA updates, without held-out
    scoring and checkpoints), wall seconds of the last call, best epoch and its held-out
    scribble metrics.
    """
    marker = out_dir / STAGE_FILE
    if marker.is_file():
        done = json.loads(marker.read_text(encoding="utf-8"))
        if with_defaults(done["config"]) != config.to_dict():
            raise ConfigError(f"{out_dir}: trained with other settings; delete it or pass --out.")
        return done
    if adopt is not None and not out_dir.exists():
        return adopt()
    train, val = images()
    resume = (out_dir / STATE_DIR / STATE_FILE).is_file()
    logger.info("%s: %s %d epochs on %d images", out_dir, "resuming" if resume else "training",
                config.epochs, len(train))
    started = time.perf_counter()
    result = train_model(train, val, config, out_dir, device=device, resume=resume,
                         overwrite=not resume, name=out_dir.name, record=record, progress=False)
    card = read_card(out_dir / LAST_DIR)
    done = {"config": config.to_dict(), "train_seconds": card.training["training_seconds"],
            "wall_seconds_last_call": round(time.perf_counter() - started, 1), "resumed": resume,
            "best_epoch": result.best_epoch, "selection": result.metrics,
            "hardware": card.training.get("hardware")}
    _write_json(marker, done)
    return done


def ensure_model(table: Table, data: TableData, row: Row, out: Path, device: str,
                 quick: bool, epochs: int | None, adopt: dict[str, tuple[Path, str]] | None = None
                 ) -> dict[str, dict]:
    """Train a training row's two stages (each skipped when done); their stage records.

    ``adopt`` maps stage folder names to the finished model directory to copy in instead of
    training and the option that asked for it (:func:`adopt_stage`).
    """
    adopt = adopt or {}
    warm_dir = out / warmup_name(row)
    warm_config = load_train_config(None, stage_values(table, row, "warmup", quick, epochs))
    config = load_train_config(None, {**stage_values(table, row, "s2lcm", quick, epochs),
                                      "init_model": str(warm_dir)})
    record = {"table": {"row": row.name, "supervision": row.supervision, "ratio": row.ratio},
              "scribbles": {"ratio": row.ratio, "seed": table.recipe["scribble_seed"]},
              "data": {"train": data.train_stems, "validation": data.val_stems}}

    def images() -> tuple[list, list]:
        return data.train_images(row, warm_config)

    def adopter(folder: Path, stage_config: TrainConfig) -> Callable[[], dict] | None:
        if folder.name not in adopt:
            return None
        source, option = adopt[folder.name]
        return lambda: adopt_stage(source, folder, stage_config, data, data.scribble_ratio(row),
                                   option)

    warmup = train_stage(warm_dir, warm_config, images, device,
                         {**record, "table": {"stage": warm_dir.name}},
                         adopter(warm_dir, warm_config))
    second = train_stage(out / row.name, config, images, device, record,
                         adopter(out / row.name, config))
    return {"warmup": warmup, "s2lcm": second}


def evaluate_model(model_dir: Path, data: TableData, out_dir: Path,
                   postprocess: PostprocessConfig, device: str) -> dict[str, Any]:
    """Segment the validation images whole with a model and evaluate them on full labels.

    Float16 autocast on CUDA, float32 on the CPU (never bfloat16): every CPU row of the table is
    computed alike, whatever the CPU.
    """
    predictions = out_dir / "predictions"
    started = time.perf_counter()
    for stem in data.val_stems:
        segment_slide(data.image_path(stem), predictions, model=model_dir,
                      mpp=data.recipe["image_mpp"], tiling=TilingConfig(tissue_mask=False),
                      export=ExportConfig(labels=False, overlay=False, overwrite=True),
                      postprocess=postprocess, device=device, amp=device.startswith("cuda"))
    seconds = round(time.perf_counter() - started, 1)
    result = evaluate_dirs(predictions, data.labels_dir, out_csv=out_dir / "validation.csv")
    return {"mean": {k: float(result.mean[k]) for k in METRICS}, "per_image": result.rows,
            "n_images": len(result.rows), "segment_s": seconds}


def run_row(table: Table, data: TableData, row: Row, out: Path, device: str, quick: bool,
            epochs: int | None, adopt: dict[str, tuple[Path, str]] | None = None
            ) -> dict[str, Any]:
    """Train (if needed) and evaluate one row; writes and returns its ``result.json``."""
    stages = ensure_model(table, data, table.row(row.model_row), out, device, quick, epochs,
                          adopt)
    model_dir = out / row.model_row
    model_row = table.row(row.model_row)
    warm_config = load_train_config(None, stage_values(table, model_row, "warmup", quick, epochs))
    for directory in (model_dir, model_dir / LAST_DIR):
        ensure_calibrated(directory, lambda: data.train_images(model_row, warm_config)[1],
                          warm_config.separation_heights_um, warm_config.separation_thresholds,
                          device)
    postprocess = PostprocessConfig(**{**read_card(model_dir).postprocess, **row.postprocess})
    (out / row.name).mkdir(parents=True, exist_ok=True)
    figures = evaluate_model(model_dir, data, out / row.name, postprocess, device)
    last = None
    if row.model_row == row.name:
        last_post = PostprocessConfig(**{**read_card(model_dir / LAST_DIR).postprocess,
                                         **row.postprocess})
        last_figures = evaluate_model(model_dir / LAST_DIR, data, out / row.name / LAST_DIR,
                                      last_post, device)
        last = {**last_figures["mean"], "epoch": read_card(model_dir / LAST_DIR).training["epoch"]}
    warm_s, second_s = stages["warmup"]["train_seconds"], stages["s2lcm"]["train_seconds"]
    result = {
        "row": row.name, "label": row.label, "supervision": row.supervision, "ratio": row.ratio,
        "model_row": row.model_row, "separate": postprocess.separate, **figures["mean"],
        "n_images": figures["n_images"], "best_epoch": stages["s2lcm"]["best_epoch"],
        "warmup_train_s": warm_s, "stage2_train_s": second_s,
        "train_s": round(warm_s + second_s, 1), "segment_s": figures["segment_s"],
        "device": device, "quick": quick, "postprocess": dataclasses.asdict(postprocess),
        "last": last,
        "per_image": figures["per_image"], "stages": stages, "hardware": hardware(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _write_json(out / row.name / RESULT_FILE, result)
    return result


def collect_results(table: Table, out: Path) -> list[dict[str, Any]]:
    """The result of every row done under ``out``, in table order."""
    found = [out / row.name / RESULT_FILE for row in table.rows]
    return [json.loads(p.read_text(encoding="utf-8")) for p in found if p.is_file()]


def write_csv(results: Sequence[dict], path: Path) -> Path:
    """One line per row, the columns of :data:`COLUMNS`."""
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for result in results:
            last = {f"last_{k}": v for k, v in (result.get("last") or {}).items()}
            writer.writerow({k: _cell({**result, **last}.get(k), 6) for k in COLUMNS})
    return path


def format_markdown(table: Table, results: Sequence[dict]) -> str:
    """The table (rows not yet measured left empty), the paper anchors, targets and checks."""
    by_row = {r["row"]: r for r in results}
    header = ("row", "what", "ratio", "Dice", "IoU", "AJI", "PQ", "DQ", "SQ", "obj. Dice",
              "epoch", "train (s)", "segment (s)")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table.rows:
        result = by_row.get(row.name)
        model_row = table.row(row.model_row)
        ratio = "dense" if model_row.supervision == "full" else f"{model_row.ratio:.2f}"
        cells = ["not yet measured"] + [""] * 9
        if result is not None:
            train = (f"{result['train_s']:.0f}" if row.model_row == row.name
                     else f"(= {row.model_row})")
            cells = [_cell(result[k], 4) for k in METRICS] + [
                _cell(result.get("best_epoch"), 0), train, _cell(result["segment_s"], 1)]
        lines.append("| " + " | ".join([row.name, row.label, ratio] + cells) + " |")
    for name, object_dice, iou in ANCHORS:
        lines.append(f"| *paper* | *{name}* | | | *{iou:.4f}* | | | | | *{object_dice:.4f}* "
                     "| | | |")
    lines += ["", "Anchors (*paper*): Scribble2Label, MICCAI 2020, Table 1, on the MoNuSeg test "
              "images with an ImageNet ResNet-50; its Dice [mIoU] are our obj. Dice [IoU]. Other "
              "images, network and schedule: a reference, not a target. epoch: the selected "
              "epoch of the second stage (0 = the warm-up model was never bettered on the "
              "held-out scribbles).", ""]
    lines += check_lines(table, by_row)
    lines += ["", "The models of the second stage's last epoch (not selected: what each component "
              "did to the model by the end of the stage, whatever the held-out scribbles said):",
              "", "| row | epoch | Dice | AJI | PQ | obj. Dice |", "|---|---|---|---|---|---|"]
    last_rows = {name: r["last"] for name, r in by_row.items() if r.get("last")}
    for row in table.rows:
        if row.name in last_rows:
            last = last_rows[row.name]
            lines.append(f"| {row.name} | {last['epoch']} | "
                         + " | ".join(_cell(last[k], 4) for k in LAST_METRICS) + " |")
    lines += check_lines(table, last_rows, targets=False)
    machines = sorted({_machine(r) for r in results})
    resolutions = sorted({r["stages"]["s2lcm"]["config"]["mpp"] for r in results})
    lines += ["", "Model resolution: " + (", ".join(f"{m:g}" for m in resolutions) or "none yet")
              + " µm/px (the recipe's `mpp`; the validation images are scored at their 0.25)."]
    lines += ["", f"Hardware: {'; '.join(machines) or 'none yet'}. train = warm-up + second stage "
              "(epochs and EMA updates; a warm-up shared by rows is counted in each); segment = "
              "the validation images, whole."]
    if any(r.get("quick") for r in results):
        lines += ["", "**SMOKE RUN (--quick): a few steps per row. These are not results.**"]
    return "\n".join(lines) + "\n"


def check_lines(table: Table, by_row: dict, targets: bool = True) -> list[str]:
    """The targets of the default recipe (when ``targets``) and the component checks, as Markdown
    list lines; ``by_row`` maps row names to their figures."""
    lines, default = [], by_row.get(DEFAULT_ROW)
    for key, target in TARGETS.items() if targets else ():
        verdict = ("not yet measured" if default is None else
                   f"{default[key]:.4f}, " + ("met" if default[key] >= target else "NOT met"))
        lines.append(f"- target {key} >= {target:.2f} ({DEFAULT_ROW}): {verdict}")
    for row in (r for r in table.rows if r.parent):
        child, parent = by_row.get(row.name), by_row.get(row.parent)
        if child is None or parent is None:
            lines.append(f"- {row.name} vs {row.parent}: not yet measured")
            continue
        deltas = {k: child[k] - parent[k] for k in TARGETS}
        worse = [k for k, v in deltas.items() if v < 0]
        lines.append(f"- {row.name} vs {row.parent}: "
                     + ", ".join(f"{k} {v:+.4f}" for k, v in deltas.items()) + ": "
                     + (f"WORSE on {', '.join(worse)}" if worse else "no worse"))
    return lines


def _machine(result: dict) -> str:
    info = result.get("hardware") or {}
    text = (f"{result.get('device')} ({info.get('processor')}, {info.get('cpu_count')} CPUs, "
            f"{info.get('torch_threads')} torch threads, torch {info.get('torch')}")
    return text + (f", {info['cuda_device']})" if info.get("cuda_device") else ")")


def _cell(value: Any, digits: int) -> str:
    if value is None:
        return ""
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _same_bytes(path: Path, other: Path) -> bool:
    return path.is_file() and path.read_bytes() == other.read_bytes()


def _write_json(path: Path, value: Any) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(value, indent=1, default=_plain) + "\n", encoding="utf-8")
    partial.replace(path)


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected rows (skipping done ones) and write the table; the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="", help="comma-separated row names (default: all)")
    parser.add_argument("--quick", action="store_true", help="smoke run: a few steps per row")
    parser.add_argument("--epochs", type=int, default=None, help="epochs of each stage")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=None,
                        help="training seed of every stage, to measure how far a row repeats "
                             "(default: the recipe's 0; the scribbles keep seed 0)")
    parser.add_argument("--second-stage-seed", type=int, default=None, metavar="N",
                        help="training seed of the second stages only: the rows again on the "
                             "warm-ups of --warmups-from, to measure what each component does "
                             "by chance and what it does always")
    parser.add_argument("--warmups-from", type=Path, default=None, metavar="DIR",
                        help="copy the finished warm-ups from this table folder instead of "
                             "training them (checked to be the same recipe; default runs/table "
                             "with --second-stage-seed)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default runs/table, runs/table-seed<N> with "
                             "--seed N, runs/table-stage2-seed<N> with --second-stage-seed N, "
                             "runs/table-quick with --quick)")
    parser.add_argument("--data", type=Path, default=DATA_DIR, help="MoNuSeg training folder")
    parser.add_argument("--split", type=Path, default=SPLIT_FILE, help="JSON train/validation")
    parser.add_argument("--rows-file", type=Path, default=ROWS_FILE, help="row definitions")
    parser.add_argument("--adopt-default", type=Path, default=None, metavar="RUNS",
                        help="take the warm-up and s2lcm stages from the finished run of "
                             "pipelines/train_default_model.sh in RUNS (default-model-warmup, "
                             "default-model; checked to be the same recipe) instead of "
                             "training them again")
    args = parser.parse_args(argv)
    if args.seed is not None and args.second_stage_seed is not None:
        parser.error("--seed and --second-stage-seed exclude each other: --seed already sets "
                     "the second stages' seed")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    folder = "table-quick" if args.quick else "table"
    if args.seed is not None and not args.quick:
        folder = f"table-seed{args.seed}"
    warmups_from = args.warmups_from
    if args.second_stage_seed is not None:
        base = "table-quick" if args.quick else "table"
        folder = f"{base}-stage2-seed{args.second_stage_seed}"
        warmups_from = warmups_from or ROOT / "runs" / base
    out = (args.out or ROOT / "runs" / folder).resolve()
    try:
        table = load_table(args.rows_file)
        if args.seed is not None:
            table = with_training_seed(table, args.seed)
        if args.second_stage_seed is not None:
            table = with_training_seed(table, args.second_stage_seed, second_stage_only=True)
        rows = [table.row(n) for n in args.rows.split(",") if n] if args.rows else table.rows
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"--device {args.device}: CUDA is not available here.")
        if args.threads:
            torch.set_num_threads(args.threads)
        out.mkdir(parents=True, exist_ok=True)
        split = json.loads(args.split.read_text(encoding="utf-8"))
        data = TableData(args.data, split, out, table.recipe)
        adopt = {}
        if warmups_from:
            if warmups_from.resolve() == out:
                raise ConfigError(f"--warmups-from {warmups_from}: that is the output folder; "
                                  "name another table folder or --out.")
            adopt = {name: (warmups_from / name, "--warmups-from")
                     for name in {warmup_name(r) for r in table.rows
                                  if r.supervision != "evaluation"}}
        if args.adopt_default:
            adopt.update({f"warmup-r{table.recipe['scribble_ratio']}":
                          (args.adopt_default / "default-model-warmup", "--adopt-default"),
                          DEFAULT_ROW: (args.adopt_default / "default-model", "--adopt-default")})
        for row in rows:
            if (out / row.name / RESULT_FILE).is_file():
                logger.info("%s: done (%s); skipped", row.name, out / row.name / RESULT_FILE)
                continue
            started = time.perf_counter()
            run_row(table, data, row, out, args.device, args.quick, args.epochs, adopt)
            logger.info("%s: done in %.0f s", row.name, time.perf_counter() - started)
    except S2LCMError as error:
        logger.error("%s", error)
        return 2
    results = collect_results(table, out)
    write_csv(results, out / "results.csv")
    markdown = format_markdown(table, results)
    (out / "results.md").write_text(markdown, encoding="utf-8")
    sys.stdout.write(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
