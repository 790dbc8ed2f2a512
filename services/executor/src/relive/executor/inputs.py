"""A launch spec's recorded inputs, and how two specs' inputs differ: which code ref each
component runs, what differs between an original and its relaunch (code, datasets,
environment, params, seed), and for each node the likeliest of those causes.

Pure: specs and snapshot manifests in, ``InputDifference`` messages and sentences out.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from relive.code import diff_files
from relive.executor import graph
from relive.executor.execution import intify
from relive.executor.v1 import executor_pb2 as pb
from relive.pipeline import datasets
from relive.pipeline.events import struct_to_dict
from relive.registry.v1 import registry_pb2

CODE, DATASET, ENVIRONMENT, PARAMS, SEED = "code", "dataset", "environment", "params", "seed"
# How many changed files a code difference names.
MAX_FILES_NAMED = 3


def components(
    definition: registry_pb2.IonDefinition,
) -> Iterator[tuple[str, str, registry_pb2.Component]]:
    """(node, component id, component) of every pipeline component, in a stable order."""
    for node_id in sorted(definition.nodes):
        node = definition.nodes[node_id]
        if node.WhichOneof("kind") != "pipeline":
            continue
        for comp_id in graph.components_order(node.pipeline):
            yield node_id, comp_id, node.pipeline.components[comp_id]


def module_of(call: str) -> str:
    return call.partition(":")[0]


def script_index(command: Sequence[str], ref: registry_pb2.CodeRef) -> int | None:
    """Which argument of ``command`` is the script ``ref`` records (its ``module`` is the
    script's path relative to its code root ``root``), or None."""
    for i, arg in enumerate(command):
        path = PurePosixPath(arg)
        if path.is_absolute():
            if ref.root and path == PurePosixPath(ref.root) / ref.module:
                return i
        elif path == PurePosixPath(ref.module):
            return i
    return None


def ref_for(
    component: registry_pb2.Component, refs: Sequence[registry_pb2.CodeRef]
) -> registry_pb2.CodeRef | None:
    """The code ref of what ``component`` runs: its call's module, or its command's script;
    None when its code is not under a code root (an installed package, a system command)."""
    if component.call:
        module = module_of(component.call)
        return next((r for r in refs if r.module == module), None)
    for ref in refs:
        if script_index(component.command, ref) is not None:
            return ref
    return None


def command_in_snapshot(
    command: Sequence[str], ref: registry_pb2.CodeRef | None
) -> tuple[str, ...]:
    """The argv to run inside the snapshot (its working directory): the script as a path
    relative to the code root, wherever the original named it."""
    argv = list(command)
    if ref is not None and (i := script_index(argv, ref)) is not None:
        argv[i] = ref.module
    return tuple(argv)


# ---- what differs between two specs ------------------------------------------------------


def _commit(ref: registry_pb2.CodeRef) -> str:
    if not ref.commit:
        return "no git"
    return ref.commit[:7] + (" (dirty)" if ref.dirty else "")


def _files_changed(a: registry_pb2.CodeSnapshot | None, b: registry_pb2.CodeSnapshot | None) -> str:
    if a is None or b is None:
        return ""
    diff = diff_files(a.files, b.files)
    named = [*diff.changed, *diff.added, *diff.removed]
    listed = ", ".join(named[:MAX_FILES_NAMED]) + (", …" if len(named) > MAX_FILES_NAMED else "")
    return f", {diff.summary()}" + (f" ({listed})" if named else "")


def _code(
    a: Sequence[registry_pb2.CodeRef],
    b: Sequence[registry_pb2.CodeRef],
    snapshots: Mapping[str, registry_pb2.CodeSnapshot],
) -> Iterator[pb.InputDifference]:
    by_a = {r.module: r for r in a}
    by_b = {r.module: r for r in b}
    for module in sorted(by_a.keys() | by_b.keys()):
        ra, rb = by_a.get(module), by_b.get(module)
        if ra is not None and rb is not None:
            if ra.tree_sha256 == rb.tree_sha256:
                continue
            if _commit(ra) != _commit(rb):
                how = f"commit {_commit(ra)} → {_commit(rb)}"
            else:
                how = f"uncommitted changes on commit {ra.commit[:7]}" if ra.commit else "files"
            detail = f"code of module {module} changed: {how}" + _files_changed(
                snapshots.get(ra.snapshot), snapshots.get(rb.snapshot)
            )
        else:
            detail = f"code of module {module} was recorded only in the " + (
                "original" if rb is None else "relaunch"
            )
        yield pb.InputDifference(
            kind=CODE,
            key=module,
            original=ra.tree_sha256 if ra else "",
            relaunch=rb.tree_sha256 if rb else "",
            detail=detail,
        )


def _datasets(
    a: Sequence[registry_pb2.DatasetRef], b: Sequence[registry_pb2.DatasetRef]
) -> Iterator[pb.InputDifference]:
    by_a = {d.uri: d.sha256 for d in a}
    by_b = {d.uri: d.sha256 for d in b}
    for uri in sorted(by_a.keys() | by_b.keys()):
        sa, sb = by_a.get(uri, ""), by_b.get(uri, "")
        if sa != sb:
            yield pb.InputDifference(
                kind=DATASET,
                key=uri,
                original=sa,
                relaunch=sb,
                detail=f"dataset {uri} changed: sha256 {sa[:12] or '—'} → {sb[:12] or '—'}",
            )


def _environment(a: pb.Environment, b: pb.Environment) -> Iterator[pb.InputDifference]:
    for key, va, vb in (
        ("python", a.python_version, b.python_version),
        ("platform", a.platform, b.platform),
        ("ray", a.ray_version, b.ray_version),
    ):
        if va != vb:
            yield pb.InputDifference(
                kind=ENVIRONMENT,
                key=key,
                original=va,
                relaunch=vb,
                detail=f"environment changed: {key} {va or '—'} → {vb or '—'}",
            )
    for name in sorted(a.packages.keys() | b.packages.keys()):
        va, vb = a.packages.get(name, ""), b.packages.get(name, "")
        if va != vb:
            yield pb.InputDifference(
                kind=ENVIRONMENT,
                key=name,
                original=va,
                relaunch=vb,
                detail=f"environment changed: package {name} {va or '—'} → {vb or '—'}",
            )


def _short(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 40 else text[:37] + "…"


def _params(a: pb.LaunchSpec, b: pb.LaunchSpec) -> Iterator[pb.InputDifference]:
    for key in sorted(a.params.keys() | b.params.keys()):
        pa = intify(struct_to_dict(a.params[key])) if key in a.params else {}
        pb_ = intify(struct_to_dict(b.params[key])) if key in b.params else {}
        changed = [p for p in sorted(pa.keys() | pb_.keys()) if pa.get(p) != pb_.get(p)]
        if changed:
            first = changed[0]
            more = f" and {len(changed) - 1} more" if len(changed) > 1 else ""
            yield pb.InputDifference(
                kind=PARAMS,
                key=key,
                original=", ".join(f"{p}={_short(pa.get(p))}" for p in changed),
                relaunch=", ".join(f"{p}={_short(pb_.get(p))}" for p in changed),
                detail=f"params of {key} changed: {first} {_short(pa.get(first))} → "
                f"{_short(pb_.get(first))}{more}",
            )


def differences(
    original: pb.LaunchSpec,
    relaunch: pb.LaunchSpec,
    snapshots: Mapping[str, registry_pb2.CodeSnapshot] | None = None,
) -> list[pb.InputDifference]:
    """Every recorded input that differs between the two specs; ``snapshots`` (by name)
    give the file manifests that say which files of a code tree changed."""
    out = list(_code(original.code_refs, relaunch.code_refs, snapshots or {}))
    out += _datasets(original.dataset_refs, relaunch.dataset_refs)
    out += _environment(original.environment, relaunch.environment)
    out += _params(original, relaunch)
    if original.seed != relaunch.seed:
        out.append(
            pb.InputDifference(
                kind=SEED,
                key="seed",
                original=str(original.seed),
                relaunch=str(relaunch.seed),
                detail=f"seed changed: {original.seed} → {relaunch.seed}",
            )
        )
    return out


# ---- the likeliest cause, per node -------------------------------------------------------


@dataclass(frozen=True)
class _Uses:
    """The inputs one node reads: code modules, dataset URIs and params keys, in order."""

    modules: tuple[str, ...]
    datasets: tuple[str, ...]
    params: tuple[str, ...]


def _uses(spec: pb.LaunchSpec, node: str) -> _Uses:
    definition = spec.definition
    n = definition.nodes[node]
    if n.WhichOneof("kind") != "pipeline":
        return _Uses((), (), (node,))
    modules, uris, keys = [], [], []
    for comp_id in graph.components_order(n.pipeline):
        ref = ref_for(n.pipeline.components[comp_id], spec.code_refs)
        if ref is not None and ref.module not in modules:
            modules.append(ref.module)
        key = f"{node}.{comp_id}"
        keys.append(key)
        if key in spec.params:
            for param, value in struct_to_dict(spec.params[key]).items():
                if datasets.looks_like_dataset(param, value):
                    uris.append(datasets.normalize(str(value)))
    return _Uses(tuple(modules), tuple(uris), tuple(keys))


def likely_causes(spec: pb.LaunchSpec, found: Sequence[pb.InputDifference]) -> dict[str, str]:
    """For each node of ``spec`` (the original), the likeliest differing input it used: its
    components' code, then its datasets, then its params, then (for a node whose own inputs
    are the same) what the nodes feeding it used, then the seed, then the environment."""
    by_kind: dict[str, dict[str, pb.InputDifference]] = {}
    for d in found:
        by_kind.setdefault(d.kind, {}).setdefault(d.key, d)
    if not found:
        return {}
    deps = graph.dependencies(spec.definition)
    own: dict[str, str] = {}
    for node in spec.definition.nodes:
        uses = _uses(spec, node)
        for kind, keys in ((CODE, uses.modules), (DATASET, uses.datasets), (PARAMS, uses.params)):
            hit = next((by_kind[kind][k] for k in keys if k in by_kind.get(kind, {})), None)
            if hit is not None:
                own[node] = hit.detail
                break
    fallback = ""
    if SEED in by_kind:
        fallback = by_kind[SEED]["seed"].detail
    elif ENVIRONMENT in by_kind:
        env = list(by_kind[ENVIRONMENT].values())
        fallback = env[0].detail + (f" (and {len(env) - 1} more)" if len(env) > 1 else "")
    # node -> (cause, the node whose own input it is; "" for the seed or the environment)
    found_at: dict[str, tuple[str, str]] = {}
    for node in graph.topo_order(deps):
        if node in own:
            found_at[node] = (own[node], node)
            continue
        upstream = next((found_at[d] for d in sorted(deps[node]) if found_at[d][1]), None)
        found_at[node] = upstream or (fallback, "")
    out: dict[str, str] = {}
    for node, (cause, origin) in found_at.items():
        if cause:
            out[node] = cause if origin in (node, "") else f"{cause} (upstream, in node {origin})"
    return out
