"""Storing and loading models as registry model versions.

Pipeline code depends on the :class:`ModelStore` protocol; in a run it is the registry.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import re
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from relive.client.channel import Access


@dataclass(frozen=True)
class StoredModel:
    name: str  # "models/{model}/versions/{version}"
    sha256: str
    size_bytes: int


class ModelStore(Protocol):
    def store(
        self,
        model_id: str,
        data: bytes,
        *,
        run: str,
        node: str,
        labels: Mapping[str, str],
        dataset_refs: Sequence[tuple[str, str, int]],
    ) -> StoredModel: ...

    def load(self, version: str) -> tuple[bytes, str]: ...


def dumps(model: Any) -> bytes:
    """Pickles without the memo, so the bytes depend on the model's values only, not on which
    equal objects happen to be shared in this process (dtypes, strings); equal models then
    have equal sha256s across processes. Self-referencing objects fall back to plain pickle."""
    buf = io.BytesIO()
    pickler = pickle.Pickler(buf, protocol=4)
    pickler.fast = True  # no memo: shared objects are written out each time
    try:
        pickler.dump(model)
    except (RecursionError, ValueError):
        return pickle.dumps(model, protocol=4)
    return buf.getvalue()


def loads(data: bytes) -> Any:
    return pickle.loads(data)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def model_id(*parts: str) -> str:
    """A valid resource id from parts such as (ion, node, output)."""
    text = "-".join(re.sub(r"[^a-z0-9]+", "-", p.lower()).strip("-") for p in parts if p)
    text = re.sub(r"-+", "-", text).strip("-") or "model"
    if not text[0].isalpha():
        text = "m-" + text
    if len(text) > 63:
        text = text[:54].rstrip("-") + "-" + hashlib.sha256(text.encode()).hexdigest()[:8]
    return text


class RegistryModelStore:
    """Model versions in the registry, uploaded in chunks; downloads are cached per process."""

    _cache: OrderedDict[str, tuple[bytes, str]] = OrderedDict()
    _cache_lock = threading.Lock()
    CHUNK = 1 << 20

    def __init__(self, endpoint: str, timeout: float = 60.0, access: Access | None = None) -> None:
        from relive.client.channel import Access
        from relive.registry.v1 import registry_pb2_grpc

        self._channel = (access or Access()).connect(endpoint)
        self._stub = registry_pb2_grpc.RegistryServiceStub(self._channel)
        self._timeout = timeout

    def store(
        self,
        model_id: str,
        data: bytes,
        *,
        run: str,
        node: str,
        labels: Mapping[str, str],
        dataset_refs: Sequence[tuple[str, str, int]] = (),
    ) -> StoredModel:
        from relive.client.channel import call
        from relive.registry.v1 import registry_pb2

        digest = sha256(data)
        header = registry_pb2.ModelVersionHeader(
            parent=f"models/{model_id}",
            model_version=registry_pb2.ModelVersion(
                producing_run=run,
                producing_node=node,
                labels=dict(labels),
                dataset_refs=[
                    registry_pb2.DatasetRef(uri=u, sha256=h, size_bytes=s)
                    for u, h, s in dataset_refs
                ],
            ),
            expected_sha256=digest,
            request_id=uuid.uuid4().hex,
        )

        def requests(_: Any) -> Iterator[Any]:
            yield registry_pb2.CreateModelVersionRequest(header=header)
            for i in range(0, len(data), self.CHUNK):
                yield registry_pb2.CreateModelVersionRequest(chunk=data[i : i + self.CHUNK])

        def upload(req: Any, timeout: float) -> Any:
            return self._stub.CreateModelVersion(requests(req), timeout=timeout)

        mv = call(upload, None, timeout=self._timeout)
        with self._cache_lock:
            self._cache[mv.name] = (data, mv.sha256)
        return StoredModel(mv.name, mv.sha256, mv.size_bytes)

    def load(self, version: str) -> tuple[bytes, str]:
        from relive.client.channel import call
        from relive.registry.v1 import registry_pb2

        with self._cache_lock:
            if version in self._cache:
                self._cache.move_to_end(version)
                return self._cache[version]

        def download(req: Any, timeout: float) -> tuple[bytes, str]:
            parts: list[bytes] = []
            digest = ""
            for msg in self._stub.DownloadModelVersion(req, timeout=timeout):
                if msg.HasField("model_version"):
                    digest = msg.model_version.sha256
                else:
                    parts.append(msg.chunk)
            return b"".join(parts), digest

        data, digest = call(
            download, registry_pb2.DownloadModelVersionRequest(name=version), timeout=self._timeout
        )
        with self._cache_lock:
            self._cache[version] = (data, digest)
            while len(self._cache) > 32:
                self._cache.popitem(last=False)
        return data, digest

    def close(self) -> None:
        self._channel.close()


class MemoryModelStore:
    """Model versions in a dict: for tests and for running components directly."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self._counts: dict[str, int] = {}

    def store(
        self,
        model_id: str,
        data: bytes,
        *,
        run: str = "",
        node: str = "",
        labels: Mapping[str, str] | None = None,
        dataset_refs: Sequence[tuple[str, str, int]] = (),
    ) -> StoredModel:
        n = self._counts[model_id] = self._counts.get(model_id, 0) + 1
        name = f"models/{model_id}/versions/{n}"
        self.blobs[name] = data
        return StoredModel(name, sha256(data), len(data))

    def load(self, version: str) -> tuple[bytes, str]:
        data = self.blobs[version]
        return data, sha256(data)


def __getattr__(name: str) -> Any:
    """``Ensemble`` and ``ABSplit`` live with their policies in ``relive.policies``; stored
    models pickle them by this module's name, which therefore keeps exporting them (lazily,
    since relive.policies itself imports this module)."""
    if name == "Ensemble":
        from relive.policies.ensemble import Ensemble

        return Ensemble
    if name == "ABSplit":
        from relive.policies.ab_split import ABSplit

        return ABSplit
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
