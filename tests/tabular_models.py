"""Small scikit-learn models converted to ONNX (skl2onnx convention: one float input ``(None, F)``).

Classifiers give ``label`` (int64) and ``probabilities`` (float32, ``(N, classes)``; ZipMap disabled).
Regressors give ``variable`` (float32, ``(N, 1)``). Shared by the feature tests, the per-pixel tests and benchmarks.
"""

from __future__ import annotations

import numpy as np


def to_onnx(estimator, n_features: int, *, input_name: str = "input") -> bytes:
    """Serialize a fitted estimator; classifiers return plain probability arrays, not ZipMap dicts."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    options = {id(estimator): {"zipmap": False}} if hasattr(estimator, "classes_") else None
    onx = convert_sklearn(
        estimator, initial_types=[(input_name, FloatTensorType([None, n_features]))], options=options,
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    return onx.SerializeToString()


def tabular_classifier(
    x: np.ndarray | None = None,
    y: np.ndarray | None = None,
    *,
    kind: str = "forest",
    n_features: int = 4,
    n_classes: int = 3,
    seed: int = 0,
    **kwargs,
):
    """``(estimator, onnx_bytes)``: a small classifier fitted on ``x, y`` (or on a synthetic problem).

    ``kind``: ``forest`` (RandomForest), ``gbt`` (GradientBoosting), ``tree`` or ``logistic``.
    """
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.tree import DecisionTreeClassifier

    if x is None:
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(600, n_features)).astype(np.float32)
        y = np.digitize(x[:, 0] + 0.5 * x[:, 1 % n_features], np.linspace(-1, 1, n_classes - 1))
    estimators = {
        "forest": lambda: RandomForestClassifier(**{"n_estimators": 10, "max_depth": 6, "random_state": seed,
                                                    "n_jobs": 1, **kwargs}),
        "gbt": lambda: GradientBoostingClassifier(**{"n_estimators": 20, "max_depth": 3, "random_state": seed,
                                                     **kwargs}),
        "tree": lambda: DecisionTreeClassifier(**{"max_depth": 8, "random_state": seed, **kwargs}),
        "logistic": lambda: LogisticRegression(**{"max_iter": 500, **kwargs}),
    }
    est = estimators[kind]()
    est.fit(np.asarray(x, dtype=np.float32), y)
    return est, to_onnx(est, x.shape[1])


def tabular_regressor(x: np.ndarray | None = None, y: np.ndarray | None = None, *, n_features: int = 4,
                      seed: int = 0):
    """``(estimator, onnx_bytes)``: a linear regression; output ``variable`` ``(N, 1)``."""
    from sklearn.linear_model import LinearRegression

    if x is None:
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(200, n_features)).astype(np.float32)
        y = x @ np.arange(1, n_features + 1)
    est = LinearRegression().fit(np.asarray(x, dtype=np.float32), y)
    return est, to_onnx(est, x.shape[1])
