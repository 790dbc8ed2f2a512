"""The registry's domain values, shared by the store, the service and the servicer."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class CodeRef:
    module: str
    repo: str = ""
    path: str = ""
    commit: str = ""
    dirty: bool = False


@dataclass(frozen=True)
class DatasetRef:
    uri: str
    sha256: str = ""
    size_bytes: int = 0


@dataclass(frozen=True)
class Ion:
    ion_id: str
    latest_revision: int
    retention_days: int
    project: str
    create_time: datetime
    update_time: datetime

    @property
    def name(self) -> str:
        return f"ions/{self.ion_id}"


@dataclass(frozen=True)
class Revision:
    ion_id: str
    revision_id: int
    # The canonical definition (see relive.registry.definition).
    definition: dict[str, Any]
    source_yaml: str
    source_path: str
    code_refs: list[CodeRef]
    definition_sha256: str
    create_time: datetime

    @property
    def name(self) -> str:
        return f"ions/{self.ion_id}/revisions/{self.revision_id}"


@dataclass(frozen=True)
class Lineage:
    """What the uploader says about a model version."""

    producing_run: str = ""
    producing_node: str = ""
    dataset_refs: list[DatasetRef] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelVersion:
    model_id: str
    version_id: int
    sha256: str
    size_bytes: int
    lineage: Lineage
    create_time: datetime
    # The project of whoever created the model's first version; every version shares it.
    project: str = "default"

    @property
    def name(self) -> str:
        return f"models/{self.model_id}/versions/{self.version_id}"


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_page_token: str = ""
