"""The meta-ranker: training, the saved bundle, and offline/online parity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_features import small_dataset

from bookverse.models.base import Model, UserProfile
from bookverse.models.dataset import Dataset
from bookverse.models.ranker import BOOSTER_FILE, MetaRanker
from bookverse.training.ranker import (
    collect_rows,
    evaluate_meta_ranker,
    fit_base_models,
    fit_meta_ranker,
)
from bookverse.training.split import per_user_split

SPECS = {
    "ease": {"regularization": 5.0},
    "item_knn": {"k": 10, "num_threads": 1},
    "popularity": {},
}
POOL = 8


@pytest.fixture(scope="module")
def split() -> tuple[Dataset, Dataset]:
    data = small_dataset(seed=1)
    return per_user_split(data, 0.3, seed=3)


@pytest.fixture(scope="module")
def ranker(split: tuple[Dataset, Dataset]) -> MetaRanker:
    train, _ = split
    return fit_meta_ranker(
        SPECS, train, k=5, seed=0, pool=POOL, n_folds=2, params={"min_child_weight": 1}
    )


@pytest.fixture(scope="module")
def models(split: tuple[Dataset, Dataset]) -> dict[str, Model]:
    return fit_base_models(SPECS, split[0])


def test_ranker_beats_random_order(
    ranker: MetaRanker, models: dict[str, Model], split: tuple[Dataset, Dataset]
) -> None:
    train, test = split
    result = evaluate_meta_ranker(ranker, models, train, test, k=5)

    # random order of every unseen book, averaged over draws
    rng = np.random.default_rng(0)
    seen, relevant = train.user_items(), test.user_items()
    users = np.flatnonzero(relevant.getnnz(axis=1))
    random_ndcg = []
    for user in users:
        unseen = np.setdiff1d(np.arange(train.n_items), seen[user].indices)
        truth = set(relevant[user].indices.tolist())
        gains = [
            sum(
                1 / np.log2(r + 2)
                for r, i in enumerate(rng.permutation(unseen)[:5])
                if i in truth
            )
            for _ in range(20)
        ]
        ideal = sum(1 / np.log2(r + 2) for r in range(min(5, len(truth))))
        random_ndcg.append(np.mean(gains) / ideal)
    assert result["ndcg@5"] > np.mean(random_ndcg) + 0.1
    assert 0 < result["pool_recall"] <= 1
    assert ranker.features == ranker.booster_.feature_names  # type: ignore[union-attr]


def test_save_load_round_trip_in_plain_files(
    ranker: MetaRanker, tmp_path: Path
) -> None:
    written = ranker.save(tmp_path)
    assert BOOSTER_FILE in written
    json.loads((tmp_path / BOOSTER_FILE).read_text())
    for name in written:
        if name.endswith(".npy"):
            np.load(tmp_path / name, allow_pickle=False)
        else:
            assert name.endswith(".json")
    params = json.loads(json.dumps(ranker.params()))
    loaded = MetaRanker.load(tmp_path, params)
    rows = np.random.default_rng(0).normal(size=(7, len(ranker.features)))
    rows[2, 1] = np.nan
    np.testing.assert_array_equal(loaded.score(rows), ranker.score(rows))
    assert loaded.params() == ranker.params()
    assert loaded.score(rows).dtype == np.float32


def test_a_mismatched_feature_list_is_refused(
    ranker: MetaRanker, tmp_path: Path
) -> None:
    ranker.save(tmp_path)
    params = ranker.params()

    swapped = list(params["features"])
    swapped[0], swapped[1] = swapped[1], swapped[0]
    with pytest.raises(ValueError, match=repr(swapped[0])):
        MetaRanker.load(tmp_path, {**params, "features": swapped})

    with pytest.raises(ValueError, match=repr(params["features"][-1])):
        MetaRanker.load(tmp_path, {**params, "features": params["features"][:-1]})

    unknown = [*params["features"][:-1], "shoe_size"]
    with pytest.raises(ValueError, match="'shoe_size'"):
        MetaRanker.load(tmp_path, {**params, "features": unknown})

    with pytest.raises(ValueError, match="features"):
        ranker.score(np.zeros((2, len(params["features"]) + 1)))


def test_golden_rows_agree_offline_and_online(
    ranker: MetaRanker,
    models: dict[str, Model],
    split: tuple[Dataset, Dataset],
    tmp_path: Path,
) -> None:
    train, test = split
    users = np.array([0, 5, 17])
    assert ranker.tables_ is not None
    offline = collect_rows(
        models,
        ranker.features,
        ranker.base_models,
        ranker.tables_,
        train,
        test,
        users,
        ranker.pool,
    )
    offline_scores = ranker.score(offline.features)

    # online: a loaded ranker, the base models' own score, one reader at a time
    ranker.save(tmp_path)
    served = MetaRanker.load(tmp_path, ranker.params())
    start = 0
    for user, size in zip(users.tolist(), offline.group.tolist(), strict=True):
        history = train.user_items()[user].indices.astype(np.int64)
        profile = UserProfile(user, history, np.ones(len(history), np.float32))
        items, scores = served.candidates(models, profile)
        online = served.score(served.build(items, scores, profile, reader=user))
        part = slice(start, start + size)
        np.testing.assert_array_equal(items, offline.items[part])
        np.testing.assert_allclose(online, offline_scores[part], atol=1e-6, rtol=0)
        start += size
