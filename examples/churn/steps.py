"""The churn example's components: real scikit-learn on the breast cancer data set.

Each component takes the run context first and its parameters as keywords. These are
plain, typed functions; the pipeline SDK decides how outputs travel between them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler


def load(ctx: Any, **params: Any) -> dict[str, np.ndarray]:
    """Splits the data set into train and test, seeded so a relaunch splits the same way."""
    features, target = load_breast_cancer(return_X_y=True)
    seed = int(params.get("seed", 0))
    test_size = float(params.get("test_size", 0.25))
    x_train, x_test, y_train, y_test = train_test_split(
        features, target, test_size=test_size, random_state=seed, stratify=target
    )
    return {"x_train": x_train, "x_test": x_test, "y_train": y_train, "y_test": y_test}


def fit(ctx: Any, **params: Any) -> Pipeline:
    """Fits a scaled logistic regression on the training split."""
    data = params.get("data") or load(ctx)
    model = make_pipeline(
        StandardScaler(), LogisticRegression(C=float(params.get("C", 1.0)), max_iter=1000)
    )
    model.fit(data["x_train"], data["y_train"])
    return model


def score(ctx: Any, **params: Any) -> dict[str, float]:
    """Scores a model on the test split; returns the accuracy."""
    data = params.get("data") or load(ctx)
    model = params.get("model") or fit(ctx, data=data)
    accuracy = float(model.score(data["x_test"], data["y_test"]))
    return {"accuracy": accuracy}
