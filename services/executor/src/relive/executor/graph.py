"""The ION's graph: which node depends on which, in what order they run, and the components'
order inside a pipeline."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from relive import policies
from relive.errors import InvalidArgument
from relive.registry.v1 import registry_pb2


def policy_refs(definition: registry_pb2.IonDefinition, name: str) -> list[str]:
    """Nodes a policy reads besides its incoming edges (a canary's primary and control, an
    ensemble's members...), as its kind declares them."""
    node = definition.nodes[name]
    if node.WhichOneof("kind") != "policy":
        return []
    kind = policies.by_enum(node.policy.type)
    return kind.depends_on(definition, name) if kind is not None else []


def dependencies(definition: registry_pb2.IonDefinition) -> dict[str, set[str]]:
    deps: dict[str, set[str]] = {n: set() for n in definition.nodes}
    for e in definition.edges:
        if e.to_node in deps and e.from_node in deps:
            deps[e.to_node].add(e.from_node)
    for name in definition.nodes:
        for ref in policy_refs(definition, name):
            if ref in deps and ref != name:
                deps[name].add(ref)
    return deps


def topo_order(deps: Mapping[str, Iterable[str]]) -> list[str]:
    """Dependency order, ties broken by name so the order is the same every time."""
    remaining = {k: set(v) for k, v in deps.items()}
    order: list[str] = []
    while remaining:
        ready = sorted(k for k, v in remaining.items() if not v)
        if not ready:
            raise InvalidArgument(
                f"the ION has a cycle among {', '.join(sorted(remaining))}",
                field="definition.edges",
            )
        for k in ready:
            order.append(k)
            del remaining[k]
        for v in remaining.values():
            v.difference_update(ready)
    return order


def downstream(deps: Mapping[str, Iterable[str]], start: Iterable[str]) -> set[str]:
    children: dict[str, set[str]] = {k: set() for k in deps}
    for k, v in deps.items():
        for d in v:
            children.setdefault(d, set()).add(k)
    seen: set[str] = set()
    todo = list(start)
    while todo:
        n = todo.pop()
        for c in children.get(n, ()):
            if c not in seen:
                seen.add(c)
                todo.append(c)
    return seen


def upstream(deps: Mapping[str, Iterable[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        n = todo.pop()
        for d in deps.get(n, ()):
            if d not in seen:
                seen.add(d)
                todo.append(d)
    return seen


def ancestors(pipeline: registry_pb2.Pipeline, comp: str) -> list[str]:
    """Every component ``comp`` runs after, directly or not: all of them are its inputs."""
    seen: list[str] = []
    todo = list(pipeline.components[comp].after)
    while todo:
        c = todo.pop()
        if c not in seen and c in pipeline.components:
            seen.append(c)
            todo.extend(pipeline.components[c].after)
    return sorted(seen)


def components_order(pipeline: registry_pb2.Pipeline, exclude: str = "") -> list[str]:
    deps = {
        c: {a for a in comp.after if a != exclude}
        for c, comp in pipeline.components.items()
        if c != exclude
    }
    return topo_order(deps)
