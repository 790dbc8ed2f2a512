"""What a relaunch checks before it runs: that the spec's datasets still hold what was
recorded. (Code needs no such check: a relaunch runs the recorded snapshots.)"""

from __future__ import annotations

from collections.abc import Sequence

from relive.pipeline import datasets
from relive.registry.v1 import registry_pb2


def dataset_problems(refs: Sequence[registry_pb2.DatasetRef]) -> list[str]:
    problems = []
    for ref in refs:
        try:
            digest, _ = datasets.content_hash(ref.uri)
        except (OSError, ValueError) as e:
            problems.append(f"dataset {ref.uri} cannot be read: {e}")
            continue
        if digest != ref.sha256:
            problems.append(
                f"dataset {ref.uri} changed: sha256 {ref.sha256[:12]} was recorded, "
                f"it is {digest[:12]} now"
            )
    return problems
