"""Frozen configuration dataclasses for tiling, post-processing and export.

YAML and command-line values enter through :func:`from_mapping`, which rejects unknown keys and
wrong types with a :class:`~wsi_s2lcm.errors.ConfigError` naming the key. The training
configuration lives beside the trainer in :mod:`wsi_s2lcm.training.config`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, TypeVar

from wsi_s2lcm.errors import ConfigError

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class TilingConfig:
    """How a slide is cut into tiles, in pixels at the model's resolution.

    Attributes
    ----------
    tile_size : int
        Side of a square tile fed to the network; a multiple of 32.
    overlap : int
        Pixels shared by two neighbouring tiles; half of it is the context margin on each side of
        a tile's core. Nuclei smaller than half the overlap are always seen whole by their owner;
        larger ones are re-segmented on a larger window (see :mod:`wsi_s2lcm.segment`).
    context : int
        Extra pixels the network sees on each side of a tile, cropped off before
        post-processing (only the stain check reads its first 2 µm). Predictions near a tile's
        edge depend on this context; with the default (64) plus half the overlap, 256-px and
        1024-px tiles find the same nuclei (docs/SEGMENT.md).
        A multiple of 16, so the network input stays a multiple of 32.
    batch_size : int
        Tiles per network batch and per dispatched task.
    tissue_mask : bool
        Skip tiles without tissue, judged on a thumbnail.
    """

    tile_size: int = 768
    overlap: int = 96
    context: int = 64
    batch_size: int = 4
    tissue_mask: bool = True

    def __post_init__(self) -> None:
        if self.tile_size < 64 or self.tile_size % 32:
            raise ConfigError(
                f"tile_size {self.tile_size} must be a multiple of 32 and at least 64; "
                "try 512 or 768."
            )
        if self.overlap < 0 or self.overlap % 2:
            raise ConfigError(f"overlap {self.overlap} must be an even number >= 0; try 96.")
        if self.tile_size - self.overlap < 32:
            raise ConfigError(
                f"overlap {self.overlap} leaves a core of less than 32 px in a tile of "
                f"{self.tile_size}; use a larger --tile-size or a smaller --overlap."
            )
        if self.context < 0 or self.context % 16:
            raise ConfigError(f"context {self.context} must be a multiple of 16 and >= 0; try 64.")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size {self.batch_size} must be at least 1.")

    @property
    def margin(self) -> int:
        """Context pixels on each side of a tile's core (half the overlap)."""
        return self.overlap // 2

    @property
    def stride(self) -> int:
        """Distance between the origins of neighbouring tiles (the core size)."""
        return self.tile_size - self.overlap


@dataclasses.dataclass(frozen=True)
class PostprocessConfig:
    """How one tile's nucleus probabilities become instances.

    Attributes
    ----------
    threshold : float
        Probability above which a pixel is nucleus.
    min_area_um2 : float
        Objects smaller than this (µm²) are removed.
    fill_holes : bool
        Fill holes inside each object.
    separate : bool
        Split touching nuclei with a watershed on the distance transform. Off reproduces the
        papers' connected components.
    h_um : float
        Height (µm of distance) a distance-transform maximum must stand above its surroundings to
        seed its own nucleus; larger values split less.
    min_hematoxylin_contrast : float
        An object is kept only when its mean hematoxylin optical density is at least this many
        times that of the background pixels around it (within
        :data:`~wsi_s2lcm.false_objects.RING_UM`); the default 1.0 drops objects no darker in
        hematoxylin than their surroundings, such as eosin-stained stroma. 0 keeps every object.
    min_mean_probability : float
        An object is kept only when the mean nucleus probability of its pixels is at least this;
        the default 0.7 drops faint blobs that only just clear ``threshold`` (on slides unlike
        the training data, mostly pink stroma and debris: docs/MODEL.md). 0 keeps every object.
    min_slide_hematoxylin_fraction : float
        After all tiles, a nucleus is kept only when its mean hematoxylin optical density is at
        least this fraction of the median over all the slide's nuclei; the default 0.3 drops
        objects far paler than the slide's typical nucleus (on slides unlike the training data,
        pink and pale debris: docs/MODEL.md). 0 keeps every object.
    drop_green : bool
        Drop objects whose mean colour is greener than it is red. Hematoxylin and eosin both
        absorb green at least as much as red, so an H&E-stained object never is; green and teal
        tissue-marking ink is. Turn off for a green counterstain (methyl green).
    """

    threshold: float = 0.5
    min_area_um2: float = 4.0
    fill_holes: bool = True
    separate: bool = True
    h_um: float = 0.75
    min_hematoxylin_contrast: float = 1.0
    min_mean_probability: float = 0.7
    min_slide_hematoxylin_fraction: float = 0.3
    drop_green: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"threshold {self.threshold} must lie strictly between 0 and 1.")
        if not 0 <= self.min_area_um2 < math.inf:
            raise ConfigError(f"min_area_um2 {self.min_area_um2} must be a number >= 0.")
        if not 0 < self.h_um < math.inf:
            raise ConfigError(f"h_um {self.h_um} must be a number > 0.")
        if not 0 <= self.min_hematoxylin_contrast < math.inf:
            raise ConfigError(
                f"min_hematoxylin_contrast {self.min_hematoxylin_contrast} must be >= 0 "
                "(0 keeps every object)."
            )
        if not 0 <= self.min_slide_hematoxylin_fraction < 1:
            raise ConfigError(
                f"min_slide_hematoxylin_fraction {self.min_slide_hematoxylin_fraction} must lie "
                "in [0, 1) (0 keeps every object)."
            )
        if not 0 <= self.min_mean_probability < 1:
            raise ConfigError(
                f"min_mean_probability {self.min_mean_probability} must lie in [0, 1) "
                "(0 keeps every object)."
            )


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """Which outputs a segmentation run writes.

    Attributes
    ----------
    format : str
        ``"geojson"`` or ``"geojson.gz"``.
    labels : bool
        Write the uint32 label image as zarr.
    overlay : bool
        Write a downsampled PNG of the slide with nucleus outlines.
    overwrite : bool
        Replace existing outputs instead of refusing.
    """

    format: str = "geojson"
    labels: bool = True
    overlay: bool = True
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.format not in ("geojson", "geojson.gz"):
            raise ConfigError(f"format {self.format!r} must be 'geojson' or 'geojson.gz'.")


def from_mapping(cls: type[T], values: Mapping[str, Any] | None, where: str = "config") -> T:
    """Build a config dataclass from a mapping, rejecting unknown keys and wrong types.

    Parameters
    ----------
    cls
        A frozen dataclass type such as :class:`TilingConfig`.
    values
        Keys and values, for example a section of a YAML file. ``None`` gives the defaults.
    where
        Named in error messages (for example the YAML file and section).

    Returns
    -------
    An instance of ``cls``.

    Raises
    ------
    ConfigError
        On an unknown key, a value of the wrong type or out of range (the message names
        ``where``).
    """
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(fields))}."
        )
    checked: dict[str, Any] = {}
    for key, value in values.items():
        default = getattr(cls(), key) if _has_defaults(cls) else None
        checked[key] = _coerce(value, default, f"{where}.{key}")
    try:
        return cls(**checked)
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None


def _has_defaults(cls: type) -> bool:
    return all(
        f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        for f in dataclasses.fields(cls)
    )


def _coerce(value: Any, default: Any, where: str) -> Any:
    """Check ``value`` against the type of ``default``; ints are accepted for floats."""
    if default is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, not {value!r}.")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, not {value!r}.")
        return float(value)
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, not {value!r}.")
        return value
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, not {value!r}.")
        return tuple(value)
    if isinstance(default, str) and not isinstance(value, str):
        raise ConfigError(f"{where} must be a string, not {value!r}.")
    return value
