"""Evaluate a folder of predictions against a folder of ground truth, paired by file stem.

The files are read by :mod:`wsi_s2lcm.label_files` (label images, GeoJSON or ImageScope XML on
either side); the metrics come from :mod:`wsi_s2lcm.metrics`.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wsi_s2lcm.errors import UserInputError
from wsi_s2lcm.label_files import find_image, index_label_files, load_label_pair, note
from wsi_s2lcm.metrics import COUNT_NAMES, METRIC_NAMES, evaluate_pair

logger = logging.getLogger(__name__)

COLUMNS = ("image",) + METRIC_NAMES + COUNT_NAMES


@dataclass(frozen=True)
class EvaluationResult:
    """Per-image metrics, their mean, and what was noticed on the way.

    Attributes
    ----------
    rows
        One dict per image pair, keyed by :data:`COLUMNS` (``image`` is the stem).
    mean
        The mean of each metric and count over the images, with ``image = "mean"``.
    csv_path
        Where the CSV was written, or None.
    warnings
        Messages about the inputs (binary masks labelled, unpaired files, skipped features).
    """

    rows: list[dict]
    mean: dict
    csv_path: Path | None = None
    warnings: list[str] = field(default_factory=list)

    def format_table(self, digits: int = 4) -> str:
        """The rows and the mean as a fixed-width text table."""
        return format_table(self.rows + [self.mean], digits=digits)


def evaluate_dirs(
    pred_dir: Path | str,
    gt_dir: Path | str,
    out_csv: Path | str | None = None,
    shape: tuple[int, int] | None = None,
    image_dir: Path | str | None = None,
) -> EvaluationResult:
    """Evaluate every prediction in ``pred_dir`` against the ground truth of the same stem.

    Parameters
    ----------
    pred_dir, gt_dir
        Folders of label images (``.png``, ``.tif``, ``.tiff``), GeoJSON (``.geojson``,
        ``.json``, optionally ``.gz``) or ImageScope XML (``.xml``); other files are ignored.
    out_csv
        Where to write the per-image rows and the mean row as CSV; nothing is written when None.
    shape
        ``(height, width)`` of the rasters for pairs where both sides are polygon files.
    image_dir
        A folder of images whose stems give the shape of pairs of two polygon files.

    Returns
    -------
    EvaluationResult
        Rows per image (sorted by stem), the mean, the CSV path and the warnings.

    Raises
    ------
    UserInputError
        If a folder is missing, or no file stems are shared by the two folders.
    AnnotationError
        If a file cannot be read or a pair differs in shape (the message names the files).
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    notes: list[str] = []
    predictions = index_label_files(pred_dir, "prediction", notes)
    truths = index_label_files(gt_dir, "ground-truth", notes)
    stems = sorted(set(predictions) & set(truths))
    if not stems:
        raise UserInputError(
            f"no prediction in {pred_dir} ({len(predictions)} files) shares a file stem with the "
            f"ground truth in {gt_dir} ({len(truths)} files); name them alike, for example "
            "slide.geojson and slide.png"
        )
    for role, unpaired in (
        ("prediction", set(predictions) - set(truths)),
        ("ground truth", set(truths) - set(predictions)),
    ):
        if unpaired:
            names = ", ".join(sorted(unpaired)[:5])
            note(notes, f"{len(unpaired)} {role} file(s) without a partner were skipped: {names}")
    rows = []
    for stem in stems:
        image_path = find_image(Path(image_dir), stem) if image_dir is not None else None
        pred_labels, gt_labels = load_label_pair(
            predictions[stem], truths[stem], shape, image_path, notes
        )
        row = {"image": stem, **evaluate_pair(pred_labels, gt_labels)}
        logger.info("%s: dice %.4f aji %.4f pq %.4f", stem, row["dice"], row["aji"], row["pq"])
        rows.append(row)
    mean = {"image": "mean"}
    mean.update({key: float(np.mean([row[key] for row in rows])) for key in COLUMNS[1:]})
    csv_path = None
    if out_csv is not None:
        csv_path = write_csv(rows + [mean], Path(out_csv))
    return EvaluationResult(rows=rows, mean=mean, csv_path=csv_path, warnings=notes)


def write_csv(rows: list[dict], path: Path) -> Path:
    """Write metric rows as CSV with the columns of :data:`COLUMNS`; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: _format_value(row[key], 6) for key in COLUMNS})
    return path


def _format_value(value: object, digits: int) -> str:
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.{digits}f}"
    return str(value)


def format_table(rows: list[dict], digits: int = 4) -> str:
    """Metric rows as a fixed-width text table, one line per row under a header.

    Parameters
    ----------
    rows
        Dicts keyed by :data:`COLUMNS`.
    digits
        Decimals shown for metrics (counts of a mean row get one decimal).

    Returns
    -------
    str
        The table, without a trailing newline.
    """
    cells = [list(COLUMNS)]
    for row in rows:
        metrics = [_format_value(row[key], digits) for key in METRIC_NAMES]
        counts = [_format_value(row[key], 1) for key in COUNT_NAMES]
        cells.append([str(row["image"])] + metrics + counts)
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = []
    for index, line in enumerate(cells):
        padded = [cell.rjust(width) for cell, width in zip(line[1:], widths[1:])]
        text = "  ".join([line[0].ljust(widths[0])] + padded)
        lines.append(text.rstrip())
        if index == 0:
            lines.append("-" * len(text))
    return "\n".join(lines)
