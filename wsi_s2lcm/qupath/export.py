"""QuPath GeoJSON export: nucleus detections streamed to a FeatureCollection.

Every feature follows what QuPath 0.4-0.6 reads: ``properties.objectType = "detection"``, a
``classification`` object with ``name`` and ``color``, ``measurements`` as a map of numbers, a
UUID ``id``, and a valid polygon with closed rings rounded to 0.01 px (a single-part MultiPolygon is
written as a Polygon). :class:`GeoJSONWriter` streams features to ``<path>.partial`` and renames it
into place only when the collection is complete, so a crashed run never leaves a file QuPath would
half-read.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import math
import os
import uuid
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import numpy as np
from shapely.geometry import MultiPolygon, Polygon

from wsi_s2lcm.polygons import COORDINATE_DECIMALS, Nucleus

logger = logging.getLogger(__name__)

#: Classification of every exported nucleus.
NUCLEUS_CLASS = "Nucleus"
#: Its display colour in QuPath (RGB).
NUCLEUS_COLOR = (200, 0, 0)

_GZIP_MAGIC = b"\x1f\x8b"
_HEADER = '{"type":"FeatureCollection","features":[\n'
_FOOTER = "\n]}\n"


def nucleus_feature(
    nucleus: Nucleus,
    color: tuple[int, int, int] = NUCLEUS_COLOR,
    feature_id: str | None = None,
    name: str = NUCLEUS_CLASS,
) -> dict[str, Any]:
    """Describe one nucleus as a QuPath detection feature.

    Parameters
    ----------
    nucleus
        Outline (level-0 pixels) and measurements.
    color
        Classification colour, RGB 0-255.
    feature_id
        The feature's ``id``; a random UUID4 string by default.
    name
        Classification name.

    Returns
    -------
    dict
        A GeoJSON Feature, ready for :func:`json.dumps`.
    """
    measurements = {}
    for key, value in nucleus.measurements.items():
        value = float(value)
        if math.isfinite(value):
            measurements[key] = value
        else:
            logger.debug("measurement %r is %s; left out", key, value)
    return {
        "type": "Feature",
        "id": feature_id or str(uuid.uuid4()),
        "geometry": polygon_geometry(nucleus.polygon),
        "properties": {
            "objectType": "detection",
            "classification": {"name": name, "color": [int(c) for c in color]},
            "measurements": measurements,
        },
    }


def polygon_geometry(polygon: Polygon | MultiPolygon) -> dict[str, Any]:
    """GeoJSON geometry of a (Multi)Polygon: closed rings, coordinates rounded to 0.01.

    Parameters
    ----------
    polygon
        A shapely Polygon or MultiPolygon; a MultiPolygon of one part is written as a Polygon.

    Returns
    -------
    dict
        ``{"type": "Polygon" | "MultiPolygon", "coordinates": ...}``.
    """
    parts = list(getattr(polygon, "geoms", [polygon]))
    if not parts or any(not isinstance(part, Polygon) or part.is_empty for part in parts):
        raise ValueError(f"cannot export {polygon.geom_type} as a nucleus outline.")
    rings = [[_ring(part.exterior)] + [_ring(r) for r in part.interiors] for part in parts]
    if len(rings) == 1:
        return {"type": "Polygon", "coordinates": rings[0]}
    return {"type": "MultiPolygon", "coordinates": rings}


def _ring(ring: Any) -> list[list[float]]:
    xy = np.round(np.asarray(ring.coords, dtype=np.float64)[:, :2], COORDINATE_DECIMALS)
    if not np.array_equal(xy[0], xy[-1]):
        xy = np.vstack([xy, xy[:1]])
    return (xy + 0.0).tolist()  # + 0.0 turns -0.0 into 0.0


class GeoJSONWriter:
    """Stream features into a GeoJSON FeatureCollection, renamed into place when complete.

    Use as a context manager. Features go to ``<path>.partial`` in the same directory (gzip
    compressed when ``compress``); a clean exit closes the collection and renames the file to
    ``path`` (replacing any file there); an exception deletes the partial file. Without ``with``,
    call ``__enter__`` (or :meth:`open`) and then :meth:`close` or :meth:`abort`.

    Parameters
    ----------
    path
        Final file name, for example ``slide.geojson`` or ``slide.geojson.gz``.
    compress
        Write gzip (``.geojson.gz``), which QuPath opens directly.

    Attributes
    ----------
    count : int
        Features written so far.
    """

    def __init__(self, path: str | os.PathLike[str], compress: bool = False) -> None:
        self.path = Path(path)
        self.partial_path = self.path.with_name(self.path.name + ".partial")
        self.compress = compress
        self.count = 0
        self._raw: BinaryIO | None = None
        self._gzip: gzip.GzipFile | None = None
        self._text: io.TextIOWrapper | None = None

    def __enter__(self) -> GeoJSONWriter:
        return self.open()

    def open(self) -> GeoJSONWriter:
        """Start the partial file and write the collection's header; return ``self``."""
        if self._raw is not None:
            raise RuntimeError(f"{self.partial_path} is open already.")
        self._raw, self._gzip, self._text = _open_collection(self.partial_path, self.compress)
        return self

    def write(self, feature: dict[str, Any]) -> None:
        """Append one feature (a JSON-serializable dict without NaN or infinity)."""
        if self._text is None:
            raise RuntimeError("GeoJSONWriter.write called outside its 'with' block.")
        text = json.dumps(feature, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        self._text.write(text if self.count == 0 else ",\n" + text)
        self.count += 1

    def write_all(self, features: Iterable[dict[str, Any]]) -> None:
        """Append every feature of an iterable."""
        for feature in features:
            self.write(feature)

    def close(self, skip: Collection[int] = ()) -> None:
        """Finish the collection and rename it into place (what a clean ``with`` exit does).

        Parameters
        ----------
        skip
            Positions (0-based, in writing order) of features to leave out: the partial file is
            copied without them before it is renamed into place.
        """
        raw, gzip_stream, text = self._detach()
        filtered = self.partial_path.with_name(self.partial_path.name + ".filtered")
        try:
            _close_collection(raw, gzip_stream, text)
            if skip:
                self.count -= _copy_without(self.partial_path, filtered, set(skip), self.compress)
                os.replace(filtered, self.partial_path)
            os.replace(self.partial_path, self.path)
        except BaseException:
            raw.close()
            self.partial_path.unlink(missing_ok=True)
            filtered.unlink(missing_ok=True)
            raise
        logger.info("wrote %d features to %s", self.count, self.path)

    def abort(self) -> None:
        """Delete the partial file (what an exception in the ``with`` block does)."""
        if self._raw is None:
            return
        raw, _, _ = self._detach()
        raw.close()
        self.partial_path.unlink(missing_ok=True)
        logger.debug("removed %s", self.partial_path)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _detach(self) -> tuple[BinaryIO, gzip.GzipFile | None, io.TextIOWrapper]:
        if self._raw is None or self._text is None:
            raise RuntimeError("GeoJSONWriter is not open; use it in a 'with' block.")
        streams = self._raw, self._gzip, self._text
        self._raw = self._gzip = self._text = None
        return streams


def _open_collection(
    path: Path, compress: bool
) -> tuple[BinaryIO, gzip.GzipFile | None, io.TextIOWrapper]:
    """Create ``path`` and write a collection's header: raw file, gzip stream, text stream."""
    raw = path.open("wb")
    stream: BinaryIO = raw
    gzip_stream = None
    if compress:
        # no file name or time in the header: the same features give the same bytes
        gzip_stream = gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0)
        stream = gzip_stream
    text = io.TextIOWrapper(stream, encoding="utf-8", newline="\n")
    text.write(_HEADER)
    return raw, gzip_stream, text


def _close_collection(
    raw: BinaryIO, gzip_stream: gzip.GzipFile | None, text: io.TextIOWrapper
) -> None:
    """Write a collection's footer and flush it to disk."""
    text.write(_FOOTER)
    text.flush()
    text.detach()
    if gzip_stream is not None:
        gzip_stream.close()  # writes the gzip trailer; leaves the raw file open
    raw.flush()
    os.fsync(raw.fileno())
    raw.close()


def iter_written_features(path: str | os.PathLike[str]) -> Iterator[str]:
    """Yield the feature texts of a file :class:`GeoJSONWriter` wrote, one at a time.

    The writer puts one feature per line, so a large file is read without holding it all.
    """
    path = Path(path)
    with path.open("rb") as raw:
        compressed = raw.read(2) == _GZIP_MAGIC
    opened = gzip.open(path, "rt", encoding="utf-8") if compressed else path.open(encoding="utf-8")
    with opened as lines:
        if lines.readline() != _HEADER:
            raise ValueError(f"{path}: not a file written by GeoJSONWriter.")
        for line in lines:
            line = line.rstrip("\n")
            if line == _FOOTER.strip():
                return
            if not line:  # the empty line of a collection without features
                continue
            yield line[:-1] if line.endswith(",") else line
    raise ValueError(f"{path}: the collection is not closed.")


def _copy_without(source: Path, target: Path, skip: set[int], compress: bool) -> int:
    """Copy a written collection to ``target`` leaving out the features at ``skip``; return how
    many were left out."""
    raw, gzip_stream, text = _open_collection(target, compress)
    kept = left_out = 0
    try:
        for position, feature in enumerate(iter_written_features(source)):
            if position in skip:
                left_out += 1
                continue
            text.write(feature if kept == 0 else ",\n" + feature)
            kept += 1
        _close_collection(raw, gzip_stream, text)
    except BaseException:
        raw.close()
        raise
    return left_out


def read_features(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read the features of a GeoJSON file, plain or gzip compressed.

    Parameters
    ----------
    path
        A ``.geojson`` or ``.geojson.gz`` file holding a FeatureCollection, a bare array of
        features, or a single Feature.

    Returns
    -------
    list[dict]
        The features, as parsed JSON.
    """
    data = Path(path).read_bytes()
    if data[:2] == _GZIP_MAGIC:
        data = gzip.decompress(data)
    content = json.loads(data.decode("utf-8"))
    if isinstance(content, list):
        return content
    if isinstance(content, dict) and content.get("type") == "FeatureCollection":
        return list(content.get("features", []))
    if isinstance(content, dict) and content.get("type") == "Feature":
        return [content]
    raise ValueError(
        f"{path}: not GeoJSON features (expected a FeatureCollection, a Feature or an array)."
    )
