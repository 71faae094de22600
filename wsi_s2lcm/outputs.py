"""The files one segmentation run writes, and the writer that fills them as tiles complete.

:class:`RunOutputs` streams nuclei to the GeoJSON writer and the label store (which also finds
nuclei kept twice by neighbouring tiles), removes at the end those much paler than the slide's
typical nucleus, draws the overlay, and finishes or aborts all of them together, so a failed run
leaves no partial output.
"""

from __future__ import annotations

import array
import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from wsi_s2lcm.config import ExportConfig, PostprocessConfig, TilingConfig
from wsi_s2lcm.errors import ConfigError, OutputExistsError
from wsi_s2lcm.polygons import AREA, HEMATOXYLIN_OD_MEAN
from wsi_s2lcm.tile_task import TileJob, TileResult

#: A nucleus whose pixels are already taken by written nuclei for this fraction of its area or
#: more is a duplicate seen by a neighbouring tile, and is dropped.
DUPLICATE_OVERLAP = 0.2


@dataclasses.dataclass(frozen=True)
class OutputPaths:
    """The files a run writes for one slide, named after its stem."""

    geojson: Path
    labels: Path
    overlay: Path
    summary: Path

    @classmethod
    def for_slide(cls, slide_path: str | Path, out_dir: str | Path, export: ExportConfig) -> "OutputPaths":
        """Output paths in ``out_dir`` for a slide."""
        stem = slide_stem(slide_path)
        out = Path(out_dir)
        return cls(
            geojson=out / f"{stem}.{export.format}",
            labels=out / f"{stem}.zarr",
            overlay=out / f"{stem}.overlay.png",
            summary=out / f"{stem}.json",
        )

    def wanted(self, export: ExportConfig) -> list[Path]:
        """The outputs this export config writes."""
        paths = [self.geojson, self.summary]
        if export.labels:
            paths.append(self.labels)
        if export.overlay:
            paths.append(self.overlay)
        return paths

    def check_free(self, export: ExportConfig) -> None:
        """Refuse to replace an existing output unless ``export.overwrite``.

        Raises
        ------
        OutputExistsError
            Naming the first output that exists.
        """
        existing = [p for p in self.wanted(export) if p.exists()]
        if existing and not export.overwrite:
            raise OutputExistsError(
                f"{existing[0]}: output exists already; pass --overwrite to replace it."
            )


def check_batch_outputs(
    slide_paths: Sequence[str | Path], out_dir: str | Path, export: ExportConfig
) -> None:
    """Check the outputs of a batch of slides before any work starts.

    Raises
    ------
    ConfigError
        When two slides share a file stem, so their outputs would overwrite each other.
    OutputExistsError
        When an output exists already and ``export.overwrite`` is off.
    """
    check_distinct_stems(slide_paths, out_dir, export)
    for slide_path in slide_paths:
        OutputPaths.for_slide(slide_path, out_dir, export).check_free(export)


def check_distinct_stems(
    slide_paths: Sequence[str | Path], out_dir: str | Path, export: ExportConfig
) -> None:
    """Refuse a batch of slides in which two would write the same outputs.

    Raises
    ------
    ConfigError
        Naming the two slides that share a file stem.
    """
    planned: dict[Path, str | Path] = {}
    for slide_path in slide_paths:
        geojson = OutputPaths.for_slide(slide_path, out_dir, export).geojson
        if geojson in planned:
            raise ConfigError(
                f"{planned[geojson]} and {slide_path} would both write {geojson}; "
                "segment them into different --out folders or rename one."
            )
        planned[geojson] = slide_path


def slide_stem(slide_path: str | Path) -> str:
    """The name outputs are given: the slide's file name without its extension."""
    return Path(slide_path).stem


class RunOutputs:
    """The run's writers: GeoJSON stream, label store and overlay, finished or aborted together."""

    def __init__(
        self,
        paths: OutputPaths,
        export: ExportConfig,
        job: TileJob,
        tiling: TilingConfig,
        slide: Any,
        card: Any,
        post: PostprocessConfig,
        tissue: Any,
    ) -> None:
        from wsi_s2lcm.qupath.export import GeoJSONWriter

        self.paths = paths
        self.export = export
        self.count = 0
        self.area_um2 = 0.0
        self.duplicates = 0
        self.outside_tissue = 0
        self._tissue = tissue
        self._next_label = 1
        # per written nucleus, in label order (compact: a slide can hold millions): its mean
        # hematoxylin OD, its area and its box (y0, x0, y1, x1) in the label store
        self._hematoxylin = array.array("d")
        self._areas = array.array("d")
        self._boxes = array.array("q")
        self._removed: set[int] = set()
        self._finished: list[Path] = []
        self._store = None
        self._overlay = None
        self._geojson = GeoJSONWriter(paths.geojson, compress=export.format.endswith(".gz"))
        self._geojson.open()
        try:
            self._open_store_and_overlay(paths, export, job, tiling, slide, card, post)
        except BaseException:
            self.abort()
            raise

    def _open_store_and_overlay(self, paths, export, job, tiling, slide, card, post) -> None:
        from wsi_s2lcm.overlay import Overlay
        from wsi_s2lcm.store import LabelStore

        attrs = {
            "mpp": job.model_mpp,
            "level0_mpp": job.level0_mpp,
            "level0_transform": {"scale": job.scale, "offset_xy": [0.0, 0.0]},
            "model_card": card.to_dict() if card else None,
            "postprocess": dataclasses.asdict(post),
            "tiling": dataclasses.asdict(tiling),
            "slide": str(job.slide_path),
        }
        # The label store also finds duplicates; without --labels it is scratch, removed at the end.
        store_path = (
            paths.labels if export.labels else paths.labels.with_name(f".{paths.labels.name}.scratch")
        )
        self._store = LabelStore.create(
            store_path,
            (job.height, job.width),
            chunk=tiling.stride,
            attrs=attrs,
            overwrite=export.overwrite or not export.labels,
        )
        if export.overlay:
            thumbnail, level0_per_px = slide.thumbnail(2048)
            self._overlay = Overlay(thumbnail, level0_per_px)  # drawn in finish()

    def add_tile(self, result: TileResult) -> None:
        """Write a tile's nuclei that lie on tissue, except those duplicating one written."""
        labels = result.labels
        if self._tissue is not None:
            outside = [i + 1 for i, n in enumerate(result.nuclei)
                       if not self._tissue.contains(*n.centroid_xy_level0)]
            if outside:
                self.outside_tissue += len(outside)
                labels = np.where(np.isin(labels, outside), 0, labels).astype(labels.dtype)
        kept = self._claim(result.tile.x, result.tile.y, labels)
        for index in kept:
            self._write_nucleus(result.nuclei[index])

    def add_whole(self, whole: Any) -> None:
        """Write a nucleus re-segmented whole, unless it duplicates one written already."""
        if self._tissue is not None and not self._tissue.contains(*whole.nucleus.centroid_xy_level0):
            self.outside_tissue += 1
            return
        if self._claim(whole.origin_xy[0], whole.origin_xy[1], whole.mask.astype(np.uint32)):
            self._write_nucleus(whole.nucleus)

    def _write_nucleus(self, nucleus: Any) -> None:
        from wsi_s2lcm.qupath.export import nucleus_feature

        self._geojson.write(nucleus_feature(nucleus))
        area = nucleus.measurements.get(AREA, 0.0)
        self.area_um2 += area
        self._areas.append(area)
        self._hematoxylin.append(nucleus.measurements[HEMATOXYLIN_OD_MEAN])
        self.count += 1

    def _claim(self, x: int, y: int, labels: np.ndarray) -> list[int]:
        """Paint a block of nuclei (values 1..n) into the label store; return those kept.

        Neighbouring tiles see a nucleus near their common border with different context, so
        each may keep its own version of it. A nucleus whose pixels are already taken, for
        :data:`DUPLICATE_OVERLAP` of its area or more, duplicates one written before and is
        dropped; the others fill the pixels still empty.
        """
        count = int(labels.max()) if labels.size else 0
        if count == 0:
            return []
        height, width = self._store.shape
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + labels.shape[1], width), min(y + labels.shape[0], height)
        if x0 >= x1 or y0 >= y1:
            return []
        block = labels[y0 - y : y1 - y, x0 - x : x1 - x]
        taken = self._store.read(y0, x0, y1 - y0, x1 - x0) > 0
        area = np.bincount(block.ravel(), minlength=count + 1)[1:]
        overlap = np.bincount(block[taken].ravel(), minlength=count + 1)[1:]
        keep = (area > 0) & (overlap < DUPLICATE_OVERLAP * area)
        self.duplicates += int(np.sum((area > 0) & ~keep))
        lookup = np.zeros(count + 1, dtype=np.uint32)
        kept = np.flatnonzero(keep)
        lookup[kept + 1] = np.arange(self._next_label, self._next_label + kept.size, dtype=np.uint32)
        self._next_label += kept.size
        self._store.write_where_empty(y0, x0, lookup[block])
        ordinal = np.zeros(count + 1, dtype=np.int32)
        ordinal[kept + 1] = np.arange(1, kept.size + 1, dtype=np.int32)
        for rows, cols in ndimage.find_objects(ordinal[block]):
            self._boxes.extend((y0 + rows.start, x0 + cols.start, y0 + rows.stop, x0 + cols.stop))
        return kept.tolist()

    def drop_paler_than_slide(self, fraction: float) -> int:
        """Remove the nuclei whose mean hematoxylin OD is below ``fraction`` of the median over
        all the nuclei written; return how many.

        A stain check against the slide's own nuclei, so it holds on pale and dark slides alike.
        It needs every nucleus, so it runs once, after all tiles and large nuclei are written:
        their pixels are cleared from the label store now, their features are left out when the
        GeoJSON is closed, and the overlay, drawn at the end, never shows them.
        """
        if fraction <= 0 or not self._hematoxylin:
            return 0
        values = np.asarray(self._hematoxylin)
        floor = fraction * float(np.median(values))
        removed = np.flatnonzero(values < floor)
        # each store chunk that holds a removed nucleus is read and written once
        boxes = np.asarray(self._boxes, dtype=np.int64).reshape(-1, 4)[removed]
        chunk = self._store.chunk
        by_chunk: dict[tuple[int, int], list[int]] = {}
        for label, (y0, x0, y1, x1) in zip(removed + 1, boxes):
            for row in range(y0 // chunk, (y1 - 1) // chunk + 1):
                for col in range(x0 // chunk, (x1 - 1) // chunk + 1):
                    by_chunk.setdefault((row, col), []).append(int(label))
        for (row, col), labels in by_chunk.items():
            block = self._store.read(row * chunk, col * chunk, chunk, chunk)
            self._store.write(row * chunk, col * chunk, np.where(np.isin(block, labels), 0, block))
        self.area_um2 -= float(np.asarray(self._areas)[removed].sum())
        self._removed = set(removed.tolist())
        self.count -= len(removed)
        return len(removed)

    def finish(self) -> None:
        """Rename every output into place (the scratch label store is removed): all or none.

        Should one step fail, the outputs already renamed are removed again (:meth:`abort`).
        """
        try:
            self._geojson.close(skip=self._removed)
            self._finished.append(self.paths.geojson)
            if self.export.labels:
                self._store.finalize()
                self._finished.append(self.paths.labels)
            else:
                self._store.abort()
            if self._overlay is not None:
                self._draw_overlay()
                self._overlay.save(self.paths.overlay)
                self._finished.append(self.paths.overlay)
        except BaseException:
            self.abort()
            raise

    def _draw_overlay(self) -> None:
        """Outline every nucleus of the finished GeoJSON, read one feature at a time."""
        from shapely.geometry import shape

        from wsi_s2lcm.qupath.export import iter_written_features

        for text in iter_written_features(self.paths.geojson):
            self._overlay.add([shape(json.loads(text)["geometry"])])

    def abort(self) -> None:
        """Remove every partial output, and the outputs this run renamed into place already."""
        self._geojson.abort()
        if self._store is not None:
            self._store.abort()
        for path in self._finished:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        self._finished.clear()
