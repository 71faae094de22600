"""The cohort use case: many slides, one Dask task each, and a report; resumable.

:func:`find_slides` lists a cohort: the slide files of a folder, or a CSV manifest with a
``slide`` column and an optional per-slide ``mpp`` column. :func:`run_cohort` segments every
slide whose outputs are not complete yet with :func:`wsi_s2lcm.segment.segment_slide`, one task
per slide on a :class:`~wsi_s2lcm.dispatch.Dispatcher`, and rewrites ``cohort.csv`` in the output
folder as each slide ends. A slide that fails is recorded with its error and the others go on; a
slide whose outputs are complete from a run with the same settings is skipped, so running the
same command again resumes an interrupted cohort and retries the slides that failed.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

from wsi_s2lcm.atomic import write_text_atomic
from wsi_s2lcm.config import ExportConfig
from wsi_s2lcm.dispatch import Dispatcher, available_cpus, task_threads
from wsi_s2lcm.errors import ConfigError, UserInputError
from wsi_s2lcm.outputs import OutputPaths, check_distinct_stems
from wsi_s2lcm.segment import SegmentOptions, run_settings, segment_slide, summary_settings
from wsi_s2lcm.slide import OPENSLIDE_SUFFIXES, PLAIN_IMAGE_SUFFIXES

logger = logging.getLogger(__name__)

#: The file that records every slide's outcome, in the output folder.
REPORT_NAME = "cohort.csv"

#: Its columns, in order.
REPORT_COLUMNS = ("slide", "status", "nuclei", "tissue_mm2", "tiles", "seconds", "geojson", "error")

#: File suffixes taken as slides in a cohort folder.
SLIDE_SUFFIXES = OPENSLIDE_SUFFIXES + PLAIN_IMAGE_SUFFIXES


@dataclasses.dataclass(frozen=True)
class CohortSlide:
    """One slide of a cohort, with the µm/px its manifest gives it (``None``: the file's)."""

    path: Path
    mpp: float | None = None


def find_slides(source: str | Path) -> list[CohortSlide]:
    """The slides of a cohort: a folder's slide files (sorted), or the rows of a CSV manifest.

    A manifest has a ``slide`` column (paths relative to the manifest's folder, or absolute) and
    may have an ``mpp`` column (empty: the file's own value).

    Raises
    ------
    ConfigError
        The source is missing, is neither a folder nor a ``.csv`` file, holds no slide, or a
        manifest lacks the ``slide`` column or gives an mpp that is not a positive number.
    """
    source = Path(source)
    if source.is_dir():
        slides = [
            CohortSlide(path)
            for path in sorted(source.iterdir())
            if path.is_file() and not path.name.startswith(".")
            and path.suffix.lower() in SLIDE_SUFFIXES
        ]
        if not slides:
            raise ConfigError(
                f"{source}: no slide files in this folder (looked for "
                f"{', '.join(SLIDE_SUFFIXES)}); give the folder that holds them or a .csv manifest."
            )
        return slides
    if not source.exists():
        raise ConfigError(f"{source}: no such folder or manifest; check the path.")
    if source.suffix.lower() != ".csv":
        raise ConfigError(
            f"{source}: not a folder or a .csv manifest; to segment one slide, use "
            "wsi-s2lcm segment."
        )
    return read_manifest(source)


def read_manifest(path: str | Path) -> list[CohortSlide]:
    """The slides listed in a CSV manifest (see :func:`find_slides`)."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in reader.fieldnames or []]
        if "slide" not in columns:
            raise ConfigError(
                f"{path}: a manifest needs a 'slide' column (one slide path per row, and "
                "optionally an 'mpp' column); found columns: "
                + (", ".join(c for c in columns if c) or "none") + "."
            )
        reader.fieldnames = columns
        slides = []
        for row in reader:
            name = (row.get("slide") or "").strip()
            if not name:
                raise ConfigError(f"{path}, line {reader.line_num}: the slide column is empty.")
            slide = Path(os.path.normpath(path.parent / name))
            slides.append(CohortSlide(slide, _manifest_mpp(path, reader.line_num, row)))
    if not slides:
        raise ConfigError(f"{path}: the manifest lists no slides; add one slide path per row "
                          "under its 'slide' header.")
    return slides


def _manifest_mpp(path: Path, number: int, row: dict[str, Any]) -> float | None:
    text = (row.get("mpp") or "").strip()
    if not text:
        return None
    try:
        mpp = float(text)
    except ValueError:
        mpp = -1.0
    if not mpp > 0:
        raise ConfigError(
            f"{path}, line {number}: mpp {text!r} must be a positive number of µm per pixel, "
            "or empty for the file's own value."
        )
    return mpp


def plan_slide(
    slide_path: str | Path,
    out_dir: str | Path,
    export: ExportConfig,
    settings: dict[str, Any],
    mpp: float | None = None,
) -> tuple[str, Any]:
    """What a cohort run does with one slide, given the outputs already in ``out_dir``.

    Parameters
    ----------
    slide_path, out_dir, export
        The slide, the output folder and which outputs are wanted.
    settings
        This run's :func:`~wsi_s2lcm.segment.run_settings`.
    mpp
        The slide's µm/px this run gives it (``None``: the file's own, which cannot differ).

    Returns
    -------
    tuple
        ``("run", [])`` when no output is there (or ``export.overwrite``); ``("skip", summary)``
        when every wanted output is there from a run with the same settings; ``("rerun",
        paths)`` when such a run's outputs are only partly there: the paths left are its own,
        to be removed before the slide is segmented again; ``("refuse", message)`` when the
        outputs there come from other settings or from something else (they are left alone).
    """
    paths = OutputPaths.for_slide(slide_path, out_dir, export)
    wanted = paths.wanted(export)
    existing = [path for path in wanted if path.exists()]
    if export.overwrite or not existing:
        return "run", []
    try:
        summary = json.loads(paths.summary.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        summary = None
    if not isinstance(summary, dict) or summary.get("status") != "done":
        return "refuse", (
            f"{existing[0]}: output exists already and no run summary of this tool says how it "
            "was made; pass --overwrite to replace it, or give another --out."
        )
    before = summary_settings(summary)
    changed = ", ".join(key for key in settings if before.get(key) != settings[key])
    recorded_mpp = (summary.get("slide_info") or {}).get("mpp")
    if mpp is not None and (recorded_mpp is None or abs(float(recorded_mpp) - mpp) > 1e-9):
        changed = ", ".join(filter(None, [changed, "mpp"]))
    if changed:
        return "refuse", (
            f"{paths.summary}: the outputs there were made with other settings ({changed}); "
            "pass --overwrite to replace them, or give another --out."
        )
    if len(existing) < len(wanted):
        return "rerun", existing
    return "skip", summary


def run_cohort(
    slides: Sequence[CohortSlide],
    out_dir: str | Path,
    options: SegmentOptions,
    dispatcher: Dispatcher,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Segment every slide not done yet, one task each, and record each outcome.

    Parameters
    ----------
    slides
        The cohort (:func:`find_slides`).
    out_dir
        Output folder: each slide's outputs, named after its stem, and ``cohort.csv``.
    options
        How every slide is segmented.
    dispatcher
        Where the slide tasks run (:func:`wsi_s2lcm.dispatch.open_dispatcher`).
    progress
        Show a progress bar over slides.

    Returns
    -------
    list of dict
        One record per slide, in the order of ``slides``, with the keys of
        :data:`REPORT_COLUMNS`; ``status`` is ``done``, ``skipped`` (complete from an earlier
        run) or ``failed`` (``error`` says why).

    Raises
    ------
    ConfigError
        When two slides would write the same outputs.

    Notes
    -----
    What is done with outputs already in ``out_dir`` is :func:`plan_slide`'s rule: a slide done
    before with the same settings is skipped, the outputs of other settings or of another tool
    are never replaced without ``--overwrite`` (the slide is recorded as failed, with what to
    do), and a run of the same settings whose outputs are only partly there is done again.
    """
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    check_distinct_stems([slide.path for slide in slides], out_dir, options.export)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = run_settings(options)
    records: dict[Path, dict[str, Any]] = {}
    todo = []
    for slide in slides:
        action, found = plan_slide(
            slide.path, out_dir, options.export, settings, slide.mpp or options.mpp
        )
        if action == "skip":
            records[slide.path] = _record(slide, "skipped", found)
        elif action == "refuse":
            records[slide.path] = _record(slide, "failed", error=found)
            logger.warning("%s: failed: %s", slide.path, found)
        else:
            for path in found:
                logger.info("%s: removing %s, left by an incomplete earlier run", slide.path, path)
                remove_output(path)
            todo.append(slide)
    logger.info("%d slide(s) to segment, %d done or refused before any work", len(todo),
                len(records))
    report = out_dir / REPORT_NAME
    local_threads = max(1, available_cpus() // dispatcher.workers) if dispatcher.workers else None
    write_report(report, [records[s.path] for s in slides if s.path in records])
    with tqdm(total=len(todo), unit="slide", disable=not progress, desc="slides") as bar:
        for slide, record, error in dispatcher.as_completed(
            segment_one, todo, str(out_dir), options, local_threads
        ):
            if error is not None:
                record = _record(slide, "failed", error=f"{type(error).__name__}: {error}")
            records[slide.path] = record
            if record["status"] == "failed":
                logger.warning("%s: failed: %s", slide.path, record["error"])
            else:
                logger.info("%s: %s nuclei", slide.path, record["nuclei"])
            write_report(report, [records[s.path] for s in slides if s.path in records])
            bar.update(1)
    return [records[slide.path] for slide in slides]


def segment_one(
    slide: CohortSlide, out_dir: str, options: SegmentOptions, cpu_threads: int | None = None
) -> dict[str, Any]:
    """Segment one slide of a cohort (a Dask task) and return its record; never raises for it.

    An error of the slide is recorded as ``failed`` with its message; the outputs of a failed
    slide are removed by :func:`~wsi_s2lcm.segment.segment_slide`. ``cpu_threads`` is the
    network's share of this machine's cores (local workers); ``None`` on a cluster, where the
    worker running the task decides (:func:`~wsi_s2lcm.dispatch.task_threads`).
    """
    try:
        own = dataclasses.replace(options, mpp=slide.mpp or options.mpp)
        summary = segment_slide(
            slide.path, out_dir, **own.arguments(), cpu_threads=cpu_threads or task_threads()
        )
    except UserInputError as error:
        return _record(slide, "failed", error=str(error))
    except Exception as error:
        logger.debug("%s: unexpected failure", slide.path, exc_info=True)
        return _record(
            slide, "failed", error=f"unexpected failure: {type(error).__name__}: {error}"
        )
    return _record(slide, "done", summary)


def _record(
    slide: CohortSlide, status: str, summary: dict[str, Any] | None = None, error: str = ""
) -> dict[str, Any]:
    summary = summary or {}
    return {
        "slide": str(slide.path),
        "status": status,
        "nuclei": summary.get("nuclei", ""),
        "tissue_mm2": summary.get("tissue_mm2", ""),
        "tiles": summary.get("tiles", ""),
        "seconds": summary.get("seconds", {}).get("total", ""),
        "geojson": summary.get("outputs", {}).get("geojson", ""),
        "error": error,
    }


def remove_output(path: Path) -> None:
    """Remove one output of a run: a file, or the label image's zarr folder."""
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()


def write_report(path: str | Path, records: Sequence[dict[str, Any]]) -> Path:
    """Write the cohort's records as CSV (columns :data:`REPORT_COLUMNS`), all at once."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=REPORT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return write_text_atomic(path, text.getvalue())
