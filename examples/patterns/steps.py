"""Components shared by the pattern examples: real scikit-learn models on the data sets that
ship with scikit-learn, so nothing is downloaded.

Each is a ``@component`` taking the run context; its YAML params arrive as keywords.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

from relive.pipeline import RunContext, component

REGRESSION = {"diabetes"}


@component
def load(ctx: RunContext, dataset: str, test_size: float = 0.3) -> dict[str, Any]:
    """Reads the data set (its URI and hash are recorded), and splits it with the seeded RNG."""
    X, y = ctx.use_dataset(dataset)
    stratify = None if dataset.split("://")[-1] in REGRESSION else y
    x_train, x_test, y_train, y_test = train_test_split(
        X, y, test_size=test_size, random_state=ctx.random_state, stratify=stratify
    )
    # Each retraining round sees a different seeded subsample, as fresh data would be.
    if ctx.round:
        keep = ctx.rng.choice(len(x_train), size=int(len(x_train) * 0.9), replace=False)
        x_train, y_train = x_train[keep], y_train[keep]
    ctx.log_stat("train_rows", len(x_train))
    return {"x_train": x_train, "x_test": x_test, "y_train": y_train, "y_test": y_test}


def _estimator(kind: str, seed: int, **p: Any) -> Any:
    if kind == "logreg":
        return make_pipeline(
            StandardScaler(), LogisticRegression(C=float(p.get("C", 1.0)), max_iter=2000)
        )
    if kind == "tree":
        return DecisionTreeClassifier(max_depth=p.get("max_depth") or None, random_state=seed)
    if kind == "forest":
        return RandomForestClassifier(
            n_estimators=int(p.get("n_estimators", 20)),
            max_depth=p.get("max_depth") or None,
            random_state=seed,
        )
    if kind == "ridge":
        return make_pipeline(StandardScaler(), Ridge(alpha=float(p.get("alpha", 1.0))))
    if kind == "tree_regressor":
        return DecisionTreeRegressor(max_depth=p.get("max_depth") or None, random_state=seed)
    if kind == "forest_regressor":
        return RandomForestRegressor(n_estimators=int(p.get("n_estimators", 20)), random_state=seed)
    raise ValueError(f"unknown model kind {kind!r}")


@component
def fit(
    ctx: RunContext,
    model: str = "logreg",
    C: float = 1.0,
    max_depth: int = 0,
    n_estimators: int = 20,
    alpha: float = 1.0,
    unseeded: bool = False,
) -> Any:
    """Fits the model on the training split; ``unseeded`` breaks determinism on purpose."""
    data = ctx.inputs["load"]
    x, y = data["x_train"], data["y_train"]
    seed = ctx.random_state
    if unseeded:  # an RNG that is not taken from the spec: a relaunch cannot repeat it
        rows = np.random.default_rng().choice(len(x), size=int(len(x) * 0.8), replace=False)
        x, y = x[rows], y[rows]
    est = _estimator(model, seed, C=C, max_depth=max_depth, n_estimators=n_estimators, alpha=alpha)
    est.fit(x, y)
    return est


@component
def evaluate(ctx: RunContext) -> dict[str, float]:
    """Scores the fitted model on the test split: ``accuracy`` (or ``r2``) for approval rules."""
    data, est = ctx.inputs["load"], ctx.inputs["fit"]
    preds = est.predict(data["x_test"])
    ctx.log_predictions(preds)
    name = "r2" if data["y_test"].dtype.kind == "f" else "accuracy"
    value = float(est.score(data["x_test"], data["y_test"]))
    ctx.log_stat(name, value)
    ctx.profile("test", data["x_test"])
    return {name: value}


@component
def score(ctx: RunContext, dataset: str, fail_batch: int = -1) -> Any:
    """Scores with the model carried to this node: one live batch in a streaming node, or the
    whole data set in a batch node. ``fail_batch`` injects a fault at that batch."""
    model = ctx.load_model("model")
    if ctx.batch_index is not None:
        X, y = ctx.live_batch(dataset)
        if ctx.batch_index == fail_batch:
            raise RuntimeError(f"injected fault: the feature store timed out at batch {fail_batch}")
    else:
        X, y = ctx.use_dataset(dataset)
    ctx.profile("batch", X)
    preds = np.asarray(model.predict(X))
    ctx.log_predictions(preds)
    if y is not None:
        if preds.dtype.kind == "f":
            ctx.log_stat("mae", float(np.mean(np.abs(preds - y))), step=ctx.batch_index or 0)
        else:
            ctx.log_stat("accuracy", float(np.mean(preds == y)), step=ctx.batch_index or 0)
    return preds


@component
def refit(ctx: RunContext) -> Any:
    """Trains a fresh copy of the model carried to this node on this pipeline's data: a
    pipeline that depends on another one's model."""
    from sklearn.base import clone

    data = ctx.inputs["load"]
    est = clone(ctx.load_model("model"))
    if "random_state" in est.get_params():
        est.set_params(random_state=ctx.random_state)
    est.fit(data["x_train"], data["y_train"])
    return est


@component
def evaluate_refit(ctx: RunContext) -> dict[str, float]:
    """``evaluate`` for a pipeline whose model comes from ``refit``."""
    data, est = ctx.inputs["load"], ctx.inputs["refit"]
    preds = est.predict(data["x_test"])
    ctx.log_predictions(preds)
    value = float(est.score(data["x_test"], data["y_test"]))
    ctx.log_stat("accuracy", value)
    return {"accuracy": value}
