"""Hyperparameter search: results, resume after a stop, and after a kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import synthetic_dataset
from optuna.trial import TrialState

from bookverse.training.tune import TuneOptions, tune

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _options(tmp_path: Path, **changes: object) -> TuneOptions:
    fields = {
        "model": "item_knn",
        "n_trials": 2,
        "timeout": 60.0,
        "storage": f"sqlite:///{tmp_path / 'tuning.db'}",
        "study_name": "books-knn",
        "max_users": 100,
        "fixed": {"num_threads": 1},
    }
    fields.update(changes)
    return TuneOptions(**fields)  # type: ignore[arg-type]


def _study(options: TuneOptions) -> optuna.Study:
    return optuna.load_study(study_name="books-knn", storage=options.storage)


def test_search_returns_best_params_with_their_scores(tmp_path: Path) -> None:
    result = tune(synthetic_dataset(seed=1), _options(tmp_path))
    assert result["n_complete"] == 2 and result["metric"] == "ndcg@10"
    assert set(result["best_params"]) == {"k", "num_threads"}
    assert result["best_value"] == pytest.approx(result["best_metrics"]["ndcg@10"])
    assert 0 < result["best_value"] <= 1


def test_resumed_search_keeps_earlier_trials_and_fails_the_abandoned_one(
    tmp_path: Path,
) -> None:
    data = synthetic_dataset(seed=1)
    first = _options(tmp_path)
    tune(data, first)
    before = {t.number: t.params for t in _study(first).trials}

    # a killed run leaves its trial RUNNING in the storage
    _study(first).ask()

    result = tune(data, _options(tmp_path, n_trials=4))
    trials = _study(first).trials
    assert {t.number: t.params for t in trials[:2]} == before
    assert trials[2].state == TrialState.FAIL
    assert [t.state for t in trials[3:]] == [TrialState.COMPLETE] * 2
    assert result["n_complete"] == 4 and result["n_failed"] == 1


def test_a_study_refuses_another_protocol(tmp_path: Path) -> None:
    tune(synthetic_dataset(seed=1), _options(tmp_path, n_trials=1))
    with pytest.raises(ValueError, match="protocol"):
        tune(synthetic_dataset(seed=2), _options(tmp_path, n_trials=2))


def test_bad_options_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="model must be one of"):
        tune(synthetic_dataset(), _options(tmp_path, model="svd"))
    with pytest.raises(ValueError, match="n_trials"):
        tune(synthetic_dataset(), _options(tmp_path, n_trials=0))
    with pytest.raises(ValueError, match="storage"):
        tune(synthetic_dataset(), _options(tmp_path, storage="var/tuning.db"))


def test_blend_weights_search(tmp_path: Path) -> None:
    specs = {"popularity": {}, "item_knn": {"k": 20, "num_threads": 1}}
    options = _options(tmp_path, model="blend", blend_models=specs, study_name="b")
    result = tune(synthetic_dataset(seed=1), options)
    assert set(result["best_params"]["weights"]) == set(specs)


KILLED_RUN = """
import sys, time
import bookverse.training.tune as tune_module
from conftest import synthetic_dataset

def slow(*args, **kwargs):
    print("trial started", flush=True)
    time.sleep(60)
tune_module.evaluate_model = slow
tune_module.tune(synthetic_dataset(seed=1), tune_module.TuneOptions(
    model="item_knn", n_trials=3, storage=sys.argv[1], study_name="books-knn",
    max_users=100, fixed={"num_threads": 1}))
"""


@pytest.mark.slow
def test_search_killed_mid_trial_resumes(tmp_path: Path) -> None:
    data = synthetic_dataset(seed=1)
    options = _options(tmp_path)
    tune(data, options)

    # a real process, killed with SIGKILL while its trial runs
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_RUN, options.storage],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "trial started"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    states = [t.state for t in _study(options).trials]
    assert states == [TrialState.COMPLETE] * 2 + [TrialState.RUNNING]

    started = time.perf_counter()
    result = tune(data, _options(tmp_path, n_trials=3))
    states = [t.state for t in _study(options).trials]
    assert states[:2] == [TrialState.COMPLETE] * 2
    assert states[2] == TrialState.FAIL and states[3] == TrialState.COMPLETE
    assert result["n_complete"] == 3
    assert time.perf_counter() - started < 30
