"""Read label images and polygon files as label arrays, paired by file stem.

Either side of an evaluation may hold label images (PNG or TIFF, any integer dtype, 0 =
background), GeoJSON (a QuPath FeatureCollection or an array of Features, optionally gzipped) or
Aperio ImageScope XML (:mod:`wsi_s2lcm.imagescope`; MoNuSeg's format), the polygons in the image's
pixel frame. A file's stem is its name without the label suffix, so ``slide.geojson``,
``slide.geojson.gz``, ``slide.xml`` and ``slide.png`` pair, and ``case.1.png`` and ``case.2.png``
stay apart. The outline overlay that ``wsi-s2lcm segment`` writes (``slide.overlay.png``) is not
a label file and is skipped. Polygons are rasterized into the shape of the other side's label
image; when both sides are polygons the shape comes from ``shape``, from an image of the same
stem, or from the union of the polygons' bounds. ``wsi-s2lcm scribbles`` reads its masks with
:func:`read_labels`.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from wsi_s2lcm.errors import AnnotationError, UserInputError
from wsi_s2lcm.imagescope import read_imagescope_polygons

logger = logging.getLogger(__name__)

#: Of several files with one stem, the first suffix here wins.
SUFFIX_PREFERENCE = (
    ".geojson", ".geojson.gz", ".xml", ".png", ".tif", ".tiff", ".json", ".json.gz"
)
IMAGE_SUFFIXES = (".png", ".tif", ".tiff")
GEOJSON_SUFFIXES = (".geojson", ".json", ".geojson.gz", ".json.gz")
IMAGESCOPE_SUFFIXES = (".xml",)
#: Written by ``wsi-s2lcm segment`` beside its GeoJSON: a picture of the outlines, not labels.
OVERLAY_SUFFIX = ".overlay.png"
MAX_RASTER_PIXELS = 400_000_000


@dataclass
class _Source:
    path: Path
    labels: np.ndarray | None = None
    polygons: list | None = None
    message: str | None = None

    @property
    def has_polygons(self) -> bool:
        return self.polygons is not None


def note(notes: list[str], message: str) -> None:
    """Append ``message`` to ``notes`` and log it as a warning."""
    notes.append(message)
    logger.warning(message)


def strip_suffix(path: Path, suffixes: tuple[str, ...]) -> str:
    """``path``'s name without the longest of ``suffixes`` it ends with (case-insensitive).

    A name that ends with none of them loses its last suffix only (:attr:`Path.stem`).
    """
    name = path.name
    for suffix in sorted(suffixes, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def file_stem(path: Path) -> str:
    """A file's name without its label suffix: the key that pairs predictions with ground truth."""
    return strip_suffix(path, GEOJSON_SUFFIXES + IMAGESCOPE_SUFFIXES + IMAGE_SUFFIXES)


def label_kind(path: Path) -> str | None:
    """``"image"``, ``"geojson"`` or ``"imagescope"`` by the file's suffix; None for other files
    (and for the overlay PNG that ``segment`` writes)."""
    name = path.name.lower()
    if name.endswith(OVERLAY_SUFFIX):
        return None
    if name.endswith(GEOJSON_SUFFIXES):
        return "geojson"
    if name.endswith(IMAGESCOPE_SUFFIXES):
        return "imagescope"
    if name.endswith(IMAGE_SUFFIXES):
        return "image"
    return None


def index_label_files(directory: Path, role: str, notes: list[str]) -> dict[str, Path]:
    """Label image, GeoJSON and ImageScope XML files by stem; of several, the first by suffix
    preference (:data:`SUFFIX_PREFERENCE`).

    So ``slide.geojson`` is taken over the run summary ``slide.json`` that ``wsi-s2lcm segment``
    writes beside it; every choice is noted.
    """
    if not directory.is_dir():
        raise UserInputError(
            f"{role} directory {directory} does not exist or is not a directory; "
            "pass a folder of label images, GeoJSON or ImageScope XML files"
        )
    by_stem: dict[str, list[Path]] = {}
    for path in sorted(directory.iterdir()):
        if path.is_file() and not path.name.startswith(".") and label_kind(path) is not None:
            by_stem.setdefault(file_stem(path), []).append(path)
    found: dict[str, Path] = {}
    for stem, paths in by_stem.items():
        paths.sort(key=lambda path: (_suffix_rank(path), path.name))
        if len(paths) > 1:
            ignored = ", ".join(path.name for path in paths[1:])
            note(notes, f"{role} {paths[0].name} used; {ignored} ignored")
        found[stem] = paths[0]
    return found


def _suffix_rank(path: Path) -> int:
    name = path.name.lower()
    for rank, suffix in enumerate(SUFFIX_PREFERENCE):
        if name.endswith(suffix):
            return rank
    return len(SUFFIX_PREFERENCE)


def read_label_image(path: Path) -> tuple[np.ndarray, str | None]:
    """Read a label image; label its connected components when it is a binary mask.

    Parameters
    ----------
    path
        PNG or TIFF file, 2-D, any integer (or boolean) dtype, 0 = background. An RGB(A) file whose
        channels are equal is read as one channel.

    Returns
    -------
    labels : np.ndarray
        The label image.
    warning : str or None
        A message when the file was a binary mask with several components that were labelled
        (8-connectivity) to give instances; None otherwise.

    Raises
    ------
    AnnotationError
        If the file cannot be read or is not a label image.
    """
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            array = tifffile.imread(path)
        else:
            from PIL import Image

            with Image.open(path) as image:
                array = np.asarray(image)
    except (OSError, ValueError) as error:
        raise AnnotationError(f"cannot read label image {path}: {error}") from error
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        first = array[..., :1]
        if not np.array_equal(array[..., :3], np.broadcast_to(first, array[..., :3].shape)):
            raise AnnotationError(
                f"{path} is a colour image, not a label image; "
                "save labels as a single-channel integer PNG or TIFF"
            )
        array = array[..., 0]
    if array.ndim != 2:
        raise AnnotationError(f"{path} has shape {array.shape}; a label image must be 2-D")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise AnnotationError(
                f"{path} holds non-integer values ({array.dtype}); a label image holds object ids"
            )
        array = array.astype(np.int64)
    if array.size and array.min() < 0:
        raise AnnotationError(f"{path} holds negative values; use 0 for background, ids > 0")
    values = np.unique(array)
    if values.size == 2 and values[0] == 0:
        labels, n_objects = ndimage.label(array > 0, structure=np.ones((3, 3), dtype=bool))
        if n_objects > 1:
            message = (
                f"{path.name} is a binary mask; its {n_objects} connected components (8-connected) "
                "were taken as the instances, so touching nuclei count as one"
            )
            return labels.astype(np.uint32), message
    return array, None


def read_geojson_polygons(path: Path) -> tuple[list, str | None]:
    """Read the (Multi)Polygons of a GeoJSON file, in file order.

    Accepts a FeatureCollection, an array of Features, or one Feature; ``.gz`` files are
    decompressed. For QuPath cell objects the ``nucleusGeometry`` is used when present. When the
    file mixes annotations with detections or cells, only the detections and cells are kept.

    Parameters
    ----------
    path
        The GeoJSON file.

    Returns
    -------
    polygons : list
        Shapely Polygons and MultiPolygons.
    warning : str or None
        A message when features were skipped.

    Raises
    ------
    AnnotationError
        If the file cannot be read or parsed.
    """
    from shapely.geometry import shape as to_shape

    try:
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as stream:
            document = json.load(stream)
    except (OSError, ValueError, EOFError) as error:
        raise AnnotationError(f"cannot read GeoJSON {path}: {error}") from error
    if isinstance(document, dict) and document.get("type") == "FeatureCollection":
        features = document.get("features") or []
    elif isinstance(document, dict) and document.get("type") == "Feature":
        features = [document]
    elif isinstance(document, list):
        features = document
    else:
        raise AnnotationError(f"{path} is not a GeoJSON FeatureCollection or an array of Features")
    features = [feature for feature in features if isinstance(feature, dict)]
    kinds = [_object_type(feature) for feature in features]
    skipped = 0
    if "annotation" in kinds and any(kind in ("detection", "cell") for kind in kinds):
        skipped = kinds.count("annotation")
        features = [f for f, kind in zip(features, kinds) if kind != "annotation"]
    polygons = []
    for feature in features:
        geometry = feature.get("nucleusGeometry") or feature.get("geometry")
        kind = geometry.get("type") if isinstance(geometry, dict) else None
        if kind not in ("Polygon", "MultiPolygon"):
            skipped += 1
            continue
        try:
            polygons.append(to_shape(geometry))
        except (ValueError, TypeError, AttributeError, IndexError) as error:
            raise AnnotationError(f"{path} holds an invalid {kind}: {error}") from error
    message = None
    if skipped:
        message = (
            f"{path.name}: {skipped} feature(s) that are annotations or not (Multi)Polygons "
            "were skipped"
        )
    return polygons, message


def _object_type(feature: dict) -> str | None:
    properties = feature.get("properties") or {}
    kind = properties.get("objectType", properties.get("object_type"))
    return str(kind).lower() if kind is not None else None


def image_shape(path: Path) -> tuple[int, int]:
    """``(height, width)`` of a PNG, TIFF or JPEG file, read from its header (no decoding).

    Raises
    ------
    UserInputError
        When the file's size cannot be read.
    """
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tiff:
                shape = tiff.pages[0].shape
            return int(shape[0]), int(shape[1])
        from PIL import Image

        with Image.open(path) as image:
            return int(image.height), int(image.width)
    except (OSError, ValueError) as error:
        raise UserInputError(f"cannot read the size of image {path}: {error}") from error


def find_image(image_dir: Path, stem: str) -> Path | None:
    """The first image file (PNG or TIFF) in ``image_dir`` with file stem ``stem``, or None."""
    for path in sorted(image_dir.iterdir()):
        if path.is_file() and file_stem(path) == stem and label_kind(path) == "image":
            return path
    return None


def _union_frame(sources: list[_Source]) -> tuple[tuple[int, int], tuple[float, float]]:
    """Shape and top-left offset (x, y) of a raster covering every polygon, on the pixel grid."""
    bounds = np.array([p.bounds for s in sources for p in s.polygons if not p.is_empty])
    if bounds.size == 0:
        return (1, 1), (0.0, 0.0)
    x0, y0 = math.floor(bounds[:, 0].min()), math.floor(bounds[:, 1].min())
    x1, y1 = math.ceil(bounds[:, 2].max()), math.ceil(bounds[:, 3].max())
    return (max(y1 - y0, 1), max(x1 - x0, 1)), (float(x0), float(y0))


def _rasterize(
    source: _Source, shape: tuple[int, int], offset_xy: tuple[float, float]
) -> np.ndarray:
    from wsi_s2lcm.rasterize import rasterize_polygons

    if shape[0] * shape[1] > MAX_RASTER_PIXELS:
        raise UserInputError(
            f"{source.path} spans {shape[1]} x {shape[0]} px, too large to rasterize for "
            "evaluation; evaluate crops or pass a shape"
        )
    return rasterize_polygons(source.polygons, shape, offset_xy=offset_xy)


def read_labels(path: Path, shape: tuple[int, int] | None) -> tuple[np.ndarray, str | None]:
    """One label file as a label image: a label image as it is, polygons rasterized into ``shape``.

    Parameters
    ----------
    path
        Label image, GeoJSON or ImageScope XML file.
    shape
        ``(height, width)`` of the image the labels belong to: required for polygon files, and
        checked against label images.

    Returns
    -------
    labels : np.ndarray
        The label image.
    warning : str or None
        What the reader warned about (a binary mask labelled, features or regions skipped).

    Raises
    ------
    AnnotationError
        If the file cannot be read, a label image is not ``shape``, or a polygon file comes
        without a shape.
    """
    source = _load(path)
    if source.has_polygons:
        if shape is None:
            raise AnnotationError(
                f"{path} holds polygons; give the image it belongs to so they can be rasterized "
                "at its size"
            )
        return _rasterize(source, (int(shape[0]), int(shape[1])), (0.0, 0.0)), source.message
    if shape is not None and source.labels.shape != tuple(shape):
        raise AnnotationError(
            f"{path} is {_hw(source.labels.shape)}, but its image is {_hw(tuple(shape))}"
        )
    return source.labels, source.message


def _load(path: Path) -> _Source:
    kind = label_kind(path)
    if kind == "image":
        labels, message = read_label_image(path)
        return _Source(path, labels=labels, message=message)
    reader = read_imagescope_polygons if kind == "imagescope" else read_geojson_polygons
    polygons, message = reader(path)
    return _Source(path, polygons=polygons, message=message)


def load_label_pair(
    pred_path: Path,
    gt_path: Path,
    shape: tuple[int, int] | None = None,
    image_path: Path | None = None,
    notes: list[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Read a prediction and its ground truth as two label images of one shape.

    Parameters
    ----------
    pred_path, gt_path
        Label image, GeoJSON or ImageScope XML files.
    shape
        ``(height, width)`` for a pair of two polygon files; also checked against label images.
    image_path
        An image whose size gives the shape of a pair of polygon files when ``shape`` is None.
    notes
        A list that receives warnings about the inputs.

    Returns
    -------
    tuple of np.ndarray
        ``(pred_labels, gt_labels)``.

    Raises
    ------
    AnnotationError
        If a file cannot be read or the two sides differ in shape.
    """
    notes = notes if notes is not None else []
    pred, gt = _load(Path(pred_path)), _load(Path(gt_path))
    for source in (pred, gt):
        if source.message:
            note(notes, source.message)
    offset_xy = (0.0, 0.0)
    label_shapes = [s.labels.shape for s in (pred, gt) if not s.has_polygons]
    if len(label_shapes) == 2 and label_shapes[0] != label_shapes[1]:
        raise AnnotationError(
            f"prediction {pred.path} is {_hw(label_shapes[0])} but ground truth {gt.path} is "
            f"{_hw(label_shapes[1])}; both must cover the same pixels"
        )
    if shape is not None:
        target = (int(shape[0]), int(shape[1]))
        for source in (pred, gt):
            if not source.has_polygons and source.labels.shape != target:
                raise AnnotationError(
                    f"{source.path} is {_hw(source.labels.shape)}, not the given {_hw(target)}"
                )
    elif label_shapes:
        target = label_shapes[0]
    elif image_path is not None:
        target = image_shape(image_path)
    else:
        target, offset_xy = _union_frame([pred, gt])
    return tuple(  # type: ignore[return-value]
        _rasterize(s, target, offset_xy) if s.has_polygons else s.labels for s in (pred, gt)
    )


def _hw(shape: tuple[int, ...]) -> str:
    return f"{shape[0]} x {shape[1]} px (height x width)"
