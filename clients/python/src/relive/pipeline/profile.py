"""Input data profiles: per-feature summaries of what a pipeline read, as the paper's
"input data patterns"."""

from __future__ import annotations

from typing import Any

import numpy as np

MAX_FEATURES = 16


def summarize(data: Any, max_features: int = MAX_FEATURES) -> dict[str, float]:
    """Row count, and per feature: mean, std, min and max (for the first ``max_features``)."""
    names: list[str]
    if hasattr(data, "select_dtypes"):  # a pandas DataFrame
        numeric = data.select_dtypes("number")
        names = [str(c) for c in numeric.columns]
        arr = numeric.to_numpy(dtype=np.float64)
    else:
        arr = np.asarray(data, dtype=np.float64)
        if arr.ndim == 1:
            arr = arr[:, None]
        names = [f"f{i}" for i in range(arr.shape[1])]
    out: dict[str, float] = {"rows": float(arr.shape[0])}
    if arr.shape[0] == 0:
        return out
    for i, name in enumerate(names[:max_features]):
        col = arr[:, i]
        out[f"{name}.mean"] = float(np.mean(col))
        out[f"{name}.std"] = float(np.std(col))
        out[f"{name}.min"] = float(np.min(col))
        out[f"{name}.max"] = float(np.max(col))
    return out
