"""Popularity's trending score and the quality model, worked by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from bookverse.models.base import UserProfile
from bookverse.models.dataset import INTERACTION_KINDS, Catalogue, Dataset
from bookverse.models.popularity import Popularity
from bookverse.models.quality import QualityPopularity

DAY = 86_400
T0 = 1_700_000_000


def code(kind: str) -> int:
    return INTERACTION_KINDS.index(kind)


def tiny(
    items: list[int],
    timestamps: list[int],
    *,
    ratings: list[float] | None = None,
    kinds: list[str] | None = None,
    years: list[int] | None = None,
    n_items: int = 4,
    rating_scale: tuple[float, float] = (1.0, 5.0),
) -> Dataset:
    """One reader per interaction, over ``n_items`` books."""
    n = len(items)
    catalogue = Catalogue(
        item_ids=np.array([f"b{i}" for i in range(n_items)]),
        titles=[f"Book {i}" for i in range(n_items)],
        authors=["" for _ in range(n_items)],
        years=np.array(years or [0] * n_items, dtype=np.int32),
        publishers=["" for _ in range(n_items)],
        genres=[() for _ in range(n_items)],
    )
    return Dataset(
        name="tiny",
        user_ids=np.array([f"u{u}" for u in range(n)]),
        catalogue=catalogue,
        users=np.arange(n, dtype=np.int32),
        items=np.asarray(items, dtype=np.int32),
        ratings=np.asarray(ratings or [0.0] * n, dtype=np.float32),
        timestamps=np.asarray(timestamps, dtype=np.int64),
        rating_scale=rating_scale,
        id_scheme="plain",
        kinds=None
        if kinds is None
        else np.array([code(k) for k in kinds], dtype=np.int8),
    )


# popularity: trending ------------------------------------------------------


def test_one_half_life_old_counts_half() -> None:
    # book 0: one interaction now; book 1: two, each one half-life (10 days) old
    data = tiny([0, 1, 1], [T0, T0 - 10 * DAY, T0 - 10 * DAY])
    model = Popularity(half_life_days=10.0).fit(data)
    assert model.trending_ is not None
    np.testing.assert_allclose(
        model.trending_, np.log1p([1.0, 0.5 + 0.5, 0.0, 0.0]), rtol=1e-6
    )
    assert model.trending_source_ == "timestamps"
    assert model.reference_time_ == T0


def test_decay_is_measured_back_from_a_given_now() -> None:
    # now two half-lives after the interaction: it counts a quarter;
    # an interaction after ``now`` counts fully, never more
    data = tiny([0, 1], [T0, T0 + 5 * DAY])
    model = Popularity(half_life_days=7.0, now=T0 + 14 * DAY)
    model.fit(data)
    assert model.trending_ is not None
    np.testing.assert_allclose(model.trending_[:2], np.log1p([0.25, 0.5 ** (9 / 7)]))
    future = Popularity(half_life_days=7.0, now=float(T0)).fit(data)
    assert future.trending_ is not None
    np.testing.assert_allclose(future.trending_[:2], np.log1p([1.0, 1.0]))


def test_kind_weights_and_rows_without_kinds() -> None:
    stamps = [T0] * 4
    typed = tiny([0, 0, 1, 2], stamps, kinds=["view", "click", "purchase", "static"])
    model = Popularity().fit(typed)
    assert model.trending_ is not None
    # view 0.5 + click 0.5; purchase 2; a static row weighs 1
    np.testing.assert_allclose(model.trending_, np.log1p([1.0, 2.0, 1.0, 0.0]))
    assert model.ranking(3, trending=True).tolist() == [1, 0, 2]

    custom = Popularity(kind_weights={"view": 3.0}).fit(typed)
    assert custom.trending_ is not None
    np.testing.assert_allclose(custom.trending_[0], np.log1p(3.0 + 0.5))

    plain = Popularity().fit(tiny([0, 0, 1, 2], stamps))
    assert plain.trending_ is not None
    np.testing.assert_allclose(plain.trending_, np.log1p([2.0, 1.0, 1.0, 0.0]))


def test_min_count_keeps_rare_books_out_of_trending() -> None:
    # book 1 is taken once, a moment ago; book 0 twice, long ago
    data = tiny([0, 0, 1], [T0 - 100 * DAY, T0 - 100 * DAY, T0])
    assert Popularity(half_life_days=7.0).fit(data).ranking(4, True)[0] == 1

    model = Popularity(half_life_days=7.0, min_count=2).fit(data)
    assert model.trending_ is not None
    assert model.trending_[1] == 0.0
    assert model.ranking(4, trending=True).tolist() == [0]
    # the all-time ranking is untouched by min_count
    assert len(model.ranking(4)) == 4


def test_a_zero_weight_kind_does_not_count_toward_min_count() -> None:
    data = tiny([0, 0, 1], [T0] * 3, kinds=["view", "view", "purchase"])
    model = Popularity(kind_weights={"view": 0.0}, min_count=1).fit(data)
    assert model.ranking(4, trending=True).tolist() == [1]


def test_undated_rows_count_as_infinitely_old_beside_dated_ones() -> None:
    data = tiny([0, 0, 1], [0, 0, T0])
    model = Popularity().fit(data)
    assert model.trending_source_ == "timestamps"
    assert model.ranking(4, trending=True).tolist() == [1]


def test_all_time_fallback_is_flagged_logged_and_saved(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tiny([0, 0, 1], [0, 0, 0], kinds=["view", "purchase", "static"])
    with caplog.at_level("INFO", logger="bookverse.models.popularity"):
        model = Popularity(half_life_days=1.0).fit(data)
    assert "trending from all_time" in caplog.text
    assert model.trending_source_ == "all_time"
    assert model.reference_time_ is None
    assert model.trending_ is not None
    np.testing.assert_allclose(model.trending_, np.log1p([2.5, 1.0, 0.0, 0.0]))

    files = model.save(tmp_path)
    assert "popularity.json" in files
    info = json.loads((tmp_path / "popularity.json").read_text())
    assert info == {"trending_source": "all_time", "reference_time": None}
    loaded = Popularity.load(tmp_path, model.params())
    assert loaded.trending_source_ == "all_time"
    np.testing.assert_array_equal(loaded.ranking(4, True), model.ranking(4, True))


def test_timestamps_source_survives_save_and_load(tmp_path: Path) -> None:
    model = Popularity(half_life_days=3.0).fit(tiny([0, 1], [T0, T0 - DAY]))
    model.save(tmp_path)
    loaded = Popularity.load(tmp_path, model.params())
    assert loaded.trending_source_ == "timestamps"
    assert loaded.reference_time_ == T0


def test_files_without_the_source_load_as_unknown(tmp_path: Path) -> None:
    model = Popularity().fit(tiny([0, 1], [T0, T0]))
    model.save(tmp_path)
    (tmp_path / "popularity.json").unlink()
    assert Popularity.load(tmp_path, model.params()).trending_source_ == "unknown"

    (tmp_path / "popularity.json").write_text('{"trending_source": "yesterday"}')
    with pytest.raises(ValueError, match=r"popularity\.json: cannot read"):
        Popularity.load(tmp_path, model.params())


def test_score_and_all_time_ranking_ignore_kinds_and_time() -> None:
    data = tiny([0, 0, 1], [T0 - 900 * DAY, T0 - 900 * DAY, T0], kinds=["view"] * 3)
    model = Popularity(half_life_days=1.0).fit(data)
    np.testing.assert_allclose(
        model.score(UserProfile.empty()), np.log1p([2, 1, 0, 0]), rtol=1e-6
    )
    assert model.ranking(2).tolist() == [0, 1]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"min_count": 0}, "min_count must be an int >= 1, got 0"),
        ({"kind_weights": {"read": 1.0}}, "kind_weights keys must be among"),
        ({"kind_weights": {"view": -1.0}}, "kind_weights values must be finite"),
        ({"now": -5.0}, "now must be None or > 0, got -5.0"),
    ],
)
def test_bad_parameters_are_named(params: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Popularity(**params).fit(tiny([0], [T0]))  # type: ignore[arg-type]


def test_malformed_kinds_are_refused() -> None:
    data = tiny([0, 1], [T0, T0])
    bad = Dataset(**{**data.__dict__, "kinds": np.array([0, 9], dtype=np.int8)})
    with pytest.raises(ValueError, match=r"dataset\.kinds must be \(2,\) integer"):
        Popularity().fit(bad)


def test_subset_carries_kinds() -> None:
    data = tiny([0, 1, 2], [T0] * 3, kinds=["view", "purchase", "finished"])
    part = data.subset(np.array([False, True, True]))
    assert part.kinds is not None
    assert part.kinds.tolist() == [code("purchase"), code("finished")]
    assert tiny([0], [T0]).subset(np.array([True])).kinds is None


# quality ---------------------------------------------------------------------


def test_quality_formula_worked_by_hand() -> None:
    # scale 1..5: a rating r normalises to (r - 1) / 4
    # book 0: ratings 5, 5 -> 1, 1;  book 1: rating 1 -> 0;  book 2: implicit only
    # global mean m = (1 + 1 + 0) / 3 = 2/3, prior_count C = 1
    data = tiny(
        [0, 0, 1, 2],
        [0, 0, 0, 0],
        ratings=[5.0, 5.0, 1.0, 0.0],
        years=[2000, 1990, 0, 2010],
    )
    model = QualityPopularity(
        prior_count=1.0,
        rating_weight=2.0,
        count_weight=1.0,
        recency_weight=1.0,
        recency_half_life_years=10.0,
    ).fit(data)
    m = 2 / 3
    rating = [(m + 2) / 3, (m + 0) / 2, m, m]
    count = [math.log1p(2) / math.log1p(2), math.log1p(1) / math.log1p(2), 0, 0]
    # newest known year 2010: 2000 is one half-life old, 1990 two; 0 unknown
    recency = [0.5, 0.25, 0.0, 1.0]
    expected = [
        (2 * r + c + y) / 4 for r, c, y in zip(rating, count, recency, strict=True)
    ]
    np.testing.assert_allclose(model.score(UserProfile.empty()), expected, rtol=1e-6)
    assert model.parts_ is not None
    np.testing.assert_allclose(model.parts_[:, 0], rating, rtol=1e-6)
    assert model.ranking(2).tolist() == [0, 3]


def test_quality_recency_from_interactions_where_no_year() -> None:
    # no years known; book 0 last taken now, book 1 one half-life (2 years) before
    two_years = int(2 * 365.25 * DAY)
    data = tiny([0, 1], [T0, T0 - two_years], ratings=[3.0, 3.0], n_items=3)
    model = QualityPopularity(
        rating_weight=0.0, count_weight=0.0, recency_half_life_years=2.0
    ).fit(data)
    np.testing.assert_allclose(model.score(UserProfile.empty()), [1.0, 0.5, 0.0])


def test_quality_refuses_bad_weights() -> None:
    data = tiny([0], [T0], ratings=[3.0])
    with pytest.raises(ValueError, match="the sum of the weights must be > 0"):
        QualityPopularity(rating_weight=0.0, count_weight=0.0, recency_weight=0.0).fit(
            data
        )
    with pytest.raises(ValueError, match="prior_count must be >= 0, got -1"):
        QualityPopularity(prior_count=-1).fit(data)
