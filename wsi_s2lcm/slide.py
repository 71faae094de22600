"""Reading whole-slide images at a requested resolution.

A :class:`Slide` gives the level-0 size in QuPath's frame, the level-0 mpp and ``read(x, y, w, h,
mpp)``, which returns RGB uint8 at any resolution from the best pyramid level; outside the slide
it returns the slide mirrored about its edges (:func:`mirror_indices`), so that the network sees
tissue-like context at an image border, as in training, instead of a white margin it never saw.
Implementations: :class:`OpenSlideSlide` (OpenSlide formats), :class:`ImageSlide` (plain
TIFF/PNG/JPEG, decoded once, size-limited), :class:`TiaSlide` (other formats through tiatoolbox) and
:class:`ArraySlide` (an in-memory array). :func:`open_slide` picks one and validates the input.
"""

from __future__ import annotations

import logging
import math
import threading
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import openslide
from PIL import Image

from wsi_s2lcm.errors import MissingMppError, SlideError

logger = logging.getLogger(__name__)

#: The largest plain (non-pyramidal) image decoded into memory, in pixels.
MAX_PLAIN_IMAGE_PIXELS = 150_000_000
#: Plain-image suffixes read by :class:`ImageSlide`.
PLAIN_IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
#: Suffixes only OpenSlide reads; if OpenSlide refuses them no other reader is tried.
OPENSLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".vms", ".vmu", ".scn", ".bif", ".svslide")
_CHUNK = 4096  # the largest pyramid-level region, per side, read in one piece
_LEVEL_TOLERANCE = 1e-3
_MPP_HINT = "pass --mpp, e.g. --mpp 0.25"


@runtime_checkable
class Slide(Protocol):
    """A whole-slide image readable at any resolution (see the module docstring)."""

    path: str
    dimensions: tuple[int, int]
    mpp: float

    def read(self, x: int, y: int, width: int, height: int, mpp: float) -> np.ndarray:
        """Return (height, width, 3) uint8 RGB at ``mpp``; (x, y) in level-0 px scaled by self.mpp/mpp."""

    def thumbnail(self, max_size: int) -> tuple[np.ndarray, float]:
        """Return an RGB thumbnail whose long side is ``max_size`` and level-0 px per thumbnail px."""

    def info(self) -> dict[str, Any]:
        """Return a JSON-ready description of the slide."""

    def close(self) -> None:
        """Release the file."""


def mirror_indices(start: int, stop: int, size: int) -> np.ndarray:
    """Indices ``start..stop-1`` of an axis of length ``size``, mirrored about its edges.

    Outside ``[0, size)`` the axis continues as its mirror image (edge pixel repeated, as in
    ``np.pad(..., mode="symmetric")``), periodically with period ``2 * size``. The result depends
    only on each index, so every tile that reads a pixel outside the slide gets the same value.
    """
    period = np.arange(start, stop, dtype=np.int64) % (2 * size)
    return np.where(period < size, period, 2 * size - 1 - period)


def to_rgb(pixels: np.ndarray) -> np.ndarray:
    """Convert gray, RGB or RGBA uint8 pixels to RGB, compositing transparency on white."""
    pixels = np.asarray(pixels)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {pixels.dtype}")
    channels = pixels.shape[-1]
    if channels in (1, 2):
        pixels = np.concatenate([np.repeat(pixels[..., :1], 3, axis=-1), pixels[..., 1:]], axis=-1)
    if pixels.shape[-1] == 3:
        return np.ascontiguousarray(pixels)
    if pixels.shape[-1] != 4:
        raise ValueError(f"expected 1 to 4 channels, got {channels}")
    rgb, alpha = pixels[..., :3], pixels[..., 3:]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha.astype(np.uint32)
    return ((rgb * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


class PyramidSlide:
    """Shared reading logic: best level, chunked region reads, resampling, mirrored outside the slide.

    Subclasses set ``path``, ``dimensions``, ``mpp``, ``level_dimensions``, ``level_downsamples``
    and implement :meth:`_read_level`, which reads a region lying inside a level.
    """

    path: str
    dimensions: tuple[int, int]
    mpp: float
    mpp_source: str
    level_dimensions: list[tuple[int, int]]
    level_downsamples: list[float]

    def _read_level(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        raise NotImplementedError

    def best_level(self, downsample: float) -> int:
        """Return the highest level whose downsample does not exceed ``downsample``."""
        best = 0
        for level, level_downsample in enumerate(self.level_downsamples):
            if level_downsample <= downsample * (1 + _LEVEL_TOLERANCE):
                best = level
        return best

    def read(self, x: int, y: int, width: int, height: int, mpp: float) -> np.ndarray:
        """Read a region at ``mpp`` (see :class:`Slide`); never decodes a whole level at once."""
        if width < 1 or height < 1 or not mpp > 0:
            raise ValueError(f"read needs width, height >= 1 and mpp > 0, got {width}x{height} at {mpp}")
        factor = mpp / self.mpp
        level = self.best_level(factor)
        ratio = factor / self.level_downsamples[level]  # level px per output px
        step = max(1, int(_CHUNK // max(ratio, 1.0)))
        out = np.empty((height, width, 3), np.uint8)
        for by in range(0, height, step):
            for bx in range(0, width, step):
                bw, bh = min(step, width - bx), min(step, height - by)
                out[by:by + bh, bx:bx + bw] = self._read_block(level, ratio, x + bx, y + by, bw, bh)
        return out

    def _read_block(self, level: int, ratio: float, x: int, y: int, width: int, height: int) -> np.ndarray:
        x0, y0, x1, y1 = x * ratio, y * ratio, (x + width) * ratio, (y + height) * ratio
        if abs(ratio - 1) * max(width, height) < 0.5:  # a crop misplaced by under half a pixel
            x0, y0 = round(x0), round(y0)
            x1, y1 = x0 + width, y0 + height
        ix0, iy0, ix1, iy1 = math.floor(x0), math.floor(y0), math.ceil(x1), math.ceil(y1)
        level_width, level_height = self.level_dimensions[level]
        columns = mirror_indices(ix0, ix1, level_width)
        rows = mirror_indices(iy0, iy1, level_height)
        cx0, cy0 = int(columns.min()), int(rows.min())
        cx1, cy1 = int(columns.max()) + 1, int(rows.max()) + 1
        try:
            region = self._read_level(level, cx0, cy0, cx1 - cx0, cy1 - cy0)
        except (SlideError, MemoryError):
            raise
        except Exception as exc:  # any reader failure on a bad file becomes a SlideError
            down = self.level_downsamples[level]
            raise SlideError(
                f"{Path(self.path).name}: reading the region at level-0 x={round(cx0 * down)} "
                f"y={round(cy0 * down)} ({cx1 - cx0}x{cy1 - cy0} px of level {level}) failed ({exc}); "
                "the file may be truncated or corrupt, copy or export it again"
            ) from exc
        if cx0 == ix0 and cy0 == iy0 and cx1 == ix1 and cy1 == iy1:
            canvas = region
        else:
            canvas = region[np.ix_(rows - cy0, columns - cx0)]
        if canvas.shape[:2] == (height, width):
            return canvas
        resample = Image.Resampling.BOX if ratio >= 1 else Image.Resampling.BILINEAR
        box = (x0 - ix0, y0 - iy0, x1 - ix0, y1 - iy0)
        return np.asarray(Image.fromarray(canvas).resize((width, height), resample, box=box))

    def thumbnail(self, max_size: int) -> tuple[np.ndarray, float]:
        """Return an RGB thumbnail with long side ``max_size`` (or less) and level-0 px per its px."""
        factor = max(1.0, max(self.dimensions) / max_size)
        width = max(1, round(self.dimensions[0] / factor))
        height = max(1, round(self.dimensions[1] / factor))
        return self.read(0, 0, width, height, self.mpp * factor), factor

    def _base_info(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "dimensions": list(self.dimensions),
            "levels": [
                {"dimensions": list(dims), "downsample": float(ds)}
                for dims, ds in zip(self.level_dimensions, self.level_downsamples)
            ],
            "mpp": self.mpp,
            "mpp_source": self.mpp_source,
        }

    def close(self) -> None:
        """Release the file (nothing to release by default)."""

    def _reopen_args(self) -> tuple[type, tuple[str, float | None]]:
        """Pickle a file-backed slide as its path and --mpp; it reopens where it is unpickled."""
        return type(self), (self.path, self.mpp if self.mpp_source == "--mpp" else None)

    def __enter__(self) -> PyramidSlide:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        width, height = self.dimensions
        return f"{type(self).__name__}({self.path!r}, {width}x{height}, mpp={self.mpp:g})"


def _check_mpp(name: str, *values: float | None) -> None:
    """Refuse a given mpp that is not a positive finite number."""
    for value in values:
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise SlideError(f"{name}: --mpp must be a positive number of microns per pixel, got {value}")


def _resolve_mpp(
    path: str, file_mpp: float | None, mpp: float | None, default_mpp: float | None = None
) -> tuple[float, str]:
    """Return the mpp to use and where it came from ('file' or '--mpp').

    ``mpp`` overrides the file's value; ``default_mpp`` is used only when the file records none.
    """
    name = Path(path).name
    _check_mpp(name, mpp, default_mpp)
    if mpp is not None:
        if file_mpp is not None and abs(mpp - file_mpp) > 0.05 * file_mpp:
            logger.warning("%s: --mpp %g overrides the file's %g microns per pixel", name, mpp, file_mpp)
        return float(mpp), "--mpp"
    if file_mpp is not None and file_mpp > 0:
        if default_mpp is not None and abs(default_mpp - file_mpp) > 0.05 * file_mpp:
            logger.info("%s: read at the file's %g microns per pixel (--mpp %g is for images "
                        "that record none)", name, file_mpp, default_mpp)
        return float(file_mpp), "file"
    if default_mpp is not None:
        return float(default_mpp), "--mpp"
    raise MissingMppError(f"{name}: the slide records no microns-per-pixel; {_MPP_HINT}")


class ArraySlide(PyramidSlide):
    """An in-memory RGB(A) or gray uint8 image with a known mpp (one level)."""

    def __init__(self, image: np.ndarray, mpp: float, path: str = "<array>") -> None:
        self.path = path
        self._image = to_rgb(image)
        height, width = self._image.shape[:2]
        self.dimensions = (width, height)
        self.mpp, self.mpp_source = _resolve_mpp(path, None, mpp)
        self.mpp_source = "array"
        self.level_dimensions = [self.dimensions]
        self.level_downsamples = [1.0]

    def _read_level(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        return self._image[y:y + height, x:x + width]

    def info(self) -> dict[str, Any]:
        """Describe the array (format 'array')."""
        return {**self._base_info(), "format": "array", "vendor": None, "objective_power": None,
                "associated_images": [], "bounds_offset": [0, 0]}


def _tiff_mpp(image: Image.Image) -> float | None:
    """Return the mpp a TIFF's resolution tags record, if plausible (0.05-20 um/px), else None."""
    if image.format != "TIFF":
        return None
    tags = image.tag_v2
    unit, resolution = tags.get(296), tags.get(282)  # ResolutionUnit, XResolution
    microns = {2: 25_400.0, 3: 10_000.0}.get(unit)
    if microns is None or not resolution or float(resolution) <= 0:
        return None
    mpp = microns / float(resolution)
    return mpp if 0.05 <= mpp <= 20 else None


def read_image_file(path: str | Path) -> np.ndarray:
    """Decode a whole plain image file (TIFF, PNG, JPEG...) to ``(H, W, 3)`` uint8 RGB.

    Gray is repeated to three channels; transparency is composited on white (:func:`to_rgb`).

    Raises
    ------
    SlideError
        When the file cannot be decoded as an image, or holds 16-bit or float pixels.
    """
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode.startswith(("I", "F")):
                raise SlideError(f"{Path(path).name}: {image.mode} pixels (16-bit or float); "
                                 "convert the image to 8-bit RGB first")
            if image.mode not in ("RGB", "RGBA", "L", "LA"):
                image = image.convert("RGBA")
            return to_rgb(np.asarray(image))
    except SlideError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise SlideError(f"{Path(path).name}: not a readable image ({exc}); give an image "
                         "file") from exc


class ImageSlide(ArraySlide):
    """A plain image file (TIFF, PNG, JPEG...), decoded on first read; refused above a size limit."""

    __reduce__ = PyramidSlide._reopen_args

    def __init__(
        self, path: str | Path, mpp: float | None = None, default_mpp: float | None = None
    ) -> None:
        self.path = str(path)
        name = Path(path).name
        try:
            with Image.open(path) as image:
                self.format = image.format
                width, height = image.size
                file_mpp = _tiff_mpp(image)
        except (OSError, Image.DecompressionBombError) as exc:
            raise SlideError(f"{name}: not a readable image ({exc}); give a slide or image file") from exc
        if width * height > MAX_PLAIN_IMAGE_PIXELS:
            raise SlideError(
                f"{name}: plain {self.format} image of {width}x{height} px is too large to load "
                f"(limit {MAX_PLAIN_IMAGE_PIXELS:,} px); convert it to a tiled pyramidal TIFF "
                "(e.g. vips tiffsave IN OUT --tile --pyramid --compression jpeg)"
            )
        self.dimensions = (width, height)
        self.mpp, self.mpp_source = _resolve_mpp(self.path, file_mpp, mpp, default_mpp)
        self.level_dimensions = [self.dimensions]
        self.level_downsamples = [1.0]
        self._image: np.ndarray | None = None
        self._lock = threading.Lock()

    def _read_level(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        with self._lock:
            if self._image is None:
                self._image = read_image_file(self.path)
        return self._image[y:y + height, x:x + width]

    def info(self) -> dict[str, Any]:
        """Describe the image file."""
        return {**super().info(), "format": f"image/{self.format}"}

    def close(self) -> None:
        """Drop the decoded pixels."""
        self._image = None


class OpenSlideSlide(PyramidSlide):
    """A slide read through OpenSlide; OpenSlide's bounds offset (MRXS) moves (0, 0) to QuPath's."""

    __reduce__ = PyramidSlide._reopen_args

    def __init__(
        self, path: str | Path, mpp: float | None = None, default_mpp: float | None = None
    ) -> None:
        self.path = str(path)
        try:
            self._osr = openslide.OpenSlide(self.path)
        except (openslide.OpenSlideError, OSError) as exc:
            raise SlideError(
                f"{Path(path).name}: OpenSlide cannot open it ({exc}); the file may be truncated, "
                "corrupt or not a slide"
            ) from exc
        props = self._osr.properties
        mpps = [float(props[k]) for k in (openslide.PROPERTY_NAME_MPP_X, openslide.PROPERTY_NAME_MPP_Y)
                if k in props]
        file_mpp = sum(mpps) / len(mpps) if mpps else None
        try:
            self.mpp, self.mpp_source = _resolve_mpp(self.path, file_mpp, mpp, default_mpp)
        except SlideError:
            self._osr.close()
            raise
        self.bounds_offset = (int(props.get(openslide.PROPERTY_NAME_BOUNDS_X, 0)),
                              int(props.get(openslide.PROPERTY_NAME_BOUNDS_Y, 0)))
        width, height = self._osr.dimensions
        if openslide.PROPERTY_NAME_BOUNDS_WIDTH in props:
            width = int(props[openslide.PROPERTY_NAME_BOUNDS_WIDTH])
            height = int(props[openslide.PROPERTY_NAME_BOUNDS_HEIGHT])
        self.dimensions = (width, height)
        self.level_downsamples = [float(d) for d in self._osr.level_downsamples]
        self.level_dimensions = [tuple(dims) for dims in self._osr.level_dimensions]
        if (width, height) != self._osr.dimensions:  # cropped to the bounds (MRXS)
            self.level_dimensions = [(math.ceil(width / d), math.ceil(height / d)) for d in self.level_downsamples]

    def _read_level(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        downsample = self.level_downsamples[level]
        location = (self.bounds_offset[0] + round(x * downsample), self.bounds_offset[1] + round(y * downsample))
        return to_rgb(np.asarray(self._osr.read_region(location, level, (width, height))))

    def info(self) -> dict[str, Any]:
        """Describe the slide (vendor, levels, mpp, objective power, associated images)."""
        props = self._osr.properties
        power = props.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER)
        return {**self._base_info(), "format": "openslide",
                "vendor": props.get(openslide.PROPERTY_NAME_VENDOR),
                "objective_power": float(power) if power else None,
                "associated_images": sorted(self._osr.associated_images),
                "bounds_offset": list(self.bounds_offset)}

    def close(self) -> None:
        """Close the OpenSlide handle."""
        self._osr.close()


class TiaSlide(PyramidSlide):
    """A slide in another format (OME-TIFF, DICOM, JP2...) read through tiatoolbox's WSIReader."""

    __reduce__ = PyramidSlide._reopen_args

    def __init__(
        self, path: str | Path, mpp: float | None = None, default_mpp: float | None = None
    ) -> None:
        from tiatoolbox.wsicore.wsireader import WSIReader

        self.path = str(path)
        try:
            self._reader = WSIReader.open(self.path)
            meta = self._reader.info
        except Exception as exc:  # tiatoolbox raises many types for unreadable files
            raise SlideError(
                f"{Path(path).name}: not a slide or image that OpenSlide, PIL or tiatoolbox can read "
                f"({exc}); give a whole-slide image or a TIFF/PNG/JPEG"
            ) from exc
        file_mpp = float(np.mean(meta.mpp)) if meta.mpp is not None else None
        self.mpp, self.mpp_source = _resolve_mpp(self.path, file_mpp, mpp, default_mpp)
        self.dimensions = tuple(int(v) for v in meta.slide_dimensions)
        self.level_dimensions = [tuple(int(v) for v in dims) for dims in meta.level_dimensions]
        self.level_downsamples = [float(d) for d in meta.level_downsamples]
        self._meta = meta

    def _read_level(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        downsample = self.level_downsamples[level]
        location = (round(x * downsample), round(y * downsample))
        pixels = self._reader.read_rect(location, (width, height), resolution=level, units="level",
                                        pad_constant_values=255)
        return to_rgb(np.asarray(pixels, dtype=np.uint8))

    def info(self) -> dict[str, Any]:
        """Describe the slide as tiatoolbox reports it."""
        power = self._meta.objective_power
        return {**self._base_info(), "format": f"tiatoolbox/{type(self._reader).__name__}",
                "vendor": self._meta.vendor, "objective_power": float(power) if power else None,
                "associated_images": [], "bounds_offset": [0, 0]}


def _tiff_kind(path: Path) -> str:
    """Classify a TIFF as 'ome', 'pyramid', 'plain' or 'unreadable'."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if tif.is_ome:
                return "ome"
            return "pyramid" if len(tif.series[0].levels) > 1 else "plain"
    except (tifffile.TiffFileError, OSError, ValueError, IndexError):
        return "unreadable"


def open_slide(
    path: str | Path, mpp: float | None = None, default_mpp: float | None = None
) -> PyramidSlide:
    """Open a slide or image, choosing the reader by content.

    Parameters
    ----------
    path
        A whole-slide image (any OpenSlide format), a plain TIFF/PNG/JPEG, or another format
        tiatoolbox reads (OME-TIFF, DICOM, JP2...).
    mpp
        Level-0 microns per pixel; overrides the file's value. Required when the file has none.
    default_mpp
        Level-0 microns per pixel for a file that records none; a file's own value wins.

    Raises
    ------
    SlideError
        The file is missing, a directory, unreadable, not a slide, or has no mpp and none is given.
    """
    path = Path(path)
    name = path.name
    _check_mpp(name, mpp, default_mpp)
    if not path.exists():
        raise SlideError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise SlideError(
            f"{path}: is a directory, not a slide; give the slide files in it, e.g. {path}/*.svs"
        )
    try:
        vendor = openslide.OpenSlide.detect_format(str(path))
    except (openslide.OpenSlideError, OSError) as exc:
        raise SlideError(f"{name}: cannot be read ({exc}); check the file's permissions") from exc
    suffix = path.suffix.lower()
    tiff = _tiff_kind(path) if suffix in (".tif", ".tiff") else None
    if vendor is not None and tiff != "ome":
        return OpenSlideSlide(path, mpp, default_mpp)
    if suffix in OPENSLIDE_SUFFIXES:
        raise SlideError(
            f"{name}: OpenSlide does not recognise it as a slide; the file may be truncated, "
            "corrupt or not a slide"
        )
    if suffix in PLAIN_IMAGE_SUFFIXES and tiff in (None, "plain", "unreadable"):
        return ImageSlide(path, mpp, default_mpp)
    return TiaSlide(path, mpp, default_mpp)


def check_readable(slide: Slide, grid: int = 3, size: int = 64) -> None:
    """Read a few small regions spread over ``slide`` (and a thumbnail); raise SlideError if one fails.

    Cheap (grid x grid reads of ``size`` px at level 0 plus a 256-px thumbnail); catches files that
    open but whose tiles are truncated or corrupt before any output is written.
    """
    width, height = slide.dimensions
    for i in range(grid):
        for j in range(grid):
            x = max(0, int(width * (i + 0.5) / grid) - size // 2)
            y = max(0, int(height * (j + 0.5) / grid) - size // 2)
            slide.read(x, y, size, size, slide.mpp)
    slide.thumbnail(256)


def slide_info(path: str | Path, mpp: float | None = None) -> dict[str, Any]:
    """What ``wsi-s2lcm info`` prints: :meth:`PyramidSlide.info`, also for slides without mpp.

    A slide that records no mpp (and no ``mpp`` given) is described with ``mpp`` ``None``.
    """
    try:
        with open_slide(path, mpp=mpp) as slide:
            return slide.info()
    except MissingMppError:
        with open_slide(path, mpp=1.0) as slide:
            info = slide.info()
        info["mpp"] = None
        info["mpp_source"] = "none: pass --mpp to segment this slide"
        return info
