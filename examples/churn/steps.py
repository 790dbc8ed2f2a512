"""The churn example's components: real scikit-learn on the breast cancer data set, written
with the pipeline SDK. ``score`` serves twice: it evaluates the fitted model inside the
training pipeline, and scores live batches in the streaming inference nodes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from relive.pipeline import RunContext, component

DATASET = "breast_cancer"


@component
def load(
    ctx: RunContext, dataset: str = DATASET, seed: int = 0, test_size: float = 0.25
) -> dict[str, np.ndarray]:
    """Reads the data set (URI and content hash recorded) and splits it the same way each run."""
    features, target = ctx.use_dataset(dataset)
    x_train, x_test, y_train, y_test = train_test_split(
        features, target, test_size=test_size, random_state=seed, stratify=target
    )
    return {"x_train": x_train, "x_test": x_test, "y_train": y_train, "y_test": y_test}


@component
def fit(ctx: RunContext, C: float = 1.0) -> Pipeline:
    """Fits a scaled logistic regression on the training split."""
    data = ctx.inputs["load"]
    model = make_pipeline(StandardScaler(), LogisticRegression(C=float(C), max_iter=1000))
    model.fit(data["x_train"], data["y_train"])
    return model


@component
def score(ctx: RunContext) -> Any:
    """In training: the test accuracy, which the approval rule reads. In a streaming node:
    predictions for this live batch with the model carried to the node."""
    if ctx.batch_index is None:
        data, model = ctx.inputs["load"], ctx.inputs["fit"]
        predictions = model.predict(data["x_test"])
        ctx.log_predictions(predictions)
        accuracy = float(np.mean(predictions == data["y_test"]))
        ctx.log_stat("accuracy", accuracy)
        return {"accuracy": accuracy}
    features, target = ctx.live_batch(DATASET)
    model = ctx.load_model("model")
    predictions = model.predict(features)
    ctx.log_predictions(predictions)
    ctx.log_stat("batch_accuracy", float(np.mean(predictions == target)), step=ctx.batch_index)
    return predictions
