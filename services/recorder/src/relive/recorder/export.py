"""Export and import of captures (stub, filled below)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from relive.core.config import Config
from relive.recorder.registry_link import Registry
from relive.recorder.service import Capture, RecorderService


@dataclass
class ImportResult:
    capture: Capture
    imported: int
    already_present: int


class Exporter:
    def __init__(self, config: Config, service: RecorderService, registry: Registry | None) -> None:
        self.config = config
        self.service = service
        self.registry = registry

    def export(self, name: str, include_models: bool) -> Iterator[Any]:
        raise NotImplementedError

    def import_(self, capture_id: str, chunks: Iterator[bytes]) -> ImportResult:
        raise NotImplementedError
