"""Model directories: a JSON card plus safetensors weights.

A model is a directory holding ``card.json`` (architecture, mpp, normalization, post-processing,
training record, metrics, licence, version) and ``weights.safetensors``. Weights are read with
safetensors, never unpickled. The models shipped with the package live in
``wsi_s2lcm/weights/<name>/``; :data:`DEFAULT_MODEL` names the one used when none is given.
A checkpoint written by the trainer loads through the same :func:`load_model`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Mapping

from wsi_s2lcm.config import PostprocessConfig, from_mapping
from wsi_s2lcm.errors import ConfigError, ModelError

DEFAULT_MODEL = "s2lcm-monuseg"
CARD_FILE = "card.json"
WEIGHTS_FILE = "weights.safetensors"
CARD_FORMAT = 2
_SHIPPED_DIR = Path(__file__).parent / "weights"


@dataclasses.dataclass(frozen=True)
class ModelCard:
    """What a model is and how it was made.

    Attributes
    ----------
    name : str
        Short name, shown by ``wsi-s2lcm models``.
    architecture : dict
        Arguments of :func:`wsi_s2lcm.network.build_network`.
    mpp : float
        Microns per pixel of the images the model was trained at; slides are read at this mpp.
    normalization : dict
        ``{"mean": [r, g, b], "std": [r, g, b]}`` applied to RGB in [0, 1].
    postprocess : dict
        Fields of :class:`wsi_s2lcm.config.PostprocessConfig` tuned for this model.
    training : dict
        How it was trained: command, config, data, seed, time, hardware.
    metrics : dict
        Figures measured on held-out data, with the data named.
    licence : str
        Licence of the weights (they inherit their training data's terms).
    version : str
        Version of wsi-s2lcm that wrote the card.
    nucleus_area_um2 : float
        Reference nucleus area of the reading zoom (:mod:`wsi_s2lcm.zoom`): slides whose
        median nucleus is smaller are read enlarged; 0 (cards of format 1) reads every slide
        as it is.
    format : int
        Card format version (2 added ``nucleus_area_um2``).
    """

    name: str
    architecture: dict
    mpp: float
    normalization: dict
    postprocess: dict = dataclasses.field(default_factory=dict)
    training: dict = dataclasses.field(default_factory=dict)
    metrics: dict = dataclasses.field(default_factory=dict)
    licence: str = ""
    version: str = ""
    nucleus_area_um2: float = 0.0
    format: int = CARD_FORMAT

    def to_dict(self) -> dict[str, Any]:
        """Return the card as a JSON-serializable dictionary, in this version's card format
        (it holds every field, so a card read in an older format is written in this one)."""
        return {**dataclasses.asdict(self), "format": CARD_FORMAT}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "card") -> "ModelCard":
        """Build a card from a dictionary, naming ``where`` in errors."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        missing = sorted({"name", "architecture", "mpp", "normalization"} - set(values))
        if unknown or missing:
            raise ModelError(
                f"{where}: not a wsi-s2lcm model card (unknown keys {unknown}, missing {missing})."
            )
        card_format = values.get("format", CARD_FORMAT)
        if not isinstance(card_format, int):
            raise ModelError(f"{where}: format must be an integer, not {card_format!r}.")
        if card_format > CARD_FORMAT:
            raise ModelError(
                f"{where}: card format {values['format']} is newer than this wsi-s2lcm "
                "understands; upgrade wsi-s2lcm."
            )
        mpp = values["mpp"]
        if not isinstance(mpp, (int, float)) or mpp <= 0:
            raise ModelError(f"{where}: mpp must be a positive number, not {mpp!r}.")
        normalization = values["normalization"]
        if not (isinstance(normalization, Mapping) and {"mean", "std"} <= set(normalization)):
            raise ModelError(
                f"{where}: normalization needs a mean and a std, not {normalization!r}."
            )
        area = values.get("nucleus_area_um2", 0.0)
        if not isinstance(area, (int, float)) or not 0 <= area < math.inf:
            raise ModelError(f"{where}: nucleus_area_um2 must be a number >= 0, not {area!r}.")
        postprocess = values.get("postprocess") or {}
        try:
            from_mapping(PostprocessConfig, postprocess, f"{where}: postprocess")
        except ConfigError as error:
            raise ModelError(str(error)) from None
        return cls(**dict(values))


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A card and its network, ready for inference (eval mode, on the CPU)."""

    card: ModelCard
    network: Any
    path: Path


def resolve_model(ref: str | Path | None) -> Path:
    """Find the directory of a model given by name or path.

    Parameters
    ----------
    ref
        A shipped model's name, a path to a model directory, or ``None`` for the default.

    Returns
    -------
    Path of the model directory.

    Raises
    ------
    ModelError
        If no such model exists.
    """
    if ref is None:
        ref = DEFAULT_MODEL
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / CARD_FILE).is_file():
            raise ModelError(f"{path}: a model directory must contain {CARD_FILE}.")
        return path
    if path.is_file() and path.name == CARD_FILE:
        return path.parent
    shipped = _SHIPPED_DIR / str(ref)
    if (shipped / CARD_FILE).is_file():
        return shipped
    names = ", ".join(card.name for card, _ in list_models()) or "none"
    raise ModelError(
        f"model {str(ref)!r} is neither a model directory nor a shipped model "
        f"(shipped: {names}); run 'wsi-s2lcm models' to list them."
    )


def read_card(directory: str | Path) -> ModelCard:
    """Read and validate ``card.json`` in a model directory."""
    path = Path(directory) / CARD_FILE
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ModelError(f"{path}: cannot read the model card ({error.strerror}).") from None
    except json.JSONDecodeError as error:
        raise ModelError(f"{path}: the model card is not valid JSON ({error}).") from None
    if not isinstance(values, dict):
        raise ModelError(f"{path}: the model card must be a JSON object.")
    return ModelCard.from_dict(values, where=str(path))


def list_models() -> list[tuple[ModelCard, Path]]:
    """Return the shipped models as (card, directory) pairs, sorted by name."""
    found = []
    if _SHIPPED_DIR.is_dir():
        for directory in sorted(_SHIPPED_DIR.iterdir()):
            if (directory / CARD_FILE).is_file():
                found.append((read_card(directory), directory))
    return found


def load_model(ref: str | Path | None = None) -> LoadedModel:
    """Load a model's card and weights safely (safetensors, no pickle).

    Parameters
    ----------
    ref
        Name of a shipped model, path of a model directory, or ``None`` for the default.

    Returns
    -------
    LoadedModel
        The card and the network in eval mode on the CPU.
    """
    from safetensors.torch import load_file

    from wsi_s2lcm.network import build_network

    directory = resolve_model(ref)
    card = read_card(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelError(f"{directory}: {WEIGHTS_FILE} is missing; the model is incomplete.")
    try:
        network = build_network(card.architecture)
    except (TypeError, ValueError, KeyError) as error:
        raise ModelError(f"{directory}: the card's architecture is invalid ({error}).") from None
    try:
        state = load_file(str(weights))
    except Exception as error:  # safetensors raises its own error types
        raise ModelError(f"{weights}: cannot read the weights ({error}).") from None
    try:
        result = network.load_state_dict(state, strict=False)
    except RuntimeError as error:  # a tensor of another shape
        first = str(error).strip().splitlines()[-1].strip()
        raise ModelError(
            f"{weights}: weights do not match the card's architecture ({first})."
        ) from None
    missing = [k for k in result.missing_keys if not _is_training_only(k)]
    unexpected = [k for k in result.unexpected_keys if not _is_training_only(k)]
    if missing or unexpected:
        raise ModelError(
            f"{weights}: weights do not match the card's architecture "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})."
        )
    network.eval()
    return LoadedModel(card=card, network=network, path=directory)


def save_model(directory: str | Path, card: ModelCard, network: Any, half: bool = False) -> Path:
    """Write a model directory: ``card.json`` and the inference weights.

    Parameters
    ----------
    directory
        Output directory (created if needed).
    card
        The model card.
    network
        The network; parameters of training-only heads are not saved.
    half
        Store floating-point weights as float16 (half the size; they are cast back to float32
        when loaded). Used for the model shipped inside the package.

    Returns
    -------
    Path of the directory.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {
        key: value.detach().cpu().contiguous()
        for key, value in network.state_dict().items()
        if not _is_training_only(key)
    }
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    save_file(state, str(directory / WEIGHTS_FILE))
    write_card(directory, card)
    return directory


def write_card(directory: str | Path, card: ModelCard) -> Path:
    """Write (or replace) ``card.json`` in a model directory; returns the file's path."""
    path = Path(directory) / CARD_FILE
    path.write_text(json.dumps(card.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def _is_training_only(key: str) -> bool:
    """Whether a state-dict key belongs to a training-only head (not needed for inference)."""
    return key.split(".", 1)[0] in ("projection_full", "projection_quarter", "mil")
