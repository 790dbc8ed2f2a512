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
    # Set by the executor at launch (the proto's CodeRef says what each one is).
    tree_sha256: str = ""
    snapshot: str = ""
    root: str = ""
    file_sha256: str = ""


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
class CodeSnapshot:
    """The files of a code tree, named by their content hash; the archive is opaque here.

    As an upload's header, the fields the registry sets (``archive_bytes``, ``project``,
    ``create_time``) are ignored, as the proto's output-only fields are.
    """

    sha256: str
    kind: str
    archive_sha256: str
    file_count: int = 0
    tree_bytes: int = 0
    # sha256 of every file, by path relative to the code root.
    files: dict[str, str] = field(default_factory=dict)
    repo: str = ""
    commit: str = ""
    dirty: bool = False
    repo_path: str = ""
    archive_bytes: int = 0
    # The project of whoever stored it: each project keeps its own record of a tree (the
    # archive's bytes are stored once, whichever projects hold it).
    project: str = "default"
    create_time: datetime | None = None

    @property
    def name(self) -> str:
        return f"codeSnapshots/{self.sha256}"


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_page_token: str = ""
