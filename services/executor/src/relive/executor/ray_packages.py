"""Ships a materialized code snapshot to Ray's workers, as a ``working_dir`` package.

Why Ray's private API: Ray takes a local directory as ``working_dir`` only for a whole job
(``ray.init`` or a job submission); a task's ``runtime_env`` must name a package already in
the cluster (``ray._private.utils.parse_runtime_env_for_task_or_actor`` refuses local
paths). So this does for each snapshot what Ray does for a job's ``working_dir``: it zips
the directory into a content-addressed ``gcs://`` package and uploads it, with Ray's own
``ray._private.runtime_env.packaging`` functions. This module is the only user of them.

Every node's runtime-env agent then downloads the package from the cluster's GCS and runs
the task in it (its working directory, first on its import path), in worker processes kept
for that runtime env alone, so two snapshots never share a worker.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

log = logging.getLogger(__name__)


class RayPackages:
    """``gcs://`` URIs of snapshot directories, by snapshot, for one connected Ray.

    The URI is cached per snapshot (hashing a directory reads all of it); the upload call
    runs on every use, where it costs two GCS lookups when the package is there: it renews
    the package's pin, which keeps the GCS from dropping it, and uploads it again if a
    restarted cluster lost it."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self._uris: dict[str, str] = {}
        self._lock = threading.Lock()

    def uri(self, snapshot: str, directory: Path) -> str:
        """The package URI of ``directory`` (the materialized ``snapshot``), uploaded."""
        from ray._private.runtime_env import packaging

        with self._lock:
            uri = self._uris.get(snapshot)
        if uri is None:
            uri = packaging.get_uri_for_directory(str(directory), include_gitignore=False)
        self.scratch.mkdir(parents=True, exist_ok=True)
        if packaging.upload_package_if_needed(
            uri, str(self.scratch), str(directory), include_gitignore=False, logger=log
        ):
            log.info("uploaded %s to Ray as %s", snapshot, uri)
        with self._lock:
            self._uris[snapshot] = uri
        return uri
