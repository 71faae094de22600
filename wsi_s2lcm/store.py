"""The label zarr: a slide-sized uint32 nucleus label image written tile by tile.

Layout
------
One Zarr **format 2** array (not a group) at ``<name>.zarr``: shape ``(height, width)`` at the
model's resolution, dtype ``uint32``, fill value 0 (background), square chunks, Blosc-zstd
compression. Format 2 because every reader in use opens it: zarr-python 2 and 3,
``dask.array.from_zarr``, napari's built-in zarr reader, and tiatoolbox versions pinned to
zarr 2. Attributes (``.zattrs``, JSON) hold what the caller passes (mpp, the level-0 transform,
the model card, the configuration) plus ``"wsi_s2lcm": {"kind": "nucleus-labels", "format": 1,
"axes": ["y", "x"]}``.

Writers whose blocks are aligned to chunk boundaries never touch the same chunk, so tiles can be
written from several threads or processes. The array is written to ``<path>.partial`` and
renamed into place by :meth:`LabelStore.finalize`, so an interrupted run never leaves a
half-written store under the final name.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import zarr
from numcodecs import Blosc

from wsi_s2lcm.errors import OutputExistsError

logger = logging.getLogger(__name__)

FORMAT = 1
_IDENTITY = {"kind": "nucleus-labels", "format": FORMAT, "axes": ["y", "x"]}


class LabelStore:
    """A uint32 label image in zarr, written in blocks.

    Use :meth:`create` to start a new store and :meth:`open` to read a finished one.

    Attributes
    ----------
    path : pathlib.Path
        Final location of the store.
    array : zarr.Array
        The underlying array (at ``<path>.partial`` until :meth:`finalize`).
    """

    def __init__(self, path: Path, array: zarr.Array, partial: bool) -> None:
        self.path = path
        self.array = array
        self._partial = partial

    @property
    def partial_path(self) -> Path:
        """Where an unfinished store is written."""
        return _partial_path(self.path)

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)`` of the label image."""
        return tuple(self.array.shape)

    @property
    def chunk(self) -> int:
        """Side of the square chunks."""
        return int(self.array.chunks[0])

    @property
    def attrs(self) -> dict[str, Any]:
        """The stored attributes, as a plain dictionary."""
        return dict(self.array.attrs.asdict())

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        shape_yx: tuple[int, int],
        chunk: int,
        attrs: Mapping[str, Any],
        overwrite: bool = False,
    ) -> LabelStore:
        """Start a new, empty store at ``<path>.partial``.

        Parameters
        ----------
        path
            Final location, conventionally ``<slide>.labels.zarr``.
        shape_yx
            ``(height, width)`` of the label image.
        chunk
            Side of the square chunks; align writers to multiples of it.
        attrs
            JSON-able attributes (numpy scalars and arrays, tuples, paths and dataclasses are
            converted), for example ``mpp``, ``scale``, ``offset_xy``, ``model``, ``config``.
        overwrite
            Replace an existing store at ``path`` when :meth:`finalize` runs.

        Returns
        -------
        LabelStore
            A writable store. Call :meth:`finalize` when complete or :meth:`abort` on failure,
            or use it as a context manager that does one or the other.

        Raises
        ------
        OutputExistsError
            When ``path`` exists and ``overwrite`` is false.
        """
        path = Path(path)
        height, width = (int(v) for v in shape_yx)
        if height < 1 or width < 1 or chunk < 1:
            raise ValueError(f"label store shape {shape_yx} and chunk {chunk} must be positive.")
        if path.exists() and not overwrite:
            raise OutputExistsError(
                f"{path} exists already; pass --overwrite to replace it or choose another output."
            )
        stored = {**_jsonable(dict(attrs)), "wsi_s2lcm": dict(_IDENTITY)}
        partial_path = _partial_path(path)
        if partial_path.exists():
            logger.info("removing the unfinished %s of an earlier run", partial_path)
            shutil.rmtree(partial_path)
        array = zarr.create_array(
            store=str(partial_path),
            shape=(height, width),
            chunks=(int(chunk), int(chunk)),
            dtype="uint32",
            fill_value=0,
            zarr_format=2,
            compressors=Blosc(cname="zstd", clevel=3, shuffle=Blosc.BITSHUFFLE),
            attributes=stored,
        )
        return cls(path, array, partial=True)

    @classmethod
    def open(cls, path: str | os.PathLike[str], writable: bool = False) -> LabelStore:
        """Open a finished store.

        Parameters
        ----------
        path
            The store's location.
        writable
            Open for writing (``r+``) instead of read-only.

        Returns
        -------
        LabelStore
        """
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"no label store at {path}; run segment with --labels.")
        array = zarr.open_array(str(path), mode="r+" if writable else "r")
        identity = array.attrs.get("wsi_s2lcm", {})
        if identity.get("kind") != _IDENTITY["kind"]:
            raise ValueError(f"{path} is a zarr array but not a wsi-s2lcm label store.")
        return cls(path, array, partial=False)

    def write(self, y0: int, x0: int, block: np.ndarray) -> None:
        """Write ``block`` with its top-left pixel at ``(y0, x0)``, clipped to the array."""
        region, block = self._region(y0, x0, block)
        if region is not None:
            self.array[region] = block

    def write_where_empty(self, y0: int, x0: int, block: np.ndarray) -> int:
        """Write the nonzero pixels of ``block`` where the store holds 0; return how many.

        Every tile's nuclei and the re-segmented large nuclei are written this way, so a nucleus
        seen by two neighbouring tiles keeps the pixels of the first written; existing labels
        are never overwritten.
        """
        region, block = self._region(y0, x0, block)
        if region is None:
            return 0
        current = self.array[region]
        empty = (current == 0) & (block != 0)
        count = int(empty.sum())
        if count:
            current[empty] = block[empty]
            self.array[region] = current
        return count

    def read(self, y0: int, x0: int, height: int, width: int) -> np.ndarray:
        """Read the ``height x width`` block at ``(y0, x0)``, clipped to the array."""
        if y0 < 0 or x0 < 0 or height < 0 or width < 0:
            raise ValueError(f"read origin ({y0}, {x0}) and size must not be negative.")
        return np.asarray(self.array[y0 : y0 + height, x0 : x0 + width])

    def finalize(self) -> Path:
        """Rename the finished store into place (replacing an old one); return its path."""
        if not self._partial:
            return self.path
        if self.path.exists():
            old = self.path.with_name(self.path.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.path, old)
            os.replace(self.partial_path, self.path)
            shutil.rmtree(old)
        else:
            os.replace(self.partial_path, self.path)
        self._partial = False
        self.array = zarr.open_array(str(self.path), mode="r+")
        logger.info("wrote label store %s", self.path)
        return self.path

    def abort(self) -> None:
        """Delete the unfinished store."""
        if self._partial:
            shutil.rmtree(self.partial_path, ignore_errors=True)
            self._partial = False

    def __enter__(self) -> LabelStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.finalize()
        else:
            self.abort()

    def _region(
        self, y0: int, x0: int, block: np.ndarray
    ) -> tuple[tuple[slice, slice] | None, np.ndarray]:
        block = np.asarray(block)
        if block.ndim != 2:
            raise ValueError(f"label block must be 2-D, not shape {block.shape}.")
        if y0 < 0 or x0 < 0:
            raise ValueError(f"block origin ({y0}, {x0}) must not be negative.")
        if block.size and (block.min() < 0 or block.max() > np.iinfo(np.uint32).max):
            raise ValueError("label values must fit in uint32.")
        height = min(block.shape[0], self.shape[0] - y0)
        width = min(block.shape[1], self.shape[1] - x0)
        if height <= 0 or width <= 0:
            return None, block
        region = (slice(y0, y0 + height), slice(x0, x0 + width))
        return region, block[:height, :width].astype(np.uint32, copy=False)


def _partial_path(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def _jsonable(value: Any) -> Any:
    """Convert attributes to JSON types, failing with the offending value named."""

    def convert(item: Any) -> Any:
        if isinstance(item, np.generic):
            return item.item()
        if isinstance(item, np.ndarray):
            return item.tolist()
        if isinstance(item, os.PathLike):
            return os.fspath(item)
        if dataclasses.is_dataclass(item) and not isinstance(item, type):
            return dataclasses.asdict(item)
        if hasattr(item, "to_dict"):
            return item.to_dict()
        raise TypeError(f"label store attribute value {item!r} is not JSON-serializable.")

    return json.loads(json.dumps(value, default=convert, allow_nan=False))
