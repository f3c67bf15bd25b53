"""Weighted blend of several models' scores over one candidate set.

Models score on different scales (ALS dot products, summed cosines, log
counts), so each model's scores are first min-max normalised over the
candidates being ranked,

    n_m(j) = (s_m(j) - min_c s_m(c)) / (max_c s_m(c) - min_c s_m(c)),

which maps that model's best candidate to 1 and its worst to 0 (a model that
scores every candidate alike, or has no finite score, gives 0 throughout: it
cannot tell them apart). The blend is ``sum_m weight_m * n_m(j)``. The result
depends on the candidate set: normalise over the same kind of set that the
weights were fitted on. Fitting the weights is a training task
(``bookverse.training.evaluate.fit_blend_weights``); this module only applies
them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np


def min_max(scores: np.ndarray) -> np.ndarray:
    """Min-max normalise scores to [0, 1] over their last axis.

    Parameters
    ----------
    scores : (..., n) float
        Non-finite values are treated as the minimum.

    Returns
    -------
    (..., n) float32
        0 everywhere along a row whose finite values are all equal (or absent).
    """
    scores = np.asarray(scores, dtype=np.float32)
    finite = np.isfinite(scores)
    low = np.where(finite, scores, np.inf).min(-1, keepdims=True, initial=np.inf)
    high = np.where(finite, scores, -np.inf).max(-1, keepdims=True, initial=-np.inf)
    span = high - low
    ok = np.isfinite(span) & (span > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        normalised = (scores - low) / np.where(ok, span, 1.0)
    return np.where(finite & ok, normalised, 0.0).astype(np.float32)


class WeightedBlend:
    """Blend per-model scores with fixed, non-negative weights.

    Parameters
    ----------
    weights : dict of str to float
        Model name -> weight (finite, >= 0). A model scored but absent here
        is normalised and reported, with weight 0.
    """

    def __init__(self, weights: Mapping[str, float]) -> None:
        self.weights = dict(weights)

    def check(self) -> None:
        """Raise ``ValueError`` naming a weight that is negative or not finite."""
        for model, weight in self.weights.items():
            if not (math.isfinite(weight) and weight >= 0):
                raise ValueError(
                    f"weights[{model!r}] must be finite and >= 0, got {weight!r}"
                )

    def blend(
        self, scores: Mapping[str, np.ndarray]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Combine raw per-model scores over one candidate set.

        Parameters
        ----------
        scores : dict of str to (n_candidates,) float
            Each model's raw scores, aligned on the same candidates.

        Returns
        -------
        blended : (n_candidates,) float32
            ``sum_m weights[m] * normalised[m]``; in [0, sum of weights].
        normalised : dict of str to (n_candidates,) float32
            Each model's min-max normalised scores (for explanations).

        Raises
        ------
        ValueError
            If the arrays differ in length or a weight breaks its rule.
        """
        self.check()
        lengths = {name: np.shape(values) for name, values in scores.items()}
        shapes = set(lengths.values())
        if len(shapes) > 1 or any(len(shape) != 1 for shape in shapes):
            raise ValueError(
                f"scores must share one 1-D shape per model, got {lengths}"
            )
        n = shapes.pop()[0] if shapes else 0

        normalised = {name: min_max(values) for name, values in scores.items()}
        blended = np.zeros(n, dtype=np.float32)
        for name, values in normalised.items():
            blended += np.float32(self.weights.get(name, 0.0)) * values
        return blended, normalised

    def params(self) -> dict[str, Any]:
        return {"weights": dict(self.weights)}
