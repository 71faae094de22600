"""wsi-s2lcm: nucleus segmentation of H&E whole-slide images, trained from scribbles.

The package is importable without torch, dask or click: heavy dependencies are imported by the
modules that own them (see docs/DESIGN.md).
"""

__version__ = "0.1.0"
