"""The code a run's components run (docs/code-provenance.md).

At launch every ``call`` module and command script is located on the code path; its code
root is inspected once per launch (tree hash, git commit, dirty flag), stored in the
registry as a snapshot when the registry lacks it, and recorded as one ``CodeRef`` per
module or script in the spec. Before a run starts, every snapshot its spec names is
materialized here (from the local cache, else downloaded from the registry) and shipped to
Ray as the ``working_dir`` of the components that import from it. So components import from
their run's snapshot, never from the live code path, and a relaunch runs what was recorded.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from relive import errors
from relive.code import (
    CodeSettings,
    HashCache,
    SnapshotCache,
    Tree,
    inspect_tree,
    locate_module,
    locate_script,
    pack,
)
from relive.executor.backends import Registry
from relive.executor.inputs import command_in_snapshot, components, module_of, ref_for
from relive.executor.v1 import executor_pb2 as pb
from relive.registry.v1 import registry_pb2

log = logging.getLogger(__name__)

# Ships a materialized snapshot to the workers: (snapshot name, directory) -> package URI.
Ship = Callable[[str, Path], str]
# Installed dependencies that sit beside a command's code, where its language looks for
# them from the script's directory upward (Node's ESM imports know no search path). They
# are environment, not code: snapshots leave them out, and a task links them in.
DEPENDENCY_DIRS = ("node_modules",)


def installed_dependencies(ref: registry_pb2.CodeRef, code_path: Sequence[str]) -> dict[str, str]:
    """The installed dependencies of a command's script (``ref``): DEPENDENCY_DIRS in its
    directory and each one above it up to the code root, found in the recorded root or in
    a code path entry, as {path in the snapshot: where they are}."""
    script = PurePosixPath(ref.module)
    roots = [Path(r) for r in (ref.root, *code_path) if r]
    out: dict[str, str] = {}
    for folder in reversed(script.parents):
        for name in DEPENDENCY_DIRS:
            rel = (folder / name).as_posix()
            found = next((r / rel for r in roots if (r / rel).is_dir()), None)
            if found is not None:
                out[rel] = str(found)
    return out


@dataclass(frozen=True)
class ComponentCode:
    """Where one component's code comes from in a run."""

    snapshot: str = ""  # "codeSnapshots/{sha256}"; "" when not under a code root
    working_dir: str = ""  # the snapshot's Ray package; the task runs in it
    command: tuple[str, ...] = ()  # a command's argv, its script relative to the snapshot
    # Installed dependencies to link into the snapshot: path in it -> where installed.
    links: Mapping[str, str] = field(default_factory=dict)

    def ray_options(self) -> dict[str, Any]:
        return {"runtime_env": {"working_dir": self.working_dir}} if self.working_dir else {}


@dataclass
class RunCode:
    """The code of every component of one run, by "node.component"."""

    components: dict[str, ComponentCode] = field(default_factory=dict)

    def of(self, node: str, component: str) -> ComponentCode:
        return self.components.get(f"{node}.{component}", ComponentCode())


@dataclass
class Recorded:
    """What ``CodeKeeper.record`` found: the refs, and what it cost."""

    refs: list[registry_pb2.CodeRef]
    seconds: float
    roots: int
    stored: int  # snapshots the registry did not have yet


class CodeKeeper:
    """Records, stores and ships the code runs run. One per executor; thread-safe."""

    def __init__(
        self,
        registry: Registry,
        code_path: Sequence[str],
        cache_dir: Path,
        settings: CodeSettings | None = None,
        ship: Ship | None = None,
    ) -> None:
        self.registry = registry
        self.code_path = [p for p in code_path if p]
        self.settings = settings or CodeSettings()
        cache_dir = cache_dir.resolve()  # materializing runs git in the tree: no relative paths
        self.snapshots = SnapshotCache(cache_dir / "trees")
        self.scratch = cache_dir / "archives"
        self.ship = ship
        self._hashes = HashCache()  # files are hashed again only when they change
        self._stored: set[tuple[str, str]] = set()  # (project, snapshot) the registry has
        self._lock = threading.Lock()

    # ----- at launch: what runs, snapshotted

    def _locate(self, component: registry_pb2.Component) -> tuple[str, Path, Path] | None:
        """(module or script, code root, file) of what ``component`` runs, or None."""
        if component.call:
            module = module_of(component.call)
            found = locate_module(module, self.code_path)
            return (module, *found) if found else None
        found = locate_script(component.command, self.code_path)
        if found is None:
            return None
        root, file = found
        return file.relative_to(root).as_posix(), root, file

    def record(self, definition: registry_pb2.IonDefinition, project: str) -> Recorded:
        """The code refs of what ``definition``'s components run now, each code root
        inspected once and stored when new. A tree over RELIVE_CODE_MAX_BYTES, or a
        repository that cannot be read, is a FailedPrecondition naming the setting."""
        t0 = time.perf_counter()
        trees: dict[Path, Tree] = {}
        refs: dict[str, registry_pb2.CodeRef] = {}
        stored = 0
        for _node, _comp, component in components(definition):
            found = self._locate(component)
            if found is None or found[0] in refs:
                continue
            module, root, file = found
            if root not in trees:
                trees[root] = inspect_tree(root, self.settings, self._hashes)
                stored += self._store(trees[root], project)
            refs[module] = trees[root].code_ref(module, file)
        seconds = time.perf_counter() - t0
        log.info(
            "code recorded in %.0f ms: %d root(s), %d new snapshot(s)",
            seconds * 1000,
            len(trees),
            stored,
        )
        return Recorded([refs[m] for m in sorted(refs)], seconds, len(trees), stored)

    def _store(self, tree: Tree, project: str) -> int:
        """Stores ``tree``'s snapshot unless the project has it; 1 when it was stored.
        Snapshots are never deleted, so one known stored is not asked about again."""
        if (project, tree.name) in self._stored:
            return 0
        if self.registry.get_code_snapshot(tree.name, project) is not None:
            self._stored.add((project, tree.name))
            return 0
        self.scratch.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.scratch) as tmp:
            archive = Path(tmp) / f"{tree.sha256}.tar.gz"
            archive_sha = pack(tree, archive, self.settings)
            header = tree.snapshot_proto()
            header.archive_sha256 = archive_sha
            self.registry.create_code_snapshot(header, archive, project)
            # What runs is what was stored: the tree from this archive, not the live one.
            self.snapshots.materialize(archive, tree.sha256)
        self._stored.add((project, tree.name))
        return 1

    # ----- before a run: each component's snapshot, on the workers

    def prepare(
        self,
        spec_refs: Sequence[registry_pb2.CodeRef],
        definition: registry_pb2.IonDefinition,
        project: str,
        nodes: Set[str] | None = None,
    ) -> RunCode:
        """The snapshot of each component of ``nodes`` (None: all), named by its ref in
        ``spec_refs``, materialized and shipped. A snapshot the registry no longer has is a
        FailedPrecondition naming it."""
        out = RunCode()
        uris: dict[str, str] = {}
        for node, comp_id, component in components(definition):
            if nodes is not None and node not in nodes:
                continue
            ref = ref_for(component, spec_refs)
            command = command_in_snapshot(component.command, ref)
            if ref is None:
                out.components[f"{node}.{comp_id}"] = ComponentCode(command=command)
                continue
            if not ref.snapshot:
                raise errors.FailedPrecondition(
                    f"the run recorded no code snapshot of {ref.module} (it was launched "
                    "before relive recorded code); relaunch it with --code current",
                    field="code",
                    reason="NO_CODE_SNAPSHOT",
                )
            if ref.snapshot not in uris:
                directory = self.materialized(ref.snapshot, project, ref.module)
                uris[ref.snapshot] = self.ship(ref.snapshot, directory) if self.ship else ""
            out.components[f"{node}.{comp_id}"] = ComponentCode(
                snapshot=ref.snapshot,
                working_dir=uris[ref.snapshot],
                command=command,
                links=installed_dependencies(ref, self.code_path) if component.command else {},
            )
        return out

    def materialized(self, name: str, project: str, module: str = "") -> Path:
        """The snapshot's tree on this machine: from the cache, else from the registry."""
        sha = name.removeprefix("codeSnapshots/")
        found = self.snapshots.get(sha)
        if found is not None:
            return found
        with self._lock:  # one download of a snapshot at a time
            found = self.snapshots.get(sha)
            if found is not None:
                return found
            self.scratch.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=self.scratch) as tmp:
                archive = Path(tmp) / f"{sha}.tar.gz"
                try:
                    self.registry.download_code_snapshot(name, archive, project)
                except errors.NotFound as e:
                    of = f" of {module}" if module else ""
                    raise errors.FailedPrecondition(
                        f"code snapshot {name}{of} is not in the registry, so the recorded "
                        "code cannot run; import the capture's export that carries it, or "
                        "relaunch with --code current",
                        field="code",
                        reason="CODE_SNAPSHOT_MISSING",
                        metadata={"snapshot": name},
                    ) from e
                return self.snapshots.materialize(archive, sha)

    def snapshots_of(
        self, project: str, *specs: pb.LaunchSpec
    ) -> Mapping[str, registry_pb2.CodeSnapshot]:
        """The snapshots ``project`` stored (with their file manifests) that ``specs`` name."""
        out: dict[str, registry_pb2.CodeSnapshot] = {}
        for spec in specs:
            for ref in spec.code_refs:
                if ref.snapshot and ref.snapshot not in out:
                    found = self.registry.get_code_snapshot(ref.snapshot, project)
                    if found is not None:
                        out[ref.snapshot] = found
        return out
