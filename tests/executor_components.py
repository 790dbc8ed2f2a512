"""Components the executor tests use: a model trained from a CSV file (for dataset drift)."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression

from relive.pipeline import RunContext, component


@component
def fit_csv(ctx: RunContext, data_uri: str) -> Any:
    path = ctx.use_dataset(data_uri)
    table = np.loadtxt(path, delimiter=",")
    ctx.profile("csv", table[:, :-1])
    model = LogisticRegression(max_iter=500).fit(table[:, :-1], table[:, -1].astype(int))
    ctx.log_stat("accuracy", float(model.score(table[:, :-1], table[:, -1].astype(int))))
    return model


@component
def slow(ctx: RunContext, seconds: float = 60.0) -> None:
    import time

    time.sleep(seconds)
