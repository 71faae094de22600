"""Training data: images paired with scribble files, resampled to the model's resolution.

Images and scribble files are paired by file stem (``A.tif`` with ``A.geojson``). A plain image
(PNG, JPEG, TIFF of at most :data:`MAX_PLAIN_PIXELS`) is read whole at the µm/px its file records
(TIFF resolution tags) or, when it records none, at ``image_mpp``, and resampled to the model's
mpp; anything else is opened as a whole slide through :func:`wsi_s2lcm.slide.open_slide`
(``image_mpp`` again only for a slide that records none), and only the regions of
``slide_region_size`` pixels (at the model's mpp) that hold scribbles are read. Scribbles are
rasterized directly at the model's resolution, never resampled as label images.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np
import shapely

from wsi_s2lcm.errors import AnnotationError, ConfigError
from wsi_s2lcm.label_files import strip_suffix
from wsi_s2lcm.qupath.imports import Scribble, read_scribbles
from wsi_s2lcm.slide import ImageSlide, open_slide, read_image_file
from wsi_s2lcm.training.config import SCRIBBLE_MANIFEST
from wsi_s2lcm.training.scribbles import (
    IGNORE, rasterize_nucleus_ids, rasterize_scribbles, scribble_target,
)

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
SLIDE_SUFFIXES = (
    ".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide", ".tif", ".tiff",
)
SCRIBBLE_SUFFIXES = (".geojson", ".json", ".geojson.gz", ".json.gz")
MAX_PLAIN_PIXELS = 64_000_000


@dataclasses.dataclass
class TrainImage:
    """One image (or slide region) at the model's mpp with its sparse target.

    Attributes
    ----------
    key : str
        Unique name: the file stem, with ``@x,y`` (model px) for a slide region.
    source : str
        The image file.
    image : np.ndarray
        ``(H, W, 3)`` uint8 RGB.
    target : np.ndarray
        ``(H, W)`` uint8: 1 nucleus, 0 background, 255 unlabeled.
    nucleus_ids : np.ndarray or None
        ``(H, W)`` int32: each nucleus scribble painted with its own id (0 elsewhere), for
        calibrating the separation of touching nuclei (:mod:`wsi_s2lcm.training.calibrate`).
    source_mpp : float or None
        µm/px of the image file (level 0 of a slide) that ``image`` was resampled from.
    """

    key: str
    source: str
    image: np.ndarray
    target: np.ndarray
    nucleus_ids: np.ndarray | None = None
    source_mpp: float | None = None


def file_stem(path: Path) -> str:
    """A file's name without its (possibly double) image, slide or scribble suffix.

    A scribble file named after the image with its suffix (``A.svs.geojson``, as QuPath scripts
    that export to ``getImageName() + ".geojson"`` write it) loses both, so that it pairs with
    ``A.svs`` as ``A.geojson`` does.
    """
    image_suffixes = IMAGE_SUFFIXES + SLIDE_SUFFIXES
    stem = strip_suffix(path, SCRIBBLE_SUFFIXES + image_suffixes)
    if path.name.lower().endswith(SCRIBBLE_SUFFIXES) and stem.lower().endswith(image_suffixes):
        stem = strip_suffix(Path(stem), image_suffixes)
    return stem


def pair_files(
    images_dirs: Sequence[Path],
    scribbles_dirs: Sequence[Path],
    stems: Iterable[str] | None = None,
) -> list[tuple[str, Path, Path]]:
    """Pair image files with scribble files by stem.

    Parameters
    ----------
    images_dirs, scribbles_dirs
        Folders of images (or slides) and of QuPath GeoJSON files; a stem may appear only once
        among the image folders and once among the scribble folders.
    stems
        Only these stems (all paired stems when ``None``); a listed stem without both files is an
        error.

    Returns
    -------
    list of (stem, image path, scribble path), sorted by stem.

    Raises
    ------
    ConfigError
        If a folder is missing, a stem is in two folders, or nothing pairs up.
    """
    images = _files_by_stem(images_dirs, IMAGE_SUFFIXES + SLIDE_SUFFIXES, "image")
    scribbles = _files_by_stem(scribbles_dirs, SCRIBBLE_SUFFIXES, "scribble")
    images_text = ", ".join(str(folder) for folder in images_dirs)
    scribbles_text = ", ".join(str(folder) for folder in scribbles_dirs)
    if stems is None:
        wanted = sorted(set(images) & set(scribbles))
        for stem in sorted(set(scribbles) - set(images)):
            logger.warning("%s: no image named %s.* in %s; skipped", scribbles[stem], stem,
                           images_text)
    else:
        wanted = sorted(set(stems))
        missing = [s for s in wanted if s not in images or s not in scribbles]
        if missing:
            raise ConfigError(
                f"{len(missing)} listed image(s) lack an image in {images_text} or a scribble "
                f"file in {scribbles_text} (first: {missing[0]}); check the split file."
            )
    if not wanted:
        raise ConfigError(
            f"no image in {images_text} has a scribble file of the same name in "
            f"{scribbles_text} (A.tif pairs with A.geojson)."
        )
    return [(stem, images[stem], scribbles[stem]) for stem in wanted]


def _files_by_stem(
    folders: Sequence[Path], suffixes: tuple[str, ...], kind: str
) -> dict[str, Path]:
    """The files with one of ``suffixes`` in ``folders``, by stem; a stem twice is an error."""
    found: dict[str, Path] = {}
    for folder in folders:
        if not folder.is_dir():
            raise ConfigError(f"{folder}: not a folder.")
        for path in sorted(folder.iterdir()):
            if (not path.is_file() or not path.name.lower().endswith(suffixes)
                    or path.name == SCRIBBLE_MANIFEST):
                continue
            stem = file_stem(path)
            if stem in found:
                raise ConfigError(
                    f"two {kind} files named {stem}: {found[stem]} and {path}; rename one, "
                    "since images and scribbles pair by name."
                )
            found[stem] = path
    return found


def resample(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize an RGB image to ``(height, width)`` (area averaging when shrinking)."""
    if image.shape[:2] == shape:
        return image
    shrink = shape[0] < image.shape[0]
    method = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(image, (shape[1], shape[0]), interpolation=method)


def _is_plain(path: Path) -> bool:
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        return False
    if suffix in (".tif", ".tiff"):
        import tifffile

        try:
            with tifffile.TiffFile(path) as tiff:
                page = tiff.pages[0]
                pixels = page.imagelength * page.imagewidth
                return len(tiff.pages) == 1 and pixels <= MAX_PLAIN_PIXELS
        except (tifffile.TiffFileError, OSError, ValueError, IndexError):
            return False  # not a readable TIFF: the slide reader reports it
    return True


def load_pair(
    stem: str, image_path: Path, scribble_path: Path, image_mpp: float | None, config: object
) -> list[TrainImage]:
    """Read one image (or slide) and its scribbles at ``config.mpp``.

    Parameters
    ----------
    stem, image_path, scribble_path
        One row of :func:`pair_files`.
    image_mpp
        µm/px of an image whose file records none (plain MoNuSeg TIFFs, for example); a file's own
        value is used when it has one.
    config
        A :class:`~wsi_s2lcm.training.config.TrainConfig`.

    Raises
    ------
    MissingMppError
        When the file records no µm/px and ``image_mpp`` is None.
    """
    scribbles = read_scribbles(scribble_path, config.nucleus_classes, config.background_classes)
    stroke = config.stroke_width_um / config.mpp
    if not _is_plain(image_path):
        return _load_slide_regions(stem, image_path, scribble_path, scribbles, image_mpp, config)
    image_mpp = ImageSlide(image_path, default_mpp=image_mpp).mpp
    image = read_image_file(image_path)
    factor = config.mpp / image_mpp
    shape = (max(round(image.shape[0] / factor), 1), max(round(image.shape[1] / factor), 1))
    # Each axis is resized to a whole number of pixels, so the two scales may differ a little.
    scale = (image.shape[1] / shape[1], image.shape[0] / shape[0])
    target = scribble_target(scribbles, shape, scale, stroke, str(scribble_path))
    ids = rasterize_nucleus_ids(scribbles, shape, scale, stroke_width=stroke)
    return [TrainImage(stem, str(image_path), resample(image, shape), target, ids, image_mpp)]


def _load_slide_regions(
    stem: str, path: Path, scribble_path: Path, scribbles: Sequence[Scribble],
    mpp: float | None, config: object,
) -> list[TrainImage]:
    """The regions of a whole slide that hold scribbles, read at the model's mpp."""
    with open_slide(path, default_mpp=mpp) as slide:
        scale = config.mpp / slide.mpp
        width0, height0 = slide.dimensions
        bounds = shapely.box(0, 0, width0, height0)
        inside = [s for s in scribbles if s.geometry.intersects(bounds)]
        if len(inside) < len(scribbles):
            logger.warning("%s: %d scribble(s) outside the slide; skipped", scribble_path,
                           len(scribbles) - len(inside))
        if not inside:
            raise AnnotationError(
                f"{scribble_path}: no scribble lies inside {path} ({width0} x {height0} px at "
                "level 0); were they exported from another image?"
            )
        size = config.slide_region_size
        width, height = math.floor(width0 / scale), math.floor(height0 / scale)
        origins: set[tuple[int, int]] = set()
        for scribble in inside:
            x0, y0, x1, y1 = (v / scale for v in scribble.geometry.bounds)
            rows = range(max(int(y0 // size), 0), min(int(y1 // size), (height - 1) // size) + 1)
            cols = range(max(int(x0 // size), 0), min(int(x1 // size), (width - 1) // size) + 1)
            origins.update((tx * size, ty * size) for ty in rows for tx in cols)
        regions = []
        for x, y in sorted(origins, key=lambda xy: (xy[1], xy[0])):
            w, h = min(size, width - x), min(size, height - y)
            stroke = config.stroke_width_um / config.mpp
            target = rasterize_scribbles(inside, (h, w), scale, (x * scale, y * scale), stroke)
            if (target != IGNORE).any():
                image = np.asarray(slide.read(x, y, w, h, config.mpp), np.uint8)[..., :3]
                ids = rasterize_nucleus_ids(inside, (h, w), scale, (x * scale, y * scale), stroke)
                regions.append(
                    TrainImage(f"{stem}@{x},{y}", str(path), image, target, ids, slide.mpp)
                )
        if not regions:
            raise AnnotationError(f"{scribble_path}: no scribble pixel falls inside {path}.")
    logger.info("%s: %d region(s) of %d px around the scribbles", path, len(regions), size)
    return regions


def split_stems(stems: Sequence[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Hold back ``fraction`` of the stems (at least one when possible) for model selection."""
    stems = sorted(stems)
    count = int(round(fraction * len(stems)))
    if fraction > 0 and len(stems) >= 2:
        count = min(max(count, 1), len(stems) - 1)
    else:
        count = 0
    rng = np.random.default_rng(seed)
    held = set(rng.choice(stems, size=count, replace=False).tolist()) if count else set()
    return [s for s in stems if s not in held], [s for s in stems if s in held]
