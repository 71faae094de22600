"""The ``wsi-s2lcm`` command line: a thin Click group over the library.

Each command parses its options, builds the configs, calls one library function and maps errors
to exit codes: 0 done, 1 unexpected failure, 2 bad usage or bad input (one line, no traceback),
3 a cohort finished with some slides failed, 130 interrupted (Ctrl-C). Logging is configured by
:mod:`wsi_s2lcm.cli_options`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from wsi_s2lcm import __version__
from wsi_s2lcm.cli_evaluate import evaluate_command
from wsi_s2lcm.cli_options import (
    parse_assignments,
    postprocess_with,
    segmentation_options,
    show_progress,
    verbosity_options,
)
from wsi_s2lcm.cli_training import scribbles_command, train_command
from wsi_s2lcm.dispatch import JOBQUEUE_CLUSTERS
from wsi_s2lcm.errors import ConfigError, UserInputError

if TYPE_CHECKING:
    from wsi_s2lcm.segment import SegmentOptions

logger = logging.getLogger("wsi_s2lcm")

EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_SLIDES_FAILED = 3


class _Group(click.Group):
    """Maps library errors to exit codes."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UserInputError as error:
            click.echo(f"error: {error}", err=True)
            ctx.exit(EXIT_BAD_INPUT)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)
        except Exception as error:  # the last line of defence: report, no traceback
            logger.debug("unexpected failure", exc_info=True)
            click.echo(
                f"error: unexpected failure: {type(error).__name__}: {error} "
                "(run with -vv for the traceback and report it)",
                err=True,
            )
            ctx.exit(EXIT_FAILURE)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="wsi-s2lcm")
def main() -> None:
    """Segment nuclei in H&E whole-slide images and train the model from QuPath scribbles."""


@main.command("segment")
@click.argument("slides", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output directory; files are named after each slide's stem.")
@segmentation_options
@click.option("--workers", type=int, default=2, show_default=True,
              help="Local Dask worker threads (0: run in this thread).")
@click.option("--processes", is_flag=True, help="Local Dask workers are processes, not threads.")
@click.option("--scheduler", default=None,
              help="Address (or scheduler-file .json) of a running dask.distributed scheduler.")
@verbosity_options
def segment_command(
    slides: tuple[Path, ...],
    out_dir: Path,
    workers: int,
    processes: bool,
    scheduler: str | None,
    **values: Any,
) -> None:
    """Segment every nucleus of SLIDES into QuPath GeoJSON detections in --out."""
    from wsi_s2lcm.dispatch import open_dispatcher
    from wsi_s2lcm.outputs import check_batch_outputs
    from wsi_s2lcm.segment import segment_slide
    from wsi_s2lcm.slide import check_readable, open_slide

    options = _segment_options(**values)
    for path in slides:
        with open_slide(path, mpp=options.mpp) as slide:
            check_readable(slide)
    check_batch_outputs(slides, out_dir, options.export)
    with open_dispatcher(workers=workers, scheduler=scheduler, processes=processes) as dispatcher:
        for path in slides:
            summary = segment_slide(
                path, out_dir, **options.arguments(), dispatcher=dispatcher,
                progress=show_progress(),
            )
            dropped = sum(summary["dropped_by_check"].values())
            click.echo(
                f"{path}: {summary['nuclei']} nuclei ({dropped} more objects dropped by the "
                f"checks, see {Path(summary['outputs']['summary']).name}), "
                f"{summary['tissue_mm2']:.2f} mm² tissue, "
                f"{summary['seconds']['total']:.1f} s -> {summary['outputs']['geojson']}"
            )


@main.command("cohort")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output directory: each slide's outputs, named after its stem, and cohort.csv.")
@segmentation_options
@click.option("--workers", type=int, default=1, show_default=True,
              help="Slides segmented at once by local Dask worker threads, sharing this "
                   "machine's cores (0: one by one in this thread).")
@click.option("--processes", is_flag=True, help="Local Dask workers are processes, not threads.")
@click.option("--scheduler", default=None,
              help="Address (or scheduler-file .json) of a running dask.distributed scheduler "
                   "whose workers segment the slides.")
@click.option("--cluster", type=click.Choice(["local", *JOBQUEUE_CLUSTERS]), default="local",
              show_default=True,
              help="Where the slides run: local workers (or --scheduler), or batch jobs "
                   "submitted through dask-jobqueue.")
@click.option("--jobs", type=int, default=1, show_default=True,
              help="Batch jobs to submit with a batch --cluster; each runs as many slides at "
                   "once as it has worker processes, each with cores / processes threads.")
@click.option("--cluster-option", "cluster_values", multiple=True, metavar="KEY=VALUE",
              help="A dask-jobqueue setting of each batch job, e.g. cores=8, memory=32GB, "
                   "walltime=04:00:00, queue=gpu (repeatable; the rest comes from dask's "
                   "jobqueue configuration).")
@verbosity_options
def cohort_command(
    source: Path,
    out_dir: Path,
    workers: int,
    processes: bool,
    scheduler: str | None,
    cluster: str,
    jobs: int,
    cluster_values: tuple[str, ...],
    **values: Any,
) -> None:
    """Segment every slide of SOURCE (a folder, or a .csv manifest) into --out; resumable.

    Each slide is one Dask task; a slide that fails is reported in cohort.csv and the others
    go on (exit code 3 when some failed). Running the command again skips the slides whose
    outputs are complete and retries the others.
    """
    from wsi_s2lcm.cohort import REPORT_NAME, find_slides, run_cohort
    from wsi_s2lcm.dispatch import open_dispatcher

    options = _segment_options(**values)
    if source.is_dir() and out_dir.resolve() == source.resolve():
        raise ConfigError(
            f"--out {out_dir} is the slide folder itself; give another folder, so that the "
            "outputs are not taken for slides."
        )
    slides = find_slides(source)
    cluster_options = parse_assignments(cluster_values, "--cluster-option")
    if cluster_options and cluster == "local":
        raise ConfigError("--cluster-option applies to batch jobs; add --cluster slurm (or pbs, "
                          "lsf, sge).")
    with open_dispatcher(workers=workers, scheduler=scheduler, processes=processes,
                         cluster=cluster, jobs=jobs, cluster_options=cluster_options,
                         in_flight=len(slides)) as dispatcher:
        records = run_cohort(slides, out_dir, options, dispatcher, progress=show_progress())
    counts = {status: sum(r["status"] == status for r in records)
              for status in ("done", "skipped", "failed")}
    click.echo(
        f"{len(records)} slides: {counts['done']} segmented, {counts['skipped']} complete from an "
        f"earlier run, {counts['failed']} failed -> {out_dir / REPORT_NAME}"
    )
    if counts["failed"]:
        click.get_current_context().exit(EXIT_SLIDES_FAILED)


def _segment_options(
    mpp: float | None,
    model: str | None,
    tile_size: int,
    overlap: int,
    context: int,
    batch_size: int,
    device: str,
    amp: bool | None,
    tta: bool,
    zoom: str,
    no_tissue_mask: bool,
    fmt: str,
    no_labels: bool,
    no_overlay: bool,
    overwrite: bool,
    postprocess_values: tuple[str, ...],
) -> SegmentOptions:
    """The :class:`~wsi_s2lcm.segment.SegmentOptions` of the segmentation options, checked."""
    from wsi_s2lcm.config import ExportConfig, TilingConfig
    from wsi_s2lcm.models import read_card, resolve_model
    from wsi_s2lcm.predictor import resolve_device
    from wsi_s2lcm.segment import SegmentOptions

    if mpp is not None and mpp <= 0:
        raise ConfigError(f"--mpp {mpp} must be a positive number of µm per pixel.")
    tiling = TilingConfig(
        tile_size=tile_size,
        overlap=overlap,
        context=context,
        batch_size=batch_size,
        tissue_mask=not no_tissue_mask,
    )
    export = ExportConfig(
        format=fmt, labels=not no_labels, overlay=not no_overlay, overwrite=overwrite
    )
    card = read_card(resolve_model(model))
    postprocess = None
    if postprocess_values:
        postprocess = postprocess_with(card.postprocess, postprocess_values)
    resolve_device(device)
    return SegmentOptions(model=model, mpp=mpp, tiling=tiling, export=export,
                          postprocess=postprocess, device=device, amp=amp, tta=tta,
                          zoom=_zoom_option(zoom))


def _zoom_option(value: str) -> float | None:
    """``--zoom``: None for ``auto``, else the factor, checked."""
    from wsi_s2lcm.zoom import check_zoom

    if value.strip().lower() == "auto":
        return None
    try:
        factor = float(value)
    except ValueError:
        raise ConfigError(f"--zoom {value!r} must be auto or a number from 1 to 4.") from None
    try:
        return check_zoom(factor)
    except ConfigError as error:
        raise ConfigError(f"--zoom: {error}") from None


@main.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print the full model cards as JSON.")
@verbosity_options
def models_command(as_json: bool) -> None:
    """List the shipped models."""
    from wsi_s2lcm.models import DEFAULT_MODEL, list_models

    found = list_models()
    if as_json:
        click.echo(json.dumps([card.to_dict() for card, _ in found], indent=2))
        return
    if not found:
        click.echo("no shipped models")
        return
    for card, path in found:
        marker = " (default)" if card.name == DEFAULT_MODEL else ""
        held_out = card.metrics.get("validation_full_masks", {}).get("mean", {})
        figures = ", ".join(f"{k} {held_out[k]:.3f}" for k in ("dice", "aji", "pq") if k in held_out)
        click.echo(
            f"{card.name}{marker}: {card.architecture.get('encoder', '?')} U-Net at {card.mpp} µm/px"
            f"; held-out {figures or 'figures not recorded'}; {card.licence.split(':')[0]}; {path}"
        )


@main.command("info")
@click.argument("slide", type=click.Path(path_type=Path))
@click.option("--mpp", type=float, default=None,
              help="µm per pixel at level 0; overrides the file's value.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@verbosity_options
def info_command(slide: Path, mpp: float | None, as_json: bool) -> None:
    """Print a slide's dimensions, levels, mpp, vendor and associated images."""
    from wsi_s2lcm.slide import slide_info

    info = slide_info(slide, mpp=mpp)
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
        return
    for line in describe_slide(info):
        click.echo(line)


def describe_slide(info: dict[str, Any]) -> list[str]:
    """The lines ``wsi-s2lcm info`` prints for :func:`~wsi_s2lcm.slide.slide_info`'s record."""
    info = dict(info)
    width, height = info.pop("dimensions")
    mpp, source = info.pop("mpp"), info.pop("mpp_source", "")
    source = {"file": "from the file", "--mpp": "given with --mpp"}.get(source, source)
    lines = [f"path: {info.pop('path')}", f"dimensions: {width} x {height} px (level 0)",
             f"mpp: {mpp:g} µm/px ({source})" if mpp
             else "mpp: not recorded (pass --mpp to segment this slide)"]
    levels = info.pop("levels", [])
    lines.append(f"levels: {len(levels)}")
    for index, level in enumerate(levels):
        level_width, level_height = level["dimensions"]
        lines.append(f"  {index}: {level_width} x {level_height} px, downsample "
                     f"{level['downsample']:g}")
    for key, value in info.items():
        if isinstance(value, (list, tuple)):
            value = ", ".join(str(v) for v in value) or "none"
        elif value is None:
            value = "not recorded"
        lines.append(f"{key.replace('_', ' ')}: {value}")
    return lines


for _command in (scribbles_command, train_command, evaluate_command):
    main.add_command(_command)
