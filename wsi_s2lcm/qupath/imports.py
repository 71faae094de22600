"""Read scribbles from QuPath GeoJSON (QuPath 0.3 to 0.6 exports).

QuPath writes annotations as a ``FeatureCollection`` (File > Export objects as GeoJSON) or as a
bare JSON array of features (older scripts, "Export as FeatureCollection" unticked). Each feature's
``properties`` hold ``objectType`` (``object_type`` before 0.4) and ``classification`` (a
``{"name", "color"}`` object, or a plain string in some scripts). Line annotations
(``LineString``/``MultiLineString``) are scribbles; brush and polygon annotations
(``Polygon``/``MultiPolygon``) are painted areas.

:func:`read_scribbles` keeps the features whose class names nucleus or background (compared
case-insensitively) and reports everything else: a feature it cannot use is skipped with a
warning; a file that yields nothing usable is an :class:`~wsi_s2lcm.errors.AnnotationError`,
never an empty training set. Only annotations are scribbles: detections (what a model such as
wsi-s2lcm writes) are skipped, so exporting all objects never trains a model on its own output.
Coordinates stay in the file's frame: QuPath's image frame, pixel
(x, y) covering ``[x, x + 1) x [y, y + 1)`` at full resolution.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

import shapely
from shapely.geometry import shape as to_shape

from wsi_s2lcm.errors import AnnotationError

logger = logging.getLogger(__name__)

NUCLEUS = 1
BACKGROUND = 0
DEFAULT_NUCLEUS_CLASSES = ("Nucleus", "Nuclei")
DEFAULT_BACKGROUND_CLASSES = ("Background",)
LINE_TYPES = ("LineString", "MultiLineString")
AREA_TYPES = ("Polygon", "MultiPolygon")


@dataclasses.dataclass(frozen=True)
class Scribble:
    """One usable scribble.

    Attributes
    ----------
    label : int
        :data:`NUCLEUS` (1) or :data:`BACKGROUND` (0).
    geometry : shapely geometry
        A (Multi)LineString (a stroke) or a (Multi)Polygon (a painted area), in the image frame.
    class_name : str
        The classification as written in the file.
    """

    label: int
    geometry: Any
    class_name: str

    @property
    def is_line(self) -> bool:
        """Whether this is a stroke (rasterized with a width) rather than an area."""
        return self.geometry.geom_type in LINE_TYPES


def read_scribbles(
    path: str | Path,
    nucleus_classes: Iterable[str] = DEFAULT_NUCLEUS_CLASSES,
    background_classes: Iterable[str] = DEFAULT_BACKGROUND_CLASSES,
) -> list[Scribble]:
    """Read the nucleus and background scribbles of a QuPath GeoJSON file.

    Parameters
    ----------
    path
        A ``.geojson``/``.json`` file (``.gz`` accepted) as QuPath exports it.
    nucleus_classes, background_classes
        Class names meaning nucleus and background, compared case-insensitively.

    Returns
    -------
    list of Scribble
        At least one; features of other classes or geometries are skipped with a warning.

    Raises
    ------
    AnnotationError
        If the file is not JSON, holds no features, or none of them is a usable scribble.
    """
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        data = json.loads(raw.decode("utf-8"))
    except OSError as error:
        raise AnnotationError(f"{path}: cannot read the scribble file ({error}).") from None
    except (UnicodeDecodeError, json.JSONDecodeError, gzip.BadGzipFile) as error:
        raise AnnotationError(
            f"{path}: not a GeoJSON file ({error}); export the annotations from QuPath with "
            "File > Export objects as GeoJSON."
        ) from None
    return parse_scribbles(data, str(path), nucleus_classes, background_classes)


def parse_scribbles(
    data: Any,
    where: str = "scribbles",
    nucleus_classes: Iterable[str] = DEFAULT_NUCLEUS_CLASSES,
    background_classes: Iterable[str] = DEFAULT_BACKGROUND_CLASSES,
) -> list[Scribble]:
    """Parse decoded GeoJSON (a FeatureCollection, a Feature or a list of them) into scribbles.

    See :func:`read_scribbles`; ``where`` names the input in messages.
    """
    features = _features(data, where)
    nucleus = {name.casefold() for name in nucleus_classes}
    background = {name.casefold() for name in background_classes}
    if nucleus & background:
        raise AnnotationError(
            f"{where}: class name(s) {sorted(nucleus & background)} are listed as both nucleus "
            "and background; give each class one meaning."
        )
    scribbles: list[Scribble] = []
    skipped: Counter[str] = Counter()
    summary = ""
    for feature in features:
        reason, scribble = _parse_feature(feature, nucleus, background)
        if scribble is None:
            skipped[reason] += 1
        else:
            scribbles.append(scribble)
    if skipped:
        summary = "; ".join(f"{count} x {reason}" for reason, count in sorted(skipped.items()))
        logger.warning("%s: skipped %d feature(s): %s", where, sum(skipped.values()), summary)
    if not scribbles:
        wanted = ", ".join(sorted(nucleus_classes)) + " / " + ", ".join(sorted(background_classes))
        raise AnnotationError(
            f"{where}: none of the {len(features)} feature(s) is a usable scribble "
            f"({summary}); draw lines or brush areas classified as {wanted}, or pass the class "
            "names you used."
        )
    return scribbles


def _features(data: Any, where: str) -> list[Any]:
    """The list of features of a FeatureCollection, a bare array or a single Feature."""
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features")
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    elif isinstance(data, list):
        features = data
    else:
        raise AnnotationError(
            f"{where}: expected a GeoJSON FeatureCollection or an array of features, not "
            f"{type(data).__name__ if not isinstance(data, dict) else data.get('type')!r}."
        )
    if not isinstance(features, list) or not features:
        raise AnnotationError(
            f"{where}: holds no features; draw scribbles in QuPath and export them with "
            "File > Export objects as GeoJSON."
        )
    return features


def class_name(properties: dict) -> str | None:
    """The classification name of a feature's properties (string or ``{"name": ...}``)."""
    value = properties.get("classification")
    if isinstance(value, dict):
        value = value.get("name")
    return value if isinstance(value, str) and value else None


def _parse_feature(
    feature: Any, nucleus: set[str], background: set[str]
) -> tuple[str, Scribble | None]:
    """Return (reason skipped, None) or ("", Scribble) for one feature."""
    if not isinstance(feature, dict) or feature.get("type") != "Feature":
        return "not a GeoJSON Feature", None
    properties = feature.get("properties") or {}
    object_type = properties.get("objectType", properties.get("object_type", "annotation"))
    if object_type == "detection":
        return "a detection (a model's output; scribbles are annotations)", None
    if object_type != "annotation":
        return f"objectType {object_type!r}", None
    name = class_name(properties)
    if name is None:
        return "unclassified", None
    if name.casefold() in nucleus:
        label = NUCLEUS
    elif name.casefold() in background:
        label = BACKGROUND
    else:
        return f"class {name!r} (neither nucleus nor background)", None
    geometry_json = feature.get("geometry")
    kind = geometry_json.get("type") if isinstance(geometry_json, dict) else None
    if kind not in LINE_TYPES + AREA_TYPES:
        return f"unsupported geometry {kind!r} (use lines or brush areas)", None
    try:
        geometry = to_shape(geometry_json)
    except (ValueError, TypeError, AttributeError, IndexError, shapely.errors.ShapelyError):
        return f"malformed {kind} coordinates", None
    if geometry.is_empty:
        return f"empty {kind}", None
    if kind in AREA_TYPES and not geometry.is_valid:
        geometry = shapely.make_valid(geometry)
        polygons = [g for g in getattr(geometry, "geoms", [geometry]) if g.geom_type in AREA_TYPES]
        if not polygons:
            return f"invalid {kind}", None
        geometry = shapely.union_all(polygons)
    return "", Scribble(label=label, geometry=geometry, class_name=name)
