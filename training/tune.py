"""Hyperparameter search with Optuna on a validation split.

The prepared data set is split as the training run splits it
(``per_user_split(data, test_fraction, seed)``); the test part is set aside
and never read. The training part is split once more per reader
(``seed + 1``): models are fitted on its larger part and judged by nDCG@k over
the whole catalogue on its validation part, for at most ``max_users``
validation readers. Each model family has its own search space
(``SEARCH_SPACES``); ``"blend"`` searches the weights of a weighted blend of
fixed, once-fitted models.

Trials live in an RDB storage (an SQLite file, ``sqlite:///var/tuning.db``)
under a named study opened with ``load_if_exists=True``, so a search that was
stopped or killed resumes where it was: finished trials are kept and count
towards ``n_trials``. A search runs one process per study; trials a killed
run left RUNNING are marked FAIL when the next run starts, and a heartbeat
fails a trial whose process stopped beating while others run. A study
remembers the data fingerprint and protocol it was started with, and refuses
to go on with others.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from bookverse.models.base import Model
from bookverse.models.dataset import Dataset
from bookverse.models.registry import create_model
from bookverse.training.evaluate import evaluate_blend, evaluate_model
from bookverse.training.prepare import dataset_fingerprint
from bookverse.training.split import per_user_split

logger = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 30
"""How often a running trial records that its process is alive."""
GRACE_SECONDS = 120
"""A trial whose heartbeat is older than this is failed by the next trial."""
DEFAULT_BLEND: dict[str, dict[str, Any]] = {
    "popularity": {},
    "als": {"factors": 64, "alpha": 10.0, "iterations": 15},
    "item_knn": {"k": 100},
    "content": {},
}
"""The blend's component models, as the default training run fits them."""

Space = Callable[[optuna.Trial], dict[str, Any]]


def _als(trial: optuna.Trial) -> dict[str, Any]:
    return {
        "factors": trial.suggest_int("factors", 16, 256, log=True),
        "regularization": trial.suggest_float("regularization", 1e-3, 10.0, log=True),
        "alpha": trial.suggest_float("alpha", 1.0, 100.0, log=True),
        "iterations": trial.suggest_int("iterations", 5, 30),
    }


def _bpr(trial: optuna.Trial) -> dict[str, Any]:
    return {
        "factors": trial.suggest_int("factors", 16, 256, log=True),
        "learning_rate": trial.suggest_float("learning_rate", 1e-3, 0.2, log=True),
        "regularization": trial.suggest_float("regularization", 1e-5, 0.1, log=True),
        "iterations": trial.suggest_int("iterations", 20, 300, log=True),
    }


def _item_knn(trial: optuna.Trial) -> dict[str, Any]:
    return {"k": trial.suggest_int("k", 5, 1000, log=True)}


def _user_knn(trial: optuna.Trial) -> dict[str, Any]:
    return {
        "k": trial.suggest_int("k", 5, 500, log=True),
        "similarity": trial.suggest_categorical("similarity", ["cosine", "pearson"]),
    }


def _ease(trial: optuna.Trial) -> dict[str, Any]:
    return {"regularization": trial.suggest_float("regularization", 1.0, 1e4, log=True)}


def _content(trial: optuna.Trial) -> dict[str, Any]:
    # the text weight stays 1: the other two weights are relative to it
    return {
        "max_features": trial.suggest_int("max_features", 1000, 100_000, log=True),
        "genre_weight": trial.suggest_float("genre_weight", 0.0, 2.0),
        "author_weight": trial.suggest_float("author_weight", 0.0, 2.0),
    }


def _popularity(trial: optuna.Trial) -> dict[str, Any]:
    return {
        "half_life_days": trial.suggest_float("half_life_days", 1.0, 3650, log=True)
    }


def _neural(trial: optuna.Trial) -> dict[str, Any]:
    return {
        "embedding_dim": trial.suggest_int("embedding_dim", 8, 64, log=True),
        "dropout": trial.suggest_float("dropout", 0.0, 0.5),
        "epochs": trial.suggest_int("epochs", 2, 15),
        "learning_rate": trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True),
        "n_negatives": trial.suggest_int("n_negatives", 1, 8),
    }


SEARCH_SPACES: dict[str, Space] = {
    "als": _als,
    "bpr": _bpr,
    "item_knn": _item_knn,
    "user_knn": _user_knn,
    "ease": _ease,
    "content": _content,
    "popularity": _popularity,
    "neural": _neural,
}
"""Model family -> the parameters a trial suggests (constructor names)."""
BLEND = "blend"


@dataclass(frozen=True)
class TuneOptions:
    """One search; every field has the default search's value.

    ``n_trials`` counts finished trials over the study's whole life (a
    resumed search runs only the rest); ``timeout`` is in seconds and stops
    new trials from starting (a started one finishes).
    """

    model: str = "als"
    n_trials: int = 20
    timeout: float | None = 300.0
    storage: str = "sqlite:///var/tuning.db"
    study_name: str | None = None
    k: int = 10
    test_fraction: float = 0.2
    seed: int = 42
    max_users: int = 3000
    fixed: Mapping[str, Any] | None = None
    blend_models: Mapping[str, Mapping[str, Any]] | None = None

    def check(self) -> None:
        """Raise ``ValueError`` naming the first field that breaks its rule."""
        known = [*SEARCH_SPACES, BLEND]
        if self.model not in known:
            raise ValueError(f"model must be one of {known}, got {self.model!r}")
        rules = (
            ("n_trials", self.n_trials, self.n_trials >= 1, ">= 1"),
            ("k", self.k, self.k >= 1, ">= 1"),
            ("max_users", self.max_users, self.max_users >= 1, ">= 1"),
            (
                "test_fraction",
                self.test_fraction,
                0 < self.test_fraction < 1,
                "in (0, 1)",
            ),
        )
        for name, value, ok, rule in rules:
            if not ok:
                raise ValueError(f"{name} must be {rule}, got {value!r}")
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError(
                f"timeout must be > 0 seconds or None, got {self.timeout!r}"
            )
        if not self.storage.startswith(("sqlite:///", "postgresql", "mysql")):
            raise ValueError(
                f"storage must be an RDB URL such as sqlite:///var/tuning.db, "
                f"got {self.storage!r}"
            )


def make_model(name: str, params: Mapping[str, Any]) -> Model:
    """A model of a registered family, or the neural one (training-only, needs
    TensorFlow to fit).

    Raises
    ------
    ValueError
        As ``registry.create_model``.
    """
    if name == "neural":
        from bookverse.models.neural import NeuralCF

        return NeuralCF(**params)
    return create_model(name, dict(params))


def validation_split(
    data: Dataset, options: TuneOptions
) -> tuple[Dataset, Dataset, np.ndarray]:
    """The fit part, the validation part and the validation readers scored.

    The test part of ``per_user_split(data, test_fraction, seed)`` is dropped
    here, before anything else is done.

    Returns
    -------
    fit_part, validation : Dataset
    users : (m,) int64, ``m <= max_users`` validation readers, sorted.
    """
    train, _ = per_user_split(data, options.test_fraction, seed=options.seed)
    fit_part, validation = per_user_split(
        train, options.test_fraction, seed=options.seed + 1
    )
    users = np.flatnonzero(validation.user_items().getnnz(axis=1) > 0)
    if len(users) > options.max_users:
        rng = np.random.default_rng(options.seed)
        users = np.sort(rng.choice(users, size=options.max_users, replace=False))
    return fit_part, validation, users.astype(np.int64)


def open_study(options: TuneOptions, protocol: Mapping[str, Any]) -> optuna.Study:
    """Create or load the named study; fail the trials a killed run left.

    Raises
    ------
    ValueError
        If the study exists with another data fingerprint or protocol.
    """
    # the heartbeat is marked experimental in optuna 4 but is its stale-trial API
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(
            options.storage,
            heartbeat_interval=HEARTBEAT_SECONDS,
            grace_period=GRACE_SECONDS,
        )
    name = options.study_name or f"{protocol['dataset']}-{options.model}"
    study = optuna.create_study(
        study_name=name, storage=storage, direction="maximize", load_if_exists=True
    )
    known = study.user_attrs.get("protocol")
    if known is None:
        study.set_user_attr("protocol", dict(protocol))
    elif known != dict(protocol):
        raise ValueError(
            f"study {name!r} in {options.storage} was run with protocol {known}, "
            f"not {dict(protocol)}; name another study"
        )

    # one process per study: whatever is still RUNNING was left by a kill
    left = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in left:
        # FrozenTrial keeps its storage id private; optuna has no public getter
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    if left:
        logger.warning(
            "study %s: %s trial(s) left running by a stopped search marked failed: %s",
            name,
            len(left),
            [t.number for t in left],
        )
    return study


def tune(data: Dataset, options: TuneOptions) -> dict[str, Any]:
    """Search one model family's hyperparameters (or the blend's weights).

    Parameters
    ----------
    data : Dataset
        The prepared data set, as the training run evaluates it.
    options : TuneOptions

    Returns
    -------
    dict
        JSON-ready, for the manifest's ``"tuning"`` entry: ``model``,
        ``study``, ``storage``, ``metric`` (``"ndcg@k"``), ``best_value``,
        ``best_params`` (constructor parameters, fixed ones included; for the
        blend ``{"weights": ...}``), ``best_trial``, ``best_metrics`` (the
        best trial's validation metrics), ``n_complete``, ``n_failed``,
        ``protocol`` and ``seconds`` (this run's wall time).

    Raises
    ------
    ValueError
        If an option breaks its rule, or the study exists with another
        fingerprint or protocol.
    RuntimeError
        If the study has no finished trial after the search.
    """
    options.check()
    started = time.perf_counter()
    fit_part, validation, users = validation_split(data, options)
    protocol = {
        "dataset": data.name,
        "fingerprint": dataset_fingerprint(data),
        "k": options.k,
        "test_fraction": options.test_fraction,
        "seed": options.seed,
        "max_users": options.max_users,
        "fixed": dict(options.fixed or {}),
    }
    study = open_study(options, protocol)
    objective = _objective(fit_part, validation, users, options)

    # the budget counts the study's finished trials, earlier runs' included
    done = _finished(study)
    remaining = max(0, options.n_trials - done)
    logger.info(
        "tuning %s in study %s: %s trial(s) done, %s to run, timeout %s s",
        options.model,
        study.study_name,
        done,
        remaining,
        options.timeout,
    )
    if remaining:
        # a fresh seed per run, so a resumed search does not replay its draws
        study.sampler = optuna.samplers.TPESampler(
            seed=options.seed + len(study.trials)
        )
        study.optimize(objective, n_trials=remaining, timeout=options.timeout)
    return _result(study, options, protocol, time.perf_counter() - started)


def _finished(study: optuna.Study) -> int:
    states = (TrialState.COMPLETE, TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


def _objective(
    fit_part: Dataset, validation: Dataset, users: np.ndarray, options: TuneOptions
) -> Callable[[optuna.Trial], float]:
    """Validation nDCG@k of one trial's parameters."""
    fixed = dict(options.fixed or {})
    metric = f"ndcg@{options.k}"
    if options.model == BLEND:
        specs = options.blend_models or DEFAULT_BLEND
        models = {n: make_model(n, dict(p)).fit(fit_part) for n, p in specs.items()}
        return _blend_objective(models, fit_part, validation, users, options)

    def objective(trial: optuna.Trial) -> float:
        params = {**SEARCH_SPACES[options.model](trial), **fixed}
        model = make_model(options.model, params).fit(fit_part)
        result = evaluate_model(model, fit_part, validation, k=options.k, users=users)
        _record(trial, result)
        return float(result[metric])

    return objective


def _blend_objective(
    models: Mapping[str, Model],
    fit_part: Dataset,
    validation: Dataset,
    users: np.ndarray,
    options: TuneOptions,
) -> Callable[[optuna.Trial], float]:
    metric = f"ndcg@{options.k}"

    def objective(trial: optuna.Trial) -> float:
        weights = {m: trial.suggest_float(f"weight_{m}", 0.0, 1.0) for m in models}
        if not any(weights.values()):
            weights = dict.fromkeys(models, 1.0)
        result = evaluate_blend(
            models, weights, fit_part, validation, k=options.k, users=users
        )
        _record(trial, result)
        return float(result[metric])

    return objective


def _record(trial: optuna.Trial, result: Mapping[str, float]) -> None:
    """Keep a trial's validation metrics beside its value."""
    for name, value in result.items():
        trial.set_user_attr(name, float(value))


def _result(
    study: optuna.Study,
    options: TuneOptions,
    protocol: Mapping[str, Any],
    seconds: float,
) -> dict[str, Any]:
    if _finished(study) == 0 or not study.get_trials(states=(TrialState.COMPLETE,)):
        raise RuntimeError(
            f"study {study.study_name!r} has no finished trial; raise timeout or "
            "n_trials"
        )
    best = study.best_trial
    if options.model == BLEND:
        best_params: dict[str, Any] = {
            "weights": {
                name.removeprefix("weight_"): value
                for name, value in best.params.items()
            }
        }
    else:
        best_params = {**best.params, **dict(options.fixed or {})}
    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    result = {
        "model": options.model,
        "study": study.study_name,
        "storage": options.storage,
        "metric": f"ndcg@{options.k}",
        "best_value": float(best.value) if best.value is not None else float("nan"),
        "best_params": best_params,
        "best_trial": best.number,
        "best_metrics": dict(best.user_attrs),
        "n_complete": _finished(study),
        "n_failed": len(failed),
        "protocol": dict(protocol),
        "seconds": round(seconds, 2),
    }
    logger.info(
        "tuned %s: best %s %.4f (trial %s) with %s",
        options.model,
        result["metric"],
        result["best_value"],
        best.number,
        best_params,
    )
    return result
