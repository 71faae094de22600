"""The segment use case: one slide in, QuPath GeoJSON (and label zarr, overlay, summary) out.

:func:`segment_slide` wires the adapters: it opens the slide, plans the tiles at the model's
resolution, skips tiles without tissue, chooses the reading zoom from a sample of the slide's
nuclei (:func:`choose_zoom`), dispatches tile batches through :mod:`wsi_s2lcm.dispatch`
(each worker builds the predictor once), streams the owned nuclei to the GeoJSON writer and the
label store as tiles complete, re-segments the few nuclei larger than the tile margin, and renames
the outputs into place only when all of them are complete.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import time
from pathlib import Path
from typing import Any, Iterator

from wsi_s2lcm.atomic import write_text_atomic
from wsi_s2lcm.config import ExportConfig, PostprocessConfig, TilingConfig
from wsi_s2lcm.outputs import OutputPaths, RunOutputs
from wsi_s2lcm.false_objects import FALSE_OBJECT_CHECKS
from wsi_s2lcm.predictor import (
    ModelSpec,
    PredictorSpec,
    build_predictor,
    resolve_amp,
    resolve_device,
)
from wsi_s2lcm.tile_task import Fragment, TileJob, TileResult, forget_open_slides, process_tiles
from wsi_s2lcm.tiling import Tile, model_size, tile_grid

logger = logging.getLogger(__name__)

#: Name, in the run summary's ``dropped_by_check``, of the check against the slide's own nuclei
#: (:meth:`wsi_s2lcm.outputs.RunOutputs.drop_paler_than_slide`).
SLIDE_CHECK = "paler_than_slide"


@dataclasses.dataclass(frozen=True)
class SegmentOptions:
    """What each slide of a batch is segmented with: the arguments of :func:`segment_slide`.

    ``mpp`` applies to every slide that its cohort manifest gives none.
    """

    model: str | None = None
    mpp: float | None = None
    tiling: TilingConfig = TilingConfig()
    export: ExportConfig = ExportConfig()
    postprocess: PostprocessConfig | None = None
    device: str = "auto"
    amp: bool | None = None
    tta: bool = False
    zoom: float | None = None
    predictor_spec: Any = None

    def arguments(self) -> dict[str, Any]:
        """These options as keyword arguments of :func:`segment_slide`."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}


def segment_slide(
    slide_path: str | Path,
    out_dir: str | Path,
    *,
    model: str | Path | None = None,
    mpp: float | None = None,
    tiling: TilingConfig = TilingConfig(),
    export: ExportConfig = ExportConfig(),
    postprocess: PostprocessConfig | None = None,
    device: str = "auto",
    amp: bool | None = None,
    tta: bool = False,
    zoom: float | None = None,
    dispatcher: Any = None,
    predictor_spec: PredictorSpec | None = None,
    progress: bool = False,
    cpu_threads: int | None = None,
) -> dict[str, Any]:
    """Segment every nucleus of a slide and write the outputs.

    Parameters
    ----------
    slide_path
        The slide (anything :func:`wsi_s2lcm.slide.open_slide` opens).
    out_dir
        Output directory (created if needed).
    model
        Shipped model name or model directory; the default model when ``None``.
    mpp
        The slide's µm/px, for files that do not record it.
    tiling, export
        Tiling and output configuration.
    postprocess
        Overrides the model card's post-processing.
    device
        ``auto``, ``cpu``, ``cuda`` or ``cuda:i``.
    amp
        Mixed precision (float16 on CUDA, bfloat16 on the CPU); ``None`` decides on the machine
        that calls this: on with CUDA or a CPU with bfloat16 instructions
        (:func:`wsi_s2lcm.predictor.resolve_amp`). The summary records the choice.
    tta
        Average the network's probabilities over the 8 rotations and mirror images of each tile
        (8 times the inference time); ignored with ``predictor_spec``.
    zoom
        The reading zoom: the network sees each tile this many times larger
        (:mod:`wsi_s2lcm.zoom`). ``None`` chooses it from the median nucleus area of a sample of
        the slide read without it, when the model's card records a reference area and no
        ``predictor_spec`` is given (:func:`choose_zoom`), and reads tiles as they are
        otherwise.
    dispatcher
        A :class:`wsi_s2lcm.dispatch.Dispatcher`; tasks run in the calling thread when ``None``.
    predictor_spec
        Use this predictor instead of the model's network (tests pass fakes); ``model`` still
        names a card whose mpp and post-processing apply, unless the spec has an ``mpp`` or
        ``postprocess`` is given.
    progress
        Show a progress bar over tiles.
    cpu_threads
        CPU threads of the network on each worker; by default this machine's cores shared
        among the dispatcher's local workers.

    Returns
    -------
    dict
        The run summary, also written to ``<stem>.json``.
    """
    from wsi_s2lcm.slide import check_readable, open_slide
    from wsi_s2lcm.tissue import tissue_mask
    from wsi_s2lcm.zoom import check_zoom

    if zoom is not None:
        check_zoom(zoom)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    paths = OutputPaths.for_slide(slide_path, out_dir, export)
    paths.check_free(export)
    slide = open_slide(slide_path, mpp=mpp)
    writer = None
    try:
        check_readable(slide)
        model_dir, card = _model(model, predictor_spec)
        spec = predictor_spec or ModelSpec(
            str(model_dir), device, cpu_threads=cpu_threads or _threads_per_worker(dispatcher),
            amp=resolve_amp(resolve_device(device), amp), tta=tta,
        )
        model_mpp = float(getattr(spec, "mpp", None) or card.mpp)
        post = _postprocess(card, postprocess)
        width, height = model_size(slide.dimensions, slide.mpp, model_mpp)
        job = TileJob(
            slide_path=str(slide_path),
            slide_mpp=mpp,
            model_mpp=model_mpp,
            level0_mpp=slide.mpp,
            width=width,
            height=height,
            predictor=spec,
            postprocess=post,
            context=tiling.context,
            zoom=1.0 if zoom is None else zoom,
        )

        tissue = tissue_mask(slide) if tiling.tissue_mask else None
        tiles = [t for t in tile_grid(width, height, tiling) if _has_tissue(t, tissue, job.scale)]
        timings["plan"] = time.perf_counter() - started
        zoom_record = None
        if zoom is None and predictor_spec is None and card.nucleus_area_um2 > 0:
            zoom_started = time.perf_counter()
            # measured with the card's own post-processing, which the reference was calibrated
            # with, so that --postprocess overrides do not move the zoom
            measuring = dataclasses.replace(job, postprocess=_postprocess(card, None))
            zoom_record = choose_zoom(measuring, tissue, card.nucleus_area_um2)
            job = dataclasses.replace(job, zoom=zoom_record["zoom"])
            timings["zoom"] = time.perf_counter() - zoom_started
        logger.info(
            "%s: %d x %d px at %.3f µm/px -> %d x %d at %.3f, %d tiles with tissue",
            slide_path, *slide.dimensions, slide.mpp, width, height, model_mpp, len(tiles),
        )

        Path(out_dir).mkdir(parents=True, exist_ok=True)
        writer = RunOutputs(paths, export, job, tiling, slide, card, post, tissue)
        fragments: list[Fragment] = []
        stage = {"read": 0.0, "predict": 0.0, "postprocess": 0.0}
        dropped = dict.fromkeys((*FALSE_OBJECT_CHECKS, SLIDE_CHECK), 0)
        pass_started = time.perf_counter()
        for result in _run_tiles(tiles, job, tiling, dispatcher, progress):
            for key, value in result.seconds.items():
                stage[key] = stage.get(key, 0.0) + value
            for found in result.dropped:
                if tissue is None or tissue.contains(*found.centroid_xy_level0):
                    dropped[found.check] += 1
            writer.add_tile(result)
            fragments.extend(result.fragments)
        timings["tiles_wall"] = time.perf_counter() - pass_started
        timings.update({f"{k}_cpu": v for k, v in stage.items()})
        large_started = time.perf_counter()
        large = _resolve_fragments(fragments, slide, job, tiling)
        for whole in large:
            writer.add_whole(whole)
        timings["large_nuclei"] = time.perf_counter() - large_started
        check_started = time.perf_counter()
        dropped[SLIDE_CHECK] = writer.drop_paler_than_slide(post.min_slide_hematoxylin_fraction)
        timings["slide_check"] = time.perf_counter() - check_started
        summary = _summary(
            slide, card, job, tiling, export, tissue, len(tiles), writer, large, dropped
        )
        summary["zoom"] = {
            **(zoom_record or {"zoom": job.zoom, "chosen": False}),
            "asked": zoom,
        }
        finish_started = time.perf_counter()
        writer.finish()
        timings["finish"] = time.perf_counter() - finish_started
        timings["total"] = time.perf_counter() - started
        summary["seconds"] = {k: round(v, 3) for k, v in timings.items()}
        _write_json(paths.summary, summary)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        slide.close()
        forget_open_slides()
    logger.info("%s: %d nuclei in %.1f s", slide_path, summary["nuclei"], timings["total"])
    logger.info(
        "%s: objects dropped by the checks (docs/SEGMENT.md): %s", slide_path,
        ", ".join(f"{count} {name.replace('_', ' ')}" for name, count in dropped.items()),
    )
    return summary


def run_settings(options: SegmentOptions) -> dict[str, Any]:
    """The settings that decide a run's nuclei, as :func:`summary_settings` reads them back.

    The model's name, the tiling, the post-processing (the card's, unless overridden), test-time
    augmentation, the zoom asked for with the card's reference area, and which outputs are
    written: a later run with the same settings would write the same outputs.
    """
    _, card = _model(options.model, options.predictor_spec)
    return _comparable({
        "model": card.name if card else None,
        "tiling": dataclasses.asdict(options.tiling),
        "postprocess": dataclasses.asdict(_postprocess(card, options.postprocess)),
        "tta": _spec_tta(options.predictor_spec) if options.predictor_spec else options.tta,
        "zoom": {"asked": options.zoom,
                 "nucleus_area_um2": card.nucleus_area_um2 if card else 0.0},
        "export": _export_settings(dataclasses.asdict(options.export)),
    })


def summary_settings(summary: dict[str, Any]) -> dict[str, Any]:
    """The :func:`run_settings` of the run that wrote a run summary (``<stem>.json``)."""
    config = summary.get("config") or {}
    card = summary.get("model_card") or {}
    return _comparable({
        "model": card.get("name"),
        "tiling": config.get("tiling"),
        "postprocess": config.get("postprocess"),
        "tta": bool(config.get("tta", False)),
        "zoom": {"asked": (summary.get("zoom") or {}).get("asked"),
                 "nucleus_area_um2": card.get("nucleus_area_um2", 0.0)},
        "export": _export_settings(config.get("export") or {}),
    })


def _spec_tta(spec: Any) -> bool:
    """Whether a predictor spec averages over orientations (specs without ``tta`` do not)."""
    return bool(getattr(spec, "tta", False))


#: The sample that measures a slide's nuclei for :func:`choose_zoom`: at most this many windows
#: of :data:`ZOOM_SAMPLE_SIZE` pixels (at the model's resolution) on tissue.
ZOOM_SAMPLE_WINDOWS = 8
ZOOM_SAMPLE_SIZE = 512


def choose_zoom(job: TileJob, tissue: Any, reference_area_um2: float) -> dict[str, Any]:
    """Choose a slide's reading zoom from the nuclei of a sample of it.

    The sample is up to :data:`ZOOM_SAMPLE_WINDOWS` windows spread evenly over a grid of
    :data:`ZOOM_SAMPLE_SIZE`-pixel windows on tissue, the same whatever the run's tiling, so
    that runs with different tile sizes choose the same zoom. The windows are segmented in
    this process (also when the tiles go to a cluster's workers) with ``job`` as it stands
    (zoom 1; ``segment_slide`` passes the card's post-processing, not the run's overrides), and
    the median area of the nuclei they own gives the zoom
    (:func:`wsi_s2lcm.zoom.zoom_for_nuclei`).

    Returns
    -------
    dict
        ``zoom``, ``chosen`` (True), ``median_nucleus_area_um2`` (None without nuclei),
        ``nucleus_area_um2`` (the reference), ``sample_windows`` and ``sample_nuclei``.
    """
    import numpy as np

    from wsi_s2lcm.zoom import zoom_for_nuclei

    windows = TilingConfig(tile_size=ZOOM_SAMPLE_SIZE, overlap=0, context=job.context)
    tiles = [t for t in tile_grid(job.width, job.height, windows)
             if _has_tissue(t, tissue, job.scale)]
    step = max(1, len(tiles) // ZOOM_SAMPLE_WINDOWS)
    sample = tiles[step // 2::step][:ZOOM_SAMPLE_WINDOWS]
    areas = []
    for tile in sample:
        (result,) = process_tiles([tile], job)
        counts = np.bincount(result.labels.ravel())[1:]
        areas.append(counts[counts > 0])
    areas_px = np.concatenate(areas) if areas else np.zeros(0)
    median = float(np.median(areas_px)) * job.model_mpp ** 2 if areas_px.size else None
    zoom = zoom_for_nuclei(median or 0.0, reference_area_um2)
    logger.info("%s: median nucleus %s µm² in %d sample windows -> tiles enlarged %gx",
                job.slide_path, f"{median:.1f}" if median else "(none)", len(sample), zoom)
    return {
        "zoom": zoom,
        "chosen": True,
        "median_nucleus_area_um2": round(median, 2) if median else None,
        "nucleus_area_um2": reference_area_um2,
        "sample_windows": len(sample),
        "sample_nuclei": int(areas_px.size),
    }


def _export_settings(export: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in export.items() if key != "overwrite"}


def _comparable(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings as the run summary's JSON holds them (tuples as lists)."""
    return json.loads(json.dumps(settings, default=str))


def _model(model: str | Path | None, predictor_spec: Any) -> tuple[Path | None, Any]:
    """The model directory and card a run uses; none for a predictor spec without a model."""
    from wsi_s2lcm.models import read_card, resolve_model

    if predictor_spec is not None and model is None:
        return None, None
    model_dir = resolve_model(model)
    return model_dir, read_card(model_dir)


def _postprocess(card: Any, postprocess: PostprocessConfig | None) -> PostprocessConfig:
    return postprocess or PostprocessConfig(**(card.postprocess if card else {}))


def _threads_per_worker(dispatcher: Any) -> int | None:
    """This machine's cores shared among its local workers; None (keep) on a remote cluster."""
    from wsi_s2lcm.dispatch import available_cpus

    if dispatcher is None:
        return available_cpus()
    if dispatcher.workers is None:
        return None
    return max(1, available_cpus() // dispatcher.workers)


def _has_tissue(tile: Tile, tissue: Any, scale: float) -> bool:
    if tissue is None:
        return True
    x0, y0, x1, y1 = tile.box
    return tissue.any_in((x0 * scale, y0 * scale, x1 * scale, y1 * scale))


def _batches(tiles: list[Tile], size: int) -> Iterator[list[Tile]]:
    for start in range(0, len(tiles), size):
        yield tiles[start : start + size]


def _run_tiles(
    tiles: list[Tile], job: TileJob, tiling: TilingConfig, dispatcher: Any, progress: bool
) -> Iterator[TileResult]:
    from tqdm.auto import tqdm

    from wsi_s2lcm.dispatch import Dispatcher

    dispatcher = dispatcher or Dispatcher(None, in_flight=1)
    with tqdm(total=len(tiles), unit="tile", disable=not progress, desc="tiles") as bar:
        for results in dispatcher.imap(
            process_tiles, _batches(tiles, tiling.batch_size), job
        ):
            for result in results:
                yield result
            bar.update(len(results))


def _resolve_fragments(
    fragments: list[Fragment], slide: Any, job: TileJob, tiling: TilingConfig
) -> list[Any]:
    if not fragments:
        return []
    from wsi_s2lcm.fragments import group_fragments, resolve_group

    from wsi_s2lcm.dispatch import available_cpus

    spec = job.predictor
    if isinstance(spec, ModelSpec) and spec.cpu_threads:
        # The tiles are done: this pass, in the calling process, has every core to itself.
        spec = dataclasses.replace(spec, cpu_threads=available_cpus())
    predictor = build_predictor(spec)
    groups = group_fragments(fragments)
    logger.info("re-segmenting %d nuclei larger than the tile margin", len(groups))
    found = [resolve_group(group, slide, predictor, job, tiling) for group in groups]
    return [whole for whole in found if whole is not None]


def _summary(
    slide: Any,
    card: Any,
    job: TileJob,
    tiling: TilingConfig,
    export: ExportConfig,
    tissue: Any,
    tile_count: int,
    writer: RunOutputs,
    large: list[Any],
    dropped: dict[str, int],
) -> dict[str, Any]:
    info = slide.info()
    tissue_mm2 = (
        tissue.area_mm2(slide.mpp)
        if tissue is not None
        else slide.dimensions[0] * slide.dimensions[1] * (slide.mpp / 1000.0) ** 2
    )
    return {
        "slide": str(job.slide_path),
        "status": "done",
        "nuclei": writer.count,
        "nuclei_area_um2": round(writer.area_um2, 2),
        "tissue_mm2": round(float(tissue_mm2), 4),
        "tiles": tile_count,
        "large_nuclei_resegmented": len(large),
        "large_nuclei_truncated": sum(1 for w in large if w.truncated),
        "duplicates_dropped": writer.duplicates,
        "outside_tissue_dropped": writer.outside_tissue,
        "dropped_by_check": dropped,
        "slide_info": info,
        "model_mpp": job.model_mpp,
        "model_size_px": [job.width, job.height],
        "outputs": {k: str(v) for k, v in dataclasses.asdict(writer.paths).items()
                    if Path(v) in set(writer.paths.wanted(export))},
        "model_card": card.to_dict() if card else None,
        "config": {
            "tiling": dataclasses.asdict(tiling),
            "postprocess": dataclasses.asdict(job.postprocess),
            "export": dataclasses.asdict(export),
            "predictor": repr(job.predictor),
            "tta": _spec_tta(job.predictor),
        },
        "versions": _versions(),
    }


def _versions() -> dict[str, str]:
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in ("wsi-s2lcm", "torch", "numpy", "openslide-python", "openslide-bin", "dask",
                 "distributed", "zarr", "shapely", "tiatoolbox", "scikit-image"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _write_json(path: Path, values: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(values, indent=2, default=str) + "\n")
