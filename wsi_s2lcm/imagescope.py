"""Read Aperio ImageScope XML annotations (the format MoNuSeg ships its nuclei in) as polygons.

An ImageScope file holds ``<Annotation>`` layers of ``<Region>`` elements, each with its
``<Vertices>`` in the image's pixel frame. Each region of three or more distinct vertices is
read as one polygon, whatever tool drew it; negative regions (``NegativeROA="1"``, cut-outs) and
regions of fewer vertices are skipped with a message.

The vertices are taken in the frame of this project's label images, where pixel ``(x, y)``
covers ``[x, x + 1) x [y, y + 1)``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np

from wsi_s2lcm.errors import AnnotationError


def read_imagescope_polygons(path: Path) -> tuple[list, str | None]:
    """Read the regions of an ImageScope XML file as shapely Polygons, in file order.

    Parameters
    ----------
    path
        The ``.xml`` file.

    Returns
    -------
    polygons : list
        One shapely Polygon per region (possibly invalid, as drawn: rasterizing does not need
        validity).
    warning : str or None
        A message when regions were skipped.

    Raises
    ------
    AnnotationError
        If the file cannot be read, is not ImageScope XML, or a vertex is not a number.
    """
    from shapely.geometry import Polygon

    try:
        root = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError) as error:
        raise AnnotationError(f"cannot read ImageScope XML {path}: {error}") from error
    if root.tag != "Annotations":
        raise AnnotationError(
            f"{path} is XML but not an Aperio ImageScope annotation file (its root is "
            f"<{root.tag}>, not <Annotations>)"
        )
    polygons, negative, too_few = [], 0, 0
    for region in root.iter("Region"):
        if region.get("NegativeROA", "0") == "1":
            negative += 1
            continue
        xy = _vertices(region, path)
        if len(np.unique(xy, axis=0)) < 3:
            too_few += 1
            continue
        polygons.append(Polygon(xy))
    skipped = []
    if negative:
        skipped.append(f"{negative} negative region(s)")
    if too_few:
        skipped.append(f"{too_few} region(s) of fewer than 3 distinct vertices")
    message = f"{path.name}: {' and '.join(skipped)} skipped" if skipped else None
    return polygons, message


def _vertices(region: ElementTree.Element, path: Path) -> np.ndarray:
    try:
        xy = [(float(v.get("X", "")), float(v.get("Y", ""))) for v in region.iter("Vertex")]
    except ValueError as error:
        raise AnnotationError(
            f"{path}: region {region.get('Id')} has a vertex that is not a number ({error})"
        ) from error
    return np.asarray(xy, dtype=np.float64).reshape(-1, 2)
