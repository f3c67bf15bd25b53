"""The default training run, end to end on a slice of real MovieLens-100k."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bookverse.models.bundle import read_pointer
from bookverse.server.bundle import ServingBundle
from bookverse.server.interactions import Interaction, InteractionStore
from bookverse.training.pipeline import (
    RERANK_BY_DATASET,
    StepTimer,
    TrainOptions,
    train,
)

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="module")
def movielens() -> Path:
    if not (DATA / "ml-100k" / "ml-100k.inter").is_file():
        pytest.skip("MovieLens-100k is not fetched (bookverse-train fetch)")
    return DATA


@pytest.mark.slow
def test_train_publishes_a_servable_bundle(movielens: Path, tmp_path: Path) -> None:
    lines: list[str] = []
    options = TrainOptions(
        dataset="movielens100k",
        data_dir=movielens,
        artifacts=tmp_path / "artifacts",
        max_users=400,
        ranker_readers=200,
    )
    version = train(options, StepTimer(echo=lines.append))

    assert read_pointer(options.artifacts) == version
    folder = options.artifacts / "versions" / version
    manifest = json.loads((folder / "manifest.json").read_text())
    table = manifest["metrics"]["table"]
    assert {"popularity", "als", "ease", "weighted_blend", "meta_ranker"} <= set(table)
    assert table["als"]["ndcg@10"] > table["popularity"]["ndcg@10"]
    assert manifest["rerank"] == RERANK_BY_DATASET["movielens100k"]
    assert set(manifest["blend"]["weights"]) == set(options.models)

    # the ranker is published exactly when it beat the blend on the test part
    beat = table["meta_ranker"]["ndcg@10"] > table["weighted_blend"]["ndcg@10"]
    assert ("ranker" in manifest) == beat

    # every step was timed and printed; the bundle loads and verifies whole
    assert "load" in manifest["metrics"]["step_seconds"]
    assert any(line.startswith("published ") for line in lines)
    bundle = ServingBundle.load(folder)
    assert bundle.version == version
    assert bundle.n_items == manifest["dataset"]["n_items"]


@pytest.mark.slow
def test_train_learns_from_tracked_events(movielens: Path, tmp_path: Path) -> None:
    events_db = tmp_path / "events.db"
    with InteractionStore(events_db).open() as store:
        for i, book in enumerate(("50", "100", "181", "no-such-film")):
            store.track(Interaction("tracked-reader", book, "purchase", None, 1e9 + i))
    options = TrainOptions(
        dataset="movielens100k",
        data_dir=movielens,
        artifacts=tmp_path / "artifacts",
        max_users=300,
        evaluate=False,
        ranker=False,
        events_db=events_db,
    )
    version = train(options, StepTimer(echo=str))
    bundle = ServingBundle.load(options.artifacts / "versions" / version)
    # the reader who exists only in the events store is a known reader now
    row = bundle.user_index["tracked-reader"]
    assert len(bundle.history(row)[0]) == 3  # the unknown film is skipped


def test_train_refuses_an_unknown_dataset(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="dataset must be one of"):
        train(TrainOptions(dataset="nope", artifacts=tmp_path), StepTimer(echo=str))
