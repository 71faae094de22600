"""Options and logging set-up shared by every ``wsi-s2lcm`` command."""

from __future__ import annotations

import functools
import logging
import sys
from typing import Any, Callable

import click

from wsi_s2lcm.config import PostprocessConfig, from_mapping
from wsi_s2lcm.errors import ConfigError


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each record."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        """The stream is always the current ``sys.stderr``."""


def configure_logging(verbosity: int) -> None:
    """Send the package's log records to stderr at a level set by ``-v`` / ``-q``."""
    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    package = logging.getLogger("wsi_s2lcm")
    package.handlers[:] = [handler]
    package.setLevel(level)
    for noisy in ("distributed", "tiatoolbox"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def verbosity_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``-v/--verbose`` and ``-q/--quiet`` to a command and set up logging from them."""

    @click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
    @click.option("-q", "--quiet", is_flag=True, help="Errors only; no progress bar.")
    @functools.wraps(command)
    def wrapper(*args: Any, verbose: int, quiet: bool, **kwargs: Any) -> Any:
        configure_logging(-1 if quiet else verbose)
        ctx = click.get_current_context()
        ctx.meta["wsi_s2lcm.quiet"] = quiet
        return command(*args, **kwargs)

    return wrapper


def show_progress() -> bool:
    """Whether long loops should draw a progress bar (a terminal and not ``--quiet``)."""
    ctx = click.get_current_context(silent=True)
    quiet = bool(ctx and ctx.meta.get("wsi_s2lcm.quiet"))
    return not quiet and sys.stderr.isatty()


def parse_assignments(items: tuple[str, ...], option: str) -> dict[str, Any]:
    """Parse repeated ``KEY=VALUE`` options; values are read as YAML scalars (0.5, true, text).

    Parameters
    ----------
    items
        The option's values, for example ``("h_um=0.75", "separate=false")``.
    option
        The option's name, for error messages.

    Returns
    -------
    dict
        Keys and typed values, later ones winning.

    Raises
    ------
    ConfigError
        On an item without ``=``, an empty key or a value that is not a scalar.
    """
    import yaml

    values: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{option} {item!r}: write KEY=VALUE, for example h_um=0.75.")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        if isinstance(value, int) and ":" in text:
            value = text.strip()  # a time such as 4:00:00, which YAML reads as base-60 seconds
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"{option} {item!r}: the value must be a number, true/false or text.")
        values[key] = value
    return values


def postprocess_with(
    card_values: dict[str, Any] | None, items: tuple[str, ...]
) -> PostprocessConfig:
    """A model card's post-processing with ``--postprocess KEY=VALUE`` items applied.

    Raises
    ------
    ConfigError
        On a malformed item, an unknown key or a value out of range.
    """
    overrides = parse_assignments(items, "--postprocess")
    values = {**(card_values or {}), **overrides}
    return from_mapping(PostprocessConfig, values, "--postprocess")


#: The options of ``segment`` and ``cohort`` that say how each slide is segmented.
_SEGMENTATION_OPTIONS = (
    click.option("--mpp", type=float, default=None,
                 help="The slides' µm per pixel at level 0; required for files that record "
                      "none, and overrides the value of those that do."),
    click.option("--model", default=None,
                 help="Shipped model name or model directory [default model]."),
    click.option("--tile-size", type=int, default=768, show_default=True,
                 help="Tile side in pixels at the model's resolution (multiple of 32)."),
    click.option("--overlap", type=int, default=96, show_default=True,
                 help="Pixels shared by neighbouring tiles at the model's resolution."),
    click.option("--context", type=int, default=64, show_default=True,
                 help="Extra pixels the network sees around each tile (multiple of 16)."),
    click.option("--batch-size", type=int, default=4, show_default=True, help="Tiles per batch."),
    click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
    click.option("--amp/--no-amp", default=None,
                 help="Mixed precision: float16 on CUDA, bfloat16 on the CPU. Default: on with "
                      "CUDA and on CPUs with bfloat16 instructions (AMX, AVX512-BF16), off "
                      "elsewhere."),
    click.option("--tta", is_flag=True,
                 help="Test-time augmentation: average the network over the 8 rotations and "
                      "mirror images of each tile; 8 times the inference time (docs/SEGMENT.md)."),
    click.option("--zoom", default="auto", show_default=True, metavar="auto|F",
                 help="Enlarge each tile F times (1 to 4) before the network; auto: chosen per "
                      "slide from its median nucleus area when the model's card records a "
                      "reference area, so small nuclei are seen larger (docs/SEGMENT.md)."),
    click.option("--no-tissue-mask", is_flag=True, help="Segment every tile, tissue or not."),
    click.option("--format", "fmt", type=click.Choice(["geojson", "geojson.gz"]),
                 default="geojson", show_default=True, help="GeoJSON output format."),
    click.option("--no-labels", is_flag=True, help="Do not write the label image (zarr)."),
    click.option("--no-overlay", is_flag=True, help="Do not write the overlay PNG."),
    click.option("--overwrite", is_flag=True, help="Replace existing outputs."),
    click.option("--postprocess", "postprocess_values", multiple=True, metavar="KEY=VALUE",
                 help="Override one post-processing value of the model card, e.g. "
                      "min_hematoxylin_contrast=0 (repeatable; docs/SEGMENT.md)."),
)


def segmentation_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add the options that say how each slide is segmented (shared by segment and cohort)."""
    for option in reversed(_SEGMENTATION_OPTIONS):
        command = option(command)
    return command
