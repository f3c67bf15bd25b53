"""The weighted blend, its evaluation and the fitting of its weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import pytest
import scipy.sparse as sp
from test_models import make_dataset

from bookverse.models.als import ALS
from bookverse.models.base import UserProfile
from bookverse.models.dataset import Dataset
from bookverse.models.hybrid import WeightedBlend, min_max
from bookverse.training.evaluate import (
    evaluate_blend,
    evaluate_model,
    fit_blend_weights,
)
from bookverse.training.split import per_user_split


def test_min_max_by_hand() -> None:
    np.testing.assert_allclose(min_max(np.array([2.0, 4.0, 6.0])), [0.0, 0.5, 1.0])
    np.testing.assert_array_equal(min_max(np.array([3.0, 3.0])), [0.0, 0.0])
    # a NaN is neither min nor max, and normalises to 0
    np.testing.assert_allclose(
        min_max(np.array([1.0, np.nan, 3.0, -np.inf])), [0.0, 0.0, 1.0, 0.0]
    )
    np.testing.assert_array_equal(min_max(np.zeros(0)), np.zeros(0))


def test_blend_by_hand() -> None:
    # a: [1, 2, 3] -> [0, .5, 1];  b: [30, 10, 20] -> [1, 0, .5]
    # blended = 1 * a + 0.5 * b = [0.5, 0.5, 1.25];  c has no weight
    blend = WeightedBlend({"a": 1.0, "b": 0.5})
    blended, normalised = blend.blend(
        {
            "a": np.array([1.0, 2.0, 3.0]),
            "b": np.array([30.0, 10.0, 20.0]),
            "c": np.array([5.0, 0.0, 0.0]),
        }
    )
    np.testing.assert_allclose(blended, [0.5, 0.5, 1.25])
    np.testing.assert_allclose(normalised["b"], [1.0, 0.0, 0.5])
    np.testing.assert_allclose(normalised["c"], [1.0, 0.0, 0.0])
    assert blended.dtype == np.float32


def test_blend_names_what_is_wrong() -> None:
    with pytest.raises(ValueError, match=r"weights\['a'\] must be finite and >= 0"):
        WeightedBlend({"a": -1.0}).blend({"a": np.ones(2)})
    with pytest.raises(ValueError, match="share one 1-D shape"):
        WeightedBlend({"a": 1.0}).blend({"a": np.ones(2), "b": np.ones(3)})
    blended, normalised = WeightedBlend({"a": 1.0}).blend({})
    assert blended.shape == (0,) and normalised == {}


class Noise:
    """Random scores: a model the weight search should learn to ignore."""

    name: ClassVar[str] = "noise"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def fit(self, dataset: Dataset) -> Self:
        return self

    def score(self, profile: UserProfile, items: np.ndarray | None = None) -> Any:
        raise NotImplementedError

    def score_users(self, user_items: sp.csr_matrix, users: np.ndarray) -> Any:
        rng = np.random.default_rng([self.seed, *np.asarray(users).tolist()])
        return rng.random((len(users), user_items.shape[1]), dtype=np.float32)

    def params(self) -> dict[str, Any]:
        return {"seed": self.seed}

    def save(self, directory: Path) -> list[str]:
        return []

    @classmethod
    def load(cls, directory: Path, params: dict[str, Any]) -> Self:
        raise NotImplementedError


@pytest.fixture(scope="module")
def split() -> tuple[Dataset, Dataset]:
    return per_user_split(make_dataset(), 0.3, seed=1)


def test_blend_of_one_model_ranks_as_that_model(split: tuple[Dataset, Dataset]) -> None:
    train, test = split
    als = ALS(factors=8, num_threads=1).fit(train)
    models = {"als": als, "noise": Noise()}
    alone = evaluate_model(als, train, test, k=5)
    for pool in (None, 10):
        blended = evaluate_blend(models, {"als": 1.0}, train, test, k=5, pool=pool)
        for metric in ("precision@5", "recall@5", "ndcg@5", "map@5"):
            assert blended[metric] == pytest.approx(alone[metric])


def test_weight_search_turns_noise_down(split: tuple[Dataset, Dataset]) -> None:
    train, _ = split
    fit_part, valid = per_user_split(train, 0.3, seed=2)
    models = {"als": ALS(factors=8, num_threads=1).fit(fit_part), "noise": Noise()}
    weights = fit_blend_weights(models, fit_part, valid, k=5, grid=(0.0, 0.5, 1.0))
    assert set(weights) == {"als", "noise"}
    assert sum(weights.values()) == pytest.approx(1.0)
    assert weights["als"] > weights["noise"]


def test_weight_search_refuses_a_bad_grid(split: tuple[Dataset, Dataset]) -> None:
    train, test = split
    with pytest.raises(ValueError, match="grid must be finite"):
        fit_blend_weights({"noise": Noise()}, train, test, grid=(0.0, -1.0))
    with pytest.raises(ValueError, match="models must name at least one"):
        fit_blend_weights({}, train, test)
