"""Model families by name, as the manifest records them.

Training creates a model with ``create_model(name, params)``; serving reads a
bundle with ``load_model(name, directory, params)``. Both look the name up in
``MODEL_CLASSES``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bookverse.models.als import ALS
from bookverse.models.base import Model
from bookverse.models.bpr import BPR
from bookverse.models.content import ContentTFIDF
from bookverse.models.ease import EASE
from bookverse.models.explicit_mf import ExplicitMF
from bookverse.models.item_knn import ItemKNN
from bookverse.models.neural import NeuralCF
from bookverse.models.popularity import Popularity
from bookverse.models.quality import QualityPopularity
from bookverse.models.user_knn import UserKNN

MODEL_CLASSES: dict[str, type[Model]] = {
    cls.name: cls
    for cls in (
        Popularity,
        ALS,
        ItemKNN,
        ContentTFIDF,
        EASE,
        BPR,
        UserKNN,
        ExplicitMF,
        NeuralCF,
        QualityPopularity,
    )
}


def model_class(name: str) -> type[Model]:
    """The class registered as ``name``.

    Raises
    ------
    ValueError
        If no model family has that name; the message lists the known ones.
    """
    try:
        return MODEL_CLASSES[name]
    except KeyError:
        raise ValueError(
            f"model name must be one of {sorted(MODEL_CLASSES)}, got {name!r}"
        ) from None


def create_model(name: str, params: dict[str, Any] | None = None) -> Model:
    """An unfitted model of family ``name`` with hyperparameters ``params``.

    Raises
    ------
    ValueError
        If ``name`` is unknown or ``params`` names an unknown hyperparameter.
    """
    cls = model_class(name)
    try:
        return cls(**(params or {}))
    except TypeError as exc:
        raise ValueError(f"params of model {name!r}: {exc}") from exc


def load_model(name: str, directory: Path, params: dict[str, Any]) -> Model:
    """Load a fitted model of family ``name`` from a bundle folder.

    Raises
    ------
    ValueError
        If ``name`` is unknown, ``params`` names an unknown hyperparameter, or
        a file is missing or malformed (the message names the file).
    """
    cls = model_class(name)
    try:
        return cls.load(Path(directory), params)
    except TypeError as exc:
        raise ValueError(f"params of model {name!r}: {exc}") from exc
    except FileNotFoundError as exc:
        raise ValueError(f"model {name!r}: missing file {exc.filename}") from exc
