"""Dataset URIs and their content hashes.

``sklearn://NAME`` names a data set that ships with scikit-learn (no download);
``file:///path`` or a plain path names a file. A bare name such as ``breast_cancer`` means
``sklearn://breast_cancer``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

SKLEARN = ("breast_cancer", "iris", "wine", "digits", "diabetes")


def normalize(uri: str) -> str:
    if "://" in uri:
        return uri
    if uri in SKLEARN:
        return f"sklearn://{uri}"
    return f"file://{Path(uri).resolve()}"


def looks_like_dataset(key: str, value: Any) -> bool:
    if not isinstance(value, str):
        return False
    if value.startswith(("sklearn://", "file://")):
        return True
    return key in {"dataset", "data", "dataset_uri"} or key.endswith("_uri")


def _sklearn(name: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn import datasets

    loader = getattr(datasets, f"load_{name}", None)
    if name not in SKLEARN or loader is None:
        raise ValueError(f"unknown scikit-learn data set {name!r}; known: {', '.join(SKLEARN)}")
    X, y = loader(return_X_y=True)
    return np.ascontiguousarray(X), np.ascontiguousarray(y)


def load(uri: str) -> Any:
    """The data behind a URI: (X, y) for scikit-learn sets, the Path for files."""
    uri = normalize(uri)
    if uri.startswith("sklearn://"):
        return _sklearn(uri.removeprefix("sklearn://"))
    return Path(uri.removeprefix("file://"))


def content_hash(uri: str) -> tuple[str, int]:
    """(sha256, size in bytes) of what the URI names now."""
    uri = normalize(uri)
    h = hashlib.sha256()
    if uri.startswith("sklearn://"):
        X, y = _sklearn(uri.removeprefix("sklearn://"))
        for a in (X, y):
            h.update(a.tobytes())
        return h.hexdigest(), int(X.nbytes + y.nbytes)
    if uri.startswith("file://"):
        path = Path(uri.removeprefix("file://"))
        size = 0
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
                size += len(chunk)
        return h.hexdigest(), size
    raise ValueError(f"unsupported dataset URI {uri!r}: use sklearn:// or file://")
