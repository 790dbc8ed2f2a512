"""The run context a component receives: its params, inputs, seeded RNG, and recording calls."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from relive.pipeline import datasets, profile
from relive.pipeline.events import EventFactory, EventSink
from relive.pipeline.models import ModelStore, dumps, loads, model_id


class DatasetDrift(RuntimeError):
    """A dataset's content differs from the hash frozen in the launch spec."""


_POOLS: dict[str, Any] = {}


class RunContext:
    """What one component sees while it runs.

    ``params``: its resolved parameters. ``inputs``: the return values of the components it
    runs after, by component id. ``models``: model versions carried to its node by edges, by
    output name (and by "from_node.output"). ``seed``/``rng``: derived from the run's root seed,
    the node, the component and the round, so a relaunch draws the same numbers.
    """

    def __init__(
        self,
        *,
        ion: str,
        run: str,
        node: str,
        component: str,
        params: Mapping[str, Any],
        inputs: Mapping[str, Any],
        models: Mapping[str, str],
        seed: int,
        sink: EventSink,
        store: ModelStore,
        factory: EventFactory,
        round: int = 0,
        outputs: Mapping[str, str] | None = None,
        expected_datasets: Mapping[str, str] | None = None,
        allow_drift: bool = False,
        batch: Any = None,
        batch_labels: Any = None,
        batch_index: int | None = None,
        root_seed: int = 0,
        batch_size: int = 0,
    ) -> None:
        self.ion = ion
        self.run = run
        self.node = node
        self.component = component
        self.params = dict(params)
        self.inputs = dict(inputs)
        self.models = dict(models)
        self.seed = int(seed)
        self.round = round
        self.batch = batch
        self.batch_labels = batch_labels
        self.batch_index = batch_index
        self._sink = sink
        self._store = store
        self._factory = factory
        self._outputs = dict(outputs or {})  # output name -> model id
        self._expected = dict(expected_datasets or {})
        self._allow_drift = allow_drift
        self._rng: np.random.Generator | None = None
        self._root_seed = root_seed
        self._batch_size = batch_size
        self.stats: dict[str, float] = {}
        self.logged: dict[str, tuple[str, str]] = {}  # output -> (version, sha256)
        self.datasets: list[tuple[str, str, int]] = []
        self.predictions: list[np.ndarray] = []

    @property
    def _pool_cache(self) -> dict[str, Any]:
        return _POOLS

    @property
    def rng(self) -> np.random.Generator:
        """A numpy Generator seeded for this component; the same in every relaunch."""
        if self._rng is None:
            self._rng = np.random.default_rng(self.seed)
        return self._rng

    @property
    def random_state(self) -> int:
        """The seed cut to 32 bits, for scikit-learn's ``random_state``."""
        return self.seed % (2**32 - 1)

    def param(self, key: str, default: Any = None) -> Any:
        return self.params.get(key, default)

    def log_stat(self, name: str, value: float, step: int = 0, **labels: str) -> None:
        self.stats[name] = float(value)
        self._sink.emit(self._factory.stat(name, float(value), step, labels))

    def log_model(
        self, model: Any, output: str = "model", labels: Mapping[str, str] | None = None
    ) -> str:
        """Stores ``model`` as a new version in the registry; returns the version's name."""
        data = dumps(model)
        mid = self._outputs.get(output) or model_id(self.ion.split("/")[-1], self.node, output)
        all_labels = {
            "framework": type(model).__module__.split(".")[0],
            "output": output,
            "class": type(model).__name__,
            **dict(labels or {}),
        }
        stored = self._store.store(
            mid, data, run=self.run, node=self.node, labels=all_labels, dataset_refs=self.datasets
        )
        self.logged[output] = (stored.name, stored.sha256)
        self._sink.emit(self._factory.model("logged", stored.name, stored.sha256))
        return stored.name

    def load_model(self, key: str = "model") -> Any:
        """Loads a model carried to this node (by output name) or a version by its name."""
        version = self.models.get(key) or (key if key.startswith("models/") else "")
        if not version:
            known = ", ".join(sorted(self.models)) or "none"
            raise KeyError(f"no model {key!r} reaches node {self.node!r} (carried: {known})")
        data, digest = self._store.load(version)
        self._sink.emit(self._factory.model("loaded", version, digest))
        return loads(data)

    def use_dataset(self, uri: str) -> Any:
        """Records the dataset's URI and content hash, profiles it, and returns its data."""
        uri = datasets.normalize(uri)
        digest, size = datasets.content_hash(uri)
        expected = self._expected.get(uri)
        if expected and expected != digest and not self._allow_drift:
            raise DatasetDrift(
                f"dataset {uri} changed: the launch spec froze sha256 {expected[:12]}, "
                f"it is now {digest[:12]}"
            )
        self.datasets.append((uri, digest, size))
        self._sink.emit(self._factory.dataset(uri, digest, size))
        data = datasets.load(uri)
        if isinstance(data, tuple):
            self.profile(uri.split("://")[-1], data[0])
        return data

    def live_batch(self, uri: str) -> tuple[Any, Any]:
        """This batch of the live source: rows drawn from the dataset by a generator seeded
        from the spec and the batch position, so a relaunch scores the very same rows."""
        from relive.pipeline.task import stream_batch

        if self.batch_index is None:
            raise RuntimeError("live_batch is for the score component of a streaming node")
        if self.batch is not None:
            return self.batch, self.batch_labels
        key = datasets.normalize(uri)
        if key not in self._pool_cache:
            self._pool_cache[key] = self._data_for_stream(key)
        X, y = stream_batch(
            self._pool_cache[key], self._root_seed, self.batch_index, self._batch_size
        )
        self.batch, self.batch_labels = X, y
        self.emit(
            "stream.batch",
            {
                "batch": self.batch_index,
                "rows": len(X),
                "sha256": hashlib.sha256(np.ascontiguousarray(X).tobytes()).hexdigest(),
                "model_version": self.models.get("model", ""),
                "source": key,
            },
        )
        return X, y

    def _data_for_stream(self, uri: str) -> Any:
        digest, _size = datasets.content_hash(uri)
        expected = self._expected.get(uri)
        if expected and expected != digest and not self._allow_drift:
            raise DatasetDrift(f"dataset {uri} changed since the launch spec froze it")
        return datasets.load(uri)

    def profile(self, name: str, data: Any) -> dict[str, float]:
        """Records per-feature summaries of ``data`` as stats named ``profile.NAME.FEATURE.*``."""
        summary = profile.summarize(data)
        for key, value in summary.items():
            self._sink.emit(
                self._factory.stat(f"profile.{name}.{key}", value, 0, {"profile": name})
            )
        return summary

    def log_predictions(self, predictions: Any, batch: int | None = None) -> str:
        """Records ``prediction_digest``: the sha256 of the prediction array's bytes."""
        arr = np.ascontiguousarray(np.asarray(predictions))
        digest = hashlib.sha256(arr.tobytes()).hexdigest()
        self.predictions.append(arr)
        where = self.batch_index if batch is None else batch
        self._sink.emit(
            self._factory.custom(
                "prediction_digest",
                {
                    "digest": digest,
                    "rows": int(arr.shape[0]) if arr.ndim else 1,
                    "dtype": str(arr.dtype),
                    "batch": -1 if where is None else int(where),
                },
            )
        )
        return digest

    def log(self, message: str, severity: str = "INFO") -> None:
        self._sink.emit(self._factory.log(message, severity))

    def emit(self, type_: str, data: Mapping[str, Any]) -> None:
        """A custom event of type ``type_`` at this component."""
        self._sink.emit(self._factory.custom(type_, data))
