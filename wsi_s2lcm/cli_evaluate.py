"""The ``wsi-s2lcm evaluate`` command: predictions against ground truth, a table and a CSV."""

from __future__ import annotations

from pathlib import Path

import click

from wsi_s2lcm.cli_options import verbosity_options
from wsi_s2lcm.evaluation import evaluate_dirs


@click.command("evaluate")
@click.option(
    "--pred",
    "pred_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder of predictions: label images (PNG/TIFF), GeoJSON or ImageScope XML, paired "
    "with --gt by stem.",
)
@click.option(
    "--gt",
    "gt_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder of ground truth: label images (PNG/TIFF), GeoJSON or ImageScope XML (.xml, "
    "as MoNuSeg ships).",
)
@click.option(
    "--out",
    "out_csv",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="CSV of the per-image metrics and their mean [default: PRED/evaluation.csv].",
)
@click.option(
    "--shape",
    type=(int, int),
    default=None,
    metavar="HEIGHT WIDTH",
    help="Raster size for pairs where both sides are polygons (GeoJSON or XML).",
)
@click.option(
    "--images",
    "image_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder of images whose sizes give the raster of pairs where both sides are polygons "
    "(by stem).",
)
@verbosity_options
def evaluate_command(
    pred_dir: Path,
    gt_dir: Path,
    out_csv: Path | None,
    shape: tuple[int, int] | None,
    image_dir: Path | None,
) -> None:
    """Score predicted nuclei against ground truth, per image and on average.

    Reports pixel Dice, foreground IoU, AJI, PQ (with DQ and SQ, matched at IoU > 0.5) and
    Scribble2Label's object Dice. Files pair by stem (the name without its label suffix).
    """
    if out_csv is None:
        out_csv = pred_dir / "evaluation.csv"
    result = evaluate_dirs(pred_dir, gt_dir, out_csv=out_csv, shape=shape, image_dir=image_dir)
    if not click.get_current_context().meta.get("wsi_s2lcm.quiet"):
        click.echo(result.format_table())
        click.echo(f"\nWrote {result.csv_path}")
